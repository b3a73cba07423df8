import json

import numpy as np
import pytest

from polineurons.generalization import compare, generalization_matrix
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
