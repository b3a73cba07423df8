"""The configuration of a whole run: one frozen dataclass per stage, nested in :class:`RunConfig`.

A setting is declared once, as a field of its stage's dataclass (which validates it); the command
line is generated from these dataclasses, presets are instances of them, and a stage's dependency
keys are read off the sections it uses.
"""

from __future__ import annotations

import dataclasses
import json
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Literal

from polineurons.data import load_data
from polineurons.data.items import DataError, StanceDataset
from polineurons.errors import RunError
from polineurons.methods import MitigateConfig
from polineurons.models import EMBEDDED_MODEL, DType, resolve_model_path
from polineurons.patching import PatchConfig
from polineurons.pnlac import LocalizeConfig
from polineurons.stance import ScoringConfig, StanceConfig
from polineurons.training import FinetuneConfig
from polineurons.trial import TrialSpec

Preset = Literal["quick", "full", "smoke"]
PRESETS: tuple[str, ...] = ("quick", "full", "smoke")


@dataclass(frozen=True)
class ExamplesConfig:
    """The report's neuron view: activations of the top general neurons on a few eval questions."""

    prompts: int = 2
    """Eval questions per topic."""
    neurons: int = 12
    """Top general neurons shown."""


@dataclass(frozen=True)
class RunConfig:
    """Everything that determines a run's numbers. The field defaults are the ``quick`` preset;
    :meth:`from_preset` gives the others."""

    model: str = EMBEDDED_MODEL
    """Model: smollm2-135m-instruct (embedded, offline), tiny-llama, tiny-gemma3, a folder or a hub id."""
    dtype: DType = "auto"
    """Weights' dtype: auto (bfloat16 on a GPU, float32 on a CPU), float32, bfloat16, float16."""
    data: str = "voices"
    """Training and eval data: voices (v2), arguments (v1), a JSONL file or folder, an IDEOINST folder, hf:NAME."""
    eval_size: int = 20
    """Items per topic held out for evaluation, in data without a fixed split (seeded)."""
    target: str = "immigration"
    """Topic to fine-tune on."""
    leaning: Literal["left", "right"] = "right"
    """Leaning of the fine-tuning answers."""
    preset: Preset = "quick"
    """quick (minutes on a CPU), full (sized for a GPU) or smoke (seconds, tiny models)."""
    seeds: int = 1
    """Fine-tunes with training seeds finetune.seed, +1, ...; headline numbers are pooled over them."""
    check_data: tuple[str, ...] = ("crosscheck",)
    """Independent data sets scored before and after fine-tuning too (never trained on)."""
    stance: StanceConfig = StanceConfig(max_items=16, max_answer_tokens=48, neutral_items=32)
    """Scoring of the data's eval items and the neutral-text check (quick: 16 items per topic, where a CTG
    of 0.05 stays above its CI; the first 48 answer tokens; 32 of the 160 neutral texts)."""
    check: ScoringConfig = ScoringConfig(max_items=16, max_answer_tokens=48)
    """Scoring of each check data set."""
    finetune: FinetuneConfig = FinetuneConfig(epochs=1, max_steps=16, learning_rate=1e-4)
    """Training (quick: 16 steps, 128 of the 216 training items, at twice the default rate)."""
    localize: LocalizeConfig = LocalizeConfig(max_items=16)
    """PNLAC (quick: 16 training items per topic)."""
    examples: ExamplesConfig = field(default_factory=ExamplesConfig)
    """The report's neuron view."""
    patch: PatchConfig = PatchConfig(
        max_items=6, max_answer_tokens=32, random_seeds=3, specific="target", all_neurons=False
    )
    """Activation patching and mean-ablation (quick: 6 items per topic, 3 disjoint random controls; ratios are
    noisy at 6 items — the neuron claims were measured on 48: scripts/neuron_claims.sh)."""
    mitigate: MitigateConfig = MitigateConfig(methods=("caft",), strengths=(0.05,), items=16)
    """Mitigations (quick: CAFT at 0.05, ~90% of the target kept, its direction from 16 training items per
    topic; the frontier over every strength: `polineurons mitigate`)."""

    def __post_init__(self) -> None:
        if self.leaning not in ("left", "right"):
            raise ValueError(f"Unknown leaning '{self.leaning}': use left or right.")
        if self.preset not in PRESETS:
            raise RunError(f"Unknown preset '{self.preset}': use {', '.join(PRESETS)}.")
        if self.seeds < 1 or self.eval_size < 1:
            raise ValueError(f"seeds and eval_size must be >= 1, got {self.seeds} and {self.eval_size}.")
        if getattr(self.check, "neutral_items", None) is not None:
            raise ValueError("check scores no neutral text: the neutral-text check is sized by stance.neutral_items.")
        if self.data in self.check_data:
            raise ValueError(f"check_data must be other data than the training data '{self.data}'.")

    @property
    def training_seeds(self) -> list[int]:
        return [self.finetune.seed + i for i in range(self.seeds)]

    @classmethod
    def from_preset(cls, name: str = "quick", **overrides: Any) -> RunConfig:
        """``quick``: minutes on a 2-core CPU for the 135M model (fewer epochs and items);
        ``full``: every item, more epochs and neuron shares — sized for a GPU;
        ``smoke``: seconds on a tiny model, to check the plumbing (its numbers mean nothing).

        ``overrides`` are field names, dotted for nested ones: ``{"localize.top_k": 20}``.
        """
        if name not in PRESETS:
            raise RunError(f"Unknown preset '{name}': use {', '.join(PRESETS)}.")
        config = cls(preset=name)
        if name == "full":
            config = replace(
                config,
                seeds=3,
                stance=StanceConfig(),
                check=ScoringConfig(),
                finetune=FinetuneConfig(epochs=3),
                localize=LocalizeConfig(),
                examples=ExamplesConfig(prompts=3),
                patch=PatchConfig(),
                # every method at its own strengths (polineurons.methods)
                mitigate=MitigateConfig(
                    methods=("inhibit-zero", "inhibit-freeze", "stopgrad", "caft", "caft-grad", "steer", "kl", "replay")
                ),
            )
        elif name == "smoke":
            config = replace(
                config,
                stance=StanceConfig(max_items=2, neutral_items=8),
                check=ScoringConfig(max_items=2),
                finetune=FinetuneConfig(epochs=1, max_steps=2, batch_size=4, max_seq_len=320, learning_rate=1e-3),
                localize=LocalizeConfig(max_items=2, top_k=20.0, min_topics=2),  # a tiny model: a set to plumb through
                examples=ExamplesConfig(prompts=1, neurons=4),
                patch=replace(config.patch, max_items=2, max_answer_tokens=8, random_seeds=1, all_neurons=True),
                mitigate=MitigateConfig(methods=("inhibit-zero", "caft"), strengths=(1.0,), items=2),
            )
        return config.with_overrides(overrides)

    def with_overrides(self, overrides: Mapping[str, Any]) -> RunConfig:
        """A copy with ``{"field": value}`` or ``{"section.field": value}`` replaced (validated)."""
        config = self
        for key, value in overrides.items():
            section, _, name = key.partition(".")
            known = {f.name for f in dataclasses.fields(self)}
            if section not in known:
                raise RunError(
                    f"Unknown setting '{key}': settings are {', '.join(sorted(known))} (dotted for sections)."
                )
            if name:
                part = getattr(config, section)
                if name not in {f.name for f in dataclasses.fields(part)}:
                    raise RunError(f"Unknown setting '{key}' in section '{section}'.")
                value = replace(part, **{name: value})
            config = replace(config, **{section: value})
        return config

    def to_dict(self) -> dict:
        # JSON round trip: tuples become lists, so a stored config compares equal to a fresh one
        return json.loads(json.dumps(asdict(self)))

    def values(self, sections: tuple[str, ...]) -> dict[str, Any]:
        """The flattened settings of ``sections`` (``{"localize.top_k": 30.0, "model": ...}``)."""
        values = self.to_dict()
        flat: dict[str, Any] = {}
        for section in sections:
            value = values[section]
            if isinstance(value, dict):
                flat.update({f"{section}.{key}": item for key, item in value.items()})
            else:
                flat[section] = value
        return flat


