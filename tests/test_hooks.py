import pytest
import torch

from polineurons.hooks import patch_neurons, record_neurons, scale_neurons
from polineurons.neurons import NeuronSet, mlp_post_hook_name, neuron_parameters
from tests.helpers import prompt_batch


def logits(model, tokens):
    with torch.no_grad():
        return model(tokens)


def n_hooks(model):
    return sum(len(hp._forward_hooks) + len(hp._backward_hooks) for hp in model.hook_dict.values())


def some_neurons(model):
    return NeuronSet.from_pairs([(0, 3), (0, 50), (1, 7), (2, 95)], model.cfg.n_layers, model.cfg.d_mlp)


def test_scale_one_changes_nothing(tiny_model):
    tokens = prompt_batch(tiny_model)
    clean = logits(tiny_model, tokens)
    with scale_neurons(tiny_model, NeuronSet.for_model(tiny_model, full=True), 1.0):
        assert torch.equal(logits(tiny_model, tokens), clean)


def test_scale_zero_on_a_whole_layer_equals_zeroing_hook_post(tiny_model):
    tokens = prompt_batch(tiny_model)
    layer = 1
    whole_layer = NeuronSet.from_indices({layer: range(tiny_model.cfg.d_mlp)}, 3, tiny_model.cfg.d_mlp)
    with scale_neurons(tiny_model, whole_layer, 0.0):
        ours = logits(tiny_model, tokens)
    with tiny_model.hooks(fwd_hooks=[(mlp_post_hook_name(layer), lambda x, hook: torch.zeros_like(x))]):
        reference = logits(tiny_model, tokens)
    assert torch.equal(ours, reference)
    assert not torch.equal(ours, logits(tiny_model, tokens))


def test_scale_acts_only_on_the_chosen_neurons(tiny_model):
    tokens = prompt_batch(tiny_model)
    chosen = some_neurons(tiny_model)
    with record_neurons(tiny_model) as clean:
        logits(tiny_model, tokens)
    clean = dict(clean)
    # Record inside the scaling context on layer 0 only: later layers see changed inputs.
    with scale_neurons(tiny_model, chosen, 0.5), record_neurons(tiny_model, [0]) as scaled:
        logits(tiny_model, tokens)
    idx = chosen.by_layer[0]
    assert torch.allclose(scaled[0][..., idx], 0.5 * clean[0][..., idx])
    others = torch.ones(tiny_model.cfg.d_mlp, dtype=torch.bool)
    others[idx] = False
    assert torch.equal(scaled[0][..., others], clean[0][..., others])


def test_record_selected_neurons_equals_slicing_the_full_recording(tiny_model):
    tokens = prompt_batch(tiny_model)
    chosen = some_neurons(tiny_model)
    with record_neurons(tiny_model) as full:
        logits(tiny_model, tokens)
    with record_neurons(tiny_model, chosen) as selected:
        logits(tiny_model, tokens)
    assert sorted(selected) == chosen.layers
    for layer, idx in chosen.by_layer.items():
        assert torch.equal(selected[layer], full[layer][..., idx])


def test_patching_with_own_activations_changes_nothing(tiny_model):
    tokens = prompt_batch(tiny_model)
    clean = logits(tiny_model, tokens)
    everything = NeuronSet.for_model(tiny_model, full=True)
    with record_neurons(tiny_model) as own:
        logits(tiny_model, tokens)
    with patch_neurons(tiny_model, everything, dict(own)):
        assert torch.equal(logits(tiny_model, tokens), clean)


def test_patching_sets_the_chosen_neurons_to_the_source(tiny_model):
    tokens = prompt_batch(tiny_model)
    chosen = some_neurons(tiny_model)
    source = {layer: torch.full((*tokens.shape, len(idx)), 3.0) for layer, idx in chosen.by_layer.items()}
    with patch_neurons(tiny_model, chosen, source), record_neurons(tiny_model, chosen) as seen:
        logits(tiny_model, tokens)
    for layer in chosen.layers:
        assert torch.equal(seen[layer], source[layer])


def test_patching_refuses_mismatched_sources(tiny_model):
    tokens = prompt_batch(tiny_model)
    chosen = some_neurons(tiny_model)
    wrong_pos = {
        layer: torch.zeros(tokens.shape[0], tokens.shape[1] + 1, len(idx)) for layer, idx in chosen.by_layer.items()
    }
    with pytest.raises(ValueError, match="same token sequences"), patch_neurons(tiny_model, chosen, wrong_pos):
        logits(tiny_model, tokens)
    with pytest.raises(KeyError, match=r"layers \[2\]"), patch_neurons(tiny_model, chosen, {0: None, 1: None}):
        pass
    assert n_hooks(tiny_model) == 0


