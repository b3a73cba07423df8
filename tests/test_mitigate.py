"""Mitigations on a tiny model: every intervention is an identity at strength 0 (bit for bit), its
control has the promised shape, nothing stays on the trained model, and the comparison resumes."""

import json

import numpy as np
import pytest
import torch

from polineurons import load_model
from polineurons.data import load_data
from polineurons.directions import random_like, random_subspace, random_vector
from polineurons.finetune import FinetuneConfig, finetune, training_pairs
from polineurons.hooks import AblateDirections, SteerResidual, StopGradNeurons
from polineurons.mitigate import (
    Arm,
    Interventions,
    MitigateConfig,
    compare_runs,
    neutral_logprob,
    neutral_pairs,
    plan_arms,
    run_mitigation,
    strength_at_kept,
)
from polineurons.neurons import NeuronSet
from polineurons.pnlac import Localization
from polineurons.regularizers import KLToBase
from polineurons.stance import ItemScore, StanceConfig, StanceResult, summarize
from polineurons.trial import TrialSpec
from tests.helpers import prompt_batch

FAST = FinetuneConfig(max_steps=2, batch_size=4, max_seq_len=320, learning_rate=1e-2, warmup_steps=0)
METHODS = ("inhibit-zero", "inhibit-freeze", "stopgrad", "caft", "caft-grad", "steer", "kl")


@pytest.fixture(scope="module")
def pairs():
    return training_pairs(load_data(), "race", "right")[:8]


@pytest.fixture(scope="module")
def located():
    general = NeuronSet.from_indices({0: range(10), 1: range(20, 40), 2: range(50, 80)}, 3, 96)
    scores = {t: torch.rand(3, 96, generator=torch.Generator().manual_seed(i)) for i, t in enumerate(("a", "b"))}
    return Localization(scores, {t: general for t in scores}, general, {t: general - general for t in scores})


def weights(model):
    return [p.detach().clone() for p in model.parameters()]


def interventions(tiny_cache, located):
    spec = TrialSpec(load_data(), "race", "right", FAST, StanceConfig(max_items=1))
    config = MitigateConfig(layers=(1,), steer_layer=1, items=2)
    return Interventions(
        config, spec, lambda: load_model("tiny-llama", device="cpu", cache=tiny_cache), located=located
    )


@pytest.fixture(scope="module")
def vanilla(tiny_cache, pairs):
    model = load_model("tiny-llama", device="cpu", cache=tiny_cache)
    finetune(model, pairs, FAST, progress=False)
    return weights(model)


@pytest.mark.parametrize("method", METHODS)
def test_strength_zero_is_vanilla_bit_for_bit_and_leaves_no_trace(tiny_cache, pairs, located, vanilla, method):
    treated = load_model("tiny-llama", device="cpu", cache=tiny_cache)
    intervention = interventions(tiny_cache, located).build(Arm(method, 0.0))
    assert intervention is not None  # installed, and still an identity
    finetune(treated, pairs, FAST, intervention=intervention, progress=False)
    for p, q in zip(vanilla, weights(treated), strict=True):
        assert torch.equal(p, q)
    assert sum(len(hp._forward_hooks) for hp in treated.hook_dict.values()) == 0


@pytest.mark.parametrize("method", METHODS)
def test_each_method_changes_training_and_leaves_a_plain_model(tiny_cache, pairs, located, vanilla, method, tmp_path):
    treated = load_model("tiny-llama", device="cpu", cache=tiny_cache)
    intervention = interventions(tiny_cache, located).build(Arm(method, 1.0))
    finetune(treated, pairs, FAST, intervention=intervention, out_dir=tmp_path / "m", progress=False)
    assert any(not torch.equal(p, q) for p, q in zip(vanilla, weights(treated), strict=True))
    tokens = prompt_batch(treated)
    with torch.no_grad():  # the saved model's logits equal a plain reload's: no hook stayed behind
        assert torch.equal(load_model(tmp_path / "m", device="cpu")(tokens), treated(tokens))


