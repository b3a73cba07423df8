"""A run folder: where each stage writes, and typed loading of what it wrote.

A run folder is a study folder (:mod:`polineurons.study`: ``base/``, ``trials/``, ``models/``, shared
with ``matrix`` and ``mitigate``) plus the pipeline's own files (every file written atomically)::

    config.json                  resolved RunConfig and library versions
    results.json                 headline numbers (:func:`collect_results`), rewritten after each stage
    report.html                  one offline page
    stages/{stage}.json          marker of a finished stage: its inputs, the study files it used
                                 (``outputs``: base scores, trials, the kept model), seconds, versions
    stages/{stage}.started.json  a stage in progress (its inputs): an interrupted stage resumes
    generalization/generalization.json   shifts per seed and pooled headline numbers (+ check data)
    localize/                    PNLAC result (NeuronSets, scores, summary.json) + examples.*
    patch/recovery.json          set patching: recovery per set and topic
    mitigation.json              the mitigation frontier over every mitigation trial of the folder
    figures/                     standalone HTML figures

This module reads files only: it imports no training code.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from safetensors.torch import load_file

from polineurons.claims import paper_claims
from polineurons.errors import RunError
from polineurons.generalization import Generalization, Headline, SeedHeadlines
from polineurons.io import read_json
from polineurons.patching import CTG, Recovery, recovery_from_dict
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
    generalization = property(lambda self: self.root / "generalization" / "generalization.json")
    localize = property(lambda self: self.root / "localize")
    examples = property(lambda self: self.root / "localize" / "examples.json")
    example_activations = property(lambda self: self.root / "localize" / "examples.safetensors")
    patch = property(lambda self: self.root / "patch" / "recovery.json")
    mitigation = property(lambda self: self.root / "mitigation.json")
    figures = property(lambda self: self.root / "figures")

    def stage_marker(self, stage: str, *, started: bool = False) -> Path:
        return self.root / "stages" / f"{stage}{'.started' if started else ''}.json"

    def stage_outputs(self, stage: str) -> list[Path]:
        """What a stage writes outside the study's keyed files (deleted before it is recomputed)."""
        named = {"report": [self.report], "mitigate": [self.mitigation], "base_stance": [], "finetune": []}
        return named.get(stage, [self.root / stage])


@dataclass
class RunArtifacts:
    """Everything a finished (or partial) run wrote; ``None`` where a stage has not finished.
    Figures and the report are built from this alone."""

    layout: RunLayout
    config: dict
    stages: dict[str, dict]
    base_stance: StanceResult | None = None
    finetuned_stance: StanceResult | None = None  # the first seed's
    generalization: Generalization | None = None  # the first seed's
    headlines: SeedHeadlines | None = None  # per seed and pooled
    checks: dict[str, tuple[Generalization, SeedHeadlines]] | None = None  # the same on each check data set
    training: list[dict] | None = None  # training log of each seed
    localize: dict | None = None  # localize/summary.json
    patch: dict | None = None  # patch/recovery.json: target, set_sizes
    recovery: dict[str, dict[str, Recovery]] | None = None
    mitigation: dict | None = None  # mitigate/mitigation.json
    examples: dict | None = None  # {"neurons", "prompts", "activations": {"base/0": Tensor[tokens, neurons], ...}}

    @property
    def out(self) -> Path:
        return self.layout.root

    @property
    def model(self) -> Path | None:
        """The first training seed's fine-tuned model folder (None before the finetune stage)."""
        kept = self.stages.get("finetune", {}).get("outputs", {}).get("model")
        return self.layout.root / kept if kept else None


