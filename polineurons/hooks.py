"""Every way polineurons touches a model during a forward: record, scale (0 = zero) and patch
neurons, and :class:`Intervention` objects that the training loop applies while it trains.

Each context manager installs TransformerLens forward hooks on ``blocks.{L}.mlp.hook_post`` through
the bridge's ``hooks()`` context, so the hooks are removed on exit even when an exception escapes.
Hooks compose: nesting two contexts applies both, in the order they were entered.
"""

from __future__ import annotations

import abc
import math
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass

import torch
from jaxtyping import Float
from torch import Tensor

from polineurons.neurons import NeuronSet, mlp_post_hook_name, model_shape, neuron_parameters

Activations = Float[Tensor, "batch pos neurons"]


def _layers_and_indices(model, neurons: NeuronSet | Iterable[int] | None) -> dict[int, Tensor | None]:
    """``layer -> indices`` (None = every neuron of the layer)."""
    n_layers, _ = model_shape(model)
    if neurons is None:
        return {layer: None for layer in range(n_layers)}
    if isinstance(neurons, NeuronSet):
        neurons.validate_for(model)
        return dict(neurons.by_layer)
    layers = sorted({int(layer) for layer in neurons})
    for layer in layers:
        if not 0 <= layer < n_layers:
            raise ValueError(f"Layer {layer} is out of range: the model has {n_layers} layers.")
    return {layer: None for layer in layers}


def neuron_activations(model, tokens: Sequence[int], neurons: Sequence[tuple[int, int]]) -> Float[Tensor, "pos k"]:
    """Activations of the listed ``(layer, index)`` neurons over one token sequence, in that order,
    as a CPU float tensor ``[tokens, len(neurons)]`` (one no-grad forward)."""
    layers = sorted({layer for layer, _ in neurons})
    with torch.no_grad(), record_neurons(model, layers) as acts:
        model(torch.tensor([list(tokens)], device=model.cfg.device))
    if not neurons:
        return torch.zeros(len(tokens), 0)
    return torch.stack([acts[layer][0, :, index] for layer, index in neurons], dim=-1).float().cpu()


@contextmanager
def record_neurons(
    model, neurons: NeuronSet | Iterable[int] | None = None, *, detach: bool = True
) -> Iterator[dict[int, Activations]]:
    """Record neuron activations during forwards inside the context.

    Args:
        neurons: ``None`` for every neuron of every layer, an iterable of layers (all their
            neurons), or a NeuronSet (only its neurons, in sorted index order per layer).
        detach: store detached tensors (default); ``False`` keeps the graph for gradients.

    Yields a dict ``layer -> [batch, pos, neurons]`` that each forward overwrites, so memory stays
    at one batch's worth however many batches are run (streaming).
    """
    selection = _layers_and_indices(model, neurons)
    recorded: dict[int, Tensor] = {}

    def make_hook(layer: int, index: Tensor | None):
        def hook(activation: Tensor, hook) -> Tensor:
            value = activation if index is None else activation[..., index.to(activation.device)]
            recorded[layer] = value.detach() if detach else value
            return activation

        return hook

    hooks = [(mlp_post_hook_name(layer), make_hook(layer, idx)) for layer, idx in selection.items()]
    with model.hooks(fwd_hooks=hooks):
        yield recorded


def _multiplier(d_mlp: int, index: Tensor, scale: float, like: Tensor) -> Tensor:
    multiplier = torch.ones(d_mlp, dtype=like.dtype, device=like.device)
    multiplier[index.to(like.device)] = scale
    return multiplier


@contextmanager
def scale_neurons(model, neurons: NeuronSet, scale: float) -> Iterator[None]:
    """Multiply the activations of ``neurons`` by ``scale`` in every forward inside the context.

    ``scale=0`` zeroes them (InhibitFT's default); gradients flow through the hook, so it can be used
    while training: a neuron scaled by 0 passes no gradient to its input or output weights.
    """
    if not (math.isfinite(float(scale)) and float(scale) >= 0.0):
        raise ValueError(f"scale must be a finite number >= 0, got {scale}.")
    _, d_mlp = model_shape(model)
    cache: dict[tuple[int, torch.device, torch.dtype], Tensor] = {}

    def make_hook(layer: int, index: Tensor):
        def hook(activation: Tensor, hook) -> Tensor:
            key = (layer, activation.device, activation.dtype)
            if key not in cache:
                cache[key] = _multiplier(d_mlp, index, float(scale), activation)
            # Out of place: autograd keeps the unscaled activation it may need.
            return activation * cache[key]

        return hook

    hooks = [
        (mlp_post_hook_name(layer), make_hook(layer, idx)) for layer, idx in _layers_and_indices(model, neurons).items()
    ]
    with model.hooks(fwd_hooks=hooks):
        yield


