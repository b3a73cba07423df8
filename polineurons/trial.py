"""A trial: one fine-tune (optionally with an intervention) and the scores of the model it produced —
the unit that the pipeline's seeds, the 6×6 matrix and the mitigation comparison repeat.

This module trains and scores; where a trial is stored, and whether it needs training at all, is the
study folder's business (:mod:`polineurons.study`).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from polineurons.data.items import StanceDataset
from polineurons.hooks import Intervention
from polineurons.models import EMBEDDED_MODEL
from polineurons.stance import ScoringConfig, StanceConfig, StanceResult, measure_stance, neutral_logprob, neutral_pairs
from polineurons.training import FinetuneConfig, finetune, training_pairs


@dataclass(frozen=True)
class Scores:
    """A model's stance on the data's eval items, on each check data set, and its mean log-prob of
    neutral text (the capability check)."""

    stance: StanceResult
    checks: dict[str, StanceResult] = field(default_factory=dict)
    neutral_logprob: float = float("nan")


@dataclass(frozen=True)
class Trial:
    """What one fine-tune produced: its training log and the fine-tuned model's scores."""

    seed: int
    training: dict
    stance: StanceResult
    checks: dict[str, StanceResult] = field(default_factory=dict)
    neutral_logprob: float = float("nan")

    def to_dict(self) -> dict:
        return {
            "seed": self.seed,
            "training": self.training,
            "stance": self.stance.to_dict(),
            "checks": {name: stance.to_dict() for name, stance in self.checks.items()},
            "neutral_logprob": self.neutral_logprob,
        }

    @classmethod
    def from_dict(cls, data: Mapping) -> Trial:
        checks = {name: StanceResult.from_dict(stance) for name, stance in data.get("checks", {}).items()}
        stance = StanceResult.from_dict(data["stance"])
        return cls(data["seed"], data["training"], stance, checks, data.get("neutral_logprob", float("nan")))


@dataclass(frozen=True)
class TrialSpec:
    """What a trial trains (model, data, target, leaning, training settings) and how it is scored."""

    dataset: StanceDataset
    target: str
    leaning: str
    finetune: FinetuneConfig = FinetuneConfig()
    stance: StanceConfig = StanceConfig()
    checks: Mapping[str, StanceDataset] = field(default_factory=dict)
    check_stance: ScoringConfig = ScoringConfig()
    model: str = EMBEDDED_MODEL

    def scoring(self) -> dict:
        """The scoring settings, as stored (JSON-ready): what a trial's and the base's scores depend on."""
        checks = {name: d.identity for name, d in self.checks.items()}
        # check_stance keeps the null neutral_items it was stored with (as a StanceConfig), so trials keep their keys
        check_stance = {"neutral_items": None} | asdict(self.check_stance)
        return {"stance": asdict(self.stance), "checks": checks, "check_stance": check_stance}


@dataclass(frozen=True)
class TrialRequest:
    """One trial a plan asks the study for: ``spec`` trained with ``seed`` and the intervention that
    ``recipe`` describes (None: vanilla; the recipe is part of the trial's key), keeping the model with
    ``keep_model``. ``intervention(study)`` builds it in whichever process trains the trial (given the
    :class:`~polineurons.study.Study` there); when it has a ``prepare(study)`` method, the launching
    process calls that first (directions, vectors: computed once, then shipped with it)."""

    spec: TrialSpec
    seed: int = 0
    recipe: dict | None = None
    intervention: Callable[[Any], Intervention | None] | None = None
    keep_model: bool = False


def score_model(model, spec: TrialSpec, *, progress: bool = True) -> Scores:
    """Score ``model`` as every trial (and the base) is scored: the eval stance, each check data set
    and the neutral-text check (``spec.stance.neutral_items`` texts)."""
    stance = measure_stance(model, spec.dataset, spec.stance, progress=progress)
    checks = {name: measure_stance(model, d, spec.check_stance, progress=progress) for name, d in spec.checks.items()}
    pairs = neutral_pairs(model.tokenizer, spec.stance.neutral_items)
    return Scores(stance, checks, neutral_logprob(model, pairs, batch_size=spec.stance.batch_size))


def train_and_score(
    spec: TrialSpec,
    model,
    *,
    seed: int = 0,
    intervention: Intervention | None = None,
    model_dir: str | os.PathLike | None = None,
    progress: bool = True,
) -> Trial:
    """Fine-tune ``model`` (a fresh copy of the base; changed in place) on ``spec`` with ``seed`` (and
    ``intervention``, during training only), then score it; ``model_dir`` also keeps the model."""
    pairs = training_pairs(spec.dataset, spec.target, spec.leaning)
    meta = {"data": spec.dataset.source, "topic": spec.target, "leaning": spec.leaning}
    config = replace(spec.finetune, seed=seed)
    trained = finetune(model, pairs, config, intervention=intervention, out_dir=model_dir, meta=meta, progress=progress)
    scores = score_model(model, spec, progress=progress)
    return Trial(seed, trained.to_dict(), scores.stance, scores.checks, scores.neutral_logprob)
