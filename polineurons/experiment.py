"""The end-to-end pipeline as resumable stages writing into one run directory.

Stages, in order (each reads only what the ones before it wrote)::

    base_stance     base model's stance on every topic's eval items
    finetune        fine-tune a copy of the base toward a leaning on the target topic (train split)
    generalization  the fine-tuned model's stance, shifts, target shift and CTG
    localize        PNLAC: general and topic-specific neurons; activations of the top general
                    neurons on example prompts (for the report's neuron view)
    patch           patch neuron sets (general, specific, layer-matched random, all) into the base
    inhibitft       InhibitFT vs vanilla (the finetune stage's model is the vanilla run)
    figures         standalone HTML figures
    report          DIR/report.html, one offline page

Every artifact is written atomically; a stage is finished when ``DIR/stages/{stage}.json`` exists,
which records the configuration the stage depended on (its own keys and those of the stages
upstream). A rerun skips finished stages, refuses a changed configuration unless the stage is
forced, and ``force`` recomputes a stage and everything downstream of it.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from polineurons.data import encode_prompt, load_data
from polineurons.data.items import DataError, StanceDataset, check_leaning
from polineurons.finetune import FinetuneConfig, finetune, training_pairs
from polineurons.generalization import compare
from polineurons.hooks import neuron_activations
from polineurons.inhibitft import MODES, plan_variants, run_inhibitft
from polineurons.io import atomic_path, atomic_write_text
from polineurons.models import EMBEDDED_MODEL, load_model, resolve_model_path
from polineurons.neurons import NeuronSet
from polineurons.patching import patched_item_scores, recovery_table, recovery_to_dict
from polineurons.pnlac import NORMALIZATIONS, Localization, localize
from polineurons.stance import StanceResult, measure_stance
from polineurons.versions import library_versions

STAGES = ("base_stance", "finetune", "generalization", "localize", "patch", "inhibitft", "figures", "report")
PRESETS = ("quick", "full", "smoke")

# Which stages a stage reads from (direct upstream).
UPSTREAM: dict[str, tuple[str, ...]] = {
    "base_stance": (),
    "finetune": (),
    "generalization": ("base_stance", "finetune"),
    "localize": ("finetune",),
    "patch": ("localize",),
    "inhibitft": ("base_stance", "generalization", "localize"),
    "figures": ("generalization", "localize", "patch", "inhibitft"),
    "report": ("generalization", "localize", "patch", "inhibitft"),
}

# Which RunConfig fields a stage's own computation depends on.
STAGE_KEYS: dict[str, tuple[str, ...]] = {
    "base_stance": ("model", "data", "eval_max_items"),
    "finetune": ("model", "data", "target", "leaning", "seed", "finetune"),
    "generalization": ("eval_max_items",),
    "localize": ("localize_top_k", "localize_normalize", "localize_max_items", "localize_skip_prefix", "example_prompts", "example_neurons"),
    "patch": ("patch_max_items", "patch_max_answer_tokens", "patch_random_seeds", "patch_specific"),
    "inhibitft": ("inhibit_percents", "inhibit_modes", "inhibit_scale", "inhibit_random_control"),
    "figures": (),
    "report": (),
}


class RunError(ValueError):
    """A run cannot start or continue as asked (bad input, changed configuration, unwritable folder)."""


@dataclass(frozen=True)
class RunConfig:
    """Everything that determines a run's numbers. Build it with :meth:`from_preset`; the field
    defaults are the ``quick`` preset."""

    model: str = EMBEDDED_MODEL
    data: str = "bundled"
    target: str = "immigration"
    leaning: str = "right"
    preset: str = "quick"
    seed: int = 0
    eval_max_items: int | None = 16  # eval items per topic (None = all: 20 in the bundled data)
    finetune: FinetuneConfig = field(default_factory=lambda: FinetuneConfig(epochs=2))
    localize_top_k: float = 30.0
    localize_normalize: str = "none"
    localize_max_items: int | None = 16  # train questions per topic
    localize_skip_prefix: bool = False  # score only tokens after the prompt prefix all topics share
    example_prompts: int = 2  # per topic, for the neuron view
    example_neurons: int = 12  # top general neurons shown
    patch_max_items: int | None = 8  # fewer items give recovery ratios dominated by noise
    patch_max_answer_tokens: int | None = 32
    patch_random_seeds: int = 2
    patch_specific: str = "target"  # target | all
    inhibit_percents: tuple[float, ...] = (5.0,)
    inhibit_modes: tuple[str, ...] = ("zero",)
    inhibit_scale: float = 0.5
    inhibit_random_control: bool = True

    @classmethod
    def from_preset(cls, name: str = "quick", **overrides) -> RunConfig:
        """``quick``: minutes on a 2-core CPU for the 135M model (fewer epochs and items);
        ``full``: every item, more epochs and neuron shares — sized for a GPU;
        ``smoke``: seconds on a tiny model, to check the plumbing (its numbers mean nothing)."""
        if name not in PRESETS:
            raise RunError(f"Unknown preset '{name}': use {', '.join(PRESETS)}.")
        settings: dict = {"preset": name}
        # quick = the field defaults: the two InhibitFT fine-tunes are about half of its time
        if name == "full":
            settings.update(
                finetune=FinetuneConfig(epochs=3), eval_max_items=None, localize_max_items=None, patch_max_items=None,
                patch_max_answer_tokens=None, patch_random_seeds=3, patch_specific="all", example_prompts=3,
                inhibit_percents=(1.0, 2.0, 5.0, 10.0, 20.0),
            )
        elif name == "smoke":
            settings.update(
                finetune=FinetuneConfig(epochs=1, max_steps=2, batch_size=4, max_seq_len=320, learning_rate=1e-3),
                eval_max_items=2, localize_max_items=2, example_prompts=1, example_neurons=4,
                patch_max_items=2, patch_max_answer_tokens=8, patch_random_seeds=1,
            )
        finetune_overrides = overrides.pop("finetune_overrides", None) or {}
        settings.update(overrides)
        config = cls(**settings)
        if finetune_overrides:
            config = replace(config, finetune=replace(config.finetune, **finetune_overrides))
        return config

    def __post_init__(self) -> None:
        check_leaning(self.leaning)
        if self.localize_normalize not in NORMALIZATIONS:
            raise RunError(f"localize_normalize must be one of {', '.join(NORMALIZATIONS)}.")
        if self.patch_specific not in ("target", "all"):
            raise RunError("patch_specific must be 'target' or 'all'.")
        unknown = [m for m in self.inhibit_modes if m not in MODES]
        if unknown:
            raise RunError(f"Unknown InhibitFT mode(s) {unknown}: use {', '.join(MODES)}.")
        if not 0 < self.localize_top_k <= 100:
            raise RunError(f"localize_top_k must be in (0, 100], got {self.localize_top_k}.")

    def to_dict(self) -> dict:
        # JSON round trip: tuples become lists, so a stored config compares equal to a fresh one
        return json.loads(json.dumps(asdict(self)))

    def stage_inputs(self, stage: str) -> dict:
        """The configuration values a stage's results depend on, upstream stages included."""
        keys: set[str] = set()
        pending = [stage]
        while pending:
            current = pending.pop()
            keys.update(STAGE_KEYS[current])
            pending.extend(UPSTREAM[current])
        values = self.to_dict()
        return {key: values[key] for key in sorted(keys)}


