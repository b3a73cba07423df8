"""Plotly figures built from results (never from live models)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import plotly.graph_objects as go


def generalization_heatmap(targets: Sequence[str], topics: Sequence[str], shifts: np.ndarray, *, title: str | None = None) -> go.Figure:
    """Heatmap of stance shifts: rows = fine-tuning target, columns = evaluated topic.

    Diverging colours centred on zero (red = moved right, blue = moved left); the diagonal holds
    each fine-tune's target shift, the rest is cross-topic generalization.
    """
    shifts = np.asarray(shifts, dtype=float)
    if shifts.shape != (len(targets), len(topics)):
        raise ValueError(f"shifts has shape {shifts.shape}, expected ({len(targets)}, {len(topics)}).")
    bound = float(np.nanmax(np.abs(shifts))) if np.isfinite(shifts).any() else 1.0
    figure = go.Figure(
        go.Heatmap(
            z=shifts,
            x=list(topics),
            y=list(targets),
            zmin=-bound,
            zmax=bound,
            colorscale="RdBu_r",
            text=[[f"{v:+.2f}" for v in row] for row in shifts],
            texttemplate="%{text}",
            colorbar={"title": "shift"},
            hovertemplate="fine-tuned on %{y}<br>evaluated on %{x}<br>shift %{z:+.3f}<extra></extra>",
        )
    )
    figure.update_layout(
        title=title or "Stance shift after fine-tuning (rows) on each evaluated topic (columns)",
        xaxis_title="evaluated topic",
        yaxis_title="fine-tuning target",
        yaxis_autorange="reversed",
    )
    return figure


def inhibitft_tradeoff(summary: dict) -> go.Figure:
    """CTG reduction and target shift kept against the percent of neurons inhibited, one line per
    mode, with the layer-matched random control as open markers (from an InhibitFT ``summary.json``)."""
    from plotly.subplots import make_subplots

    figure = make_subplots(rows=1, cols=2, subplot_titles=("CTG reduction", "target shift kept"), shared_xaxes=True)
    groups: dict[str, list[dict]] = {}
    for row in summary["comparisons"].values():
        label = "random control (zero)" if row["control"] else (f"scale {row['scale']:g}" if row["mode"] == "scale" else row["mode"])
        groups.setdefault(label, []).append(row)
    for label, rows in groups.items():
        rows = sorted(rows, key=lambda r: r["percent"])
        control = label.startswith("random")
        for col, key in ((1, "ctg_reduction"), (2, "target_kept")):
            values = [r[key] for r in rows]
            figure.add_trace(
                go.Scatter(
                    x=[r["percent"] for r in rows],
                    y=[v["value"] for v in values],
                    error_y={"type": "data", "symmetric": False,
                             "array": [v["ci_high"] - v["value"] for v in values],
                             "arrayminus": [v["value"] - v["ci_low"] for v in values]},
                    mode="markers" if control else "lines+markers",
                    marker={"symbol": "circle-open" if control else "circle", "size": 9},
                    name=label,
                    legendgroup=label,
                    showlegend=col == 1,
                ),
                row=1,
                col=col,
            )
    figure.update_xaxes(title_text="% of all MLP neurons inhibited", type="log")
    figure.update_layout(title=f"InhibitFT on {summary.get('target', '?')}: spill-over removed vs target kept")
    return figure
