"""A trial: one fine-tune (optionally with an intervention) and the stance scores of the model it
produced — the unit that the pipeline's seeds, the 6×6 matrix and the mitigation comparison repeat.

A finished trial is one JSON file, written at once; :func:`run_trial` returns the stored trial
instead of training again when its file exists, so every caller is resumable for free.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

from polineurons.data.items import StanceDataset
from polineurons.finetune import FinetuneConfig, finetune, training_pairs
from polineurons.hooks import Intervention
from polineurons.io import read_json, write_json
from polineurons.stance import StanceConfig, StanceResult, measure_stance


@dataclass(frozen=True)
class Trial:
    """What one fine-tune produced: its training log, its stance on the data's eval items and on
    each check data set, and anything a caller measured besides (``extra``)."""

    seed: int
    training: dict
    stance: StanceResult
    checks: dict[str, StanceResult] = field(default_factory=dict)
    extra: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        checks = {name: stance.to_dict() for name, stance in self.checks.items()}
        return {
            "seed": self.seed,
            "training": self.training,
            "stance": self.stance.to_dict(),
            "checks": checks,
            **self.extra,
        }

    @classmethod
    def from_dict(cls, data: Mapping) -> Trial:
        known = {"seed", "training", "stance", "checks"}
        checks = {name: StanceResult.from_dict(stance) for name, stance in data.get("checks", {}).items()}
        extra = {k: v for k, v in data.items() if k not in known}
        return cls(data["seed"], data["training"], StanceResult.from_dict(data["stance"]), checks, extra)


@dataclass(frozen=True)
class TrialSpec:
    """What a trial trains on and how it is scored."""

    dataset: StanceDataset
    target: str
    leaning: str
    finetune: FinetuneConfig = FinetuneConfig()
    stance: StanceConfig = StanceConfig()
    checks: Mapping[str, StanceDataset] = field(default_factory=dict)
    check_stance: StanceConfig = StanceConfig()


def run_trial(
    spec: TrialSpec,
    load_base: Callable[[], object],
    path: str | os.PathLike,
    *,
    seed: int = 0,
    intervention: Intervention | None = None,
    model_dir: str | os.PathLike | None = None,
    measure: Callable[[object], dict] | None = None,
    progress: bool = True,
) -> tuple[Trial, object | None]:
    """Train a fresh copy of the base on ``spec`` with ``seed`` (and ``intervention``, during training
    only), score it, and write the trial to ``path``; ``model_dir`` also keeps the model. ``measure``
    adds its own fields to the trial (e.g. perplexity). Returns the trial and the trained model, or
    the stored trial and ``None`` when ``path`` already exists."""
    path = Path(path)
    if path.is_file():
        return Trial.from_dict(read_json(path)), None
    model = load_base()
    pairs = training_pairs(spec.dataset, spec.target, spec.leaning)
    meta = {"data": spec.dataset.source, "topic": spec.target, "leaning": spec.leaning}
    config = replace(spec.finetune, seed=seed)
    trained = finetune(model, pairs, config, intervention=intervention, out_dir=model_dir, meta=meta, progress=progress)
    stance = measure_stance(model, spec.dataset, spec.stance, progress=progress)
    checks = {
        name: measure_stance(model, data, spec.check_stance, progress=progress) for name, data in spec.checks.items()
    }
    trial = Trial(seed, trained.to_dict(), stance, checks, measure(model) if measure else {})
    write_json(path, trial.to_dict(), indent=None)
    return trial, model
