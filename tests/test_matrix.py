"""`polineurons matrix` on a tiny model: every cell, both leanings, resumable, grows by cells, refuses other
settings."""

import importlib.util
import json
from pathlib import Path

import pytest

from polineurons.config import RunConfig
from polineurons.errors import RunError
from polineurons.matrix import LEANINGS, MatrixConfig, matrix_text, run_matrix
from polineurons.report import build_matrix_report
from polineurons.study import Study
from tests.helpers import trial_labels

ROOT = Path(__file__).resolve().parents[1]


def _matrix(config, cells, folder):
    with Study.open(folder, device="cpu", progress=False, echo=lambda message: None) as study:
        return run_matrix(study, config, cells)


def test_matrix_cells_resume_and_report(tiny_env, tmp_path, monkeypatch):
    config = RunConfig.from_preset("smoke", model="tiny-llama")
    cells = MatrixConfig(targets=("race", "science"), leanings=("left", "right"))
    right = _matrix(config, MatrixConfig(cells.targets, ("right",)), tmp_path)
    assert [(c["target"], c["leaning"]) for c in right["cells"]] == [("race", "right"), ("science", "right")]
    assert right["leanings"] == ["right"] and right["targets"] == ["race", "science"]
    # a second call adds the other leaning's cells; matrix.json then holds all four, in topic order
    result = _matrix(config, MatrixConfig(cells.targets, ("left",)), tmp_path)
    assert result["leanings"] == ["left", "right"]
    assert [c for c in result["cells"] if c["leaning"] == "right"] == right["cells"]
    # ideology (flips with the leaning) + drift (does not) add up to each leaning's CTG
    assert right["leaning_split"] == {} and list(result["leaning_split"]) == ["race", "science"]
    for target, split in result["leaning_split"].items():
        ctg = {c["leaning"]: c["headline"]["ctg"]["value"] for c in result["cells"] if c["target"] == target}
        assert split["ctg_ideology"]["value"] == pytest.approx((ctg["right"] + ctg["left"]) / 2)
        assert split["ctg_drift"]["value"] == pytest.approx((ctg["right"] - ctg["left"]) / 2)
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
    # each cell is the fine-tune toward its own leaning (the split's identities alone would hold for any two)
    assert trial_labels(tmp_path) == [f"{t}-{lean}-vanilla-seed0" for t in ("race", "science") for lean in LEANINGS]
    for path in (tmp_path / "trials").glob("*.json"):
        trial = json.loads(path.read_text())
        assert trial["training"]["leaning"] == trial["settings"]["leaning"] == path.name.split("-")[1]
    assert "race" in matrix_text(result) and "CTG on crosscheck" in matrix_text(result)
    page = build_matrix_report(result)
    assert page.count("Plotly.newPlot") == 1 and "fine-tuned toward left" in page and "CTG drift" in page

    import polineurons.study as study

    monkeypatch.setattr(study, "train_and_score", lambda *a, **k: pytest.fail("a finished cell must not be retrained"))
    assert _matrix(config, cells, tmp_path) == result
    with pytest.raises(RunError, match=r"other settings: finetune.learning_rate \(stored 0.001, now 0.5\)"):
        _matrix(config.with_overrides({"finetune.learning_rate": 0.5}), cells, tmp_path)
    with pytest.raises(RunError, match="Unknown target"):
        _matrix(config, MatrixConfig(targets=("weather",)), tmp_path / "other")
    monkeypatch.undo()

    # the screen's validation script reads the folder: one screen per (target, eval set), both leanings' cells
    spec = importlib.util.spec_from_file_location("screen_validation", ROOT / "figures" / "screen_validation.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    args = [str(tmp_path), "--model", "tiny-llama", "--check", "crosscheck", "--out", str(tmp_path / "v"), "--no-png"]
    assert script.main(args) == 0
    validation = json.loads((tmp_path / "v" / "validation.json").read_text())
    rows = {(r["target"], r["leaning"], r["eval"]): r for r in validation["rows"]}
    assert len(rows) == len(validation["rows"]) == 2 * len(result["cells"]) + len(result["leaning_split"])
    for target, split in result["leaning_split"].items():  # one more row per target fine-tuned both ways
        assert rows[target, "ideology", "voices"]["measured"]["ctg"] == split["ctg_ideology"]["value"]
        assert rows[target, "ideology", "voices"]["screen"] == rows[target, "right", "voices"]["screen"]
    for cell in result["cells"]:
        own = rows[cell["target"], cell["leaning"], "voices"]
        check = rows[cell["target"], cell["leaning"], "crosscheck"]
        assert own["measured"]["ctg"] == cell["headline"]["ctg"]["value"]
        assert check["measured"]["ctg"] == cell["checks"]["crosscheck"]["ctg"]["value"]
        other = "left" if cell["leaning"] == "right" else "right"  # the screen does not depend on the leaning
        assert own["screen"] == rows[cell["target"], other, "voices"]["screen"] != check["screen"]
    spearman = validation["spearman"]
    assert set(spearman) >= {
        "transfer_cosine vs ctg (voices eval, trained on voices, both, n = 4)",
        "lexical_transfer vs ctg_ratio (crosscheck eval, trained on voices, both, n = 4)",
    }
    assert spearman["transfer_cosine vs ctg (voices eval, trained on voices, left, n = 2)"] is None  # too few cells
    assert "transfer_cosine vs ctg (voices eval, trained on voices, ideology, n = 2)" in spearman
    assert validation["pairwise"] == {}  # one training data set: nothing to order
    # the figure redraws from validation.json alone: a panel per (data, eval set), every row once, no text labels
    replot = ["--replot", str(tmp_path / "v" / "validation.json"), "--out", str(tmp_path / "r"), "--no-png"]
    assert script.main(replot) == 0 and (tmp_path / "r" / "validation.html").is_file()
    figure = script.validation_figure(validation["rows"])
    points = [x for trace in figure.data if trace.x != (None,) for x in trace.x]
    assert len(points) == len(validation["rows"]) and all("text" not in trace.mode for trace in figure.data)
    panels = [a.text for a in figure.layout.annotations]
    assert panels == ["trained on voices, scored on voices", "trained on voices, scored on crosscheck"]


def _row(data, target, screen, ctg):
    return {"data": data, "target": target, "leaning": "right", "eval": "voices", "screen": screen, "measured": ctg}


def test_screen_validation_orders_pairs_and_ranks():
    spec = importlib.util.spec_from_file_location("screen_validation", ROOT / "figures" / "screen_validation.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    screens = [{"transfer_cosine": c, "predicted_ctg_ratio": -c, "lexical_transfer": 0.1} for c in (0.1, 0.2, 0.3)]
    v2 = [_row("v2", t, screens[i], {"ctg": 0.1 * (i + 1), "ctg_ratio": 0.5}) for i, t in enumerate("abc")]
    rows = v2 + [_row("v1", t, screens[2 - i], {"ctg": 0.0, "ctg_ratio": 0.5}) for i, t in enumerate("abc")]
    orders = script.pairwise_orderings(rows)
    # v1's screen is above v2's on a (0.3 vs 0.1), equal on b, below on c; measured v2 > v1 on every target
    assert orders["transfer_cosine: v2 vs v1 (voices eval, right)"] == {"agree": 1, "targets": 3}
    assert orders["predicted_ctg_ratio: v2 vs v1 (voices eval, right)"] == {"agree": 1, "targets": 3}
    ranks = script.rank_correlations(rows)
    assert ranks["transfer_cosine vs ctg (voices eval, trained on v2, right, n = 3)"] == pytest.approx(1.0)
    assert ranks["predicted_ctg_ratio vs ctg (voices eval, trained on v2, right, n = 3)"] == pytest.approx(-1.0)
    assert ranks["lexical_transfer vs ctg (voices eval, trained on v2, right, n = 3)"] is None  # constant screen
    assert ranks["transfer_cosine vs ctg (voices eval, trained on v1, right, n = 3)"] is None  # constant CTG
