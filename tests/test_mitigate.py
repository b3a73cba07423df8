"""Mitigations on a tiny model: every intervention is an identity at strength 0 (bit for bit), its
control has the promised shape, nothing stays on the trained model, the registry refuses unknown
methods, and the comparison resumes and grows in its study folder."""

import contextlib
import functools
import json
from dataclasses import replace

import numpy as np
import pytest
import torch

from polineurons import load_model
from polineurons.batching import pad_id_of
from polineurons.data import encode_prompt, encode_text, load_data
from polineurons.data.loaders import load_neutral
from polineurons.directions import random_like, random_subspace, random_vector, spill_directions
from polineurons.errors import RunError, UserError
from polineurons.frontier import compare_runs
from polineurons.hooks import AblateDirections, Combined, SteerResidual, StopGradNeurons, record_residual
from polineurons.methods import METHODS, Ingredients, method
from polineurons.mitigate import Arm, MitigateConfig, method_settings, plan_arms, run_mitigation
from polineurons.models import generate_answer_ids
from polineurons.neurons import NeuronSet, neuron_parameters, resid_post_hook_name
from polineurons.pnlac import Localization
from polineurons.regularizers import KLToBase, Replay
from polineurons.stance import ItemScore, StanceConfig, StanceResult, neutral_logprob, neutral_pairs, summarize
from polineurons.study import Study
from polineurons.training import FinetuneConfig, answer_loss, collate_answers, finetune, training_pairs
from polineurons.trial import TrialSpec
from tests.helpers import leaning_models, prompt_batch, trial_labels

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
        base = functools.cache(
            lambda: load_model("tiny-llama", device="cpu", cache=tiny_cache)
        )  # loaded once, as a study does
        models = leaning_models(tiny_cache, FAST)  # caft-flip's two vanilla fine-tunes
        self.ingredients = Ingredients(config, spec, base, located=located, **models)

    def build(self, arm: Arm):
        return METHODS[arm.method].build(self.ingredients, arm.strength, arm.seed, arm.control)


def interventions(tiny_cache, located):
    return Builder(tiny_cache, located)


@pytest.fixture(scope="module")
def vanilla(tiny_cache, pairs):
    model = load_model("tiny-llama", device="cpu", cache=tiny_cache)
    finetune(model, pairs, FAST, progress=False)
    return weights(model)


NEURON_METHODS = [name for name, m in METHODS.items() if m.neurons]


@pytest.mark.parametrize("method", [name for name, m in METHODS.items() if not m.neurons])
def test_strength_zero_is_vanilla_bit_for_bit_and_leaves_no_trace(tiny_cache, pairs, located, vanilla, method):
    """Installed at strength 0 (hooks or a loss term that multiply by 0), training equals vanilla bit for bit."""
    treated = load_model("tiny-llama", device="cpu", cache=tiny_cache)
    intervention = interventions(tiny_cache, located).build(Arm(method, 0.0))
    with intervention.apply(treated) as applied:  # really installed, not skipped
        assert n_hooks(treated) > 0 or applied.extra_loss is not None
    finetune(treated, pairs, FAST, intervention=intervention, progress=False)
    for p, q in zip(vanilla, weights(treated), strict=True):
        assert torch.equal(p, q)
    assert n_hooks(treated) == 0


@pytest.mark.parametrize("method", NEURON_METHODS)
def test_neuron_methods_select_no_neuron_at_strength_zero(tiny_cache, located, method):
    """Strength 0 is vanilla for the neuron methods by construction (an empty set; nothing to test bit
    for bit here): the identity with a real set is test_finetune's scale-one test, and their effect on
    the chosen neurons is tested below (stop-gradient) and in test_finetune (freeze, zero)."""
    built = interventions(tiny_cache, located).build(Arm(method, 0.0))
    assert len(built.neurons) == 0 and len(interventions(tiny_cache, located).build(Arm(method, 1.0)).neurons) > 0


def n_hooks(model) -> int:
    """Forward and backward hooks on the model's hook points, and gradient hooks on its parameters."""
    points = sum(len(hp._forward_hooks) + len(hp._backward_hooks) for hp in model.hook_dict.values())
    return points + sum(len(getattr(p, "_backward_hooks", None) or {}) for p in model.parameters())


