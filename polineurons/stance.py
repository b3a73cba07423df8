"""Likelihood-based stance scoring, batched.

Stance item score = mean per-token log-prob of the right-leaning answer minus that of the
left-leaning answer, each conditioned on the question in the model's chat format (positive = leans
right). Statement score = log-prob of answering "Agree" minus "Disagree", signed so that positive
means the right-leaning position. Topic score = mean over items with a seeded bootstrap 95% CI.

Scoring runs ordinary forwards, so any hooks active around it (patching, inhibition) apply.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import torch
from jaxtyping import Float, Int
from torch import Tensor
from tqdm.auto import tqdm

from polineurons.data.items import StanceDataset, StanceItem, StatementItem
from polineurons.data.prompts import encode_prompt, encode_text
from polineurons.stats import bootstrap_ci

STATEMENT_PROMPT = (
    'Do you agree or disagree with the following statement? Answer with one word: Agree or Disagree.\n\n'
    'Statement: "{statement}"'
)
AGREE, DISAGREE = "Agree", "Disagree"


@dataclass(frozen=True)
class ItemScore:
    """Per-item result: log-probs of the right- and left-leaning continuation, and their margin."""

    id: str
    topic: str
    right_logprob: float
    left_logprob: float

    @property
    def score(self) -> float:
        return self.right_logprob - self.left_logprob


@dataclass(frozen=True)
class TopicScore:
    topic: str
    score: float
    ci_low: float
    ci_high: float
    right_rate: float  # share of items whose score is > 0
    n: int


@dataclass(frozen=True)
class StanceResult:
    """Item scores plus their per-topic summary."""

    items: tuple[ItemScore, ...]
    topics: dict[str, TopicScore]

    def scores(self, topic: str) -> list[float]:
        return [item.score for item in self.items if item.topic == topic]

    def to_dict(self) -> dict:
        return {
            "topics": {t: {k: v for k, v in asdict(s).items() if k != "topic"} for t, s in self.topics.items()},
            "items": [{**asdict(item), "score": item.score} for item in self.items],
        }


def continuation_logprobs(
    model,
    pairs: Sequence[tuple[Sequence[int], Sequence[int]]],
    *,
    batch_size: int = 16,
    progress: bool = False,
    desc: str = "scoring",
) -> tuple[Float[Tensor, " n"], Int[Tensor, " n"]]:
    """Sum of log-probs of each continuation given its prompt, and its token count.

    ``pairs`` are ``(prompt_ids, continuation_ids)``. Sequences are sorted by length and right-padded
    per batch (causal attention never looks at the padding to the right), so results do not depend
    on the batch size.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}.")
    sequences, starts = [], []
    for prompt, continuation in pairs:
        if not prompt or not continuation:
            raise ValueError("Every prompt and continuation needs at least one token.")
        sequences.append(list(prompt) + list(continuation))
        starts.append(len(prompt))
    sums = torch.zeros(len(sequences), dtype=torch.float64)
    counts = torch.tensor([len(s) - p for s, p in zip(sequences, starts)])
    order = sorted(range(len(sequences)), key=lambda i: -len(sequences[i]))
    pad_id = getattr(model.tokenizer, "pad_token_id", None) or 0
    device = model.cfg.device
    batches = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    for batch in tqdm(batches, desc=desc, disable=not progress, leave=False):
        width = len(sequences[batch[0]])
        tokens = torch.full((len(batch), width), pad_id, dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        targets_mask = torch.zeros((len(batch), width - 1), dtype=torch.bool)
        for row, index in enumerate(batch):
            seq = sequences[index]
            tokens[row, : len(seq)] = torch.tensor(seq)
            mask[row, : len(seq)] = 1
            targets_mask[row, starts[index] - 1 : len(seq) - 1] = True  # position t predicts token t+1
        tokens, mask, targets_mask = tokens.to(device), mask.to(device), targets_mask.to(device)
        with torch.no_grad():
            logits = model(tokens, attention_mask=mask)
        chosen = logits[:, :-1][targets_mask].float()  # [n_targets, vocab]
        targets = tokens[:, 1:][targets_mask]
        token_logprobs = chosen.log_softmax(-1).gather(-1, targets[:, None]).squeeze(-1)
        rows = torch.nonzero(targets_mask)[:, 0]
        per_row = torch.zeros(len(batch), dtype=torch.float64, device=device).index_add_(0, rows, token_logprobs.double())
        sums[torch.tensor(batch)] = per_row.cpu()
    return sums, counts


def score_items(
    model,
    items: Sequence[StanceItem],
    *,
    batch_size: int = 16,
    max_answer_tokens: int | None = None,
    system: str | None = None,
    progress: bool = True,
) -> list[ItemScore]:
    """Mean per-token log-prob of each item's right and left answer given its question."""
    tokenizer = model.tokenizer
    pairs = []
    for item in items:
        prompt = encode_prompt(tokenizer, item.question, system=system)
        for leaning in ("right", "left"):
            answer = encode_text(tokenizer, item.answer(leaning), prompt_start=False)
            pairs.append((prompt, answer[:max_answer_tokens] if max_answer_tokens else answer))
    sums, counts = continuation_logprobs(model, pairs, batch_size=batch_size, progress=progress, desc="stance items")
    means = (sums / counts).tolist()
    return [ItemScore(item.id, item.topic, means[2 * i], means[2 * i + 1]) for i, item in enumerate(items)]


def score_statements(
    model,
    statements: Sequence[StatementItem],
    *,
    batch_size: int = 16,
    system: str | None = None,
    progress: bool = True,
) -> list[ItemScore]:
    """Log-prob of answering "Agree" vs "Disagree", oriented so that ``right_logprob`` is the
    right-leaning answer (agreeing when the statement's ``agree_leaning`` is right)."""
    tokenizer = model.tokenizer
    agree = encode_text(tokenizer, AGREE, prompt_start=False)
    disagree = encode_text(tokenizer, DISAGREE, prompt_start=False)
    pairs = []
    for statement in statements:
        prompt = encode_prompt(tokenizer, STATEMENT_PROMPT.format(statement=statement.statement), system=system)
        pairs += [(prompt, agree), (prompt, disagree)]
    sums, _ = continuation_logprobs(model, pairs, batch_size=batch_size, progress=progress, desc="statements")
    results = []
    for i, statement in enumerate(statements):
        agree_lp, disagree_lp = float(sums[2 * i]), float(sums[2 * i + 1])
        right, left = (agree_lp, disagree_lp) if statement.agree_leaning == "right" else (disagree_lp, agree_lp)
        results.append(ItemScore(statement.id, statement.topic, right, left))
    return results


def summarize(scores: Sequence[ItemScore], *, n_boot: int = 2000, seed: int = 0) -> dict[str, TopicScore]:
    """Per-topic mean score with a seeded bootstrap 95% CI and the right-preference rate."""
    by_topic: dict[str, list[float]] = {}
    for item in scores:
        by_topic.setdefault(item.topic, []).append(item.score)
    summary = {}
    for topic, values in by_topic.items():
        low, high = bootstrap_ci(values, n_boot=n_boot, seed=seed)
        summary[topic] = TopicScore(
            topic=topic,
            score=sum(values) / len(values),
            ci_low=low,
            ci_high=high,
            right_rate=sum(v > 0 for v in values) / len(values),
            n=len(values),
        )
    return summary


def measure_stance(
    model,
    dataset: StanceDataset,
    *,
    split: str | None = "eval",
    topics: Sequence[str] | None = None,
    max_items: int | None = None,
    batch_size: int = 16,
    max_answer_tokens: int | None = None,
    progress: bool = True,
    seed: int = 0,
) -> StanceResult:
    """Score every stance item of ``dataset`` (default: its eval split) and summarize per topic."""
    selected = dataset.select(topics=topics, split=split, max_items=max_items)
    if not selected.items:
        raise ValueError(f"No stance items to score in {dataset.source} (split={split}, topics={topics}).")
    scores = score_items(
        model, selected.items, batch_size=batch_size, max_answer_tokens=max_answer_tokens, progress=progress
    )
    return StanceResult(tuple(scores), summarize(scores, seed=seed))
