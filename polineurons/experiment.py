"""The end-to-end pipeline as resumable stages in one study folder (:mod:`polineurons.study`).

Stages, in order (each reads only what the ones before it wrote)::

    base_stance     base model's stance on every topic's eval items (and on each check data set) and
                    its neutral-text check — the study's base scores
    finetune        per training seed: fine-tune the base toward a leaning on the target topic (train
                    split) and score it like the base — one study trial each; the first seed's model is kept
    generalization  shifts, target shift, CTG and CTG ratio per seed and pooled over seeds
    localize        PNLAC: general and topic-specific neurons; activations of the top general
                    neurons on example prompts (for the report's neuron view)
    patch           patch neuron sets (general, specific, layer-matched random, all) into the base
    mitigate        the mitigation comparison (:mod:`polineurons.mitigate`) in the same folder: the
                    finetune stage's trials are its vanilla runs
    figures         standalone HTML figures
    report          DIR/report.html, one offline page

A stage is finished when its marker ``stages/{stage}.json`` exists; the marker records the settings
the stage's results depend on (its own config sections and its upstream stages'; the model by
identity, the data by content) and the study files it used (``outputs``). A rerun skips finished
stages, refuses a changed configuration unless the stage is forced, and ``force`` recomputes a stage
(retraining its trials) and the stages that read from it. An interrupted stage resumes: restarted
with the same settings, it keeps its finished trials.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch
from safetensors.torch import save_file

from polineurons.artifacts import RunLayout, collect_results, load_run
from polineurons.config import RunConfig, trial_spec
from polineurons.data import encode_prompt
from polineurons.data.items import StanceDataset
from polineurons.directions import set_direction_cosines
from polineurons.errors import RunError
from polineurons.generalization import compare, seed_headlines
from polineurons.hooks import neuron_activations
from polineurons.io import atomic_path, read_json, write_json
from polineurons.launch import LaunchConfig
from polineurons.methods import neurons_fingerprint
from polineurons.mitigate import method_settings, plan_arms, recipe, run_mitigation
from polineurons.patching import disjoint_controls, patch_experiment
from polineurons.pnlac import Localization, localize
from polineurons.report import write_report
from polineurons.screening import default_layers
from polineurons.settings import as_stored, changed_settings, describe_changes
from polineurons.stance import StanceResult
from polineurons.study import Study
from polineurons.trial import TrialRequest, TrialSpec
from polineurons.versions import library_versions
from polineurons.viz import run_figures


@dataclass
class RunContext:
    """What the stages share while a run is in progress: the config, the open study folder, what its
    trials train on (``spec``) and the fine-tuned model (loaded once, lazily)."""

    config: RunConfig
    study: Study
    spec: TrialSpec
    replacing: set[str] = field(default_factory=set)  # stages recomputed from scratch (forced or upstream redone)
    outputs: dict[str, dict] = field(default_factory=dict)  # stage -> the study files it used, for its marker
    _tuned: object | None = None

    @property
    def layout(self) -> RunLayout:
        return RunLayout(self.study.root)

    @property
    def progress(self) -> bool:
        return self.study.progress

    @property
    def dataset(self) -> StanceDataset:
        return self.spec.dataset

    @property
    def base(self):
        return self.study.base_model(self.config.model)

    def model_dir(self) -> Path:
        """Where the first training seed's fine-tuned model is kept."""
        return self.study.model_path(self.study.trial_settings(self.spec, self.config.training_seeds[0]))

    @property
    def tuned(self):
        """The first seed's fine-tuned model."""
        if self._tuned is None:
            self._tuned = self.study.load(self.model_dir())
        return self._tuned


# ---- stages ----------------------------------------------------------------------------------------


def _stage_base_stance(ctx: RunContext) -> None:
    ctx.study.base_scores(ctx.spec)
    ctx.outputs["base_stance"] = ctx.study.base_files(ctx.spec)


