"""Regenerate the figures of a study folder as static images (PNG, SVG) and HTML, offline.

    .venv/bin/python figures/make_figures.py runs/quick --out figures/quick        # a `polineurons run` folder
    .venv/bin/python figures/make_figures.py runs/matrix --out figures/matrix      # a `polineurons matrix` folder
    .venv/bin/python figures/make_figures.py runs/mitigate --out figures/mitigate  # a `polineurons mitigate` folder
    .venv/bin/python figures/make_figures.py runs/long --against runs/quick        # ... read at runs/quick's target

Static export uses kaleido, which drives a Chrome-family browser: Debian's chromium
(`bash scripts/setup.sh --browser`), never a downloaded one. Everything the folder holds is drawn: a
run's finished stages (stance, generalization, neuron_layers, patching, mitigation), the matrix
(matrix.json) and the mitigation frontier (mitigation.json); with ``--against REF``, the frontier read
against REF's vanilla (``mitigation-against``, :mod:`polineurons.against`), strength 0 at the folder's own vanilla.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

from polineurons.against import frontier_against
from polineurons.artifacts import load_run
from polineurons.errors import RunError, UserError
from polineurons.io import atomic_path, read_json
from polineurons.viz import matrix_heatmaps, mitigation_frontier, run_figures

BROWSERS = ("chromium", "chromium-browser", "google-chrome")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path, help="a `polineurons run`, `matrix` or `mitigate` folder")
    parser.add_argument("--out", type=Path, default=None, help="output folder (default: RUN_DIR/figures)")
    parser.add_argument(
        "--formats", default="png,svg", help="static formats, comma-separated (png, svg, pdf); empty for HTML only"
    )
    parser.add_argument("--no-html", action="store_true", help="static images only (no HTML pages, no plotly.min.js)")
    parser.add_argument(
        "--against", type=Path, default=None, help="also the frontier read against this mitigation folder's vanilla"
    )
    parser.add_argument("--width", type=int, default=1000)
    parser.add_argument("--height", type=int, default=520)
    args = parser.parse_args(argv)
    try:
        figures = run_figures(load_run(args.run_dir)) if (args.run_dir / "config.json").is_file() else {}
    except RunError as error:
        print(error, file=sys.stderr)
        return 2
    if (args.run_dir / "matrix.json").is_file():
        figures["matrix"] = matrix_heatmaps(read_json(args.run_dir / "matrix.json"))
    if "mitigation" not in figures and (args.run_dir / "mitigation.json").is_file():
        figures["mitigation"] = mitigation_frontier(read_json(args.run_dir / "mitigation.json"))
    if args.against is not None:
        try:
            figure = mitigation_frontier(frontier_against(args.run_dir, args.against))
            figure.update_layout(title_text=f"{figure.layout.title.text}, against {args.against.name}'s vanilla")
            figures["mitigation-against"] = figure
        except UserError as error:
            print(error, file=sys.stderr)
            return 2
    if not figures:
        print(f"{args.run_dir} holds no run, matrix or mitigation results.", file=sys.stderr)
        return 2
    formats = [f.strip() for f in args.formats.split(",") if f.strip()]
    if formats and not any(shutil.which(b) for b in BROWSERS):
        print(
            "Static images need Debian's chromium (bash scripts/setup.sh --browser); use --formats '' for HTML only.",
            file=sys.stderr,
        )
        return 2
    out = args.out or args.run_dir / "figures"
    out.mkdir(parents=True, exist_ok=True)
    for name, figure in figures.items():
        figure.update_layout(template="plotly_white")
        if not args.no_html:
            with atomic_path(out / f"{name}.html") as tmp:
                figure.write_html(tmp, include_plotlyjs="directory")
        for fmt in formats:
            with atomic_path(out / f"{name}.{fmt}") as tmp:
                figure.write_image(
                    tmp, format=fmt, width=args.width, height=args.height, scale=2 if fmt == "png" else 1
                )
        print(
            f"{name}: " + ", ".join(str(out / f"{name}.{ext}") for ext in ([] if args.no_html else ["html"]) + formats)
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
