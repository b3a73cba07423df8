"""`polineurons` command line. Commands import the heavy libraries lazily so `--help` is instant."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer

app = typer.Typer(
    help="Measure, localize and mitigate political-stance cross-topic generalization in LLMs.",
    no_args_is_help=True,
    add_completion=False,
)

ModelOption = Annotated[
    Optional[str],
    typer.Option("--model", "-m", help="Model: smollm2-135m-instruct (default, offline), tiny-llama, tiny-gemma3, a folder or a hub id."),
]
DeviceOption = Annotated[Optional[str], typer.Option(help="cpu, cuda, ... (default: cuda if available).")]
BaseOption = Annotated[Optional[str], typer.Option(help="Base model (default: the embedded model).")]
LeaningOption = Annotated[str, typer.Option(help="left or right.")]
FinetunedOption = Annotated[Path, typer.Option(help="Fine-tuned model folder.")]
DataOption = Annotated[str, typer.Option(help="'bundled', a JSONL file or folder, an IDEOINST-style folder, or hf:NAME.")]


def _load(model: str | None, device: str | None):
    from polineurons.models import ModelNotFoundError, load_model

    try:
        return load_model(model, device=device)
    except ModelNotFoundError as error:
        _fail(str(error))


def _fail(message: str) -> None:
    typer.secho(message, fg=typer.colors.RED, err=True)
    raise typer.Exit(2)


def _load_dataset(data: str):
    from polineurons.data import DataError, load_data

    try:
        return load_data(data)
    except DataError as error:
        _fail(str(error))


@app.command()
def info(model: ModelOption = None, device: DeviceOption = None) -> None:
    """Load a model and print its shape, tokenizer set-up and where it is cached."""
    from polineurons.data import has_chat_template
    from polineurons.models import cache_dir

    bridge = _load(model, device)
    cfg = bridge.cfg
    rows = {
        "model": cfg.model_name,
        "layers": cfg.n_layers,
        "d_model": cfg.d_model,
        "neurons per layer (d_mlp)": cfg.d_mlp,
        "MLP neurons in all": cfg.n_layers * cfg.d_mlp,
        "chat template": has_chat_template(bridge.tokenizer),
        "device": cfg.device,
        "cache": str(cache_dir()),
    }
    width = max(map(len, rows))
    for key, value in rows.items():
        typer.echo(f"{key:<{width}}  {value}")


@app.command()
def generate(
    question: Annotated[str, typer.Argument(help="The user message.")],
    model: ModelOption = None,
    device: DeviceOption = None,
    max_new_tokens: Annotated[int, typer.Option(min=1)] = 64,
) -> None:
    """Greedy answer of a model to one question, formatted with its chat template."""
    import torch

    from polineurons.data import encode_prompt

    bridge = _load(model, device)
    tokens = torch.tensor([encode_prompt(bridge.tokenizer, question)], device=bridge.cfg.device)
    out = bridge.generate(tokens, max_new_tokens=max_new_tokens, do_sample=False, verbose=False)
    typer.echo(bridge.tokenizer.decode(out[0, tokens.shape[1]:], skip_special_tokens=True).strip())


def _print_topic_table(title: str, topics: dict) -> None:
    typer.echo(title)
    typer.echo(f"{'topic':<24}{'score':>9}  {'95% CI':<19}{'right-rate':>10}{'n':>5}")
    for topic, row in topics.items():
        ci = f"[{row.ci_low:+.3f}, {row.ci_high:+.3f}]"
        typer.echo(f"{topic:<24}{row.score:>+9.3f}  {ci:<19}{row.right_rate:>10.2f}{row.n:>5}")


@app.command()
def stance(
    model: ModelOption = None,
    data: DataOption = "bundled",
    topics: Annotated[Optional[str], typer.Option(help="Comma-separated topics (default: all).")] = None,
    split: Annotated[str, typer.Option(help="train, eval, or all.")] = "eval",
    max_items: Annotated[Optional[int], typer.Option(min=1, help="At most N items per topic.")] = None,
    statements: Annotated[bool, typer.Option(help="Also score the statement items.")] = False,
    batch_size: Annotated[int, typer.Option(min=1)] = 16,
    max_answer_tokens: Annotated[Optional[int], typer.Option(min=1, help="Cap answer tokens (faster).")] = None,
    out: Annotated[Optional[Path], typer.Option(help="Write the results as JSON here.")] = None,
    device: DeviceOption = None,
) -> None:
    """Score a model's stance per topic (positive = leans right) with bootstrap 95% CIs."""
    from polineurons.data import DataError
    from polineurons.io import atomic_write_text
    from polineurons.stance import measure_stance, score_statements, summarize

    dataset = _load_dataset(data)
    try:
        topic_list = [t.strip() for t in topics.split(",") if t.strip()] if topics else None
        selected = dataset.select(topics=topic_list, split=None if split == "all" else split, max_items=max_items)
    except DataError as error:
        _fail(str(error))
    bridge = _load(model, device)
    result = measure_stance(
        bridge, selected, split=None, batch_size=batch_size, max_answer_tokens=max_answer_tokens
    )
    report = {"model": bridge.cfg.model_name, "data": dataset.source, "split": split, **result.to_dict()}
    _print_topic_table("stance items (score = mean log-prob right answer - left answer)", result.topics)
    if statements:
        if not selected.statements:
            typer.secho(f"{dataset.source} has no statement items.", fg=typer.colors.YELLOW, err=True)
        else:
            statement_scores = score_statements(bridge, selected.statements, batch_size=batch_size)
            statement_topics = summarize(statement_scores)
            report["statements"] = {
                t: {k: v for k, v in vars(s).items() if k != "topic"} for t, s in statement_topics.items()
            }
            _print_topic_table("statements (score = log-prob of the right-leaning reply - the other)", statement_topics)
    if out is not None:
        atomic_write_text(out, json.dumps(report, indent=2) + "\n")
        typer.echo(f"wrote {out}")


