"""README examples must run as written."""

import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"
QUICK_START = "## Quick start in Python"


def _blocks(text: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", text, re.S)


def _quick_start() -> str:
    """The first Python block of the quick start section."""
    section = README.read_text().split(QUICK_START, 1)[1].split("\n## ", 1)[0]
    return _blocks(section)[0]


def test_readme_quick_start_runs_verbatim_on_a_tiny_model(monkeypatch, capsys, tiny_cache):
    import polineurons

    real_load = polineurons.load_model
    # load_model() is the embedded model; here it is the tiny test model (seconds instead of minutes)
    monkeypatch.setattr(polineurons, "load_model", lambda name=None, **kw: real_load("tiny-llama", cache=tiny_cache))
    block = _quick_start()
    assert len(block.strip().splitlines()) <= 15
    exec(compile(block, str(README), "exec"), {})
    printed = capsys.readouterr().out
    assert "immigration" in printed and "CTG" in printed


def test_readme_python_examples_run(embedded_model, monkeypatch, capsys, tmp_path, tiny_cache):
    import polineurons

    monkeypatch.chdir(tmp_path)  # examples write to runs/
    monkeypatch.setenv("POLINEURONS_CACHE", str(tiny_cache))
    real_load = polineurons.load_model

    def load(name=None, **kwargs):
        # Reuse the session's embedded model (read-only in the examples) instead of reloading it.
        return embedded_model if name is None else real_load(name, **kwargs)

    monkeypatch.setattr(polineurons, "load_model", load)
    quick_start = _quick_start()  # run on a tiny model above: fine-tuning the embedded one takes minutes
    blocks = [block for block in _blocks(README.read_text()) if block != quick_start]
    assert blocks
    namespace: dict = {}  # the examples build on each other, like cells of one notebook
    for block in blocks:
        exec(compile(block, str(README), "exec"), namespace)
    printed = capsys.readouterr().out
    assert "Paris" in printed and "torch.Size([1, 37, 1536])" in printed
