import json

import numpy as np
import pytest

from polineurons.generalization import (
    Generalization,
    SeedHeadlines,
    compare,
    generalization_matrix,
    leaning_split,
    seed_headlines,
)
from polineurons.stance import ItemScore, StanceResult, summarize
from polineurons.viz import generalization_heatmap


def result(scores_by_topic):
    items = tuple(
        ItemScore(f"{topic}-{i}", topic, score, 0.0)
        for topic, scores in scores_by_topic.items()
        for i, score in enumerate(scores)
    )
    return StanceResult(items, summarize(items))


BEFORE = result({"a": [0.0, 0.1, -0.1], "b": [0.2, 0.2, 0.2], "c": [-0.5, -0.4, -0.6]})
AFTER = result({"a": [0.6, 0.7, 0.5], "b": [0.3, 0.2, 0.4], "c": [-0.4, -0.3, -0.5]})


def test_shift_ctg_and_ratio():
    g = compare(BEFORE, AFTER, "a")
    assert g.target_shift == pytest.approx(0.6)
    assert g.shifts["b"].shift == pytest.approx(0.1) and g.shifts["c"].shift == pytest.approx(0.1)
    assert g.ctg == pytest.approx(0.1) and g.ctg_ratio == pytest.approx(1 / 6)
    assert g.shifts["a"].ci_low == pytest.approx(0.6) == g.shifts["a"].ci_high  # identical paired diffs
    assert g.shifts["b"].base == pytest.approx(0.2) and g.shifts["b"].n == 3
    data = g.to_dict()
    assert set(data) >= {"target", "target_shift", "ctg", "ctg_ratio", "shifts"}
    assert set(data["shifts"]["b"]) >= {"shift", "ci_low", "ci_high"}
    json.dumps(data)


def test_no_target_movement_gives_no_ratio():
    assert compare(BEFORE, BEFORE, "a").ctg_ratio is None


def test_errors():
    with pytest.raises(ValueError, match="Target topic 'z'"):
        compare(BEFORE, AFTER, "z")
    with pytest.raises(ValueError, match="scored after fine-tuning but not before"):
        compare(result({"a": [0.0]}), AFTER, "a")


def test_matrix_and_heatmap():
    results = {"a": compare(BEFORE, AFTER, "a"), "b": compare(BEFORE, AFTER, "b")}
    targets, topics, matrix = generalization_matrix(results)
    assert targets == ["a", "b"] and topics == ["a", "b", "c"]
    assert np.allclose(matrix, [[0.6, 0.1, 0.1], [0.6, 0.1, 0.1]])
    figure = generalization_heatmap(targets, topics, matrix)
    assert figure.data[0].z.shape == (2, 3) and figure.data[0].zmax == pytest.approx(0.6)
    with pytest.raises(ValueError, match="expected"):
        generalization_heatmap(["a"], topics, matrix)


def test_a_left_leaning_fine_tune_is_signed_toward_left():
    right, left = compare(BEFORE, AFTER, "a"), compare(BEFORE, AFTER, "a", leaning="left")
    assert left.target_shift == pytest.approx(-right.target_shift) and left.ctg == pytest.approx(-right.ctg)
    assert left.ctg_ratio == pytest.approx(right.ctg_ratio)
    assert left.shifts == right.shifts  # per-topic shifts stay raw: positive = right
    assert Generalization.from_dict(json.loads(json.dumps(left.to_dict()))) == left


def test_seed_headlines_pool_the_seeds_and_agree_with_one_seed():
    other = result({"a": [0.4, 0.5, 0.3], "b": [0.3, 0.4, 0.2], "c": [-0.5, -0.5, -0.4]})
    one = seed_headlines(BEFORE, [AFTER], "a", "right")
    assert one.pooled == one.per_seed[0] and one.seed_sd == {"target_shift": 0.0, "ctg": 0.0, "ctg_ratio": 0.0}
    assert one.pooled.ctg.value == pytest.approx(compare(BEFORE, AFTER, "a").ctg)
    assert one.pooled.ctg.ci_low <= one.pooled.ctg.value <= one.pooled.ctg.ci_high
    two = seed_headlines(BEFORE, [AFTER, other], "a", "right", seeds=[3, 4])
    assert two.per_seed[0] == one.per_seed[0]  # the same item draws for every seed
    expected = [compare(BEFORE, r, "a") for r in (AFTER, other)]
    assert two.pooled.target_shift.value == pytest.approx(np.mean([g.target_shift for g in expected]))
    assert two.pooled.ctg.value == pytest.approx(np.mean([g.ctg for g in expected]))
    assert two.seed_sd["ctg"] == pytest.approx(np.std([g.ctg for g in expected], ddof=1))
    assert SeedHeadlines.from_dict(json.loads(json.dumps(two.to_dict()))) == two
    left = seed_headlines(BEFORE, [AFTER, other], "a", "left")
    assert left.pooled.ctg.value == pytest.approx(-two.pooled.ctg.value)
    assert left.pooled.ctg.ci_low == pytest.approx(-two.pooled.ctg.ci_high)


def test_leaning_split_identities():
    def mirror(run):  # the left fine-tune moves every item exactly opposite to the right one
        base = {i.id: i.score for i in BEFORE.items}
        return result({t: [2 * base[i.id] - i.score for i in run.items if i.topic == t] for t in ("a", "b", "c")})

    split = leaning_split(BEFORE, AFTER, mirror(AFTER), "a")
    right = compare(BEFORE, AFTER, "a")
    assert split.target_ideology.value == pytest.approx(right.target_shift)  # all ideology, no drift
    assert split.ctg_ideology.value == pytest.approx(right.ctg)
    assert split.ctg_drift.value == pytest.approx(0.0) and split.ctg_drift.ci_high == pytest.approx(0.0)
    same = leaning_split(BEFORE, AFTER, AFTER, "a")  # both leanings moved the same way: all drift
    assert same.target_ideology.value == pytest.approx(0.0) and same.ctg_ideology.value == pytest.approx(0.0)
    assert same.ctg_drift.value == pytest.approx(right.ctg) and same.drift["a"] == pytest.approx(0.6)
    assert set(json.loads(json.dumps(split.to_dict()))) == {
        "target",
        "target_ideology",
        "ctg_ideology",
        "ctg_drift",
        "ideology",
        "drift",
    }
    with pytest.raises(ValueError, match="same topics"):
        leaning_split(BEFORE, AFTER, result({"a": [0.0, 0.1, -0.1]}), "a")