@app.command()
def finetune(
    topic: Annotated[str, typer.Option(help="Topic to fine-tune on (its train split).")],
    out: Annotated[Path, typer.Option(help="Folder for the fine-tuned model and training_log.json.")],
    leaning: LeaningOption = "right",
    model: ModelOption = None,
    data: DataOption = "bundled",
    epochs: Annotated[int, typer.Option(min=1)] = 3,
    lr: Annotated[float, typer.Option(help="Learning rate.")] = 5e-5,
    batch_size: Annotated[int, typer.Option(min=1)] = 8,
    grad_accum: Annotated[int, typer.Option(min=1)] = 1,
    max_seq_len: Annotated[int, typer.Option(min=8)] = 192,
    warmup_steps: Annotated[int, typer.Option(min=0)] = 2,
    weight_decay: Annotated[float, typer.Option(min=0.0)] = 0.0,
    max_steps: Annotated[Optional[int], typer.Option(min=1)] = None,
    train: Annotated[str, typer.Option(help="full, mlp (MLP weights only) or lora (needs peft).")] = "full",
    seed: int = 0,
    device: DeviceOption = None,
) -> None:
    """Fine-tune a model toward a leaning on one topic; save it where `load_model(out)` reloads it."""
    from polineurons.data import DataError
    from polineurons.finetune import FinetuneConfig, TrainingDivergedError, finetune as run_finetune, training_pairs

    dataset = _load_dataset(data)
    try:
        config = FinetuneConfig(
            epochs=epochs, learning_rate=lr, batch_size=batch_size, grad_accum=grad_accum, max_seq_len=max_seq_len,
            warmup_steps=warmup_steps, weight_decay=weight_decay, max_steps=max_steps, train=train, seed=seed,
        )
        pairs = training_pairs(dataset, topic, leaning)
    except (DataError, ValueError) as error:
        _fail(str(error))
    bridge = _load(model, device)
    meta = {"base_model": bridge.cfg.model_name, "data": dataset.source, "topic": topic, "leaning": leaning}
    try:
        result = run_finetune(bridge, pairs, config, out_dir=out, meta=meta)
    except (TrainingDivergedError, ImportError) as error:
        _fail(str(error))
    seconds = result.step_seconds
    typer.echo(
        f"{len(result.losses)} steps on {result.n_examples} examples: loss {result.losses[0]:.3f} -> "
        f"{result.losses[-1]:.3f}, {sorted(seconds)[len(seconds) // 2]:.1f} s/step (median), "
        f"{sum(seconds):.0f} s in all. Saved to {out}"
    )


