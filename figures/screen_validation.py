"""Validate the spill-over screen against measured spill-over.

For every cell of one or more `polineurons matrix` folders (one per training data set), screen the
cell's training data with the base model alone against each eval set the matrix scored — its own
data's eval answers and, with --check NAME, a check data set's where the matrix scored it — and
compare the screen's predictions with the CTG and CTG ratio measured on the same eval answers
(signed toward the trained leaning). The screen is symmetric in the leaning, so it runs once per
(training data, target, eval set) and is compared with both leanings' cells and, for a target
fine-tuned both ways, with the spill-over that flips with the leaning (``ideology`` rows: matrix.json's
``leaning_split``). Rank correlations are taken per eval set (the screen compares training sets on one
eval set), per leaning, over both leanings, and for the ideology rows; for two training data sets on
the same eval set, it counts the targets where the screen orders them as the measured CTG does.
Prints the table and the Spearman correlations; writes validation.json and a scatter figure.

    .venv/bin/python figures/screen_validation.py runs/matrix runs/matrix-v1 --check voices --out figures/screen
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import plotly.graph_objects as go

from polineurons import load_model
from polineurons.data import load_data
from polineurons.io import read_json, write_json
from polineurons.screening import ScreenConfig, StanceAxes, screen, stance_axes
from polineurons.stats import spearman

PREDICTORS = ("transfer_cosine", "predicted_ctg_ratio", "lexical_transfer")
MEASURES = ("ctg", "ctg_ratio")


def rank_correlations(rows: list[dict]) -> dict[str, float | None]:
    """Spearman of each predictor with each measure, per eval set × training data (each, and all
    together) × leaning (each, both, and the ideology rows); None with fewer than 3 cells or a constant
    column."""
    correlations = {}
    for eval_name in dict.fromkeys(r["eval"] for r in rows):
        on_eval = [r for r in rows if r["eval"] == eval_name]
        datas = list(dict.fromkeys(r["data"] for r in on_eval))
        for data in datas + (["all"] if len(datas) > 1 else []):
            chosen_data = [r for r in on_eval if data in ("all", r["data"])]
            leanings = list(dict.fromkeys(r["leaning"] for r in chosen_data))
            groups = {lean: [r for r in chosen_data if r["leaning"] == lean] for lean in leanings}
            if "left" in groups and "right" in groups:
                groups["both"] = [r for r in chosen_data if r["leaning"] in ("left", "right")]
            for predictor in PREDICTORS:
                for measure in MEASURES:
                    for group, chosen in groups.items():
                        x, y = [r["screen"][predictor] for r in chosen], [r["measured"][measure] for r in chosen]
                        value = spearman(x, y) if len(chosen) >= 3 else math.nan
                        where = f"{eval_name} eval, trained on {data}, {group}, n = {len(chosen)}"
                        key = f"{predictor} vs {measure} ({where})"
                        correlations[key] = None if math.isnan(value) else value
    return correlations


def pairwise_orderings(rows: list[dict]) -> dict[str, dict[str, int]]:
    """For two training data sets scored on the same eval set with the same leaning: on how many of
    their shared targets does each predictor order them as the measured CTG does?"""
    orderings = {}
    for eval_name in dict.fromkeys(r["eval"] for r in rows):
        for leaning in dict.fromkeys(r["leaning"] for r in rows):
            by = {(r["data"], r["target"]): r for r in rows if r["eval"] == eval_name and r["leaning"] == leaning}
            datas = list(dict.fromkeys(d for d, _ in by))
            for i, a in enumerate(datas):
                for b in datas[i + 1 :]:
                    shared = [t for d, t in by if d == a and (b, t) in by]
                    for predictor in PREDICTORS:
                        agree = sum(
                            (by[a, t]["screen"][predictor] - by[b, t]["screen"][predictor])
                            * (by[a, t]["measured"]["ctg"] - by[b, t]["measured"]["ctg"])
                            > 0
                            for t in shared
                        )
                        key = f"{predictor}: {a} vs {b} ({eval_name} eval, {leaning})"
                        orderings[key] = {"agree": int(agree), "targets": len(shared)}
    return orderings


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("matrices", type=Path, nargs="*", help="`polineurons matrix` folders")
    parser.add_argument("--replot", type=Path, help="redraw the figures of a validation.json (no model, no matrices)")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--model", default=None, help="base model (default: the embedded model)")
    parser.add_argument("--check", default=None, help="also a check data set, where a matrix scored it")
    parser.add_argument("--no-png", action="store_true", help="skip the PNG (needs kaleido and chromium)")
    args = parser.parse_args(argv)
    if args.replot:
        write_figures(validation_figure(read_json(args.replot)["rows"]), args.out, png=not args.no_png)
        return 0
    if not args.matrices:
        parser.error("give matrix folders, or --replot a validation.json")
    model = load_model(args.model, device="cpu")
    axes: dict[str, StanceAxes] = {}  # eval set -> its stance axes, shared by every screen against it
    screened: dict[tuple[str, str, str], dict] = {}  # (training data, target, eval set) -> predictors
    rows = []
    for folder in args.matrices:
        matrix = read_json(folder / "matrix.json")
        data = load_data(matrix["data"])
        evals = [matrix["data"]] + ([args.check] if args.check and args.check in matrix["check_data"] else [])
        for name in evals:
            if name not in axes:
                axes[name] = stance_axes(model, data if name == matrix["data"] else load_data(name), ScreenConfig())
        for cell in matrix["cells"]:
            for eval_name in evals:
                key = (matrix["data"], cell["target"], eval_name)
                if key not in screened:
                    print(f"screening {matrix['data']} {cell['target']} against {eval_name} ...", flush=True)
                    result = screen(model, data, cell["target"], ScreenConfig(), axes=axes[eval_name])
                    screened[key] = {p: getattr(result, p) for p in PREDICTORS}
                measured = cell["headline"] if eval_name == matrix["data"] else cell["checks"][eval_name]
                row = {"data": matrix["data"], "target": cell["target"], "leaning": cell["leaning"], "eval": eval_name}
                row["screen"] = screened[key]
                row["measured"] = {k: measured[k]["value"] for k in ("ctg", "ctg_ratio", "target_shift")}
                rows.append(row)
        # a target fine-tuned both ways: compare the screen with the part of the spill-over that flips
        # with the leaning (the screen is symmetric in the leaning, the drift is not)
        for target, split in matrix.get("leaning_split", {}).items():
            ideology, target_ideology = split["ctg_ideology"]["value"], split["target_ideology"]["value"]
            rows.append(
                {
                    "data": matrix["data"],
                    "target": target,
                    "leaning": "ideology",
                    "eval": matrix["data"],
                    "screen": screened[matrix["data"], target, matrix["data"]],
                    "measured": {
                        "ctg": ideology,
                        "ctg_ratio": ideology / target_ideology,
                        "target_shift": target_ideology,
                    },
                }
            )
    for row in rows:
        print(
            f"{row['data']:<10}{row['target']:<24}{row['leaning']:<9}on {row['eval']:<11}"
            f"cosine {row['screen']['transfer_cosine']:+.3f}  "
            f"predicted ratio {row['screen']['predicted_ctg_ratio']:+.2f}  "
            f"lexical {row['screen']['lexical_transfer']:+.2f}  |  "
            f"measured CTG {row['measured']['ctg']:+.3f}  ratio {row['measured']['ctg_ratio']:+.2f}",
        )
    correlations, orderings = rank_correlations(rows), pairwise_orderings(rows)
    for key, value in correlations.items():
        print(f"Spearman {key}: {'n/a' if value is None else f'{value:+.2f}'}")
    for key, value in orderings.items():
        print(f"Ordered as measured, {key}: {value['agree']} of {value['targets']} targets")
    args.out.mkdir(parents=True, exist_ok=True)
    payload = {"rows": rows, "spearman": correlations, "pairwise": orderings, "check": args.check}
    write_json(args.out / "validation.json", payload)
    write_figures(validation_figure(rows), args.out, png=not args.no_png)
    return 0


def validation_figure(rows: list[dict]) -> go.Figure:
    """Measured CTG against the screen's cosine: one panel per (training data, eval set); a colour per
    target, a marker per leaning (and per ideology row: the part of the spill-over that flips with it)."""
    from plotly.subplots import make_subplots

    panels = list(dict.fromkeys((r["data"], r["eval"]) for r in rows))
    titles = [f"trained on {data}, scored on {evals}" for data, evals in panels]
    figure = make_subplots(rows=1, cols=len(panels), subplot_titles=titles, shared_yaxes=True, horizontal_spacing=0.04)
    symbols = {"right": "circle", "left": "diamond", "ideology": "square"}
    palette = ["#1b7837", "#d6604d", "#7570b3", "#e7298a", "#1f78b4", "#e6ab02", "#66a61e", "#a6761d"]
    colours = {t: palette[i % len(palette)] for i, t in enumerate(dict.fromkeys(r["target"] for r in rows))}
    for col, panel in enumerate(panels, start=1):
        chosen = [r for r in rows if (r["data"], r["eval"]) == panel]
        for target in dict.fromkeys(r["target"] for r in chosen):
            series = [r for r in chosen if r["target"] == target]
            figure.add_trace(
                go.Scatter(
                    x=[r["screen"]["transfer_cosine"] for r in series],
                    y=[r["measured"]["ctg"] for r in series],
                    mode="markers",
                    marker={"symbol": [symbols.get(r["leaning"], "x") for r in series], "size": 10},
                    marker_color=colours[target],
                    name=target,
                    legendgroup=target,
                    showlegend=False,
                    text=[r["leaning"] for r in series],
                    hovertemplate=f"{target} (%{{text}})<br>screen cosine %{{x:.3f}}<br>"
                    "measured CTG %{y:+.3f}<extra></extra>",
                ),
                row=1,
                col=col,
            )
        figure.update_xaxes(title_text="screen: cosine with other topics", row=1, col=col)
    for target, colour in colours.items():  # legend: a colour per target, a shape per leaning
        line = {"color": colour, "width": 6}
        figure.add_trace(
            go.Scatter(x=[None], y=[None], mode="lines", line=line, name=target, legendgroup=target), row=1, col=1
        )
    for leaning in dict.fromkeys(r["leaning"] for r in rows):
        name = "ideology (flips with the leaning)" if leaning == "ideology" else f"toward {leaning}"
        marker = {"symbol": symbols.get(leaning, "x"), "size": 10, "color": "#9e9e9e"}
        figure.add_trace(go.Scatter(x=[None], y=[None], mode="markers", marker=marker, name=name), row=1, col=1)
    figure.update_yaxes(title_text="measured CTG (toward the trained leaning)", row=1, col=1)
    figure.update_layout(
        title="Spill-over screen (base model only) vs CTG measured after fine-tuning",
        template="plotly_white",
    )
    return figure


def write_figures(figure: go.Figure, out: Path, *, png: bool = True) -> None:
    """validation.html (and validation.png, which needs kaleido and chromium) in ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    figure.write_html(out / "validation.html", include_plotlyjs="cdn")
    if png:
        try:
            figure.write_image(out / "validation.png", width=1400, height=620, scale=2)
        except Exception as error:  # kaleido needs Debian's chromium; the HTML and JSON are written anyway
            print(f"no PNG: {error}", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
