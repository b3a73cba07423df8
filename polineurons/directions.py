"""Residual-stream directions for the mitigations, and their random controls.

- :func:`leaning_directions`: on the BASE model, per layer, the mean residual stream over answer
  tokens of right-leaning minus left-leaning answers on the OTHER topics' training items — the
  direction a spill-over would travel along — optionally with the target topic's own direction
  projected out, so that ablating it spares the target shift. Unit vectors.
- :func:`difference_pcs`: the top principal components of (fine-tuned − base) residual activations
  on some sequences (CAFT's choice of directions).
- :func:`spill_directions`: what differs between two models on the other topics' texts and not on the
  target's: the top principal components of their residual difference there, with the same measured on
  the target's own texts projected out. CAFT's ``flip`` directions (a right- and a left-leaning
  fine-tune: what flips with the leaning) and ``pca`` directions (the vanilla fine-tune and the base).
- :func:`random_subspace` and :func:`random_like`: controls with the same rank, or the same norm.
- :func:`neuron_direction_cosines`: how well a neuron set's output weights line up with a direction.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from jaxtyping import Float
from torch import Tensor

from polineurons.batching import per_sequence_starts, scored_batches
from polineurons.data.items import StanceDataset
from polineurons.hooks import record_residual
from polineurons.neurons import NeuronSet, neuron_parameters
from polineurons.screening import answer_direction

Directions = dict[int, Float[Tensor, "d_model k"]]


def leaning_directions(
    model,
    dataset: StanceDataset,
    target: str,
    layers: Sequence[int],
    *,
    orthogonal_to_target: bool = True,
    max_items: int | None = 32,
    max_answer_tokens: int | None = 48,
) -> Directions:
    """``layer -> [d_model, 1]`` unit leaning direction from the other topics' training answers."""
    others = [t for t in dataset.topics if t != target]
    options = {"max_answer_tokens": max_answer_tokens}
    items = [i for t in others for i in dataset.select(topics=[t], split="train", max_items=max_items).items]
    general = answer_direction(model, items, layers, **options)
    if orthogonal_to_target:
        own = answer_direction(
            model, dataset.select(topics=[target], split="train", max_items=max_items).items, layers, **options
        )
        own = own / own.norm(dim=-1, keepdim=True)
        general = general - (general * own).sum(dim=-1, keepdim=True) * own
    general = general / general.norm(dim=-1, keepdim=True)
    return {layer: general[k].float()[:, None] for k, layer in enumerate(layers)}


def difference_grams(
    one,
    other,
    sequences: Sequence[Sequence[int]],
    layers: Sequence[int],
    *,
    starts: Sequence[int] | int = 0,
    batch_size: int = 8,
    progress: bool = False,
) -> dict[int, Float[Tensor, "d_model d_model"]]:
    """``layer -> [d_model, d_model]`` (float64): the uncentred second moment Σ d dᵀ of the per-token
    difference of residual streams d = one − other, summed over every real token of ``sequences`` from
    its ``starts`` on (one per sequence, or one for all; 0: every token)."""
    starts = per_sequence_starts(sequences, starts)
    d_model = int(one.cfg.d_model)
    grams = {layer: torch.zeros(d_model, d_model, dtype=torch.float64) for layer in layers}
    for _, tokens, mask, scored in scored_batches(one, sequences, starts, batch_size, "residual differences", progress):
        with torch.no_grad(), record_residual(other, layers) as before:
            other(tokens, attention_mask=mask)
        before = dict(before)
        with torch.no_grad(), record_residual(one, layers) as after:
            one(tokens, attention_mask=mask)
        for layer in layers:
            diff = (after[layer] - before[layer])[scored.bool()].double().cpu()  # [tokens, d_model]
            grams[layer] += diff.T @ diff
    return grams


def top_components(gram: Float[Tensor, "d_model d_model"], k: int) -> Float[Tensor, "d_model k"]:
    """The top-k eigenvectors of a second-moment matrix (its uncentred principal components), largest first."""
    return torch.linalg.eigh(gram).eigenvectors[:, -k:].flip(-1).float()


def difference_pcs(
    base, tuned, sequences: Sequence[Sequence[int]], layers: Sequence[int], k: int, *, batch_size: int = 8
) -> Directions:
    """``layer -> [d_model, k]``: top-k principal components (uncentred) of the per-token difference
    of residual streams, fine-tuned minus base, over every real token of ``sequences``."""
    grams = difference_grams(tuned, base, sequences, layers, batch_size=batch_size)
    return {layer: top_components(gram, k) for layer, gram in grams.items()}


