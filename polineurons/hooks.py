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
from contextlib import AbstractContextManager, ExitStack, contextmanager
from dataclasses import dataclass

import torch
from jaxtyping import Float
from torch import Tensor

from polineurons.adapters import neuron_adapter_parameters
from polineurons.neurons import NeuronSet, mlp_post_hook_name, model_shape, neuron_parameters, resid_post_hook_name

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

    Example::

        with torch.no_grad(), record_neurons(model, [0, 29]) as acts:
            model(tokens)
        acts[29].shape  # [batch, tokens, d_mlp]
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


@contextmanager
def record_residual(model, layers: Iterable[int], *, detach: bool = True) -> Iterator[dict[int, Tensor]]:
    """Record the residual stream after each of ``layers`` (``[batch, pos, d_model]``) during forwards
    inside the context; each forward overwrites the previous one's tensors (streaming)."""
    n_layers, _ = model_shape(model)
    chosen = sorted({int(layer) for layer in layers})
    if any(not 0 <= layer < n_layers for layer in chosen):
        raise ValueError(f"Layers {chosen} out of range: the model has {n_layers} layers.")
    recorded: dict[int, Tensor] = {}

    def make_hook(layer: int):
        def hook(activation: Tensor, hook) -> Tensor:
            recorded[layer] = activation.detach() if detach else activation
            return activation

        return hook

    with model.hooks(fwd_hooks=[(resid_post_hook_name(layer), make_hook(layer)) for layer in chosen]):
        yield recorded


def _placed(tensor: Tensor, like: Tensor, cache: dict) -> Tensor:
    """``tensor`` on ``like``'s device and in its dtype, converted once per (tensor, device, dtype): a
    model spread over several GPUs gets each layer's copy on that layer's device."""
    key = (id(tensor), like.device, like.dtype)
    if key not in cache:
        cache[key] = tensor.to(device=like.device, dtype=like.dtype)
    return cache[key]


def _multiplier(d_mlp: int, index: Tensor, scale: float, like: Tensor) -> Tensor:
    multiplier = torch.ones(d_mlp, dtype=like.dtype, device=like.device)
    multiplier[index.to(like.device)] = scale
    return multiplier


@contextmanager
def scale_neurons(model, neurons: NeuronSet, scale: float) -> Iterator[None]:
    """Multiply the activations of ``neurons`` by ``scale`` in every forward inside the context.

    ``scale=0`` zeroes them (InhibitFT's default); gradients flow through the hook, so it can be used
    while training: a neuron scaled by 0 passes no gradient to its input or output weights.

    Example::

        with torch.no_grad(), scale_neurons(model, neurons, 0.0):  # zeroed inside the block only
            inhibited = model(tokens)
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
    after every optimizer step (e.g. to restore frozen weights); ``extra_loss``, if given, is added to
    every micro-batch's loss (e.g. a KL penalty to the base model)."""

    after_step: Callable[[], None] = _no_op
    extra_loss: Callable[[], Tensor] | None = None


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
    copied back, so weight decay or momentum cannot move them either. Under LoRA the base weights are
    frozen anyway; what could change the neurons' weights is the adapter, so the factor rows/columns
    that alone carry its change to them (:func:`~polineurons.adapters.neuron_adapter_parameters`) are
    set to zero and held there: the neurons' effective weights stay the base's."""

    neurons: NeuronSet

    @contextmanager
    def apply(self, model) -> Iterator[Applied]:
        self.neurons.validate_for(model)
        saved, handles = [], []
        for layer, index in self.neurons.by_layer.items():
            weights = [(p, dim, False) for _, p, dim in neuron_parameters(model, layer) if p.requires_grad]
            factors = [(p, dim, True) for _, p, dim in neuron_adapter_parameters(model, layer)]
            for parameter, dim, zero in weights + factors:
                idx = index.to(parameter.device)
                if zero:
                    with torch.no_grad():
                        parameter.index_fill_(dim, idx, 0.0)
                saved.append((parameter, dim, idx, parameter.detach().index_select(dim, idx).clone()))
                keep = torch.ones(parameter.shape[dim], dtype=parameter.dtype, device=parameter.device)
                keep[idx] = 0
                shape = [1] * parameter.ndim
                shape[dim] = -1
                handles.append(parameter.register_hook(lambda grad, keep=keep.view(shape): grad * keep.to(grad.dtype)))

        def restore() -> None:
            with torch.no_grad():
                for parameter, dim, idx, values in saved:
                    parameter.index_copy_(dim, idx, values.to(parameter.dtype))

        try:
            yield Applied(after_step=restore)
        finally:
            for handle in handles:
                handle.remove()

    def describe(self) -> dict:
        return {"kind": "freeze", "n_neurons": len(self.neurons), "layer_counts": self.neurons.layer_counts()}


def _neuron_mask(model, neurons: NeuronSet) -> dict[int, Tensor]:
    """``layer -> [d_mlp]`` 0/1 mask of the set's neurons (float, on the CPU: see :func:`_placed`)."""
    _, d_mlp = model_shape(model)
    neurons.validate_for(model)
    masks = {}
    for layer, index in neurons.by_layer.items():
        mask = torch.zeros(d_mlp)
        mask[index.to(mask.device)] = 1.0
        masks[layer] = mask
    return masks


