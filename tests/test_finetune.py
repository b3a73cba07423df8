import json

import pytest
import torch

from polineurons import load_model
from polineurons.data import load_data
from polineurons.hooks import FreezeNeurons, ScaleNeurons
from polineurons.neurons import NeuronSet, neuron_parameters
from polineurons.training import FinetuneConfig, TrainingDivergedError, finetune, training_pairs
from tests.helpers import prompt_batch

FAST = dict(epochs=4, learning_rate=3e-3, batch_size=4, max_seq_len=320, warmup_steps=0)


@pytest.fixture(scope="module")
def pairs():
    return training_pairs(load_data(), "immigration", "right")[:8]


def fresh(tiny_cache):
    return load_model("tiny-llama", device="cpu", cache=tiny_cache)


def params(model):
    return {name: p.detach().clone() for name, p in model.named_parameters()}


def test_training_pairs_use_the_train_split_and_the_leaning():
    data = load_data()
    pairs = training_pairs(data, "race", "left")
    train = data.select(topics=["race"], split="train").items
    assert pairs == [(i.question, i.left) for i in train]
    with pytest.raises(Exception, match="Unknown leaning"):
        training_pairs(data, "race", "center")


def test_a_few_steps_reduce_the_loss(tiny_cache, pairs):
    result = finetune(fresh(tiny_cache), pairs, FinetuneConfig(**FAST), progress=False)
    assert len(result.losses) == 8
    assert result.losses[-1] < result.losses[0] - 0.5


def test_same_seed_gives_identical_weights(tiny_cache, pairs):
    a, b = fresh(tiny_cache), fresh(tiny_cache)
    finetune(a, pairs, FinetuneConfig(**FAST, max_steps=3), progress=False)
    finetune(b, pairs, FinetuneConfig(**FAST, max_steps=3), progress=False)
    for (name, p), (_, q) in zip(a.named_parameters(), b.named_parameters(), strict=True):
        assert torch.equal(p, q), name


def test_different_seeds_give_different_weights(tiny_cache, pairs):
    """Would catch a seed that is ignored: it sets the order of the training examples (8 pairs in
    batches of 4, so the first step's batch differs)."""
    a, b = fresh(tiny_cache), fresh(tiny_cache)
    finetune(a, pairs, FinetuneConfig(**FAST, max_steps=1, seed=0), progress=False)
    finetune(b, pairs, FinetuneConfig(**FAST, max_steps=1, seed=1), progress=False)
    assert any(not torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters(), strict=True))


def test_mlp_mode_leaves_attention_and_embeddings_untouched(tiny_cache, pairs):
    model = fresh(tiny_cache)
    before = params(model)
    finetune(model, pairs, FinetuneConfig(**FAST, max_steps=3, train="mlp"), progress=False)
    after = params(model)
    mlp_names = {name for name in before if ".mlp." in name}
    for name in before:
        if name in mlp_names:
            continue
        assert torch.equal(before[name], after[name]), name
    assert any(not torch.equal(before[n], after[n]) for n in mlp_names)


def test_lora_trains_an_adapter_that_saves_reloads_and_comes_off(tiny_cache, pairs, tmp_path):
    pytest.importorskip("peft")
    from polineurons.adapters import adapter_disabled, has_adapter, lora_layers, remove_adapter

    model = fresh(tiny_cache)
    tokens = prompt_batch(model)
    with torch.no_grad():
        base_logits = model(tokens)
    before = params(model)
    config = FinetuneConfig(**FAST, max_steps=3, train="lora", lora_dropout=0.0)
    finetune(model, pairs, config, out_dir=tmp_path / "lora", progress=False)
    assert has_adapter(model)
    adapted = {name.rsplit(".", 2)[-2] for name in lora_layers(model)}
    assert adapted == {"q_proj", "v_proj", "gate_proj", "up_proj", "down_proj"}  # the MLP included by default
    with torch.no_grad():
        tuned_logits = model(tokens)
        with adapter_disabled(model):
            assert torch.equal(model(tokens), base_logits)  # the base weights never trained
    assert not torch.equal(tuned_logits, base_logits)
    assert sorted(p.name for p in (tmp_path / "lora").iterdir()) == [
        "adapter_config.json",
        "adapter_model.safetensors",
        "training_log.json",
    ]  # an adapter, not a merged copy of the model
    reloaded = load_model(tmp_path / "lora", device="cpu", cache=tiny_cache)
    with torch.no_grad():
        assert torch.equal(reloaded(tokens), tuned_logits)
    remove_adapter(model)
    assert not has_adapter(model) and set(params(model)) == set(before)
    assert all(torch.equal(before[name], value) for name, value in params(model).items())


