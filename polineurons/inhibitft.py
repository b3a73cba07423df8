"""InhibitFT: fine-tune while the general political neurons are inhibited, and compare with vanilla.

InhibitFT is the project's one fine-tuning loop (:func:`polineurons.finetune.finetune`) with neuron
interventions during training only; the returned model has no hooks. Modes:

- ``zero``: activations multiplied by 0 (the paper's method);
- ``scale``: multiplied by a factor in (0, 1);
- ``freeze``: activations untouched, the neurons' input/output weights held fixed.

Metrics against vanilla fine-tuning on the same data, seed and schedule: target shift kept
(inhibited target shift / vanilla target shift) and CTG reduction (1 − CTG_inhibited / CTG_vanilla),
each with a bootstrap CI that resamples the eval items (paired across the runs), plus the CTG ratio.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np

from polineurons.data.items import StanceDataset
from polineurons.finetune import FinetuneConfig, finetune, training_pairs
from polineurons.generalization import compare
from polineurons.io import atomic_write_text
from polineurons.neurons import NeuronSet
from polineurons.stance import StanceResult, measure_stance
from polineurons.versions import library_versions

MODES = ("zero", "scale", "freeze")


@dataclass(frozen=True)
class Variant:
    """One training run of the comparison."""

    name: str
    neurons: NeuronSet | None = None
    mode: str = "none"  # none (vanilla) | zero | scale | freeze
    scale: float = 0.0
    percent: float | None = None
    control: bool = False  # a layer-matched random set
    seed: int = 0

    def finetune_kwargs(self) -> dict:
        if self.neurons is None:
            return {}
        if self.mode == "freeze":
            return {"inhibit": self.neurons, "inhibit_mode": "freeze"}
        return {"inhibit": self.neurons, "inhibit_mode": "scale", "inhibit_scale": 0.0 if self.mode == "zero" else self.scale}

    def describe(self) -> dict:
        return {
            "name": self.name,
            "mode": self.mode,
            "scale": self.scale if self.mode == "scale" else None,
            "percent": self.percent,
            "control": self.control,
            "seed": self.seed,
            "n_neurons": len(self.neurons) if self.neurons is not None else 0,
            "layer_counts": self.neurons.layer_counts() if self.neurons is not None else None,
        }


def plan_variants(
    general_ranked: Callable[[float], NeuronSet],
    *,
    percents: Sequence[float] = (5.0,),
    modes: Sequence[str] = ("zero",),
    scale: float = 0.5,
    random_control: bool = True,
    seeds: Sequence[int] = (0,),
) -> list[Variant]:
    """Vanilla, then each (percent, mode) on the top general neurons, then random controls (zero
    mode, same per-layer counts as the inhibited set), for every seed."""
    unknown = [m for m in modes if m not in MODES]
    if unknown:
        raise ValueError(f"Unknown mode(s) {unknown}: use {', '.join(MODES)}.")
    if "scale" in modes and not 0 < scale < 1:
        raise ValueError(f"scale must be in (0, 1), got {scale}.")
    variants = []
    for seed in seeds:
        variants.append(Variant(f"vanilla/seed{seed}", seed=seed))
        for percent in percents:
            neurons = general_ranked(percent)
            for mode in modes:
                label = f"scale{scale:g}" if mode == "scale" else mode
                variants.append(Variant(f"{label}/p{percent:g}/seed{seed}", neurons, mode, scale, percent, seed=seed))
            if random_control:
                control = neurons.random_matched(seed=1000 + seed)
                variants.append(Variant(f"random-zero/p{percent:g}/seed{seed}", control, "zero", 0.0, percent, True, seed))
    return variants


def _shifts(base: StanceResult, after: StanceResult) -> dict[str, np.ndarray]:
    before = {item.id: item.score for item in base.items}
    by_topic: dict[str, list[float]] = {}
    for item in after.items:
        by_topic.setdefault(item.topic, []).append(item.score - before[item.id])
    return {topic: np.array(values) for topic, values in by_topic.items()}


def compare_runs(
    base: StanceResult, vanilla: StanceResult, inhibited: StanceResult, target: str, *, n_boot: int = 2000, seed: int = 0
) -> dict:
    """Target shift kept, CTG reduction and CTG ratios with item-bootstrap 95% CIs."""
    van, inh = _shifts(base, vanilla), _shifts(base, inhibited)
    topics = list(van)
    others = [t for t in topics if t != target]

    def stats(draws: dict[str, np.ndarray] | None) -> tuple[float, float, float, float]:
        pick = (lambda t, a: a) if draws is None else (lambda t, a: a[draws[t]])
        van_target, inh_target = pick(target, van[target]).mean(), pick(target, inh[target]).mean()
        van_ctg = np.mean([pick(t, van[t]).mean() for t in others])
        inh_ctg = np.mean([pick(t, inh[t]).mean() for t in others])
        with np.errstate(divide="ignore", invalid="ignore"):
            return inh_target / van_target, 1 - inh_ctg / van_ctg, inh_ctg / inh_target, van_ctg / van_target

    point = stats(None)
    rng = np.random.default_rng(seed)
    boots = np.array([stats({t: rng.integers(0, len(van[t]), len(van[t])) for t in topics}) for _ in range(n_boot)])
    result = {}
    for i, key in enumerate(("target_kept", "ctg_reduction", "ctg_ratio", "vanilla_ctg_ratio")):
        finite = boots[:, i][np.isfinite(boots[:, i])]
        low, high = np.percentile(finite, [2.5, 97.5]) if finite.size else (np.nan, np.nan)
        result[key] = {"value": float(point[i]), "ci_low": float(low), "ci_high": float(high)}
    return result


def run_inhibitft(
    load_base: Callable[[], object],
    dataset: StanceDataset,
    target: str,
    variants: Sequence[Variant],
    out_dir: str | os.PathLike,
    *,
    leaning: str = "right",
    config: FinetuneConfig = FinetuneConfig(),
    max_items: int | None = None,
    batch_size: int = 16,
    progress: bool = True,
) -> dict:
    """Train and score every variant; each finished run is written to ``out_dir/runs/`` at once, so a
    rerun skips it (resumable). Returns (and writes ``summary.json``) the comparison tables.

    ``load_base()`` must return a fresh copy of the base model for each run.
    """
    out = Path(out_dir)
    (out / "runs").mkdir(parents=True, exist_ok=True)
    pairs = training_pairs(dataset, target, leaning)
    eval_kwargs = dict(split="eval", max_items=max_items, batch_size=batch_size, progress=progress)
    base_file = out / "base_stance.json"
    base_model = None
    if base_file.is_file():
        base = StanceResult.from_dict(json.loads(base_file.read_text()))
    else:
        base_model = load_base()
        base = measure_stance(base_model, dataset, **eval_kwargs)
        atomic_write_text(base_file, json.dumps(base.to_dict()) + "\n")
    del base_model
    results: dict[str, StanceResult] = {}
    logs: dict[str, dict] = {}
    for variant in variants:
        path = out / "runs" / (variant.name.replace("/", "__") + ".json")
        if path.is_file():
            saved = json.loads(path.read_text())
            results[variant.name], logs[variant.name] = StanceResult.from_dict(saved["stance"]), saved["training"]
            continue
        model = load_base()
        trained = finetune(model, pairs, replace(config, seed=variant.seed), progress=progress, **variant.finetune_kwargs())
        results[variant.name] = measure_stance(model, dataset, **eval_kwargs)
        logs[variant.name] = {"losses": trained.losses, "seconds": sum(trained.step_seconds)}
        record = {"variant": variant.describe(), "training": logs[variant.name], "stance": results[variant.name].to_dict()}
        atomic_write_text(path, json.dumps(record) + "\n")
        del model
    summary = summarize_runs(base, results, variants, target)
    summary.update({"target": target, "leaning": leaning, "config": asdict(config), "data": dataset.source,
                    "max_items": max_items, "training": logs, "versions": library_versions()})
    atomic_write_text(out / "summary.json", json.dumps(summary, indent=2) + "\n")
    return summary


def summarize_runs(base: StanceResult, results: dict[str, StanceResult], variants: Sequence[Variant], target: str) -> dict:
    """Shift tables for every run and, for each inhibited run, its comparison with the vanilla run
    of the same seed."""
    tables = {name: compare(base, result, target).to_dict() for name, result in results.items()}
    vanilla = {v.seed: v.name for v in variants if v.neurons is None}
    comparisons = {}
    for v in variants:
        if v.neurons is None:
            continue
        comparisons[v.name] = {**v.describe(), **compare_runs(base, results[vanilla[v.seed]], results[v.name], target, seed=v.seed)}
    return {
        "vanilla": {name: tables[name] for name in vanilla.values()},
        "inhibited": {v.name: tables[v.name] for v in variants if v.neurons is not None},
        "comparisons": comparisons,
        "target_kept": {name: c["target_kept"] for name, c in comparisons.items()},
        "ctg_reduction": {name: c["ctg_reduction"] for name, c in comparisons.items()},
    }

