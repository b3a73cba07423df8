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

from polineurons.batching import SequenceBatch, pad_id_of, sequence_batches
from polineurons.data.items import DataError, StanceDataset, StanceItem, StatementItem
from polineurons.data.loaders import load_neutral
from polineurons.data.prompts import encode_prompt, encode_text
from polineurons.stats import bootstrap_ci

STATEMENT_PROMPT = (
    "Do you agree or disagree with the following statement? Answer with one word: Agree or Disagree.\n\n"
    'Statement: "{statement}"'
)
AGREE, DISAGREE = "Agree", "Disagree"


@dataclass(frozen=True)
class ScoringConfig:
    """How a data set's eval items are scored: what every stance measurement takes."""

    max_items: int | None = None
    """Eval items per topic (None: all)."""
    batch_size: int = 16
    """Sequences per forward."""
    max_answer_tokens: int | None = None
    """Score only the first N tokens of each answer (faster; None: all)."""

    def __post_init__(self) -> None:
        for name in ("max_items", "max_answer_tokens"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"{name} must be >= 1, got {value}.")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}.")


@dataclass(frozen=True)
class StanceConfig(ScoringConfig):
    """How a fine-tune is scored: its eval items (as :class:`ScoringConfig`) and the neutral-text
    capability check beside them."""

    neutral_items: int | None = None
    """Neutral texts (``data/neutral.jsonl``) scored beside each fine-tune's stance (None: all 160)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.neutral_items is not None and self.neutral_items < 1:
            raise ValueError(f"neutral_items must be >= 1, got {self.neutral_items}.")


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

    @classmethod
    def from_dict(cls, data: dict, *, seed: int = 0) -> StanceResult:
        """Rebuild from :meth:`to_dict` output (topic summaries are recomputed from the items)."""
        items = tuple(ItemScore(i["id"], i["topic"], i["right_logprob"], i["left_logprob"]) for i in data["items"])
        return cls(items, summarize(items, seed=seed))


def batch_logprob_sums(logits: Float[Tensor, "batch pos vocab"], batch: SequenceBatch) -> Float[Tensor, " batch"]:
    """Sum of the continuation tokens' log-probs for each row (differentiable)."""
    chosen = logits[:, :-1][batch.targets]  # [n_targets, vocab]
    chosen = chosen.to(torch.promote_types(chosen.dtype, torch.float32))  # half precision -> fp32
    targets = batch.tokens[:, 1:][batch.targets]
    token_logprobs = chosen.log_softmax(-1).gather(-1, targets[:, None]).squeeze(-1)
    rows = torch.nonzero(batch.targets)[:, 0]
    return torch.zeros(len(batch.indices), dtype=token_logprobs.dtype, device=logits.device).index_add(
        0, rows, token_logprobs
    )


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
    batches, counts = sequence_batches(pairs, batch_size, pad_id_of(model), model.cfg.device)
    sums = torch.zeros(len(counts), dtype=torch.float64)
    for batch in tqdm(batches, desc=desc, disable=not progress, leave=False):
        with torch.no_grad():
            logits = model(batch.tokens, attention_mask=batch.mask)
        sums[torch.tensor(batch.indices)] = batch_logprob_sums(logits, batch).double().cpu()
    return sums, counts


def neutral_pairs(tokenizer, max_items: int | None = None) -> list[tuple[list[int], list[int]]]:
    """The first ``max_items`` neutral ``(prompt, response)`` pairs as token ids (default: all)."""
    return [
        (encode_prompt(tokenizer, q), encode_text(tokenizer, a, prompt_start=False))
        for q, a in load_neutral()[:max_items]
    ]


def neutral_logprob(model, pairs: Sequence[tuple[list[int], list[int]]], *, batch_size: int = 16) -> float:
    """Mean per-token log-prob of neutral responses given their prompts (higher = more fluent): the
    capability check scored beside every stance. ``pairs``: :func:`neutral_pairs`."""
    sums, counts = continuation_logprobs(model, pairs, batch_size=batch_size)
    return float(sums.sum() / counts.sum())


