"""Every option a command lists is read by the work it does.

Each command runs once (twice where a branch reads other options) on a tiny model while every option
dataclass records which of its fields package code reads. Reads that only validate (``__post_init__``)
or copy and store settings (``dataclasses.asdict``/``replace``, tyro) do not count: an option read only
there would change a trial's key but not its numbers.
"""

from __future__ import annotations

import dataclasses
import sys
import typing
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import tyro
from tyro._docstrings import get_field_docstring

import polineurons
from polineurons.cli import COMMANDS, main

PACKAGE = str(Path(polineurons.__file__).parent)
SUPPRESSED = typing.get_args(tyro.conf.Suppress[int])[1]

# Options read on a branch this test does not take, and where that branch is tested instead.
ELSEWHERE = {
    "preset": "read from the command line by cli.main to choose every default (test_cli: smoke runs)",
    "ray_address": "read when Ray starts (test_launch)",
    "gpus_per_trial": "read when a Ray task is submitted (test_launch)",
    "cpus_per_trial": "read when a Ray task is submitted (test_launch)",
}


def leaf_options(cls: type, path: str = "") -> Iterator[tuple[type, str, str]]:
    """``(owner dataclass, field, dotted path)`` of every option tyro lists for ``cls``."""
    hints = typing.get_type_hints(cls, include_extras=True)
    for field in dataclasses.fields(cls):
        hint, meta = hints[field.name], ()
        if typing.get_origin(hint) is typing.Annotated:
            hint, *meta = typing.get_args(hint)
        if SUPPRESSED in meta:
            continue
        if dataclasses.is_dataclass(hint):
            yield from leaf_options(hint, f"{path}{field.name}.")
        else:
            yield cls, field.name, f"{path}{field.name}"


def _uses(frame) -> bool:
    code = frame.f_code
    return code.co_filename.startswith(PACKAGE) and code.co_name != "__post_init__"


@contextmanager
def field_reads(classes: set[type], monkeypatch) -> Iterator[set[tuple[type, str]]]:
    """Record ``(class, field)`` whenever package code outside validation reads a field of ``classes``."""
    seen: set[tuple[type, str]] = set()
    names = {cls: {f.name for f in dataclasses.fields(cls)} for cls in classes}

    def traced(self, name, _get=object.__getattribute__):
        cls = type(self)
        if name in names.get(cls, ()) and _uses(sys._getframe(1)):
            seen.add((cls, name))
        return _get(self, name)

    with monkeypatch.context() as patch:
        for cls in classes:
            patch.setattr(cls, "__getattribute__", traced)
        yield seen


def _invoke(args: list) -> None:
    try:
        main([str(a) for a in args])
    except SystemExit as exit:
        assert not exit.code, f"polineurons {' '.join(map(str, args))} exited with {exit.code}"


def invocations(tmp: Path) -> dict[str, list[list]]:
    """Each command's invocations, in COMMANDS order (later ones read the folders earlier ones write),
    small enough for seconds on a tiny model."""
    ft, loc, run = tmp / "ft", tmp / "loc", tmp / "run"
    tiny, cpu = ["--model", "tiny-llama"], ["--device", "cpu"]
    train = ["--max-steps", 1, "--batch-size", 2, "--max-seq-len", 320]
    sweep = [*tiny, *cpu, "--preset", "smoke"]
    lora = ["--finetune.train", "lora"]  # full fine-tuning: the finetune command's first run
    methods = ["--mitigate.methods", "inhibit-zero", "caft", "steer", "kl", "replay", "--mitigate.no-controls"]
    return {
        "info": [["info", *tiny, *cpu, "--ask", "Hello?"]],
        "stance": [["stance", *tiny, *cpu, "--topics", "race", "--max-items", 1, "--statements", "--out", tmp / "s"]],
        "finetune": [
            ["finetune", *tiny, *cpu, "--target", "race", "--out", ft, *train],
            ["finetune", *tiny, *cpu, "--target", "race", "--out", tmp / "lora", *train, "--train", "lora"],
        ],
        "generalization": [
            ["generalization", *tiny, *cpu, "--finetuned", ft, "--target", "race", "--max-items", 1, "--out", tmp / "g"]
        ],
        "localize": [
            ["localize", *tiny, *cpu, "--finetuned", ft, "--out", loc, "--max-items", 2, "--top-k", 20],
            ["localize", *tiny, *cpu, "--finetuned", ft, "--opposite", ft, "--contrast", "leaning", "--target", "race"]
            + ["--out", tmp / "loc2", "--max-items", 1, "--general-over", "others"],
        ],
        "patch": [
            ["patch", *tiny, *cpu, "--finetuned", ft, "--neurons", loc, "--out", tmp / "p", "--max-items", 1]
            + ["--target", "race", "--random-seeds", 1, "--attribution-sample", 2]
        ],
        "screen": [
            ["screen", *tiny, *cpu, "--target", "race", "--max-train-items", 2, "--max-eval-items", 1]
            + ["--eval-data", "crosscheck", "--out", tmp / "sc"]
        ],
        "run": [["run", *sweep, "--out", run, *lora, *methods]],
        "mitigate": [
            ["mitigate", *sweep, "--out", tmp / "m", "--neurons", loc, *lora, *methods, "--mitigate.strengths", 1.0]
            + ["--mitigate.directions", "pca"]
        ],
        "layers": [
            ["layers", *sweep, "--out", tmp / "ls", *lora, "--mitigate.directions", "flip", "--mitigate.rank", 1]
            + ["--search.layers", 0, 2, "--search.steps", 1, "--search.pick", 1],
            ["layers", *sweep, "--out", tmp / "ls", *lora, "--search.method", "caft-grad", "--search.every", 2],
        ],
        "geometry": [["geometry", *sweep, "--out", tmp / "ls", *lora, "--layers", 1, "--ranks", 1, 2, "--kind", "pca"]],
        "matrix": [["matrix", *sweep, *lora, "--out", tmp / "mx", "--targets", "race", "--leanings", "right"]],
        "report": [["report", run]],
        "league": [["league", run, tmp / "m", "--out", tmp / "league.json"]],
    }


def test_every_listed_option_is_read(tiny_env, monkeypatch, capsys, tmp_path):
    runs, unread = invocations(tmp_path), {}
    for command in COMMANDS:
        name = command.__name__.lower()
        options = list(leaf_options(command))
        with field_reads({cls for cls, _, _ in options}, monkeypatch) as seen:
            for args in runs[name]:
                _invoke(args)
        missed = [path for cls, field, path in options if (cls, field) not in seen and field not in ELSEWHERE]
        if missed:
            unread[name] = missed
    assert not unread, f"options listed that nothing reads, per command: {unread}"


def _help(cls: type, name: str) -> str:
    """An option's help: its ``tyro.conf.arg(help=...)``, else its field's docstring or comment."""
    hint = typing.get_type_hints(cls, include_extras=True)[name]
    given = [m.help for m in getattr(hint, "__metadata__", ()) if getattr(m, "help", None)]
    return given[0] if given else get_field_docstring(cls, name, ()) or ""


def test_every_option_has_a_one_paragraph_help():
    options = {(cls.__name__, name): _help(cls, name) for command in COMMANDS for cls, name, _ in leaf_options(command)}
    assert not [key for key, text in options.items() if not text.strip()], "options without a help text"
    # tyro keeps a field docstring's line breaks: a two-line docstring prints as a broken sentence
    broken = [key for key, text in options.items() if "\n" in text]
    assert not broken, f"write these fields' docstrings on one line (details in the class docstring): {broken}"