def downstream(stages: Iterable[str]) -> list[str]:
    """The given stages and every stage that reads from them, in pipeline order."""
    chosen = set(stages)
    for stage in STAGES:
        if any(up in chosen for up in UPSTREAM[stage]):
            chosen.add(stage)
    return [s for s in STAGES if s in chosen]


def _changed_keys(old: dict, new: dict) -> list[str]:
    return sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))


@dataclass
class StageRecord:
    stage: str
    status: str  # done | skipped
    seconds: float


@dataclass
class RunContext:
    """What the stages share while a run is in progress: the config, the folder, the data and the
    models (loaded once, lazily)."""

    config: RunConfig
    out: Path
    dataset: StanceDataset
    device: str | None = None
    progress: bool = True
    _base: object | None = None
    _tuned: object | None = None

    def path(self, *parts: str) -> Path:
        return self.out.joinpath(*parts)

    def load_base(self):
        """A fresh copy of the base model (for training, which changes weights)."""
        return load_model(self.config.model, device=self.device)

    @property
    def base(self):
        if self._base is None:
            self._base = self.load_base()
        return self._base

    @property
    def tuned(self):
        if self._tuned is None:
            self._tuned = load_model(str(self.path("finetune", "model")), device=self.device)
        return self._tuned

    def eval_kwargs(self) -> dict:
        return {"split": "eval", "max_items": self.config.eval_max_items, "batch_size": 16, "progress": self.progress}


