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


def _load(model: str | None, device: str | None):
    from polineurons.models import ModelNotFoundError, load_model

    try:
        return load_model(model, device=device)
    except ModelNotFoundError as error:
        typer.secho(str(error), fg=typer.colors.RED, err=True)
        raise typer.Exit(2) from None


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
    data: Annotated[str, typer.Option(help="'bundled', a JSONL file or folder, an IDEOINST-style folder, or hf:NAME.")] = "bundled",
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
    from polineurons.data import DataError, load_data
    from polineurons.io import atomic_write_text
    from polineurons.stance import measure_stance, score_statements, summarize

    try:
        dataset = load_data(data)
        topic_list = [t.strip() for t in topics.split(",") if t.strip()] if topics else None
        selected = dataset.select(topics=topic_list, split=None if split == "all" else split, max_items=max_items)
    except DataError as error:
        typer.secho(str(error), fg=typer.colors.RED, err=True)
        raise typer.Exit(2) from None
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


def main() -> None:
    app()


if __name__ == "__main__":
    main()
