"""One league over several mitigation folders: each method's CTG reduction at 90% of the target kept,
best first, beside its control — with the settings that set each reading apart.

A study folder holds one setting per method (its directions, rank, layers; its training length), so
comparing how a method is aimed, or how long the fine-tune runs, means comparing folders. Nothing is
recomputed: every reading is the folder's own ``mitigation.json`` (``at_90``), and the settings come
from its ``study.json`` (what the comparison's trials share) and the method's stored settings. Read
``against`` another folder, the readings are recomputed from the stored trials relative to that folder's
vanilla (:mod:`polineurons.against`): nothing is trained either way.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from polineurons.against import StoredComparison, frontier_against
from polineurons.errors import MissingFileError
from polineurons.frontier import KEPT, interval, row_interval
from polineurons.io import read_json


@dataclass(frozen=True)
class Reading:
    """One method of one folder at 90% of the target kept (``ctg_reduction`` None: no reading, ``reason``).
    Read against another folder, ``vanilla`` is that folder's and ``folder_vanilla`` this folder's own
    vanilla relative to it (``target_kept``, ``ctg_reduction``... with CIs)."""

    folder: str
    method: str
    seeds: list[int]
    strength: float | None
    ctg_reduction: dict | None  # value, ci_low, ci_high
    control_ctg_reduction: dict | None
    vanilla: dict  # the folder's pooled vanilla: target_shift, ctg (with CIs)
    settings: dict = field(default_factory=dict)  # flat: "finetune.max_steps", "directions", ...
    reason: str | None = None
    folder_vanilla: dict | None = None  # read against another folder: the folder's own vanilla, relative to it
    checks: dict = field(default_factory=dict)  # check data name -> its CTG reduction at 90% kept (None: no reading)

    def to_dict(self) -> dict:
        return asdict(self)


def _flat(settings: Mapping, prefix: str = "") -> dict:
    flat = {}
    for key, value in settings.items():
        if isinstance(value, Mapping):
            flat |= _flat(value, f"{prefix}{key}.")
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def folder_readings(folder: str | Path, against: str | Path | StoredComparison | None = None) -> list[Reading]:
    """Every method's reading at 90% kept in one ``mitigate`` (or ``run``) folder, with all its settings;
    with ``against``, read relative to that folder's vanilla (:func:`polineurons.against.frontier_against`).

    Raises:
        MissingFileError: the folder holds no ``mitigation.json`` (or, with ``against``, no comparison).
    """
    folder = Path(folder)
    path = folder / "mitigation.json"
    if against is None and not path.is_file():
        raise MissingFileError(f"{folder} holds no mitigation.json: run `polineurons mitigate --out {folder}` first.")
    result = frontier_against(folder, against) if against is not None else read_json(path)
    study = folder / "study.json"
    shared = read_json(study)["plans"].get("mitigate", {}) if study.is_file() else {}
    shared = {k: v for k, v in shared.items() if k not in ("model", "data")} | {
        "model": result.get("model"),
        "data": result.get("data"),
    }
    by_method, checks = {row["method"]: row for row in result["league"]}, result.get("checks", {})
    readings = []
    for method, at_90 in result["at_90"].items():
        row = by_method.get(method, {})
        made = dict(result.get("method_settings", {}).get(method, {}))
        if "rank" in made:  # stored settings omit the default token choice (older trials keep their keys)
            made.setdefault("direction_tokens", "all")
        settings = _flat(shared) | _flat(made)
        readings.append(
            Reading(
                folder=str(folder),
                method=method,
                seeds=list(row.get("seeds", at_90.get("seeds", []))),
                strength=at_90.get("strength"),
                ctg_reduction=at_90.get("ctg_reduction"),
                control_ctg_reduction=at_90.get("control_ctg_reduction"),
                vanilla=result["vanilla"]["pooled"],
                settings=settings,
                reason=at_90.get("reason"),
                folder_vanilla=result.get("folder_vanilla"),
                checks={name: c["at_90"].get(method, {}).get("ctg_reduction") for name, c in checks.items()},
            )
        )
    return readings


def _apart(readings: Sequence[Reading]) -> list[dict]:
    """Each reading's settings narrowed to the keys whose values differ among the readings that have them
    (a key only some methods have, such as a neuron method's ``percent``, is no difference by itself)."""
    keys = sorted({k for r in readings for k in r.settings})

    def varies(key: str) -> bool:
        values = {json.dumps(r.settings[key], sort_keys=True) for r in readings if key in r.settings}
        return len(values) > 1

    differing = [k for k in keys if varies(k)]
    return [{k: r.settings[k] for k in differing if k in r.settings} for r in readings]


def league_across(folders: Sequence[str | Path], against: str | Path | None = None) -> list[Reading]:
    """The readings of every folder, best CTG reduction at 90% kept first (then those without one),
    each reading's ``settings`` narrowed to what differs among them. With ``against`` (a folder trained
    otherwise, e.g. for fewer steps), every folder is read relative to that folder's vanilla: CTG
    reduction at 90% of ITS target shift (:mod:`polineurons.against`).

    Example::

        for reading in league_across(["runs/flip", "runs/pca"]):
            print(reading.folder, reading.method, reading.ctg_reduction, reading.settings)
    """
    if not folders:
        raise ValueError("league_across needs at least one folder.")
    reference = StoredComparison.read(against) if against is not None else None  # read once for every folder
    readings = [r for folder in folders for r in folder_readings(folder, reference)]
    readings = [
        Reading(**{**asdict(r), "settings": apart}) for r, apart in zip(readings, _apart(readings), strict=True)
    ]
    read = sorted((r for r in readings if r.ctg_reduction), key=lambda r: -r.ctg_reduction["value"])
    return read + [r for r in readings if not r.ctg_reduction]


def _interval(estimate: Mapping | None) -> str:
    return interval(estimate) if estimate else "—"


def _setting(key: str, value) -> str:
    return f"{key}={' '.join(map(str, value)) if isinstance(value, list) else value}"


def league_across_text(readings: Sequence[Reading]) -> str:
    """Plain-text table of :func:`league_across`: folder, method, what sets it apart, and its reading (with
    the same reading on each check data set; read against another folder: also each folder's own vanilla
    relative to that folder's)."""
    against = any(r.folder_vanilla for r in readings)
    width, own_header = (36, "own vanilla: kept, CTG reduction") if against else (0, "")
    checks = sorted({name for r in readings for name in r.checks})  # the same reading on each check data set
    lines = [
        f"{'folder':<22}{'method':<14}{'seeds':>6}{'strength':>9}{f'CTG reduction at {KEPT:.0%} kept':>28}"
        f"{'control':>24}{'vanilla CTG':>13}{own_header:>{width}}{''.join(f'{name:>24}' for name in checks)}"
        "  settings apart"
    ]
    for r in readings:
        apart = ", ".join(_setting(k, v) for k, v in r.settings.items())
        if r.ctg_reduction:
            strength, reading = f"{r.strength:.3g}", _interval(r.ctg_reduction)
        else:
            strength, reading = "—", "no reading"
        own = ""
        if against:
            own = f"{r.folder_vanilla['target_kept']:.2f}, {row_interval(r.folder_vanilla, 'ctg_reduction')}"
        lines.append(
            f"{Path(r.folder).name:<22}{r.method:<14}{len(r.seeds):>6}{strength:>9}{reading:>28}"
            f"{_interval(r.control_ctg_reduction):>24}{r.vanilla['ctg']:>+13.3f}{own:>{width}}"
            f"{''.join(f'{_interval(r.checks.get(name)):>24}' for name in checks)}  {apart}"
        )
    lines += [f"{Path(r.folder).name} {r.method}: {r.reason}" for r in readings if r.reason]
    return "\n".join(lines)
