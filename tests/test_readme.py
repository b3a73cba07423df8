"""README examples must run as written."""

import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_python_examples_run(embedded_model, monkeypatch, capsys):
    import polineurons

    # Reuse the session's embedded model instead of loading it a second time.
    monkeypatch.setattr(polineurons, "load_model", lambda *a, **k: embedded_model)
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)
    assert blocks
    for block in blocks:
        exec(compile(block, str(README), "exec"), {})
    printed = capsys.readouterr().out
    assert "Paris" in printed and "torch.Size([1, 37, 1536])" in printed