@contextmanager
def patch_neurons(model, neurons: NeuronSet, source: Mapping[int, Activations]) -> Iterator[None]:
    """Replace the activations of ``neurons`` by ``source`` in every forward inside the context.

    ``source[layer]`` is either the full ``[batch, pos, d_mlp]`` activations of that layer (for
    example recorded from a fine-tuned model on the same tokens) or just the set's neurons
    ``[batch, pos, k]`` in sorted index order. Batch and position sizes must match the forward.
    """
    selection = _layers_and_indices(model, neurons)
    _, d_mlp = model_shape(model)
    missing = [layer for layer in selection if layer not in source]
    if missing:
        raise KeyError(f"patch_neurons: no source activations for layers {missing}.")

    def make_hook(layer: int, index: Tensor):
        def hook(activation: Tensor, hook) -> Tensor:
            values = source[layer]
            if values.shape[:-1] != activation.shape[:-1]:
                raise ValueError(
                    f"patch_neurons: layer {layer} source has batch/pos shape {tuple(values.shape[:-1])}, "
                    f"the forward has {tuple(activation.shape[:-1])}; patch on the same token sequences."
                )
            idx = index.to(activation.device)
            if values.shape[-1] == d_mlp:
                values = values[..., idx.to(values.device)]
            elif values.shape[-1] != len(idx):
                raise ValueError(
                    f"patch_neurons: layer {layer} source has {values.shape[-1]} neurons; expected {d_mlp} "
                    f"(whole layer) or {len(idx)} (the set's neurons)."
                )
            return activation.index_copy(-1, idx, values.to(device=activation.device, dtype=activation.dtype))

        return hook

    hooks = [(mlp_post_hook_name(layer), make_hook(layer, idx)) for layer, idx in selection.items()]
    with model.hooks(fwd_hooks=hooks):
        yield


# ---- interventions during training -------------------------------------------------------------


def _no_op() -> None:
    return None


@dataclass(frozen=True)
class Applied:
    """What an intervention asks of the training loop while it is applied: ``after_step`` runs
    after every optimizer step (e.g. to restore frozen weights)."""

    after_step: Callable[[], None] = _no_op


class Intervention(abc.ABC):
    """Something done to a model while it is fine-tuned, and only then.

    ``apply(model)`` is a context manager: it installs the intervention on entry and removes every
    trace of it on exit, even when an exception escapes, so the trained model carries no hooks.
    ``finetune(..., intervention=...)`` takes one such object; ``None`` means vanilla training.
    """

    @abc.abstractmethod
    def apply(self, model) -> AbstractContextManager[Applied]:
        """Install on ``model`` for the duration of a ``with`` block."""

    @abc.abstractmethod
    def describe(self) -> dict:
        """JSON-ready description (kind, strength, size) for logs and results."""


@dataclass(frozen=True, eq=False)
class ScaleNeurons(Intervention):
    """Multiply the activations of ``neurons`` by ``scale`` in every forward (0 = zero them, as
    InhibitFT does; 1 changes nothing). A neuron scaled by 0 passes no gradient to its weights."""

    neurons: NeuronSet
    scale: float = 0.0

    @contextmanager
    def apply(self, model) -> Iterator[Applied]:
        with scale_neurons(model, self.neurons, self.scale):
            yield Applied()

    def describe(self) -> dict:
        return {
            "kind": "zero" if self.scale == 0 else "scale",
            "scale": self.scale,
            "n_neurons": len(self.neurons),
            "layer_counts": self.neurons.layer_counts(),
        }


@dataclass(frozen=True, eq=False)
class FreezeNeurons(Intervention):
    """Hold the input and output weights of ``neurons`` fixed; activations are untouched.

    Gradient hooks zero those rows/columns, and after each optimizer step the saved values are
    copied back, so weight decay or momentum cannot move them either."""

    neurons: NeuronSet

    @contextmanager
    def apply(self, model) -> Iterator[Applied]:
        self.neurons.validate_for(model)
        saved, handles = [], []
        for layer, index in self.neurons.by_layer.items():
            for _, parameter, dim in neuron_parameters(model, layer):
                idx = index.to(parameter.device)
                saved.append((parameter, dim, idx, parameter.detach().index_select(dim, idx).clone()))
                keep = torch.ones(parameter.shape[dim], dtype=parameter.dtype, device=parameter.device)
                keep[idx] = 0
                shape = [1] * parameter.ndim
                shape[dim] = -1
                handles.append(parameter.register_hook(lambda grad, keep=keep.view(shape): grad * keep))

        def restore() -> None:
            with torch.no_grad():
                for parameter, dim, idx, values in saved:
                    parameter.index_copy_(dim, idx, values)

        try:
            yield Applied(after_step=restore)
        finally:
            for handle in handles:
                handle.remove()

    def describe(self) -> dict:
        return {"kind": "freeze", "n_neurons": len(self.neurons), "layer_counts": self.neurons.layer_counts()}
