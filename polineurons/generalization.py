"""Cross-topic generalization: how far a fine-tune on one topic moves the stance on the others.

Per topic, the shift is fine-tuned minus base stance (positive = moved right), with a bootstrap CI on
the paired per-item differences. Target shift = shift on the fine-tuned topic and CTG = mean shift over
the other topics, both signed toward the trained leaning (positive = moved the way the fine-tune
pushed, for a left- or a right-leaning fine-tune); CTG ratio = CTG / target shift.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass

import numpy as np

from polineurons.data.items import StanceDataset, check_leaning
from polineurons.stance import ScoringConfig, StanceResult, measure_stance
from polineurons.stats import Estimate, bootstrap, bootstrap_ci, paired_shifts


def leaning_sign(leaning: str) -> int:
    """+1 for a right-leaning fine-tune, -1 for a left-leaning one (stance scores are positive = right)."""
    return 1 if check_leaning(leaning) == "right" else -1


@dataclass(frozen=True)
class TopicShift:
    shift: float
    ci_low: float
    ci_high: float
    base: float
    finetuned: float
    n: int


@dataclass(frozen=True)
class Generalization:
    """Per-topic shifts of one fine-tune (raw: positive = right) and its headline numbers."""

    target: str
    shifts: dict[str, TopicShift]
    leaning: str = "right"

    @property
    def target_shift(self) -> float:
        """Shift on the target topic, toward the trained leaning."""
        return leaning_sign(self.leaning) * self.shifts[self.target].shift

    @property
    def ctg(self) -> float:
        """Mean shift over the non-target topics, toward the trained leaning."""
        others = [s.shift for topic, s in self.shifts.items() if topic != self.target]
        return leaning_sign(self.leaning) * float(np.mean(others)) if others else float("nan")

    @property
    def ctg_ratio(self) -> float | None:
        """CTG / target shift (None when the target did not move)."""
        return self.ctg / self.target_shift if self.target_shift != 0 else None

    def to_dict(self) -> dict:
        return {
            "target": self.target,
            "leaning": self.leaning,
            "target_shift": self.target_shift,
            "ctg": self.ctg,
            "ctg_ratio": self.ctg_ratio,
            "shifts": {topic: asdict(shift) for topic, shift in self.shifts.items()},
        }

    def table(self) -> str:
        """Plain-text table: base, fine-tuned and shift with CI per topic, then the headline numbers."""
        lines = [f"{'topic':<24}{'base':>8}{'tuned':>8}{'shift':>9}  95% CI   (stance: positive = right)"]
        for topic, row in self.shifts.items():
            mark = "  <- target" if topic == self.target else ""
            lines.append(
                f"{topic:<24}{row.base:>+8.3f}{row.finetuned:>+8.3f}{row.shift:>+9.3f}  "
                f"[{row.ci_low:+.3f}, {row.ci_high:+.3f}]{mark}"
            )
        ratio = "n/a" if self.ctg_ratio is None else f"{self.ctg_ratio:+.2f}"
        lines.append(
            f"toward {self.leaning}: target shift {self.target_shift:+.3f}   CTG {self.ctg:+.3f}   CTG ratio {ratio}"
        )
        return "\n".join(lines)

    @classmethod
    def from_dict(cls, data: Mapping) -> Generalization:
        """Rebuild from :meth:`to_dict` output (extra keys are ignored)."""
        shifts = {topic: TopicShift(**row) for topic, row in data["shifts"].items()}
        return cls(data["target"], shifts, data.get("leaning", "right"))


def compare(
    base: StanceResult, finetuned: StanceResult, target: str, *, leaning: str = "right", seed: int = 0
) -> Generalization:
    """Shifts from two stance results on the same items (paired by item id)."""
    by_topic = paired_shifts(base.items, finetuned.items)
    if target not in by_topic:
        raise ValueError(f"Target topic '{target}' is not among the scored topics {sorted(by_topic)}.")
    shifts = {}
    for topic, diffs in by_topic.items():
        low, high = bootstrap_ci(diffs, seed=seed)
        shifts[topic] = TopicShift(
            shift=float(np.mean(diffs)),
            ci_low=low,
            ci_high=high,
            base=base.topics[topic].score,
            finetuned=finetuned.topics[topic].score,
            n=len(diffs),
        )
    return Generalization(target, shifts, leaning)


def measure_generalization(
    base_model,
    finetuned_model,
    dataset: StanceDataset,
    target: str,
    config: ScoringConfig = ScoringConfig(),
    *,
    leaning: str = "right",
    base_result: StanceResult | None = None,
    progress: bool = True,
    seed: int = 0,
) -> tuple[Generalization, StanceResult, StanceResult]:
    """Score both models on every topic's eval items; returns the shifts and both stance results.

    Pass ``base_result`` to reuse an earlier scoring of the base model on the same items.

    Example::

        result, before, after = measure_generalization(base, tuned, load_data(), "immigration", leaning="right")
        print(result.table())  # shift per topic, target shift, CTG, CTG ratio
    """
    before = base_result or measure_stance(base_model, dataset, config, progress=progress, seed=seed)
    after = measure_stance(finetuned_model, dataset, config, progress=progress, seed=seed)
    return compare(before, after, target, leaning=leaning, seed=seed), before, after


@dataclass(frozen=True)
class Headline:
    """Target shift, CTG and CTG ratio with item-bootstrap 95% CIs (signed toward the leaning)."""

    target_shift: Estimate
    ctg: Estimate
    ctg_ratio: Estimate

    def to_dict(self) -> dict:
        return {key: getattr(self, key).to_dict() for key in ("target_shift", "ctg", "ctg_ratio")}

    @classmethod
    def from_dict(cls, data: Mapping) -> Headline:
        return cls(*(Estimate.from_dict(data[key]) for key in ("target_shift", "ctg", "ctg_ratio")))


@dataclass(frozen=True)
class SeedHeadlines:
    """Headlines of fine-tunes that differ only in their training seed, and pooled over them."""

    seeds: tuple[int, ...]
    per_seed: tuple[Headline, ...]
    pooled: Headline  # mean over seeds; its CI resamples the (shared) eval items
    seed_sd: dict[str, float]  # spread of the per-seed values across seeds (0 for one seed)

    def to_dict(self) -> dict:
        return {
            "seeds": list(self.seeds),
            "per_seed": [{"seed": s, **h.to_dict()} for s, h in zip(self.seeds, self.per_seed, strict=True)],
            "pooled": self.pooled.to_dict(),
            "seed_sd": self.seed_sd,
        }

    @classmethod
    def from_dict(cls, data: Mapping) -> SeedHeadlines:
        per_seed = tuple(Headline.from_dict(row) for row in data["per_seed"])
        return cls(tuple(data["seeds"]), per_seed, Headline.from_dict(data["pooled"]), data["seed_sd"])


def seed_headlines(
    base: StanceResult,
    runs: Sequence[StanceResult],
    target: str,
    leaning: str,
    *,
    seeds: Sequence[int] | None = None,
    n_boot: int = 2000,
    seed: int = 0,
) -> SeedHeadlines:
    """Per-run and pooled headlines for fine-tunes scored on the same items (one per training seed).

    Each bootstrap draw resamples the eval items of every topic once and applies the draw to every
    run (they share items), so the pooled CI reflects item sampling; ``seed_sd`` shows how much the
    runs themselves disagree."""
    shifts = [paired_shifts(base.items, run.items) for run in runs]
    topics = list(shifts[0])
    if target not in topics:
        raise ValueError(f"Target topic '{target}' is not among the scored topics {topics}.")
    where, others, sign = topics.index(target), [i for i, t in enumerate(topics) if t != target], leaning_sign(leaning)

    def statistic(*samples):  # each: [runs, draws, items]
        means = sign * np.stack([s.mean(axis=-1) for s in samples])  # [topic, run, draw]
        target_shift, ctg = means[where], means[others].mean(axis=0)
        pooled_target, pooled_ctg = target_shift.mean(axis=0), ctg.mean(axis=0)
        per_run = np.stack([target_shift, ctg, ctg / target_shift], axis=1)  # [run, 3, draw]
        pooled = np.stack([pooled_target, pooled_ctg, pooled_ctg / pooled_target])[None]
        return np.concatenate([per_run, pooled])  # [run + 1, 3, draw]

    samples = [np.stack([s[t] for s in shifts]) for t in topics]
    point, low, high = bootstrap(statistic, samples, n_boot=n_boot, seed=seed)

    def headline(row: int) -> Headline:
        return Headline(*(Estimate(float(point[row, k]), float(low[row, k]), float(high[row, k])) for k in range(3)))

    n = len(runs)
    spread = {
        key: float(np.std(point[:n, k], ddof=1)) if n > 1 else 0.0
        for k, key in enumerate(("target_shift", "ctg", "ctg_ratio"))
    }
    return SeedHeadlines(
        tuple(seeds if seeds is not None else range(n)), tuple(headline(i) for i in range(n)), headline(n), spread
    )


def generalization_matrix(
    results: Mapping[str, Generalization], topics: Sequence[str] | None = None
) -> tuple[list[str], list[str], np.ndarray]:
    """``(targets, evaluated_topics, shifts)`` with ``shifts[i, j]`` = shift on topic j after
    fine-tuning on target i."""
    targets = list(results)
    columns = list(topics) if topics is not None else list(dict.fromkeys(t for r in results.values() for t in r.shifts))
    matrix = np.array(
        [[results[t].shifts[c].shift if c in results[t].shifts else np.nan for c in columns] for t in targets]
    )
    return targets, columns, matrix


@dataclass(frozen=True)
class LeaningSplit:
    """A target's right- and left-leaning fine-tunes taken together. Per item, the two shifts split
    into a part that flips with the leaning, ``(right − left) / 2`` (ideology: positive = toward the
    trained side), and a part that does not, ``(right + left) / 2`` (drift: positive = right whatever
    the leaning — e.g. fine-tuning moving a topic toward the middle)."""

    target: str
    target_ideology: Estimate
    ctg_ideology: Estimate
    ctg_drift: Estimate
    ideology: dict[str, float]  # topic -> mean (right − left) / 2 shift
    drift: dict[str, float]  # topic -> mean (right + left) / 2 shift

    def to_dict(self) -> dict:
        estimates = ("target_ideology", "ctg_ideology", "ctg_drift")
        return {
            "target": self.target,
            **{k: getattr(self, k).to_dict() for k in estimates},
            "ideology": self.ideology,
            "drift": self.drift,
        }


def leaning_split(
    base: StanceResult, right: StanceResult, left: StanceResult, target: str, *, n_boot: int = 2000, seed: int = 0
) -> LeaningSplit:
    """Split a target's two fine-tunes into ideology and leaning-independent drift (CIs resample the
    eval items, paired across the three scorings)."""
    right_shifts, left_shifts = paired_shifts(base.items, right.items), paired_shifts(base.items, left.items)
    topics = list(right_shifts)
    if target not in topics or set(left_shifts) != set(topics):
        raise ValueError(f"Both fine-tunes must score the same topics, including the target '{target}'.")
    for topic in topics:
        if len(right_shifts[topic]) != len(left_shifts[topic]):
            raise ValueError(f"The two fine-tunes scored different items on '{topic}'.")
    where, others = topics.index(target), [i for i, t in enumerate(topics) if t != target]

    def statistic(*samples):  # each: [2 (right, left), draws, items]
        ideology = np.stack([(s[0] - s[1]).mean(axis=-1) / 2 for s in samples])  # [topic, draw]
        drift = np.stack([(s[0] + s[1]).mean(axis=-1) / 2 for s in samples])
        return np.stack([ideology[where], ideology[others].mean(axis=0), drift[others].mean(axis=0)])

    samples = [np.stack([right_shifts[t], left_shifts[t]]) for t in topics]
    point, low, high = bootstrap(statistic, samples, n_boot=n_boot, seed=seed)
    estimates = [Estimate(float(point[k]), float(low[k]), float(high[k])) for k in range(3)]
    return LeaningSplit(
        target,
        *estimates,
        {t: float((right_shifts[t] - left_shifts[t]).mean() / 2) for t in topics},
        {t: float((right_shifts[t] + left_shifts[t]).mean() / 2) for t in topics},
    )
