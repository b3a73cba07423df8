"""Predicting spill-over from data before training (projection screening, after the persona-vector work).

Only the BASE model is run. At a few layers, the residual stream is averaged over the tokens of each
answer, and the right-leaning answer's mean minus the left-leaning one's is averaged over items:

- on the target topic's TRAINING answers: the direction a fine-tune on that data pushes along;
- on each topic's EVAL answers: the direction that separates the two sides of that topic.

The cosine between the push and a topic's direction says how much of the push lands on that topic's
stance axis. Divided by the same cosine for the target topic's own eval answers, it predicts each
topic's shift as a fraction of the target's shift (``predicted_ctg``); their mean over the other
topics predicts the CTG ratio. The screen is symmetric in the leaning: a left-leaning fine-tune pushes
along minus the same direction.

A lexical check goes with it: the words that mark one side of the target topic's training answers
(smoothed log-odds of appearing in right vs left answers) — do they mark the same side on the other
topics? ``lexical`` is their mean log-odds on a topic, signed so that positive = same side.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from jaxtyping import Float
from torch import Tensor

from polineurons.batching import pad_id_of, sequence_batches
from polineurons.data.items import StanceDataset, StanceItem
from polineurons.hooks import record_residual
from polineurons.neurons import model_shape
from polineurons.stance import stance_pairs


@dataclass(frozen=True)
class ScreenConfig:
    """What the screen reads."""

    layers: tuple[int, ...] | None = None
    """Residual stream after these layers (None: four evenly spaced, 6/12/18/24 of 30)."""
    max_train_items: int | None = 64
    """Training items of the target topic (None: all)."""
    max_eval_items: int | None = 24
    """Eval items per topic (None = all)."""
    max_answer_tokens: int | None = 48
    """Answer tokens averaged (None = all)."""
    markers: int = 40
    """Marker words per side for the lexical check."""
    batch_size: int = 8
    """Sequences per forward."""

    def __post_init__(self) -> None:
        for name in ("max_train_items", "max_eval_items", "max_answer_tokens"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}.")
        if self.markers < 1 or self.batch_size < 1:
            raise ValueError("markers and batch_size must be >= 1.")


def default_layers(n_layers: int) -> tuple[int, ...]:
    return tuple(sorted({min(n_layers - 1, round(n_layers * k / 5)) for k in range(1, 5)}))


def answer_direction(
    model,
    items: Sequence[StanceItem],
    layers: Sequence[int],
    *,
    max_answer_tokens: int | None = None,
    batch_size: int = 8,
) -> Float[Tensor, "layers d_model"]:
    """Mean over items of (mean residual stream over the right answer's tokens − the left answer's),
    after each of ``layers``."""
    pairs = stance_pairs(model.tokenizer, items, max_answer_tokens=max_answer_tokens)  # right, left per item
    batches, _ = sequence_batches(pairs, batch_size, pad_id_of(model), model.cfg.device)
    _, d_model = len(layers), int(model.cfg.d_model)
    means = torch.zeros(len(pairs), len(layers), d_model, dtype=torch.float64)
    for batch in batches:
        answer = torch.zeros_like(batch.mask, dtype=torch.bool)
        answer[:, 1:] = batch.targets  # position t predicts token t+1: the answer's own tokens
        weight = (answer.double() / answer.sum(dim=1, keepdim=True)).unsqueeze(-1)
        with torch.no_grad(), record_residual(model, layers) as resid:
            model(batch.tokens, attention_mask=batch.mask)
        for k, layer in enumerate(layers):
            means[batch.indices, k] = (resid[layer].double() * weight).sum(dim=1).cpu()
    return (means[0::2] - means[1::2]).mean(dim=0)


def _cosine(a: Tensor, b: Tensor) -> Float[Tensor, " layers"]:
    return torch.nn.functional.cosine_similarity(a, b, dim=-1)


def _log_odds(items: Sequence[StanceItem]) -> dict[str, float]:
    """Smoothed log-odds of each word appearing in a right answer rather than in a left one."""
    counts = {
        side: Counter(w for item in items for w in set(re.findall(r"[a-z']+", item.answer(side).lower())))
        for side in ("left", "right")
    }
    n = len(items)

    def logit(count: int) -> float:
        p = (count + 0.5) / (n + 1)
        return math.log(p / (1 - p))

    return {w: logit(counts["right"][w]) - logit(counts["left"][w]) for w in counts["left"] | counts["right"]}


def lexical_transfer(train: Sequence[StanceItem], other: Sequence[StanceItem], markers: int = 40) -> float:
    """Mean log-odds on ``other`` of the words that most mark either side of ``train`` (signed: >0
    means they mark the same side there too). Words must appear in at least 3 training answers."""
    frequent = Counter(
        w
        for item in train
        for side in ("left", "right")
        for w in set(re.findall(r"[a-z']+", item.answer(side).lower()))
    )
    trained = {w: v for w, v in _log_odds(train).items() if frequent[w] >= 3}
    ranked = sorted(trained, key=lambda w: (trained[w], w))  # ties by word: set order varies per process
    chosen = ranked[:markers] + ranked[-markers:]
    there = _log_odds(other)
    return (
        float(np.mean([math.copysign(1.0, trained[w]) * there.get(w, 0.0) for w in chosen])) if chosen else float("nan")
    )


@dataclass(frozen=True)
class TopicScreen:
    cosine: float  # mean over layers of cos(training push, this topic's eval direction)
    cosine_by_layer: list[float]
    predicted_ctg: float  # predicted shift as a fraction of the target's shift
    lexical: float


@dataclass(frozen=True)
class ScreenResult:
    target: str
    layers: list[int]
    topics: dict[str, TopicScreen]
    config: dict = field(default_factory=dict)

    def _others_mean(self, name: str) -> float:
        return float(np.mean([getattr(row, name) for t, row in self.topics.items() if t != self.target]))

    @property
    def transfer_cosine(self) -> float:
        """Mean cosine of the training push with the other topics' stance directions."""
        return self._others_mean("cosine")

    @property
    def predicted_ctg_ratio(self) -> float:
        """Mean predicted shift of the other topics, as a fraction of the target's shift."""
        return self._others_mean("predicted_ctg")

    @property
    def lexical_transfer(self) -> float:
        """Mean lexical marker transfer onto the other topics."""
        return self._others_mean("lexical")

    def to_dict(self) -> dict:
        return {
            "target": self.target,
            "layers": self.layers,
            "transfer_cosine": self.transfer_cosine,
            "predicted_ctg_ratio": self.predicted_ctg_ratio,
            "lexical_transfer": self.lexical_transfer,
            "topics": {t: vars(row) for t, row in self.topics.items()},
            "config": self.config,
        }

    def table(self) -> str:
        lines = [f"{'topic':<24}{'cosine':>8}{'predicted_ctg':>15}{'lexical':>9}   (layers {self.layers})"]
        for topic, row in self.topics.items():
            mark = "  <- target (training data vs its own eval)" if topic == self.target else ""
            lines.append(f"{topic:<24}{row.cosine:>+8.3f}{row.predicted_ctg:>+15.2f}{row.lexical:>+9.2f}{mark}")
        lines.append(
            f"other topics: cosine {self.transfer_cosine:+.3f}   predicted CTG ratio {self.predicted_ctg_ratio:+.2f}   "
            f"lexical transfer {self.lexical_transfer:+.2f}"
        )
        return "\n".join(lines)