@pytest.mark.parametrize("context", ["record", "scale", "patch"])
def test_hooks_are_gone_after_an_exception(tiny_model, context):
    tokens = prompt_batch(tiny_model)
    clean = logits(tiny_model, tokens)
    before = n_hooks(tiny_model)
    chosen = some_neurons(tiny_model)
    managers = {
        "record": lambda: record_neurons(tiny_model, chosen),
        "scale": lambda: scale_neurons(tiny_model, chosen, 0.0),
        "patch": lambda: patch_neurons(
            tiny_model, chosen, {layer: torch.zeros(*tokens.shape, len(i)) for layer, i in chosen.by_layer.items()}
        ),
    }
    with pytest.raises(RuntimeError, match="boom"), managers[context]():
        assert n_hooks(tiny_model) > before
        logits(tiny_model, tokens)
        raise RuntimeError("boom")
    assert n_hooks(tiny_model) == before
    assert torch.equal(logits(tiny_model, tokens), clean)


def test_bad_scale_is_refused(tiny_model):
    with pytest.raises(ValueError, match="scale"), scale_neurons(tiny_model, some_neurons(tiny_model), float("nan")):
        pass


def test_gradients_flow_through_scaling_and_stop_at_zeroed_neurons(fresh_tiny_llama):
    model = fresh_tiny_llama
    tokens = prompt_batch(model)
    chosen = some_neurons(model)
    with scale_neurons(model, chosen, 0.0):
        loss = model(tokens, return_type="loss")
    loss.backward()
    for layer in range(model.cfg.n_layers):
        inhibited = chosen.mask[layer]
        for name, parameter, dim in neuron_parameters(model, layer):
            grad = parameter.grad.movedim(dim, 0)  # [d_mlp, ...]
            assert torch.all(grad[inhibited] == 0), name
            assert grad[~inhibited].abs().sum() > 0, name
    attention = [p for n, p in model.named_parameters() if "q_proj" in n]
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in attention)


def test_nested_contexts_compose(tiny_model):
    tokens = prompt_batch(tiny_model)
    chosen = some_neurons(tiny_model)
    with scale_neurons(tiny_model, chosen, 0.5), scale_neurons(tiny_model, chosen, 0.5):
        twice = logits(tiny_model, tokens)
    with scale_neurons(tiny_model, chosen, 0.25):
        once = logits(tiny_model, tokens)
    assert torch.allclose(twice, once, atol=1e-6)


def test_nested_contexts_apply_in_the_order_entered(tiny_model):
    """Patching then scaling is not scaling then patching: would catch hooks run in another order."""
    tokens = prompt_batch(tiny_model)
    chosen = some_neurons(tiny_model)
    ones = {layer: torch.ones(*tokens.shape, len(index)) for layer, index in chosen.by_layer.items()}
    patch, scale, record = patch_neurons, scale_neurons, record_neurons
    with (
        torch.no_grad(),
        patch(tiny_model, chosen, ones),
        scale(tiny_model, chosen, 3.0),
        record(tiny_model, chosen) as patched_then_scaled,
    ):
        tiny_model(tokens)
    with (
        torch.no_grad(),
        scale(tiny_model, chosen, 3.0),
        patch(tiny_model, chosen, ones),
        record(tiny_model, chosen) as scaled_then_patched,
    ):
        tiny_model(tokens)
    for layer in chosen.by_layer:
        assert torch.equal(patched_then_scaled[layer], torch.full_like(patched_then_scaled[layer], 3.0))
        assert torch.equal(scaled_then_patched[layer], torch.ones_like(scaled_then_patched[layer]))


def test_neuron_activations_picks_the_listed_neurons_in_order(tiny_llama):
    from polineurons.hooks import neuron_activations

    ids = [5, 9, 3, 7]
    neurons = [(2, 17), (0, 40), (2, 3)]
    with torch.no_grad(), record_neurons(tiny_llama) as acts:
        tiny_llama(torch.tensor([ids]))
    expected = torch.stack([acts[layer][0, :, index] for layer, index in neurons], dim=-1)
    torch.testing.assert_close(neuron_activations(tiny_llama, ids, neurons), expected)
    assert neuron_activations(tiny_llama, ids, []).shape == (4, 0)
