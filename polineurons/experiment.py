"""The end-to-end pipeline as resumable stages writing into one run folder.

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

A stage is finished when its marker ``stages/{stage}.json`` exists; the marker records the settings
of the config sections the stage reads (its own and its upstream stages'). A rerun skips finished
stages, refuses a changed configuration unless the stage is forced, and ``force`` recomputes a
stage and everything downstream of it.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import save_file

from polineurons.artifacts import RunLayout, collect_results, load_run
from polineurons.config import RunConfig, RunError
from polineurons.data import encode_prompt, load_data
from polineurons.data.items import DataError, StanceDataset
from polineurons.finetune import finetune, training_pairs
from polineurons.generalization import compare
from polineurons.hooks import neuron_activations
from polineurons.inhibitft import plan_variants, run_inhibitft, run_path
from polineurons.io import atomic_path, read_json, write_json
from polineurons.models import load_model, resolve_model_path
from polineurons.patching import patch_experiment
from polineurons.pnlac import Localization, localize
from polineurons.report import write_report
from polineurons.stance import StanceResult, measure_stance
from polineurons.versions import library_versions
from polineurons.viz import run_figures


@dataclass
class RunContext:
    """What the stages share while a run is in progress: the config, the folder, the data and the
    models (loaded once, lazily)."""

    config: RunConfig
    layout: RunLayout
    dataset: StanceDataset
    device: str | None = None
    progress: bool = True
    _base: object | None = None
    _tuned: object | None = None

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
            self._tuned = load_model(str(self.layout.model), device=self.device)
        return self._tuned

    def stance(self, model) -> StanceResult:
        return measure_stance(model, self.dataset, self.config.stance, progress=self.progress)


# ---- stages ----------------------------------------------------------------------------------------


def _stage_base_stance(ctx: RunContext) -> None:
    write_json(ctx.layout.base_stance, {"model": ctx.config.model, **ctx.stance(ctx.base).to_dict()})


def _stage_finetune(ctx: RunContext) -> None:
    config = ctx.config
    model = ctx.load_base()
    pairs = training_pairs(ctx.dataset, config.target, config.leaning)
    meta = {"base_model": config.model, "data": ctx.dataset.source, "topic": config.target, "leaning": config.leaning}
    finetune(model, pairs, config.finetune, out_dir=ctx.layout.model, meta=meta, progress=ctx.progress)
    ctx._tuned = model  # identical to the saved copy; saves a reload


def _stage_generalization(ctx: RunContext) -> None:
    base = StanceResult.from_dict(read_json(ctx.layout.base_stance))
    after = ctx.stance(ctx.tuned)
    result = compare(base, after, ctx.config.target)
    write_json(ctx.layout.generalization, {**result.to_dict(), "finetuned_stance": after.to_dict()})


def _stage_localize(ctx: RunContext) -> None:
    located = localize(ctx.base, ctx.tuned, ctx.dataset, ctx.config.localize, progress=ctx.progress)
    located.save(ctx.layout.localize)
    _record_examples(ctx, located)


def _record_examples(ctx: RunContext, located: Localization) -> None:
    """Activations of the top general neurons (base and fine-tuned) on a few eval questions per topic."""
    neurons = located.general_ranking()[: ctx.config.examples.neurons].tolist()
    items = ctx.dataset.select(split="eval", max_items=ctx.config.examples.prompts).items
    tokenizer = ctx.base.tokenizer
    tensors: dict[str, torch.Tensor] = {}
    prompts = []
    for i, item in enumerate(items):
        ids = encode_prompt(tokenizer, item.question)
        for name, model in (("base", ctx.base), ("finetuned", ctx.tuned)):
            tensors[f"{name}/{i}"] = neuron_activations(model, ids, neurons).contiguous()
        prompts.append({"id": item.id, "topic": item.topic, "tokens": [tokenizer.decode([t]) for t in ids]})
    with atomic_path(ctx.layout.example_activations) as tmp:
        save_file(tensors, str(tmp))
    write_json(ctx.layout.examples, {"neurons": neurons, "prompts": prompts})


def _stage_patch(ctx: RunContext) -> None:
    located = Localization.load(ctx.layout.localize)
    result = patch_experiment(
        ctx.base, ctx.tuned, ctx.dataset, located, ctx.config.patch, target=ctx.config.target, progress=ctx.progress
    )
    write_json(ctx.layout.patch, result)


def _stage_inhibitft(ctx: RunContext) -> None:
    config = ctx.config
    out = ctx.layout.inhibitft
    located = Localization.load(ctx.layout.localize)
    variants = plan_variants(located.top_general, config.inhibit, seeds=[config.finetune.seed])
    # The finetune stage already trained the vanilla run (same data, seed and schedule): reuse it.
    vanilla = variants[0]
    log = read_json(ctx.layout.training_log)
    tuned_stance = read_json(ctx.layout.generalization)["finetuned_stance"]
    write_json(out / "base_stance.json", read_json(ctx.layout.base_stance))
    write_json(
        run_path(out, vanilla),
        {
            "variant": vanilla.describe(),
            "stance": tuned_stance,
            "training": {"losses": log["losses"], "seconds": log["seconds_total"], "reused": "finetune stage"},
        },
    )
    ctx._base = ctx._tuned = None  # free memory: each variant loads its own copy
    run_inhibitft(
        ctx.load_base,
        ctx.dataset,
        config.target,
        variants,
        out,
        leaning=config.leaning,
        config=config.finetune,
        stance=config.stance,
        progress=ctx.progress,
    )


def _stage_figures(ctx: RunContext) -> None:
    folder = ctx.layout.figures
    folder.mkdir(parents=True, exist_ok=True)
    for name, figure in run_figures(load_run(ctx.layout.root)).items():
        # one plotly.min.js next to the pages (written by plotly once), so each page stays small and offline
        with atomic_path(folder / f"{name}.html") as tmp:
            figure.write_html(tmp, include_plotlyjs="directory", full_html=True)


def _stage_report(ctx: RunContext) -> None:
    write_report(load_run(ctx.layout.root), ctx.layout.report)


@dataclass(frozen=True)
class Stage:
    """One step of the pipeline: what it runs, which config sections it reads, which stages'
    artifacts it reads."""

    name: str
    run: Callable[[RunContext], None]
    sections: tuple[str, ...] = ()
    upstream: tuple[str, ...] = ()


PIPELINE: tuple[Stage, ...] = (
    Stage("base_stance", _stage_base_stance, ("model", "data", "stance")),
    Stage("finetune", _stage_finetune, ("model", "data", "target", "leaning", "finetune")),
    Stage("generalization", _stage_generalization, ("stance",), ("base_stance", "finetune")),
    Stage("localize", _stage_localize, ("localize", "examples"), ("finetune",)),
    Stage("patch", _stage_patch, ("patch",), ("localize",)),
    Stage("inhibitft", _stage_inhibitft, ("inhibit",), ("base_stance", "generalization", "localize")),
    Stage("figures", _stage_figures, (), ("generalization", "localize", "patch", "inhibitft")),
    Stage("report", _stage_report, (), ("generalization", "localize", "patch", "inhibitft")),
)
STAGES: tuple[str, ...] = tuple(stage.name for stage in PIPELINE)
_BY_NAME = {stage.name: stage for stage in PIPELINE}


def stage_inputs(config: RunConfig, stage: str) -> dict:
    """The settings a stage's results depend on, upstream stages' included (flattened, dotted)."""
    sections: set[str] = set()
    pending = [stage]
    while pending:
        current = _BY_NAME[pending.pop()]
        sections.update(current.sections)
        pending.extend(current.upstream)
    values = config.values(tuple(sections))
    return {key: values[key] for key in sorted(values)}


def downstream(stages: Iterable[str]) -> list[str]:
    """The given stages and every stage that reads from them, in pipeline order."""
    chosen = set(stages)
    for stage in PIPELINE:
        if any(up in chosen for up in stage.upstream):
            chosen.add(stage.name)
    return [s for s in STAGES if s in chosen]


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
        raise RunError(
            f"Unknown target topic '{config.target}'; topics in {dataset.source}: {', '.join(dataset.topics)}."
        )
    if len(dataset.topics) < 2:
        raise RunError(f"{dataset.source} has one topic; cross-topic generalization needs at least two.")
    try:
        resolve_model_path(config.model)  # a missing or misspelled model fails here, before any work
    except LookupError as error:
        raise RunError(str(error)) from error
    return dataset


def plan_stages(config: RunConfig, out: Path, force: Sequence[str] = ()) -> dict[str, str]:
    """``stage -> "skip" | "run"`` for a run in ``out``; raises :class:`RunError` when a finished
    stage was computed with a different configuration and is not forced."""
    unknown = [s for s in force if s not in STAGES]
    if unknown:
        raise RunError(f"Unknown stage(s) {unknown} for --force: stages are {', '.join(STAGES)}.")
    layout = RunLayout(out)
    forced = set(downstream(force))
    plan: dict[str, str] = {}
    changed: list[str] = []
    for stage in PIPELINE:
        marker = layout.stage_marker(stage.name)
        if stage.name in forced or not marker.is_file() or any(plan[up] == "run" for up in stage.upstream):
            plan[stage.name] = "run"
            continue
        stored, current = read_json(marker)["inputs"], stage_inputs(config, stage.name)
        keys = sorted(k for k in set(stored) | set(current) if stored.get(k) != current.get(k))
        own = [k for k in keys if k in config.values(stage.sections)]
        if own or (keys and not changed):  # name the stages where a change enters, not every one after them
            changed.append(f"{stage.name} (changed: {', '.join(own or keys)})")
        plan[stage.name] = "skip"
    if changed:
        raise RunError(
            f"{out} holds results computed with a different configuration: {'; '.join(changed)}. "
            f"Use a new --out folder, or recompute with --force {changed[0].split()[0]} "
            "(it redoes the stages after it too)."
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
    plan = plan_stages(config, out, force)
    layout = RunLayout(out)
    write_json(layout.config, {"config": config.to_dict(), "versions": library_versions()})
    ctx = RunContext(config, layout, dataset, device=device, progress=progress)
    for stage in PIPELINE:
        if plan[stage.name] == "skip":
            continue
        layout.stage_marker(stage.name).unlink(missing_ok=True)
        for target in layout.stage_outputs(stage.name):
            if target.is_dir():
                shutil.rmtree(target)
            else:
                target.unlink(missing_ok=True)
        echo(f"[{stage.name}] running")
        began = time.perf_counter()
        stage.run(ctx)
        seconds = time.perf_counter() - began
        write_json(
            layout.stage_marker(stage.name),
            {
                "stage": stage.name,
                "inputs": stage_inputs(config, stage.name),
                "seconds": seconds,
                "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                "versions": library_versions(),
            },
        )
        write_json(layout.results, collect_results(load_run(out)))  # headline numbers so far
        echo(f"[{stage.name}] done in {seconds:.0f} s")
    results = collect_results(load_run(out))
    write_json(layout.results, results)
    return results
