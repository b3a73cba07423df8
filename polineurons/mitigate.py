"""The comparison of mitigations: fine-tune with each intervention (and its matched random control)
and measure how much of the target shift it keeps and how much spill-over it leaves.

Methods (all active during training only; the saved model carries no hook), at relative strength s
(s = 0 is vanilla, bit for bit; s = 1 is each method's unit):

==============  =====================================================  ==============================
method          intervention                                           control
==============  =====================================================  ==============================
inhibit-zero    zero the top s·percent% general neurons (InhibitFT)    layer-matched random neurons
inhibit-freeze  hold those neurons' weights fixed                      layer-matched random neurons
stopgrad        forward unchanged, no gradient through those neurons   layer-matched random neurons
caft            ablate leaning directions from the residual stream:     random subspace, same rank
                h − s·(h·Q)Qᵀ at the chosen layers (CAFT)              and layers
caft-grad       the same, gradient only (forward unchanged)            random subspace
steer           add s·v at one middle layer (preventative steering),   random vector, same norm
                v = the leaning's mean answer difference
kl              loss += s·β·KL(p_θ ‖ p_base) on the other topics'      the same on neutral text
                training texts
==============  =====================================================  ==============================

Every run is a :mod:`~polineurons.trial` (resumable: a finished run is never retrained) that also
measures the mean log-prob of neutral, non-political text (the capability cost). Comparisons with the
vanilla run of the same seed use an item bootstrap paired across base, vanilla and treated runs.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal, get_args

import numpy as np

from polineurons.data import encode_prompt, encode_text, load_neutral
from polineurons.directions import difference_pcs, leaning_directions, random_like, random_vector
from polineurons.errors import UserError
from polineurons.generalization import leaning_sign
from polineurons.hooks import (
    AblateDirections,
    FreezeNeurons,
    Intervention,
    ScaleNeurons,
    SteerResidual,
    StopGradNeurons,
)
from polineurons.io import read_json, write_json
from polineurons.models import load_model
from polineurons.pnlac import Localization
from polineurons.regularizers import KLToBase
from polineurons.screen import answer_direction, default_layers
from polineurons.stance import StanceResult, continuation_logprobs, measure_stance
from polineurons.stats import Estimate, bootstrap, paired_shifts
from polineurons.trial import Trial, TrialSpec, run_trial
from polineurons.versions import library_versions

Method = Literal["inhibit-zero", "inhibit-freeze", "stopgrad", "caft", "caft-grad", "steer", "kl"]
NEURON_METHODS = ("inhibit-zero", "inhibit-freeze", "stopgrad")
KEYS = ("target_shift", "ctg", "ctg_ratio", "target_kept", "ctg_reduction")


@dataclass(frozen=True)
class MitigateConfig:
    """Which mitigations are compared, at which strengths, and their units."""

    methods: tuple[Method, ...] = ("inhibit-zero", "caft", "steer", "kl")
    """Methods compared with vanilla (see polineurons.mitigate)."""
    strengths: tuple[float, ...] = (1.0,)
    """Relative strengths: 1 = each method's unit below, 0 = vanilla."""
    controls: bool = True
    """Also train each method's matched random control."""
    percent: float = 5.0
    """Neuron methods: percent of all neurons (top general) per unit of strength."""
    layers: tuple[int, ...] | None = None
    """CAFT layers (default: at 1/5 and 2/5 of the depth, 6 and 12 of 30)."""
    directions: Literal["leaning", "pca"] = "leaning"
    """CAFT directions: the leaning direction orthogonal to the target's own, or PCs of (vanilla − base)."""
    rank: int = 2
    """CAFT with pca: principal components per layer."""
    steer_layer: int | None = None
    """Steering layer (default: the middle one)."""
    kl_beta: float = 1.0
    """KL weight per unit of strength."""
    items: int = 32
    """Training items per topic used for directions, steering vectors and KL texts."""

    def __post_init__(self) -> None:
        unknown = [m for m in self.methods if m not in get_args(Method)]
        if unknown:
            raise ValueError(f"Unknown method(s) {unknown}: use {', '.join(get_args(Method))}.")
        if not self.strengths or any(s < 0 for s in self.strengths):
            raise ValueError(f"strengths must be >= 0, got {self.strengths}.")
        if not 0 < self.percent <= 100 or self.rank < 1 or self.items < 1 or self.kl_beta < 0:
            raise ValueError("percent must be in (0, 100], rank and items >= 1, kl_beta >= 0.")