def _write_json(path: Path, payload: dict) -> None:
    atomic_write_text(path, json.dumps(payload, indent=2) + "\n")


def _read_json(path: Path) -> dict:
    return json.loads(path.read_text())


# ---- stages ----------------------------------------------------------------------------------------


def _stage_base_stance(ctx: RunContext) -> None:
    result = measure_stance(ctx.base, ctx.dataset, **ctx.eval_kwargs())
    _write_json(ctx.path("base_stance", "stance.json"), {"model": ctx.config.model, **result.to_dict()})


def _stage_finetune(ctx: RunContext) -> None:
    config = ctx.config
    model = ctx.load_base()
    pairs = training_pairs(ctx.dataset, config.target, config.leaning)
    meta = {"base_model": config.model, "data": ctx.dataset.source, "topic": config.target, "leaning": config.leaning}
    finetune(model, pairs, replace(config.finetune, seed=config.seed), out_dir=ctx.path("finetune", "model"), meta=meta, progress=ctx.progress)
    ctx._tuned = model  # identical to the saved copy; saves a reload


def _stage_generalization(ctx: RunContext) -> None:
    base = StanceResult.from_dict(_read_json(ctx.path("base_stance", "stance.json")))
    after = measure_stance(ctx.tuned, ctx.dataset, **ctx.eval_kwargs())
    result = compare(base, after, ctx.config.target)
    _write_json(ctx.path("generalization", "generalization.json"), {**result.to_dict(), "finetuned_stance": after.to_dict()})


def _stage_localize(ctx: RunContext) -> None:
    config = ctx.config
    located = localize(ctx.base, ctx.tuned, ctx.dataset, top_k=config.localize_top_k, normalize=config.localize_normalize,
                       max_items=config.localize_max_items, skip_shared_prefix=config.localize_skip_prefix, progress=ctx.progress)
    located.save(ctx.path("localize"))
    _record_examples(ctx, located)


def _record_examples(ctx: RunContext, located: Localization) -> None:
    """Activations of the top general neurons (base and fine-tuned) on a few eval questions per topic."""
    neurons = located.general_ranking()[: ctx.config.example_neurons].tolist()
    items = ctx.dataset.select(split="eval", max_items=ctx.config.example_prompts).items
    tokenizer = ctx.base.tokenizer
    tensors: dict[str, torch.Tensor] = {}
    prompts = []
    for i, item in enumerate(items):
        ids = encode_prompt(tokenizer, item.question)
        for name, model in (("base", ctx.base), ("finetuned", ctx.tuned)):
            tensors[f"{name}/{i}"] = neuron_activations(model, ids, neurons).contiguous()
        prompts.append({"id": item.id, "topic": item.topic, "tokens": [tokenizer.decode([t]) for t in ids]})
    with atomic_path(ctx.path("localize", "examples.safetensors")) as tmp:
        save_file(tensors, str(tmp))
    _write_json(ctx.path("localize", "examples.json"), {"neurons": neurons, "prompts": prompts})


