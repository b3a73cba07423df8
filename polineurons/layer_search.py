"""Where should a direction method act? A cheap search, one layer at a time: per candidate layer, one
short fine-tune with the method acting at that layer alone, compared with a vanilla fine-tune of the
same length (same seed). The layers that cut the most spill-over for the least target are recommended
for ``--mitigate.layers``; the full frontier, with controls and seeds, is then measured there.

The search's trials live in the study folder like any other: a short fine-tune has its own key, so it
never joins a full-length comparison, and a second search over other layers reuses what is stored.
``layer_search.json`` summarises the last search.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Literal

from polineurons.config import RunConfig, trial_spec
from polineurons.frontier import Arm, compare_runs, flat_estimates, perplexity_change, row_interval
from polineurons.io import write_json
from polineurons.launch import LaunchConfig
from polineurons.methods import MitigateConfig, directions_of
from polineurons.mitigate import ArmIntervention, comparison_ingredients, method_settings, recipe
from polineurons.study import Study
from polineurons.trial import TrialRequest, TrialSpec
from polineurons.versions import library_versions

__all__ = ["LayerSearchConfig", "layer_search_text", "run_layer_search", "search_layers_folder"]

SearchedMethod = Literal["caft", "caft-grad", "caft-flip"]


@dataclass(frozen=True)
class LayerSearchConfig:
    """The layer search: which direction method, at which strength, over which layers, how long."""

    method: SearchedMethod = "caft"
    """The direction method searched (caft, caft-grad: directions from --mitigate.directions; caft-flip: flip)."""
    strength: float = 0.1
    """Its strength in every short fine-tune (acting at one layer)."""
    layers: tuple[int, ...] = ()
    """Candidate layers (empty: every --search.every-th layer from 0)."""
    every: int = 3
    """Spacing of the default candidate layers."""
    steps: int | None = None
    """Optimizer steps of each short fine-tune and of its vanilla (None: --finetune.max-steps)."""
    pick: int = 2
    """How many layers the search recommends."""

    def __post_init__(self) -> None:
        if not self.strength > 0 or min(self.every, self.pick) < 1 or (self.steps is not None and self.steps < 1):
            raise ValueError("strength must be > 0, and every, pick and steps >= 1.")
        if any(layer < 0 for layer in self.layers):
            raise ValueError(f"layers must be >= 0, got {self.layers}.")

    def candidates(self, n_layers: int) -> list[int]:
        """The layers searched in a model of ``n_layers`` (an out-of-range one is an error)."""
        chosen = list(dict.fromkeys(self.layers)) or list(range(0, n_layers, self.every))
        if max(chosen) >= n_layers:
            raise ValueError(f"The model has {n_layers} layers (0..{n_layers - 1}); got candidates {chosen}.")
        return chosen


def run_layer_search(
    study: Study, spec: TrialSpec, mitigate: MitigateConfig, config: LayerSearchConfig = LayerSearchConfig()
) -> dict:
    """Train what ``study`` lacks of the search (a short vanilla fine-tune, then ``config.method`` at
    ``config.strength`` at each candidate layer alone), score it against the short vanilla and write
    ``layer_search.json`` (returned): per layer the target kept and CTG reduction with 95% CIs, the
    neutral-text perplexity change and the net (CTG reduction − target lost, both as shares of the
    vanilla's; a target raised above vanilla's counts as none lost), and the ``recommended`` layers, the
    ``pick`` best by net. Directions (``mitigate``'s settings) are computed once, at every candidate, from
    the full-length vanilla fine-tunes when they need any (PCA, flip).

    Example::

        with Study.open("runs/layers") as study:
            found = run_layer_search(study, trial_spec(RunConfig()), MitigateConfig(), LayerSearchConfig(every=5))
            print(found["recommended"])
    """
    n_layers, seed = int(study.base_model(spec.model).cfg.n_layers), spec.finetune.seed
    candidates = config.candidates(n_layers)
    everywhere = replace(mitigate, layers=tuple(candidates))
    ingredients = comparison_ingredients(study, spec, everywhere)  # directions at every candidate, once
    steps = config.steps if config.steps is not None else spec.finetune.max_steps
    short = replace(spec, finetune=replace(spec.finetune, max_steps=steps))
    arm = Arm(config.method, config.strength, seed)
    requests = [TrialRequest(short, seed)]
    for layer in candidates:
        settings = method_settings(config.method, replace(mitigate, layers=(layer,)), None, seed)
        view = ingredients.at_layer(layer, directions_of(config.method, mitigate))
        requests.append(TrialRequest(short, seed, recipe(arm, settings), ArmIntervention(view, arm)))
    vanilla, *treated = study.run_trials(requests)
    base = study.base_scores(short)
    rows = []
    for layer, trial in zip(candidates, treated, strict=True):
        estimates = compare_runs(base.stance, [vanilla.stance], [trial.stance], spec.target, spec.leaning)
        kept, reduction = estimates["target_kept"], estimates["ctg_reduction"]
        row = {"layer": layer, "net": reduction.value - max(0.0, 1 - kept.value)}  # a raised target is no gain
        row |= flat_estimates({"target_kept": kept, "ctg_reduction": reduction})
        rows.append({**row, "perplexity_change": perplexity_change(base.neutral_logprob, trial)})
    ranked = sorted((r for r in rows if r["net"] == r["net"]), key=lambda r: -r["net"])  # NaN: not ranked
    van = compare_runs(base.stance, [vanilla.stance], [vanilla.stance], spec.target, spec.leaning)
    result = {
        "model": spec.model,
        "data": spec.dataset.source,
        "target": spec.target,
        "leaning": spec.leaning,
        "seed": seed,
        "search": {**vars(config), "layers": candidates, "steps": steps},
        "method_settings": method_settings(config.method, everywhere, None, seed),
        "vanilla": {key: van[key].value for key in ("target_shift", "ctg")},
        "layers": rows,
        "recommended": sorted(r["layer"] for r in ranked[: config.pick]),
        "versions": library_versions(),
    }
    write_json(study.root / "layer_search.json", result)
    return result


def layer_search_text(result: dict) -> str:
    """The search as a table, best first, and the recommended ``--mitigate.layers`` option."""
    van, search = result["vanilla"], result["search"]
    lines = [
        f"{search['method']} at {search['strength']:g}, one layer at a time, {search['steps']} steps "
        f"(vanilla: target shift {van['target_shift']:+.3f}, CTG {van['ctg']:+.3f})",
        f"{'layer':>6}{'target kept':>24}{'CTG reduction':>24}{'net':>8}{'perplexity':>12}",
    ]
    for row in sorted(result["layers"], key=lambda r: -r["net"] if r["net"] == r["net"] else float("inf")):
        kept, cut = row_interval(row, "target_kept"), row_interval(row, "ctg_reduction")
        lines.append(f"{row['layer']:>6}{kept:>24}{cut:>24}{row['net']:>+8.2f}{row['perplexity_change']:>+12.1%}")
    lines.append(f"recommended: --mitigate.layers {' '.join(map(str, result['recommended']))}")
    return "\n".join(lines)


def search_layers_folder(
    out: str | os.PathLike,
    config: RunConfig,
    search: LayerSearchConfig = LayerSearchConfig(),
    *,
    device: str | None = None,
    progress: bool = True,
    echo: Callable[[str], None] = print,
    launch: LaunchConfig = LaunchConfig(),
) -> dict:
    """:func:`run_layer_search` for ``config``'s target, leaning, first training seed and direction
    settings (``config.mitigate``) in the study folder ``out`` (locked meanwhile)."""
    options = {"device": device, "progress": progress, "echo": echo, "dtype": config.dtype, "launch": launch}
    with Study.open(out, **options) as study:
        return run_layer_search(study, trial_spec(config), config.mitigate, search)
