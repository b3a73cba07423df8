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
