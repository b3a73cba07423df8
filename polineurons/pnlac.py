"""PNLAC — Political Neuron Localization through Activation Contrasting.

Per topic, every MLP neuron gets a contrast score (:mod:`polineurons.contrasts`) on that topic's
TRAINING items; the top ``top_k``% per topic is the topic's top set. Neurons in the top set of every
voting topic (or of at least ``min_topics``) are *general* political neurons; the rest of each
topic's top set are its *topic-specific* neurons.

``contrast`` chooses what is contrasted:

- ``finetune``: RMS of (fine-tuned − base) — the paper's recipe. It ranks whatever the fine-tune
  changed, including the drift that does not depend on the leaning.
- ``leaning``: (right-tuned − left-tuned) on the same inputs, signed — only what flips with the
  leaning (needs a fine-tune of each leaning).
- ``answers``: the base model alone, right-leaning answers − left-leaning answers, signed — no
  fine-tune needed.
- ``attribution``: gradient × (fine-tuned − base) of the stance margin, signed — to first order
  what patching each neuron would move.

For signed contrasts a neuron counts for a topic by its |score|, and it is general only if its sign
agrees across the topics that vote for it. ``general_over="others"`` lets only the topics other than
the target vote (general = what carries the spill-over; the target's own top set stays specific).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Literal, get_args

import torch
from tqdm.auto import tqdm

from polineurons.contrasts import (
    Scores,
    activation_spread,
    answer_contrast,
    attribution_scores,
    finetune_contrast,
    leaning_contrast,
)
from polineurons.data.items import StanceDataset, StanceItem
from polineurons.data.prompts import encode_prompt, encode_text
from polineurons.errors import UserError
from polineurons.localization import (
    SIGNED,
    Localization,
    jaccard,
    pairwise_jaccard,
    split_general_specific,
    top_percent,
)

Contrast = Literal["finetune", "leaning", "answers", "attribution"]
Positions = Literal["question", "after_prefix", "answer", "all"]
Normalization = Literal["none", "layer_z", "base_std"]
Voters = Literal["all", "others"]
NEEDS_ANSWERS: tuple[str, ...] = ("answers", "attribution")
__all__ = [
    "Localization",
    "LocalizeConfig",
    "LocalizeError",
    "jaccard",
    "localize",
    "pairwise_jaccard",
    "split_general_specific",
    "top_percent",
]


class LocalizeError(UserError, ValueError):
    """PNLAC cannot run as asked (a model it needs is missing, an unknown target)."""


@dataclass(frozen=True)
class LocalizeConfig:
    """PNLAC settings: what is contrasted, on which tokens, and how the top sets are chosen.

    Contrasts: ``finetune`` (RMS of fine-tuned − base activations), ``leaning`` (right − left fine-tune),
    ``answers`` (the base model on right − left answers) or ``attribution`` (gradient × fine-tune change of
    the stance margin). Positions: ``question`` (the whole question prompt), ``after_prefix`` (the question
    prompt after the system prompt and chat header every topic shares), ``answer`` (question + answer run,
    answer tokens scored) or ``all`` (question + answer, every token). Normalizations: ``none`` (raw scores,
    which favour late layers), ``layer_z`` (z-score each layer) or ``base_std`` (divide each neuron by its
    own spread in the base model on the same tokens)."""

    contrast: Contrast = "answers"
    """finetune (RMS tuned − base), leaning (right − left tune), answers (base: right − left) or attribution."""
    positions: Positions = "answer"
    """Tokens scored: question, after_prefix (after the shared chat header), answer (its tokens) or all."""
    normalize: Normalization = "layer_z"
    """none (favours late layers), layer_z (z-score per layer) or base_std (per neuron, by its base spread)."""
    top_k: float = 10.0
    """Percent of all neurons kept per topic."""
    min_topics: int | None = 3
    """General: in the top set (same sign) of at least this many voting topics (None, or more than vote: all)."""
    general_over: Voters = "all"
    """Topics that vote for the general set: all, or others (every topic but the run's target)."""
    max_items: int | None = None
    """Train items per topic (None: all)."""
    max_answer_tokens: int | None = 48
    """Answer tokens run per answer (None = all)."""
    batch_size: int = 8
    """Sequences per forward."""

    def __post_init__(self) -> None:
        if not 0 < self.top_k <= 100:
            raise ValueError(f"top_k must be in (0, 100], got {self.top_k}.")
        for name, options in (
            ("contrast", Contrast),
            ("positions", Positions),
            ("normalize", Normalization),
            ("general_over", Voters),
        ):
            if getattr(self, name) not in get_args(options):
                raise ValueError(f"{name} must be one of {', '.join(get_args(options))}, got {getattr(self, name)!r}.")
        if self.contrast in NEEDS_ANSWERS and self.positions not in ("answer", "all"):
            raise ValueError(f"contrast={self.contrast} reads answers: use positions answer or all.")
        for name in ("min_topics", "max_items", "max_answer_tokens"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}.")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}.")

    @property
    def signed(self) -> bool:
        return self.contrast in SIGNED


