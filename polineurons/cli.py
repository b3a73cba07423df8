"""`polineurons` command line. Commands import the heavy libraries lazily so `--help` is instant."""

from __future__ import annotations

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


def main() -> None:
    app()


if __name__ == "__main__":
    main()
