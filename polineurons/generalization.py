"""Cross-topic generalization: how far a fine-tune on one topic moves the stance on the others.

Per topic, the shift is fine-tuned minus base stance, with a bootstrap CI on the paired per-item
differences. Target shift = shift on the fine-tuned topic; CTG = mean shift over the other topics;
CTG ratio = CTG / target shift.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass

import numpy as np

from polineurons.data.items import StanceDataset
from polineurons.stance import StanceConfig, StanceResult, measure_stance
from polineurons.stats import bootstrap_ci, paired_shifts


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
    target: str
    shifts: dict[str, TopicShift]

    @property
    def target_shift(self) -> float:
        return self.shifts[self.target].shift

    @property
    def ctg(self) -> float:
        """Mean shift over the non-target topics."""
        others = [s.shift for topic, s in self.shifts.items() if topic != self.target]
        return float(np.mean(others)) if others else float("nan")

    @property
    def ctg_ratio(self) -> float | None:
        """CTG / target shift (None when the target did not move)."""
        return self.ctg / self.target_shift if self.target_shift != 0 else None

    def to_dict(self) -> dict:
        return {
            "target": self.target,
            "target_shift": self.target_shift,
            "ctg": self.ctg,
            "ctg_ratio": self.ctg_ratio,
            "shifts": {topic: asdict(shift) for topic, shift in self.shifts.items()},
        }

    def table(self) -> str:
        """Plain-text table: base, fine-tuned and shift with CI per topic, then the headline numbers."""
        lines = [f"{'topic':<24}{'base':>8}{'tuned':>8}{'shift':>9}  95% CI"]
        for topic, row in self.shifts.items():
            mark = "  <- target" if topic == self.target else ""
            lines.append(
                f"{topic:<24}{row.base:>+8.3f}{row.finetuned:>+8.3f}{row.shift:>+9.3f}  "
                f"[{row.ci_low:+.3f}, {row.ci_high:+.3f}]{mark}"
            )
        ratio = "n/a" if self.ctg_ratio is None else f"{self.ctg_ratio:+.2f}"
        lines.append(f"target shift {self.target_shift:+.3f}   CTG {self.ctg:+.3f}   CTG ratio {ratio}")
        return "\n".join(lines)

    @classmethod
    def from_dict(cls, data: Mapping) -> Generalization:
        """Rebuild from :meth:`to_dict` output (extra keys are ignored)."""
        return cls(data["target"], {topic: TopicShift(**row) for topic, row in data["shifts"].items()})


def compare(base: StanceResult, finetuned: StanceResult, target: str, *, seed: int = 0) -> Generalization:
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
    return Generalization(target, shifts)


def measure_generalization(
    base_model,
    finetuned_model,
    dataset: StanceDataset,
    target: str,
    config: StanceConfig = StanceConfig(),
    *,
    base_result: StanceResult | None = None,
    progress: bool = True,
    seed: int = 0,
) -> tuple[Generalization, StanceResult, StanceResult]:
    """Score both models on every topic's eval items; returns the shifts and both stance results.

    Pass ``base_result`` to reuse an earlier scoring of the base model on the same items.
    """
    before = base_result or measure_stance(base_model, dataset, config, progress=progress, seed=seed)
    after = measure_stance(finetuned_model, dataset, config, progress=progress, seed=seed)
    return compare(before, after, target, seed=seed), before, after


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
