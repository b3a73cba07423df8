"""The mitigation frontier: how much of the target shift each method keeps against how much spill-over
it removes, per strength, pooled over training seeds — and the league of methods at 90% of the target.

For one method the frontier is the curve of (target kept, CTG reduction) over its strengths, with
vanilla at (1, 0) as its start (strength 0 is vanilla). Its decision number is the **CTG reduction at
90% of the target kept**: the curve read where target kept first falls below 0.9, linearly interpolated
between the two strengths around it — and the method's random control read at the same strength.
Confidence intervals resample both the training seeds and the eval items (each draw applies the same
seeds and items to vanilla, the method and its control, so they stay paired).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from polineurons.generalization import leaning_sign
from polineurons.stance import StanceResult
from polineurons.stats import Estimate, bootstrap, paired_shifts, seed_item_bootstrap
from polineurons.trial import Scores, Trial

KEYS = ("target_shift", "ctg", "ctg_ratio", "target_kept", "ctg_reduction")
KEPT = 0.9  # the share of the target shift a mitigation must keep


@dataclass(frozen=True)
class Arm:
    """One training run of a comparison: vanilla, or a method at a strength (or its control), one seed."""

    method: str  # "vanilla" or a registered method
    strength: float = 0.0
    seed: int = 0
    control: bool = False

    @property
    def label(self) -> str:
        """The arm without its seed (``caft-control-s0.1``)."""
        if self.method == "vanilla":
            return "vanilla"
        return f"{self.method}{'-control' if self.control else ''}-s{self.strength:g}"

    @property
    def name(self) -> str:
        return f"{self.label}-seed{self.seed}"


def flat_estimates(estimates: Mapping[str, Estimate]) -> dict:
    """``{key: value, key_ci_low: ..., key_ci_high: ...}`` of named estimates (a JSON row)."""
    row = {}
    for key, e in estimates.items():
        row.update({key: e.value, f"{key}_ci_low": e.ci_low, f"{key}_ci_high": e.ci_high})
    return row


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


def _interpolate_at_kept(strengths, kept, reduction, control):
    """Per draw (last axis), where target kept first falls below :data:`KEPT` along the strengths
    (vanilla, at strength 0, keeps all and reduces nothing): the strength, the CTG reduction and the
    control's CTG reduction there, linearly interpolated; NaN where no strength falls below."""
    draws = kept.shape[-1]
    zero, one = np.zeros(draws), np.ones(draws)
    points = [(0.0, one, zero, zero)] + list(zip(strengths, kept, reduction, control, strict=True))
    found = np.zeros(draws, dtype=bool)
    out = np.full((3, draws), np.nan)
    for (s0, k0, r0, c0), (s1, k1, r1, c1) in zip(points, points[1:], strict=False):
        here = ~found & (k0 >= KEPT) & (k1 < KEPT)
        found |= k1 < KEPT  # past the first strength below the bar: later crossings do not count
        t = (k0 - KEPT) / (k0 - k1)
        out[:, here] = np.stack([s0 + t * (s1 - s0), r0 + t * (r1 - r0), c0 + t * (c1 - c0)])[:, here]
    return out


def _group_frontier(base, vanilla, treated, controls, seeds, target, leaning, *, n_boot, seed):
    """Rows (per strength) and the reading at 90% kept for strengths measured on the same ``seeds``."""
    strengths = sorted(treated)
    with_control = [s for s in strengths if s in controls and all(x in controls[s] for x in seeds)]
    runs = [vanilla] + [treated[s] for s in strengths] + [controls[s] for s in with_control]
    shifts = [[paired_shifts(base.items, run[x].items) for x in seeds] for run in runs]
    topics = list(shifts[0][0])
    where, others, sign = topics.index(target), [i for i, t in enumerate(topics) if t != target], leaning_sign(leaning)
    samples = [np.stack([np.stack([per_seed[t] for per_seed in run]) for run in shifts]) for t in topics]
    n, c = len(strengths), len(with_control)

    def statistic(*means):  # each: [runs, draws]
        topic_means = sign * np.stack(means)  # [topic, run, draw]
        target_shift, ctg = topic_means[where], topic_means[others].mean(axis=0)  # [run, draw]
        table = np.stack([target_shift, ctg, ctg / target_shift, target_shift / target_shift[0], 1 - ctg / ctg[0]])
        control = np.full((n, table.shape[-1]), np.nan)  # control reduction per strength, NaN where untrained
        for k, s in enumerate(with_control):
            control[strengths.index(s)] = table[4, 1 + n + k]
        read = _interpolate_at_kept(strengths, table[3, 1 : 1 + n], table[4, 1 : 1 + n], control)
        return np.concatenate([table.reshape(-1, table.shape[-1]), read])

    point, low, high, draws = seed_item_bootstrap(statistic, samples, n_boot=n_boot, seed=seed)
    runs_count = 1 + n + c

    def estimates(run: int) -> dict:
        return flat_estimates(
            {k: Estimate(*(float(a[i * runs_count + run]) for a in (point, low, high))) for i, k in enumerate(KEYS)}
        )

    rows = []
    for k, s in enumerate(strengths):
        row = {"strength": s, "seeds": list(seeds), **estimates(1 + k)}
        if s in with_control:
            row["control"] = estimates(1 + n + with_control.index(s))
        rows.append(row)
    base_index = len(KEYS) * runs_count
    reading = {
        "strength": float(point[base_index]),
        "ctg_reduction": Estimate(*(float(a[base_index + 1]) for a in (point, low, high))),
        "control_ctg_reduction": Estimate(*(float(a[base_index + 2]) for a in (point, low, high))),
        "undefined_draws": float(np.mean(~np.isfinite(draws[base_index + 1]))),
    }
    return rows, reading


