"""Running where the paper ran, on tiny models: every command takes a dtype, bf16 scores match fp32,
LoRA covers the neurons and every mitigation acts under it (freeze and stop-gradient included), an
adapter saves and reloads exactly, gradient checkpointing changes nothing, and a study keeps one base
model resident and intact."""

from dataclasses import replace

import pytest
import torch

from polineurons import load_model
from polineurons.adapters import adapter_disabled, has_adapter, merge_adapter, remove_adapter
from polineurons.cli import COMMANDS, main
from polineurons.data import load_data
from polineurons.hooks import FreezeNeurons, StopGradNeurons
from polineurons.methods import METHODS, Ingredients
from polineurons.mitigate import Arm, MitigateConfig, run_mitigation
from polineurons.models import resolve_dtype
from polineurons.neurons import NeuronSet, neuron_parameters
from polineurons.stance import StanceConfig, measure_stance
from polineurons.study import Study
from polineurons.training import FinetuneConfig, finetune, training_pairs
from polineurons.trial import TrialSpec
from tests.helpers import perturbed, prompt_batch

pytest.importorskip("peft")

LORA = FinetuneConfig(max_steps=2, batch_size=4, max_seq_len=320, learning_rate=1e-2, warmup_steps=0, train="lora")
LORA = replace(LORA, lora_dropout=0.0)


@pytest.fixture(scope="module")
def pairs():
    return training_pairs(load_data(), "race", "right")[:8]


def tiny(tiny_cache, dtype="float32"):
    return load_model("tiny-llama", device="cpu", cache=tiny_cache, dtype=dtype)


def logits(model):
    with torch.no_grad():
        return model(prompt_batch(model)).float()


LOADS_NO_MODEL = ("Report", "League")


@pytest.mark.parametrize("command", [c for c in COMMANDS if c.__name__ not in LOADS_NO_MODEL], ids=lambda c: c.__name__)
def test_every_command_that_loads_a_model_takes_a_dtype(command, capsys):
    with pytest.raises(SystemExit):
        main([command.__name__.lower(), "--help"])
    assert "--dtype {auto,float32,bfloat16,float16}" in capsys.readouterr().out


def test_auto_is_float32_on_a_cpu_and_names_are_checked():
    assert resolve_dtype("auto", "cpu") == torch.float32 and resolve_dtype("bfloat16") == torch.bfloat16
    with pytest.raises(ValueError, match="Unknown dtype 'half'"):
        resolve_dtype("half")


def test_bf16_stance_scores_match_fp32_within_0_02(tiny_cache):
    """Scores are mean per-token log-prob differences; bf16 weights move them by well under 0.02 nats."""
    data = load_data().select(topics=["race", "science"])
    config = StanceConfig(max_items=3)
    full, half = (measure_stance(tiny(tiny_cache, d), data, config, progress=False) for d in ("float32", "bfloat16"))
    for topic in data.topics:
        assert abs(full.topics[topic].score - half.topics[topic].score) < 0.02
        assert full.topics[topic].score != half.topics[topic].score  # really computed in bf16


def test_bf16_training_follows_fp32_training_and_keeps_the_dtype(tiny_cache, pairs):
    """float32 weights under autocast while training: the losses follow a float32 run's; bf16 after."""
    for train in ("full", "lora"):
        config = replace(LORA, train=train, max_steps=4, learning_rate=3e-3)
        losses = {}
        for dtype in ("float32", "bfloat16"):
            model = tiny(tiny_cache, dtype)
            before = logits(model)
            losses[dtype] = finetune(model, pairs, config, progress=False).losses
            assert not torch.equal(logits(model), before)
        assert losses["bfloat16"] == pytest.approx(losses["float32"], abs=0.05)
        if train == "lora":
            remove_adapter(model)
        assert {p.dtype for p in model.parameters()} == {torch.bfloat16}


@pytest.fixture(scope="module")
def located():
    from polineurons.pnlac import Localization

    general = NeuronSet.from_indices({0: range(10), 1: range(20, 40), 2: range(50, 80)}, 3, 96)
    scores = {t: torch.rand(3, 96, generator=torch.Generator().manual_seed(i)) for i, t in enumerate(("a", "b"))}
    return Localization(scores, {t: general for t in scores}, general, {t: general - general for t in scores})


def build(tiny_cache, located, arm: Arm, base):
    spec = TrialSpec(load_data(), "race", "right", LORA, StanceConfig(max_items=1), model="tiny-llama")
    config = MitigateConfig(layers=(1,), steer_layer=1, items=2)
    # caft-flip's two fine-tunes: the base and a copy whose MLPs are perturbed stand for them
    models = {"vanilla_model": lambda: perturbed(tiny_cache), "opposite_model": lambda: base}
    ingredients = Ingredients(config, spec, lambda: base, located=located, **models)
    return METHODS[arm.method].build(ingredients, arm.strength, 0, False)


@pytest.fixture(scope="module")
def vanilla_lora(tiny_cache, pairs):
    model = tiny(tiny_cache)
    finetune(model, pairs, LORA, progress=False)
    return logits(model)