@pytest.mark.parametrize("method", METHODS)
def test_every_intervention_removes_what_it_installed_even_on_an_exception(tiny_cache, located, method):
    """Would catch an intervention whose exit forgets a hook that leaves the forward unchanged (stop-
    gradient, gradient-only ablation, freezing's gradient masks)."""
    model = load_model("tiny-llama", device="cpu", cache=tiny_cache)
    intervention = interventions(tiny_cache, located).build(Arm(method, 1.0))
    with pytest.raises(RuntimeError, match="boom"), intervention.apply(model) as applied:
        assert n_hooks(model) > 0 or applied.extra_loss is not None
        model(prompt_batch(model))
        raise RuntimeError("boom")
    assert n_hooks(model) == 0


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
    for name in ("caft", "caft-flip"):
        caft, caft_control = build.build(Arm(name, 1.0)), build.build(Arm(name, 1.0, control=True))
        assert set(caft.directions) == set(caft_control.directions) == {1}
        assert caft.directions[1].shape == caft_control.directions[1].shape
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


def test_ablation_removes_the_component_along_the_directions_and_nothing_else(fresh_tiny_llama):
    """Would catch an ablation that only perturbs the stream (the old check: logits changed)."""
    model, q = fresh_tiny_llama, random_subspace(fresh_tiny_llama.cfg.d_model, 2, 0)
    tokens = prompt_batch(model)
    with torch.no_grad(), record_residual(model, [1]) as seen:
        model(tokens)
        clean = seen[1].clone()
    for coefficient in (1.0, 0.5):
        with torch.no_grad(), AblateDirections({1: q}, coefficient).apply(model), record_residual(model, [1]) as seen:
            model(tokens)  # the recording hook runs after the ablation (hooks compose in the order entered)
        torch.testing.assert_close(seen[1] @ q, (1 - coefficient) * (clean @ q), atol=1e-5, rtol=1e-4)
        orthogonal = torch.eye(q.shape[0]) - q @ q.T
        torch.testing.assert_close(seen[1] @ orthogonal, clean @ orthogonal, atol=1e-5, rtol=1e-4)


def gradient_at_layer(model, layer: int, tokens, *intervention) -> torch.Tensor:
    """The gradient of a fixed random projection of the logits with respect to the residual stream after
    ``layer``, as it arrives there (before any intervention at that point)."""
    captured = {}

    def capture(resid, hook):
        resid.retain_grad()
        captured["resid"] = resid
        return resid

    weights_ = torch.randn(model.cfg.d_vocab, generator=torch.Generator().manual_seed(0))
    with model.hooks(fwd_hooks=[(resid_post_hook_name(layer), capture)]), contextlib.ExitStack() as stack:
        for item in intervention:
            stack.enter_context(item.apply(model))
        (model(tokens) @ weights_).sum().backward()
    model.zero_grad(set_to_none=True)
    return captured["resid"].grad


def test_gradient_only_ablation_keeps_the_forward_and_removes_the_gradient_along_the_directions(fresh_tiny_llama):
    model, q = fresh_tiny_llama, random_subspace(fresh_tiny_llama.cfg.d_model, 2, 0)
    tokens = prompt_batch(model)
    with torch.no_grad():
        clean = model(tokens)
        with AblateDirections({1: q}, 1.0, gradient_only=True).apply(model):
            assert torch.equal(model(tokens), clean)
    plain = gradient_at_layer(model, 1, tokens)
    ablated = gradient_at_layer(model, 1, tokens, AblateDirections({1: q}, 1.0, gradient_only=True))
    assert (plain @ q).abs().max() > 1e-3  # there was a gradient along q to remove
    assert (ablated @ q).abs().max() < 1e-6 * plain.abs().max()
    orthogonal = torch.eye(q.shape[0]) - q @ q.T
    torch.testing.assert_close(ablated @ orthogonal, plain @ orthogonal, atol=1e-6, rtol=1e-4)


def test_stopgrad_keeps_the_forward_and_blocks_the_gradient_to_the_neurons_input_weights(fresh_tiny_llama):
    model, tokens = fresh_tiny_llama, prompt_batch(fresh_tiny_llama)
    chosen = NeuronSet.from_indices({1: [3, 40]}, 3, 96)
    with torch.no_grad():
        clean = model(tokens)
    with StopGradNeurons(chosen).apply(model):
        out = model(tokens)
        assert torch.equal(out.detach(), clean)
        out.sum().backward()
    index = torch.tensor([3, 40])
    for name, parameter, dim in neuron_parameters(model, 1):
        rows = parameter.grad.index_select(dim, index)
        if name.endswith(("gate.weight", "in.weight")):  # reached only through the stopped activations
            assert torch.count_nonzero(rows) == 0, name
            assert torch.count_nonzero(parameter.grad) > 0, name  # the other neurons' rows still learn
        else:  # the output weights still see the activations' values
            assert torch.count_nonzero(rows) > 0, name
    with SteerResidual(1, torch.zeros(model.cfg.d_model), 5.0).apply(model), torch.no_grad():
        assert torch.equal(model(tokens), clean)


