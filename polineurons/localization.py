"""A localization result — per-topic neuron scores, top sets, general and topic-specific neurons —
and the selection rules that make one from scores (top k%, votes across topics, sign agreement)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor

from polineurons.contrasts import Scores
from polineurons.errors import MissingFileError
from polineurons.io import atomic_path, read_json, write_json
from polineurons.neurons import NeuronSet
from polineurons.versions import library_versions

SIGNED: tuple[str, ...] = ("leaning", "answers", "attribution")  # contrasts whose scores carry a sign


def top_percent(scores: Scores, percent: float, **meta) -> NeuronSet:
    """The ``percent``% highest-scoring neurons of the whole model (ties broken by position)."""
    if not 0 < percent <= 100:
        raise ValueError(f"percent must be in (0, 100], got {percent}.")
    flat = scores.flatten()
    keep = round(flat.numel() * percent / 100)
    order = torch.argsort(flat, descending=True, stable=True)[:keep]
    mask = torch.zeros(flat.numel(), dtype=torch.bool)
    mask[order] = True
    return NeuronSet(mask.view_as(scores), **meta)


def jaccard(a: NeuronSet, b: NeuronSet) -> float:
    """|a ∩ b| / |a ∪ b| (1.0 for two empty sets)."""
    union = len(a | b)
    return len(a & b) / union if union else 1.0


def pairwise_jaccard(top: dict[str, NeuronSet]) -> dict[str, float]:
    """Min, mean and max Jaccard overlap over every pair of the topics' top sets."""
    topics = list(top)
    values = [jaccard(top[a], top[b]) for i, a in enumerate(topics) for b in topics[i + 1 :]]
    if not values:
        return {"min": 1.0, "mean": 1.0, "max": 1.0}
    return {"min": min(values), "mean": sum(values) / len(values), "max": max(values)}


