"""The end-to-end pipeline as resumable stages writing into one run folder.

Stages, in order (each reads only what the ones before it wrote)::

    base_stance     base model's stance on every topic's eval items (and on each check data set)
    finetune        per training seed: fine-tune a copy of the base toward a leaning on the target
                    topic (train split) and score it like the base; the first seed's model is kept
    generalization  shifts, target shift, CTG and CTG ratio per seed and pooled over seeds
    localize        PNLAC: general and topic-specific neurons; activations of the top general
                    neurons on example prompts (for the report's neuron view)
    patch           patch neuron sets (general, specific, layer-matched random, all) into the base
    mitigate        fine-tune with each mitigation and its random control; compare with vanilla
                    (the finetune stage's models are the vanilla runs)
    figures         standalone HTML figures
    report          DIR/report.html, one offline page

A stage is finished when its marker ``stages/{stage}.json`` exists; the marker records the settings
of the config sections the stage reads (its own and its upstream stages'). A rerun skips finished
stages, refuses a changed configuration unless the stage is forced, and ``force`` recomputes a stage
and everything downstream of it. An interrupted stage resumes: restarted with the same settings, it
keeps its finished units (each fine-tune with its scores is written at once).
"""

from __future__ import annotations

import shutil
import tempfile
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from safetensors.torch import save_file

from polineurons.artifacts import RunLayout, collect_results, load_run
from polineurons.config import RunConfig, RunError
from polineurons.data import encode_prompt, load_data
from polineurons.data.items import DataError, StanceDataset
from polineurons.generalization import compare, seed_headlines
from polineurons.hooks import neuron_activations
from polineurons.io import atomic_path, read_json, write_json
from polineurons.mitigate import neutral_logprob, neutral_pairs, run_mitigation
from polineurons.models import load_model, resolve_model_path
from polineurons.patching import patch_experiment
from polineurons.pnlac import Localization, localize
from polineurons.report import write_report
from polineurons.stance import StanceResult, measure_stance
from polineurons.trial import Trial, TrialSpec, run_trial
from polineurons.versions import library_versions
from polineurons.viz import run_figures


@dataclass
class RunContext:
    """What the stages share while a run is in progress: the config, the folder, the data and the
    models (loaded once, lazily)."""

    config: RunConfig
    layout: RunLayout
    dataset: StanceDataset
    checks: dict[str, StanceDataset]
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
        """The first seed's fine-tuned model."""
        if self._tuned is None:
            self._tuned = load_model(self.layout.model, device=self.device)
        return self._tuned

    def stance(self, model) -> StanceResult:
        return measure_stance(model, self.dataset, self.config.stance, progress=self.progress)

    def spec(self) -> TrialSpec:
        config = self.config
        return TrialSpec(
            self.dataset, config.target, config.leaning, config.finetune, config.stance, self.checks, config.check
        )

    def neutral(self, model) -> dict:
        """The capability check every fine-tune carries: mean log-prob of neutral text."""
        pairs = neutral_pairs(model.tokenizer, self.config.stance.neutral_items)
        return {"neutral_logprob": neutral_logprob(model, pairs)}

    def check_stances(self, model) -> dict[str, StanceResult]:
        return {
            name: measure_stance(model, data, self.config.check, progress=self.progress)
            for name, data in self.checks.items()
        }


# ---- stages ----------------------------------------------------------------------------------------


def _stage_base_stance(ctx: RunContext) -> None:
    stance = {"model": ctx.config.model, **ctx.stance(ctx.base).to_dict(), **ctx.neutral(ctx.base)}
    write_json(ctx.layout.base_stance, stance)
    for name, stance in ctx.check_stances(ctx.base).items():
        write_json(ctx.layout.check_base_stance(name), stance.to_dict())


def _stage_finetune(ctx: RunContext) -> None:
    """One trial (fine-tune, then scoring) per training seed; a finished seed is never retrained."""
    for i, seed in enumerate(ctx.config.training_seeds):
        model_dir = ctx.layout.model if i == 0 else None  # the first seed's model is kept for localize and patch
        options = {"seed": seed, "model_dir": model_dir, "measure": ctx.neutral, "progress": ctx.progress}
        _, model = run_trial(ctx.spec(), ctx.load_base, ctx.layout.seed_run(seed), **options)
        if i == 0 and model is not None:
            ctx._tuned = model  # identical to the saved copy; saves a reload


def _stage_generalization(ctx: RunContext) -> None:
    config, layout = ctx.config, ctx.layout
    options = {"leaning": config.leaning, "seeds": config.training_seeds}
    trials = [Trial.from_dict(read_json(layout.seed_run(seed))) for seed in config.training_seeds]

    def summarize(base: StanceResult, tuned: list[StanceResult]) -> dict:
        per_seed = [compare(base, t, config.target, leaning=config.leaning) for t in tuned]
        headlines = seed_headlines(base, tuned, config.target, **options)
        return {**per_seed[0].to_dict(), "headlines": headlines.to_dict(), "per_seed": [g.to_dict() for g in per_seed]}

    result = summarize(StanceResult.from_dict(read_json(layout.base_stance)), [t.stance for t in trials])
    result["finetuned_stance"] = trials[0].stance.to_dict()
    result["checks"] = {
        name: summarize(
            StanceResult.from_dict(read_json(layout.check_base_stance(name))), [t.checks[name] for t in trials]
        )
        for name in config.check_data
    }
    write_json(layout.generalization, result)


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
    config = ctx.config
    result = patch_experiment(
        ctx.base, ctx.tuned, ctx.dataset, located, config.patch, target=config.target, progress=ctx.progress
    )
    write_json(ctx.layout.patch, result)