def test_controls_have_the_promised_rank_norm_and_layers(tiny_cache, located):
    build = interventions(tiny_cache, located)
    neurons, control = build.build(Arm("inhibit-zero", 1.0)), build.build(Arm("inhibit-zero", 1.0, control=True))
    assert control.neurons.layer_counts() == neurons.neurons.layer_counts() and control.neurons != neurons.neurons
    caft, caft_control = build.build(Arm("caft", 1.0)), build.build(Arm("caft", 1.0, control=True))
    assert set(caft.directions) == set(caft_control.directions) == {1}
    for q in (caft.directions[1], caft_control.directions[1]):
        assert torch.allclose(q.T @ q, torch.eye(q.shape[1]), atol=1e-5)  # orthonormal, same rank
    steer, steer_control = build.build(Arm("steer", 1.0)), build.build(Arm("steer", 1.0, control=True))
    assert steer.layer == steer_control.layer and torch.allclose(steer.vector.norm(), steer_control.vector.norm())
    kl, kl_control = build.build(Arm("kl", 1.0)), build.build(Arm("kl", 1.0, control=True))
    assert kl.beta == kl_control.beta and kl.sequences != kl_control.sequences
    assert (
        random_subspace(64, 3, 0).shape == (64, 3)
        and random_like({1: caft.directions[1]}, 0)[1].shape == caft.directions[1].shape
    )
    assert torch.allclose(random_vector(torch.ones(64), 0).norm(), torch.tensor(8.0))


def test_ablation_removes_the_direction_and_gradient_only_keeps_the_forward(tiny_llama):
    q = random_subspace(tiny_llama.cfg.d_model, 2, 0)
    tokens = prompt_batch(tiny_llama)
    with torch.no_grad():
        clean = tiny_llama(tokens)
        with AblateDirections({1: q}, 1.0, gradient_only=True).apply(tiny_llama):
            assert torch.equal(tiny_llama(tokens), clean)
        with AblateDirections({1: q}, 1.0).apply(tiny_llama):
            assert not torch.equal(tiny_llama(tokens), clean)
        with SteerResidual(1, torch.zeros(tiny_llama.cfg.d_model), 5.0).apply(tiny_llama):
            assert torch.equal(tiny_llama(tokens), clean)
        with StopGradNeurons(NeuronSet.from_indices({0: range(96)}, 3, 96)).apply(tiny_llama):
            assert torch.equal(tiny_llama(tokens), clean)


def test_kl_to_an_identical_base_is_zero(tiny_llama, tiny_cache):
    tokens = prompt_batch(tiny_llama)
    twin = load_model("tiny-llama", device="cpu", cache=tiny_cache)
    with KLToBase(twin, [row.tolist() for row in tokens], beta=1.0).apply(tiny_llama) as applied:
        assert applied.extra_loss().item() == pytest.approx(0.0, abs=1e-6)


def test_neutral_check_takes_a_prefix_of_the_neutral_texts(tiny_llama):
    full = neutral_pairs(tiny_llama.tokenizer)
    assert len(full) == 160 and neutral_pairs(tiny_llama.tokenizer, 5) == full[:5]
    # the mean over the first 5 texts is the token-weighted mean of their own log-probs
    one_by_one = [neutral_logprob(tiny_llama, [pair]) for pair in full[:5]]
    weights = [len(answer) for _, answer in full[:5]]
    expected = sum(w * v for w, v in zip(weights, one_by_one, strict=True)) / sum(weights)
    assert neutral_logprob(tiny_llama, full[:5], batch_size=2) == pytest.approx(expected, abs=1e-5)
    with pytest.raises(ValueError, match="neutral_items"):
        StanceConfig(neutral_items=0)


