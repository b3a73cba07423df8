"""Both notebooks run top to bottom on a tiny model (their parameters cell is replaced), offline."""

from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"


def _execute(name: str, parameters: str, tiny_cache, monkeypatch) -> nbformat.NotebookNode:
    monkeypatch.setenv("POLINEURONS_CACHE", str(tiny_cache))  # the kernel inherits the environment
    book = nbformat.read(NOTEBOOKS / name, as_version=4)
    cell = next(c for c in book.cells if c.cell_type == "code")
    assert cell.source.startswith("# Parameters"), "the first code cell holds the parameters"
    cell.source = "# Parameters\n" + parameters
    NotebookClient(book, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(NOTEBOOKS)}}).execute()
    return book


def _text(book) -> str:
    return "\n".join(o.get("text", "") for c in book.cells if c.cell_type == "code" for o in c.get("outputs", []))


@pytest.mark.filterwarnings("ignore")
def test_quickstart_runs_on_a_tiny_model(tiny_cache, monkeypatch):
    book = _execute(
        "01_quickstart.ipynb",
        'MODEL = "tiny-llama"\nTOPICS = ["immigration", "science"]\nMAX_ITEMS = 2\n',
        tiny_cache,
        monkeypatch,
    )
    text = _text(book)
    assert "tiny-llama: 3 layers x 96 MLP neurons" in text
    assert "inhibiting" in text and "hooks removed; stance back to the original" in text


@pytest.mark.filterwarnings("ignore")
def test_neuron_explorer_runs_on_a_run_folder(smoke_run, tiny_cache, monkeypatch):
    out, _, _ = smoke_run
    book = _execute("02_neuron_explorer.ipynb", f'RUN_DIR = "{out}"\nEXPLORE_MODEL = True\n', tiny_cache, monkeypatch)
    assert "general neurons:" in _text(book)
    html = [o for c in book.cells for o in c.get("outputs", []) if "text/html" in o.get("data", {})]
    assert len(html) == 2 and all("CircuitsVis.render" in o["data"]["text/html"] for o in html)
    plots = [
        o for c in book.cells for o in c.get("outputs", []) if "application/vnd.plotly.v1+json" in o.get("data", {})
    ]
    assert len(plots) == 3


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("01_quickstart.ipynb", ["smollm2-135m-instruct: 30 layers x 1536 MLP neurons", "stance back to the original"]),
        (
            "02_neuron_explorer.ipynb",
            ["smollm2-135m-instruct, right-leaning fine-tune on immigration", "general neurons:"],
        ),
    ],
)
def test_notebooks_are_committed_with_the_embedded_models_outputs(name, expected):
    """A reader sees what a notebook shows without running it (outputs of the embedded model)."""
    book = nbformat.read(NOTEBOOKS / name, as_version=4)
    code = [c for c in book.cells if c.cell_type == "code"][1:]  # all but the parameters cell
    assert all(c.outputs for c in code)
    assert not [o for c in code for o in c.outputs if o.get("name") == "stderr"]  # no progress bars or warnings
    printed = _text(book)
    assert all(text in printed for text in expected)