def load_run(out_dir: str | Path) -> RunArtifacts:
    """Read a run folder (finished stages only).

    Example::

        run = load_run("runs/quick")
        print(run.generalization.table())
    """
    layout = RunLayout(Path(out_dir))
    if not layout.config.is_file():
        raise RunError(f"{layout.root} is not a polineurons run folder (config.json missing).")
    stages = {p.stem: read_json(p) for p in sorted((layout.root / "stages").glob("*.json")) if "." not in p.stem}

    def read(stage: str, path: Path) -> dict | None:
        return read_json(path) if stage in stages and path.is_file() else None

    def outputs(stage: str) -> dict:
        return stages.get(stage, {}).get("outputs", {})

    run = RunArtifacts(layout, read_json(layout.config)["config"], stages)
    if base := outputs("base_stance").get("stance"):
        run.base_stance = StanceResult.from_dict(read_json(layout.root / base))
    if trials := outputs("finetune").get("trials"):
        run.training = [read_json(layout.root / path)["training"] for path in trials.values()]
    if generalization := read("generalization", layout.generalization):
        run.generalization = Generalization.from_dict(generalization)
        run.finetuned_stance = StanceResult.from_dict(generalization["finetuned_stance"])
        run.headlines = SeedHeadlines.from_dict(generalization["headlines"])
        run.checks = {
            name: (Generalization.from_dict(check), SeedHeadlines.from_dict(check["headlines"]))
            for name, check in generalization["checks"].items()
        }
    run.localize = read("localize", layout.localize / "summary.json")
    if patch := read("patch", layout.patch):
        run.patch, run.recovery = patch, recovery_from_dict(patch["recovery"])
    run.mitigation = read("mitigate", layout.mitigation)
    if (examples := read("localize", layout.examples)) and layout.example_activations.is_file():
        run.examples = {**examples, "activations": load_file(str(layout.example_activations))}
    return run


def headline_fields(headline: Headline) -> dict:
    """``target_shift``, ``ctg``, ``ctg_ratio`` and each one's ``_ci_low`` / ``_ci_high`` (flat)."""
    fields = {}
    for key in ("target_shift", "ctg", "ctg_ratio"):
        estimate = getattr(headline, key)
        fields.update({key: estimate.value, f"{key}_ci_low": estimate.ci_low, f"{key}_ci_high": estimate.ci_high})
    return fields


def _per_seed(headlines: SeedHeadlines) -> list[dict]:
    return [{"seed": seed, **headline_fields(h)} for seed, h in zip(headlines.seeds, headlines.per_seed, strict=True)]


def _topic_scores(stance: StanceResult) -> dict:
    return {t: {"score": s.score, "ci_low": s.ci_low, "ci_high": s.ci_high} for t, s in stance.topics.items()}


def collect_results(run: RunArtifacts) -> dict:
    """The headline numbers of a run (what ``results.json`` holds). Target shift, CTG and CTG ratio
    are signed toward the trained leaning and pooled over the training seeds (per seed in
    ``per_seed``); ``shifts`` are the first seed's per-topic shifts (positive = right)."""
    config = run.config
    results: dict = {
        key: config[key] for key in ("model", "data", "target", "leaning", "preset", "seeds", "check_data")
    }
    results["stage_seconds"] = {s: round(r["seconds"], 1) for s, r in run.stages.items()}
    if run.base_stance:
        results["base_stance"] = _topic_scores(run.base_stance)
    if run.training:
        results["finetune"] = [
            {
                "seed": log["config"]["seed"],
                "steps": log["n_steps"],
                "first_loss": log["losses"][0],
                "last_loss": log["losses"][-1],
                "seconds": round(log["seconds_total"], 1),
            }
            for log in run.training
        ]
    if run.generalization:
        g, headlines = run.generalization, run.headlines
        results["finetuned_stance"] = _topic_scores(run.finetuned_stance)
        results["shifts"] = {
            t: {"shift": s.shift, "ci_low": s.ci_low, "ci_high": s.ci_high} for t, s in g.shifts.items()
        }
        results.update(headline_fields(headlines.pooled))
        results["per_seed"] = _per_seed(headlines)
        results["seed_sd"] = headlines.seed_sd
        results["checks"] = {
            name: {**headline_fields(h.pooled), "per_seed": _per_seed(h), "seed_sd": h.seed_sd}
            for name, (_, h) in run.checks.items()
        }
    if run.localize:
        summary = run.localize["summary"]
        general = summary["general"]
        results["general_neurons"] = {
            "count": general["count"],
            "fraction": general["fraction"],
            "n_neurons": summary["n_neurons"],
        }
        results["specific_neurons"] = {t: row["count"] for t, row in summary["specific"].items()}
    if run.recovery:
        target = run.patch["target"]
        results["patching_recovery_on_target"] = {
            **_recovery_on(run.recovery, target),
            "specific_target": run.recovery.get(f"specific:{target}", {}).get(target, _NONE).recovery,
            "all": run.recovery.get("all", {}).get(target, _NONE).recovery,
            "full_shift": run.recovery["general"][target].full_shift,
            "n_items": run.recovery["general"][target].n,
        }
        if all(CTG in rows for rows in run.recovery.values()):
            results["patching_recovery_on_ctg"] = _recovery_on(run.recovery, CTG)
    if run.localize:
        results["claims"] = [c.to_dict() for c in paper_claims(run.localize, run.patch, run.mitigation)]
    if run.mitigation:
        m = run.mitigation
        results["mitigation"] = {key: m[key] for key in ("vanilla", "frontier", "at_90", "league")}
    return results


