import math

import pytest
import torch

from polineurons import load_model
from polineurons.data import load_data
from polineurons.neurons import NeuronSet
from polineurons.patching import (
    attribution_scores,
    check_attribution,
    exact_neuron_effects,
    patched_item_scores,
    recovery_table,
)
from polineurons.stats import spearman


@pytest.fixture(scope="module")
def items():
    return list(load_data().select(topics=["race", "science"], split="eval", max_items=2).items)


def tuned_copy(tiny_cache, factor=1.5, layers=(0, 1, 2), down=False, dtype=torch.float32):
    """A copy whose MLP input weights (gate/up) differ; with ``down`` the output weights too."""
    model = load_model("tiny-llama", device="cpu", cache=tiny_cache, dtype=dtype)
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for layer in layers:
            mlp = model.blocks[layer].mlp
            for role in ("gate", "in") + (("out",) if down else ()):
                weight = getattr(mlp, role).original_component.weight
                weight += (factor - 1) * torch.randn(weight.shape, generator=generator) * weight.std()
    return model


def test_empty_set_gives_base_and_all_neurons_give_finetuned(tiny_llama, tiny_cache, items):
    tuned = tuned_copy(tiny_cache)
    sets = {"empty": NeuronSet.for_model(tiny_llama), "all": NeuronSet.for_model(tiny_llama, full=True)}
    scores = patched_item_scores(tiny_llama, tuned, items, sets, progress=False)
    assert [s.score for s in scores["empty"]] == [s.score for s in scores["base"]]
    for patched, full in zip(scores["all"], scores["finetuned"], strict=True):
        assert patched.score == pytest.approx(full.score, abs=1e-5)
    assert any(abs(b.score - f.score) > 1e-3 for b, f in zip(scores["base"], scores["finetuned"], strict=True))
    table = recovery_table(scores)
    for row in table["all"].values():
        assert row.recovery == pytest.approx(1.0, abs=1e-3) and row.n == 2
    assert all(row.recovery == 0.0 for row in table["empty"].values())


def test_patching_checks_its_inputs(tiny_llama, items):
    with pytest.raises(ValueError, match="two model objects"):
        patched_item_scores(tiny_llama, tiny_llama, items, {}, progress=False)


def test_attribution_matches_exact_patching_to_first_order(tiny_cache, items):
    # float64 and a tiny weight change: the first-order estimate must agree with exact patching
    base = load_model("tiny-llama", device="cpu", cache=tiny_cache, dtype=torch.float64)
    tuned = tuned_copy(tiny_cache, factor=1.001, dtype=torch.float64)
    neurons = [(layer, index) for layer in range(3) for index in range(0, 96, 12)]  # 24 neurons
    approx = attribution_scores(base, tuned, items, progress=False)
    exact = torch.tensor(exact_neuron_effects(base, tuned, items, neurons), dtype=torch.float64)
    approx_sample = torch.tensor([float(approx[layer, i]) for layer, i in neurons], dtype=torch.float64)
    assert exact.abs().max() > 0
    torch.testing.assert_close(approx_sample, exact, rtol=0.01, atol=0.01 * exact.abs().max().item())


def test_attribution_check_reports_rank_correlation(tiny_llama, tiny_cache, items):
    tuned = tuned_copy(tiny_cache, factor=1.2)
    neurons = [(layer, index) for layer in range(3) for index in range(0, 96, 10)]
    check = check_attribution(tiny_llama, tuned, items, neurons)
    assert len(check.exact) == 30 and check.spearman > 0.8
    assert check.seconds_attribution > 0 and check.speedup(288) > 0


def test_spearman():
    assert spearman([1, 2, 3], [10, 20, 30]) == pytest.approx(1.0)
    assert spearman([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)
    assert spearman([1, 1, 2], [1, 1, 2]) == pytest.approx(1.0)
    assert math.isnan(spearman([1, 1, 1], [1, 2, 3]))  # a constant side has no ranking