def test_steering_points_the_trained_way_at_the_middle_layer_and_kl_texts_leave_out_the_target(tiny_cache):
    def ingredients(leaning):
        spec = TrialSpec(load_data(), "race", leaning, FAST, StanceConfig(max_items=1), model="tiny-llama")
        base = functools.cache(
            lambda: load_model("tiny-llama", device="cpu", cache=tiny_cache)
        )  # loaded once, as a study does
        return Ingredients(MitigateConfig(items=2), spec, base)

    right, left = ingredients("right"), ingredients("left")
    (layer, toward_right), (_, toward_left) = right.steering(0, False), left.steering(0, False)
    assert layer == 3 // 2 and torch.allclose(toward_left, -toward_right)
    # toward right: the other topics' right answers sit further along it than their left answers
    items = right.other_items()
    assert {i.topic for i in items} == set(load_data().topics) - {"race"} and len(items) == 2 * 5
    tokenizer = right.base.tokenizer

    def answer_mean(item, side):  # the residual stream after the steering layer, mean over the answer
        prompt = encode_prompt(tokenizer, item.question)
        answer = encode_text(tokenizer, item.answer(side), prompt_start=False)[:48]
        with torch.no_grad(), record_residual(right.base, [layer]) as seen:
            right.base(torch.tensor([prompt + answer]))
        return seen[layer][0, len(prompt) :].mean(0)

    gaps = [float((answer_mean(i, "right") - answer_mean(i, "left")) @ toward_right) for i in items]
    assert sum(gaps) > 0
    tokenizer, texts = right.base.tokenizer, right.texts(others=True)
    prompts = {tuple(encode_prompt(tokenizer, i.question)) for i in items}
    own = load_data().select(topics=["race"], split="train", max_items=2).items
    target = {tuple(encode_prompt(tokenizer, i.question)) for i in own}
    starts = [next(p for p in prompts | target if tuple(t[: len(p)]) == p) for t in texts]
    assert len(texts) == 2 * len(items) and set(starts) == prompts  # both answers of every other topic's item


def test_replay_trains_on_the_base_models_own_answers_and_its_control_on_neutral_prompts(tiny_cache, located):
    build = interventions(tiny_cache, located)
    replay, control = build.build(Arm("replay", 0.5)), build.build(Arm("replay", 0.5, control=True))
    ing = build.ingredients
    tokenizer, questions = ing.base.tokenizer, [i.question for i in ing.other_items()]
    neutral = [q for q, _ in load_neutral()[: len(questions)]]
    assert replay.weight == control.weight == 0.5 and len(replay.examples) == len(control.examples) == len(questions)
    for examples, asked in ((replay.examples, questions), (control.examples, neutral)):
        answers = generate_answer_ids(ing.base, asked, max_new_tokens=ing.settings.replay_tokens)
        for (ids, start), question, answer in zip(examples, asked, answers, strict=True):
            prompt = encode_prompt(tokenizer, question)
            assert start == len(prompt) and list(ids) == (prompt + answer)[: FAST.max_seq_len]


def test_replay_loss_is_the_weighted_answer_loss_of_each_batch_in_a_seeded_cycle(tiny_llama):
    """Its extra loss is w times the training loss on a batch of its examples (answer tokens only), and
    the batches go through every example once per pass."""
    tokenizer, asked = tiny_llama.tokenizer, (("One?", "Yes."), ("Two?", "No, never."), ("Three?", "Maybe so."))
    prompts = {q: encode_prompt(tokenizer, q) for q, _ in asked}
    examples = [(prompts[q] + encode_text(tokenizer, a, prompt_start=False), len(prompts[q])) for q, a in asked]

    def replayed(weight, batch_size, n):
        with torch.no_grad(), Replay(examples, weight, batch_size=batch_size, seed=3).apply(tiny_llama) as applied:
            return [float(applied.extra_loss()) for _ in range(n)]

    def trained_on(indices):  # the fine-tune's own loss on these examples
        tokens, mask, labels = collate_answers(examples, indices, pad_id_of(tiny_llama), "cpu")
        with torch.no_grad():
            return float(answer_loss(tiny_llama(tokens, attention_mask=mask), labels))

    alone, whole_loss = [trained_on([i]) for i in range(3)], trained_on([0, 1, 2])
    one_by_one = replayed(1.0, 1, 6)
    assert sorted(one_by_one[:3]) == pytest.approx(sorted(alone)) == sorted(one_by_one[3:])
    assert replayed(0.5, 1, 6) == pytest.approx([0.5 * x for x in one_by_one])
    assert replayed(0.5, 3, 2) == pytest.approx([0.5 * whole_loss] * 2, rel=1e-5)


