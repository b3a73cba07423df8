"""The cross-topic generalization matrix: fine-tune toward each leaning on each topic, score every topic.

One study trial per (target, leaning), with the run config's model, data, fine-tuning and scoring
settings (the first training seed), in a study folder (:mod:`polineurons.study`): a finished cell is
never retrained — in a run's folder, the run's own fine-tune is its cell — a later call with other
``--targets``/``--leanings`` (same settings) adds its cells, other settings are refused naming them, and
``matrix.json`` covers every cell the folder holds::

    matrix.json    per cell: shifts per topic with CIs; target shift, CTG, CTG ratio (+ on check data);
                   per target fine-tuned both ways, the leaning split (ideology vs drift)
    matrix.html    heatmaps and the table, one offline page
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Literal

from polineurons.config import RunConfig, load_inputs
from polineurons.errors import RunError
from polineurons.generalization import compare, leaning_split, seed_headlines
from polineurons.io import write_json
from polineurons.stance import StanceResult
from polineurons.study import Study
from polineurons.trial import Trial, TrialRequest, TrialSpec
from polineurons.versions import library_versions

LEANINGS: tuple[Literal["left", "right"], ...] = ("left", "right")


@dataclass(frozen=True)
class MatrixConfig:
    """Which cells the matrix has."""

    targets: tuple[str, ...] = ()
    """Fine-tuning topics (empty: every topic of the data)."""
    leanings: tuple[Literal["left", "right"], ...] = LEANINGS
    """Leanings fine-tuned toward."""

    def __post_init__(self) -> None:
        if not self.leanings or any(leaning not in ("left", "right") for leaning in self.leanings):
            raise ValueError(f"leanings must be left and/or right, got {self.leanings}.")


def _guarded(study: Study, spec: TrialSpec) -> dict:
    """What every cell of a folder shares (cells differ in target and leaning only)."""
    settings = study.trial_settings(spec, spec.finetune.seed)
    return {k: v for k, v in settings.items() if k not in ("target", "leaning", "intervention")}


def run_matrix(study: Study, config: RunConfig, matrix: MatrixConfig) -> dict:
    """The requested cells into ``study`` (resumable), then ``matrix.json`` over every cell the folder
    holds (returned).

    Example::

        with Study.open("runs/matrix") as study:
            matrix = run_matrix(study, RunConfig(), MatrixConfig(targets=("race", "science")))
    """
    dataset, checks = load_inputs(config)
    targets = list(matrix.targets) or dataset.topics
    unknown = [t for t in targets if t not in dataset.topics]
    if unknown:
        raise RunError(f"Unknown target topic(s) {unknown}; topics in {dataset.source}: {', '.join(dataset.topics)}.")

    cells = TrialSpec(dataset, targets[0], "right", config.finetune, config.stance, checks, config.check, config.model)

    def spec(target: str, leaning: str) -> TrialSpec:
        return replace(cells, target=target, leaning=leaning)

    study.guard("matrix", _guarded(study, spec(targets[0], "right")))
    seed = config.finetune.seed
    study.run_trials([TrialRequest(spec(target, leaning), seed) for target in targets for leaning in matrix.leanings])
    base = study.base_scores(spec(targets[0], "right"))
    found = {
        (t, lean): trial
        for t in dataset.topics
        for lean in LEANINGS
        if (trial := study.stored_trial(spec(t, lean), seed=seed)) is not None
    }
    result = matrix_summary(base.stance, base.checks, found, dataset.topics)
    result.update({"data": dataset.source, "check_data": list(checks), "versions": library_versions()})
    write_json(study.root / "matrix.json", result)
    return result


def matrix_summary(
    base: StanceResult, check_bases: dict[str, StanceResult], cells: dict[tuple[str, str], Trial], topics: list[str]
) -> dict:
    """``matrix.json``'s numbers: per cell its shifts and headlines (on the data and each check data
    set), in topic then leaning order; per target fine-tuned both ways, its leaning split."""

    def cell(target: str, leaning: str, trial: Trial) -> dict:
        return {
            "target": target,
            "leaning": leaning,
            **compare(base, trial.stance, target, leaning=leaning).to_dict(),
            "headline": seed_headlines(base, [trial.stance], target, leaning).pooled.to_dict(),
            "checks": {
                name: seed_headlines(check_base, [trial.checks[name]], target, leaning).pooled.to_dict()
                for name, check_base in check_bases.items()
            },
        }

    keys = [(t, lean) for t in topics for lean in LEANINGS if (t, lean) in cells]
    return {
        "topics": list(base.topics),
        "targets": [t for t in topics if any(t == k[0] for k in keys)],
        "leanings": [lean for lean in LEANINGS if any(lean == k[1] for k in keys)],
        "cells": [cell(t, lean, cells[t, lean]) for t, lean in keys],
        # targets fine-tuned both ways: the spill-over that flips with the leaning vs drift
        "leaning_split": {
            t: leaning_split(base, cells[t, "right"].stance, cells[t, "left"].stance, t).to_dict()
            for t in topics
            if (t, "right") in cells and (t, "left") in cells
        },
    }


def _interval(estimate: dict) -> str:
    return f"{estimate['value']:+.3f} [{estimate['ci_low']:+.3f}, {estimate['ci_high']:+.3f}]"


def matrix_text(result: dict) -> str:
    """Plain-text table: one row per cell, target shift, CTG [CI] and CTG ratio (toward the leaning)."""
    checks = result["check_data"]
    header = f"{'target':<24}{'leaning':<8}{'target shift':>13}{'CTG [95% CI]':>26}{'ratio':>7}"
    lines = [header + "".join(f"{'CTG on ' + name:>22}" for name in checks)]
    for cell in result["cells"]:
        h = cell["headline"]
        ctg = _interval(h["ctg"])
        row = f"{cell['target']:<24}{cell['leaning']:<8}{h['target_shift']['value']:>+13.3f}{ctg:>26}"
        row += f"{h['ctg_ratio']['value']:>+7.2f}"
        lines.append(row + "".join(f"{cell['checks'][name]['ctg']['value']:>+22.3f}" for name in checks))
    if result.get("leaning_split"):
        lines += ["", f"{'target':<24}{'target ideology':>16}{'CTG ideology [95% CI]':>28}{'CTG drift [95% CI]':>28}"]
        for target, split in result["leaning_split"].items():
            ideology, drift = (_interval(split[key]) for key in ("ctg_ideology", "ctg_drift"))
            lines.append(f"{target:<24}{split['target_ideology']['value']:>+16.3f}{ideology:>28}{drift:>28}")
    return "\n".join(lines)