@app.command()
def generalization(
    finetuned: FinetunedOption,
    target: Annotated[str, typer.Option(help="The topic it was fine-tuned on.")],
    base: BaseOption = None,
    data: DataOption = "bundled",
    max_items: Annotated[Optional[int], typer.Option(min=1, help="At most N eval items per topic.")] = None,
    batch_size: Annotated[int, typer.Option(min=1)] = 16,
    out: Annotated[Optional[Path], typer.Option(help="Write the shift table as JSON here.")] = None,
    device: DeviceOption = None,
) -> None:
    """Stance shift per topic (fine-tuned minus base) with CIs, target shift, CTG and CTG ratio."""
    from polineurons.generalization import measure_generalization
    from polineurons.io import atomic_write_text

    dataset = _load_dataset(data)
    if target not in dataset.topics:
        _fail(f"Unknown target topic '{target}'; topics in {dataset.source}: {', '.join(dataset.topics)}.")
    base_model = _load(base, device)
    tuned = _load(str(finetuned), device)
    result, before, after = measure_generalization(base_model, tuned, dataset, target, max_items=max_items, batch_size=batch_size)
    typer.echo(f"{'topic':<24}{'base':>8}{'tuned':>8}{'shift':>9}  95% CI")
    for topic, row in result.shifts.items():
        mark = "  <- target" if topic == target else ""
        typer.echo(f"{topic:<24}{row.base:>+8.3f}{row.finetuned:>+8.3f}{row.shift:>+9.3f}  [{row.ci_low:+.3f}, {row.ci_high:+.3f}]{mark}")
    ratio = "n/a" if result.ctg_ratio is None else f"{result.ctg_ratio:.2f}"
    typer.echo(f"target shift {result.target_shift:+.3f}   CTG {result.ctg:+.3f}   CTG ratio {ratio}")
    if out is not None:
        report = {"base": base_model.cfg.model_name, "finetuned": str(finetuned), "data": dataset.source, **result.to_dict(),
                  "base_stance": before.to_dict(), "finetuned_stance": after.to_dict()}
        atomic_write_text(out, json.dumps(report, indent=2) + "\n")
        typer.echo(f"wrote {out}")


@app.command()
def localize(
    finetuned: FinetunedOption,
    out: Annotated[Path, typer.Option(help="Folder for NeuronSets, scores and summary.json.")],
    base: BaseOption = None,
    data: DataOption = "bundled",
    top_k: Annotated[float, typer.Option(help="Percent of neurons kept per topic.")] = 30.0,
    min_topics: Annotated[Optional[int], typer.Option(min=1, help="General = in the top set of at least M topics (default: all).")] = None,
    inputs: Annotated[str, typer.Option(help="question, or question_answers.")] = "question",
    normalize: Annotated[str, typer.Option(help="none, or layer_z (z-score each layer).")] = "none",
    max_items: Annotated[Optional[int], typer.Option(min=1, help="At most N train items per topic.")] = None,
    skip_shared_prefix: Annotated[bool, typer.Option(help="Score only tokens after the prompt prefix every topic shares (system prompt, turn markers).")] = False,
    batch_size: Annotated[int, typer.Option(min=1)] = 8,
    device: DeviceOption = None,
) -> None:
    """PNLAC: contrast base and fine-tuned activations per topic; save general and topic-specific neurons."""
    from polineurons.pnlac import INPUTS, NORMALIZATIONS, localize as run_localize

    if inputs not in INPUTS or normalize not in NORMALIZATIONS:
        _fail(f"--inputs must be one of {', '.join(INPUTS)}; --normalize one of {', '.join(NORMALIZATIONS)}.")
    if not 0 < top_k <= 100:
        _fail(f"--top-k must be in (0, 100], got {top_k}.")
    dataset = _load_dataset(data)
    base_model = _load(base, device)
    tuned = _load(str(finetuned), device)
    result = run_localize(base_model, tuned, dataset, top_k=top_k, min_topics=min_topics, inputs=inputs,
                          normalize=normalize, max_items=max_items, skip_shared_prefix=skip_shared_prefix, batch_size=batch_size)
    result.save(out)
    summary = result.summary()
    general = summary["general"]
    typer.echo(f"general neurons: {general['count']} of {summary['n_neurons']} ({general['fraction']:.1%})")
    typer.echo("  per layer: " + " ".join(str(c) for c in general["layer_counts"]))
    for topic, row in summary["specific"].items():
        typer.echo(f"specific {topic:<24}{row['count']:>7}")
    pairs = [(a, b) for i, a in enumerate(summary["topics"]) for b in summary["topics"][i + 1 :]]
    if pairs:
        values = [summary["jaccard"][a][b] for a, b in pairs]
        typer.echo(f"Jaccard between topics' top sets: min {min(values):.2f}, mean {sum(values) / len(values):.2f}, max {max(values):.2f}")
    typer.echo(f"saved to {out}")


