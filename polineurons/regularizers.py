"""Loss terms applied while training, as interventions: KL to the frozen base model, and replay of
the base model's own answers.

``KLToBase`` adds ``β · KL(p_θ ‖ p_base)`` — the fine-tuned model's next-token distribution against
the base model's, averaged over the real tokens of a batch of *other* sequences (off-target topics'
questions and answers, or neutral text for its control) — to every micro-batch's loss, so the
fine-tune is pulled back toward the base model wherever it is not being trained.

``Replay`` adds ``w · LM loss`` on a batch of replayed examples — the base model's own answers to the
other topics' questions (or to neutral prompts, for its control) — to every micro-batch's loss: the
practitioner's fix of mixing some of the model's old behaviour into the training data, at matched steps.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import Tensor

from polineurons.adapters import adapter_disabled
from polineurons.batching import pad_id_of, pad_right
from polineurons.hooks import Applied, Intervention
from polineurons.training import answer_loss, collate_answers


class _Cycle:
    """Batches of indices into ``n`` items, cycling through a fresh seeded shuffle whenever one runs out
    (a batch may straddle two shuffles, so every item is used once per pass)."""

    def __init__(self, n: int, batch_size: int, seed: int):
        self.n, self.batch_size = n, batch_size
        self.generator = torch.Generator().manual_seed(seed)
        self.order: list[int] = []

    def next(self) -> list[int]:
        while len(self.order) < self.batch_size:
            self.order += torch.randperm(self.n, generator=self.generator).tolist()
        chosen, self.order = self.order[: self.batch_size], self.order[self.batch_size :]
        return chosen


def kl_to_reference(logits: Tensor, reference: Tensor, mask: Tensor) -> Tensor:
    """Mean over real tokens of KL(softmax(logits) ‖ softmax(reference)) (differentiable in ``logits``)."""
    log_p = logits.float().log_softmax(-1)
    log_q = reference.float().log_softmax(-1)
    per_token = (log_p.exp() * (log_p - log_q)).sum(-1)
    weight = mask.float()
    return (per_token * weight).sum() / weight.sum()


@dataclass(frozen=True, eq=False)
class KLToBase(Intervention):
    """β · KL(fine-tuned ‖ base) on ``sequences``, a new batch of them at every micro-batch (cycling
    through a seeded shuffle). ``base`` is a frozen copy of the model before training — or, under LoRA,
    the trained model itself: its reference is then computed with the adapter switched off, so the base
    is never held twice."""

    base: object
    sequences: Sequence[Sequence[int]]
    beta: float = 1.0
    batch_size: int = 8
    seed: int = 0

    @contextmanager
    def apply(self, model) -> Iterator[Applied]:
        if not self.sequences:
            raise ValueError("KLToBase needs at least one sequence.")
        batches = _Cycle(len(self.sequences), self.batch_size, self.seed)
        pad_id, device = pad_id_of(model), model.cfg.device

        def extra_loss() -> Tensor:
            tokens, mask = pad_right([self.sequences[i] for i in batches.next()], pad_id)
            tokens, mask = tokens.to(device), mask.to(device)
            with torch.no_grad(), adapter_disabled(model) if self.base is model else contextlib.nullcontext():
                reference = self.base(tokens, attention_mask=mask)
            return self.beta * kl_to_reference(model(tokens, attention_mask=mask), reference, mask)

        yield Applied(extra_loss=extra_loss)

    def describe(self) -> dict:
        return {"kind": "kl", "beta": self.beta, "n_sequences": len(self.sequences), "batch_size": self.batch_size}


@dataclass(frozen=True, eq=False)
class Replay(Intervention):
    """``weight`` · the LM loss on ``examples`` (token ids and where the answer starts, as
    :func:`~polineurons.training.encode_examples` makes them; only answer tokens are scored), a new
    batch of them at every micro-batch (cycling through a seeded shuffle)."""

    examples: Sequence[tuple[Sequence[int], int]]
    weight: float = 1.0
    batch_size: int = 8
    seed: int = 0

    @contextmanager
    def apply(self, model) -> Iterator[Applied]:
        if not self.examples:
            raise ValueError("Replay needs at least one example.")
        batches = _Cycle(len(self.examples), self.batch_size, self.seed)
        pad_id, device = pad_id_of(model), model.cfg.device

        def extra_loss() -> Tensor:
            tokens, mask, labels = collate_answers(self.examples, batches.next(), pad_id, device)
            return self.weight * answer_loss(model(tokens, attention_mask=mask), labels)

        yield Applied(extra_loss=extra_loss)

    def describe(self) -> dict:
        return {
            "kind": "replay",
            "weight": self.weight,
            "n_examples": len(self.examples),
            "batch_size": self.batch_size,
        }