@dataclass(frozen=True)
class TopicInputs:
    """What PNLAC runs for one topic: token sequences and, per sequence, the first scored position.
    With answers, sequences alternate right, left per item."""

    items: list[StanceItem]
    sequences: list[list[int]]
    starts: list[int]


def topic_inputs(
    tokenizer,
    dataset: StanceDataset,
    topic: str,
    *,
    positions: Positions = "answer",
    split: str = "train",
    max_items: int | None = None,
    max_answer_tokens: int | None = None,
) -> TopicInputs:
    """One topic's PNLAC inputs from its ``split`` items (train by default: never the eval items).
    ``after_prefix`` starts at 0 here; :func:`localize` sets it from every topic's prompts."""
    items = dataset.select(topics=[topic], split=split, max_items=max_items).items
    if not items:
        raise ValueError(f"No {split} items for topic '{topic}' in {dataset.source}.")
    sequences, starts = [], []
    for item in items:
        prompt = encode_prompt(tokenizer, item.question)
        if positions in ("question", "after_prefix"):
            sequences.append(prompt)
            starts.append(0)
            continue
        for side in ("right", "left"):
            answer = encode_text(tokenizer, item.answer(side), prompt_start=False)[:max_answer_tokens]
            sequences.append(prompt + answer)
            starts.append(len(prompt) if positions == "answer" else 0)
    return TopicInputs(list(items), sequences, starts)


def topic_sequences(tokenizer, dataset: StanceDataset, topic: str, *, max_items: int | None = None) -> list[list[int]]:
    """The question prompts of one topic's training items (PNLAC's ``positions="question"`` inputs)."""
    return topic_inputs(tokenizer, dataset, topic, positions="question", max_items=max_items).sequences


def normalize_scores(scores: Scores, method: Normalization = "none", spread: Scores | None = None) -> Scores:
    """``none`` keeps raw scores; ``layer_z`` z-scores each layer; ``base_std`` divides each neuron by
    its ``spread`` (a neuron that never varies scores 0)."""
    if method == "none":
        return scores
    if method == "base_std":
        if spread is None:
            raise ValueError("normalize='base_std' needs the base model's spread.")
        return torch.where(spread > 0, scores / spread.clamp_min(1e-12), torch.zeros_like(scores))
    mean = scores.mean(dim=1, keepdim=True)
    std = scores.std(dim=1, keepdim=True).clamp_min(1e-12)
    return (scores - mean) / std


def shared_prefix_length(sequences: Sequence[Sequence[int]]) -> int:
    """Number of leading tokens every sequence shares (the chat template's system prompt and turn
    markers): identical in every topic, so activation changes there are not topic-related."""
    if not sequences:
        return 0
    first = sequences[0]
    length = min(len(s) for s in sequences)
    for i in range(length):
        if any(s[i] != first[i] for s in sequences):
            return i
    return length