def _stage_finetune(ctx: RunContext) -> None:
    """One trial (fine-tune, then scoring) per training seed; a finished seed is never retrained."""
    study, spec, seeds = ctx.study, ctx.spec, ctx.config.training_seeds
    # the first seed's model is kept for localize and patch
    study.run_trials([TrialRequest(spec, seed, keep_model=i == 0) for i, seed in enumerate(seeds)])
    trials = {
        str(seed): str(study.trial_path(study.trial_settings(spec, seed)).relative_to(study.root)) for seed in seeds
    }
    ctx.outputs["finetune"] = {"trials": trials, "model": str(ctx.model_dir().relative_to(study.root))}


def _stage_generalization(ctx: RunContext) -> None:
    config, spec = ctx.config, ctx.spec
    options = {"leaning": config.leaning, "seeds": config.training_seeds}
    trials = [ctx.study.stored_trial(spec, seed=seed) for seed in config.training_seeds]
    base = ctx.study.base_scores(spec)

    def summarize(base: StanceResult, tuned: list[StanceResult]) -> dict:
        per_seed = [compare(base, t, config.target, leaning=config.leaning) for t in tuned]
        headlines = seed_headlines(base, tuned, config.target, **options)
        return {**per_seed[0].to_dict(), "headlines": headlines.to_dict(), "per_seed": [g.to_dict() for g in per_seed]}

    result = summarize(base.stance, [t.stance for t in trials])
    result["finetuned_stance"] = trials[0].stance.to_dict()
    result["checks"] = {
        name: summarize(base.checks[name], [t.checks[name] for t in trials]) for name in config.check_data
    }
    write_json(ctx.layout.generalization, result)


def _stage_localize(ctx: RunContext) -> None:
    config = ctx.config
    opposite = None
    if config.localize.contrast == "leaning":  # the first seed's fine-tune toward the other leaning, kept
        spec, seed = (
            replace(ctx.spec, leaning="left" if config.leaning == "right" else "right"),
            config.training_seeds[0],
        )
        ctx.study.trial(spec, seed=seed, keep_model=True)
        path = ctx.study.model_path(ctx.study.trial_settings(spec, seed))
        ctx.outputs["localize"] = {"opposite": str(path.relative_to(ctx.study.root))}
        opposite = ctx.study.load(path)
    options = {"target": config.target, "leaning": config.leaning, "opposite": opposite, "progress": ctx.progress}
    located = localize(ctx.base, ctx.tuned, ctx.dataset, config.localize, **options)
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
    # claim (v): the general set's output weights against the leaning direction CAFT ablates
    controls = [] if result["control_error"] else disjoint_controls(located.general, config.patch.random_seeds)
    groups = {"general": [located.general]} | ({"random": controls} if controls else {})
    layers = config.mitigate.layers or default_layers(int(ctx.base.cfg.n_layers))[:2]
    options = {"max_items": config.mitigate.items}
    cosines = set_direction_cosines(ctx.base, ctx.dataset, config.target, groups, located.signs(), layers, **options)
    result["direction_cosine"] = {name: {str(k): v for k, v in rows.items()} for name, rows in cosines.items()}
    write_json(ctx.layout.patch, result)


def _stage_mitigate(ctx: RunContext) -> None:
    """The comparison of mitigations in the run's folder; its vanilla runs are the finetune stage's trials."""
    config = ctx.config
    located = Localization.load(ctx.layout.localize)
    ctx._tuned = None  # free memory: each trial loads its own copy
    options = {"seeds": config.training_seeds, "located": located, "replace_settings": "mitigate" in ctx.replacing}
    run_mitigation(ctx.study, ctx.spec, config.mitigate, **options)


def _forget_base(ctx: RunContext) -> None:
    ctx.study.forget_base(ctx.spec)


def _forget_finetune(ctx: RunContext) -> None:
    for seed in ctx.config.training_seeds:
        ctx.study.forget_trial(ctx.spec, seed=seed)


