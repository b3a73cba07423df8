"""One league over several mitigation folders: the folders' own readings, best first, with what differs."""

import json
import shutil

import pytest

from polineurons.against import frontier_against
from polineurons.errors import MissingFileError, UserError
from polineurons.io import read_json
from polineurons.league import folder_readings, league_across, league_across_text


def _estimate(value):
    return {"value": value, "ci_low": value - 0.1, "ci_high": value + 0.1}


def _folder(root, name, *, steps, target="immigration", readings):
    """A folder as `mitigate` leaves it, holding only what the league reads. ``readings``: method ->
    (CTG reduction at 90% kept or None, the method's stored settings)."""
    folder = root / name
    folder.mkdir()
    shared = {"target": target, "leaning": "right", "finetune": {"epochs": 1, "max_steps": steps}}
    (folder / "study.json").write_text(json.dumps({"plans": {"mitigate": shared}}))
    at_90 = {
        method: {
            "seeds": [0],
            "strength": 0.3,
            "ctg_reduction": _estimate(value),
            "control_ctg_reduction": _estimate(0.0),
        }
        if value is not None
        else {"seeds": [0], "ctg_reduction": None, "reason": "every strength keeps at least 90%"}
        for method, (value, _) in readings.items()
    }
    result = {
        "vanilla": {"pooled": {"target_shift": 0.2, "ctg": 0.09}},
        "at_90": at_90,
        "league": [{"method": m, "seeds": [0]} for m, row in at_90.items() if row["ctg_reduction"]],
        "method_settings": {method: made for method, (_, made) in readings.items()},
        "model": {"name": "tiny"},
        "data": {"source": "voices"},
    }
    (folder / "mitigation.json").write_text(json.dumps(result))
    return folder


def test_readings_come_best_first_with_only_the_settings_that_differ(tmp_path):
    flip = {"directions": "flip", "rank": 1, "direction_tokens": "answer"}
    leaning = {"directions": "leaning", "rank": 2}
    stopgrad = (None, {"percent": 5})
    short = _folder(tmp_path, "short", steps=16, readings={"caft": (0.3, flip | {"items": 16}), "stopgrad": stopgrad})
    long = _folder(tmp_path, "long", steps=54, readings={"caft": (0.4, leaning | {"items": 16})})
    readings = league_across([short, long])
    order = [(str(long), "caft"), (str(short), "caft"), (str(short), "stopgrad")]
    assert [(r.folder, r.method) for r in readings] == order
    # the target, leaning, model and items are the same everywhere: no difference; the token choice a
    # stored setting omits reads as its default
    assert readings[0].settings == {"finetune.max_steps": 54} | leaning | {"direction_tokens": "all"}
    assert readings[1].settings == {"finetune.max_steps": 16} | flip
    assert readings[2].settings == {"finetune.max_steps": 16}  # a neuron method's percent is no difference by itself
    assert readings[2].ctg_reduction is None and readings[2].reason.startswith("every strength")
    text = league_across_text(readings).splitlines()
    assert text[1].split()[:2] == ["long", "caft"] and "+0.40 [+0.30, +0.50]" in text[1]
    assert "no reading" in text[3] and "finetune.max_steps=16" in text[3]


def test_one_folder_reads_as_its_own_league(smoke_run):
    folder = smoke_run[0]
    result = read_json(folder / "mitigation.json")
    readings = league_across([folder])
    read = [r for r in readings if r.ctg_reduction]
    assert [r.method for r in read] == [row["method"] for row in result["league"]]
    assert [r.ctg_reduction for r in read] == [row["ctg_reduction"] for row in result["league"]]
    assert {r.method for r in readings} == set(result["at_90"])
    assert all(r.settings == {} for r in readings)  # one folder: nothing sets a reading apart
    assert result["checks"]
    for r in readings:  # each check data set's reading beside the main one
        assert r.checks == {name: c["at_90"][r.method]["ctg_reduction"] for name, c in result["checks"].items()}
    assert {r.method for r in folder_readings(folder)} == set(result["at_90"])


def test_a_folder_without_a_comparison_is_named(tmp_path):
    with pytest.raises(MissingFileError, match=f"{tmp_path} holds no mitigation.json.*polineurons mitigate"):
        league_across([tmp_path])
    with pytest.raises(ValueError, match="at least one folder"):
        league_across([])