@app.command()
def patch(
    finetuned: FinetunedOption,
    neurons: Annotated[Path, typer.Option(help="A `polineurons localize` output folder.")],
    out: Annotated[Path, typer.Option(help="Write the recovery table (set x topic) as JSON here.")],
    base: BaseOption = None,
    data: DataOption = "bundled",
    random_seeds: Annotated[int, typer.Option(min=0, help="Random layer-matched control sets.")] = 3,
    all_neurons: Annotated[bool, typer.Option(help="Also patch every MLP neuron (upper bound).")] = True,
    max_items: Annotated[Optional[int], typer.Option(min=1, help="At most N eval items per topic.")] = None,
    max_answer_tokens: Annotated[Optional[int], typer.Option(min=1, help="Cap answer tokens (faster).")] = None,
    attribution_sample: Annotated[int, typer.Option(min=0, help="Check attribution patching against exact patching on N neurons (0 = skip).")] = 0,
    batch_size: Annotated[int, typer.Option(min=1)] = 8,
    device: DeviceOption = None,
) -> None:
    """Patch neuron sets from the fine-tuned model into the base; recovery per topic with CIs."""
    import time

    from polineurons.io import atomic_write_text
    from polineurons.neurons import NeuronSet
    from polineurons.patching import patched_item_scores, recovery_table, recovery_to_dict
    from polineurons.pnlac import Localization

    try:
        located = Localization.load(neurons)
    except FileNotFoundError as error:
        _fail(str(error))
    dataset = _load_dataset(data)
    base_model = _load(base, device)
    tuned = _load(str(finetuned), device)
    sets: dict[str, NeuronSet] = {"general": located.general}
    sets.update({f"specific:{t}": s for t, s in located.specific.items()})
    sets.update({f"random:{seed}": located.general.random_matched(seed) for seed in range(random_seeds)})
    if all_neurons:
        sets["all"] = NeuronSet.for_model(base_model, full=True)
    items = dataset.select(split="eval", max_items=max_items).items
    started = time.perf_counter()
    scores = patched_item_scores(base_model, tuned, items, sets, batch_size=batch_size, max_answer_tokens=max_answer_tokens)
    table = recovery_table(scores)
    topics = list(dict.fromkeys(i.topic for i in items))
    typer.echo(f"{'set':<32}{'size':>7}  " + " ".join(f"{t[:10]:>10}" for t in topics))
    for name, rows in table.items():
        typer.echo(f"{name:<32}{len(sets[name]):>7}  " + " ".join(f"{rows[t].recovery:>+10.2f}" for t in topics))
    report = {"base": base_model.cfg.model_name, "finetuned": str(finetuned), "neurons": str(neurons), "data": dataset.source,
              "set_sizes": {n: len(s) for n, s in sets.items()}, "recovery": recovery_to_dict(table),
              "seconds": time.perf_counter() - started}
    if attribution_sample:
        report["attribution_check"] = _attribution_check(base_model, tuned, items, attribution_sample)
        check = report["attribution_check"]
        typer.echo(f"attribution vs exact patching on {attribution_sample} neurons: Spearman {check['spearman']:.3f}, "
                   f"estimated speed-up for all neurons {check['speedup_all_neurons']:.0f}x")
    atomic_write_text(out, json.dumps(report, indent=2) + "\n")
    typer.echo(f"wrote {out}")


