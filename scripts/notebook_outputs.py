"""Execute the notebooks with their own parameters (the embedded model; 02 reads runs/quick) and keep
their outputs, as committed: stderr (progress bars) and timestamps dropped, and each circuitsvis view — its whole
JavaScript bundle, ~1.5 MB — replaced by a screenshot of the rendered view (headless chromium).

    .venv/bin/python scripts/notebook_outputs.py                               # both notebooks
    .venv/bin/python scripts/notebook_outputs.py notebooks/02_neuron_explorer.ipynb
"""

from __future__ import annotations

import argparse
import base64
import subprocess
import tempfile
from pathlib import Path

import nbformat
from nbclient import NotebookClient

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"
SCREENSHOT = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--hide-scrollbars"]


def screenshot(html: str, width: int = 1000, height: int = 520) -> bytes:
    """PNG of ``html`` rendered by Debian's chromium (``bash scripts/setup.sh --browser``)."""
    with tempfile.TemporaryDirectory() as tmp:
        page, shot = Path(tmp) / "view.html", Path(tmp) / "view.png"
        page.write_text(f"<html><body style='margin:8px'>{html}</body></html>")
        size = [f"--window-size={width},{height}", "--virtual-time-budget=10000", f"--screenshot={shot}"]
        subprocess.run(["chromium", *SCREENSHOT, *size, page.as_uri()], check=True, capture_output=True)
        return shot.read_bytes()


def execute(path: Path) -> None:
    """Run ``path`` top to bottom in its folder and write it back with its outputs, as committed."""
    book = nbformat.read(path, as_version=4)
    NotebookClient(
        book, timeout=1800, kernel_name="python3", resources={"metadata": {"path": str(path.parent)}}
    ).execute()
    for cell in book.cells:
        if cell.cell_type != "code":
            continue
        cell.metadata.pop("execution", None)  # timestamps: a diff of nothing
        cell.outputs = [out for out in cell.outputs if out.get("name") != "stderr"]
        for out in cell.outputs:
            if "CircuitsVis" in out.get("data", {}).get("text/html", ""):
                out["data"] = {
                    "image/png": base64.b64encode(screenshot(out["data"]["text/html"])).decode(),
                    "text/plain": "<circuitsvis view (a screenshot; run the cell for the interactive view)>",
                }
    nbformat.write(book, path)
    print(f"{path}: {path.stat().st_size:,} bytes")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("notebooks", type=Path, nargs="*", default=sorted(NOTEBOOKS.glob("*.ipynb")))
    for path in parser.parse_args(argv).notebooks:
        execute(path.resolve())


if __name__ == "__main__":
    main()