def frontier(
    base: StanceResult,
    vanilla: Mapping[int, StanceResult],
    treated: Mapping[float, Mapping[int, StanceResult]],
    controls: Mapping[float, Mapping[int, StanceResult]],
    target: str,
    leaning: str,
    *,
    n_boot: int = 2000,
    seed: int = 0,
) -> tuple[list[dict], dict]:
    """One method's frontier: rows ``strength, seeds, target_kept, ctg_reduction, ...`` (each with
    ``_ci_low``/``_ci_high``, and ``control`` where the control was trained on the same seeds), pooled
    over the seeds each strength has with vanilla; and its reading at 90% of the target kept
    (``ctg_reduction`` and ``control_ctg_reduction`` as ``{value, ci_low, ci_high}``, or None with a
    ``reason``), from the strengths measured on the most seeds."""
    groups: dict[tuple[int, ...], dict[float, Mapping[int, StanceResult]]] = {}
    for strength, runs in treated.items():
        seeds = tuple(sorted(set(runs) & set(vanilla)))
        if seeds:
            groups.setdefault(seeds, {})[strength] = runs
    rows, readings = [], {}
    for seeds, runs in groups.items():
        group_rows, readings[seeds] = _group_frontier(
            base, vanilla, runs, controls, seeds, target, leaning, n_boot=n_boot, seed=seed
        )
        rows += group_rows
    rows.sort(key=lambda r: (r["strength"], -len(r["seeds"])))
    if not groups:
        return rows, {"ctg_reduction": None, "reason": "no strength shares a seed with a vanilla run"}
    seeds = max(groups, key=lambda s: (len(s), len(groups[s])))
    reading = readings[seeds]
    chosen = [r for r in rows if tuple(r["seeds"]) == seeds]
    at_90 = {"seeds": list(seeds), "strengths": [r["strength"] for r in chosen]}
    if not np.isfinite(reading["ctg_reduction"].value):
        strongest = chosen[-1]
        reason = (
            f"every strength measured keeps at least {KEPT:.0%} of the target (strongest, s={strongest['strength']:g}: "
            f"kept {strongest['target_kept']:.2f}, CTG reduction {strongest['ctg_reduction']:+.2f}); measure stronger"
        )
        if np.isnan(strongest["target_kept"]):  # vanilla's target did not move
            reason = "the vanilla fine-tune's target shift is zero: there is nothing to keep"
        return rows, {**at_90, "ctg_reduction": None, "reason": reason}
    control = reading["control_ctg_reduction"]
    return rows, {
        **at_90,
        "strength": reading["strength"],
        "ctg_reduction": reading["ctg_reduction"].to_dict(),
        "control_ctg_reduction": control.to_dict() if np.isfinite(control.value) else None,
        "undefined_draws": reading["undefined_draws"],
        "reason": None,
    }


def perplexity_change(base_neutral: float, trial: Trial) -> float:
    """Change of the neutral texts' perplexity against the base model (negative = more fluent)."""
    return float(np.exp(base_neutral - trial.neutral_logprob) - 1)


