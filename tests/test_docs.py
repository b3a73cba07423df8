"""The documentation site (mkdocs + mkdocstrings) builds from the README and the docstrings with every
warning an error: a renamed function, a broken docstring section or a dead link fails here."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_docs_build_strict(tmp_path):
    pytest.importorskip("mkdocstrings")
    site = tmp_path / "site"
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    done = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    guide = (site / "index.html").read_text()
    assert "Sweeps on many GPUs or machines" in guide and (site / "figures" / "quick" / "generalization.png").is_file()
    reference = (site / "reference" / "models" / "index.html").read_text()
    assert "load_data" in reference and "DatasetDict" in reference