def spill_directions(
    one,
    other,
    others: Sequence[Sequence[int]],
    own: Sequence[Sequence[int]],
    layers: Sequence[int],
    k: int,
    *,
    starts: tuple[Sequence[int] | int, Sequence[int] | int] = (0, 0),
    batch_size: int = 8,
) -> Directions:
    """``layer -> [d_model, k]`` orthonormal: the top-k principal components of the residual difference
    between two models of the same architecture (``one``, ``other``; which is which only flips signs) on
    the other topics' texts ``others``, with the top-k of the same difference on the target's own texts
    ``own`` projected out: what differs on the other topics and not on the target. Flip directions: two
    fine-tunes toward opposite leanings; PCA directions: a fine-tune and its base. ``starts``: the first
    position counted in ``others``' and in ``own``'s sequences (:func:`difference_grams`)."""
    spill = difference_grams(one, other, others, layers, starts=starts[0], batch_size=batch_size)
    target = difference_grams(one, other, own, layers, starts=starts[1], batch_size=batch_size)
    return {layer: spill_basis(spill[layer], target[layer], k) for layer in layers}


def spill_basis(
    spill: Float[Tensor, "d_model d_model"], target: Float[Tensor, "d_model d_model"], k: int
) -> Float[Tensor, "d_model k"]:
    """The spill-over's top-k components with the target's top-k projected out (from
    :func:`difference_grams` on the other topics' and on the target's texts)."""
    return orthogonal_complement(top_components(spill, k), top_components(target, k))


def orthogonal_complement(
    basis: Float[Tensor, "d_model k"], against: Float[Tensor, "d_model j"]
) -> Float[Tensor, "d_model k"]:
    """An orthonormal basis of ``basis``'s span with ``against``'s (orthonormal) span projected out."""
    rest = basis.double() - against.double() @ (against.double().T @ basis.double())
    q, r = torch.linalg.qr(rest)
    if float(r.diagonal().abs().min()) < 1e-6 * float(basis.norm()):
        raise ValueError("The directions lie within the span they are made orthogonal to: nothing is left.")
    return q.float()


def random_subspace(d_model: int, k: int, seed: int) -> Float[Tensor, "d_model k"]:
    """A uniformly random orthonormal basis of a k-dimensional subspace (QR of a Gaussian matrix)."""
    generator = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(d_model, k, generator=generator, dtype=torch.float64))
    return q.float()


def random_like(directions: Directions, seed: int) -> Directions:
    """A random orthonormal subspace of the same rank at each of the same layers."""
    return {layer: random_subspace(q.shape[0], q.shape[1], seed + layer) for layer, q in directions.items()}


def random_vector(vector: Float[Tensor, " d_model"], seed: int) -> Float[Tensor, " d_model"]:
    """A uniformly random direction with the same norm as ``vector``."""
    return random_subspace(vector.shape[0], 1, seed)[:, 0] * vector.norm()


def output_weights(model, layer: int) -> Float[Tensor, "d_mlp d_model"]:
    """Each neuron's output weights at ``layer``: what one unit of its activation adds to the residual."""
    for name, parameter, neuron_dim in neuron_parameters(model, layer):
        if name.endswith(".out.weight"):
            return parameter.detach().movedim(neuron_dim, 0).float().cpu()
    raise ValueError(f"Layer {layer}'s MLP has no output projection through the bridge.")


def neuron_direction_cosines(
    model, neurons: NeuronSet, signs: Float[Tensor, "n_layers d_mlp"], directions: Directions
) -> dict[int, dict[str, float]]:
    """Per direction layer: the mean and mean absolute cosine between each neuron's output weights,
    times its sign (which way its contrast points), and the layer's first direction; over ``neurons``
    of every layer (all write into the same residual stream)."""
    pairs = list(neurons)
    weights = {layer: output_weights(model, layer) for layer in neurons.layers}
    if not pairs:
        return {layer: {"mean": float("nan"), "mean_abs": float("nan"), "n": 0} for layer in directions}
    rows = torch.stack([weights[layer][index] * float(signs[layer, index] or 1.0) for layer, index in pairs])
    result = {}
    for layer, basis in directions.items():
        cosine = torch.nn.functional.cosine_similarity(rows, basis[:, 0].float().cpu()[None, :], dim=-1)
        result[layer] = {"mean": float(cosine.mean()), "mean_abs": float(cosine.abs().mean()), "n": len(pairs)}
    return result


def set_direction_cosines(
    model,
    dataset: StanceDataset,
    target: str,
    sets: dict[str, list[NeuronSet]],
    signs: Float[Tensor, "n_layers d_mlp"],
    layers: Sequence[int],
    *,
    max_items: int | None = 32,
) -> dict[str, dict[int, dict[str, float]]]:
    """:func:`neuron_direction_cosines` of each named group of sets (averaged over the group's sets)
    against the leaning direction (:func:`leaning_directions`, orthogonal to the target's) at ``layers``."""
    directions = leaning_directions(model, dataset, target, layers, max_items=max_items)
    result: dict[str, dict[int, dict[str, float]]] = {}
    for name, group in sets.items():
        rows = [neuron_direction_cosines(model, neurons, signs, directions) for neurons in group]
        result[name] = {
            layer: {key: float(np.mean([r[layer][key] for r in rows])) for key in ("mean", "mean_abs", "n")}
            for layer in directions
        }
    return result
