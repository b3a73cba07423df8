"""The cross-topic generalization matrix: fine-tune toward each leaning on each topic, score every topic.

One trial per (target, leaning), with the run config's model, data, fine-tuning and scoring
settings (the first training seed). The folder is resumable and grows by cells: a finished cell is
never retrained, a later call with other ``--targets``/``--leanings`` (same settings) adds its cells,
and ``matrix.json`` — every cell the folder holds — is rewritten after every cell::

    config.json                    the RunConfig and MatrixConfig used
    base/stance.json               the base model's stance (check-{name}.json: on each check data set)
    trials/{target}-{leaning}.json one trial per cell
    matrix.json                    per cell: shifts per topic with CIs; target shift, CTG, CTG ratio
    report.html                    heatmaps and the table, one offline page
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from polineurons.config import RunConfig, RunError
from polineurons.experiment import load_inputs
from polineurons.generalization import compare, leaning_split, seed_headlines
from polineurons.io import read_json, write_json
from polineurons.models import load_model
from polineurons.stance import StanceResult, measure_stance
from polineurons.trial import Trial, TrialSpec, run_trial
from polineurons.versions import library_versions

LEANINGS: tuple[Literal["left", "right"], ...] = ("left", "right")


@dataclass(frozen=True)
class MatrixConfig:
    """Which cells the matrix has."""

    targets: tuple[str, ...] = ()
    """Fine-tuning topics (default: every topic of the data)."""
    leanings: tuple[Literal["left", "right"], ...] = LEANINGS
    """Leanings fine-tuned toward."""

    def __post_init__(self) -> None:
        if not self.leanings or any(leaning not in ("left", "right") for leaning in self.leanings):
            raise ValueError(f"leanings must be left and/or right, got {self.leanings}.")


def _settings(config: RunConfig) -> dict:
    """What a matrix folder's numbers depend on (a rerun with other settings is refused). Which cells
    were asked for is not among them: each cell's numbers are the same whichever others exist."""
    keys = ("model", "data", "check_data", "stance", "check", "finetune")
    settings = {"run": {k: v for k, v in config.to_dict().items() if k in keys}}
    return json.loads(json.dumps(settings))  # as stored: tuples become lists


def _changes(stored: dict, current: dict, prefix: str = "") -> list[tuple[str, object, object]]:
    """The dotted keys whose values differ between two nested settings dicts, with both values."""
    changes = []
    for key in sorted(set(stored) | set(current)):
        old, new = stored.get(key), current.get(key)
        if isinstance(old, dict) and isinstance(new, dict):
            changes += _changes(old, new, f"{prefix}{key}.")
        elif old != new:
            changes.append((f"{prefix}{key}", old, new))
    return changes


def run_matrix(
    config: RunConfig,
    matrix: MatrixConfig,
    out_dir: str | Path,
    *,
    device: str | None = None,
    progress: bool = True,
    echo: Callable[[str], None] = print,
) -> dict:
    """The requested cells into ``out_dir`` (resumable); returns ``matrix.json``: every cell the folder holds."""
    out = Path(out_dir)
    dataset, checks = load_inputs(config)
    targets = list(matrix.targets) or dataset.topics
    unknown = [t for t in targets if t not in dataset.topics]
    if unknown:
        raise RunError(f"Unknown target topic(s) {unknown}; topics in {dataset.source}: {', '.join(dataset.topics)}.")
    settings = _settings(config)
    stored = read_json(out / "config.json")["settings"] if (out / "config.json").is_file() else settings
    if stored != settings:
        changed = ", ".join(
            f"{key} (stored {old!r}, now {new!r})" for key, old, new in _changes(stored["run"], settings["run"])
        )
        raise RunError(f"{out} holds a matrix computed with other settings: {changed}; use a new --out folder.")
    write_json(out / "config.json", {"settings": settings, "versions": library_versions()})

    def load_base():
        return load_model(config.model, device=device)

    to_score = {"stance": (dataset, config.stance), **{f"check-{n}": (d, config.check) for n, d in checks.items()}}
    base_model = None
    for name, (data, stance_config) in to_score.items():  # the base model's stance, once
        if not (out / "base" / f"{name}.json").is_file():
            base_model = base_model or load_base()
            write_json(
                out / "base" / f"{name}.json",
                measure_stance(base_model, data, stance_config, progress=progress).to_dict(),
            )
    del base_model
    base = StanceResult.from_dict(read_json(out / "base" / "stance.json"))
    check_bases = {name: StanceResult.from_dict(read_json(out / "base" / f"check-{name}.json")) for name in checks}
    header = {"data": dataset.source, "check_data": list(checks), "topics": list(base.topics)}

    def cell(target: str, leaning: str, trial: Trial) -> dict:
        return {
            "target": target,
            "leaning": leaning,
            **compare(base, trial.stance, target, leaning=leaning).to_dict(),
            "headline": seed_headlines(base, [trial.stance], target, leaning).pooled.to_dict(),
            "checks": {
                name: seed_headlines(check_bases[name], [trial.checks[name]], target, leaning).pooled.to_dict()
                for name in checks
            },
        }

    entries: dict[tuple[str, str], dict] = {}  # (target, leaning) -> its matrix.json cell, computed once
    stances: dict[tuple[str, str], StanceResult] = {}
    splits: dict[str, dict] = {}  # target fine-tuned both ways -> its leaning split, computed once

    def add(target: str, leaning: str, trial: Trial) -> None:
        entries[target, leaning], stances[target, leaning] = cell(target, leaning, trial), trial.stance
        if all((target, lean) in stances for lean in LEANINGS):
            right, left = stances[target, "right"], stances[target, "left"]
            splits[target] = leaning_split(base, right, left, target).to_dict()

    def write_matrix() -> None:  # every cell in the folder, this call's or an earlier one's
        keys = [(t, lean) for t in dataset.topics for lean in LEANINGS if (t, lean) in entries]
        result = {
            **header,
            "targets": [t for t in dataset.topics if any(t == k[0] for k in keys)],
            "leanings": [lean for lean in LEANINGS if any(lean == k[1] for k in keys)],
            "cells": [entries[k] for k in keys],
            # targets fine-tuned both ways: the spill-over that flips with the leaning vs drift
            "leaning_split": {t: splits[t] for t in dataset.topics if t in splits},
        }
        write_json(out / "matrix.json", result)

    for t in dataset.topics:  # cells an earlier call left in the folder
        for lean in LEANINGS:
            if (out / "trials" / f"{t}-{lean}.json").is_file():
                add(t, lean, Trial.from_dict(read_json(out / "trials" / f"{t}-{lean}.json")))
    for target in targets:
        for leaning in matrix.leanings:
            began = time.perf_counter()
            spec = TrialSpec(dataset, target, leaning, config.finetune, config.stance, checks, config.check)
            path = out / "trials" / f"{target}-{leaning}.json"
            trial, model = run_trial(spec, load_base, path, seed=config.finetune.seed, progress=progress)
            echo(
                f"[{target}, {leaning}] {'trained and scored' if model else 'stored'} "
                f"in {time.perf_counter() - began:.0f} s"
            )
            del model
            if (target, leaning) not in entries:
                add(target, leaning, trial)
            write_matrix()
    return read_json(out / "matrix.json")


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
