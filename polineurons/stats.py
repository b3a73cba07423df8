"""Every bootstrap and pairing rule of the project, in one place.

All intervals are seeded percentile bootstraps over *items*: resampling rows of paired arrays
together (the same items before and after, or in two runs), so what is compared stays paired.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np


@dataclass(frozen=True)
class Estimate:
    """A point value with a 95% (or other) confidence interval."""

    value: float
    ci_low: float
    ci_high: float

    def to_dict(self) -> dict[str, float]:
        return {"value": self.value, "ci_low": self.ci_low, "ci_high": self.ci_high}

    @classmethod
    def from_dict(cls, data: Mapping[str, float]) -> Estimate:
        return cls(data["value"], data["ci_low"], data["ci_high"])


def _generator(seed: int | None, rng: np.random.Generator | None) -> np.random.Generator:
    return rng if rng is not None else np.random.default_rng(0 if seed is None else seed)


def bootstrap(
    statistic: Callable[..., np.ndarray],
    samples: Sequence[np.ndarray],
    *,
    n_boot: int = 2000,
    seed: int | None = 0,
    rng: np.random.Generator | None = None,
    confidence: float = 0.95,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Point value and percentile interval of ``statistic`` over item-resampled ``samples``.

    Each sample is an array whose LAST axis is items (``[n_items]``, or ``[k, n_items]`` for k
    paired values per item: resampled together, so they stay paired). Each draw resamples every
    sample's items in turn. ``statistic`` receives the resampled arrays, shaped
    ``[..., n_draws, n_items]``, and returns ``[..., n_draws]``. Non-finite draws (a ratio whose
    denominator hit zero) are left out of the interval. Pass ``rng`` to continue a stream shared by
    several calls, else ``seed``.

    Returns ``(value, ci_low, ci_high)``, each shaped like one draw of the statistic.
    """
    arrays = [np.asarray(s, dtype=np.float64) for s in samples]
    if not arrays or any(a.shape[-1] == 0 for a in arrays):
        raise ValueError("bootstrap needs at least one non-empty sample.")
    generator = _generator(seed, rng)
    if len(arrays) == 1:  # the same stream as drawing one resample at a time, vectorized
        draws = [generator.integers(0, arrays[0].shape[-1], size=(n_boot, arrays[0].shape[-1]))]
    else:
        draws = [np.empty((n_boot, a.shape[-1]), dtype=np.int64) for a in arrays]
        for b in range(n_boot):
            for d, a in zip(draws, arrays, strict=True):
                d[b] = generator.integers(0, a.shape[-1], a.shape[-1])
    with np.errstate(divide="ignore", invalid="ignore"):
        point = np.asarray(statistic(*[a[..., None, :] for a in arrays]), dtype=np.float64)[..., 0]
        values = np.asarray(statistic(*[a[..., d] for a, d in zip(arrays, draws, strict=True)]), dtype=np.float64)
    low, high = _percentile_interval(values, point.shape, confidence)
    return point, low, high


def _percentile_interval(values: np.ndarray, shape: tuple, confidence: float) -> tuple[np.ndarray, np.ndarray]:
    """Per statistic (``values``: ``[..., draws]``), the percentile interval of its finite draws."""
    tail = round(50 * (1.0 - confidence), 10)  # 2.5 for 95%, without float residue
    flat = values.reshape(-1, values.shape[-1])
    bounds = np.full((flat.shape[0], 2), np.nan)
    for row, column in enumerate(flat):
        finite = column[np.isfinite(column)]
        if finite.size:
            bounds[row] = np.percentile(finite, [tail, 100 - tail])
    return bounds[:, 0].reshape(shape), bounds[:, 1].reshape(shape)


def bootstrap_ci(
    values: Sequence[float], *, n_boot: int = 2000, seed: int = 0, confidence: float = 0.95
) -> tuple[float, float]:
    """Percentile bootstrap confidence interval of the mean (seeded, so reruns agree)."""
    data = np.asarray(values, dtype=np.float64)
    if data.size == 0:
        raise ValueError("bootstrap_ci needs at least one value.")
    if data.size == 1:
        return float(data[0]), float(data[0])
    _, low, high = bootstrap(lambda x: x.mean(axis=-1), [data], n_boot=n_boot, seed=seed, confidence=confidence)
    return float(low), float(high)


