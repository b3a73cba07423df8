"""The spill-over screen on a tiny model: identities of its directions and of the lexical check."""

import json
import os
import subprocess
import sys

import pytest
import torch

from polineurons.data import load_data
from polineurons.screening import ScreenConfig, answer_direction, default_layers, lexical_transfer, screen, stance_axes


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


def test_precomputed_axes_give_the_same_screen(tiny_llama):
    data, config = load_data("voices"), ScreenConfig(max_train_items=4, max_eval_items=2)
    axes = stance_axes(tiny_llama, data, config)
    for target in ("race", "science"):
        assert screen(tiny_llama, data, target, config, axes=axes) == screen(tiny_llama, data, target, config)
    with pytest.raises(ValueError, match="computed on voices"):
        screen(tiny_llama, data, "race", config, eval_data=load_data("crosscheck"), axes=axes)
    with pytest.raises(ValueError, match="layers"):
        screen(tiny_llama, data, "race", ScreenConfig(layers=(0,), max_train_items=4, max_eval_items=2), axes=axes)


def test_lexical_transfer_does_not_depend_on_the_hash_seed():
    code = (
        "from polineurons.data import load_data; from polineurons.screening import lexical_transfer;"
        "d = load_data('voices');"
        "print(repr(lexical_transfer(d.select(topics=['gender_and_sexuality'], split='train').items,"
        " d.select(topics=['race'], split='eval').items)))"
    )
    outputs = {
        subprocess.run(
            [sys.executable, "-c", code], env={**os.environ, "PYTHONHASHSEED": seed}, capture_output=True, text=True
        ).stdout
        for seed in ("1", "2", "3")
    }
    assert len(outputs) == 1 and outputs != {""}
