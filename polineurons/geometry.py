"""Where the spill-over's change sits against the target's, in the residual stream: why ablating a
direction during training cuts the spill-over only at the target's expense, or where it need not.

Two models are compared on the same texts — a right- and a left-leaning fine-tune (``flip``), or a
fine-tune and its base (``pca``). At each layer the per-token differences of their residual streams on
the other topics' training texts (the spill-over's change) and on the target's own (the target's
change) have second moments S and T (:func:`polineurons.directions.difference_grams`), counted over
every token or the answers only, as the directions are (``direction_tokens``). For a rank k:

- ``spill_captured``: the share of the spill change in its own top-k components (low-rank: large);
- ``target_in_spill``: the share of the target's change in those same components (shared: large);
- ``spill_ablated`` / ``target_ablated``: the shares in the directions CAFT ablates (the spill's top-k
  with the target's top-k projected out, :func:`polineurons.directions.spill_basis`) — what the
  ablation removes of each change, in the finished models;
- ``cosine``: the largest cosine between the spill's and the target's top-k subspaces;
- ``chance``: the share a random k-dimensional subspace holds (k / d_model).

Static geometry of the final models only: training can route around an ablated direction, so a
direction that holds little of the target's change can still slow the target (the frontier measures that).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Literal

import torch
from jaxtyping import Float
from torch import Tensor

from polineurons.batching import per_sequence_starts
from polineurons.config import RunConfig, trial_spec
from polineurons.directions import difference_grams, spill_basis, top_components
from polineurons.errors import UserError
from polineurons.io import write_json
from polineurons.methods import Ingredients
from polineurons.mitigate import comparison_ingredients
from polineurons.study import Study
from polineurons.versions import library_versions

__all__ = ["GeometryConfig", "LayerGeometry", "geometry_folder", "geometry_text", "layer_geometry", "spill_geometry"]

Gram = Float[Tensor, "d_model d_model"]


@dataclass(frozen=True)
class GeometryConfig:
    """Which two models are compared, at which layers, at which ranks."""

    kind: Literal["flip", "pca"] = "flip"
    """flip: the vanilla fine-tune against the same toward the other leaning; pca: against its base."""
    layers: tuple[int, ...] = ()
    """Layers measured (empty: every layer)."""
    ranks: tuple[int, ...] = (1, 2, 4)
    """Ranks k of the subspaces compared."""

    def __post_init__(self) -> None:
        if self.kind not in ("flip", "pca"):
            raise ValueError(f"kind must be 'flip' or 'pca', got {self.kind!r}.")
        if not self.ranks or min(self.ranks) < 1 or min(self.layers, default=0) < 0:
            raise ValueError(f"ranks must be >= 1 (at least one) and layers >= 0, got {self.ranks}, {self.layers}.")


@dataclass(frozen=True)
class LayerGeometry:
    """One layer at one rank: how the spill-over's and the target's changes share the residual stream."""

    layer: int
    rank: int
    spill_captured: float
    """Share of the spill change (other topics' texts) in its own top-k components."""
    target_in_spill: float
    """Share of the target's change (its own texts) in the spill's top-k components."""
    spill_ablated: float
    """Share of the spill change in the ablated directions (spill's top-k ⟂ target's top-k)."""
    target_ablated: float
    """Share of the target's change in the ablated directions."""
    cosine: float
    """Largest cosine between the spill's and the target's top-k subspaces."""
    chance: float
    """Share of any change that a random k-dimensional subspace holds on average (k / d_model)."""
    spill_rms: float
    """Root mean square per token of the spill change."""
    target_rms: float
    """Root mean square per token of the target's change."""

    def to_dict(self) -> dict:
        return asdict(self)


def _share(gram: Gram, basis: Float[Tensor, "d_model k"]) -> float:
    """tr(Bᵀ G B) / tr(G): the share of a change's second moment inside an orthonormal basis."""
    basis = basis.double()
    total = float(gram.trace())
    return float((basis.T @ gram @ basis).trace()) / total if total > 0 else 0.0


def layer_geometry(
    layer: int, rank: int, spill: Gram, target: Gram, spill_tokens: int, target_tokens: int
) -> LayerGeometry:
    """The geometry at one layer and rank from the two second moments (and the token counts they sum over)."""
    if rank < 1 or rank > spill.shape[0]:
        raise ValueError(f"rank must be in 1..{spill.shape[0]}, got {rank}.")
    spill_top, target_top = top_components(spill, rank), top_components(target, rank)
    try:
        ablated = spill_basis(spill, target, rank)
    except ValueError:  # the spill's components lie within the target's: nothing is left to ablate
        ablated = torch.zeros(spill.shape[0], 0)
    cosine = float(torch.linalg.svdvals(spill_top.double().T @ target_top.double()).max())
    return LayerGeometry(
        layer=layer,
        rank=rank,
        spill_captured=_share(spill, spill_top),
        target_in_spill=_share(target, spill_top),
        spill_ablated=_share(spill, ablated),
        target_ablated=_share(target, ablated),
        cosine=cosine,
        chance=rank / spill.shape[0],
        spill_rms=(float(spill.trace()) / max(spill_tokens, 1)) ** 0.5,
        target_rms=(float(target.trace()) / max(target_tokens, 1)) ** 0.5,
    )


def spill_geometry(
    one,
    other,
    others: Sequence[Sequence[int]],
    own: Sequence[Sequence[int]],
    layers: Sequence[int],
    ranks: Sequence[int] = (1, 2, 4),
    *,
    starts: tuple[Sequence[int] | int, Sequence[int] | int] = (0, 0),
    batch_size: int = 8,
    progress: bool = False,
) -> list[LayerGeometry]:
    """:class:`LayerGeometry` per layer and rank for two models (``one``, ``other``) on the other topics'
    texts ``others`` and the target's own ``own`` (token ids; each counted from its ``starts``, as in
    :func:`polineurons.directions.spill_directions`).

    Example::

        rows = spill_geometry(right_tuned, left_tuned, other_texts, target_texts, layers=[6, 12])
        print(geometry_text(rows))
    """
    if not others or not own:
        raise ValueError("spill_geometry needs texts of the other topics and of the target.")
    options = {"batch_size": batch_size, "progress": progress}
    pairs = ((others, starts[0]), (own, starts[1]))
    spill, target = (difference_grams(one, other, texts, layers, starts=first, **options) for texts, first in pairs)
    counts = [sum(len(s) for s in texts) - sum(per_sequence_starts(texts, first)) for texts, first in pairs]
    return [layer_geometry(layer, k, spill[layer], target[layer], *counts) for layer in layers for k in ranks]


def geometry_text(rows: Sequence[LayerGeometry | Mapping]) -> str:
    """A plain-text table, one line per layer and rank (rows as measured or as stored)."""
    rows = [r if isinstance(r, LayerGeometry) else LayerGeometry(**r) for r in rows]
    head = "layer  k  spill in own top-k  target there  spill ablated  target ablated  cosine  chance  rms spill/target"
    lines = [head]
    for r in rows:
        lines.append(
            f"{r.layer:5d} {r.rank:2d}  {r.spill_captured:17.1%}  {r.target_in_spill:12.1%}  {r.spill_ablated:13.1%}"
            f"  {r.target_ablated:14.1%}  {r.cosine:6.2f}  {r.chance:6.2%}  {r.spill_rms:.3f} / {r.target_rms:.3f}"
        )
    return "\n".join(lines)


def ingredient_geometry(
    ingredients: Ingredients, config: GeometryConfig = GeometryConfig(), *, progress: bool = False
) -> list[LayerGeometry]:
    """:func:`spill_geometry` of a comparison's models and texts: ``flip`` (its first seed's vanilla
    fine-tune against the same toward the other leaning) or ``pca`` (against the base model)."""
    n_layers = int(ingredients.base.cfg.n_layers)
    layers = list(config.layers) or list(range(n_layers))
    if max(layers) >= n_layers:
        raise UserError(f"The model has {n_layers} layers (0..{n_layers - 1}); got layers {layers}.")
    reference = ingredients.opposite_model() if config.kind == "flip" else ingredients.base
    (others, other_starts), (own, own_starts) = ingredients.direction_texts(others=True), ingredients.direction_texts()
    options = {"starts": (other_starts, own_starts), "progress": progress}
    return spill_geometry(ingredients.vanilla_model(), reference, others, own, layers, config.ranks, **options)


def geometry_folder(
    out: str | os.PathLike,
    config: RunConfig,
    geometry: GeometryConfig = GeometryConfig(),
    *,
    device: str | None = None,
    progress: bool = True,
    echo: Callable[[str], None] = print,
) -> dict:
    """The geometry for ``config``'s target, leaning and first training seed in the study folder ``out``
    (its vanilla fine-tunes trained and kept there when missing), written to ``geometry-{kind}.json``
    and returned.

    Example::

        result = geometry_folder("runs/flip", RunConfig(), GeometryConfig("flip", layers=(6, 12)))
        print(geometry_text(result["rows"]))
    """
    with Study.open(out, device=device, progress=progress, echo=echo, dtype=config.dtype) as study:
        spec = trial_spec(config)
        ingredients = comparison_ingredients(study, spec, config.mitigate)
        rows = ingredient_geometry(ingredients, geometry, progress=progress)
        result = {
            "kind": geometry.kind,
            "target": spec.target,
            "leaning": spec.leaning,
            "seed": spec.finetune.seed,
            "model": spec.model,
            "items": config.mitigate.items,
            "direction_tokens": config.mitigate.direction_tokens,
            "rows": [r.to_dict() for r in rows],
            "versions": library_versions(),
        }
        write_json(study.root / f"geometry-{geometry.kind}.json", result)
    return result