def summarize(
    base: Scores, runs: Sequence[tuple[Arm, Trial]], target: str, leaning: str, *, n_boot: int = 2000
) -> dict:
    """``mitigation.json``'s numbers from every run of a comparison (any seeds, strengths and methods):
    vanilla per seed and pooled; per method its runs per seed (with their control), its ``frontier`` and
    its reading ``at_90``; the ``league`` (methods by CTG reduction at 90% kept); the same frontiers on
    each check data set (``checks``)."""
    trials = {arm: trial for arm, trial in runs}
    vanilla = {a.seed: t for a, t in trials.items() if a.method == "vanilla"}
    seeds = sorted(vanilla)
    if not seeds:
        raise ValueError("A mitigation summary needs at least one vanilla run.")

    def headline(results: list[StanceResult], base_stance: StanceResult) -> dict:  # vanilla: its own shifts
        estimates = compare_runs(base_stance, results, results, target, leaning, n_boot=n_boot)
        return flat_estimates({k: v for k, v in estimates.items() if k in KEYS[:3]})

    def ppl(trial: Trial) -> float:
        return perplexity_change(base.neutral_logprob, trial)

    result: dict = {
        "target": target,
        "leaning": leaning,
        "seeds": seeds,
        "base_neutral_logprob": base.neutral_logprob,
        "vanilla": {
            "pooled": headline([vanilla[s].stance for s in seeds], base.stance),
            "runs": [
                {"seed": s, **headline([vanilla[s].stance], base.stance), "perplexity_change": ppl(vanilla[s])}
                for s in seeds
            ],
        },
        "methods": {},
        "frontier": {},
        "at_90": {},
        "league": [],
        "checks": {name: {"frontier": {}, "at_90": {}} for name in base.checks},
    }
    treated = sorted((a for a in trials if a.method != "vanilla" and not a.control and a.seed in vanilla), key=_order)
    for arm in treated:
        control = trials.get(Arm(arm.method, arm.strength, arm.seed, control=True))
        row = {"strength": arm.strength, "seed": arm.seed, "perplexity_change": ppl(trials[arm])}
        row.update(
            flat_estimates(compare_runs(base.stance, [vanilla[arm.seed].stance], [trials[arm].stance], target, leaning))
        )
        if control is not None:
            compared = compare_runs(base.stance, [vanilla[arm.seed].stance], [control.stance], target, leaning)
            row["control"] = {**flat_estimates(compared), "perplexity_change": ppl(control)}
        result["methods"].setdefault(arm.method, []).append(row)

    def method_frontier(method: str, pick, base_stance: StanceResult) -> tuple[list[dict], dict]:
        curves: dict[bool, dict[float, dict[int, StanceResult]]] = {False: {}, True: {}}
        for a, trial in trials.items():
            if a.method == method:
                curves[a.control].setdefault(a.strength, {})[a.seed] = pick(trial)
        van = {s: pick(t) for s, t in vanilla.items()}
        return frontier(base_stance, van, curves[False], curves[True], target, leaning, n_boot=n_boot)

    for method in dict.fromkeys(a.method for a in treated):
        rows, result["at_90"][method] = method_frontier(method, lambda t: t.stance, base.stance)
        for row in rows:  # the capability cost, mean over the row's seeds
            row["perplexity_change"] = float(
                np.mean([ppl(trials[Arm(method, row["strength"], s)]) for s in row["seeds"]])
            )
        result["frontier"][method] = rows
        for name, check in result["checks"].items():
            pick = lambda t, name=name: t.checks[name]  # noqa: E731
            check["frontier"][method], check["at_90"][method] = method_frontier(method, pick, base.checks[name])
    ranked = [(m, r) for m, r in result["at_90"].items() if r["ctg_reduction"] is not None]
    ranked.sort(key=lambda item: -item[1]["ctg_reduction"]["value"])
    result["league"] = [{"method": m, **r} for m, r in ranked]
    return result


def _order(arm: Arm) -> tuple:
    return arm.method, arm.strength, arm.seed


def league_text(result: dict) -> str:
    """Plain-text league: methods by CTG reduction at 90% of the target kept, each beside its control;
    then the methods that never fell below 90% (why), and every frontier row."""
    van = result["vanilla"]["pooled"]
    lines = [
        f"vanilla (seeds {', '.join(map(str, result['seeds']))}): target shift {van['target_shift']:+.3f}, "
        f"CTG {van['ctg']:+.3f} [{van['ctg_ci_low']:+.3f}, {van['ctg_ci_high']:+.3f}]",
        f"{'method':<16}{'strength':>9}{'CTG reduction at 90% kept':>30}{'control':>26}{'seeds':>8}",
    ]
    for row in result["league"]:
        control = row["control_ctg_reduction"]
        versus = interval(control) if control else "not trained"
        lines.append(
            f"{row['method']:<16}{row['strength']:>9.3f}{interval(row['ctg_reduction']):>30}{versus:>26}"
            f"{len(row['seeds']):>8}"
        )
    for method, at_90 in result["at_90"].items():
        if at_90["ctg_reduction"] is None:
            lines.append(f"{method}: no reading at {KEPT:.0%} kept — {at_90['reason']}")
    lines += ["", f"{'method':<16}{'strength':>9}{'seeds':>7}{'target kept':>24}{'CTG reduction':>24}{'control':>24}"]
    for method, rows in result["frontier"].items():
        for row in rows:
            kept, reduction = row_interval(row, "target_kept"), row_interval(row, "ctg_reduction")
            control = row.get("control")
            versus = f"kept {control['target_kept']:.2f}, {control['ctg_reduction']:+.2f}" if control else "—"
            lines.append(
                f"{method:<16}{row['strength']:>9g}{len(row['seeds']):>7}{kept:>24}{reduction:>24}{versus:>24}"
            )
    return "\n".join(lines)


def row_interval(row: Mapping[str, float], key: str) -> str:
    """A row's ``key`` with its CI, as ``+0.12 [+0.03, +0.20]``."""
    return interval({"value": row[key], "ci_low": row[f"{key}_ci_low"], "ci_high": row[f"{key}_ci_high"]})


def interval(estimate: Mapping[str, float]) -> str:
    """An estimate with its CI, as ``+0.12 [+0.03, +0.20]``."""
    return f"{estimate['value']:+.2f} [{estimate['ci_low']:+.2f}, {estimate['ci_high']:+.2f}]"
