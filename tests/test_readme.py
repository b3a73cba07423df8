"""README examples must run as written."""

import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_python_examples_run(embedded_model, monkeypatch, capsys, tmp_path, tiny_cache):
    import polineurons

    monkeypatch.chdir(tmp_path)  # examples write to runs/
    monkeypatch.setenv("POLINEURONS_CACHE", str(tiny_cache))
    real_load = polineurons.load_model

    def load(name=None, **kwargs):
        # Reuse the session's embedded model (read-only in the examples) instead of reloading it.
        return embedded_model if name is None else real_load(name, **kwargs)

    monkeypatch.setattr(polineurons, "load_model", load)
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)
    assert blocks
    namespace: dict = {}  # the examples build on each other, like cells of one notebook
    for block in blocks:
        exec(compile(block, str(README), "exec"), namespace)
    printed = capsys.readouterr().out
    assert "Paris" in printed and "torch.Size([1, 37, 1536])" in printed