def _stage_patch(ctx: RunContext) -> None:
    config = ctx.config
    located = Localization.load(ctx.path("localize"))
    sets: dict[str, NeuronSet] = {"general": located.general}
    specific = located.specific if config.patch_specific == "all" else {config.target: located.specific[config.target]}
    sets.update({f"specific:{t}": s for t, s in specific.items()})
    sets.update({f"random:{seed}": located.general.random_matched(seed) for seed in range(config.patch_random_seeds)})
    sets["all"] = NeuronSet.for_model(ctx.base, full=True)
    items = ctx.dataset.select(split="eval", max_items=config.patch_max_items).items
    scores = patched_item_scores(ctx.base, ctx.tuned, items, sets, max_answer_tokens=config.patch_max_answer_tokens, progress=ctx.progress)
    _write_json(ctx.path("patch", "recovery.json"), {
        "target": config.target, "set_sizes": {n: len(s) for n, s in sets.items()},
        "recovery": recovery_to_dict(recovery_table(scores)),
    })


def _stage_inhibitft(ctx: RunContext) -> None:
    config = ctx.config
    out = ctx.path("inhibitft")
    located = Localization.load(ctx.path("localize"))
    variants = plan_variants(located.top_general, percents=config.inhibit_percents, modes=config.inhibit_modes,
                             scale=config.inhibit_scale, random_control=config.inhibit_random_control, seeds=[config.seed])
    # The finetune stage already trained the vanilla run (same data, seed and schedule): reuse it.
    vanilla = variants[0]
    log = _read_json(ctx.path("finetune", "model", "training_log.json"))
    tuned_stance = _read_json(ctx.path("generalization", "generalization.json"))["finetuned_stance"]
    _write_json(out / "base_stance.json", _read_json(ctx.path("base_stance", "stance.json")))
    _write_json(out / "runs" / (vanilla.name.replace("/", "__") + ".json"), {
        "variant": vanilla.describe(), "stance": tuned_stance,
        "training": {"losses": log["losses"], "seconds": log["seconds_total"], "reused": "finetune stage"},
    })
    ctx._base = ctx._tuned = None  # free memory: each variant loads its own copy
    run_inhibitft(ctx.load_base, ctx.dataset, config.target, variants, out, leaning=config.leaning,
                  config=replace(config.finetune, seed=config.seed), max_items=config.eval_max_items, progress=ctx.progress)


def _stage_figures(ctx: RunContext) -> None:
    from polineurons.viz import run_figures

    folder = ctx.path("figures")
    folder.mkdir(parents=True, exist_ok=True)
    for name, figure in run_figures(load_run(ctx.out)).items():
        # one plotly.min.js next to the pages (written by plotly once), so each page stays small and offline
        with atomic_path(folder / f"{name}.html") as tmp:
            figure.write_html(tmp, include_plotlyjs="directory", full_html=True)


def _stage_report(ctx: RunContext) -> None:
    from polineurons.report import write_report

    write_report(load_run(ctx.out), ctx.path("report.html"))


STAGE_FUNCTIONS: dict[str, Callable[[RunContext], None]] = {
    "base_stance": _stage_base_stance,
    "finetune": _stage_finetune,
    "generalization": _stage_generalization,
    "localize": _stage_localize,
    "patch": _stage_patch,
    "inhibitft": _stage_inhibitft,
    "figures": _stage_figures,
    "report": _stage_report,
}

# What to delete when a stage is recomputed.
STAGE_OUTPUTS: dict[str, tuple[str, ...]] = {stage: (stage,) for stage in STAGES}
STAGE_OUTPUTS["report"] = ("report.html",)


# ---- run ------------------------------------------------------------------------------------------


def _check_out_dir(out: Path) -> None:
    try:
        out.mkdir(parents=True, exist_ok=True)
        tempfile.TemporaryFile(dir=out).close()
    except OSError as error:
        raise RunError(f"Cannot write to the run folder {out}: {error}") from error


