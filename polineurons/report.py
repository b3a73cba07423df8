"""One self-contained, offline HTML page for a run: tables, plotly charts and a circuitsvis view.

plotly.js (~4.6 MB) is inlined once in the page head and every chart refers to it; the circuitsvis
view uses its rendered ``local_src`` (the bundled JS inline), never a CDN. Built from a run's
artifacts only (:func:`polineurons.artifacts.load_run`).
"""

from __future__ import annotations

import html
import json
import time
from pathlib import Path

from plotly.offline import get_plotlyjs

from polineurons.artifacts import RunArtifacts, collect_results, headline_fields, load_run
from polineurons.errors import RunError
from polineurons.generalization import Headline
from polineurons.io import atomic_write_text, read_json, write_json
from polineurons.viz import matrix_heatmaps, mitigation_frontier, neuron_activations_view, run_figures

_STYLE = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 2rem auto; max-width: 1150px;
       color: #222; padding: 0 1rem; }
h1 { margin-bottom: .2rem; } h2 { border-bottom: 1px solid #ddd; padding-bottom: .3rem; margin-top: 2.5rem; }
.meta { color: #555; } .note { color: #555; font-size: .92rem; max-width: 60rem; }
table { border-collapse: collapse; margin: 1rem 0; font-size: .92rem; }
th, td { padding: .3rem .7rem; border-bottom: 1px solid #eee; text-align: right; }
th:first-child, td:first-child { text-align: left; }
tr.target td { font-weight: 600; background: #eef7ee; }
.cards { display: flex; gap: 1rem; flex-wrap: wrap; margin: 1rem 0; }
.card { border: 1px solid #ddd; border-radius: 8px; padding: .7rem 1rem; min-width: 11rem; }
.card .value { font-size: 1.5rem; font-weight: 600; } .card .label { color: #555; font-size: .85rem; }
.missing { color: #a33; } pre { background: #f6f6f6; padding: .8rem; overflow-x: auto; font-size: .8rem; }
"""


def _fmt(value, spec: str = "+.3f") -> str:
    return "n/a" if value is None else format(value, spec)


def _ci(row, key: str) -> str:
    """``value [low, high]`` of a row with ``key``, ``ci_low`` and ``ci_high`` attributes."""
    return f"{getattr(row, key):+.3f} <span class='meta'>[{row.ci_low:+.3f}, {row.ci_high:+.3f}]</span>"


def _card(value: str, label: str) -> str:
    return f"<div class='card'><div class='value'>{value}</div><div class='label'>{html.escape(label)}</div></div>"


def _stance_table(run: RunArtifacts) -> str:
    base = run.base_stance.topics
    tuned = run.finetuned_stance.topics if run.finetuned_stance else {}
    shifts = run.generalization.shifts if run.generalization else {}
    target = run.config["target"]
    rows = [
        "<tr><th>topic</th><th>base stance [95% CI]</th><th>fine-tuned</th><th>shift [95% CI]</th><th>items</th></tr>"
    ]
    for topic, row in base.items():
        cls = " class='target'" if topic == target else ""
        after = _ci(tuned[topic], "score") if topic in tuned else "—"
        shift = _ci(shifts[topic], "shift") if topic in shifts else "—"
        label = html.escape(topic) + (" (target)" if topic == target else "")
        rows.append(
            f"<tr{cls}><td>{label}</td><td>{_ci(row, 'score')}</td><td>{after}</td><td>{shift}</td>"
            f"<td>{row.n}</td></tr>"
        )
    return "<table>" + "".join(rows) + "</table>"


def _reading(estimate: dict | None) -> str:
    if estimate is None:
        return "—"
    return f"{estimate['value']:+.2f} <span class='meta'>[{estimate['ci_low']:+.2f}, {estimate['ci_high']:+.2f}]</span>"


def mitigation_tables(mitigation: dict) -> str:
    """The league (methods by CTG reduction at 90% of the target kept, each beside its control), the
    methods without such a reading (why), then every frontier row pooled over its seeds with 95% CIs."""
    league = [
        "<tr><th>method</th><th>strength</th><th>CTG reduction at 90% kept</th><th>control, same strength</th>"
        "<th>seeds</th></tr>"
    ]
    for row in mitigation["league"]:
        league.append(
            f"<tr><td>{html.escape(row['method'])}</td><td>{row['strength']:.3g}</td>"
            f"<td>{_reading(row['ctg_reduction'])}</td><td>{_reading(row['control_ctg_reduction'])}</td>"
            f"<td>{len(row['seeds'])}</td></tr>"
        )
    never = [f"{html.escape(m)}: {html.escape(r['reason'])}" for m, r in mitigation["at_90"].items() if r["reason"]]
    note = f"<p class='note'>No reading at 90% kept — {'; '.join(never)}.</p>" if never else ""
    runs = [
        "<tr><th>method</th><th>strength</th><th>seeds</th><th>target kept</th><th>CTG reduction</th>"
        "<th>CTG ratio</th><th>neutral perplexity</th><th>control: target kept</th><th>control: CTG reduction</th></tr>"
    ]
    for method, rows in mitigation["frontier"].items():
        for row in rows:
            control = row.get("control")
            cells = [
                str(len(row["seeds"])),
                _estimate(row, "target_kept", ".2f"),
                _estimate(row, "ctg_reduction", "+.2f"),
                _estimate(row, "ctg_ratio", "+.2f"),
                f"{row['perplexity_change']:+.0%}",
            ]
            cells += (
                [_estimate(control, "target_kept", ".2f"), _estimate(control, "ctg_reduction", "+.2f")]
                if control
                else ["—", "—"]
            )
            runs.append(
                f"<tr><td>{html.escape(method)}</td><td>{row['strength']:g}</td>"
                + "".join(f"<td>{c}</td>" for c in cells)
                + "</tr>"
            )
    return f"<table>{''.join(league)}</table>{note}<table>{''.join(runs)}</table>"


MITIGATION_NOTE = (
    "Fine-tuning again (same data, seeds and schedule) with an intervention active during training only, and "
    "again with its matched random control. Target kept = treated / vanilla target shift; CTG reduction = "
    "1 − treated / vanilla CTG; the reading at 90% kept interpolates each method's curve (vanilla at strength "
    "0) where it first keeps less than 90% of the target, and its control at the same strength. Pooled over "
    "training seeds; CIs resample seeds and eval items, paired across vanilla, method and control."
)


def _estimate(row: dict, key: str, spec: str = "+.3f") -> str:
    """``value [low, high]`` of a flat headline row (``key``, ``key_ci_low``, ``key_ci_high``)."""
    low, high = format(row[f"{key}_ci_low"], spec), format(row[f"{key}_ci_high"], spec)
    return f"{format(row[key], spec)} <span class='meta'>[{low}, {high}]</span>"


def _estimates_table(rows: dict[str, dict], columns: dict[str, tuple[str, str]]) -> str:
    """One row per label; ``columns``: title -> (key of a flat row, number format)."""
    header = "<tr><th></th>" + "".join(f"<th>{html.escape(title)}</th>" for title in columns) + "</tr>"
    body = "".join(
        f"<tr><td>{html.escape(label)}</td>"
        + "".join(f"<td>{_estimate(row, key, spec)}</td>" for key, spec in columns.values())
        + "</tr>"
        for label, row in rows.items()
    )
    return f"<table>{header}{body}</table>"


def headline_table(rows: dict[str, dict]) -> str:
    """Target shift, CTG and CTG ratio with 95% CIs, one row per label (flat headline rows)."""
    columns = {
        "target shift [95% CI]": ("target_shift", "+.3f"),
        "CTG [95% CI]": ("ctg", "+.3f"),
        "CTG ratio [95% CI]": ("ctg_ratio", "+.2f"),
    }
    return _estimates_table(rows, columns)


def _headline_rows(results: dict) -> dict[str, dict]:
    rows = {f"eval split of {results['data']}, pooled over {results['seeds']} seed(s)": results}
    if results["seeds"] > 1:
        rows.update({f"  seed {row['seed']}": row for row in results["per_seed"]})
    rows.update({f"check data: {name}": row for name, row in results["checks"].items()})
    return rows


def _headline(run: RunArtifacts, results: dict) -> str:
    cards = []
    if "target_shift" in results:
        ci = f"[{results['ctg_ci_low']:+.3f}, {results['ctg_ci_high']:+.3f}]"
        cards += [
            _card(
                _fmt(results["target_shift"]), f"target shift ({run.config['target']}, toward {run.config['leaning']})"
            ),
            _card(_fmt(results["ctg"]), f"CTG (mean shift, other topics) {ci}"),
            _card(_fmt(results["ctg_ratio"], "+.2f"), "CTG ratio"),
        ]
    if "general_neurons" in results:
        general = results["general_neurons"]
        cards.append(
            _card(f"{general['count']:,}", f"general neurons ({general['fraction']:.1%} of {general['n_neurons']:,})")
        )
    if "patching_recovery_on_target" in results:
        patch = results["patching_recovery_on_target"]
        cards.append(
            _card(
                f"{_fmt(patch['general'], '.2f')} / {_fmt(patch['random_mean'], '.2f')}",
                "patching recovery on target: general / random",
            )
        )
    return f"<div class='cards'>{''.join(cards)}</div>"


CLAIMS_NOTE = (
    "Each claim of the paper measured on this run, with its CI and its control: (ii) and (iv) hold only "
    "when the general set's CI clears every disjoint random control's. Rebuild with `polineurons report DIR`."
)
CONTRASTS = {
    "finetune": "RMS activation change (base vs fine-tuned)",
    "leaning": "activation difference of a right- and a left-leaning fine-tune",
    "answers": "base-model activation on right- minus left-leaning answers",
    "attribution": "attribution of the stance margin to the fine-tune's activation change",
}


def localize_note(localize: dict) -> str:
    """How the run chose its neurons, in one sentence."""
    voters = "every non-target topic" if localize.get("general_over") == "others" else "every topic"
    return (
        f"Top {localize['top_k']:g}% of neurons per topic by {CONTRASTS[localize.get('contrast', 'finetune')]} "
        f"(normalised: {localize['normalize']}); general = in the top set of {voters}"
        + (" with the same sign." if localize.get("contrast", "finetune") != "finetune" else ".")
    )


def claims_table(claims: list[dict]) -> str:
    """The claims (:func:`polineurons.claims.paper_claims`, as dicts) as an HTML table."""
    mark = {True: "yes", False: "no", None: "–"}
    rows = "".join(
        "<tr>"
        + "".join(f"<td>{html.escape(str(v))}</td>" for v in (c["key"], c["claim"], c["measured"], c["control"]))
        + f"<td>{mark[c['holds']]}</td></tr>"
        for c in claims
    )
    return f"<table><tr><th></th><th>claim</th><th>measured</th><th>control</th><th>holds</th></tr>{rows}</table>"


def _section(title: str, body: str, note: str = "") -> str:
    note_html = f"<p class='note'>{note}</p>" if note else ""
    return f"<section><h2>{html.escape(title)}</h2>{note_html}{body}</section>"


def _missing(stage: str) -> str:
    return f"<p class='missing'>The {stage} stage has not finished in this run.</p>"


def build_report(run: RunArtifacts) -> str:
    """The report page as one HTML string."""
    config = run.config
    results = collect_results(run)
    figures = run_figures(run)

    def chart(name: str) -> str:
        if name not in figures:
            return ""
        return figures[name].to_html(
            full_html=False, include_plotlyjs=False, div_id=f"chart-{name}", default_height="480px"
        )

    sections = [_headline(run, results)]
    if run.base_stance:
        sections.append(
            _section(
                "Stance per topic",
                _stance_table(run) + chart("stance"),
                "Stance score of an item = mean per-token log-prob of its right-leaning answer minus its "
                "left-leaning answer (positive = leans right), on held-out eval items never used for training. "
                "Compare shifts, not absolute levels.",
            )
        )
    else:
        sections.append(_section("Stance per topic", _missing("base_stance")))
    generalization = (headline_table(_headline_rows(results)) + chart("generalization")) if run.generalization else ""
    sections.append(
        _section(
            "Cross-topic generalization",
            generalization or _missing("generalization"),
            "Shift = fine-tuned − base stance per topic (paired bootstrap CI over items). "
            "Target shift and CTG (mean shift over the non-target topics) are signed toward the trained leaning; "
            "pooled = mean over training seeds, its CI resampling the eval items. Check data sets are scored "
            "the same way but never trained on: a spill-over that shows there too is not shared phrasing.",
        )
    )
    sections.append(
        _section(
            "Where the neurons are (PNLAC)",
            chart("neuron_layers") or _missing("localize"),
            localize_note(config["localize"]),
        )
    )
    sections.append(
        _section(
            "Activation patching",
            chart("patching") or _missing("patch"),
            "Fine-tuned activations of a neuron set copied into the base model on the scored sequences; "
            "random sets have the general set's per-layer counts and none of its neurons. The ctg column pools "
            "the non-target topics. Recovery is unstable where the fine-tune's own shift is near zero.",
        )
    )
    if results.get("claims"):
        sections.append(_section("Neuron claims of the paper", claims_table(results["claims"]), CLAIMS_NOTE))
    mitigation = (mitigation_tables(run.mitigation) + chart("mitigation")) if run.mitigation else _missing("mitigate")
    sections.append(_section("Mitigations", mitigation, MITIGATION_NOTE))
    if run.examples and run.examples["neurons"]:
        view = neuron_activations_view(run.examples).local_src
        sections.append(
            _section(
                "Top general neurons on example prompts",
                f"<div id='neuron-view'>{view}</div>",
                "Activations of the highest-scoring general neurons on eval questions of several topics; "
                "choose the model (fine-tuned, base, or their difference) and the neuron in the drop-downs.",
            )
        )
    stage_rows = "".join(
        f"<tr><td>{html.escape(s)}</td><td>{r['seconds']:.0f} s</td><td>{html.escape(r['finished'])}</td></tr>"
        for s, r in run.stages.items()
    )
    sections.append(
        _section(
            "Run details",
            f"<table><tr><th>stage</th><th>time</th><th>finished</th></tr>{stage_rows}</table>"
            f"<pre>{html.escape(json.dumps(config, indent=2))}</pre>",
        )
    )
    title = f"polineurons run — {config['model']}, {config['leaning']}-leaning fine-tune on {config['target']}"
    meta = (
        f"data: {config['data']} · preset: {config['preset']} · {config['seeds']} training seed(s) from "
        f"{config['finetune']['seed']} · report written {time.strftime('%Y-%m-%d %H:%M')}"
    )
    return _page(title, meta, sections)


def _page(title: str, meta: str, sections: list[str]) -> str:
    """A whole offline page: plotly.js inlined once in the head, every chart refers to it."""
    return (
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
        f"<title>{html.escape(title)}</title><style>{_STYLE}</style>"
        f"<script type='text/javascript'>{get_plotlyjs()}</script></head><body>"
        f"<h1>{html.escape(title)}</h1><p class='meta'>{html.escape(meta)}</p>{''.join(sections)}</body></html>"
    )


_FLAT = {"": "value", "_ci_low": "ci_low", "_ci_high": "ci_high"}  # flat row suffix -> Estimate field


def _leaning_split_table(splits: dict[str, dict]) -> str:
    keys = ("target_ideology", "ctg_ideology", "ctg_drift")
    flat = {
        target: {f"{key}{end}": split[key][field] for key in keys for end, field in _FLAT.items()}
        for target, split in splits.items()
    }
    titles = ("target ideology [95% CI]", "CTG ideology [95% CI]", "CTG drift [95% CI]")
    return _estimates_table(flat, {title: (key, "+.3f") for title, key in zip(titles, keys, strict=True)})


def build_matrix_report(matrix: dict) -> str:
    """The page of a ``polineurons matrix`` folder: the heatmaps and each cell's headline numbers."""
    heatmaps = matrix_heatmaps(matrix).to_html(
        full_html=False, include_plotlyjs=False, div_id="chart-matrix", default_height="560px"
    )
    rows = {
        f"{c['target']} → {c['leaning']}": headline_fields(Headline.from_dict(c["headline"])) for c in matrix["cells"]
    }
    checks = [
        _section(
            f"On the check data {name}",
            headline_table(
                {
                    f"{c['target']} → {c['leaning']}": headline_fields(Headline.from_dict(c["checks"][name]))
                    for c in matrix["cells"]
                }
            ),
        )
        for name in matrix["check_data"]
    ]
    sections = [
        _section(
            "Stance shift per topic", heatmaps, "Rows: the topic fine-tuned on; columns: the topic scored (eval items)."
        ),
        _section("Per fine-tune (toward its leaning)", headline_table(rows)),
        *checks,
    ]
    if matrix.get("leaning_split"):
        sections.append(
            _section(
                "Ideology vs drift (targets fine-tuned both ways)",
                _leaning_split_table(matrix["leaning_split"]),
                "Per item, (right − left) / 2 flips with the leaning (ideology, toward the trained side); "
                "(right + left) / 2 does not (drift, positive = right whatever the leaning).",
            )
        )
    return _page(
        f"polineurons matrix — {matrix['data']}", f"report written {time.strftime('%Y-%m-%d %H:%M')}", sections
    )


def build_mitigation_report(mitigation: dict) -> str:
    """The page of a ``polineurons mitigate`` folder: the league, the frontier chart and every row."""
    chart = mitigation_frontier(mitigation).to_html(
        full_html=False, include_plotlyjs=False, div_id="chart-mitigation", default_height="520px"
    )
    sections = [_section("The frontier", mitigation_tables(mitigation) + chart, MITIGATION_NOTE)]
    title = f"polineurons mitigate — {mitigation['leaning']}-leaning fine-tune on {mitigation['target']}"
    meta = (
        f"model: {mitigation['model']} · data: {mitigation['data']} · report written {time.strftime('%Y-%m-%d %H:%M')}"
    )
    return _page(title, meta, sections)


def write_mitigation_report(mitigation: dict, path: str | Path) -> Path:
    atomic_write_text(path, build_mitigation_report(mitigation))
    return Path(path)


def write_matrix_report(matrix: dict, path: str | Path) -> Path:
    atomic_write_text(path, build_matrix_report(matrix))
    return Path(path)


def write_report(run: RunArtifacts, path: str | Path) -> Path:
    """Write :func:`build_report` atomically to ``path``."""
    atomic_write_text(path, build_report(run))
    return Path(path)


def write_pages(root: str | Path) -> list[Path]:
    """Rebuild every page a study folder's results allow — ``report.html`` (and ``results.json``) for a
    run, ``matrix.html``, ``mitigation.html`` — from its files alone; returns the pages written.

    Example::

        pages = write_pages("runs/quick")  # [runs/quick/report.html, ...]
    """
    root = Path(root)
    pages = []
    if (root / "config.json").is_file():
        run = load_run(root)
        write_json(run.layout.results, collect_results(run))
        pages.append(write_report(run, run.layout.report))
    if (root / "matrix.json").is_file():
        pages.append(write_matrix_report(read_json(root / "matrix.json"), root / "matrix.html"))
    if (root / "mitigation.json").is_file():
        pages.append(write_mitigation_report(read_json(root / "mitigation.json"), root / "mitigation.html"))
    if not pages:
        raise RunError(f"{root} holds no polineurons run, matrix or mitigation results.")
    return pages