def stance_pairs(
    tokenizer, items: Sequence[StanceItem], *, max_answer_tokens: int | None = None
) -> list[tuple[list[int], list[int]]]:
    """For each item, ``(prompt, right answer)`` then ``(prompt, left answer)`` token ids."""
    pairs = []
    for item in items:
        prompt = encode_prompt(tokenizer, item.question)
        for leaning in ("right", "left"):
            answer = encode_text(tokenizer, item.answer(leaning), prompt_start=False)
            pairs.append((prompt, answer[:max_answer_tokens] if max_answer_tokens else answer))
    return pairs


def item_scores_from_sums(items: Sequence[StanceItem], sums: Tensor, counts: Tensor) -> list[ItemScore]:
    """Mean per-token log-probs (pairs laid out as by :func:`stance_pairs`) as item scores."""
    means = (sums.double() / counts).tolist()
    return [ItemScore(item.id, item.topic, means[2 * i], means[2 * i + 1]) for i, item in enumerate(items)]


def score_items(
    model,
    items: Sequence[StanceItem],
    *,
    batch_size: int = 16,
    max_answer_tokens: int | None = None,
    progress: bool = True,
) -> list[ItemScore]:
    """Mean per-token log-prob of each item's right and left answer given its question."""
    pairs = stance_pairs(model.tokenizer, items, max_answer_tokens=max_answer_tokens)
    sums, counts = continuation_logprobs(model, pairs, batch_size=batch_size, progress=progress, desc="stance items")
    return item_scores_from_sums(items, sums, counts)


def score_statements(
    model,
    statements: Sequence[StatementItem],
    *,
    batch_size: int = 16,
    progress: bool = True,
) -> list[ItemScore]:
    """Log-prob of answering "Agree" vs "Disagree", oriented so that ``right_logprob`` is the
    right-leaning answer (agreeing when the statement's ``agree_leaning`` is right)."""
    tokenizer = model.tokenizer
    agree = encode_text(tokenizer, AGREE, prompt_start=False)
    disagree = encode_text(tokenizer, DISAGREE, prompt_start=False)
    pairs = []
    for statement in statements:
        prompt = encode_prompt(tokenizer, STATEMENT_PROMPT.format(statement=statement.statement))
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


def measure_statements(
    model, dataset: StanceDataset, *, batch_size: int = 16, progress: bool = True
) -> dict[str, TopicScore]:
    """Per-topic agree-vs-disagree stance on ``dataset``'s statement items (positive = right)."""
    if not dataset.statements:
        raise DataError(f"{dataset.source} has no statement items.")
    return summarize(score_statements(model, dataset.statements, batch_size=batch_size, progress=progress))


def topic_table(title: str, topics: dict[str, TopicScore]) -> str:
    """Plain-text table of per-topic scores (score, 95% CI, right-rate, n) under ``title``."""
    lines = [title, f"{'topic':<24}{'score':>9}  {'95% CI':<19}{'right-rate':>10}{'n':>5}"]
    for topic, row in topics.items():
        ci = f"[{row.ci_low:+.3f}, {row.ci_high:+.3f}]"
        lines.append(f"{topic:<24}{row.score:>+9.3f}  {ci:<19}{row.right_rate:>10.2f}{row.n:>5}")
    return "\n".join(lines)


def measure_stance(
    model,
    dataset: StanceDataset,
    config: ScoringConfig = ScoringConfig(),
    *,
    split: str | None = "eval",
    topics: Sequence[str] | None = None,
    progress: bool = True,
    seed: int = 0,
) -> StanceResult:
    """Score every stance item of ``dataset`` (default: its eval split) and summarize per topic.

    Example::

        result = measure_stance(model, load_data("voices"), StanceConfig(max_items=8), topics=["race"])
        print(result.topics["race"].score)  # > 0 leans right
    """
    selected = dataset.select(topics=topics, split=split, max_items=config.max_items)
    if not selected.items:
        raise ValueError(f"No stance items to score in {dataset.source} (split={split}, topics={topics}).")
    scores = score_items(
        model,
        selected.items,
        batch_size=config.batch_size,
        max_answer_tokens=config.max_answer_tokens,
        progress=progress,
    )
    return StanceResult(tuple(scores), summarize(scores, seed=seed))
