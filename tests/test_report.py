"""The report page: self-contained and offline; in a real headless Chromium (when installed) it renders
every chart and the circuitsvis view without JavaScript errors."""

import re
import subprocess
import sys
from pathlib import Path

import pytest

from polineurons.artifacts import load_run
from polineurons.report import build_report

from .browser import INSTALL_HINT, browser_available, chromium

ROOT = Path(__file__).resolve().parent.parent


def test_report_is_self_contained(smoke_run):
    out, _, _ = smoke_run
    page = (out / "report.html").read_text()
    assert page.count("plotly.js v") <= 2 and page.count("Plotly.newPlot") == 5  # plotly inlined once, five charts
    assert "CircuitsVis.render" in page and page.count("var CircuitsVis=") == 1
    assert not re.search(r"<script[^>]+src=", page), "no external scripts"
    assert not re.search(r"<link[^>]+href=['\"]?https?:", page), "no external styles"
    for heading in (
        "Stance per topic",
        "Cross-topic generalization",
        "Where the neurons are",
        "Activation patching",
        "Mitigations",
        "Top general neurons on example prompts",
        "Neuron claims of the paper",
    ):
        assert heading in page


def test_report_of_a_partial_run_says_what_is_missing(smoke_run):
    run = load_run(smoke_run[0])
    run.patch = run.recovery = run.mitigation = None
    page = build_report(run)
    assert "The patch stage has not finished" in page and "The mitigate stage has not finished" in page


@pytest.mark.skipif(not browser_available(), reason=INSTALL_HINT)
def test_report_renders_in_headless_chromium(smoke_run, tmp_path):
    out, _, _ = smoke_run
    with chromium() as driver:
        driver.get((out / "report.html").as_uri())
        driver.implicitly_wait(0)
        rendered = driver.execute_script("""
            return {charts: document.querySelectorAll('.js-plotly-plot .main-svg').length,
                    bars: document.querySelectorAll(
                        '.js-plotly-plot .bars .point, .js-plotly-plot .scatterlayer .point').length,
                    neuronView: document.querySelectorAll('#neuron-view select').length,
                    tokens: document.getElementById('neuron-view').innerText.length};
        """)
        errors = [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]
        driver.save_screenshot(str(tmp_path / "report.png"))
    assert not errors, errors
    assert rendered["charts"] >= 5 and rendered["bars"] > 20, rendered
    assert rendered["neuronView"] >= 2 and rendered["tokens"] > 100, rendered


@pytest.mark.skipif(not browser_available(), reason=INSTALL_HINT)
def test_figure_script_writes_static_images(smoke_run, tmp_path):
    out, _, _ = smoke_run
    done = subprocess.run(
        [
            sys.executable,
            str(ROOT / "figures" / "make_figures.py"),
            str(out),
            "--out",
            str(tmp_path),
            "--formats",
            "png",
            "--against",  # the folder read against itself: its own frontier, from its stored trials
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    for name in ("stance", "generalization", "neuron_layers", "patching", "mitigation", "mitigation-against"):
        png = tmp_path / f"{name}.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000, name
        assert (tmp_path / f"{name}.html").is_file()


def test_figures_say_what_they_show(smoke_run):
    """The patching figure names what was scored; equal specific-set sizes are said once, not per topic;
    the matrix has axis titles and outlines each target's own shift."""
    from polineurons.viz import layer_distribution, matrix_heatmaps, run_figures

    figures = run_figures(load_run(smoke_run[0]))
    assert "scored on 2 eval items per topic × 8 answer tokens" in figures["patching"].layout.title.text
    summary = {
        "config": {"min_topics": 3},
        "summary": {
            "topics": ["a", "b", "c", "d"],
            "n_neurons": 1000,
            "general": {"count": 10, "layer_counts": [4, 6]},
            "specific": {t: {"count": 7, "layer_counts": [3, 4]} for t in "abcd"},
        },
    }
    figure = layer_distribution(summary)
    assert "≥ 3 of 4 topics; each topic's specific set: 7" in figure.layout.title.text
    assert [trace.name for trace in figure.data][1:] == [f"specific: {t}" for t in "abcd"]
    signed = summary | {"config": {"min_topics": 2, "contrast": "answers", "general_over": "others"}}
    assert (
        "general = in the top set, same sign, of ≥ 2 of 3 other topics" in layer_distribution(signed).layout.title.text
    )
    row = {"shift": 0.1, "ci_low": 0.0, "ci_high": 0.2}
    cell = {"shifts": {t: row for t in ("x", "y", "z")}}
    matrix = {
        "leanings": ["left", "right"],
        "topics": ["x", "y", "z"],
        "targets": ["x", "z"],
        "data": "made-up",
        "cells": [cell | {"target": t, "leaning": lean} for t in ("x", "z") for lean in ("left", "right")],
    }
    heatmaps = matrix_heatmaps(matrix)
    outlined = {(shape.x0, shape.y0) for shape in heatmaps.layout.shapes}
    assert outlined == {(-0.5, -0.5), (1.5, 0.5)}  # x at column 0, z at column 2 (row 1)
    assert heatmaps.layout.xaxis.title.text == "evaluated topic" and heatmaps.layout.yaxis.title.text
