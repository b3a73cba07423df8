"""The paper's neuron claims as one table, each measured with its CI against its control.

(i) a small general set exists; (ii) patching it from the fine-tuned model into the base recovers
the cross-topic shift (CTG) beyond disjoint random controls — and mean-ablating it in the fine-tuned
model removes it; (iii) patching the target's specific set recovers more of the target's shift than
of the CTG; (iv) inhibiting the general set during fine-tuning (InhibitFT) keeps the target and cuts
the CTG beyond its control; (v) where in depth the set lives and how its neurons' output weights line
up with the leaning direction.

Everything is read from a run's files (``localize/summary.json``, ``patch/recovery.json``,
``mitigation.json``), so the table can be rebuilt for any run folder without a model.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass

import numpy as np

from polineurons.patching import CTG

SMALL = 0.05  # a "small" general set: at most 5% of all neurons
DISTINCT = 0.5  # topics' top sets overlap less than this (mean pairwise Jaccard)
FOLD = 2.0  # the general set must recover at least this many times what the controls recover
KEPT = 0.9
NEURON_METHODS = ("inhibit-zero", "inhibit-freeze", "stopgrad")


@dataclass(frozen=True)
class Claim:
    """One row: the claim, what was measured (with its CI), its control, and whether it holds (None:
    not measured)."""

    key: str
    claim: str
    measured: str
    control: str
    holds: bool | None

    def to_dict(self) -> dict:
        return asdict(self)


def _ci(row: Mapping, key: str = "recovery") -> str:
    """``value [low, high]`` of a recovery row (``ci_low``) or a frontier row (``{key}_ci_low``)."""
    low, high = ("ci_low", "ci_high") if key == "recovery" else (f"{key}_ci_low", f"{key}_ci_high")
    return f"{row[key]:+.2f} [{row[low]:+.2f}, {row[high]:+.2f}]"


def _pairs(matrix: Mapping[str, Mapping[str, float]]) -> dict[str, float]:
    """Mean and max over topic pairs of a Jaccard matrix (folders written before ``pairwise_jaccard``)."""
    topics = list(matrix)
    values = [matrix[a][b] for i, a in enumerate(topics) for b in topics[i + 1 :]] or [1.0]
    return {"mean": sum(values) / len(values), "max": max(values)}


def _small_set(summary: Mapping) -> Claim:
    general, pairs = summary["general"], summary.get("pairwise_jaccard") or _pairs(summary["jaccard"])
    measured = (
        f"{general['count']:,} neurons ({general['fraction']:.1%}); topics' top sets overlap "
        f"{pairs['mean']:.2f} (mean Jaccard, max {pairs['max']:.2f})"
    )
    holds = general["count"] > 0 and general["fraction"] <= SMALL and pairs["mean"] < DISTINCT
    control = f"small: ≤ {SMALL:.0%} of neurons; topic-specific: overlap < {DISTINCT}"
    return Claim("i", "a small general set exists", measured, control, holds)


def _versus_controls(
    recovery: Mapping, prefix: str, what: str, key: str, reason: str, overlaps: Mapping | None
) -> Claim:
    name = f"{prefix}general"
    if name not in recovery or CTG not in recovery[name]:  # also: a folder from before the CTG column
        return Claim(key, what, "not measured", "", None)
    controls = [rows[CTG] for n, rows in recovery.items() if n.startswith(f"{prefix}random:") and CTG in rows]
    if not controls:
        return Claim(key, what, f"CTG {_ci(recovery[name][CTG])}", f"no disjoint control: {reason}", None)
    row = recovery[name][CTG]
    mean = float(np.mean([c["recovery"] for c in controls]))
    top = max(c["ci_high"] for c in controls)
    measured = f"CTG {_ci(row)}"
    overlap = sum(overlaps.values()) if overlaps else "not recorded"
    control = (
        f"{len(controls)} random sets (general neurons in them: {overlap}): mean {mean:+.2f}, "
        f"highest CI bound {top:+.2f}"
    )
    holds = row["recovery"] >= FOLD * max(mean, 0.0) and row["ci_low"] > top and row["recovery"] > 0
    return Claim(key, what, measured, control, bool(holds))


def _specific(recovery: Mapping, target: str | None) -> Claim:
    what = "patching the target's specific set recovers more of the target's shift than of the CTG"
    rows = recovery.get(f"specific:{target}") if target else None
    if not rows or CTG not in rows:
        return Claim("iii", what, "not measured", "", None)
    own, ctg = rows[target], rows[CTG]
    return Claim("iii", what, f"target {_ci(own)}", f"CTG {_ci(ctg)}", bool(own["ci_low"] > ctg["ci_high"]))


def _inhibit(mitigation: Mapping | None) -> Claim:
    what = f"InhibitFT on the general set keeps ≥ {KEPT:.0%} of the target and cuts the CTG beyond its control"
    frontier = (mitigation or {}).get("frontier", {})
    rows = [(m, r) for m in NEURON_METHODS for r in frontier.get(m, []) if "control" in r]
    if not rows:
        return Claim("iv", what, "not measured", "", None)
    kept = [(m, r) for m, r in rows if r["target_kept"] >= KEPT]
    method, row = max(kept or rows, key=lambda mr: mr[1]["ctg_reduction"])
    control = row["control"]
    measured = (
        f"{method} s={row['strength']:g} ({len(row['seeds'])} seeds): kept {_ci(row, 'target_kept')}, "
        f"CTG reduction {_ci(row, 'ctg_reduction')}"
    )
    versus = f"control: kept {control['target_kept']:.2f}, CTG reduction {_ci(control, 'ctg_reduction')}"
    holds = bool(kept) and row["ctg_reduction_ci_low"] > control["ctg_reduction_ci_high"]
    return Claim("iv", what, measured, versus, holds)


def _depth(summary: Mapping, cosines: Mapping | None) -> Claim:
    counts = np.array(summary["general"]["layer_counts"], dtype=float)
    what = "where the general set lives, and its output weights against the leaning direction"
    if counts.sum() == 0:
        return Claim("v", what, "empty set", "", None)
    thirds = np.array_split(counts, 3)
    share = " / ".join(f"{part.sum() / counts.sum():.0%}" for part in thirds)
    measured = f"early / middle / late thirds of the layers: {share}"
    control = ""
    if cosines:
        general, random = cosines.get("general", {}), cosines.get("random", {})
        parts = [
            f"layer {layer}: mean cosine {row['mean']:+.3f} (|cos| {row['mean_abs']:.3f})"
            + (f" vs random |cos| {random[layer]['mean_abs']:.3f}" if layer in random else "")
            for layer, row in general.items()
        ]
        measured += "; " + "; ".join(parts)
        control = "random: disjoint layer-matched sets"
    return Claim("v", what, measured, control, None)


def paper_claims(localize: Mapping, patch: Mapping | None = None, mitigation: Mapping | None = None) -> list[Claim]:
    """The five claims from a run's ``localize/summary.json`` payload, its patching result and its
    ``mitigation.json`` (each claim not measured where its file is missing)."""
    summary = localize["summary"]
    recovery = (patch or {}).get("recovery", {})
    target = (patch or {}).get("target")
    reason = (patch or {}).get("control_error") or "none drawn"
    overlaps = (patch or {}).get("control_overlap")
    return [
        _small_set(summary),
        _versus_controls(
            recovery, "", "patching the general set into the base recovers the CTG", "ii", reason, overlaps
        ),
        _versus_controls(
            recovery, "ablate:", "mean-ablating the general set removes the CTG", "ii-b", reason, overlaps
        ),
        _specific(recovery, target),
        _inhibit(mitigation),
        _depth(summary, (patch or {}).get("direction_cosine")),
    ]


def claims_markdown(claims: list[Claim]) -> str:
    """The table in Markdown (README, closing notes)."""
    mark = {True: "yes", False: "no", None: "–"}
    lines = ["| | claim | measured | control | holds |", "|---|---|---|---|---|"]
    lines += [f"| {c.key} | {c.claim} | {c.measured} | {c.control} | {mark[c.holds]} |" for c in claims]
    return "\n".join(lines)
