"""The cross-topic generalization matrix: fine-tune toward each leaning on each topic, score every topic.

One trial per (target, leaning), with the run config's model, data, fine-tuning and scoring
settings (the first training seed). The folder is resumable: a finished cell is never retrained, and
``matrix.json`` is rewritten after every cell::

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
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

from polineurons.config import RunConfig, RunError
from polineurons.experiment import load_inputs
from polineurons.generalization import compare, seed_headlines
from polineurons.io import read_json, write_json
from polineurons.models import load_model
from polineurons.stance import StanceResult, measure_stance
from polineurons.trial import TrialSpec, run_trial
from polineurons.versions import library_versions


@dataclass(frozen=True)
class MatrixConfig:
    """Which cells the matrix has."""

    targets: tuple[str, ...] = ()
    """Fine-tuning topics (default: every topic of the data)."""
    leanings: tuple[Literal["left", "right"], ...] = ("left", "right")
    """Leanings fine-tuned toward."""

    def __post_init__(self) -> None:
        if not self.leanings or any(leaning not in ("left", "right") for leaning in self.leanings):
            raise ValueError(f"leanings must be left and/or right, got {self.leanings}.")


def _settings(config: RunConfig, matrix: MatrixConfig) -> dict:
    """What a matrix folder's numbers depend on (a rerun with other settings is refused)."""
    keys = ("model", "data", "check_data", "stance", "check", "finetune")
    settings = {"run": {k: v for k, v in config.to_dict().items() if k in keys}, "matrix": asdict(matrix)}
    return json.loads(json.dumps(settings))  # as stored: tuples become lists


def run_matrix(
    config: RunConfig,
    matrix: MatrixConfig,
    out_dir: str | Path,
    *,
    device: str | None = None,
    progress: bool = True,
    echo: Callable[[str], None] = print,
) -> dict:
    """Every cell of the matrix into ``out_dir`` (resumable); returns ``matrix.json``'s content."""
    out = Path(out_dir)
    dataset, checks = load_inputs(config)
    targets = list(matrix.targets) or dataset.topics
    unknown = [t for t in targets if t not in dataset.topics]
    if unknown:
        raise RunError(f"Unknown target topic(s) {unknown}; topics in {dataset.source}: {', '.join(dataset.topics)}.")
    settings = _settings(config, matrix)
    if (out / "config.json").is_file() and read_json(out / "config.json")["settings"] != settings:
        raise RunError(f"{out} holds a matrix computed with other settings; use a new --out folder.")
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
    header = {"data": dataset.source, "check_data": list(checks), "topics": list(base.topics), "targets": targets}
    cells = []
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
            cell = {
                "target": target,
                "leaning": leaning,
                **compare(base, trial.stance, target, leaning=leaning).to_dict(),
            }
            cell["headline"] = seed_headlines(base, [trial.stance], target, leaning).pooled.to_dict()
            cell["checks"] = {
                name: seed_headlines(check_bases[name], [trial.checks[name]], target, leaning).pooled.to_dict()
                for name in checks
            }
            cells.append(cell)
            write_json(out / "matrix.json", {**header, "leanings": list(matrix.leanings), "cells": cells})
    return read_json(out / "matrix.json")


def matrix_text(result: dict) -> str:
    """Plain-text table: one row per cell, target shift, CTG [CI] and CTG ratio (toward the leaning)."""
    checks = result["check_data"]
    header = f"{'target':<24}{'leaning':<8}{'target shift':>13}{'CTG [95% CI]':>26}{'ratio':>7}"
    lines = [header + "".join(f"{'CTG on ' + name:>22}" for name in checks)]
    for cell in result["cells"]:
        h = cell["headline"]
        ctg = f"{h['ctg']['value']:+.3f} [{h['ctg']['ci_low']:+.3f}, {h['ctg']['ci_high']:+.3f}]"
        row = f"{cell['target']:<24}{cell['leaning']:<8}{h['target_shift']['value']:>+13.3f}{ctg:>26}"
        row += f"{h['ctg_ratio']['value']:>+7.2f}"
        lines.append(row + "".join(f"{cell['checks'][name]['ctg']['value']:>+22.3f}" for name in checks))
    return "\n".join(lines)