def bootstrap_ratio(
    numerator: Sequence[float],
    denominator: Sequence[float],
    *,
    n_boot: int = 2000,
    seed: int | None = 0,
    rng: np.random.Generator | None = None,
) -> Estimate:
    """mean(numerator) / mean(denominator) over paired items, with a bootstrap CI (NaN when the
    denominator's mean is 0)."""
    paired = np.stack([np.asarray(numerator, dtype=np.float64), np.asarray(denominator, dtype=np.float64)])
    point, low, high = bootstrap(
        lambda x: x[0].mean(axis=-1) / x[1].mean(axis=-1), [paired], n_boot=n_boot, seed=seed, rng=rng
    )
    return Estimate(float(point) if paired[1].mean() != 0 else float("nan"), float(low), float(high))


class Scored(Protocol):
    """An item score: what :func:`paired_shifts` pairs (``polineurons.stance.ItemScore`` is one)."""

    id: str
    topic: str

    @property
    def score(self) -> float: ...


def paired_shifts(before: Iterable[Scored], after: Iterable[Scored]) -> dict[str, np.ndarray]:
    """``topic -> after − before`` per item, paired by item id, in ``after``'s order."""
    scores = {item.id: item.score for item in before}
    shifts: dict[str, list[float]] = {}
    for item in after:
        if item.id not in scores:
            raise ValueError(f"Item {item.id} was scored after fine-tuning but not before.")
        shifts.setdefault(item.topic, []).append(item.score - scores[item.id])
    return {topic: np.array(values) for topic, values in shifts.items()}


def _ranks(values: Sequence[float]) -> np.ndarray:
    array = np.asarray(values, dtype=np.float64)
    order = array.argsort(kind="stable")
    ranks = np.empty(len(array))
    ranks[order] = np.arange(len(array))
    for value in np.unique(array):  # average ranks for ties
        tied = array == value
        ranks[tied] = ranks[tied].mean()
    return ranks


def spearman(a: Sequence[float], b: Sequence[float]) -> float:
    """Spearman rank correlation (average ranks for ties); NaN when either side is constant."""
    ranks_a, ranks_b = _ranks(a), _ranks(b)
    if ranks_a.std() == 0 or ranks_b.std() == 0:
        return float("nan")
    return float(np.corrcoef(ranks_a, ranks_b)[0, 1])


def seed_item_bootstrap(
    statistic: Callable[..., np.ndarray],
    samples: Sequence[np.ndarray],
    *,
    n_boot: int = 2000,
    seed: int = 0,
    confidence: float = 0.95,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Point value and percentile interval of ``statistic`` when runs are repeated over training seeds:
    each draw resamples the seeds AND the items.

    Each sample is ``[runs, seeds, items]`` (e.g. one topic's per-item shifts of vanilla and treated
    runs, per training seed). A draw picks ``seeds`` seeds with replacement — the same ones for every run
    and sample, so runs stay paired by seed — and each sample's items with replacement — the same
    items for every run and seed, so runs stay paired by item. ``statistic`` receives, per sample, the
    mean over the drawn seeds of the mean over the drawn items, ``[runs, draws]``, and returns
    ``[..., draws]``. Non-finite draws are left out of the interval.

    Returns ``(value, ci_low, ci_high, draws)``; ``draws`` (``[..., n_boot]``) tells, e.g., how often a
    statistic was undefined.
    """
    arrays = [np.asarray(s, dtype=np.float64) for s in samples]
    if not arrays or any(a.ndim != 3 or a.shape[-1] == 0 for a in arrays):
        raise ValueError("seed_item_bootstrap needs [runs, seeds, items] samples with at least one item.")
    n_seeds = arrays[0].shape[1]
    if any(a.shape[:2] != arrays[0].shape[:2] for a in arrays):
        raise ValueError("Every sample needs the same runs and seeds.")
    generator = np.random.default_rng(seed)
    seed_draws = generator.integers(0, n_seeds, size=(n_boot, n_seeds))
    item_draws = [generator.integers(0, a.shape[-1], size=(n_boot, a.shape[-1])) for a in arrays]
    with np.errstate(divide="ignore", invalid="ignore"):
        point = np.asarray(statistic(*[a.mean(axis=-1).mean(axis=-1)[:, None] for a in arrays]))[..., 0]
        means = []
        for a, items in zip(arrays, item_draws, strict=True):
            per_seed = a[:, :, items].mean(axis=-1)  # [runs, seeds, draws]
            chosen = np.take_along_axis(per_seed, seed_draws.T[None], axis=1)  # [runs, seeds drawn, draws]
            means.append(chosen.mean(axis=1))
        values = np.asarray(statistic(*means), dtype=np.float64)
    low, high = _percentile_interval(values, point.shape, confidence)
    return point, low, high, values