def _reference(folder, root, *, trial_of, max_steps=None, target=None):
    """A copy of the comparison in ``folder`` whose only vanilla is the trial of arm label ``trial_of``
    (stored as a vanilla fine-tune), with its plan's (and that trial's) training or target edited."""
    reference = root / "reference"
    (reference / "trials").mkdir(parents=True)
    shutil.copytree(folder / "base", reference / "base")
    study = read_json(folder / "study.json")
    plan = study["plans"]["mitigate"]
    if max_steps is not None:
        plan["finetune"]["max_steps"] = max_steps
    if target is not None:
        plan["target"] = target
    (reference / "study.json").write_text(json.dumps(study))
    for path in (folder / "trials").glob("*.json"):
        trial = read_json(path)
        made = trial["settings"]["intervention"]
        if (made or {}).get("label", "vanilla") == trial_of:
            trial["settings"] |= {"intervention": None, "finetune": plan["finetune"] | {"seed": 0}}
            trial["settings"]["target"] = plan["target"]
            (reference / "trials" / path.name).write_text(json.dumps(trial))
    return reference


def test_a_folder_read_against_itself_is_its_own_reading(smoke_run, tmp_path):
    folder = smoke_run[0]
    own = read_json(folder / "mitigation.json")
    against = frontier_against(folder, _reference(folder, tmp_path, trial_of="vanilla", max_steps=99))
    assert against["folder_vanilla"]["target_kept"] == pytest.approx(1.0)
    assert against["folder_vanilla"]["ctg_reduction"] == pytest.approx(0.0, abs=1e-9)
    assert against["finetune"]["max_steps"] != against["reference_finetune"]["max_steps"] == 99
    for method, at_90 in own["at_90"].items():
        if at_90["ctg_reduction"] is None:
            assert against["at_90"][method]["ctg_reduction"] is None
        else:
            assert against["at_90"][method]["ctg_reduction"]["value"] == pytest.approx(at_90["ctg_reduction"]["value"])
    for method, rows in own["frontier"].items():
        read = {row["strength"]: row for row in against["frontier"][method]}
        assert read[0.0]["target_kept"] == pytest.approx(1.0)  # strength 0 is the folder's own vanilla
        for row in rows:
            assert read[row["strength"]]["target_kept"] == pytest.approx(row["target_kept"])
            assert read[row["strength"]]["ctg_reduction"] == pytest.approx(row["ctg_reduction"])


def test_the_reference_sets_what_a_frontier_keeps(smoke_run, tmp_path):
    """Against a reference whose vanilla IS the folder's caft trial, that trial keeps all and cuts nothing,
    and the folder's own vanilla keeps the inverse of what the trial kept of it."""
    folder = smoke_run[0]
    own = {row["strength"]: row for row in read_json(folder / "mitigation.json")["frontier"]["caft"]}
    strength = min(own)
    reference = _reference(folder, tmp_path, trial_of=f"caft-s{strength:g}", max_steps=3)
    against = frontier_against(folder, reference)
    row = next(r for r in against["frontier"]["caft"] if r["strength"] == strength)
    assert row["target_kept"] == pytest.approx(1.0) and row["ctg_reduction"] == pytest.approx(0.0, abs=1e-9)
    assert against["folder_vanilla"]["target_kept"] == pytest.approx(1 / own[strength]["target_kept"])
    if against["folder_vanilla"]["target_kept"] < 0.9:  # no reading interpolated from the reference's start
        assert against["league"] == [] and all(r["ctg_reduction"] is None for r in against["at_90"].values())
    readings = league_across([folder], against=reference)
    assert {r.method for r in readings} == set(against["at_90"])
    assert all(r.folder_vanilla["target_kept"] == against["folder_vanilla"]["target_kept"] for r in readings)
    assert "own vanilla" in league_across_text(readings).splitlines()[0]


def test_a_reference_that_differs_in_more_than_training_is_refused(smoke_run, tmp_path):
    folder = smoke_run[0]
    reference = _reference(folder, tmp_path, trial_of="vanilla", target="healthcare")
    with pytest.raises(UserError, match="differ in more than their training: target"):
        frontier_against(folder, reference)
    with pytest.raises(MissingFileError, match="holds no mitigation comparison"):
        frontier_against(folder, tmp_path / "empty")
