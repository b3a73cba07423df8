"""Plotly figures built from results (never from live models)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import plotly.graph_objects as go
import torch

from polineurons.artifacts import RunArtifacts
from polineurons.generalization import Generalization
from polineurons.localization import SIGNED
from polineurons.patching import CTG, Recovery
from polineurons.stance import StanceResult


def generalization_heatmap(
    targets: Sequence[str], topics: Sequence[str], shifts: np.ndarray, *, title: str | None = None
) -> go.Figure:
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


def matrix_heatmaps(matrix: dict) -> go.Figure:
    """The cross-topic matrix (``polineurons matrix``'s ``matrix.json``): one heatmap per leaning,
    rows = fine-tuning target, columns = evaluated topic, colour = stance shift (red = moved right).
    A star marks a shift whose 95% CI excludes zero."""
    from plotly.subplots import make_subplots

    leanings, topics, targets = matrix["leanings"], matrix["topics"], matrix["targets"]
    cells = {(c["target"], c["leaning"]): c for c in matrix["cells"]}
    titles = [f"fine-tuned toward {leaning}" for leaning in leanings]
    figure = make_subplots(rows=1, cols=len(leanings), subplot_titles=titles, horizontal_spacing=0.12)
    values = [abs(row["shift"]) for c in matrix["cells"] for row in c["shifts"].values()]
    bound = max(values, default=1.0)
    for col, leaning in enumerate(leanings, start=1):
        rows = [
            [cells[(t, leaning)]["shifts"].get(topic) if (t, leaning) in cells else None for topic in topics]
            for t in targets
        ]
        z = [[r["shift"] if r else np.nan for r in row] for row in rows]
        text = [
            [f"{r['shift']:+.2f}{'*' if r['ci_low'] > 0 or r['ci_high'] < 0 else ''}" if r else "" for r in row]
            for row in rows
        ]
        ci = [[f"[{r['ci_low']:+.3f}, {r['ci_high']:+.3f}]" if r else "" for r in row] for row in rows]
        figure.add_trace(
            go.Heatmap(
                z=z,
                x=topics,
                y=targets,
                zmin=-bound,
                zmax=bound,
                colorscale="RdBu_r",
                text=text,
                customdata=ci,
                texttemplate="%{text}",
                showscale=col == len(leanings),
                colorbar={"title": "shift"},
                hovertemplate="fine-tuned on %{y}<br>evaluated on %{x}<br>shift %{z:+.3f} %{customdata}<extra></extra>",
            ),
            row=1,
            col=col,
        )
        for row, target in enumerate(targets):  # the target's own shift: outlined (categories sit at 0, 1, ...)
            if target in topics:
                column = topics.index(target)
                box = {"x0": column - 0.5, "x1": column + 0.5, "y0": row - 0.5, "y1": row + 0.5}
                figure.add_shape(type="rect", **box, line={"color": "black", "width": 2}, row=1, col=col)
        figure.update_xaxes(title_text="evaluated topic", row=1, col=col)
    figure.update_yaxes(autorange="reversed")
    figure.update_yaxes(title_text="fine-tuning target", row=1, col=1)
    for col in range(2, len(leanings) + 1):  # the rows are the same targets: label them once
        figure.update_yaxes(showticklabels=False, row=1, col=col)
    figure.update_xaxes(tickangle=30)
    figure.update_layout(
        title=f"Stance shift per evaluated topic after fine-tuning on one topic ({matrix['data']}; "
        "outlined: the target itself; * = 95% CI excludes 0)"
    )
    return figure


def mitigation_frontier(mitigation: dict) -> go.Figure:
    """CTG reduction against target kept (``mitigation.json``): one curve per method from vanilla (1, 0)
    over its strengths (pooled over seeds, 95% CIs both ways), its random control dashed, and its
    reading at 90% kept as a diamond; each curve over the seeds its reading uses. Up and to the right is
    better: more spill-over removed, more of the target kept."""
    figure = go.Figure()
    palette = ["#1b7837", "#d6604d", "#7570b3", "#e7298a", "#66a61e", "#e6ab02", "#1f78b4"]
    origin = {"strength": 0.0, "target_kept": 1.0, "ctg_reduction": 0.0}
    for number, (method, every) in enumerate(mitigation["frontier"].items()):
        colour = palette[number % len(palette)]
        seeds = mitigation["at_90"].get(method, {}).get("seeds")  # one curve: the rows on the most seeds
        rows = [r for r in every if seeds is None or r["seeds"] == seeds]
        controls = [r["control"] | {"strength": r["strength"]} for r in rows if "control" in r]
        for label, series, dash in ((method, rows, "solid"), (f"{method} (control)", controls, "dash")):
            if not series:
                continue
            figure.add_trace(
                go.Scatter(
                    x=[1.0] + [r["target_kept"] for r in series],
                    y=[0.0] + [r["ctg_reduction"] for r in series],
                    mode="lines+markers",
                    name=label,
                    text=["vanilla"] + [f"strength {r['strength']:g}" for r in series],
                    line={"color": colour, "dash": dash},
                    marker={"symbol": "circle" if dash == "solid" else "circle-open", "size": 8, "color": colour},
                    error_x=_row_errors([origin, *series], "target_kept", colour),
                    error_y=_row_errors([origin, *series], "ctg_reduction", colour),
                    hovertemplate=f"{label}<br>%{{text}}<br>target kept %{{x:.2f}}<br>"
                    "CTG reduction %{y:+.2f}<extra></extra>",
                )
            )
        reading = mitigation["at_90"].get(method, {})
        if reading.get("ctg_reduction"):
            estimate = reading["ctg_reduction"]
            figure.add_trace(
                go.Scatter(
                    x=[0.9],
                    y=[estimate["value"]],
                    mode="markers",
                    name=f"{method} at 90% kept",
                    marker={"symbol": "diamond", "size": 13, "color": colour},
                    error_y={
                        "type": "data",
                        "symmetric": False,
                        "array": [estimate["ci_high"] - estimate["value"]],
                        "arrayminus": [estimate["value"] - estimate["ci_low"]],
                        "color": colour,
                    },
                    hovertemplate=f"{method}: CTG reduction %{{y:+.2f}} at 90% kept (strength "
                    f"{reading['strength']:.3g})<extra></extra>",
                )
            )
    figure.add_vline(x=0.9, line_dash="dot", line_color=_GREY)
    figure.add_hline(y=0.0, line_color=_GREY, line_width=1)
    # whiskers included (only CIs beyond [-0.5, 2] run off the chart, where a ratio's denominator is near 0)
    points = [
        value
        for trace in figure.data
        for y, error in zip(trace.y, _whiskers(trace), strict=True)
        for value in (y - error[0], y + error[1])
        if np.isfinite(value)
    ]
    if points:  # a comparison with no method yet has only its axes
        figure.update_yaxes(range=[max(-0.5, min(points) - 0.05), min(2.0, max(points) + 0.05)])
    figure.update_layout(
        title=f"Mitigations on {mitigation['target']} ({mitigation['leaning']}): spill-over removed vs target kept",
        xaxis_title="target shift kept (treated / vanilla)",
        yaxis_title="CTG reduction (1 − treated / vanilla CTG)",
    )
    return figure


def _whiskers(trace: go.Scatter) -> list[tuple[float, float]]:
    """Each point's (below, above) y error bar of a trace (zeros where it has none)."""
    error = trace.error_y
    if error is None or error.array is None:
        return [(0.0, 0.0)] * len(trace.y)
    below = error.arrayminus if error.arrayminus is not None else error.array
    return list(zip(below, error.array, strict=True))


def _row_errors(rows: Sequence[dict], key: str, colour: str) -> dict:
    """Asymmetric error bars from flat rows (``key``, ``key_ci_low``, ``key_ci_high``; none where absent)."""
    return {
        "type": "data",
        "symmetric": False,
        "array": [r.get(f"{key}_ci_high", r[key]) - r[key] for r in rows],
        "arrayminus": [r[key] - r.get(f"{key}_ci_low", r[key]) for r in rows],
        "color": colour,
        "thickness": 1,
    }


# ---- figures of one run (built from its artifacts, see polineurons.artifacts.load_run) --------------

_RIGHT, _LEFT, _GREY, _ACCENT = "#d6604d", "#4393c3", "#9e9e9e", "#1b7837"


def _error_bars(rows: Sequence, key: str) -> dict:
    """Asymmetric error bars from rows with ``key``, ``ci_low`` and ``ci_high`` attributes."""
    return {
        "type": "data",
        "symmetric": False,
        "array": [r.ci_high - getattr(r, key) for r in rows],
        "arrayminus": [getattr(r, key) - r.ci_low for r in rows],
    }


def stance_bars(
    base_stance: StanceResult, finetuned_stance: StanceResult | None = None, *, target: str | None = None
) -> go.Figure:
    """Stance per topic (positive = leans right) with 95% CIs, base and (if given) fine-tuned."""
    figure = go.Figure()
    for label, stance, colour in (("base", base_stance, _GREY), ("fine-tuned", finetuned_stance, _RIGHT)):
        if stance is None:
            continue
        topics = list(stance.topics)
        rows = [stance.topics[t] for t in topics]
        figure.add_trace(
            go.Bar(
                x=topics, y=[r.score for r in rows], error_y=_error_bars(rows, "score"), name=label, marker_color=colour
            )
        )
    title = "Stance per topic (mean log-prob right answer − left answer; 95% CI)"
    figure.update_layout(
        title=title + (f" — fine-tuned on {target}" if target else ""),
        barmode="group",
        yaxis_title="stance score (positive = right)",
        xaxis_title="topic",
    )
    return figure


def shift_bars(generalization: Generalization) -> go.Figure:
    """Stance shift per topic (fine-tuned − base) with 95% CIs; the target topic highlighted."""
    target = generalization.target
    topics = list(generalization.shifts)
    rows = [generalization.shifts[t] for t in topics]
    figure = go.Figure(
        go.Bar(
            x=topics,
            y=[r.shift for r in rows],
            error_y=_error_bars(rows, "shift"),
            marker_color=[_ACCENT if t == target else _GREY for t in topics],
            hovertemplate="%{x}<br>shift %{y:+.3f}<extra></extra>",
        )
    )
    ratio = generalization.ctg_ratio
    figure.update_layout(
        title=(
            f"Stance shift after fine-tuning on {target} (green): target {generalization.target_shift:+.3f}, "
            f"CTG {generalization.ctg:+.3f}, CTG ratio {'n/a' if ratio is None else f'{ratio:+.2f}'}"
        ),
        yaxis_title="shift (fine-tuned − base)",
        xaxis_title="evaluated topic",
    )
    return figure


def layer_distribution(localize_summary: dict) -> go.Figure:
    """General neurons and each topic's specific neurons per layer."""
    summary = localize_summary.get("summary", localize_summary)
    counts = summary["general"]["layer_counts"]
    layers = list(range(len(counts)))
    figure = go.Figure(
        go.Bar(x=layers, y=counts, name=f"general ({summary['general']['count']:,})", marker_color=_ACCENT)
    )
    sizes = {row["count"] for row in summary["specific"].values()}
    same = len(sizes) == 1  # equal when the general set lies in every topic's top set: said once
    for topic, row in summary["specific"].items():
        name = f"specific: {topic}" + ("" if same else f" ({row['count']:,})")
        figure.add_trace(go.Scatter(x=layers, y=row["layer_counts"], mode="lines+markers", name=name))
    config = localize_summary.get("config", {})
    min_topics, others = config.get("min_topics"), config.get("general_over") == "others"
    n_topics = len(summary.get("topics", summary["specific"])) - others
    voters = f"{n_topics} {'other ' if others else ''}topics"
    sign = ", same sign," if config.get("contrast", "finetune") in SIGNED else ""
    rule = (
        f"in the top set{sign} of ≥ {min_topics} of {voters}" if min_topics else f"in the top set{sign} of all {voters}"
    )
    each = f"; each topic's specific set: {next(iter(sizes)):,}" if same and sizes else ""
    figure.update_layout(
        title=f"PNLAC neurons per layer (general = {rule}{each}; {summary['n_neurons']:,} neurons in all)",
        xaxis_title="layer",
        yaxis_title="neurons",
    )
    return figure


def patching_recovery(
    recovery: Mapping[str, Mapping[str, Recovery]],
    set_sizes: Mapping[str, int],
    target: str,
    *,
    scored: str | None = None,
) -> go.Figure:
    """Activation patching and mean-ablation of neuron sets. Left: the share of the fine-tune's shift
    each set carries, on the target and on the pooled other topics (CTG) — patched from the fine-tuned
    model into the base (recovered) or mean-ablated in the fine-tuned model (``ablate:``, removed);
    random sets (the general set's per-layer counts, none of its neurons) are the control. Right: the
    shift each patched set produces on every topic next to the fine-tune's own shift (absolute values:
    ratios are unstable on topics the fine-tune barely moved). ``scored`` says what was scored (items ×
    answer tokens): fewer than the generalization stage's, so its shifts differ from that stage's."""
    from plotly.subplots import make_subplots

    names = list(recovery)
    patched = [n for n in names if not n.startswith("ablate:")]
    columns = [t for t in (target, CTG) if t in next(iter(recovery.values()))]
    topics = sorted((t for t in next(iter(recovery.values())) if t != CTG), key=lambda t: t != target)
    colour = {name: _GREY if "random" in name else _ACCENT if name.endswith("general") else None for name in names}
    figure = make_subplots(
        rows=1,
        cols=2,
        column_widths=[0.45, 0.55],
        subplot_titles=(
            "share of the fine-tune's shift a set carries",
            "stance shift per topic: fine-tuned vs patched",
        ),
    )
    labels = [f"{name} ({set_sizes[name.removeprefix('ablate:')]:,})" for name in names]
    for column, pattern in zip(columns, ("", "/"), strict=False):
        rows = [recovery[name][column] for name in names]
        figure.add_trace(
            go.Bar(
                x=labels,
                y=[r.recovery for r in rows],
                error_y=_error_bars(rows, "recovery"),
                name=f"on {'the other topics (CTG)' if column == CTG else column + ' (target)'}",
                marker_color=[colour[n] or "#7570b3" for n in names],
                marker_pattern_shape=pattern,
                hovertemplate="%{x}<br>share %{y:.2f}<extra></extra>",
            ),
            row=1,
            col=1,
        )
    figure.add_hline(y=1.0, line_dash="dot", line_color="black", row=1, col=1)
    full = [recovery[names[0]][t].full_shift for t in topics]
    figure.add_trace(
        go.Bar(x=topics, y=full, name="fine-tuned (full shift)", marker_color="black", opacity=0.75), row=1, col=2
    )
    for name in patched:
        figure.add_trace(
            go.Bar(
                x=topics,
                y=[recovery[name][t].patched_shift for t in topics],
                name=f"patched: {name}",
                marker_color=colour[name],
                opacity=0.55 if name.startswith("random") else 1.0,
            ),
            row=1,
            col=2,
        )
    figure.update_yaxes(title_text="patched: recovered · ablate: removed", row=1, col=1)
    figure.update_xaxes(tickangle=-45, row=1, col=1)
    figure.update_yaxes(title_text="shift from base", row=1, col=2)
    title = "Activation patching: how much of the fine-tune's stance shift each neuron set carries"
    figure.update_layout(title=title + (f"<br><sup>{scored}</sup>" if scored else ""), barmode="group")
    return figure


def neuron_activations_view(examples: dict):
    """circuitsvis view of the top general neurons on example prompts: pick fine-tuned, base or
    their difference, and a neuron, in the drop-downs. Use ``.local_src`` for offline HTML."""
    from circuitsvis.activations import text_neuron_activations

    tokens, activations = [], []
    for i, prompt in enumerate(examples["prompts"]):
        tuned, base = examples["activations"][f"finetuned/{i}"], examples["activations"][f"base/{i}"]
        tokens.append(prompt["tokens"])
        activations.append(torch.stack([tuned, base, tuned - base], dim=1))  # [tokens, view, neurons]
    labels = [f"L{layer} N{index}" for layer, index in examples["neurons"]]
    return text_neuron_activations(
        tokens,
        activations,
        first_dimension_name="Model",
        second_dimension_name="Neuron",
        first_dimension_labels=["fine-tuned", "base", "fine-tuned − base"],
        second_dimension_labels=labels,
    )


def run_figures(run: RunArtifacts) -> dict[str, go.Figure]:
    """Every plotly figure a run's finished stages allow, by name."""
    figures: dict[str, go.Figure] = {}
    target = run.config["target"]
    if run.base_stance:
        figures["stance"] = stance_bars(run.base_stance, run.finetuned_stance, target=target)
    if run.generalization:
        figures["generalization"] = shift_bars(run.generalization)
    if run.localize:
        figures["neuron_layers"] = layer_distribution(run.localize)
    if run.recovery:
        patch = run.config.get("patch", {})
        items, tokens = (patch.get(k) or "all" for k in ("max_items", "max_answer_tokens"))
        scored = f"scored on {items} eval items per topic × {tokens} answer tokens"
        figures["patching"] = patching_recovery(
            run.recovery, run.patch["set_sizes"], run.patch["target"], scored=scored
        )
    if run.mitigation and run.mitigation["frontier"]:
        figures["mitigation"] = mitigation_frontier(run.mitigation)
    return figures
