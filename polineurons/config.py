"""The configuration of a whole run: one frozen dataclass per stage, nested in :class:`RunConfig`.

A setting is declared once, as a field of its stage's dataclass (which validates it); the command
line is generated from these dataclasses, presets are instances of them, and a stage's dependency
keys are read off the sections it uses.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Literal

from polineurons.errors import UserError
from polineurons.finetune import FinetuneConfig
from polineurons.mitigate import MitigateConfig
from polineurons.models import EMBEDDED_MODEL
from polineurons.patching import PatchConfig
from polineurons.pnlac import LocalizeConfig
from polineurons.stance import StanceConfig

Preset = Literal["quick", "full", "smoke"]
PRESETS: tuple[str, ...] = ("quick", "full", "smoke")


class RunError(UserError, ValueError):
    """A run cannot start or continue as asked (bad input, changed configuration, unwritable folder)."""


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
    data: str = "voices"
    """Training and eval data: voices (v2), arguments (v1), a JSONL file or folder, an IDEOINST folder, hf:NAME."""
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
    # quick: 16 eval items per topic (a CTG of 0.05 stays above its CI) and the first 48 tokens of
    # each answer, 32 of the 160 neutral texts; 16 fine-tuning steps (128 of the 216 training items)
    # at twice the default rate
    stance: StanceConfig = StanceConfig(max_items=16, max_answer_tokens=48, neutral_items=32)
    check: StanceConfig = StanceConfig(max_items=16, max_answer_tokens=48)
    finetune: FinetuneConfig = FinetuneConfig(epochs=1, max_steps=16, learning_rate=1e-4)
    localize: LocalizeConfig = LocalizeConfig(max_items=16)
    examples: ExamplesConfig = field(default_factory=ExamplesConfig)
    # 6 items per topic: recovery ratios are noisy (4 were dominated by noise), the full preset has them all
    patch: PatchConfig = PatchConfig(
        max_items=6, max_answer_tokens=32, random_seeds=1, specific="target", all_neurons=False
    )
    # CAFT's direction from 16 training items per topic (its estimate takes ~70 s at 32 on a CPU)
    mitigate: MitigateConfig = MitigateConfig(methods=("caft",), items=16)

    def __post_init__(self) -> None:
        if self.leaning not in ("left", "right"):
            raise ValueError(f"Unknown leaning '{self.leaning}': use left or right.")
        if self.preset not in PRESETS:
            raise RunError(f"Unknown preset '{self.preset}': use {', '.join(PRESETS)}.")
        if self.seeds < 1:
            raise ValueError(f"seeds must be >= 1, got {self.seeds}.")
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
                check=StanceConfig(),
                finetune=FinetuneConfig(epochs=3),
                localize=LocalizeConfig(),
                examples=ExamplesConfig(prompts=3),
                patch=PatchConfig(),
                mitigate=MitigateConfig(
                    methods=("inhibit-zero", "inhibit-freeze", "stopgrad", "caft", "caft-grad", "steer", "kl"),
                    strengths=(0.25, 0.5, 1.0, 2.0),
                ),
            )
        elif name == "smoke":
            config = replace(
                config,
                stance=StanceConfig(max_items=2, neutral_items=8),
                check=StanceConfig(max_items=2),
                finetune=FinetuneConfig(epochs=1, max_steps=2, batch_size=4, max_seq_len=320, learning_rate=1e-3),
                localize=LocalizeConfig(max_items=2),
                examples=ExamplesConfig(prompts=1, neurons=4),
                patch=replace(config.patch, max_items=2, max_answer_tokens=8, random_seeds=1, all_neurons=True),
                mitigate=MitigateConfig(methods=("inhibit-zero", "caft"), items=2),
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
