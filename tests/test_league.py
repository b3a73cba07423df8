"""One league over several mitigation folders: the folders' own readings, best first, with what differs."""

import json

import pytest

from polineurons.errors import MissingFileError
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
    assert {r.method for r in folder_readings(folder)} == set(result["at_90"])


def test_a_folder_without_a_comparison_is_named(tmp_path):
    with pytest.raises(MissingFileError, match=f"{tmp_path} holds no mitigation.json.*polineurons mitigate"):
        league_across([tmp_path])
    with pytest.raises(ValueError, match="at least one folder"):
        league_across([])
