"""`polineurons matrix` on a tiny model: every cell, both leanings, resumable, refuses other settings."""

import json

import pytest

from polineurons.config import RunConfig, RunError
from polineurons.matrix import MatrixConfig, matrix_text, run_matrix
from polineurons.report import build_matrix_report


@pytest.fixture
def tiny_env(tiny_cache, monkeypatch):
    monkeypatch.setenv("POLINEURONS_CACHE", str(tiny_cache))


def test_matrix_cells_resume_and_report(tiny_env, tmp_path, monkeypatch):
    config = RunConfig.from_preset("smoke", model="tiny-llama")
    cells = MatrixConfig(targets=("race", "science"), leanings=("left", "right"))
    result = run_matrix(config, cells, tmp_path, progress=False, echo=lambda m: None)
    assert [(c["target"], c["leaning"]) for c in result["cells"]] == [
        ("race", "left"),
        ("race", "right"),
        ("science", "left"),
        ("science", "right"),
    ]
    for cell in result["cells"]:
        assert set(cell["shifts"]) == set(result["topics"]) and set(cell["checks"]) == {"crosscheck"}
        sign = 1 if cell["leaning"] == "right" else -1
        others = [row["shift"] for topic, row in cell["shifts"].items() if topic != cell["target"]]
        assert cell["headline"]["ctg"]["value"] == pytest.approx(sign * sum(others) / len(others))
        assert cell["target_shift"] == pytest.approx(sign * cell["shifts"][cell["target"]]["shift"])
    assert json.loads((tmp_path / "matrix.json").read_text()) == result
    assert "race" in matrix_text(result) and "CTG on crosscheck" in matrix_text(result)
    page = build_matrix_report(result)
    assert page.count("Plotly.newPlot") == 1 and "fine-tuned toward left" in page

    import polineurons.trial as trial

    monkeypatch.setattr(trial, "finetune", lambda *a, **k: pytest.fail("a finished cell must not be retrained"))
    assert run_matrix(config, cells, tmp_path, progress=False, echo=lambda m: None) == result
    with pytest.raises(RunError, match="other settings"):
        run_matrix(config.with_overrides({"finetune.learning_rate": 0.5}), cells, tmp_path, progress=False)
    with pytest.raises(RunError, match="Unknown target"):
        run_matrix(config, MatrixConfig(targets=("weather",)), tmp_path / "other", progress=False)