@dataclass
class Localization:
    """PNLAC result: per-topic scores, top sets, general and topic-specific neurons."""

    scores: dict[str, Scores]  # normalized as configured
    top: dict[str, NeuronSet]
    general: NeuronSet
    specific: dict[str, NeuronSet]
    config: dict = field(default_factory=dict)

    @property
    def signed(self) -> bool:
        """Whether the scores carry a sign (positive = toward the right leaning)."""
        return self.config.get("contrast", "finetune") in SIGNED

    def mean_strength(self) -> Scores:
        """Per neuron, the mean over topics of its score (of |score| for a signed contrast)."""
        stacked = torch.stack(list(self.scores.values()))
        return (stacked.abs() if self.signed else stacked).mean(dim=0)

    def signs(self) -> Tensor:
        """Per neuron, the sign of its mean score over topics (+1 for an unsigned contrast)."""
        if not self.signed:
            return torch.ones_like(self.general.mask, dtype=torch.float32)
        return torch.sign(torch.stack(list(self.scores.values())).mean(dim=0))

    def general_ranking(self) -> Tensor:
        """General neurons as ``[k, 2]`` (layer, index) rows, strongest first (:meth:`mean_strength`)."""
        pairs = torch.nonzero(self.general.mask)
        order = torch.argsort(self.mean_strength()[self.general.mask], descending=True, stable=True)
        return pairs[order]

    def top_general(self, percent: float) -> NeuronSet:
        """The top ``percent``% of ALL MLP neurons, chosen among the general ones by mean score
        (all general neurons if there are fewer) — InhibitFT's default neuron choice."""
        n_layers, d_mlp = self.general.mask.shape
        count = round(n_layers * d_mlp * percent / 100)
        chosen = self.general_ranking()[:count]
        return NeuronSet.from_pairs(
            chosen.tolist(),
            n_layers,
            d_mlp,
            model_name=self.general.model_name,
            provenance={"top_general_percent": percent, **self.config},
        )

    def summary(self) -> dict:
        topics = list(self.top)
        return {
            "topics": topics,
            "n_neurons": self.general.n_total,
            "general": {
                "count": len(self.general),
                "fraction": self.general.fraction,
                "layer_counts": self.general.layer_counts(),
            },
            "top": {t: {"count": len(s), "layer_counts": s.layer_counts()} for t, s in self.top.items()},
            "specific": {
                t: {"count": len(s), "fraction": s.fraction, "layer_counts": s.layer_counts()}
                for t, s in self.specific.items()
            },
            "jaccard": {a: {b: jaccard(self.top[a], self.top[b]) for b in topics} for a in topics},
            "pairwise_jaccard": pairwise_jaccard(self.top),
        }

    def describe(self) -> str:
        """Plain-text summary: general neurons (per layer), specific counts, overlap of the top sets."""
        summary = self.summary()
        general = summary["general"]
        lines = [
            f"general neurons: {general['count']} of {summary['n_neurons']} ({general['fraction']:.1%})",
            "  per layer: " + " ".join(str(c) for c in general["layer_counts"]),
        ]
        lines += [f"specific {topic:<24}{row['count']:>7}" for topic, row in summary["specific"].items()]
        pairs = summary["pairwise_jaccard"]
        if len(summary["topics"]) > 1:
            lines.append(
                f"Jaccard between topics' top sets: min {pairs['min']:.2f}, "
                f"mean {pairs['mean']:.2f}, max {pairs['max']:.2f}"
            )
        return "\n".join(lines)

    def save(self, out_dir: str | os.PathLike) -> Path:
        """``scores.safetensors``, ``general.*``, ``top/{topic}.*``, ``specific/{topic}.*``, ``summary.json``."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        with atomic_path(out / "scores.safetensors") as tmp:
            save_file({t: s.contiguous() for t, s in self.scores.items()}, str(tmp))
        self.general.save(out / "general")
        for topic in self.top:
            self.top[topic].save(out / "top" / topic)
            self.specific[topic].save(out / "specific" / topic)
        payload = {"config": self.config, "summary": self.summary(), "versions": library_versions()}
        write_json(out / "summary.json", payload)
        return out

    @classmethod
    def load(cls, out_dir: str | os.PathLike) -> Localization:
        out = Path(out_dir)
        if not (out / "summary.json").is_file():
            raise MissingFileError(f"{out} holds no PNLAC result (summary.json missing).")
        payload = read_json(out / "summary.json")
        scores = load_file(str(out / "scores.safetensors"))
        topics = payload["summary"]["topics"]
        return cls(
            scores={t: scores[t] for t in topics},
            top={t: NeuronSet.load(out / "top" / t) for t in topics},
            general=NeuronSet.load(out / "general"),
            specific={t: NeuronSet.load(out / "specific" / t) for t in topics},
            config=payload["config"],
        )


def split_general_specific(
    top: dict[str, NeuronSet],
    min_topics: int | None = None,
    *,
    signs: dict[str, Tensor] | None = None,
    voters: Sequence[str] | None = None,
) -> tuple[NeuronSet, dict[str, NeuronSet]]:
    """General = in the top set of at least ``min_topics`` of the ``voters`` (default: every topic;
    None or more than there are: all of them) — with ``signs``, all of the same sign; specific = each
    topic's top set − general."""
    voting = list(top) if voters is None else list(voters)
    if unknown := set(voting) - set(top):
        raise ValueError(f"Voters {sorted(unknown)} have no top set.")
    needed = len(voting) if min_topics is None else min(min_topics, len(voting))
    if needed < 1:
        raise ValueError(f"min_topics must be >= 1, got {min_topics}.")
    if signs is None:
        votes = torch.stack([top[t].mask for t in voting]).sum(dim=0)
    else:
        positive = torch.stack([top[t].mask & (signs[t] > 0) for t in voting]).sum(dim=0)
        negative = torch.stack([top[t].mask & (signs[t] < 0) for t in voting]).sum(dim=0)
        votes = torch.maximum(positive, negative)
    first = top[voting[0]]
    general = NeuronSet(votes >= needed, model_name=first.model_name, provenance={"min_topics": needed})
    return general, {topic: s - general for topic, s in top.items()}
