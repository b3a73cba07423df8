"""The comparison of mitigations as a plan of trials in a study folder: vanilla per seed, then every
method × strength × seed, each with its matched random control (the methods: :mod:`polineurons.methods`).

A call trains what the folder lacks and writes ``mitigation.json`` over EVERY mitigation trial the
folder holds (:mod:`polineurons.frontier`): a second call with other methods, strengths or seeds adds
to the same frontier. Other shared settings (model, data, target, leaning, training, scoring) or, per
method, other settings it reads (its units, the general neurons) are refused, naming what changed.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from polineurons.config import RunConfig, trial_spec
from polineurons.errors import UserError
from polineurons.frontier import Arm, league_text, summarize
from polineurons.hooks import Intervention
from polineurons.io import write_json
from polineurons.launch import LaunchConfig
from polineurons.methods import Ingredients, MitigateConfig, directions_of, method, neurons_fingerprint
from polineurons.pnlac import Localization
from polineurons.report import write_pages
from polineurons.settings import as_stored
from polineurons.study import Study
from polineurons.trial import Trial, TrialRequest, TrialSpec
from polineurons.versions import library_versions

__all__ = [
    "Arm",
    "MitigateConfig",
    "comparison_ingredients",
    "league_text",
    "mitigate_folder",
    "plan_arms",
    "run_mitigation",
]


def plan_arms(config: MitigateConfig, seeds: Sequence[int]) -> list[Arm]:
    """Vanilla per seed, then every method × strength × seed, each followed by its control."""
    arms = [Arm("vanilla", seed=seed) for seed in seeds]
    for name in config.methods:
        for strength in config.strengths_of(name):
            for seed in seeds:
                arms.append(Arm(name, strength, seed))
                if config.controls:
                    arms.append(Arm(name, strength, seed, control=True))
    return arms


@dataclass(frozen=True, eq=False)
class ArmIntervention:
    """One arm's intervention, built from the comparison's shared ingredients in whichever process
    trains the arm (this one, or a Ray worker that receives it with the ingredients computed)."""

    ingredients: Ingredients
    arm: Arm

    def prepare(self, study: Study) -> None:
        """Compute what the arm needs (directions, a steering vector...) here, once per comparison."""
        self(study)

    def __call__(self, study: Study) -> Intervention:
        chosen, arm = method(self.arm.method), self.arm
        ingredients = self.ingredients.attach(lambda: study.base_model(self.ingredients.spec.model))
        return chosen.build(ingredients, arm.strength, arm.seed, arm.control)


def method_settings(name: str, config: MitigateConfig, neurons: str | None, directions_seed: int) -> dict:
    """What method ``name``'s trials share beyond strength, control and seed: the settings it reads
    (its units; the general neurons' fingerprint; the seed of the vanilla model PCA directions use)."""
    chosen = method(name)
    made = {key: getattr(config, key) for key in chosen.uses}
    if chosen.neurons:
        made["neurons"] = neurons
        made["neuron_control"] = "disjoint"  # controls drawn outside the chosen neurons (older trials: not)
    kind = directions_of(name, config)
    if kind in ("pca", "flip"):
        made["directions_seed"] = directions_seed
        if config.direction_tokens != "all":  # trials from before the option read every token: their keys stay
            made["direction_tokens"] = config.direction_tokens
    if kind == "pca":
        made["target_pcs"] = "projected out"  # older pca trials kept the target's own PCs
    return as_stored(made)


def recipe(arm: Arm, settings: dict) -> dict | None:
    """What a trial's intervention is made of (part of its key): the method, strength, control and the
    method's settings (:func:`method_settings`); None for vanilla."""
    if arm.method == "vanilla":
        return None
    return {"method": arm.method, "strength": arm.strength, "control": arm.control, "label": arm.label, **settings}


def shared_settings(study: Study, spec: TrialSpec) -> dict:
    """What every trial of a comparison shares (they differ in method, strength, control and seed)."""
    vanilla = study.trial_settings(spec, spec.finetune.seed)
    shared = {k: v for k, v in vanilla.items() if k != "intervention"}
    shared["finetune"] = {k: v for k, v in shared["finetune"].items() if k != "seed"}
    return shared


def methods_of(plans: Mapping[str, dict]) -> dict[str, dict]:
    """``method -> settings`` of the ``mitigate/METHOD`` plans among a study's stored ``plans``: every
    method the folder's comparison holds (:func:`method_settings`)."""
    return {name.split("/", 1)[1]: s for name, s in plans.items() if name.startswith("mitigate/")}


def folder_arms(study: Study, spec: TrialSpec) -> list[tuple[Arm, Trial]]:
    """Every trial in the folder that belongs to its comparison: trained with ``spec``'s shared settings,
    vanilla or a method with the settings the folder holds for it (any strength, control, seed)."""
    return comparison_arms(study.trials(), shared_settings(study, spec), methods_of(study.plans()))


def comparison_arms(
    trials: Iterable[tuple[dict, Trial]], shared: dict, methods: Mapping[str, dict]
) -> list[tuple[Arm, Trial]]:
    """The ``(settings, trial)`` pairs of a comparison whose shared settings are ``shared`` (as stored),
    as arms: vanilla, or a method with the settings ``methods`` holds for it."""
    found = []
    for settings, trial in trials:
        seed, made = settings["finetune"]["seed"], settings["intervention"]
        common = {**settings, "finetune": {k: v for k, v in settings["finetune"].items() if k != "seed"}}
        if {k: v for k, v in common.items() if k != "intervention"} != shared:
            continue
        if made is None:
            found.append((Arm("vanilla", seed=seed), trial))
        elif made.get("method") in methods:
            arm = Arm(made["method"], made["strength"], seed, made["control"])
            if made == recipe(arm, methods[arm.method]):
                found.append((arm, trial))
    return found


def comparison_ingredients(
    study: Study, spec: TrialSpec, config: MitigateConfig, located: Localization | None = None
) -> Ingredients:
    """The ingredients of ``spec``'s comparison in ``study``: its resident base model and, for PCA and
    flip directions, the vanilla fine-tunes of the first seed (``spec.finetune.seed``) they are read
    from, trained (and kept in the folder) when first needed."""

    def vanilla_model(leaning: str = spec.leaning):
        # Toward the other leaning (flip directions), its settings differ in the leaning: it never
        # joins the comparison's trials.
        leaned = replace(spec, leaning=leaning)
        study.trial(leaned, seed=spec.finetune.seed, keep_model=True)
        return study.load(study.model_path(study.trial_settings(leaned, spec.finetune.seed)))

    opposite = functools.partial(vanilla_model, "left" if spec.leaning == "right" else "right")
    base = functools.partial(study.base_model, spec.model)
    return Ingredients(config, spec, base, located=located, vanilla_model=vanilla_model, opposite_model=opposite)


def run_mitigation(
    study: Study,
    spec: TrialSpec,
    config: MitigateConfig,
    *,
    seeds: Sequence[int] = (0,),
    located: Localization | None = None,
    replace_settings: bool = False,
) -> dict:
    """Train and score every arm of :func:`plan_arms` that ``study`` lacks, then write
    ``mitigation.json`` over every mitigation trial the folder holds (returned). ``located`` gives the
    general neurons of the neuron methods; PCA directions come from the vanilla fine-tune of
    ``spec.finetune.seed`` (flip directions: from it and the same toward the other leaning).
    ``replace_settings``: this call's settings replace the folder's (a plan that
    recomputes its mitigations), instead of being refused when they differ.

    Example::

        with Study.open("runs/frontier") as study:
            spec, config = trial_spec(RunConfig()), MitigateConfig(methods=("caft", "steer"))
            result = run_mitigation(study, spec, config, seeds=(0, 1, 2))
    """
    if not seeds:
        raise ValueError("run_mitigation needs at least one seed.")
    if located is None and any(method(m).neurons for m in config.methods):
        names = ", ".join(m for m in config.methods if method(m).neurons)
        raise UserError(f"{names} need general neurons: give a `polineurons localize` folder (--neurons).")
    neurons = neurons_fingerprint(located)
    replacing = {"replace": replace_settings}
    study.guard("mitigate", shared_settings(study, spec), **replacing)
    settings = {name: method_settings(name, config, neurons, spec.finetune.seed) for name in config.methods}
    for name, made in settings.items():
        study.guard(f"mitigate/{name}", made, **replacing)
    base = study.base_scores(spec)

    ingredients = comparison_ingredients(study, spec, config, located)
    requests = [
        TrialRequest(spec, arm.seed)
        if arm.method == "vanilla"
        else TrialRequest(spec, arm.seed, recipe(arm, settings[arm.method]), ArmIntervention(ingredients, arm))
        for arm in plan_arms(config, seeds)
    ]
    study.run_trials(requests)
    result = summarize(base, folder_arms(study, spec), spec.target, spec.leaning)
    methods = methods_of(study.plans())
    result.update(
        {
            "model": spec.model,
            "data": spec.dataset.source,
            "check_data": list(spec.checks),
            "method_settings": {name: methods[name] for name in result["frontier"]},
            "versions": library_versions(),
        }
    )
    write_json(study.root / "mitigation.json", result)
    return result


def mitigate_folder(
    out: str | os.PathLike,
    config: RunConfig,
    *,
    neurons: str | os.PathLike | None = None,
    device: str | None = None,
    progress: bool = True,
    echo: Callable[[str], None] = print,
    launch: LaunchConfig = LaunchConfig(),
) -> tuple[dict, list[Path]]:
    """``config``'s mitigations (``config.mitigate``, every training seed) in the study folder ``out``
    (locked meanwhile), then every page of the folder (:func:`polineurons.report.write_pages`:
    ``mitigation.html``, and a run's report). ``neurons``: a ``polineurons localize`` folder (default:
    ``out/localize`` when there is one); ``launch``: where the trials train."""
    spec = trial_spec(config)
    default = Path(out) / "localize"
    neurons = neurons or (default if (default / "summary.json").is_file() else None)
    located = Localization.load(neurons) if neurons else None
    options = {"device": device, "progress": progress, "echo": echo, "dtype": config.dtype, "launch": launch}
    with Study.open(out, **options) as study:
        result = run_mitigation(study, spec, config.mitigate, seeds=config.training_seeds, located=located)
        pages = write_pages(study.root)
    return result, pages