def _forget_mitigate(ctx: RunContext) -> None:
    """This run's mitigation trials (vanilla runs belong to the finetune stage)."""
    config, spec = ctx.config, ctx.spec
    located = Localization.load(ctx.layout.localize) if (ctx.layout.localize / "summary.json").is_file() else None
    neurons = neurons_fingerprint(located)
    for arm in plan_arms(config.mitigate, config.training_seeds):
        if arm.method != "vanilla":
            made = recipe(arm, method_settings(arm.method, config.mitigate, neurons, spec.finetune.seed))
            ctx.study.forget_trial(spec, seed=arm.seed, recipe=made)


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
    artifacts it reads, and (``forget``) how ``--force`` naming it deletes the study files it made (the
    stages that read from it are recomputed too, reusing the study files whose keys still match)."""

    name: str
    run: Callable[[RunContext], None]
    sections: tuple[str, ...] = ()
    upstream: tuple[str, ...] = ()
    forget: Callable[[RunContext], None] | None = None


_TRIALS = ("model", "data", "target", "leaning", "seeds", "finetune", "stance", "check_data", "check")
PIPELINE: tuple[Stage, ...] = (
    Stage("base_stance", _stage_base_stance, ("model", "data", "stance", "check_data", "check"), (), _forget_base),
    Stage("finetune", _stage_finetune, _TRIALS, (), _forget_finetune),
    Stage("generalization", _stage_generalization, (), ("base_stance", "finetune")),
    Stage("localize", _stage_localize, ("localize", "examples"), ("finetune",)),
    Stage("patch", _stage_patch, ("patch",), ("localize",)),
    Stage("mitigate", _stage_mitigate, ("mitigate",), ("base_stance", "finetune", "localize"), _forget_mitigate),
    Stage("figures", _stage_figures, (), ("generalization", "localize", "patch", "mitigate")),
    Stage("report", _stage_report, (), ("generalization", "localize", "patch", "mitigate")),
)
STAGES: tuple[str, ...] = tuple(stage.name for stage in PIPELINE)
_BY_NAME = {stage.name: stage for stage in PIPELINE}


def stage_inputs(config: RunConfig, stage: str, resolved: dict | None = None) -> dict:
    """The settings a stage's results depend on, upstream stages' included (flattened, dotted).
    ``resolved`` replaces settings by what they resolve to (the model by identity, data by content)."""
    sections: set[str] = set()
    pending = [stage]
    while pending:
        current = _BY_NAME[pending.pop()]
        sections.update(current.sections)
        pending.extend(current.upstream)
    values = config.values(tuple(sections))
    values.update({key: value for key, value in (resolved or {}).items() if key in values})
    return as_stored({key: values[key] for key in sorted(values)})


def resolve_inputs(study: Study, spec: TrialSpec) -> dict:
    """The model by identity and the data by content: a folder's contents replaced under the same name
    are a changed setting."""
    return {
        "model": study.identity(spec.model),
        "data": spec.dataset.identity,
        "check_data": {name: d.identity for name, d in spec.checks.items()},
    }


def downstream(stages: Iterable[str]) -> list[str]:
    """The given stages and every stage that reads from them, in pipeline order."""
    chosen = set(stages)
    for stage in PIPELINE:
        if any(up in chosen for up in stage.upstream):
            chosen.add(stage.name)
    return [s for s in STAGES if s in chosen]


def plan_stages(
    config: RunConfig, out: Path, force: Sequence[str] = (), resolved: dict | None = None
) -> dict[str, str]:
    """``stage -> "skip" | "run" | "resume"`` for a run in ``out``. "resume": an interrupted stage
    restarted with the same settings (and nothing upstream recomputed) keeps its finished units.
    Raises :class:`RunError` when a finished stage was computed with a different configuration and
    is not forced, naming the settings that changed."""
    unknown = [s for s in force if s not in STAGES]
    if unknown:
        raise RunError(f"Unknown stage(s) {unknown} for --force: stages are {', '.join(STAGES)}.")
    layout = RunLayout(out)
    forced = set(downstream(force))
    plan: dict[str, str] = {}
    changed: list[tuple[str, str]] = []
    for stage in PIPELINE:
        marker, started = layout.stage_marker(stage.name), layout.stage_marker(stage.name, started=True)
        current = stage_inputs(config, stage.name, resolved)
        upstream_redone = any(plan[up] != "skip" for up in stage.upstream)
        if stage.name in forced or not marker.is_file() or upstream_redone:
            same = started.is_file() and read_json(started)["inputs"] == current
            clean = stage.name not in forced and not any(plan[up] == "run" for up in stage.upstream)
            plan[stage.name] = "resume" if same and clean else "run"
            continue
        changes = changed_settings(read_json(marker)["inputs"], current)
        own = [c for c in changes if c[0].split(".")[0] in stage.sections]
        if own or (changes and not changed):  # name the stages where a change enters, not every one after them
            changed.append((stage.name, describe_changes(own or changes)))
        plan[stage.name] = "skip"
    if changed:
        named = "; ".join(f"{stage}: {what}" for stage, what in changed)
        raise RunError(
            f"{out} holds results computed with a different configuration ({named}). Use a new --out folder, "
            f"or recompute with --force {changed[0][0]} (it redoes the stages that read from it too)."
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
    launch: LaunchConfig = LaunchConfig(),
) -> dict:
    """Run (or resume) every stage into the study folder ``out_dir`` (locked while it runs); returns
    ``results.json``'s content. ``launch``: where the trials (seeds, mitigations) train.

    Example::

        results = run_pipeline(RunConfig.from_preset("quick", target="race"), "runs/race")
        run = load_run("runs/race")
    """
    spec = trial_spec(config)
    options = {"device": device, "progress": progress, "echo": echo, "dtype": config.dtype, "launch": launch}
    with Study.open(out_dir, **options) as study:
        resolved = resolve_inputs(study, spec)
        plan = plan_stages(config, study.root, force, resolved)
        layout = RunLayout(study.root)
        write_json(layout.config, {"config": config.to_dict(), "versions": library_versions()})
        forced = set(downstream(force))
        replacing = {
            s.name
            for s in PIPELINE
            if plan[s.name] == "run" and (s.name in forced or layout.stage_marker(s.name).is_file())
        }
        ctx = RunContext(config, study, spec, replacing=replacing)
        for stage in PIPELINE:
            if plan[stage.name] == "skip":
                continue
            layout.stage_marker(stage.name).unlink(missing_ok=True)
            if plan[stage.name] == "run":
                if stage.name in force and stage.forget is not None:  # named: its study files too
                    stage.forget(ctx)
                for target in layout.stage_outputs(stage.name):
                    shutil.rmtree(target) if target.is_dir() else target.unlink(missing_ok=True)
            inputs = stage_inputs(config, stage.name, resolved)
            write_json(layout.stage_marker(stage.name, started=True), {"inputs": inputs})
            echo(f"[{stage.name}] {'resuming' if plan[stage.name] == 'resume' else 'running'}")
            began = time.perf_counter()
            stage.run(ctx)
            seconds = time.perf_counter() - began
            marker = {
                "stage": stage.name,
                "inputs": inputs,
                "outputs": ctx.outputs.get(stage.name, {}),
                "seconds": seconds,
                "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                "versions": library_versions(),
            }
            write_json(layout.stage_marker(stage.name), marker)
            layout.stage_marker(stage.name, started=True).unlink()
            write_json(layout.results, collect_results(load_run(study.root)))  # headline numbers so far
            echo(f"[{stage.name}] done in {seconds:.0f} s")
        results = collect_results(load_run(study.root))
        write_json(layout.results, results)
    return results