def load_inputs(config: RunConfig) -> tuple[StanceDataset, dict[str, StanceDataset]]:
    """The training data and each check data set; a bad data name or model name fails here, as a
    :class:`RunError`, before any work."""
    try:
        checks = {name: load_data(name) for name in config.check_data}
        resolve_model_path(config.model)
        return load_data(config.data, eval_size=config.eval_size), checks
    except (DataError, LookupError) as error:
        raise RunError(str(error)) from error


def trial_spec(config: RunConfig) -> TrialSpec:
    """What ``config``'s trials train and how they are scored, from validated inputs: an unknown data
    set or model, or a target topic missing from the data, fails here. A check data set without the
    target topic and another is skipped, with a warning (a user's own topics are rarely in ours).

    Example::

        spec = trial_spec(RunConfig.from_preset("quick", target="race"))
    """
    dataset, checks = load_inputs(config)
    if config.target not in dataset.topics:
        raise RunError(
            f"Unknown target topic '{config.target}'; topics in {dataset.source}: {', '.join(dataset.topics)}."
        )
    if len(dataset.topics) < 2:
        raise RunError(f"{dataset.source} has one topic; cross-topic generalization needs at least two.")
    for name, check in list(checks.items()):
        if config.target not in check.topics or len(check.topics) < 2:
            del checks[name]
            warnings.warn(
                f"Check data {name} is not scored: it needs the topic '{config.target}' and another, and has "
                f"{', '.join(check.topics)}.",
                stacklevel=2,
            )
    options = (config.finetune, config.stance, checks, config.check, config.model)
    return TrialSpec(dataset, config.target, config.leaning, *options)


def preset_named(argv: Sequence[str]) -> str:
    """The preset a command line names with ``--preset NAME`` or ``--preset=NAME`` (default: quick)."""
    named = [v for k, v in zip(argv, argv[1:], strict=False) if k == "--preset"]
    return ([a.split("=", 1)[1] for a in argv if a.startswith("--preset=")] + named + ["quick"])[0]