def neutral_logprob(model, pairs: Sequence[tuple[list[int], list[int]]], *, batch_size: int = 16) -> float:
    """Mean per-token log-prob of neutral responses given their prompts (higher = more fluent)."""
    sums, counts = continuation_logprobs(model, pairs, batch_size=batch_size)
    return float(sums.sum() / counts.sum())


def neutral_pairs(tokenizer, max_items: int | None = None) -> list[tuple[list[int], list[int]]]:
    """The first ``max_items`` neutral ``(prompt, response)`` pairs as token ids (default: all)."""
    return [
        (encode_prompt(tokenizer, q), encode_text(tokenizer, a, prompt_start=False))
        for q, a in load_neutral()[:max_items]
    ]


@dataclass(frozen=True)
class Arm:
    """One training run of the comparison."""

    method: str  # "vanilla" or a Method
    strength: float = 0.0
    seed: int = 0
    control: bool = False

    @property
    def name(self) -> str:
        if self.method == "vanilla":
            return f"vanilla-seed{self.seed}"
        return f"{self.method}{'-control' if self.control else ''}-s{self.strength:g}-seed{self.seed}"


def plan_arms(config: MitigateConfig, seeds: Sequence[int]) -> list[Arm]:
    """Vanilla per seed, then every method × strength × seed, each followed by its control."""
    arms = [Arm("vanilla", seed=seed) for seed in seeds]
    for method in config.methods:
        for strength in config.strengths:
            for seed in seeds:
                arms.append(Arm(method, strength, seed))
                if config.controls:
                    arms.append(Arm(method, strength, seed, control=True))
    return arms


