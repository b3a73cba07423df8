"""A run folder: where each stage writes, and typed loading of what it wrote.

Layout (every file written atomically)::

    config.json                  resolved RunConfig and library versions
    results.json                 headline numbers (:func:`collect_results`), rewritten after each stage
    report.html                  one offline page
    stages/{stage}.json          marker of a finished stage: its inputs, seconds, versions
    base_stance/stance.json      StanceResult of the base model
    finetune/model/              the fine-tuned model (+ training_log.json)
    generalization/generalization.json   shifts, CTG, and the fine-tuned StanceResult
    localize/                    PNLAC result (NeuronSets, scores, summary.json) + examples.*
    patch/recovery.json          set patching: recovery per set and topic
    inhibitft/                   InhibitFT runs and summary.json
    figures/                     standalone HTML figures
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from safetensors.torch import load_file

from polineurons.config import RunError
from polineurons.generalization import Generalization
from polineurons.io import read_json
from polineurons.patching import Recovery, recovery_from_dict
from polineurons.stance import StanceResult


@dataclass(frozen=True)
class RunLayout:
    """Paths inside one run folder."""

    root: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", Path(self.root))

    config = property(lambda self: self.root / "config.json")
    results = property(lambda self: self.root / "results.json")
    report = property(lambda self: self.root / "report.html")
    base_stance = property(lambda self: self.root / "base_stance" / "stance.json")
    model = property(lambda self: self.root / "finetune" / "model")
    training_log = property(lambda self: self.root / "finetune" / "model" / "training_log.json")
    generalization = property(lambda self: self.root / "generalization" / "generalization.json")
    localize = property(lambda self: self.root / "localize")
    examples = property(lambda self: self.root / "localize" / "examples.json")
    example_activations = property(lambda self: self.root / "localize" / "examples.safetensors")
    patch = property(lambda self: self.root / "patch" / "recovery.json")
    inhibitft = property(lambda self: self.root / "inhibitft")
    inhibitft_summary = property(lambda self: self.root / "inhibitft" / "summary.json")
    figures = property(lambda self: self.root / "figures")

    def stage_marker(self, stage: str) -> Path:
        return self.root / "stages" / f"{stage}.json"

    def stage_outputs(self, stage: str) -> list[Path]:
        """What a stage writes (deleted before it is recomputed)."""
        return [self.report] if stage == "report" else [self.root / stage]


@dataclass
class RunArtifacts:
    """Everything a finished (or partial) run wrote; ``None`` where a stage has not finished.
    Figures and the report are built from this alone."""

    layout: RunLayout
    config: dict
    stages: dict[str, dict]
    base_stance: StanceResult | None = None
    finetuned_stance: StanceResult | None = None
    generalization: Generalization | None = None
    training_log: dict | None = None
    localize: dict | None = None  # localize/summary.json
    patch: dict | None = None  # patch/recovery.json: target, set_sizes
    recovery: dict[str, dict[str, Recovery]] | None = None
    inhibitft: dict | None = None  # inhibitft/summary.json
    examples: dict | None = None  # {"neurons", "prompts", "activations": {"base/0": Tensor[tokens, neurons], ...}}

    @property
    def out(self) -> Path:
        return self.layout.root


def load_run(out_dir: str | Path) -> RunArtifacts:
    """Read a run folder (finished stages only)."""
    layout = RunLayout(Path(out_dir))
    if not layout.config.is_file():
        raise RunError(f"{layout.root} is not a polineurons run folder (config.json missing).")
    stages = {p.stem: read_json(p) for p in sorted((layout.root / "stages").glob("*.json"))}

    def read(stage: str, path: Path) -> dict | None:
        return read_json(path) if stage in stages and path.is_file() else None

    run = RunArtifacts(layout, read_json(layout.config)["config"], stages)
    if base := read("base_stance", layout.base_stance):
        run.base_stance = StanceResult.from_dict(base)
    if generalization := read("generalization", layout.generalization):
        run.generalization = Generalization.from_dict(generalization)
        run.finetuned_stance = StanceResult.from_dict(generalization["finetuned_stance"])
    run.training_log = read("finetune", layout.training_log)
    run.localize = read("localize", layout.localize / "summary.json")
    if patch := read("patch", layout.patch):
        run.patch, run.recovery = patch, recovery_from_dict(patch["recovery"])
    run.inhibitft = read("inhibitft", layout.inhibitft_summary)
    if examples := read("localize", layout.examples):
        run.examples = {**examples, "activations": load_file(str(layout.example_activations))}
    return run


def _topic_scores(stance: StanceResult) -> dict:
    return {t: {"score": s.score, "ci_low": s.ci_low, "ci_high": s.ci_high} for t, s in stance.topics.items()}


def collect_results(run: RunArtifacts) -> dict:
    """The headline numbers of a run (what ``results.json`` holds)."""
    config = run.config
    results: dict = {
        "model": config["model"],
        "data": config["data"],
        "target": config["target"],
        "leaning": config["leaning"],
        "preset": config["preset"],
        "seed": config["finetune"]["seed"],
        "stage_seconds": {s: round(r["seconds"], 1) for s, r in run.stages.items()},
    }
    if run.base_stance:
        results["base_stance"] = _topic_scores(run.base_stance)
    if run.training_log:
        log = run.training_log
        results["finetune"] = {
            "steps": log["n_steps"],
            "first_loss": log["losses"][0],
            "last_loss": log["losses"][-1],
            "seconds": round(log["seconds_total"], 1),
        }
    if run.generalization:
        g = run.generalization
        results["finetuned_stance"] = _topic_scores(run.finetuned_stance)
        results["shifts"] = {
            t: {"shift": s.shift, "ci_low": s.ci_low, "ci_high": s.ci_high} for t, s in g.shifts.items()
        }
        results.update(target_shift=g.target_shift, ctg=g.ctg, ctg_ratio=g.ctg_ratio)
    if run.localize:
        summary = run.localize["summary"]
        results["general_neurons"] = {
            "count": summary["general"]["count"],
            "fraction": summary["general"]["fraction"],
            "n_neurons": summary["n_neurons"],
        }
        results["specific_neurons"] = {t: row["count"] for t, row in summary["specific"].items()}
    if run.recovery:
        target = run.patch["target"]
        on_target = {name: rows[target].recovery for name, rows in run.recovery.items()}
        randoms = [v for name, v in on_target.items() if name.startswith("random:")]
        results["patching_recovery_on_target"] = {
            "general": on_target.get("general"),
            "random_mean": sum(randoms) / len(randoms) if randoms else None,
            "random": randoms,
            "specific_target": on_target.get(f"specific:{target}"),
            "all": on_target.get("all"),
            "full_shift": run.recovery["general"][target].full_shift,
            "n_items": run.recovery["general"][target].n,
        }
    if run.inhibitft:
        results["inhibitft"] = {
            name: {
                "n_neurons": row["n_neurons"],
                "percent": row["percent"],
                "mode": row["mode"],
                "control": row["control"],
                "target_kept": row["target_kept"],
                "ctg_reduction": row["ctg_reduction"],
                "ctg_ratio": row["ctg_ratio"]["value"],
            }
            for name, row in run.inhibitft["comparisons"].items()
        }
    return results


def results_text(results: dict) -> str:
    """Plain-text summary of :func:`collect_results` output (what `polineurons run` prints)."""

    def fmt(value: float | None) -> str:
        return "n/a" if value is None else f"{value:.2f}"

    lines = []
    if general := results.get("general_neurons"):
        lines.append(f"general neurons {general['count']} of {general['n_neurons']} ({general['fraction']:.1%})")
    if patch := results.get("patching_recovery_on_target"):
        lines.append(
            f"patching recovery on target: general {fmt(patch['general'])}, "
            f"random {fmt(patch['random_mean'])}, all {fmt(patch['all'])}"
        )
    for name, row in results.get("inhibitft", {}).items():
        lines.append(
            f"InhibitFT {name:<26} target kept {row['target_kept']['value']:+.2f}   "
            f"CTG reduction {row['ctg_reduction']['value']:+.2f}"
        )
    lines.append(f"stage time {sum(results['stage_seconds'].values()):.0f} s in all")
    return "\n".join(lines)
