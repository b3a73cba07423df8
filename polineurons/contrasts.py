"""Per-neuron contrast scores — one ``[n_layers, d_mlp]`` tensor per topic — that PNLAC ranks.

Each function streams batches (memory does not grow with the number of sequences) and scores only
the tokens from each sequence's ``start`` on (earlier tokens still run, as context):

- :func:`finetune_contrast`: RMS of (fine-tuned − base) activations. Unsigned: it ranks whatever the
  fine-tune changed, leaning-related or not (the paper's recipe).
- :func:`leaning_contrast`: mean of (right-tuned − left-tuned) activations on the same inputs.
  Signed: what flips with the leaning; the drift both fine-tunes share cancels.
- :func:`answer_contrast`: the base model alone, mean over items of (mean activation over the
  right-leaning answer's tokens − over the left-leaning one's). Signed; needs no fine-tune.
- :func:`attribution_scores`: gradient × (fine-tuned − base) activation of the stance margin — to
  first order, how much patching that neuron alone from the fine-tuned model moves the stance.
- :func:`activation_spread`: one model's per-neuron standard deviation, for normalisation.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from jaxtyping import Float
from torch import Tensor
from tqdm.auto import tqdm

from polineurons.batching import pad_id_of, per_sequence_starts, scored_batches, sequence_batches
from polineurons.data.items import StanceItem
from polineurons.hooks import record_neurons
from polineurons.neurons import mlp_post_hook_name, model_shape
from polineurons.stance import batch_logprob_sums, stance_pairs

Scores = Float[Tensor, "n_layers d_mlp"]


def _check_same_shape(a, b) -> None:
    if model_shape(a) != model_shape(b):
        raise ValueError(f"Models differ in shape: {model_shape(a)} vs {model_shape(b)}.")


def _difference_moments(
    first, second, sequences, starts, batch_size: int, progress: bool
) -> tuple[Tensor, Tensor, int]:
    """Sum and sum of squares over scored tokens of (second − first) activations, and the token count."""
    _check_same_shape(first, second)
    starts = per_sequence_starts(sequences, starts)
    n_layers, d_mlp = model_shape(first)
    device = first.cfg.device
    total = torch.zeros(n_layers, d_mlp, dtype=torch.float64, device=device)
    squares = torch.zeros_like(total)
    n_tokens = 0
    for _, tokens, mask, scored in scored_batches(first, sequences, starts, batch_size, "contrast", progress):
        weight = scored[..., None].double()
        with torch.no_grad(), record_neurons(first) as recorded:
            first(tokens, attention_mask=mask)
        recorded = dict(recorded)

        def make_hook(layer: int):
            def hook(activation: Tensor, hook) -> Tensor:
                diff = (activation.double() - recorded[layer].double()) * weight
                total[layer] += diff.sum(dim=(0, 1))
                squares[layer] += (diff * diff).sum(dim=(0, 1))
                return activation

            return hook

        hooks = [(mlp_post_hook_name(layer), make_hook(layer)) for layer in range(n_layers)]
        with torch.no_grad(), second.hooks(fwd_hooks=hooks):
            second(tokens, attention_mask=mask)
        n_tokens += int(scored.sum())
    if n_tokens == 0:
        raise ValueError("No token left to score: every sequence ends before its start.")
    return total, squares, n_tokens


def finetune_contrast(
    base,
    finetuned,
    sequences: Sequence[Sequence[int]],
    *,
    starts: Sequence[int] | int = 0,
    batch_size: int = 8,
    progress: bool = False,
) -> Scores:
    """Per-neuron RMS of (fine-tuned − base) activations over the scored tokens (unsigned)."""
    _, squares, n = _difference_moments(base, finetuned, sequences, starts, batch_size, progress)
    return (squares / n).sqrt().float().cpu()


def leaning_contrast(
    left,
    right,
    sequences: Sequence[Sequence[int]],
    *,
    starts: Sequence[int] | int = 0,
    batch_size: int = 8,
    progress: bool = False,
) -> Scores:
    """Per-neuron mean of (right-tuned − left-tuned) activations over the scored tokens (signed:
    positive = more active in the right-leaning fine-tune)."""
    total, _, n = _difference_moments(left, right, sequences, starts, batch_size, progress)
    return (total / n).float().cpu()


def answer_contrast(
    model,
    sequences: Sequence[Sequence[int]],
    *,
    starts: Sequence[int] | int = 0,
    batch_size: int = 8,
    progress: bool = False,
) -> Scores:
    """Per-neuron mean over items of (mean activation over the right answer's scored tokens − the
    left answer's). ``sequences`` alternate right, left per item (as :func:`stance.stance_pairs`)."""
    starts = per_sequence_starts(sequences, starts)
    if len(sequences) % 2:
        raise ValueError("answer_contrast needs (right, left) sequence pairs: got an odd count.")
    n_layers, d_mlp = model_shape(model)
    signed = torch.zeros(n_layers, d_mlp, dtype=torch.float64, device=model.cfg.device)
    for indices, tokens, mask, scored in scored_batches(model, sequences, starts, batch_size, "answers", progress):
        counts = scored.sum(dim=1, keepdim=True)
        if (counts == 0).any():
            raise ValueError("An answer sequence has no scored token.")
        sign = torch.tensor([1.0 if i % 2 == 0 else -1.0 for i in indices], dtype=torch.float64, device=tokens.device)
        weight = (scored.double() / counts * sign[:, None])[..., None]  # signed per-sequence mean
        with torch.no_grad(), record_neurons(model) as recorded:
            model(tokens, attention_mask=mask)
        for layer, acts in recorded.items():
            signed[layer] += (acts.double() * weight).sum(dim=(0, 1))
    return (signed / (len(sequences) // 2)).float().cpu()


def activation_spread(
    model,
    sequences: Sequence[Sequence[int]],
    *,
    starts: Sequence[int] | int = 0,
    batch_size: int = 8,
    progress: bool = False,
) -> Scores:
    """Per-neuron standard deviation of ``model``'s activations over the scored tokens."""
    starts = per_sequence_starts(sequences, starts)
    n_layers, d_mlp = model_shape(model)
    total = torch.zeros(n_layers, d_mlp, dtype=torch.float64, device=model.cfg.device)
    squares = torch.zeros_like(total)
    n = 0
    for _, tokens, mask, scored in scored_batches(model, sequences, starts, batch_size, "spread", progress):
        weight = scored[..., None].double()
        with torch.no_grad(), record_neurons(model) as recorded:
            model(tokens, attention_mask=mask)
        for layer, acts in recorded.items():
            total[layer] += (acts.double() * weight).sum(dim=(0, 1))
            squares[layer] += (acts.double().square() * weight).sum(dim=(0, 1))
        n += int(scored.sum())
    if n < 2:
        raise ValueError("activation_spread needs at least two scored tokens.")
    mean = total / n
    return ((squares / n - mean.square()).clamp_min(0) * n / (n - 1)).sqrt().float().cpu()


# ---- attribution patching -------------------------------------------------------------------------


def stance_metric(logits: Float[Tensor, "batch pos vocab"], batch, weights: Tensor) -> Tensor:
    """Sum over rows of weight × continuation log-prob sum; with weights ±1/len this is the sum of
    the items' stance scores (right minus left mean log-prob)."""
    return (batch_logprob_sums(logits, batch) * weights).sum()


def stance_weights(batch, counts: Tensor, device) -> Tensor:
    """±1/length per row: :func:`stance.stance_pairs` lays out (right, left) per item."""
    signs = torch.tensor([1.0 if i % 2 == 0 else -1.0 for i in batch.indices])
    return (signs / counts[torch.tensor(batch.indices)].float()).to(device)


def attribution_scores(
    base,
    finetuned,
    items: Sequence[StanceItem],
    *,
    batch_size: int = 8,
    max_answer_tokens: int | None = None,
    answer_only: bool = False,
    progress: bool = True,
) -> Scores:
    """Attribution patching for every neuron at once: Σ over tokens of
    ∂(stance metric)/∂(base activation) × (fine-tuned − base activation).

    One forward of each model and one backward of the base per batch. It estimates, to first order,
    how much patching that neuron alone from the fine-tuned model would change the summed stance
    score of ``items`` (positive = toward the right). ``answer_only`` sums over the answer tokens only.
    """
    _check_same_shape(base, finetuned)
    if base is finetuned:
        raise ValueError("base and finetuned must be two model objects.")
    n_layers, d_mlp = model_shape(base)
    pairs = stance_pairs(base.tokenizer, items, max_answer_tokens=max_answer_tokens)
    batches, counts = sequence_batches(pairs, batch_size, pad_id_of(base), base.cfg.device)
    total = torch.zeros(n_layers, d_mlp, dtype=torch.float64)
    parameters = list(base.parameters())
    needs_grad = [p.requires_grad for p in parameters]
    for p in parameters:
        p.requires_grad_(False)  # only activation gradients are needed
    try:
        for batch in tqdm(batches, desc="attribution", disable=not progress, leave=False):
            with torch.no_grad(), record_neurons(finetuned) as tuned:
                finetuned(batch.tokens, attention_mask=batch.mask)
            tuned = dict(tuned)
            probes: dict[int, Tensor] = {}
            base_acts: dict[int, Tensor] = {}

            def make_hook(layer: int):
                # Adding a zero probe that requires grad gives d(metric)/d(activation) through every
                # downstream path (a detached leaf would cut the paths through later MLPs).
                def hook(activation: Tensor, hook) -> Tensor:
                    base_acts[layer] = activation.detach()
                    probes[layer] = torch.zeros_like(activation, requires_grad=True)
                    return activation + probes[layer]

                return hook

            hooks = [(mlp_post_hook_name(layer), make_hook(layer)) for layer in range(n_layers)]
            with base.hooks(fwd_hooks=hooks):
                logits = base(batch.tokens, attention_mask=batch.mask)
            metric = stance_metric(logits, batch, stance_weights(batch, counts, logits.device))
            grads = torch.autograd.grad(metric, [probes[layer] for layer in range(n_layers)])
            mask = batch.mask.bool()
            if answer_only:
                mask = torch.zeros_like(mask)
                mask[:, 1:] = batch.targets  # the answer's own tokens
            weight = mask[..., None].double()
            for layer, grad in enumerate(grads):
                delta = tuned[layer].double() - base_acts[layer].double()
                total[layer] += (grad.double() * delta * weight).sum(dim=(0, 1)).cpu()
    finally:
        for p, flag in zip(parameters, needs_grad, strict=True):
            p.requires_grad_(flag)
    return total