class Interventions:
    """Builds each arm's intervention, computing what it needs (directions, vectors, texts, a frozen
    base model) once, on first use."""

    def __init__(
        self,
        config: MitigateConfig,
        spec: TrialSpec,
        load_base: Callable[[], object],
        *,
        located: Localization | None = None,
        vanilla_model: Callable[[], object] | None = None,
    ):
        self.config, self.spec, self.load_base = config, spec, load_base
        self.located, self.vanilla_model = located, vanilla_model
        self._cache: dict[str, object] = {}

    def _get(self, key: str, make: Callable[[], object]):
        if key not in self._cache:
            self._cache[key] = make()
        return self._cache[key]

    @property
    def base(self):
        return self._get("base", self.load_base)

    def _layers(self) -> list[int]:
        n_layers = int(self.base.cfg.n_layers)
        return list(self.config.layers) if self.config.layers is not None else list(default_layers(n_layers)[:2])

    def _directions(self):
        spec, config = self.spec, self.config
        if config.directions == "leaning":
            return leaning_directions(self.base, spec.dataset, spec.target, self._layers(), max_items=config.items)
        texts = self._texts(others=True)
        return difference_pcs(self.base, self.vanilla_model(), texts, self._layers(), config.rank)

    def _steering_vector(self):
        """The leaning's mean answer difference at the steering layer, pointing the trained way."""
        spec, config = self.spec, self.config
        layer = config.steer_layer if config.steer_layer is not None else int(self.base.cfg.n_layers) // 2
        vector = answer_direction(self.base, self._other_items(), [layer], max_answer_tokens=48)[0].float()
        return layer, leaning_sign(spec.leaning) * vector

    def _other_items(self) -> list:
        """Up to ``items`` training items of every topic but the target."""
        data, target = self.spec.dataset, self.spec.target
        others = [t for t in data.topics if t != target]
        return list(data.select(topics=others, split="train", max_items=self.config.items).items)

    def _texts(self, *, others: bool) -> list[list[int]]:
        """Other topics' training questions with both answers (KL texts), or neutral text (its control)."""
        tokenizer = self.base.tokenizer
        if not others:
            return [p + a for p, a in neutral_pairs(tokenizer)]
        return [
            encode_prompt(tokenizer, i.question) + encode_text(tokenizer, i.answer(side), prompt_start=False)
            for i in self._other_items()
            for side in ("left", "right")
        ]

    def build(self, arm: Arm) -> Intervention | None:
        config, s, seed = self.config, arm.strength, arm.seed
        if arm.method == "vanilla":
            return None
        if arm.method in NEURON_METHODS:
            if self.located is None:
                raise UserError(
                    f"{arm.method} needs general neurons: give a `polineurons localize` folder (--neurons)."
                )
            neurons = self.located.top_general(s * config.percent)  # s = 0: no neuron
            if arm.control:
                neurons = neurons.random_matched(seed=1000 + seed)
            kind = {
                "inhibit-zero": lambda n: ScaleNeurons(n, 0.0),
                "inhibit-freeze": FreezeNeurons,
                "stopgrad": StopGradNeurons,
            }
            return kind[arm.method](neurons)
        if arm.method in ("caft", "caft-grad"):
            directions = self._get("directions", self._directions)
            if arm.control:
                directions = random_like(directions, seed=1000 + seed)
            return AblateDirections(directions, s, gradient_only=arm.method == "caft-grad")
        if arm.method == "steer":
            layer, vector = self._get("steer", self._steering_vector)
            return SteerResidual(layer, random_vector(vector, 1000 + seed) if arm.control else vector, s)
        texts = self._get(f"texts-{arm.control}", lambda: self._texts(others=not arm.control))
        return KLToBase(self.base, texts, s * config.kl_beta, seed=seed)


def compare_runs(
    base: StanceResult,
    vanilla: Sequence[StanceResult],
    treated: Sequence[StanceResult],
    target: str,
    leaning: str,
    *,
    n_boot: int = 2000,
    seed: int = 0,
) -> dict[str, Estimate]:
    """Target shift, CTG, CTG ratio, target kept (treated / vanilla target shift) and CTG reduction
    (1 − treated / vanilla CTG) of runs paired by seed, pooled over seeds (mean shifts), with an item
    bootstrap that resamples the eval items once for every run (paired)."""
    runs = [paired_shifts(base.items, r.items) for r in (*vanilla, *treated)]
    topics, n = list(runs[0]), len(vanilla)
    where, others, sign = topics.index(target), [i for i, t in enumerate(topics) if t != target], leaning_sign(leaning)

    def statistic(*samples):  # each: [2n runs, draws, items]
        means = sign * np.stack([s.mean(axis=-1) for s in samples])  # [topic, run, draw]
        van, trt = means[:, :n].mean(axis=1), means[:, n:].mean(axis=1)  # [topic, draw]
        van_t, trt_t, van_c, trt_c = van[where], trt[where], van[others].mean(axis=0), trt[others].mean(axis=0)
        return np.stack([trt_t, trt_c, trt_c / trt_t, trt_t / van_t, 1 - trt_c / van_c])

    point, low, high = bootstrap(statistic, [np.stack([r[t] for r in runs]) for t in topics], n_boot=n_boot, seed=seed)
    return {key: Estimate(float(point[i]), float(low[i]), float(high[i])) for i, key in enumerate(KEYS)}


def _flat(estimates: Mapping[str, Estimate]) -> dict:
    row = {}
    for key, e in estimates.items():
        row.update({key: e.value, f"{key}_ci_low": e.ci_low, f"{key}_ci_high": e.ci_high})
    return row


