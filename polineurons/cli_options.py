"""The options the `polineurons` commands share, and the mixins that carry them (:mod:`polineurons.cli`)."""

from __future__ import annotations

from dataclasses import dataclass, fields, is_dataclass
from pathlib import Path
from typing import Annotated, Literal, TypeVar

import tyro

from polineurons.config import ExamplesConfig, RunConfig
from polineurons.data import load_data
from polineurons.io import write_json
from polineurons.launch import LaunchConfig
from polineurons.methods import Directions, MethodName, MitigateConfig
from polineurons.models import EMBEDDED_MODEL, DType, load_model
from polineurons.patching import PatchConfig
from polineurons.pnlac import LocalizeConfig

Flat = tyro.conf.arg(name="")  # a nested config's options without a prefix: --top-k, not --config.top-k
Model = Annotated[str, tyro.conf.arg(aliases=("-m",), help="embedded, tiny-llama, tiny-gemma3, a folder, a hub id.")]
Base = Annotated[str, tyro.conf.arg(name="model", aliases=("-m", "--base"), help="The model before fine-tuning.")]
Device = Annotated[str | None, tyro.conf.arg(help="cpu, cuda, ... (None: cuda if available).")]
Dtype = Annotated[DType, tyro.conf.arg(help="Weights' dtype; auto: bfloat16 on a GPU, float32 on a CPU.")]
Data = Annotated[str, tyro.conf.arg(help="voices, arguments, crosscheck, briefs, a JSONL file or folder, hf:NAME.")]
Target = Annotated[str, tyro.conf.arg(aliases=("--topic",), help="The fine-tuning topic.")]
JsonOut = Annotated[Path | None, tyro.conf.arg(help="Write the results as JSON here.")]
Leaning = Annotated[Literal["left", "right"], tyro.conf.arg(help="Leaning of the fine-tuning answers.")]
Finetuned = Annotated[Path, tyro.conf.arg(help="The fine-tuned model (a folder, e.g. from `polineurons finetune`).")]


def optional_target(use: str):
    """The fine-tuning topic as an option a command can do without: ``use`` says what it is for."""
    return Annotated[str | None, tyro.conf.arg(aliases=("--topic",), help=f"The fine-tuning topic ({use}).")]


def write_report(out: Path | None, report: dict) -> None:
    """Write a command's results as JSON to ``out`` (if given) and say where."""
    if out is not None:
        write_json(out, report)
        print(f"wrote {out}")


@dataclass(kw_only=True)
class Loads:
    """Commands that load models: where and in which dtype."""

    device: Device = None
    dtype: Dtype = "auto"

    def load(self, model: str | Path | None):
        return load_model(model, device=self.device, dtype=self.dtype) if model else None


@dataclass(kw_only=True)
class OnData(Loads):
    """Commands that read a data set."""

    data: Data = "voices"
    eval_size: int = 20  # Items per topic held out for evaluation, in data without a fixed split.

    def dataset(self, target: str | None = None):
        dataset = load_data(self.data, eval_size=self.eval_size)
        dataset.select(topics=[target] if target else None)  # an unknown target fails here, before any work
        return dataset


@dataclass(kw_only=True)
class OnPair(OnData):
    """Commands that compare a fine-tuned model with its base."""

    finetuned: Finetuned
    base: Base = EMBEDDED_MODEL

    def models(self):
        return self.load(self.base), self.load(self.finetuned)


@dataclass(kw_only=True)
class Sweeps:
    """Commands that train many trials: the device, and the launcher that spreads them."""

    device: Device = None
    launch: Annotated[LaunchConfig, Flat] = LaunchConfig()


# A sweep command lists only the sections of a run's settings it reads (`run` reads them all); the
# hidden ones keep the preset's values, so a folder's stored settings are those of a run.
_QUICK = RunConfig()
Options = TypeVar("Options", bound=RunConfig)


@dataclass(frozen=True)
class MitigateOptions(RunConfig):
    """A run's settings that `mitigate` reads (no localize, examples or patch sections)."""

    localize: tyro.conf.Suppress[LocalizeConfig] = _QUICK.localize
    examples: tyro.conf.Suppress[ExamplesConfig] = _QUICK.examples
    patch: tyro.conf.Suppress[PatchConfig] = _QUICK.patch


@dataclass(frozen=True)
class MatrixOptions(MitigateOptions):
    """A run's settings that `matrix` reads: no mitigation, and each cell's target and leaning come
    from --targets and --leanings, its seed from --finetune.seed."""

    target: tyro.conf.Suppress[str] = _QUICK.target
    leaning: tyro.conf.Suppress[Literal["left", "right"]] = _QUICK.leaning
    seeds: tyro.conf.Suppress[int] = _QUICK.seeds
    mitigate: tyro.conf.Suppress[MitigateConfig] = _QUICK.mitigate


@dataclass(frozen=True)
class DirectionOptions(MitigateConfig):
    """The mitigation settings the layer search reads: how directions are made (it sets the layers)."""

    methods: tyro.conf.Suppress[tuple[MethodName, ...]] = _QUICK.mitigate.methods
    strengths: tyro.conf.Suppress[tuple[float, ...]] = _QUICK.mitigate.strengths
    controls: tyro.conf.Suppress[bool] = _QUICK.mitigate.controls
    percent: tyro.conf.Suppress[float] = _QUICK.mitigate.percent
    layers: tyro.conf.Suppress[tuple[int, ...] | None] = _QUICK.mitigate.layers
    steer_layer: tyro.conf.Suppress[int | None] = _QUICK.mitigate.steer_layer
    kl_beta: tyro.conf.Suppress[float] = _QUICK.mitigate.kl_beta
    replay_tokens: tyro.conf.Suppress[int] = _QUICK.mitigate.replay_tokens


@dataclass(frozen=True)
class SearchOptions(MitigateOptions):
    """A run's settings that `layers` reads: one seed (--finetune.seed) and the direction settings."""

    seeds: tyro.conf.Suppress[int] = _QUICK.seeds
    mitigate: DirectionOptions = DirectionOptions()


@dataclass(frozen=True)
class TextOptions(DirectionOptions):
    """The mitigation settings the geometry reads: how many items' texts (it sets kind and ranks itself)."""

    directions: tyro.conf.Suppress[Directions] = _QUICK.mitigate.directions
    rank: tyro.conf.Suppress[int] = _QUICK.mitigate.rank


@dataclass(frozen=True)
class GeometryOptions(SearchOptions):
    """A run's settings that `geometry` reads: one seed's fine-tunes and the texts they are compared on."""

    mitigate: TextOptions = TextOptions()


def narrowed(options: type[Options], config: RunConfig) -> Options:
    """``config`` as the options type of a command that reads part of it."""
    values = {f.name: getattr(config, f.name) for f in fields(RunConfig)}
    for f in fields(options):  # a section narrowed to a subclass of its own (SearchOptions.mitigate)
        section, narrow = values[f.name], type(f.default)
        if is_dataclass(section) and narrow is not type(section) and issubclass(narrow, type(section)):
            values[f.name] = narrow(**{g.name: getattr(section, g.name) for g in fields(section)})
    return options(**values)