def result(shifts):
    items = tuple(ItemScore(f"{t}-{i}", t, s, 0.0) for t, values in shifts.items() for i, s in enumerate(values))
    return StanceResult(items, summarize(items))


def test_compare_runs_ratios_and_pooling():
    base = result({"a": [0, 0], "b": [0, 0], "c": [0, 0]})
    vanilla = result({"a": [1.0, 1.0], "b": [0.2, 0.2], "c": [0.4, 0.4]})
    treated = result({"a": [0.5, 0.5], "b": [0.1, 0.1], "c": [0.1, 0.1]})
    out = compare_runs(base, [vanilla], [treated], "a", "right", n_boot=50)
    assert out["target_kept"].value == pytest.approx(0.5) and out["ctg_reduction"].value == pytest.approx(1 - 0.1 / 0.3)
    assert out["ctg_ratio"].value == pytest.approx(0.2) and out["target_kept"].ci_low == pytest.approx(0.5)
    left = compare_runs(base, [vanilla], [treated], "a", "left", n_boot=50)
    assert left["target_shift"].value == pytest.approx(-0.5) and left["target_kept"].value == pytest.approx(0.5)
    twice = compare_runs(base, [vanilla, vanilla], [treated, vanilla], "a", "right", n_boot=50)
    assert twice["target_kept"].value == pytest.approx(0.75)  # pooled: mean target shifts over seeds


def test_strength_at_90_percent_kept_interpolates_and_says_so():
    rows = [
        {"strength": 0.5, "target_kept": 1.0, "ctg_ratio": 0.5},
        {"strength": 1.0, "target_kept": 0.8, "ctg_ratio": 0.1},
    ]
    best = strength_at_kept(rows)
    assert best["interpolated"] and best["strength"] == pytest.approx(0.75) and best["ctg_ratio"] == pytest.approx(0.3)
    assert strength_at_kept(rows[:1]) == {"strength": 0.5, "interpolated": False, "ctg_ratio": 0.5, "target_kept": 1.0}
    assert strength_at_kept([{"strength": 1.0, "target_kept": 0.5, "ctg_ratio": 0.1}]) is None


def test_mitigate_end_to_end_resumes_and_writes_the_documented_json(tiny_cache, located, tmp_path, monkeypatch):
    spec = TrialSpec(load_data(), "race", "right", FAST, StanceConfig(max_items=1))
    config = MitigateConfig(methods=("inhibit-zero", "caft"), strengths=(0.5, 1.0), layers=(1,), items=2)
    load = lambda: load_model("tiny-llama", device="cpu", cache=tiny_cache)  # noqa: E731
    out = run_mitigation(spec, load, config, tmp_path, seeds=(0,), located=located, progress=False)
    assert [a.name for a in plan_arms(config, (0,))][:3] == [
        "vanilla-seed0",
        "inhibit-zero-s0.5-seed0",
        "inhibit-zero-control-s0.5-seed0",
    ]
    stored = json.loads((tmp_path / "mitigation.json").read_text())
    assert {"vanilla", "methods"} <= set(stored) and set(stored["methods"]) == {"inhibit-zero", "caft"}
    for runs in stored["methods"].values():
        assert [r["strength"] for r in runs] == [0.5, 1.0]
        for run in runs:
            for key in ("target_kept", "ctg_ratio", "ctg_reduction"):
                assert {key, f"{key}_ci_low", f"{key}_ci_high"} <= set(run) and {key, f"{key}_ci_low"} <= set(
                    run["control"]
                )
            assert np.isfinite(run["perplexity_change"])
    assert len(list((tmp_path / "trials").glob("*.json"))) == 1 + 2 * 2 * 2

    import polineurons.trial as trial

    monkeypatch.setattr(trial, "finetune", lambda *a, **k: pytest.fail("a finished run must not be retrained"))
    again = run_mitigation(spec, load, config, tmp_path, seeds=(0,), located=located, progress=False)
    assert again["methods"] == out["methods"]