def _validate(config: RunConfig) -> StanceDataset:
    try:
        dataset = load_data(config.data)
    except DataError as error:
        raise RunError(str(error)) from error
    if config.target not in dataset.topics:
        raise RunError(f"Unknown target topic '{config.target}'; topics in {dataset.source}: {', '.join(dataset.topics)}.")
    if len(dataset.topics) < 2:
        raise RunError(f"{dataset.source} has one topic; cross-topic generalization needs at least two.")
    return dataset


def plan_stages(config: RunConfig, out: Path, force: Sequence[str] = ()) -> dict[str, str]:
    """``stage -> "skip" | "run"`` for a run in ``out``; raises :class:`RunError` when a finished
    stage was computed with a different configuration and is not forced."""
    unknown = [s for s in force if s not in STAGES]
    if unknown:
        raise RunError(f"Unknown stage(s) {unknown} for --force: stages are {', '.join(STAGES)}.")
    forced = set(downstream(force))
    plan: dict[str, str] = {}
    changed: list[str] = []
    for stage in STAGES:
        marker = out / "stages" / f"{stage}.json"
        if stage in forced or not marker.is_file() or any(plan[up] == "run" for up in UPSTREAM[stage]):
            plan[stage] = "run"
            continue
        stored = _read_json(marker)["inputs"]
        keys = _changed_keys(stored, config.stage_inputs(stage))
        own = [k for k in keys if k in STAGE_KEYS[stage]]
        if own or (keys and not changed):  # name the stages where a change enters, not every one after them
            changed.append(f"{stage} (changed: {', '.join(own or keys)})")
        plan[stage] = "skip"
    if changed:
        raise RunError(
            f"{out} holds results computed with a different configuration: {'; '.join(changed)}. "
            f"Use a new --out folder, or recompute with --force {changed[0].split()[0]} (it redoes the stages after it too)."
        )
    return plan


def run_pipeline(
    config: RunConfig,
    out_dir: str | Path,
    *,
    force: Sequence[str] = (),
    device: str | None = None,
    progress: bool = True,
    echo: Callable[[str], None] = print,
) -> dict:
    """Run (or resume) every stage into ``out_dir``; returns ``results.json``'s content."""
    out = Path(out_dir)
    _check_out_dir(out)
    dataset = _validate(config)
    try:
        resolve_model_path(config.model)  # a missing or misspelled model fails here, before any work
    except LookupError as error:
        raise RunError(str(error)) from error
    plan = plan_stages(config, out, force)
    _write_json(out / "config.json", {"config": config.to_dict(), "versions": library_versions()})
    ctx = RunContext(config, out, dataset, device=device, progress=progress)
    records = []
    for stage in STAGES:
        if plan[stage] == "skip":
            records.append(StageRecord(stage, "skipped", 0.0))
            continue
        (out / "stages" / f"{stage}.json").unlink(missing_ok=True)
        for name in STAGE_OUTPUTS[stage]:
            target = out / name
            if target.is_dir():
                shutil.rmtree(target)
            else:
                target.unlink(missing_ok=True)
        echo(f"[{stage}] running")
        began = time.perf_counter()
        STAGE_FUNCTIONS[stage](ctx)
        seconds = time.perf_counter() - began
        _write_json(out / "stages" / f"{stage}.json", {
            "stage": stage, "inputs": config.stage_inputs(stage), "seconds": seconds,
            "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "versions": library_versions(),
        })
        records.append(StageRecord(stage, "done", seconds))
        _write_json(out / "results.json", collect_results(load_run(out)))  # headline numbers so far
        echo(f"[{stage}] done in {seconds:.0f} s")
    results = collect_results(load_run(out))
    _write_json(out / "results.json", results)
    return results


# ---- reading a run ----------------------------------------------------------------------------------


@dataclass
class RunArtifacts:
    """Everything a finished (or partial) run wrote, as plain dicts and tensors; ``None`` where a
    stage has not finished. Figures and the report are built from this alone."""

    out: Path
    config: dict
    stages: dict[str, dict]
    base_stance: dict | None = None
    generalization: dict | None = None
    training_log: dict | None = None
    localize: dict | None = None
    patch: dict | None = None
    inhibitft: dict | None = None
    examples: dict | None = None  # {"neurons", "prompts", "activations": {"base/0": Tensor[tokens, neurons], ...}}