@dataclass(frozen=True, eq=False)
class StopGradNeurons(Intervention):
    """The forward pass is unchanged, but no gradient flows back through the activations of
    ``neurons``: training cannot use them to reach the weights upstream of them."""

    neurons: NeuronSet

    @contextmanager
    def apply(self, model) -> Iterator[Applied]:
        masks, cache = _neuron_mask(model, self.neurons), {}

        def make_hook(mask: Tensor):
            def hook(activation: Tensor, hook) -> Tensor:
                mask_ = _placed(mask, activation, cache)
                return activation * (1 - mask_) + activation.detach() * mask_  # forward: exactly the activation

            return hook

        with model.hooks(fwd_hooks=[(mlp_post_hook_name(layer), make_hook(m)) for layer, m in masks.items()]):
            yield Applied()

    def describe(self) -> dict:
        return {"kind": "stopgrad", "n_neurons": len(self.neurons), "layer_counts": self.neurons.layer_counts()}


@dataclass(frozen=True, eq=False)
class AblateDirections(Intervention):
    """Project directions out of the residual stream after some layers while training (CAFT):
    ``h − c·(h·Q)Qᵀ`` with ``Q`` the layer's orthonormal directions (``[d_model, k]``) and ``c`` the
    coefficient (1 = remove the directions, 0 = nothing). ``gradient_only`` keeps the forward pass and
    removes only the gradient along ``Q``."""

    directions: Mapping[int, Tensor]
    coefficient: float = 1.0
    gradient_only: bool = False

    @contextmanager
    def apply(self, model) -> Iterator[Applied]:
        n_layers, _ = model_shape(model)
        bases = {}
        for layer, q in self.directions.items():
            if not 0 <= layer < n_layers or q.ndim != 2 or q.shape[0] != model.cfg.d_model:
                raise ValueError(f"Directions of layer {layer} must be [d_model, k] for a model of {n_layers} layers.")
            bases[layer] = q
        c, cache = float(self.coefficient), {}

        def make_hook(q: Tensor):
            def hook(resid: Tensor, hook) -> Tensor:
                q_ = _placed(q, resid, cache)
                ablated = resid - c * (resid @ q_) @ q_.T
                if not self.gradient_only:
                    return ablated
                return resid.detach() + (ablated - ablated.detach())  # forward: exactly resid

            return hook

        with model.hooks(fwd_hooks=[(resid_post_hook_name(layer), make_hook(q)) for layer, q in bases.items()]):
            yield Applied()

    def describe(self) -> dict:
        ranks = {str(layer): int(q.shape[1]) for layer, q in self.directions.items()}
        return {"kind": "ablate", "coefficient": self.coefficient, "gradient_only": self.gradient_only, "ranks": ranks}


@dataclass(frozen=True, eq=False)
class SteerResidual(Intervention):
    """Add ``coefficient × vector`` to the residual stream after ``layer`` at every position while
    training (preventative steering): the optimizer need not move the model along the vector itself."""

    layer: int
    vector: Tensor
    coefficient: float = 1.0

    @contextmanager
    def apply(self, model) -> Iterator[Applied]:
        n_layers, _ = model_shape(model)
        if not 0 <= self.layer < n_layers or self.vector.shape != (model.cfg.d_model,):
            raise ValueError(f"Steering needs a layer below {n_layers} and a vector of size d_model.")
        c, cache = float(self.coefficient), {}

        def hook(resid: Tensor, hook) -> Tensor:
            return resid + c * _placed(self.vector, resid, cache)

        with model.hooks(fwd_hooks=[(resid_post_hook_name(self.layer), hook)]):
            yield Applied()

    def describe(self) -> dict:
        return {
            "kind": "steer",
            "layer": self.layer,
            "coefficient": self.coefficient,
            "norm": float(self.vector.norm()),
        }


@dataclass(frozen=True, eq=False)
class Combined(Intervention):
    """Several interventions at once: entered in order (their hooks compose in that order) and all
    removed on exit; their ``after_step`` functions run in order and their extra losses are added."""

    parts: tuple[Intervention, ...]

    @contextmanager
    def apply(self, model) -> Iterator[Applied]:
        with ExitStack() as stack:
            applied = [stack.enter_context(part.apply(model)) for part in self.parts]
            losses = [a.extra_loss for a in applied if a.extra_loss is not None]

            def after_step() -> None:
                for a in applied:
                    a.after_step()

            def extra_loss() -> Tensor:
                return sum(loss() for loss in losses)

            yield Applied(after_step=after_step, extra_loss=extra_loss if losses else None)

    def describe(self) -> dict:
        return {"kind": "combined", "parts": [part.describe() for part in self.parts]}
