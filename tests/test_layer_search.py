"""The layer search on a tiny model: its candidates, one-layer views of the ingredients that equal
ingredients made for that layer alone, and a search that trains each layer once, reads back what is
stored, and recommends the layers with the best net spill-over cut."""

import functools
import json

import pytest
import torch

from polineurons import load_model
from polineurons.data import load_data
from polineurons.hooks import AblateDirections
from polineurons.layer_search import LayerSearchConfig, layer_search_text, run_layer_search
from polineurons.methods import METHODS, Ingredients, MitigateConfig
from polineurons.stance import StanceConfig
from polineurons.study import Study
from polineurons.training import FinetuneConfig
from polineurons.trial import TrialSpec
from tests.helpers import leaning_models

FAST = FinetuneConfig(max_steps=3, batch_size=4, max_seq_len=320, learning_rate=1e-2, warmup_steps=0)


def _spec():
    return TrialSpec(load_data(), "race", "right", FAST, StanceConfig(max_items=1, neutral_items=4), model="tiny-llama")


def test_candidates_default_to_every_nth_layer_and_refuse_what_the_model_lacks():
    assert LayerSearchConfig().candidates(30) == list(range(0, 30, 3))
    assert LayerSearchConfig(every=5).candidates(12) == [0, 5, 10]
    assert LayerSearchConfig(layers=(4, 2, 4)).candidates(12) == [4, 2]
    with pytest.raises(ValueError, match="has 12 layers"):
        LayerSearchConfig(layers=(12,)).candidates(12)
    for bad in ({"strength": 0.0}, {"every": 0}, {"pick": 0}, {"steps": 0}, {"layers": (-1,)}):
        with pytest.raises(ValueError):
            LayerSearchConfig(**bad)


@pytest.mark.parametrize("name", ["caft", "caft-flip"])
def test_a_one_layer_view_equals_ingredients_made_for_that_layer(tiny_cache, name):
    base = functools.cache(lambda: load_model("tiny-llama", device="cpu", cache=tiny_cache))
    models = leaning_models(tiny_cache, FAST)
    both = Ingredients(MitigateConfig(layers=(0, 2), items=2), _spec(), base, **models)
    for layer in (0, 2):
        alone = Ingredients(MitigateConfig(layers=(layer,), items=2), _spec(), base, **models)
        for control in (False, True):
            viewed = METHODS[name].build(both.at_layer(layer, METHODS[name].directions), 0.5, 1, control)
            made = METHODS[name].build(alone, 0.5, 1, control)
            assert isinstance(viewed, AblateDirections) and set(viewed.directions) == {layer}
            torch.testing.assert_close(viewed.directions[layer], made.directions[layer], rtol=0, atol=1e-6)
    assert both.layers() == [0, 2]  # the view changed nothing of its parent
    with pytest.raises(ValueError, match="not one of"):
        both.at_layer(1)


def test_the_search_trains_each_layer_once_and_recommends_by_net_cut(tiny_env, tmp_path, monkeypatch):
    search = LayerSearchConfig(layers=(0, 2), strength=1.0, steps=2, pick=1)
    mitigate = MitigateConfig(items=2)
    with Study.open(tmp_path, device="cpu", progress=False, echo=lambda m: None) as study:
        found = run_layer_search(study, _spec(), mitigate, search)
    names = sorted(p.name.rsplit("-", 1)[0] for p in (tmp_path / "trials").glob("*.json"))
    assert names == ["race-right-caft-s1-seed0"] * 2 + ["race-right-vanilla-seed0"]
    trials = [json.loads(p.read_text()) for p in sorted((tmp_path / "trials").glob("*-caft-*.json"))]
    assert sorted(t["settings"]["intervention"]["layers"] for t in trials) == [[0], [2]]
    assert all(t["settings"]["finetune"]["max_steps"] == 2 for t in trials)
    assert json.loads((tmp_path / "layer_search.json").read_text()) == json.loads(json.dumps(found))
    rows = {r["layer"]: r for r in found["layers"]}
    assert set(rows) == {0, 2} and found["search"]["steps"] == 2
    for row in rows.values():
        assert row["net"] == pytest.approx(row["ctg_reduction"] - max(0.0, 1 - row["target_kept"]))
        assert row["target_kept_ci_low"] <= row["target_kept"] <= row["target_kept_ci_high"]
    assert found["recommended"] == [max(rows, key=lambda layer: rows[layer]["net"])]
    assert f"recommended: --mitigate.layers {found['recommended'][0]}" in layer_search_text(found)

    import polineurons.study as study_module

    monkeypatch.setattr(study_module, "train_and_score", lambda *a, **k: pytest.fail("a stored layer was retrained"))
    with Study.open(tmp_path, device="cpu", progress=False, echo=lambda m: None) as study:
        again = run_layer_search(study, _spec(), mitigate, search)
    assert again["layers"] == found["layers"]
