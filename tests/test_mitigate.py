"""Mitigations on a tiny model: every intervention is an identity at strength 0 (bit for bit), its
control has the promised shape, nothing stays on the trained model, the registry refuses unknown
methods, and the comparison resumes and grows in its study folder."""

import json
from dataclasses import replace

import numpy as np
import pytest
import torch

from polineurons import load_model
from polineurons.data import load_data
from polineurons.directions import random_like, random_subspace, random_vector
from polineurons.errors import RunError, UserError
from polineurons.finetune import FinetuneConfig, finetune, training_pairs
from polineurons.frontier import compare_runs
from polineurons.hooks import AblateDirections, SteerResidual, StopGradNeurons
from polineurons.methods import METHODS, Ingredients, method
from polineurons.mitigate import Arm, MitigateConfig, plan_arms, run_mitigation
from polineurons.neurons import NeuronSet
from polineurons.pnlac import Localization
from polineurons.regularizers import KLToBase
from polineurons.stance import ItemScore, StanceConfig, StanceResult, neutral_logprob, neutral_pairs, summarize
from polineurons.study import Study
from polineurons.trial import TrialSpec
from tests.helpers import prompt_batch

FAST = FinetuneConfig(max_steps=2, batch_size=4, max_seq_len=320, learning_rate=1e-2, warmup_steps=0)


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


class Builder:
    """Builds each method's intervention (or its control) on the tiny model, as a comparison would."""

    def __init__(self, tiny_cache, located):
        spec = TrialSpec(load_data(), "race", "right", FAST, StanceConfig(max_items=1), model="tiny-llama")
        config = MitigateConfig(layers=(1,), steer_layer=1, items=2)
        base = lambda: load_model("tiny-llama", device="cpu", cache=tiny_cache)  # noqa: E731
        self.ingredients = Ingredients(config, spec, base, located=located)

    def build(self, arm: Arm):
        return METHODS[arm.method].build(self.ingredients, arm.strength, arm.seed, arm.control)


def interventions(tiny_cache, located):
    return Builder(tiny_cache, located)


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


def test_the_registry_refuses_unknown_methods_and_zero_strengths():
    with pytest.raises(UserError, match="Unknown mitigation method 'anchor'"):
        method("anchor")
    with pytest.raises(ValueError, match="Unknown method"):
        MitigateConfig(methods=("anchor",))
    with pytest.raises(ValueError, match="0 is vanilla"):
        MitigateConfig(strengths=(0.0, 1.0))
    assert MitigateConfig().strengths_of("caft") == METHODS["caft"].strengths == (0.025, 0.05, 0.075, 0.1)
    assert MitigateConfig(strengths=(2.0,)).strengths_of("steer") == (2.0,)


def _mitigate(tmp_path, config, seeds=(0,), located=None, **spec_changes):
    spec = TrialSpec(load_data(), "race", "right", FAST, StanceConfig(max_items=1, neutral_items=4), model="tiny-llama")
    spec = replace(spec, **spec_changes)
    messages = []
    with Study.open(tmp_path, device="cpu", progress=False, echo=messages.append) as study:
        result = run_mitigation(study, spec, config, seeds=seeds, located=located)
    return result, messages


def test_mitigate_end_to_end_resumes_grows_and_writes_the_documented_json(tiny_env, located, tmp_path, monkeypatch):
    config = MitigateConfig(methods=("inhibit-zero", "caft"), strengths=(0.5, 1.0), layers=(1,), items=2)
    out, _ = _mitigate(tmp_path, config, located=located)
    assert [a.name for a in plan_arms(config, (0,))][:3] == [
        "vanilla-seed0",
        "inhibit-zero-s0.5-seed0",
        "inhibit-zero-control-s0.5-seed0",
    ]
    stored = json.loads((tmp_path / "mitigation.json").read_text())
    assert stored == json.loads(json.dumps(out))
    assert {"vanilla", "methods", "frontier", "at_90", "league"} <= set(stored)
    assert set(stored["methods"]) == set(stored["frontier"]) == {"inhibit-zero", "caft"}
    for rows in stored["frontier"].values():
        assert [r["strength"] for r in rows] == [0.5, 1.0] and all(r["seeds"] == [0] for r in rows)
        for row in rows:
            for key in ("target_kept", "ctg_reduction"):
                assert {key, f"{key}_ci_low", f"{key}_ci_high"} <= set(row) and {key, f"{key}_ci_low"} <= set(
                    row["control"]
                )
            assert np.isfinite(row["perplexity_change"])
    for reading in stored["at_90"].values():
        assert (reading["ctg_reduction"] is None) == (reading["reason"] is not None)
    assert len(list((tmp_path / "trials").glob("*.json"))) == 1 + 2 * 2 * 2

    import polineurons.study as study_module

    monkeypatch.setattr(study_module, "train_and_score", lambda *a, **k: pytest.fail("a finished run was retrained"))
    again, messages = _mitigate(tmp_path, config, located=located)
    assert again["frontier"] == out["frontier"] and all(m.endswith("stored") for m in messages)
    monkeypatch.undo()

    # a second call with another method adds to the same folder: mitigation.json lists both calls' methods
    grown, _ = _mitigate(tmp_path, MitigateConfig(methods=("steer",), strengths=(1.0,), controls=False, items=2))
    assert (
        set(grown["frontier"]) == {"inhibit-zero", "caft", "steer"} and "control" not in grown["frontier"]["steer"][0]
    )
    assert grown["frontier"]["caft"] == out["frontier"]["caft"]
    assert len(list((tmp_path / "trials").glob("*.json"))) == 1 + 2 * 2 * 2 + 1

    # other settings are refused, naming them
    with pytest.raises(RunError, match=r"finetune.learning_rate \(stored 0.01, now 0.5\)"):
        _mitigate(tmp_path, config, located=located, finetune=replace(FAST, learning_rate=0.5))
    with pytest.raises(
        RunError, match=r"mitigate/caft results computed with other settings: items \(stored 2, now 3\)"
    ):
        _mitigate(tmp_path, replace(config, items=3), located=located)