@pytest.mark.parametrize("method", METHODS)
def test_under_lora_each_method_trains_changes_training_and_is_vanilla_at_strength_zero(
    tiny_cache, pairs, located, vanilla_lora, method
):
    """The method's base is the trained model itself, as in a study (KL then reads it adapter-off)."""
    results = {}
    for strength in (0.0, 1.0):
        model = tiny(tiny_cache)
        intervention = build(tiny_cache, located, Arm(method, strength), model)
        finetune(model, pairs, LORA, intervention=intervention, progress=False)
        assert has_adapter(model)
        results[strength] = logits(model)
    assert torch.equal(results[0.0], vanilla_lora)
    assert not torch.equal(results[1.0], vanilla_lora)


def test_freezing_under_lora_keeps_the_neurons_effective_weights(tiny_cache, pairs):
    model = tiny(tiny_cache)
    neurons = NeuronSet.from_indices({0: range(0, 96, 3), 2: [5, 7]}, 3, 96)
    before = {name: p.detach().clone() for layer in range(3) for name, p, _ in neuron_parameters(model, layer)}
    finetune(model, pairs, LORA, intervention=FreezeNeurons(neurons), progress=False)
    merge_adapter(model)  # the effective weights: base + the adapter's update
    moved = False
    for layer in range(3):
        index = neurons.by_layer.get(layer, torch.tensor([], dtype=torch.long))
        for name, parameter, dim in neuron_parameters(model, layer):
            assert torch.equal(parameter.index_select(dim, index), before[name].index_select(dim, index)), name
            moved |= not torch.equal(parameter, before[name])
    assert moved  # the other neurons trained


def test_stop_gradient_under_lora_blocks_the_neurons_adapter_gradient(tiny_cache, pairs):
    """Stopping every neuron of layer 1 leaves its gate/up adapter without gradient, not its down one."""
    model = tiny(tiny_cache)
    neurons = NeuronSet.from_indices({1: range(96)}, 3, 96)
    finetune(model, pairs, replace(LORA, max_steps=1), progress=False)
    tokens = prompt_batch(model)
    with StopGradNeurons(neurons).apply(model):
        model(tokens).float().logsumexp(-1).mean().backward()
    grads = {name: p.grad for name, p in model.original_model.named_parameters() if ".lora_" in name}
    layer1 = {name: g for name, g in grads.items() if ".layers.1." in name and ".mlp." in name}
    assert all(g is None or not g.any() for n, g in layer1.items() if "gate_proj" in n or "up_proj" in n)
    assert any(g is not None and g.any() for n, g in layer1.items() if "down_proj" in n)


def test_gradient_checkpointing_changes_memory_not_numbers(tiny_cache, pairs):
    runs = []
    for checkpointing in (False, True):
        model = tiny(tiny_cache)
        config = replace(LORA, train="full", gradient_checkpointing=checkpointing)
        runs.append((finetune(model, pairs, config, progress=False).losses, logits(model)))
    assert runs[0][0] == pytest.approx(runs[1][0], abs=1e-6)
    assert torch.allclose(runs[0][1], runs[1][1], atol=1e-5)


@pytest.mark.parametrize("train", ["lora", "full"])
def test_a_study_loads_the_base_once_and_leaves_it_intact(tiny_env, located, tmp_path, monkeypatch, train):
    import polineurons.study as study_module

    loads = []
    real = study_module.load_model
    monkeypatch.setattr(study_module, "load_model", lambda *a, **k: loads.append(a) or real(*a, **k))
    finetune_config = replace(LORA, train=train)
    spec = TrialSpec(load_data(), "race", "right", finetune_config, StanceConfig(max_items=1), model="tiny-llama")
    config = MitigateConfig(methods=("inhibit-freeze", "kl"), strengths=(1.0,), layers=(1,), items=2)
    with Study.open(tmp_path, device="cpu", progress=False, echo=lambda _: None) as study:
        base = study.base_model("tiny-llama")
        before = logits(base)
        result = run_mitigation(study, spec, config, seeds=(0,), located=located)
        assert len(loads) == 1  # 1 vanilla + 2 methods x 2 arms = 5 trials, one load
        assert not has_adapter(base) and torch.equal(logits(base), before)
        again = measure_stance(base, spec.dataset, spec.stance, progress=False)
        assert again.to_dict() == study.base_scores(spec).stance.to_dict()
    assert result["frontier"]["kl"][0]["target_kept"] is not None


def test_kl_under_lora_reads_the_base_with_the_adapter_off(tiny_cache, pairs):
    from polineurons.regularizers import KLToBase

    model = tiny(tiny_cache)
    finetune(model, pairs, LORA, progress=False)
    sequences = [prompt_batch(model)[0].tolist()]
    with KLToBase(model, sequences).apply(model) as applied, torch.no_grad():
        tuned_kl = applied.extra_loss()
        with adapter_disabled(model):
            assert applied.extra_loss() == 0  # the base against itself
    assert tuned_kl > 0