def test_a_combination_is_its_parts_at_their_units_and_its_control_their_controls(tiny_cache, located):
    build = interventions(tiny_cache, located)
    for arm in (Arm("caft+kl", 0.5), Arm("caft+kl", 0.5, control=True)):
        caft, kl = build.build(arm).parts
        alone = build.build(Arm("caft", 0.05, control=arm.control)), build.build(Arm("kl", 0.125, control=arm.control))
        assert caft.coefficient == 0.05 and kl.beta == 0.125
        assert all(torch.equal(caft.directions[k], alone[0].directions[k]) for k in caft.directions)
        assert kl.sequences == alone[1].sequences
    steer = build.build(Arm("caft+steer", 1.0)).parts[1]
    assert steer.coefficient == 1.5 and torch.equal(steer.vector, build.build(Arm("steer", 1.0)).vector)


def test_combined_interventions_compose_hooks_and_add_losses(tiny_llama, tiny_cache):
    """Applied together, two hooks act as the two contexts nested, and two loss terms add up."""
    tokens, q = prompt_batch(tiny_llama), random_subspace(tiny_llama.cfg.d_model, 2, 0)
    ablate, steer = AblateDirections({1: q}, 0.5), SteerResidual(1, torch.ones(tiny_llama.cfg.d_model), 0.3)
    with torch.no_grad():
        with ablate.apply(tiny_llama), steer.apply(tiny_llama):
            nested = tiny_llama(tokens)
        with Combined((ablate, steer)).apply(tiny_llama):
            together = tiny_llama(tokens)
    assert torch.equal(nested, together) and not torch.equal(together, tiny_llama(tokens))
    twin = load_model("tiny-llama", device="cpu", cache=tiny_cache)
    kl = KLToBase(twin, [row.tolist() for row in tokens], beta=1.0, seed=1)
    examples = [(row.tolist(), 3) for row in tokens]
    replay = Replay(examples, 0.5, batch_size=1, seed=2)
    with torch.no_grad():
        with kl.apply(tiny_llama) as a, replay.apply(tiny_llama) as b:
            apart = [float(a.extra_loss() + b.extra_loss()) for _ in range(3)]
        with Combined((kl, replay)).apply(tiny_llama) as both:
            assert [float(both.extra_loss()) for _ in range(3)] == pytest.approx(apart)


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