def _layers(model, config: ScreenConfig) -> list[int]:
    return list(config.layers) if config.layers is not None else list(default_layers(model_shape(model)[0]))


def _direction(model, items: Sequence[StanceItem], layers: list[int], config: ScreenConfig) -> Tensor:
    return answer_direction(
        model, items, layers, max_answer_tokens=config.max_answer_tokens, batch_size=config.batch_size
    )


@dataclass(frozen=True)
class StanceAxes:
    """One eval set's stance axis per topic (right − left direction of its eval answers) and the items
    behind it: what every screen against that eval set shares, so it can be computed once."""

    source: str
    layers: list[int]
    directions: dict[str, Float[Tensor, "layers d_model"]]
    items: dict[str, list[StanceItem]]


def stance_axes(model, eval_data: StanceDataset, config: ScreenConfig = ScreenConfig()) -> StanceAxes:
    """Every topic's stance axis on ``eval_data``'s eval split, from the base model."""
    layers = _layers(model, config)
    directions, items = {}, {}
    for topic in eval_data.topics:
        items[topic] = eval_data.select(topics=[topic], split="eval", max_items=config.max_eval_items).items
        directions[topic] = _direction(model, items[topic], layers, config)
    return StanceAxes(eval_data.source, layers, directions, items)


def screen(
    model,
    train_data: StanceDataset,
    target: str,
    config: ScreenConfig = ScreenConfig(),
    *,
    eval_data: StanceDataset | None = None,
    axes: StanceAxes | None = None,
) -> ScreenResult:
    """Screen ``train_data``'s target-topic training answers against every topic's eval answers of
    ``eval_data`` (default: the same data set). ``axes`` (from ``stance_axes`` with the same model and
    config) skips recomputing the eval side when screening several targets or training sets.

    Example::

        print(screen(model, load_data(), "immigration").table())  # predicted spill-over per topic
    """
    if axes is not None and eval_data is not None and axes.source != eval_data.source:
        raise ValueError(f"axes were computed on {axes.source}, not on eval_data {eval_data.source}.")
    layers = _layers(model, config)
    if axes is not None and axes.layers != layers:
        raise ValueError(f"axes were computed at layers {axes.layers}, the config asks for {layers}.")
    train = train_data.select(topics=[target], split="train", max_items=config.max_train_items).items
    if not train:
        raise ValueError(f"No training items for topic '{target}' in {train_data.source}.")
    axes = axes or stance_axes(model, eval_data or train_data, config)
    if target not in axes.directions:
        raise ValueError(f"Target topic '{target}' has no eval items in {axes.source}.")
    push = _direction(model, train, layers, config)
    cosines = {topic: _cosine(push, d) for topic, d in axes.directions.items()}
    own = float(cosines[target].mean())
    topics = {
        topic: TopicScreen(
            float(c.mean()),
            [round(float(v), 4) for v in c],
            float(c.mean()) / own,
            lexical_transfer(train, axes.items[topic], config.markers),
        )
        for topic, c in cosines.items()
    }
    recorded = {**vars(config), "layers": layers, "train_data": train_data.source, "eval_data": axes.source}
    return ScreenResult(target, layers, topics, recorded)