def _stage_mitigate(ctx: RunContext) -> None:
    """The comparison of mitigations; vanilla = the finetune stage's runs, base = the base_stance stage's."""
    config, layout = ctx.config, ctx.layout
    base = read_json(layout.base_stance)
    write_json(layout.mitigate / "base.json", {"stance": base, "neutral_logprob": base["neutral_logprob"]})
    vanilla = {seed: Trial.from_dict(read_json(layout.seed_run(seed))) for seed in config.training_seeds}
    located = Localization.load(layout.localize)
    ctx._base = ctx._tuned = None  # free memory: each run loads its own copy
    options = {"seeds": config.training_seeds, "located": located, "reuse_vanilla": vanilla, "progress": ctx.progress}
    spec = replace(ctx.spec(), checks={})  # mitigations are compared on the data's eval split only
    run_mitigation(spec, ctx.load_base, config.mitigate, layout.mitigate, **options)


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
    Stage("base_stance", _stage_base_stance, ("model", "data", "stance", "check_data", "check")),
    Stage("finetune", _stage_finetune, ("model", "data", "target", "leaning", "seeds", "finetune", "stance", "check")),
    Stage("generalization", _stage_generalization, (), ("base_stance", "finetune")),
    Stage("localize", _stage_localize, ("localize", "examples"), ("finetune",)),
    Stage("patch", _stage_patch, ("patch",), ("localize",)),
    Stage("mitigate", _stage_mitigate, ("mitigate",), ("base_stance", "finetune", "localize")),
    Stage("figures", _stage_figures, (), ("generalization", "localize", "patch", "mitigate")),
    Stage("report", _stage_report, (), ("generalization", "localize", "patch", "mitigate")),
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


def load_inputs(config: RunConfig) -> tuple[StanceDataset, dict[str, StanceDataset]]:
    """The training data and each check data set; a bad data name or model name fails here, as a
    :class:`RunError`, before any work."""
    try:
        checks = {name: load_data(name) for name in config.check_data}
        resolve_model_path(config.model)
        return load_data(config.data), checks
    except (DataError, LookupError) as error:
        raise RunError(str(error)) from error


def _validate(config: RunConfig) -> tuple[StanceDataset, dict[str, StanceDataset]]:
    dataset, checks = load_inputs(config)
    if config.target not in dataset.topics:
        raise RunError(
            f"Unknown target topic '{config.target}'; topics in {dataset.source}: {', '.join(dataset.topics)}."
        )
    if len(dataset.topics) < 2:
        raise RunError(f"{dataset.source} has one topic; cross-topic generalization needs at least two.")
    for name, check in checks.items():
        if config.target not in check.topics or len(check.topics) < 2:
            raise RunError(
                f"Check data {name} needs the topic '{config.target}' and another; it has {', '.join(check.topics)}."
            )
    return dataset, checks


def plan_stages(config: RunConfig, out: Path, force: Sequence[str] = ()) -> dict[str, str]:
    """``stage -> "skip" | "run" | "resume"`` for a run in ``out``. "resume": an interrupted stage
    restarted with the same settings (and nothing upstream recomputed) keeps its finished units.
    Raises :class:`RunError` when a finished stage was computed with a different configuration and
    is not forced."""
    unknown = [s for s in force if s not in STAGES]
    if unknown:
        raise RunError(f"Unknown stage(s) {unknown} for --force: stages are {', '.join(STAGES)}.")
    layout = RunLayout(out)
    forced = set(downstream(force))
    plan: dict[str, str] = {}
    changed: list[str] = []
    for stage in PIPELINE:
        marker, started = layout.stage_marker(stage.name), layout.stage_marker(stage.name, started=True)
        upstream_redone = any(plan[up] != "skip" for up in stage.upstream)
        if stage.name in forced or not marker.is_file() or upstream_redone:
            same = started.is_file() and read_json(started)["inputs"] == stage_inputs(config, stage.name)
            clean = stage.name not in forced and not any(plan[up] == "run" for up in stage.upstream)
            plan[stage.name] = "resume" if same and clean else "run"
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
    dataset, checks = _validate(config)
    plan = plan_stages(config, out, force)
    layout = RunLayout(out)
    write_json(layout.config, {"config": config.to_dict(), "versions": library_versions()})
    ctx = RunContext(config, layout, dataset, checks, device=device, progress=progress)
    for stage in PIPELINE:
        if plan[stage.name] == "skip":
            continue
        layout.stage_marker(stage.name).unlink(missing_ok=True)
        if plan[stage.name] == "run":
            for target in layout.stage_outputs(stage.name):
                shutil.rmtree(target) if target.is_dir() else target.unlink(missing_ok=True)
        inputs = stage_inputs(config, stage.name)
        write_json(layout.stage_marker(stage.name, started=True), {"inputs": inputs})
        echo(f"[{stage.name}] {'resuming' if plan[stage.name] == 'resume' else 'running'}")
        began = time.perf_counter()
        stage.run(ctx)
        seconds = time.perf_counter() - began
        finished = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        marker = {
            "stage": stage.name,
            "inputs": inputs,
            "seconds": seconds,
            "finished": finished,
            "versions": library_versions(),
        }
        write_json(layout.stage_marker(stage.name), marker)
        layout.stage_marker(stage.name, started=True).unlink()
        write_json(layout.results, collect_results(load_run(out)))  # headline numbers so far
        echo(f"[{stage.name}] done in {seconds:.0f} s")
    results = collect_results(load_run(out))
    write_json(layout.results, results)
    return results
