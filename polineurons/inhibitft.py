"""InhibitFT: fine-tune while the general political neurons are inhibited, and compare with vanilla.

InhibitFT is the project's one fine-tuning loop (:func:`polineurons.finetune.finetune`) with a
neuron :class:`~polineurons.hooks.Intervention` during training only; the returned model has no
hooks. Modes:

- ``zero``: activations multiplied by 0 (the paper's method);
- ``scale``: multiplied by a factor in (0, 1);
- ``freeze``: activations untouched, the neurons' input/output weights held fixed.

Metrics against vanilla fine-tuning on the same data, seed and schedule: target shift kept
(inhibited target shift / vanilla target shift) and CTG reduction (1 − CTG_inhibited / CTG_vanilla),
each with a bootstrap CI that resamples the eval items (paired across the runs), plus the CTG ratio.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Literal

import numpy as np

from polineurons.data.items import StanceDataset
from polineurons.finetune import FinetuneConfig, finetune, training_pairs
from polineurons.generalization import compare
from polineurons.hooks import FreezeNeurons, Intervention, ScaleNeurons
from polineurons.io import read_json, write_json
from polineurons.neurons import NeuronSet
from polineurons.stance import StanceConfig, StanceResult, measure_stance
from polineurons.stats import Estimate, bootstrap, paired_shifts
from polineurons.versions import library_versions

InhibitMode = Literal["zero", "scale", "freeze"]


@dataclass(frozen=True)
class InhibitConfig:
    """Which InhibitFT runs to train next to vanilla."""

    percents: tuple[float, ...] = (5.0,)
    """Percent(s) of ALL neurons inhibited, taken from the top general neurons."""
    modes: tuple[InhibitMode, ...] = ("zero",)
    """zero, scale and/or freeze."""
    scale: float = 0.5
    """Factor of the scale mode, in (0, 1)."""
    random_control: bool = True
    """Also train with a layer-matched random set of the same size zeroed."""

    def __post_init__(self) -> None:
        unknown = [m for m in self.modes if m not in ("zero", "scale", "freeze")]
        if unknown:
            raise ValueError(f"Unknown mode(s) {unknown}: use zero, scale, freeze.")
        if "scale" in self.modes and not 0 < self.scale < 1:
            raise ValueError(f"scale must be in (0, 1), got {self.scale}.")
        if not self.percents or any(not 0 < p <= 100 for p in self.percents):
            raise ValueError(f"percents must be in (0, 100], got {self.percents}.")


@dataclass(frozen=True)
class Variant:
    """One training run of the comparison."""

    name: str
    intervention: Intervention | None = None
    mode: str = "none"  # none (vanilla) | zero | scale | freeze
    percent: float | None = None
    control: bool = False  # a layer-matched random set
    seed: int = 0

    @property
    def neurons(self) -> NeuronSet | None:
        return getattr(self.intervention, "neurons", None)

    def describe(self) -> dict:
        neurons = self.neurons
        return {
            "name": self.name,
            "mode": self.mode,
            "scale": self.intervention.scale if self.mode == "scale" else None,
            "percent": self.percent,
            "control": self.control,
            "seed": self.seed,
            "n_neurons": len(neurons) if neurons is not None else 0,
            "layer_counts": neurons.layer_counts() if neurons is not None else None,
        }


def _intervention(mode: str, neurons: NeuronSet, scale: float) -> Intervention:
    if mode == "freeze":
        return FreezeNeurons(neurons)
    return ScaleNeurons(neurons, 0.0 if mode == "zero" else scale)


def plan_variants(
    general_ranked: Callable[[float], NeuronSet],
    config: InhibitConfig = InhibitConfig(),
    *,
    seeds: Sequence[int] = (0,),
) -> list[Variant]:
    """Vanilla, then each (percent, mode) on the top general neurons, then random controls (zero
    mode, same per-layer counts as the inhibited set), for every seed."""
    variants = []
    for seed in seeds:
        variants.append(Variant(f"vanilla/seed{seed}", seed=seed))
        for percent in config.percents:
            neurons = general_ranked(percent)
            for mode in config.modes:
                label = f"scale{config.scale:g}" if mode == "scale" else mode
                name = f"{label}/p{percent:g}/seed{seed}"
                variants.append(Variant(name, _intervention(mode, neurons, config.scale), mode, percent, seed=seed))
            if config.random_control:
                control = ScaleNeurons(neurons.random_matched(seed=1000 + seed), 0.0)
                variants.append(Variant(f"random-zero/p{percent:g}/seed{seed}", control, "zero", percent, True, seed))
    return variants


def run_path(out_dir: str | os.PathLike, variant: Variant) -> Path:
    """Where :func:`run_inhibitft` keeps one finished run (its presence means: do not retrain)."""
    return Path(out_dir) / "runs" / (variant.name.replace("/", "__") + ".json")


def compare_runs(
    base: StanceResult,
    vanilla: StanceResult,
    inhibited: StanceResult,
    target: str,
    *,
    n_boot: int = 2000,
    seed: int = 0,
) -> dict:
    """Target shift kept, CTG reduction and CTG ratios with item-bootstrap 95% CIs."""
    van, inh = paired_shifts(base.items, vanilla.items), paired_shifts(base.items, inhibited.items)
    topics = list(van)
    others = [topics.index(t) for t in topics if t != target]
    where = topics.index(target)

    def statistic(*samples):  # each sample: [2 (vanilla, inhibited), draws, items]
        means = np.stack([s.mean(axis=-1) for s in samples])  # [topic, 2, draws]
        van_target, inh_target = means[where, 0], means[where, 1]
        # topics on the contiguous last axis: summed in the same order as a plain mean over topics
        van_ctg, inh_ctg = (np.ascontiguousarray(means[others, i].T).mean(axis=-1) for i in (0, 1))
        return np.stack([inh_target / van_target, 1 - inh_ctg / van_ctg, inh_ctg / inh_target, van_ctg / van_target])

    samples = [np.stack([van[t], inh[t]]) for t in topics]
    point, low, high = bootstrap(statistic, samples, n_boot=n_boot, seed=seed)
    keys = ("target_kept", "ctg_reduction", "ctg_ratio", "vanilla_ctg_ratio")
    return {key: Estimate(float(point[i]), float(low[i]), float(high[i])).to_dict() for i, key in enumerate(keys)}


def run_inhibitft(
    load_base: Callable[[], object],
    dataset: StanceDataset,
    target: str,
    variants: Sequence[Variant],
    out_dir: str | os.PathLike,
    *,
    leaning: str = "right",
    config: FinetuneConfig = FinetuneConfig(),
    stance: StanceConfig = StanceConfig(),
    progress: bool = True,
) -> dict:
    """Train and score every variant; each finished run is written to :func:`run_path` at once, so
    a rerun skips it (resumable). Returns (and writes ``summary.json``) the comparison tables.

    ``load_base()`` must return a fresh copy of the base model for each run.
    """
    out = Path(out_dir)
    (out / "runs").mkdir(parents=True, exist_ok=True)
    pairs = training_pairs(dataset, target, leaning)
    base_file = out / "base_stance.json"
    if base_file.is_file():
        base = StanceResult.from_dict(read_json(base_file))
    else:
        base = measure_stance(load_base(), dataset, stance, progress=progress)
        write_json(base_file, base.to_dict(), indent=None)
    results: dict[str, StanceResult] = {}
    logs: dict[str, dict] = {}
    for variant in variants:
        path = run_path(out, variant)
        if path.is_file():
            saved = read_json(path)
            results[variant.name], logs[variant.name] = StanceResult.from_dict(saved["stance"]), saved["training"]
            continue
        model = load_base()
        trained = finetune(
            model, pairs, replace(config, seed=variant.seed), intervention=variant.intervention, progress=progress
        )
        results[variant.name] = measure_stance(model, dataset, stance, progress=progress)
        logs[variant.name] = {"losses": trained.losses, "seconds": sum(trained.step_seconds)}
        record = {
            "variant": variant.describe(),
            "training": logs[variant.name],
            "stance": results[variant.name].to_dict(),
        }
        write_json(path, record, indent=None)
        del model
    summary = summarize_runs(base, results, variants, target)
    summary.update(
        {
            "target": target,
            "leaning": leaning,
            "config": asdict(config),
            "data": dataset.source,
            "max_items": stance.max_items,
            "training": logs,
            "versions": library_versions(),
        }
    )
    write_json(out / "summary.json", summary)
    return summary


def summarize_runs(
    base: StanceResult, results: dict[str, StanceResult], variants: Sequence[Variant], target: str
) -> dict:
    """Shift tables for every run and, for each inhibited run, its comparison with the vanilla run
    of the same seed."""
    tables = {name: compare(base, result, target).to_dict() for name, result in results.items()}
    vanilla = {v.seed: v.name for v in variants if v.intervention is None}
    comparisons = {}
    for v in variants:
        if v.intervention is None:
            continue
        comparisons[v.name] = {
            **v.describe(),
            **compare_runs(base, results[vanilla[v.seed]], results[v.name], target, seed=v.seed),
        }
    return {
        "vanilla": {name: tables[name] for name in vanilla.values()},
        "inhibited": {v.name: tables[v.name] for v in variants if v.intervention is not None},
        "comparisons": comparisons,
        "target_kept": {name: c["target_kept"] for name, c in comparisons.items()},
        "ctg_reduction": {name: c["ctg_reduction"] for name, c in comparisons.items()},
    }


def comparison_text(summary: dict) -> str:
    """Plain-text table of a :func:`run_inhibitft` summary: target kept, CTG reduction, CTG ratio."""
    lines = [f"{'run':<28}{'neurons':>8}  {'target kept':<26}{'CTG reduction':<26}CTG ratio"]
    for name, row in summary["comparisons"].items():
        kept, cut = row["target_kept"], row["ctg_reduction"]
        lines.append(
            f"{name:<28}{row['n_neurons']:>8}  {kept['value']:+.2f} [{kept['ci_low']:+.2f}, {kept['ci_high']:+.2f}]    "
            f"{cut['value']:+.2f} [{cut['ci_low']:+.2f}, {cut['ci_high']:+.2f}]    {row['ctg_ratio']['value']:+.2f}"
        )
    return "\n".join(lines)