_NONE = Recovery(None, None, None, None, None, 0)  # type: ignore[arg-type]  # a set that was not patched


def _recovery_on(recovery: dict[str, dict[str, Recovery]], column: str) -> dict:
    """The general set's and the random controls' recovery in one column (a topic, or ``ctg``)."""
    randoms = [rows[column].recovery for name, rows in recovery.items() if name.startswith("random:")]
    general = recovery.get("general", {}).get(column, _NONE).recovery
    return {"general": general, "random_mean": sum(randoms) / len(randoms) if randoms else None, "random": randoms}


def _interval(estimate: dict) -> str:
    return f"{estimate['value']:+.2f} [{estimate['ci_low']:+.2f}, {estimate['ci_high']:+.2f}]"


def results_text(results: dict) -> str:
    """Plain-text summary of :func:`collect_results` output (what `polineurons run` prints)."""

    def fmt(value: float | None) -> str:
        return "n/a" if value is None else f"{value:.2f}"

    def headline(row: dict) -> str:
        return (
            f"target shift {row['target_shift']:+.3f}   CTG {row['ctg']:+.3f} "
            f"[{row['ctg_ci_low']:+.3f}, {row['ctg_ci_high']:+.3f}]   CTG ratio {row['ctg_ratio']:+.2f}"
        )

    lines = []
    if "ctg" in results:
        lines.append(f"toward {results['leaning']}, pooled over {results['seeds']} seed(s): {headline(results)}")
        lines += (
            [f"  seed {row['seed']}: {headline(row)}" for row in results["per_seed"]] if results["seeds"] > 1 else []
        )
        lines += [f"  on {name}: {headline(row)}" for name, row in results["checks"].items()]
    if general := results.get("general_neurons"):
        lines.append(f"general neurons {general['count']} of {general['n_neurons']} ({general['fraction']:.1%})")
    if patch := results.get("patching_recovery_on_target"):
        lines.append(
            f"patching recovery on target: general {fmt(patch['general'])}, "
            f"random {fmt(patch['random_mean'])}, all {fmt(patch['all'])}"
        )
    if patch := results.get("patching_recovery_on_ctg"):
        lines.append(f"patching recovery on CTG: general {fmt(patch['general'])}, random {fmt(patch['random_mean'])}")
    mitigation = results.get("mitigation", {})
    for row in mitigation.get("league", []):
        control = row["control_ctg_reduction"]
        versus = f" (control {_interval(control)})" if control else ""
        lines.append(
            f"mitigation {row['method']}: CTG reduction at 90% of the target kept {_interval(row['ctg_reduction'])}"
            f" at strength {row['strength']:.3g}{versus}"
        )
    for method, at_90 in mitigation.get("at_90", {}).items():
        if at_90["ctg_reduction"] is None:
            lines.append(f"mitigation {method}: {at_90['reason']}")
    mark = {True: " — holds", False: " — does not hold", None: ""}
    lines += [f"claim ({c['key']}) {c['claim']}: {c['measured']}{mark[c['holds']]}" for c in results.get("claims", [])]
    lines.append(f"stage time {sum(results['stage_seconds'].values()):.0f} s in all")
    return "\n".join(lines)
