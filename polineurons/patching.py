"""Activation patching of neuron sets, attribution patching, and its validation against exact
per-neuron patching (``transformer_lens.patching``).

Set patching: the fine-tuned model's activations of a NeuronSet are copied into the base model on
the exact token sequences being scored (question + each answer), and stance is measured again.
Recovery per topic = (patched − base) / (fine-tuned − base).
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from typing import Literal

import numpy as np
import torch
from jaxtyping import Float
from torch import Tensor
from tqdm.auto import tqdm

from polineurons.batching import pad_id_of, sequence_batches
from polineurons.contrasts import attribution_scores, stance_metric, stance_weights
from polineurons.data.items import StanceDataset, StanceItem
from polineurons.hooks import patch_neurons, record_neurons
from polineurons.neurons import ControlDrawError, NeuronSet, mlp_post_hook_name, model_shape
from polineurons.pnlac import Localization
from polineurons.stance import ItemScore, batch_logprob_sums, item_scores_from_sums, stance_pairs
from polineurons.stats import bootstrap_ratio, spearman


@dataclass(frozen=True)
class PatchConfig:
    """Which neuron sets are patched, and on how much of the eval split."""

    max_items: int | None = None
    """Eval items per topic (None: all)."""
    max_answer_tokens: int | None = None
    """Score only the first N tokens of each answer (faster; None: all)."""
    random_seeds: int = 3
    """Random control sets: same per-layer counts as the general set, drawn outside it."""
    mean_ablation: bool = True
    """Also mean-ablate each set in the fine-tuned model (to the base model's mean activation)."""
    specific: Literal["target", "all"] = "all"
    """Topic-specific sets patched: the target topic's only, or every topic's."""
    all_neurons: bool = True
    """Also patch every MLP neuron (the upper bound)."""
    batch_size: int = 8
    """Sequences per forward."""
    attribution_sample: int = 0
    """Also check attribution patching against exact patching on N neurons (0 = skip; slow)."""

    def __post_init__(self) -> None:
        for name in ("max_items", "max_answer_tokens"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}.")
        if self.random_seeds < 0 or self.batch_size < 1 or self.attribution_sample < 0:
            raise ValueError("random_seeds and attribution_sample must be >= 0, batch_size >= 1.")
        if self.specific not in ("target", "all"):
            raise ValueError(f"specific must be 'target' or 'all', got {self.specific!r}.")


@dataclass(frozen=True)
class Recovery:
    recovery: float  # (patched − base) / (fine-tuned − base), on topic means
    ci_low: float
    ci_high: float
    patched_shift: float  # patched − base
    full_shift: float  # fine-tuned − base
    n: int

    @classmethod
    def from_dict(cls, data: Mapping) -> Recovery:
        return cls(**data)


def _check_pair(base, finetuned) -> None:
    if model_shape(base) != model_shape(finetuned):
        raise ValueError(f"Models differ in shape: {model_shape(base)} vs {model_shape(finetuned)}.")
    if base is finetuned:
        raise ValueError("base and finetuned must be two model objects (patching runs both).")


def patched_item_scores(
    base,
    finetuned,
    items: Sequence[StanceItem],
    neuron_sets: Mapping[str, NeuronSet],
    *,
    batch_size: int = 8,
    max_answer_tokens: int | None = None,
    include_unpatched: bool = True,
    ablate: Mapping[str, NeuronSet] | None = None,
    progress: bool = True,
) -> dict[str, list[ItemScore]]:
    """Stance item scores of the base model with each set patched from the fine-tuned model.

    Per batch the fine-tuned model runs once (recording every layer) and the base model once per set,
    so adding a set costs one base forward. With ``include_unpatched`` the result also holds
    ``"base"`` and ``"finetuned"`` scores from the same batches. Each ``ablate`` set is also
    mean-ablated in the fine-tuned model — its activations replaced by the base model's mean over
    every real token of these sequences — under ``"ablate:{name}"``.
    """
    _check_pair(base, finetuned)
    ablate = dict(ablate or {})
    for neurons in [*neuron_sets.values(), *ablate.values()]:
        neurons.validate_for(base)
    pairs = stance_pairs(base.tokenizer, items, max_answer_tokens=max_answer_tokens)
    batches, counts = sequence_batches(pairs, batch_size, pad_id_of(base), base.cfg.device)
    names = (["base", "finetuned"] if include_unpatched else []) + list(neuron_sets) + [f"ablate:{n}" for n in ablate]
    sums = {name: torch.zeros(len(pairs), dtype=torch.float64) for name in names}
    means = mean_activations(base, batches) if ablate else {}
    for batch in tqdm(batches, desc="patching", disable=not progress, leave=False):
        where = torch.tensor(batch.indices)
        with torch.no_grad():
            with record_neurons(finetuned) as source:
                tuned_logits = finetuned(batch.tokens, attention_mask=batch.mask)
            source = dict(source)
            if include_unpatched:
                sums["finetuned"][where] = batch_logprob_sums(tuned_logits, batch).double().cpu()
                sums["base"][where] = (
                    batch_logprob_sums(base(batch.tokens, attention_mask=batch.mask), batch).double().cpu()
                )
            del tuned_logits
            for name, neurons in neuron_sets.items():
                with patch_neurons(base, neurons, source):
                    logits = base(batch.tokens, attention_mask=batch.mask)
                sums[name][where] = batch_logprob_sums(logits, batch).double().cpu()
            constant = {layer: mean.expand(*batch.tokens.shape, -1) for layer, mean in means.items()}
            for name, neurons in ablate.items():
                with patch_neurons(finetuned, neurons, constant):
                    logits = finetuned(batch.tokens, attention_mask=batch.mask)
                sums[f"ablate:{name}"][where] = batch_logprob_sums(logits, batch).double().cpu()
    return {name: item_scores_from_sums(items, sums[name], counts) for name in names}


def mean_activations(model, batches) -> dict[int, Float[Tensor, " d_mlp"]]:
    """``layer -> mean activation`` of every neuron over every real token of ``batches``."""
    total: dict[int, Tensor] = {}
    n = 0
    for batch in batches:
        weight = batch.mask[..., None].double()
        with torch.no_grad(), record_neurons(model) as recorded:
            model(batch.tokens, attention_mask=batch.mask)
        for layer, acts in recorded.items():
            total[layer] = total.get(layer, 0) + (acts.double() * weight).sum(dim=(0, 1))
        n += int(batch.mask.sum())
    return {layer: (value / n).float() for layer, value in total.items()}


CTG = "ctg"  # the pooled non-target topics, a column of the recovery table beside the topics


def recovery_table(
    scores: Mapping[str, Sequence[ItemScore]], *, target: str | None = None, n_boot: int = 2000, seed: int = 0
) -> dict[str, dict[str, Recovery]]:
    """``set -> topic -> Recovery`` from :func:`patched_item_scores` output (needs ``base`` and
    ``finetuned``); with ``target``, also ``"ctg"``: every non-target topic's items pooled.

    A patched set's recovery is (patched − base) / (fine-tuned − base): the share of the fine-tune's
    shift it brings into the base model. A mean-ablated set's (``"ablate:…"``) is (fine-tuned −
    ablated) / (fine-tuned − base): the share it takes away from the fine-tuned model. The CI
    resamples items (paired across the conditions)."""
    base = scores["base"]
    tuned = scores["finetuned"]
    topics = list(dict.fromkeys(item.topic for item in base))
    groups = {topic: [i for i, item in enumerate(base) if item.topic == topic] for topic in topics}
    if target is not None:
        if target not in topics or CTG in topics:
            raise ValueError(f"target {target!r} must be one of the topics {topics}, none of them named {CTG!r}.")
        groups[CTG] = [i for i, item in enumerate(base) if item.topic != target]
    rng = np.random.default_rng(seed)  # one stream for the whole table
    table: dict[str, dict[str, Recovery]] = {}
    for name, changed in scores.items():
        if name in ("base", "finetuned"):
            continue
        table[name] = {}
        for topic, idx in groups.items():
            b = np.array([base[i].score for i in idx])
            t = np.array([tuned[i].score for i in idx])
            c = np.array([changed[i].score for i in idx])
            part = t - c if name.startswith("ablate:") else c - b
            ratio = bootstrap_ratio(part, t - b, n_boot=n_boot, rng=rng)
            table[name][topic] = Recovery(
                ratio.value, ratio.ci_low, ratio.ci_high, float(part.mean()), float((t - b).mean()), len(idx)
            )
    return table


def recovery_to_dict(table: Mapping[str, Mapping[str, Recovery]]) -> dict:
    return {name: {topic: asdict(r) for topic, r in rows.items()} for name, rows in table.items()}


def recovery_from_dict(data: Mapping) -> dict[str, dict[str, Recovery]]:
    return {name: {topic: Recovery.from_dict(row) for topic, row in rows.items()} for name, rows in data.items()}


def disjoint_controls(neurons: NeuronSet, count: int) -> list[NeuronSet]:
    """``count`` random sets (seeds 0, 1, ...) with the per-layer counts of ``neurons`` and none of its
    neurons; :class:`~polineurons.neurons.ControlDrawError` where a layer has too few others."""
    return [neurons.random_matched(seed, exclude=neurons) for seed in range(count)]


def patch_sets(
    located: Localization, model, config: PatchConfig = PatchConfig(), *, target: str | None = None
) -> dict[str, NeuronSet]:
    """The sets a patching experiment compares: ``general``, ``specific:{topic}`` (the target's or
    every topic's), ``random:{seed}`` (layer-matched to the general set and disjoint from it) and
    ``all``."""
    if config.specific == "target" and target is None:
        raise ValueError("specific='target' needs the target topic.")
    general = located.general
    sets: dict[str, NeuronSet] = {"general": general}
    specific = located.specific if config.specific == "all" else {target: located.specific[target]}
    sets.update({f"specific:{t}": s for t, s in specific.items()})
    sets.update(
        {f"random:{seed}": control for seed, control in enumerate(disjoint_controls(general, config.random_seeds))}
    )
    if config.all_neurons:
        sets["all"] = NeuronSet.for_model(model, full=True)
    return sets


def patch_experiment(
    base,
    finetuned,
    dataset: StanceDataset,
    located: Localization,
    config: PatchConfig = PatchConfig(),
    *,
    target: str | None = None,
    progress: bool = True,
) -> dict:
    """Patch every set of :func:`patch_sets` on the eval split (and mean-ablate each but ``all``).
    Returns ``{"target", "set_sizes", "control_overlap", "recovery"}`` (recovery as
    :func:`recovery_to_dict`; ``control_overlap``: each control's neurons in the general set, 0 by
    construction), plus ``"attribution_check"`` when ``config.attribution_sample`` asks for one.

    Example::

        table = patch_experiment(base, tuned, load_data(), located, PatchConfig(max_items=8), target="immigration")
        print(recovery_text(table))
    """
    try:
        sets, control_error = patch_sets(located, base, config, target=target), None
    except ControlDrawError as error:  # e.g. a general set that fills most of a layer: say so, patch the rest
        sets, control_error = patch_sets(located, base, replace(config, random_seeds=0), target=target), str(error)
    items = dataset.select(split="eval", max_items=config.max_items).items
    ablate = {n: s for n, s in sets.items() if n != "all"} if config.mean_ablation else None
    scores = patched_item_scores(
        base,
        finetuned,
        items,
        sets,
        batch_size=config.batch_size,
        max_answer_tokens=config.max_answer_tokens,
        ablate=ablate,
        progress=progress,
    )
    result = {
        "target": target,
        "set_sizes": {n: len(s) for n, s in sets.items()},
        "control_overlap": {n: len(s & located.general) for n, s in sets.items() if n.startswith("random:")},
        "recovery": recovery_to_dict(recovery_table(scores, target=target)),
        "control_error": control_error,
    }
    if config.attribution_sample:
        result["attribution_check"] = sample_attribution_check(base, finetuned, items, config.attribution_sample)
    return result


def recovery_text(result: Mapping) -> str:
    """Plain-text table (set x topic recovery; ``ablate:`` rows: the share mean-ablation removes) of a
    :func:`patch_experiment` result."""
    topics = list(next(iter(result["recovery"].values())))
    lines = [f"{'set':<32}{'size':>7}  " + " ".join(f"{t[:10]:>10}" for t in topics)]
    for name, rows in result["recovery"].items():
        size = result["set_sizes"][name.removeprefix("ablate:")]
        lines.append(f"{name:<32}{size:>7}  " + " ".join(f"{rows[t]['recovery']:>+10.2f}" for t in topics))
    if result.get("control_error"):
        lines.append(f"no disjoint random control: {result['control_error']}")
    if check := result.get("attribution_check"):
        lines.append(
            f"attribution vs exact patching on {len(check['neurons'])} neurons: Spearman {check['spearman']:.3f}, "
            f"estimated speed-up for all neurons {check['speedup_all_neurons']:.0f}x"
        )
    return "\n".join(lines)


# ---- attribution patching -------------------------------------------------------------------------


@dataclass(frozen=True)
class AttributionCheck:
    neurons: list[tuple[int, int]]
    attribution: list[float]
    exact: list[float]
    spearman: float
    seconds_attribution: float
    seconds_exact_per_neuron: float

    def speedup(self, n_neurons: int) -> float:
        """Exact patching of ``n_neurons`` neurons (extrapolated from the sample) / attribution time."""
        return self.seconds_exact_per_neuron * n_neurons / self.seconds_attribution

    def to_dict(self) -> dict:
        return asdict(self)


def exact_neuron_effects(
    base,
    finetuned,
    items: Sequence[StanceItem],
    neurons: Sequence[tuple[int, int]],
    *,
    max_answer_tokens: int | None = None,
) -> list[float]:
    """Exact effect on the summed stance score of patching each single neuron (all positions) from
    the fine-tuned model into the base, computed with ``transformer_lens.patching``.

    All items go in one right-padded batch (TransformerLens' patching runs no attention mask; with
    right padding, causal attention never reads the pads)."""
    import pandas as pd
    from transformer_lens.patching import generic_activation_patch

    _check_pair(base, finetuned)
    pairs = stance_pairs(base.tokenizer, items, max_answer_tokens=max_answer_tokens)
    batches, counts = sequence_batches(pairs, len(pairs), pad_id_of(base), base.cfg.device)
    batch = batches[0]
    weights = stance_weights(batch, counts, base.cfg.device)
    layers = sorted({layer for layer, _ in neurons})
    with torch.no_grad(), record_neurons(finetuned, layers) as tuned:
        finetuned(batch.tokens, attention_mask=batch.mask)
    clean_cache = {mlp_post_hook_name(layer): tuned[layer] for layer in layers}

    def setter(corrupted, index, clean):
        corrupted[..., index[1]] = clean[..., index[1]]
        return corrupted

    def metric(logits):
        return stance_metric(logits, batch, weights)

    with torch.no_grad():
        baseline = metric(base(batch.tokens)).item()
        effects = generic_activation_patch(
            base,
            batch.tokens,
            clean_cache,
            metric,
            setter,
            "post",
            index_df=pd.DataFrame(list(neurons), columns=["layer", "neuron"]),
        )
    return [float(v) - baseline for v in effects.tolist()]


def check_attribution(
    base,
    finetuned,
    items: Sequence[StanceItem],
    neurons: Sequence[tuple[int, int]],
    *,
    max_answer_tokens: int | None = None,
) -> AttributionCheck:
    """Attribution scores vs exact per-neuron patching on a sample of neurons, with timings."""
    start = time.perf_counter()
    scores = attribution_scores(
        base, finetuned, items, batch_size=len(items) * 2, max_answer_tokens=max_answer_tokens, progress=False
    )
    attribution_seconds = time.perf_counter() - start
    start = time.perf_counter()
    exact = exact_neuron_effects(base, finetuned, items, neurons, max_answer_tokens=max_answer_tokens)
    exact_seconds = (time.perf_counter() - start) / max(len(neurons), 1)
    approx = [float(scores[layer, index]) for layer, index in neurons]
    return AttributionCheck(
        list(map(tuple, neurons)), approx, exact, spearman(approx, exact), attribution_seconds, exact_seconds
    )


def sample_attribution_check(base, finetuned, items: Sequence[StanceItem], sample: int, *, seed: int = 0) -> dict:
    """:func:`check_attribution` on ``sample`` neurons: half with the largest attribution scores, half
    drawn uniformly; on a sixth of ``items`` (at least two), since exact patching is slow."""
    few = list(items)[: max(2, len(items) // 6)]
    scores = attribution_scores(base, finetuned, few, progress=False)
    n_layers, d_mlp = scores.shape
    top = torch.argsort(scores.abs().flatten(), descending=True)[: sample // 2].tolist()
    generator = torch.Generator().manual_seed(seed)
    taken = set(top)
    rest = [i for i in torch.randperm(n_layers * d_mlp, generator=generator).tolist() if i not in taken][
        : sample - len(top)
    ]
    check = check_attribution(base, finetuned, few, [divmod(i, d_mlp) for i in top + rest])
    return {**check.to_dict(), "n_items": len(few), "speedup_all_neurons": check.speedup(n_layers * d_mlp)}