def test_lora_without_peft_is_a_clear_error(tiny_cache, pairs, monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_peft(name, *args, **kwargs):
        if name == "peft" or name.startswith("peft."):
            raise ImportError("No module named 'peft'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_peft)
    with pytest.raises(ImportError, match=r"pip install 'polineurons\[lora\]'"):
        finetune(fresh(tiny_cache), pairs, FinetuneConfig(**FAST, train="lora"), progress=False)


def test_saved_folder_reloads_with_identical_logits_and_a_log(tiny_cache, pairs, tmp_path):
    model = fresh(tiny_cache)
    out = tmp_path / "run"
    finetune(
        model, pairs, FinetuneConfig(**FAST, max_steps=2), out_dir=out, meta={"topic": "immigration"}, progress=False
    )
    reloaded = load_model(out, device="cpu")
    tokens = prompt_batch(model)
    with torch.no_grad():
        assert torch.equal(reloaded(tokens), model(tokens))
    log = json.loads((out / "training_log.json").read_text())
    assert log["n_steps"] == 2 and len(log["losses"]) == 2 and log["topic"] == "immigration"
    assert log["config"]["learning_rate"] == FAST["learning_rate"] and "torch" in log["versions"]
    # the saved tokenizer is the original one: it adds no BOS of its own
    from transformers import AutoTokenizer

    assert AutoTokenizer.from_pretrained(out)("hello")["input_ids"][0] != reloaded.tokenizer.bos_token_id


def test_nan_loss_raises_and_keeps_the_earlier_result(tiny_cache, pairs, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "earlier.txt").write_text("keep me")
    model = fresh(tiny_cache)
    with torch.no_grad():
        model.blocks[0].mlp.out.original_component.weight.fill_(float("nan"))
    with pytest.raises(TrainingDivergedError, match="Loss became nan at step 1"):
        finetune(model, pairs, FinetuneConfig(**FAST), out_dir=out, progress=False)
    assert [p.name for p in tmp_path.iterdir()] == ["run"]
    assert [p.name for p in out.iterdir()] == ["earlier.txt"]


def test_inhibited_training_removes_its_hooks_and_freezes_zeroed_neurons(tiny_cache, pairs):
    model = fresh(tiny_cache)
    chosen = NeuronSet.from_pairs([(0, 1), (1, 10), (2, 50)], 3, 96)
    before = {name: p.detach().clone() for layer in range(3) for name, p, _ in neuron_parameters(model, layer)}
    finetune(model, pairs, FinetuneConfig(**FAST, max_steps=3), intervention=ScaleNeurons(chosen, 0.0), progress=False)
    assert sum(len(hp._forward_hooks) for hp in model.hook_dict.values()) == 0
    for layer in range(3):
        for name, parameter, dim in neuron_parameters(model, layer):
            moved = (parameter.detach() != before[name]).movedim(dim, 0).flatten(1).any(dim=1)
            assert not moved[chosen.mask[layer]].any(), name  # zero gradient, no weight decay: untouched
            assert moved[~chosen.mask[layer]].all(), name


def test_empty_inhibition_equals_vanilla_bit_for_bit(tiny_cache, pairs):
    a, b = fresh(tiny_cache), fresh(tiny_cache)
    finetune(a, pairs, FinetuneConfig(**FAST, max_steps=2), progress=False)
    finetune(
        b, pairs, FinetuneConfig(**FAST, max_steps=2), intervention=ScaleNeurons(NeuronSet.for_model(b)), progress=False
    )
    for p, q in zip(a.parameters(), b.parameters(), strict=True):
        assert torch.equal(p, q)


def test_bad_config_is_refused():
    with pytest.raises(ValueError, match="train must be one of"):
        FinetuneConfig(train="everything")
    with pytest.raises(ValueError, match="batch_size must be >= 1"):
        FinetuneConfig(batch_size=0)


def test_freeze_mode_keeps_the_neurons_weights_even_with_weight_decay(tiny_cache, pairs):
    model = fresh(tiny_cache)
    chosen = NeuronSet.from_pairs([(0, 2), (1, 20), (2, 60)], 3, 96)
    before = {name: p.detach().clone() for layer in range(3) for name, p, _ in neuron_parameters(model, layer)}
    clean = prompt_batch(model)
    with torch.no_grad():
        logits_before = model(clean)
    finetune(
        model,
        pairs,
        FinetuneConfig(**FAST, max_steps=3, weight_decay=0.1),
        intervention=FreezeNeurons(chosen),
        progress=False,
    )
    for layer in range(3):
        for name, parameter, dim in neuron_parameters(model, layer):
            moved = (parameter.detach() != before[name]).movedim(dim, 0).flatten(1).any(dim=1)
            assert not moved[chosen.mask[layer]].any(), name
            assert moved[~chosen.mask[layer]].all(), name
    assert not any(getattr(p, "_backward_hooks", None) for p in model.parameters())  # gradient masks removed
    with torch.no_grad():
        assert not torch.equal(model(clean), logits_before)


def test_scale_one_changes_nothing_bit_for_bit(tiny_cache, pairs):
    a, b = fresh(tiny_cache), fresh(tiny_cache)
    chosen = NeuronSet.from_pairs([(0, 1), (1, 10), (2, 50)], 3, 96)
    finetune(a, pairs, FinetuneConfig(**FAST, max_steps=2), progress=False)
    finetune(b, pairs, FinetuneConfig(**FAST, max_steps=2), intervention=ScaleNeurons(chosen, 1.0), progress=False)
    for p, q in zip(a.parameters(), b.parameters(), strict=True):
        assert torch.equal(p, q)


@pytest.mark.parametrize("make", [lambda s: ScaleNeurons(s, 0.0), FreezeNeurons])
def test_interventions_are_removed_when_training_fails(tiny_cache, pairs, make):
    model = fresh(tiny_cache)
    chosen = NeuronSet.from_pairs([(0, 1), (2, 50)], 3, 96)
    with torch.no_grad():
        model.blocks[0].mlp.out.original_component.weight.fill_(float("nan"))
    with pytest.raises(TrainingDivergedError):
        finetune(model, pairs, FinetuneConfig(**FAST), intervention=make(chosen), progress=False)
    assert sum(len(hp._forward_hooks) for hp in model.hook_dict.values()) == 0
    assert not any(getattr(p, "_backward_hooks", None) for p in model.parameters())
