"""Validate the spill-over screen against measured spill-over.

For every right-leaning cell of one or more `polineurons matrix` folders (one per training data set),
screen the cell's training data with the base model alone, against (a) the data set's own eval answers
and (b) with --check, a check data set's, and compare the screen's predictions with the CTG and CTG
ratio the matrix measured on the same eval answers. Prints the table and the Spearman rank correlations; writes
validation.json and a scatter figure.

    .venv/bin/python figures/screen_validation.py runs/matrix runs/matrix-v1 --check crosscheck --out figures/screen
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import plotly.graph_objects as go

from polineurons import load_model
from polineurons.data import load_data
from polineurons.io import read_json, write_json
from polineurons.screen import ScreenConfig, screen
from polineurons.stats import spearman


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("matrices", type=Path, nargs="+", help="`polineurons matrix` folders")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--model", default=None, help="base model (default: the embedded model)")
    parser.add_argument("--check", default=None, help="check data set scored in the matrices (default: none)")
    args = parser.parse_args(argv)
    model = load_model(args.model, device="cpu")
    wheres = ("own", "check") if args.check else ("own",)
    eval_data = {"own": None, "check": load_data(args.check) if args.check else None}
    predictors = ("transfer_cosine", "predicted_ctg_ratio", "lexical_transfer")
    rows = []
    for folder in args.matrices:
        matrix = read_json(folder / "matrix.json")
        data = load_data(matrix["data"])
        for cell in (c for c in matrix["cells"] if c["leaning"] == "right"):
            row = {"data": matrix["data"], "target": cell["target"]}
            for where in wheres:
                result = screen(model, data, cell["target"], ScreenConfig(), eval_data=eval_data[where])
                measured = cell["headline"] if where == "own" else cell["checks"][args.check]
                row[f"screen_{where}"] = {p: getattr(result, p) for p in predictors}
                row[f"measured_{where}"] = {k: measured[k]["value"] for k in ("ctg", "ctg_ratio", "target_shift")}
            rows.append(row)
            print(
                f"{matrix['data']:<10}{cell['target']:<24}"
                + "  ".join(
                    f"{w}: cosine {row[f'screen_{w}']['transfer_cosine']:+.3f} "
                    f"predicted ratio {row[f'screen_{w}']['predicted_ctg_ratio']:+.2f} "
                    f"measured CTG {row[f'measured_{w}']['ctg']:+.3f} ratio {row[f'measured_{w}']['ctg_ratio']:+.2f}"
                    for w in wheres
                ),
                flush=True,
            )
    correlations = {}
    for where in wheres:
        for predictor in predictors:
            for measure in ("ctg", "ctg_ratio"):
                key = f"{predictor} vs {measure} ({where} eval)"
                x = [r[f"screen_{where}"][predictor] for r in rows]
                y = [r[f"measured_{where}"][measure] for r in rows]
                correlations[key] = spearman(x, y)
                print(f"Spearman {key}: {correlations[key]:+.2f} (n = {len(rows)})")
    args.out.mkdir(parents=True, exist_ok=True)
    write_json(args.out / "validation.json", {"rows": rows, "spearman": correlations, "check": args.check})
    figure = go.Figure()
    for name in dict.fromkeys(r["data"] for r in rows):
        chosen = [r for r in rows if r["data"] == name]
        figure.add_trace(
            go.Scatter(
                x=[r["screen_own"]["transfer_cosine"] for r in chosen],
                y=[r["measured_own"]["ctg"] for r in chosen],
                mode="markers+text",
                text=[r["target"] for r in chosen],
                textposition="top center",
                name=name,
            )
        )
    figure.update_layout(
        title="Spill-over screen (base model only) vs CTG measured after fine-tuning (right-leaning, own eval)",
        xaxis_title="cosine of the training push with the other topics' stance directions (screen)",
        yaxis_title="measured CTG",
        template="plotly_white",
    )
    figure.write_html(args.out / "validation.html", include_plotlyjs="cdn")
    try:
        figure.write_image(args.out / "validation.png", width=1000, height=560, scale=2)
    except Exception as error:  # kaleido needs Debian's chromium; the HTML and JSON are written anyway
        print(f"no PNG: {error}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
