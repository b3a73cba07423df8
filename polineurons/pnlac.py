"""PNLAC — Political Neuron Localization through Activation Contrasting.

Run the base and the fine-tuned model on the same inputs of each topic and score every MLP neuron
by the root-mean-square of (fine-tuned − base) activation over all non-padding tokens. Keep the top
k% per topic; neurons in the top set of every topic (or of at least ``min_topics``) are *general*
political neurons, the rest of a topic's top set are its *topic-specific* neurons.

Streaming: per batch, the base activations of one batch are recorded and the fine-tuned model's
hooks accumulate squared differences on the device, so memory does not grow with the prompt count.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal, get_args

import torch
from jaxtyping import Float
from safetensors.torch import load_file, save_file
from torch import Tensor
from tqdm.auto import tqdm

from polineurons.batching import length_sorted_batches, pad_id_of, pad_right
from polineurons.data.items import StanceDataset
from polineurons.data.prompts import encode_prompt, encode_text
from polineurons.errors import MissingFileError
from polineurons.hooks import record_neurons
from polineurons.io import atomic_path, read_json, write_json
from polineurons.neurons import NeuronSet, mlp_post_hook_name, model_shape
from polineurons.versions import library_versions

Scores = Float[Tensor, "n_layers d_mlp"]
Inputs = Literal["question", "question_answers"]
Normalization = Literal["none", "layer_z"]


@dataclass(frozen=True)
class LocalizeConfig:
    """PNLAC settings."""

    top_k: float = 30.0
    """Percent of all neurons kept per topic."""
    min_topics: int | None = None
    """General = in the top set of at least this many topics (default: all)."""
    inputs: Inputs = "question"
    """Token sequences contrasted: each question, or question + each answer."""
    normalize: Normalization = "none"
    """none (raw RMS, favours late layers) or layer_z (z-score each layer first)."""
    max_items: int | None = None
    """Train items per topic (default: all)."""
    skip_shared_prefix: bool = False
    """Score only tokens after the prompt prefix every topic shares (system prompt, turn markers)."""
    batch_size: int = 8
    """Sequences per forward."""

    def __post_init__(self) -> None:
        if not 0 < self.top_k <= 100:
            raise ValueError(f"top_k must be in (0, 100], got {self.top_k}.")
        if self.inputs not in get_args(Inputs):
            raise ValueError(f"inputs must be one of {', '.join(get_args(Inputs))}, got {self.inputs!r}.")
        if self.normalize not in get_args(Normalization):
            raise ValueError(f"normalize must be one of {', '.join(get_args(Normalization))}, got {self.normalize!r}.")
        for name in ("min_topics", "max_items"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}.")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}.")


def contrast_scores(
    base, finetuned, sequences: Sequence[Sequence[int]], *, skip: int = 0, batch_size: int = 8, progress: bool = False
) -> Scores:
    """Per-neuron RMS of (fine-tuned − base) activations over every non-padding token of ``sequences``
    from position ``skip`` on (the first ``skip`` tokens still run, as context, but are not scored)."""
    n_layers, d_mlp = model_shape(base)
    if model_shape(finetuned) != (n_layers, d_mlp):
        raise ValueError(f"Models differ in shape: {model_shape(base)} vs {model_shape(finetuned)}.")
    if not sequences:
        raise ValueError("contrast_scores needs at least one sequence.")
    device = base.cfg.device
    sum_squares = torch.zeros(n_layers, d_mlp, dtype=torch.float64, device=device)
    n_tokens = 0
    for indices in tqdm(
        length_sorted_batches([len(s) for s in sequences], batch_size),
        desc="contrast",
        disable=not progress,
        leave=False,
    ):
        tokens, mask = pad_right([sequences[i] for i in indices], pad_id_of(base))
        tokens, mask = tokens.to(device), mask.to(device)
        scored = mask.clone()
        scored[:, :skip] = 0
        weight = scored[..., None].float()
        with torch.no_grad(), record_neurons(base) as base_acts:
            base(tokens, attention_mask=mask)
        recorded = dict(base_acts)

        def make_hook(layer: int):
            def hook(activation: Tensor, hook) -> Tensor:
                diff = activation.float() - recorded[layer].float()
                sum_squares[layer] += (diff.square() * weight).sum(dim=(0, 1)).double()
                return activation

            return hook

        hooks = [(mlp_post_hook_name(layer), make_hook(layer)) for layer in range(n_layers)]
        with torch.no_grad(), finetuned.hooks(fwd_hooks=hooks):
            finetuned(tokens, attention_mask=mask)
        n_tokens += int(scored.sum())
    if n_tokens == 0:
        raise ValueError(f"No token left to score: every sequence is at most skip={skip} tokens long.")
    return (sum_squares / n_tokens).sqrt().float().cpu()


def topic_sequences(
    tokenizer,
    dataset: StanceDataset,
    topic: str,
    *,
    inputs: Inputs = "question",
    split: str = "train",
    max_items: int | None = None,
) -> list[list[int]]:
    """Token ids PNLAC runs for one topic: each question in chat format (``inputs="question"``), or
    question + each answer (``"question_answers"``). Uses the train split: never the eval items."""
    sequences = []
    for item in dataset.select(topics=[topic], split=split, max_items=max_items).items:
        prompt = encode_prompt(tokenizer, item.question)
        if inputs == "question":
            sequences.append(prompt)
        else:
            sequences += [
                prompt + encode_text(tokenizer, item.answer(side), prompt_start=False) for side in ("left", "right")
            ]
    if not sequences:
        raise ValueError(f"No {split} items for topic '{topic}' in {dataset.source}.")
    return sequences


def normalize_scores(scores: Scores, method: Normalization = "none") -> Scores:
    """``none`` keeps raw RMS scores (which favour late layers); ``layer_z`` z-scores each layer."""
    if method == "none":
        return scores
    mean = scores.mean(dim=1, keepdim=True)
    std = scores.std(dim=1, keepdim=True).clamp_min(1e-12)
    return (scores - mean) / std


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
    union = len(a | b)
    return len(a & b) / union if union else 1.0


@dataclass
class Localization:
    """PNLAC result: per-topic scores, top sets, general and topic-specific neurons."""

    scores: dict[str, Scores]  # normalized as configured
    top: dict[str, NeuronSet]
    general: NeuronSet
    specific: dict[str, NeuronSet]
    config: dict = field(default_factory=dict)

    def general_ranking(self) -> Tensor:
        """General neurons as ``[k, 2]`` (layer, index) rows, highest mean score first."""
        mean = torch.stack(list(self.scores.values())).mean(dim=0)
        pairs = torch.nonzero(self.general.mask)
        order = torch.argsort(mean[self.general.mask], descending=True, stable=True)
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
        topics = summary["topics"]
        values = [summary["jaccard"][a][b] for i, a in enumerate(topics) for b in topics[i + 1 :]]
        if values:
            lines.append(
                f"Jaccard between topics' top sets: min {min(values):.2f}, "
                f"mean {sum(values) / len(values):.2f}, max {max(values):.2f}"
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
    top: dict[str, NeuronSet], min_topics: int | None = None
) -> tuple[NeuronSet, dict[str, NeuronSet]]:
    """General = in the top set of at least ``min_topics`` topics (default: all); specific = the rest."""
    sets = list(top.values())
    needed = len(sets) if min_topics is None else min_topics
    if not 1 <= needed <= len(sets):
        raise ValueError(f"min_topics must be between 1 and {len(sets)}, got {min_topics}.")
    votes = torch.stack([s.mask for s in sets]).sum(dim=0)
    general = NeuronSet(votes >= needed, model_name=sets[0].model_name, provenance={"min_topics": needed})
    return general, {topic: s - general for topic, s in top.items()}


def shared_prefix_length(sequences: Sequence[Sequence[int]]) -> int:
    """Number of leading tokens every sequence shares (the chat template's system prompt and turn
    markers): identical in every topic, so activation changes there are not topic-related."""
    if not sequences:
        return 0
    first = sequences[0]
    length = min(len(s) for s in sequences)
    for i in range(length):
        if any(s[i] != first[i] for s in sequences):
            return i
    return length


def localize(
    base,
    finetuned,
    dataset: StanceDataset,
    config: LocalizeConfig = LocalizeConfig(),
    *,
    topics: Sequence[str] | None = None,
    progress: bool = True,
) -> Localization:
    """PNLAC on every topic of ``dataset`` (train split) and the general / specific split."""
    chosen = list(topics) if topics is not None else dataset.topics
    scores, top = {}, {}
    model_name = getattr(finetuned.cfg, "model_name", None)
    per_topic = {
        t: topic_sequences(base.tokenizer, dataset, t, inputs=config.inputs, max_items=config.max_items) for t in chosen
    }
    skip = shared_prefix_length([s for seqs in per_topic.values() for s in seqs]) if config.skip_shared_prefix else 0
    for topic in tqdm(chosen, desc="PNLAC topics", disable=not progress):
        raw = contrast_scores(
            base, finetuned, per_topic[topic], skip=skip, batch_size=config.batch_size, progress=progress
        )
        scores[topic] = normalize_scores(raw, config.normalize)
        provenance = {"topic": topic, "top_k": config.top_k}
        top[topic] = top_percent(scores[topic], config.top_k, model_name=model_name, provenance=provenance)
    general, specific = split_general_specific(top, config.min_topics)
    recorded = {**asdict(config), "skipped_tokens": skip, "data": dataset.source, "model": model_name}
    return Localization(scores, top, general, specific, recorded)