def strength_at_kept(rows: Sequence[dict], kept: float = 0.9) -> dict | None:
    """The largest strength whose pooled target kept is ≥ ``kept``, with its CTG ratio; linearly
    interpolated (and labelled so) where target kept crosses ``kept`` between two measured strengths."""
    rows = sorted(rows, key=lambda r: r["strength"])
    best = None
    for low, high in zip(rows, rows[1:], strict=False):
        if low["target_kept"] >= kept > high["target_kept"]:
            t = (low["target_kept"] - kept) / (low["target_kept"] - high["target_kept"])
            best = {
                "strength": low["strength"] + t * (high["strength"] - low["strength"]),
                "interpolated": True,
                "ctg_ratio": low["ctg_ratio"] + t * (high["ctg_ratio"] - low["ctg_ratio"]),
                "target_kept": kept,
            }
    measured = [r for r in rows if r["target_kept"] >= kept]
    if measured and (best is None or measured[-1]["strength"] >= best["strength"]):
        r = measured[-1]
        best = {
            "strength": r["strength"],
            "interpolated": False,
            "ctg_ratio": r["ctg_ratio"],
            "target_kept": r["target_kept"],
        }
    return best


def summarize(
    base: StanceResult, trials: Mapping[str, Trial], arms: Sequence[Arm], target: str, leaning: str, base_neutral: float
) -> dict:
    """``mitigation.json``: vanilla per seed and pooled; per method the runs (per seed, with their
    control) and pooled rows per strength; the strength keeping ≥ 90% of the target; the league."""

    def perplexity_change(trial: Trial) -> float:
        return float(np.exp(base_neutral - trial.extra["neutral_logprob"]) - 1)

    def headline(runs: list[StanceResult]) -> dict:  # vanilla compared with itself: its own shifts
        return _flat({k: v for k, v in compare_runs(base, runs, runs, target, leaning).items() if k in KEYS[:3]})

    vanilla = {a.seed: trials[a.name] for a in arms if a.method == "vanilla"}
    seeds = sorted(vanilla)
    all_vanilla = [vanilla[s].stance for s in seeds]
    runs = [
        {"seed": s, **headline([vanilla[s].stance]), "perplexity_change": perplexity_change(vanilla[s])} for s in seeds
    ]
    result: dict = {
        "target": target,
        "leaning": leaning,
        "seeds": seeds,
        "base_neutral_logprob": base_neutral,
        "vanilla": {"pooled": headline(all_vanilla), "runs": runs},
        "methods": {},
        "pooled": {},
        "at_90": {},
        "league": [],
    }
    treated = [a for a in arms if a.method != "vanilla" and not a.control]
    for arm in treated:
        control = Arm(arm.method, arm.strength, arm.seed, control=True)
        row = {"strength": arm.strength, "seed": arm.seed, "perplexity_change": perplexity_change(trials[arm.name])}
        row.update(_flat(compare_runs(base, [vanilla[arm.seed].stance], [trials[arm.name].stance], target, leaning)))
        if control.name in trials:
            row["control"] = {
                **_flat(compare_runs(base, [vanilla[arm.seed].stance], [trials[control.name].stance], target, leaning)),
                "perplexity_change": perplexity_change(trials[control.name]),
            }
        result["methods"].setdefault(arm.method, []).append(row)
    for method in dict.fromkeys(a.method for a in treated):
        pooled_rows = []
        for strength in sorted({a.strength for a in treated if a.method == method}):
            names = [Arm(method, strength, s).name for s in seeds]
            controls = [Arm(method, strength, s, control=True).name for s in seeds]
            row = {
                "strength": strength,
                **_flat(compare_runs(base, all_vanilla, [trials[n].stance for n in names], target, leaning)),
            }
            if all(c in trials for c in controls):
                row["control"] = _flat(
                    compare_runs(base, all_vanilla, [trials[c].stance for c in controls], target, leaning)
                )
            pooled_rows.append(row)
        result["pooled"][method] = pooled_rows
        result["at_90"][method] = strength_at_kept(pooled_rows)
    ranked = [(m, r) for m, r in result["at_90"].items() if r is not None]
    result["league"] = [{"method": m, **r} for m, r in sorted(ranked, key=lambda item: item[1]["ctg_ratio"])]
    return result


