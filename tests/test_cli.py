from typer.testing import CliRunner

from polineurons.cli import app


def test_info_on_a_tiny_model(tiny_cache, monkeypatch):
    monkeypatch.setenv("POLINEURONS_CACHE", str(tiny_cache))
    result = CliRunner().invoke(app, ["info", "--model", "tiny-gemma3", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    assert "MLP neurons in all         288" in result.output


def test_unknown_model_exits_with_a_message():
    result = CliRunner().invoke(app, ["info", "--model", "tiny-lama"])
    assert result.exit_code == 2
    assert "Did you mean 'tiny-llama'" in result.output
