"""The spill-over screen on a tiny model: identities of its directions and of the lexical check."""

import json

import pytest
import torch

from polineurons.data import load_data
from polineurons.screen import ScreenConfig, answer_direction, default_layers, lexical_transfer, screen


@pytest.fixture(scope="module")
def items():
    return load_data("voices").select(topics=["race"], split="train", max_items=4).items


def test_swapping_the_answers_negates_the_direction(tiny_llama, items):
    direction = answer_direction(tiny_llama, items, [0, 2])
    swapped = answer_direction(tiny_llama, [i.swapped() for i in items], [0, 2])
    assert direction.shape == (2, tiny_llama.cfg.d_model)
    assert torch.allclose(swapped, -direction, atol=1e-9)


def test_batched_equals_unbatched(tiny_llama, items):
    together = answer_direction(tiny_llama, items, [1], batch_size=8)
    alone = answer_direction(tiny_llama, items, [1], batch_size=1)
    assert torch.allclose(together, alone, atol=1e-5)


def test_lexical_markers_transfer_to_themselves_and_flip_when_swapped():
    train = load_data("voices").select(topics=["immigration"], split="train").items
    assert lexical_transfer(train, train) > 1.0
    assert lexical_transfer(train, [i.swapped() for i in train]) == pytest.approx(-lexical_transfer(train, train))


def test_screen_result_has_the_documented_fields(tiny_llama):
    data = load_data("voices")
    result = screen(tiny_llama, data, "immigration", ScreenConfig(max_train_items=4, max_eval_items=2))
    assert result.layers == list(default_layers(3)) and default_layers(30) == (6, 12, 18, 24)
    assert result.topics["immigration"].predicted_ctg == pytest.approx(1.0)  # the target, by definition
    payload = json.loads(json.dumps(result.to_dict()))
    assert set(payload["topics"]) == set(data.topics)
    for row in payload["topics"].values():
        assert {"cosine", "predicted_ctg", "lexical", "cosine_by_layer"} <= set(row) and -1 <= row["cosine"] <= 1
    others = [row["predicted_ctg"] for t, row in payload["topics"].items() if t != "immigration"]
    assert payload["predicted_ctg_ratio"] == pytest.approx(sum(others) / len(others))
    cosines = [row["cosine"] for t, row in payload["topics"].items() if t != "immigration"]
    assert payload["transfer_cosine"] == pytest.approx(sum(cosines) / len(cosines))
    assert "predicted CTG ratio" in result.table()