def test_spill_directions_come_from_both_leanings_fine_tunes_and_train_like_any_caft(tiny_cache, pairs, vanilla):
    """The ingredients hand the two vanilla fine-tunes (pca: the vanilla and the base) and the texts to
    spill_directions; CAFT with them is vanilla at strength 0, changes training at 1, and its control has
    the same rank."""

    models = leaning_models(tiny_cache, FAST)
    right, left = models["vanilla_model"](), models["opposite_model"]()
    spec = TrialSpec(load_data(), "race", "right", FAST, StanceConfig(max_items=1), model="tiny-llama")
    config = MitigateConfig(layers=(1, 2), directions="flip", rank=2, items=2)
    base = functools.cache(lambda: load_model("tiny-llama", device="cpu", cache=tiny_cache))
    ing = Ingredients(config, spec, base, vanilla_model=lambda: right, opposite_model=lambda: left)
    caft, control = METHODS["caft"].build(ing, 1.0, 0, False), METHODS["caft"].build(ing, 1.0, 0, True)
    own = ing.target_texts()
    assert own and all(t not in ing.texts(others=True) for t in own)
    expected = spill_directions(right, left, ing.texts(others=True), own, [1, 2], 2)
    for layer in (1, 2):
        assert torch.equal(caft.directions[layer], expected[layer])
        assert control.directions[layer].shape == (right.cfg.d_model, 2)
    for strength in (0.0, 1.0):
        treated = load_model("tiny-llama", device="cpu", cache=tiny_cache)
        finetune(treated, pairs, FAST, intervention=METHODS["caft"].build(ing, strength, 0, False), progress=False)
        same = all(torch.equal(p, q) for p, q in zip(vanilla, weights(treated), strict=True))
        assert same == (strength == 0.0)
    with pytest.raises(UserError, match="both leanings"):
        Ingredients(config, spec, base, vanilla_model=lambda: right).directions(0, False)
    # pca: the same recipe with the vanilla fine-tune against the base (the target's own PCs projected out)
    pca = Ingredients(replace(config, directions="pca"), spec, base, vanilla_model=lambda: right).directions(0, False)
    from_base = spill_directions(right, base(), ing.texts(others=True), own, [1, 2], 2)
    assert all(torch.equal(pca[layer], from_base[layer]) for layer in (1, 2))
    # caft-flip ablates the flip directions whatever ``directions`` says (caft then reads the leaning's)
    leaning = Ingredients(
        replace(config, directions="leaning"), spec, base, vanilla_model=lambda: right, opposite_model=lambda: left
    )
    flipped = METHODS["caft-flip"].build(leaning, 1.0, 0, False)
    assert all(torch.equal(flipped.directions[layer], expected[layer]) for layer in (1, 2))
    assert not torch.equal(METHODS["caft"].build(leaning, 1.0, 0, False).directions[1], expected[1])
    # answer tokens: the same texts, each counted from its answer's first token
    answers = Ingredients(
        replace(config, direction_tokens="answer"), spec, base, vanilla_model=lambda: right, opposite_model=lambda: left
    )
    (others, other_starts), (texts, starts) = answers.direction_texts(others=True), answers.direction_texts()
    assert others == ing.texts(others=True) and texts == own and min(starts) > 0
    prompts = [encode_prompt(right.tokenizer, item.question) for item in answers.target_items()]
    assert starts == [len(p) for p in prompts for _ in ("left", "right")]
    counted = spill_directions(right, left, others, own, [1, 2], 2, starts=(other_starts, starts))
    assert all(torch.equal(answers.directions(0, False)[layer], counted[layer]) for layer in (1, 2))
    assert not torch.allclose(counted[1], expected[1], atol=1e-3)
    keys = [method_settings("caft-flip", c, None, 0) for c in (config, replace(config, direction_tokens="answer"))]
    assert "direction_tokens" not in keys[0] and keys[1]["direction_tokens"] == "answer"  # older keys unchanged


def test_spill_directions_train_the_other_leaning_once_and_keep_it_out_of_the_comparison(tiny_env, tmp_path):
    """caft (the leaning direction) and caft-flip in one folder: one frontier each, the other leaning's
    vanilla trained once for caft-flip and never part of the comparison."""
    config = MitigateConfig(methods=("caft", "caft-flip"), strengths=(1.0,), layers=(1,), rank=1, items=2)
    out, _ = _mitigate(tmp_path, config)
    names = trial_labels(tmp_path)
    arms = ["caft-control-s1", "caft-flip-control-s1", "caft-flip-s1", "caft-s1"]
    expected = ["left-vanilla", *(f"right-{arm}" for arm in arms), "right-vanilla"]
    assert names == [f"race-{name}-seed0" for name in expected]
    assert len(list((tmp_path / "models").iterdir())) == 2  # both vanilla fine-tunes kept
    assert out["seeds"] == [0] and len(out["vanilla"]["runs"]) == 1
    assert {m: [r["strength"] for r in rows] for m, rows in out["frontier"].items()} == {
        "caft": [1.0],
        "caft-flip": [1.0],
    }
    settings = out["method_settings"]
    assert settings["caft"]["directions"] == "leaning" and "directions_seed" not in settings["caft"]
    assert settings["caft-flip"]["directions_seed"] == 0 and "directions" not in settings["caft-flip"]
    _, messages = _mitigate(tmp_path, config)
    assert all(m.endswith("stored") for m in messages)


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


@pytest.mark.parametrize("method", NEURON_METHODS)
def test_neuron_controls_are_disjoint_and_layer_matched(tiny_cache, located, method):
    builder = interventions(tiny_cache, located)
    chosen = builder.build(Arm(method, 1.0)).neurons
    control = builder.build(Arm(method, 1.0, control=True)).neurons
    assert len(chosen) > 0 and len(control & chosen) == 0 and control.layer_counts() == chosen.layer_counts()