def _attribution_check(base_model, tuned, items, sample: int) -> dict:
    """Half the sample from the largest attribution scores, half uniformly at random."""
    import torch

    from polineurons.patching import attribution_scores, check_attribution

    few = list(items)[: max(2, len(items) // 6)]
    scores = attribution_scores(base_model, tuned, few, progress=False)
    n_layers, d_mlp = scores.shape
    top = torch.argsort(scores.abs().flatten(), descending=True)[: sample // 2].tolist()
    generator = torch.Generator().manual_seed(0)
    rest = [i for i in torch.randperm(n_layers * d_mlp, generator=generator).tolist() if i not in set(top)][: sample - len(top)]
    chosen = [divmod(i, d_mlp) for i in top + rest]
    check = check_attribution(base_model, tuned, few, chosen)
    return {**check.to_dict(), "n_items": len(few), "speedup_all_neurons": check.speedup(n_layers * d_mlp)}


def _floats(text: str, option: str) -> list[float]:
    try:
        return [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        _fail(f"{option} takes comma-separated numbers, got {text!r}.")


@app.command()
def inhibitft(
    target: Annotated[str, typer.Option(help="Topic to fine-tune on.")],
    neurons: Annotated[Path, typer.Option(help="A `polineurons localize` folder, or one NeuronSet file to inhibit as is.")],
    out: Annotated[Path, typer.Option(help="Folder for per-run results and summary.json (reruns resume).")],
    base: BaseOption = None,
    data: DataOption = "bundled",
    leaning: LeaningOption = "right",
    percent: Annotated[str, typer.Option(help="Percent(s) of ALL neurons to inhibit, taken from the top general neurons, e.g. 5 or 1,2,5,10,20.")] = "5",
    mode: Annotated[str, typer.Option(help="zero, scale, freeze, or several comma-separated.")] = "zero",
    scale: Annotated[float, typer.Option(help="Factor for --mode scale, in (0, 1).")] = 0.5,
    random_control: Annotated[bool, typer.Option(help="Also inhibit a layer-matched random set of the same size.")] = True,
    seeds: Annotated[str, typer.Option(help="Comma-separated seeds (one vanilla run per seed).")] = "0",
    epochs: Annotated[int, typer.Option(min=1)] = 3,
    lr: float = 5e-5,
    batch_size: Annotated[int, typer.Option(min=1)] = 8,
    max_seq_len: Annotated[int, typer.Option(min=8)] = 192,
    max_steps: Annotated[Optional[int], typer.Option(min=1)] = None,
    max_items: Annotated[Optional[int], typer.Option(min=1, help="At most N eval items per topic.")] = None,
    device: DeviceOption = None,
) -> None:
    """InhibitFT vs vanilla fine-tuning (and a random control): target shift kept and CTG reduction."""
    from polineurons.finetune import FinetuneConfig
    from polineurons.inhibitft import plan_variants, run_inhibitft
    from polineurons.neurons import NeuronSet
    from polineurons.pnlac import Localization

    if (neurons / "summary.json").is_file():
        ranked = Localization.load(neurons).top_general
    else:
        try:
            fixed = NeuronSet.load(neurons)
        except FileNotFoundError as error:
            _fail(f"{neurons}: neither a localize folder nor a NeuronSet ({error}).")
        ranked = lambda _percent: fixed  # noqa: E731
    dataset = _load_dataset(data)
    if target not in dataset.topics:
        _fail(f"Unknown target topic '{target}'; topics in {dataset.source}: {', '.join(dataset.topics)}.")
    try:
        variants = plan_variants(ranked, percents=_floats(percent, "--percent"), modes=[m.strip() for m in mode.split(",")],
                                 scale=scale, random_control=random_control, seeds=[int(x) for x in _floats(seeds, "--seeds")])
        config = FinetuneConfig(epochs=epochs, learning_rate=lr, batch_size=batch_size, max_seq_len=max_seq_len, max_steps=max_steps)
    except ValueError as error:
        _fail(str(error))
    _load(base, device)  # fail early on a bad model name
    summary = run_inhibitft(lambda: _load(base, device), dataset, target, variants, out, leaning=leaning, config=config, max_items=max_items)
    typer.echo(f"{'run':<28}{'neurons':>8}  {'target kept':<26}{'CTG reduction':<26}CTG ratio")
    for name, row in summary["comparisons"].items():
        kept, reduction = row["target_kept"], row["ctg_reduction"]
        typer.echo(f"{name:<28}{row['n_neurons']:>8}  {kept['value']:+.2f} [{kept['ci_low']:+.2f}, {kept['ci_high']:+.2f}]    "
                   f"{reduction['value']:+.2f} [{reduction['ci_low']:+.2f}, {reduction['ci_high']:+.2f}]    {row['ctg_ratio']['value']:+.2f}")
    for name, table in summary["vanilla"].items():
        ratio = table["ctg_ratio"]
        typer.echo(f"{name}: target shift {table['target_shift']:+.3f}, CTG {table['ctg']:+.3f}, CTG ratio {'n/a' if ratio is None else f'{ratio:+.2f}'}")
    typer.echo(f"wrote {out / 'summary.json'}")


@app.command()
def run(
    out: Annotated[Path, typer.Option(help="Run folder: every stage's artifacts, results.json and report.html.")],
    model: ModelOption = None,
    data: DataOption = "bundled",
    target: Annotated[str, typer.Option(help="Topic to fine-tune on.")] = "immigration",
    leaning: LeaningOption = "right",
    preset: Annotated[str, typer.Option(help="quick (minutes on a CPU), full (sized for a GPU), or smoke (seconds, tiny models).")] = "quick",
    seed: int = 0,
    epochs: Annotated[Optional[int], typer.Option(min=1, help="Override the preset's fine-tuning epochs.")] = None,
    force: Annotated[Optional[list[str]], typer.Option(help="Recompute this stage and the stages after it (repeatable).")] = None,
    device: DeviceOption = None,
) -> None:
    """Every stage, resumable: base stance, fine-tune, generalization, localize, patch, InhibitFT, figures, report."""
    from polineurons.experiment import STAGES, RunConfig, RunError, run_pipeline
    from polineurons.models import EMBEDDED_MODEL

    try:
        config = RunConfig.from_preset(preset, model=model or EMBEDDED_MODEL, data=data, target=target, leaning=leaning, seed=seed,
                                       finetune_overrides={"epochs": epochs} if epochs else None)
    except (RunError, ValueError) as error:
        _fail(str(error))
    typer.echo(f"run folder {out}; stages: {', '.join(STAGES)}")
    try:
        results = run_pipeline(config, out, force=force or (), device=device, echo=typer.echo)
    except RunError as error:
        _fail(str(error))
    except KeyboardInterrupt:
        typer.secho(f"\ninterrupted: finished stages are kept in {out}; rerun the same command to resume.", fg=typer.colors.YELLOW, err=True)
        raise typer.Exit(130) from None
    _print_run_summary(results, out)


def _print_run_summary(results: dict, out: Path) -> None:
    typer.echo("")
    typer.echo(f"{'topic':<24}{'base':>8}{'tuned':>8}{'shift':>9}  95% CI")
    for topic, row in results.get("shifts", {}).items():
        mark = "  <- target" if topic == results["target"] else ""
        typer.echo(f"{topic:<24}{results['base_stance'][topic]['score']:>+8.3f}{results['finetuned_stance'][topic]['score']:>+8.3f}"
                   f"{row['shift']:>+9.3f}  [{row['ci_low']:+.3f}, {row['ci_high']:+.3f}]{mark}")
    ratio = results.get("ctg_ratio")
    typer.echo(f"target shift {results['target_shift']:+.3f}   CTG {results['ctg']:+.3f}   CTG ratio {'n/a' if ratio is None else f'{ratio:+.2f}'}")
    general = results["general_neurons"]
    typer.echo(f"general neurons {general['count']} of {general['n_neurons']} ({general['fraction']:.1%})")
    patch = results["patching_recovery_on_target"]
    fmt = lambda v: "n/a" if v is None else f"{v:.2f}"  # noqa: E731
    typer.echo(f"patching recovery on target: general {fmt(patch['general'])}, random {fmt(patch['random_mean'])}, all {fmt(patch['all'])}")
    for name, row in results.get("inhibitft", {}).items():
        typer.echo(f"InhibitFT {name:<26} target kept {row['target_kept']['value']:+.2f}   CTG reduction {row['ctg_reduction']['value']:+.2f}")
    seconds = sum(results["stage_seconds"].values())
    typer.echo(f"stage time {seconds:.0f} s in all; results {out / 'results.json'}; report {out / 'report.html'}")


@app.command()
def report(run_dir: Annotated[Path, typer.Argument(help="A `polineurons run` folder.")]) -> None:
    """Rebuild DIR/report.html from a run folder's artifacts (no model needed)."""
    from polineurons.experiment import RunError, load_run
    from polineurons.report import write_report

    try:
        path = write_report(load_run(run_dir), run_dir / "report.html")
    except RunError as error:
        _fail(str(error))
    typer.echo(f"wrote {path}")


def main() -> None:
    app()


if __name__ == "__main__":
    main()