def run_mitigation(
    spec: TrialSpec,
    load_base: Callable[[], object],
    config: MitigateConfig,
    out_dir: str | os.PathLike,
    *,
    seeds: Sequence[int] = (0,),
    located: Localization | None = None,
    reuse_vanilla: Mapping[int, Trial] | None = None,
    progress: bool = True,
    echo: Callable[[str], None] = lambda message: None,
) -> dict:
    """Train and score every arm of :func:`plan_arms` into ``out_dir/trials`` (resumable) and write
    ``out_dir/mitigation.json``. ``reuse_vanilla`` supplies already trained vanilla runs by seed (the
    pipeline's fine-tunes; they must hold ``neutral_logprob``). ``located`` gives the general neurons
    for the neuron methods; PCA directions use the first seed's vanilla model."""
    out = Path(out_dir)
    arms = plan_arms(config, seeds)
    for seed, trial in (reuse_vanilla or {}).items():
        path = out / "trials" / f"{Arm('vanilla', seed=seed).name}.json"
        if not path.is_file():
            write_json(path, trial.to_dict(), indent=None)
    pairs: list = []

    def measure(model) -> dict:
        if not pairs:
            pairs.extend(neutral_pairs(model.tokenizer, spec.stance.neutral_items))
        return {"neutral_logprob": neutral_logprob(model, pairs)}

    vanilla_dir = out / "vanilla-model"

    def vanilla_model():
        return load_model(vanilla_dir, device=str(interventions.base.cfg.device))

    interventions = Interventions(config, spec, load_base, located=located, vanilla_model=vanilla_model)
    if not (out / "base.json").is_file():
        base_model = interventions.base
        base = measure_stance(base_model, spec.dataset, spec.stance, progress=progress)
        write_json(out / "base.json", {"stance": base.to_dict(), **measure(base_model)})
    stored = read_json(out / "base.json")
    trials: dict[str, Trial] = {}
    for arm in arms:
        keep = vanilla_dir if arm.method == "vanilla" and arm.seed == seeds[0] and config.directions == "pca" else None
        path = out / "trials" / f"{arm.name}.json"
        trial, model = run_trial(
            spec,
            load_base,
            path,
            seed=arm.seed,
            intervention=None if path.is_file() else interventions.build(arm),
            model_dir=keep,
            measure=measure,
            progress=progress,
        )
        trials[arm.name] = trial
        echo(f"[{arm.name}] {'trained and scored' if model is not None else 'stored'}")
        del model
    result = summarize(
        StanceResult.from_dict(stored["stance"]), trials, arms, spec.target, spec.leaning, stored["neutral_logprob"]
    )
    result.update({"config": asdict(config), "data": spec.dataset.source, "versions": library_versions()})
    write_json(out / "mitigation.json", result)
    return result


def league_text(result: dict) -> str:
    """Plain-text league table: methods by CTG ratio at ≥ 90% of the target kept (vanilla first)."""
    van = result["vanilla"]["pooled"]
    lines = [
        f"{'method':<16}{'strength':>9}{'target kept':>13}{'CTG ratio':>11}"
        f"   (vanilla CTG ratio {van['ctg_ratio']:+.2f})"
    ]
    for row in result["league"]:
        mark = " (interpolated)" if row["interpolated"] else ""
        lines.append(
            f"{row['method']:<16}{row['strength']:>9.2f}{row['target_kept']:>13.2f}{row['ctg_ratio']:>+11.2f}{mark}"
        )
    missing = [m for m, r in result["at_90"].items() if r is None]
    if missing:
        lines.append(f"never kept 90% of the target: {', '.join(missing)}")
    return "\n".join(lines)
