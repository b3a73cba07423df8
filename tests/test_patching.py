import math

import pytest
import torch

from polineurons import load_model
from polineurons.batching import pad_id_of, sequence_batches
from polineurons.data import load_data
from polineurons.hooks import record_neurons
from polineurons.neurons import ControlDrawError, NeuronSet
from polineurons.patching import (
    CTG,
    PatchConfig,
    attribution_scores,
    check_attribution,
    exact_neuron_effects,
    mean_activations,
    patch_sets,
    patched_item_scores,
    recovery_table,
)
from polineurons.pnlac import Localization
from polineurons.stance import stance_pairs
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


def test_mean_ablation_identities(tiny_llama, tiny_cache, items):
    """Ablating nothing leaves the fine-tuned model; ablating every neuron of a model whose fine-tune
    changed only MLP input weights gives the base model with every neuron ablated (the MLPs' outputs
    are then the same constants in both); the mean is the base model's mean over real tokens."""
    tuned = tuned_copy(tiny_cache)
    empty, full = NeuronSet.for_model(tiny_llama), NeuronSet.for_model(tiny_llama, full=True)
    scores = patched_item_scores(tiny_llama, tuned, items, {}, ablate={"empty": empty, "all": full}, progress=False)
    assert [s.score for s in scores["ablate:empty"]] == [s.score for s in scores["finetuned"]]
    copy = load_model("tiny-llama", device="cpu", cache=tiny_cache)  # the base, ablated with the same means
    on_base = patched_item_scores(tiny_llama, copy, items, {}, ablate={"all": full}, progress=False)
    for a, b in zip(scores["ablate:all"], on_base["ablate:all"], strict=True):
        assert a.score == pytest.approx(b.score, abs=1e-5)
    table = recovery_table(scores, target="race")
    assert all(row.recovery == 0.0 for row in table["ablate:empty"].values())


def test_mean_activations_is_the_masked_mean(tiny_llama, items):
    pairs = stance_pairs(tiny_llama.tokenizer, items)
    batches, _ = sequence_batches(pairs, 3, pad_id_of(tiny_llama), "cpu")
    means = mean_activations(tiny_llama, batches)
    rows = []
    for prompt, answer in pairs:
        with torch.no_grad(), record_neurons(tiny_llama, [1]) as recorded:
            tiny_llama(torch.tensor([prompt + answer]))
        rows.append(recorded[1][0].double())
    torch.testing.assert_close(means[1].double(), torch.cat(rows).mean(dim=0), rtol=1e-5, atol=1e-6)


def test_ctg_column_pools_the_other_topics(tiny_llama, tiny_cache):
    items = list(load_data().select(topics=["race", "science", "immigration"], split="eval", max_items=2).items)
    half = NeuronSet.from_indices({layer: range(48) for layer in range(3)}, 3, 96)
    scores = patched_item_scores(tiny_llama, tuned_copy(tiny_cache), items, {"half": half}, progress=False)
    row = recovery_table(scores, target="race")["half"][CTG]
    others = [i for i, item in enumerate(items) if item.topic != "race"]
    part = sum(scores["half"][i].score - scores["base"][i].score for i in others)
    full = sum(scores["finetuned"][i].score - scores["base"][i].score for i in others)
    assert row.recovery == pytest.approx(part / full, rel=1e-9) and row.n == 4
    with pytest.raises(ValueError, match="target"):
        recovery_table(scores, target="economy")


def test_patch_controls_are_disjoint_from_the_general_set(tiny_llama):
    general = NeuronSet.from_indices({0: range(30), 2: range(10, 40)}, 3, 96)
    located = Localization({"a": torch.rand(3, 96)}, {"a": general}, general, {"a": general - general})
    sets = patch_sets(located, tiny_llama, PatchConfig(random_seeds=3))
    controls = [s for name, s in sets.items() if name.startswith("random:")]
    assert len(controls) == 3 and len({tuple(c) for c in controls}) == 3
    for control in controls:
        assert len(control & general) == 0 and control.layer_counts() == general.layer_counts()
    crowded = NeuronSet.from_indices({0: range(60)}, 3, 96)  # 60 of 96: no 60 others left
    with pytest.raises(ControlDrawError, match="cannot draw"):
        patch_sets(Localization({"a": torch.rand(3, 96)}, {"a": crowded}, crowded, {"a": crowded}), tiny_llama)