def load_run(out_dir: str | Path) -> RunArtifacts:
    """Read a run directory (finished stages only)."""
    out = Path(out_dir)
    if not (out / "config.json").is_file():
        raise RunError(f"{out} is not a polineurons run folder (config.json missing).")
    stages = {s: _read_json(out / "stages" / f"{s}.json") for s in STAGES if (out / "stages" / f"{s}.json").is_file()}

    def read(stage: str, *parts: str) -> dict | None:
        path = out.joinpath(*parts)
        return _read_json(path) if stage in stages and path.is_file() else None

    examples = read("localize", "localize", "examples.json")
    if examples is not None:
        examples["activations"] = load_file(str(out / "localize" / "examples.safetensors"))
    return RunArtifacts(
        out=out,
        config=_read_json(out / "config.json")["config"],
        stages=stages,
        base_stance=read("base_stance", "base_stance", "stance.json"),
        generalization=read("generalization", "generalization", "generalization.json"),
        training_log=read("finetune", "finetune", "model", "training_log.json"),
        localize=read("localize", "localize", "summary.json"),
        patch=read("patch", "patch", "recovery.json"),
        inhibitft=read("inhibitft", "inhibitft", "summary.json"),
        examples=examples,
    )


def _topic_scores(stance: dict) -> dict:
    return {t: {k: row[k] for k in ("score", "ci_low", "ci_high")} for t, row in stance["topics"].items()}


def collect_results(run: RunArtifacts) -> dict:
    """The headline numbers of a run (what ``results.json`` holds)."""
    config = run.config
    results: dict = {
        "model": config["model"], "data": config["data"], "target": config["target"], "leaning": config["leaning"],
        "preset": config["preset"], "seed": config["seed"],
        "stage_seconds": {s: round(r["seconds"], 1) for s, r in run.stages.items()},
    }
    if run.base_stance:
        results["base_stance"] = _topic_scores(run.base_stance)
    if run.training_log:
        log = run.training_log
        results["finetune"] = {"steps": log["n_steps"], "first_loss": log["losses"][0], "last_loss": log["losses"][-1],
                               "seconds": round(log["seconds_total"], 1)}
    if run.generalization:
        g = run.generalization
        results["finetuned_stance"] = _topic_scores(g["finetuned_stance"])
        results["shifts"] = {t: {k: row[k] for k in ("shift", "ci_low", "ci_high")} for t, row in g["shifts"].items()}
        results.update(target_shift=g["target_shift"], ctg=g["ctg"], ctg_ratio=g["ctg_ratio"])
    if run.localize:
        summary = run.localize["summary"]
        results["general_neurons"] = {"count": summary["general"]["count"], "fraction": summary["general"]["fraction"],
                                      "n_neurons": summary["n_neurons"]}
        results["specific_neurons"] = {t: row["count"] for t, row in summary["specific"].items()}
    if run.patch:
        target = run.patch["target"]
        recovery = run.patch["recovery"]
        on_target = {name: rows[target]["recovery"] for name, rows in recovery.items()}
        randoms = [v for name, v in on_target.items() if name.startswith("random:")]
        results["patching_recovery_on_target"] = {
            "general": on_target.get("general"),
            "random_mean": sum(randoms) / len(randoms) if randoms else None,
            "random": randoms,
            "specific_target": on_target.get(f"specific:{target}"),
            "all": on_target.get("all"),
            "full_shift": recovery["general"][target]["full_shift"],
            "n_items": recovery["general"][target]["n"],
        }
    if run.inhibitft:
        results["inhibitft"] = {
            name: {"n_neurons": row["n_neurons"], "percent": row["percent"], "mode": row["mode"], "control": row["control"],
                   "target_kept": row["target_kept"], "ctg_reduction": row["ctg_reduction"], "ctg_ratio": row["ctg_ratio"]["value"]}
            for name, row in run.inhibitft["comparisons"].items()
        }
    return results