def topic_scores(
    config: LocalizeConfig,
    inputs: TopicInputs,
    base,
    finetuned=None,
    *,
    opposite=None,
    leaning: str = "right",
    progress: bool = False,
) -> Scores:
    """One topic's raw contrast scores (before normalisation) as ``config.contrast`` asks."""
    options = {"starts": inputs.starts, "batch_size": config.batch_size, "progress": progress}
    if config.contrast == "answers":
        return answer_contrast(base, inputs.sequences, **options)
    if finetuned is None:
        raise LocalizeError(f"contrast={config.contrast} needs the fine-tuned model.")
    if config.contrast == "finetune":
        return finetune_contrast(base, finetuned, inputs.sequences, **options)
    if config.contrast == "leaning":
        if opposite is None:
            raise LocalizeError("contrast=leaning needs the model fine-tuned to the opposite leaning (opposite=).")
        if leaning not in ("left", "right"):
            raise LocalizeError(f"leaning must be left or right, got {leaning!r}.")
        left, right = (opposite, finetuned) if leaning == "right" else (finetuned, opposite)
        return leaning_contrast(left, right, inputs.sequences, **options)
    return attribution_scores(
        base,
        finetuned,
        inputs.items,
        batch_size=config.batch_size,
        max_answer_tokens=config.max_answer_tokens,
        answer_only=config.positions == "answer",
        progress=progress,
    ).float()


def localize(
    base,
    finetuned=None,
    dataset: StanceDataset | None = None,
    config: LocalizeConfig = LocalizeConfig(),
    *,
    topics: Sequence[str] | None = None,
    target: str | None = None,
    opposite=None,
    leaning: str = "right",
    progress: bool = True,
) -> Localization:
    """PNLAC on every topic of ``dataset`` (train split) and the general / specific split.

    ``finetuned`` is the model fine-tuned to ``leaning`` (not needed by ``contrast="answers"``);
    ``opposite`` the one fine-tuned to the other leaning (``contrast="leaning"`` only); ``target``
    the fine-tune's topic (needed by ``general_over="others"``).

    Example::

        located = localize(base, dataset=load_data(), target="immigration")  # the default contrast: base only
        located.save("runs/neurons")
    """
    if dataset is None:
        raise LocalizeError("localize needs a StanceDataset.")
    chosen = list(topics) if topics is not None else dataset.topics
    if config.general_over == "others" and target not in chosen:
        raise LocalizeError(f"general_over='others' needs the target topic, one of {chosen} (got {target!r}).")
    model_name = getattr(base.cfg, "model_name", None)
    options = {"positions": config.positions, "max_items": config.max_items}
    per_topic = {
        t: topic_inputs(base.tokenizer, dataset, t, max_answer_tokens=config.max_answer_tokens, **options)
        for t in chosen
    }
    skip = 0
    if config.positions == "after_prefix":
        skip = shared_prefix_length([s for inputs in per_topic.values() for s in inputs.sequences])
        per_topic = {t: TopicInputs(i.items, i.sequences, [skip] * len(i.sequences)) for t, i in per_topic.items()}
    raw, scores, top = {}, {}, {}
    for topic in tqdm(chosen, desc="PNLAC topics", disable=not progress):
        inputs = per_topic[topic]
        raw[topic] = topic_scores(
            config, inputs, base, finetuned, opposite=opposite, leaning=leaning, progress=progress
        )
        spread = None
        if config.normalize == "base_std":
            spread = activation_spread(base, inputs.sequences, starts=inputs.starts, batch_size=config.batch_size)
        scores[topic] = normalize_scores(raw[topic], config.normalize, spread)
        strength = scores[topic].abs() if config.signed else scores[topic]
        provenance = {"topic": topic, "top_k": config.top_k}
        top[topic] = top_percent(strength, config.top_k, model_name=model_name, provenance=provenance)
    voters = [t for t in chosen if t != target] if config.general_over == "others" else chosen
    signs = {t: torch.sign(s) for t, s in scores.items()} if config.signed else None
    general, specific = split_general_specific(top, config.min_topics, signs=signs, voters=voters)
    recorded = {
        **asdict(config),
        "skipped_tokens": skip,
        "target": target,
        "leaning": leaning,
        "voters": voters,
        "data": dataset.source,
        "model": model_name,
    }
    return Localization(scores, top, general, specific, recorded)
