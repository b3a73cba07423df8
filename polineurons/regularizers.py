"""Loss terms applied while training, as interventions: KL to the frozen base model.

``KLToBase`` adds ``β · KL(p_θ ‖ p_base)`` — the fine-tuned model's next-token distribution against
the base model's, averaged over the real tokens of a batch of *other* sequences (off-target topics'
questions and answers, or neutral text for its control) — to every micro-batch's loss, so the
fine-tune is pulled back toward the base model wherever it is not being trained.
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
        generator = torch.Generator().manual_seed(self.seed)
        order: list[int] = []
        pad_id, device = pad_id_of(model), model.cfg.device

        def extra_loss() -> Tensor:
            nonlocal order
            if len(order) < self.batch_size:
                order = order + torch.randperm(len(self.sequences), generator=generator).tolist()
            chosen, order = order[: self.batch_size], order[self.batch_size :]
            tokens, mask = pad_right([self.sequences[i] for i in chosen], pad_id)
            tokens, mask = tokens.to(device), mask.to(device)
            with torch.no_grad(), adapter_disabled(model) if self.base is model else contextlib.nullcontext():
                reference = self.base(tokens, attention_mask=mask)
            return self.beta * kl_to_reference(model(tokens, attention_mask=mask), reference, mask)

        yield Applied(extra_loss=extra_loss)

    def describe(self) -> dict:
        return {"kind": "kl", "beta": self.beta, "n_sequences": len(self.sequences), "batch_size": self.batch_size}
