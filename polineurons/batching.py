"""Padding and length-sorted batching of token sequences, shared by scoring, training and PNLAC.

Everything is right-padded: with causal attention no real token ever attends to a pad on its right,
so results do not depend on how sequences are grouped into batches.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from jaxtyping import Bool, Int
from torch import Tensor
from tqdm.auto import tqdm


def pad_id_of(model) -> int:
    """The tokenizer's pad id (0 when it has none: padded positions are masked anyway)."""
    return getattr(model.tokenizer, "pad_token_id", None) or 0


def pad_right(
    sequences: Sequence[Sequence[int]], pad_id: int
) -> tuple[Int[Tensor, "batch pos"], Int[Tensor, "batch pos"]]:
    """Right-padded token ids and the attention mask of 1s over real tokens."""
    width = max(len(seq) for seq in sequences)
    tokens = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for row, seq in enumerate(sequences):
        tokens[row, : len(seq)] = torch.tensor(list(seq), dtype=torch.long)
        mask[row, : len(seq)] = 1
    return tokens, mask


def length_sorted_batches(lengths: Sequence[int], batch_size: int) -> list[list[int]]:
    """Indices grouped into batches of similar length (longest first), so padding stays small."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}.")
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]


@dataclass(frozen=True)
class SequenceBatch:
    """Right-padded prompt+continuation sequences; ``targets`` marks positions whose next token is
    a continuation token (position t predicts token t+1)."""

    indices: list[int]
    tokens: Int[Tensor, "batch pos"]
    mask: Int[Tensor, "batch pos"]
    targets: Bool[Tensor, "batch pos_minus_1"]


def sequence_batches(
    pairs: Sequence[tuple[Sequence[int], Sequence[int]]], batch_size: int, pad_id: int, device
) -> tuple[list[SequenceBatch], Int[Tensor, " n"]]:
    """Batches of ``(prompt_ids, continuation_ids)`` sorted by length (little padding), and each
    continuation's token count in the original order."""
    sequences, starts = [], []
    for prompt, continuation in pairs:
        if not prompt or not continuation:
            raise ValueError("Every prompt and continuation needs at least one token.")
        sequences.append(list(prompt) + list(continuation))
        starts.append(len(prompt))
    counts = torch.tensor([len(s) - p for s, p in zip(sequences, starts, strict=True)])
    batches = []
    for indices in length_sorted_batches([len(s) for s in sequences], batch_size):
        tokens, mask = pad_right([sequences[i] for i in indices], pad_id)
        targets = torch.zeros((len(indices), tokens.shape[1] - 1), dtype=torch.bool)
        for row, index in enumerate(indices):
            targets[row, starts[index] - 1 : len(sequences[index]) - 1] = True
        batches.append(SequenceBatch(indices, tokens.to(device), mask.to(device), targets.to(device)))
    return batches, counts


def per_sequence_starts(sequences: Sequence[Sequence[int]], starts: Sequence[int] | int) -> list[int]:
    """Each sequence's first scored position: ``starts`` as given (one per sequence), or one for all."""
    if not sequences:
        raise ValueError("Scoring needs at least one sequence.")
    if isinstance(starts, int):
        return [starts] * len(sequences)
    if len(starts) != len(sequences):
        raise ValueError(f"{len(starts)} starts for {len(sequences)} sequences.")
    return list(starts)


def scored_batches(model, sequences, starts: Sequence[int], batch_size: int, desc: str, progress: bool):
    """``(indices, tokens, mask, scored)`` per length-sorted batch on ``model``'s device; ``scored``
    marks real tokens at or after their sequence's start (earlier ones are run, not counted)."""
    batches = length_sorted_batches([len(s) for s in sequences], batch_size)
    for indices in tqdm(batches, desc=desc, disable=not progress, leave=False):
        tokens, mask = pad_right([sequences[i] for i in indices], pad_id_of(model))
        scored = mask.clone()
        for row, i in enumerate(indices):
            scored[row, : starts[i]] = 0
        device = model.cfg.device
        yield indices, tokens.to(device), mask.to(device), scored.to(device)
