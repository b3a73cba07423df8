"""Neurons: where an MLP neuron lives in a model, and ``NeuronSet``, a set of them.

A neuron is one MLP hidden unit ``(layer, index)``; its activation is the input of the MLP's output
projection, TransformerLens ``blocks.{L}.mlp.hook_post``. Every hook name used in polineurons comes
from this module (the residual stream's ``blocks.{L}.hook_resid_post`` too).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch
from jaxtyping import Bool, Int
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from polineurons.errors import MissingFileError, UserError
from polineurons.io import atomic_path, read_json, write_json

MLP_POST_HOOK = "blocks.{layer}.mlp.hook_post"


def mlp_post_hook_name(layer: int) -> str:
    """Hook whose tensor is the neuron activations of ``layer``: shape ``[batch, pos, d_mlp]``."""
    return MLP_POST_HOOK.format(layer=layer)


RESID_POST_HOOK = "blocks.{layer}.hook_resid_post"


def resid_post_hook_name(layer: int) -> str:
    """Hook whose tensor is the residual stream after block ``layer``: shape ``[batch, pos, d_model]``."""
    return RESID_POST_HOOK.format(layer=layer)


def model_shape(model) -> tuple[int, int]:
    """``(n_layers, d_mlp)`` of a TransformerBridge."""
    return int(model.cfg.n_layers), int(model.cfg.d_mlp)


def neuron_parameters(model, layer: int) -> list[tuple[str, nn.Parameter, int]]:
    """The MLP parameters of ``layer`` that belong to individual neurons.

    Returns ``(name, parameter, neuron_dim)``: slicing ``parameter`` along ``neuron_dim`` at index
    ``i`` gives neuron ``i``'s input weights (gate/up rows, their biases) or output weights (the
    down projection's column).
    """
    mlp = model.blocks[layer].mlp
    found = []
    for role in ("gate", "in", "out"):
        bridge = getattr(mlp, role, None)
        if bridge is None:
            continue
        linear = getattr(bridge, "original_component", bridge)
        is_conv1d = type(linear).__name__ == "Conv1D"  # GPT-2 style: weight is [in, out]
        reads_neurons = role == "out"
        weight_dim = (0 if reads_neurons else 1) if is_conv1d else (1 if reads_neurons else 0)
        found.append((f"blocks.{layer}.mlp.{role}.weight", linear.weight, weight_dim))
        bias = getattr(linear, "bias", None)
        if bias is not None and not reads_neurons:
            found.append((f"blocks.{layer}.mlp.{role}.bias", bias, 0))
    if not found:
        raise ValueError(f"Layer {layer}'s MLP exposes no gate/in/out projections through the bridge.")
    return found


class NeuronSetMismatchError(UserError, ValueError):
    """A NeuronSet does not fit a model (layer count or MLP width), or two sets do not fit each other."""


class ControlDrawError(UserError, ValueError):
    """A random control set cannot be drawn: too few neurons are left outside the excluded ones."""


@dataclass(frozen=True, eq=False)
class NeuronSet:
    """A set of MLP neurons of a model with ``n_layers`` layers of ``d_mlp`` neurons.

    Stored as a boolean mask; :attr:`by_layer` gives the ``layer -> sorted indices`` view. Supports
    ``|``, ``&``, ``-``, ``len``, ``in`` and iteration over ``(layer, index)`` pairs in order.
    """

    mask: Bool[Tensor, "n_layers d_mlp"]
    model_name: str | None = None
    provenance: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.mask.dtype != torch.bool or self.mask.ndim != 2:
            raise TypeError("NeuronSet.mask must be a 2-D bool tensor [n_layers, d_mlp].")
        # Own a CPU copy so callers cannot mutate the set through their tensor.
        object.__setattr__(self, "mask", self.mask.detach().to("cpu", copy=True))

    # ---- construction -------------------------------------------------------------------------
    @classmethod
    def empty(cls, n_layers: int, d_mlp: int, **meta) -> NeuronSet:
        return cls(torch.zeros(n_layers, d_mlp, dtype=torch.bool), **meta)

    @classmethod
    def full(cls, n_layers: int, d_mlp: int, **meta) -> NeuronSet:
        return cls(torch.ones(n_layers, d_mlp, dtype=torch.bool), **meta)

    @classmethod
    def for_model(cls, model, *, full: bool = False, **meta) -> NeuronSet:
        """Empty (or full) set shaped for ``model``."""
        n_layers, d_mlp = model_shape(model)
        meta.setdefault("model_name", getattr(model.cfg, "model_name", None))
        return (cls.full if full else cls.empty)(n_layers, d_mlp, **meta)

    @classmethod
    def from_indices(cls, indices: dict[int, Iterable[int] | Tensor], n_layers: int, d_mlp: int, **meta) -> NeuronSet:
        """From ``{layer: indices}``; duplicates are merged, out-of-range entries raise."""
        mask = torch.zeros(n_layers, d_mlp, dtype=torch.bool)
        for layer, idx in indices.items():
            layer = int(layer)
            if not 0 <= layer < n_layers:
                raise NeuronSetMismatchError(f"Layer {layer} is out of range: the model has {n_layers} layers.")
            idx = torch.as_tensor(idx, dtype=torch.long).reshape(-1)
            if idx.numel() and (idx.min() < 0 or idx.max() >= d_mlp):
                bad = idx[(idx < 0) | (idx >= d_mlp)][0].item()
                raise NeuronSetMismatchError(
                    f"Neuron index {bad} in layer {layer} is out of range: layers have {d_mlp} neurons."
                )
            mask[layer, idx] = True
        return cls(mask, **meta)

    @classmethod
    def from_pairs(cls, pairs: Iterable[tuple[int, int]], n_layers: int, d_mlp: int, **meta) -> NeuronSet:
        by_layer: dict[int, list[int]] = {}
        for layer, index in pairs:
            by_layer.setdefault(int(layer), []).append(int(index))
        return cls.from_indices(by_layer, n_layers, d_mlp, **meta)

    # ---- views --------------------------------------------------------------------------------
    @property
    def n_layers(self) -> int:
        return self.mask.shape[0]

    @property
    def d_mlp(self) -> int:
        return self.mask.shape[1]

    @property
    def n_total(self) -> int:
        """Number of MLP neurons in the model."""
        return self.mask.numel()

    @property
    def by_layer(self) -> dict[int, Int[Tensor, " k"]]:
        """``layer -> sorted unique indices`` for every layer holding at least one neuron."""
        return {layer: torch.nonzero(row).flatten() for layer, row in enumerate(self.mask) if row.any()}

    @property
    def layers(self) -> list[int]:
        return [layer for layer in range(self.n_layers) if self.mask[layer].any()]

    def layer_counts(self) -> list[int]:
        """Histogram: number of neurons in each layer (length ``n_layers``)."""
        return self.mask.sum(dim=1).tolist()

    @property
    def fraction(self) -> float:
        """Share of all MLP neurons of the model that are in the set."""
        return len(self) / self.n_total

    def __len__(self) -> int:
        return int(self.mask.sum())

    def __bool__(self) -> bool:
        return bool(self.mask.any())

    def __iter__(self) -> Iterator[tuple[int, int]]:
        yield from (tuple(pair) for pair in torch.nonzero(self.mask).tolist())

    def __contains__(self, neuron: tuple[int, int]) -> bool:
        layer, index = neuron
        return 0 <= layer < self.n_layers and 0 <= index < self.d_mlp and bool(self.mask[layer, index])

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, NeuronSet) and self.mask.shape == other.mask.shape and torch.equal(self.mask, other.mask)
        )

    def __repr__(self) -> str:
        return (
            f"NeuronSet({len(self)} of {self.n_total} neurons ({self.fraction:.2%}), "
            f"{len(self.layers)} layers, model={self.model_name!r})"
        )

    # ---- algebra ------------------------------------------------------------------------------
    def _combine(self, other: NeuronSet, op) -> NeuronSet:
        if not isinstance(other, NeuronSet):
            return NotImplemented
        if self.mask.shape != other.mask.shape:
            raise NeuronSetMismatchError(
                f"Cannot combine NeuronSets of shapes {tuple(self.mask.shape)} and {tuple(other.mask.shape)}."
            )
        return NeuronSet(op(self.mask, other.mask), model_name=self.model_name or other.model_name)

    def __or__(self, other: NeuronSet) -> NeuronSet:
        return self._combine(other, torch.logical_or)

    def __and__(self, other: NeuronSet) -> NeuronSet:
        return self._combine(other, torch.logical_and)

    def __sub__(self, other: NeuronSet) -> NeuronSet:
        return self._combine(other, lambda a, b: a & ~b)

    union, intersection, difference = __or__, __and__, __sub__

    def with_provenance(self, **provenance) -> NeuronSet:
        return NeuronSet(self.mask, model_name=self.model_name, provenance={**self.provenance, **provenance})

    # ---- checks and controls ------------------------------------------------------------------
    def validate_for(self, model) -> None:
        """Raise :class:`NeuronSetMismatchError` unless the set fits ``model``'s layers and MLP width."""
        n_layers, d_mlp = model_shape(model)
        if (n_layers, d_mlp) != (self.n_layers, self.d_mlp):
            raise NeuronSetMismatchError(
                f"NeuronSet is shaped for {self.n_layers} layers x {self.d_mlp} neurons"
                f"{f' ({self.model_name})' if self.model_name else ''}, but the model "
                f"'{getattr(model.cfg, 'model_name', '?')}' has {n_layers} layers x {d_mlp} neurons."
            )

    def random_matched(self, seed: int, *, exclude: NeuronSet | None = None) -> NeuronSet:
        """A uniformly random set with the same number of neurons in every layer (a control).

        ``exclude`` neurons are never drawn (e.g. the set itself, for a disjoint control).
        """
        generator = torch.Generator().manual_seed(seed)
        mask = torch.zeros_like(self.mask)
        for layer, count in enumerate(self.layer_counts()):
            if not count:
                continue
            allowed = torch.ones(self.d_mlp, dtype=torch.bool)
            if exclude is not None:
                allowed &= ~exclude.mask[layer]
            candidates = torch.nonzero(allowed).flatten()
            if len(candidates) < count:
                raise ControlDrawError(
                    f"Layer {layer}: cannot draw a control of {count} neurons from the {len(candidates)} of "
                    f"{self.d_mlp} outside the excluded set; a smaller neuron set (lower top_k) leaves room."
                )
            chosen = candidates[torch.randperm(len(candidates), generator=generator)[:count]]
            mask[layer, chosen] = True
        return NeuronSet(mask, model_name=self.model_name, provenance={"random_matched_seed": seed})

    # ---- files --------------------------------------------------------------------------------
    def save(self, path: str | Path) -> Path:
        """Write ``<path>.safetensors`` (one index tensor per layer) and a ``<path>.json`` sidecar.

        Returns the ``.safetensors`` path. Both files are written atomically.
        """
        tensors_path, sidecar_path = _file_pair(path)
        tensors = {f"layer.{layer}": idx.to(torch.int64).contiguous() for layer, idx in self.by_layer.items()}
        sidecar = {
            "format": "polineurons.NeuronSet/1",
            "model_name": self.model_name,
            "n_layers": self.n_layers,
            "d_mlp": self.d_mlp,
            "size": len(self),
            "fraction": self.fraction,
            "layer_counts": self.layer_counts(),
            "provenance": self.provenance,
        }
        tensors_path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(tensors_path) as tmp:
            save_file(tensors, str(tmp), metadata={"n_layers": str(self.n_layers), "d_mlp": str(self.d_mlp)})
        write_json(sidecar_path, sidecar)
        return tensors_path

    @classmethod
    def load(cls, path: str | Path) -> NeuronSet:
        """Read a set written by :meth:`save` (give either file, or the common stem)."""
        tensors_path, sidecar_path = _file_pair(path)
        for required in (tensors_path, sidecar_path):
            if not required.is_file():
                raise MissingFileError(f"NeuronSet file missing: {required}")
        sidecar = read_json(sidecar_path)
        tensors = load_file(str(tensors_path))
        indices = {}
        for key, value in tensors.items():
            if not key.startswith("layer."):
                raise ValueError(f"{tensors_path}: unexpected tensor '{key}' (expected 'layer.<L>').")
            indices[int(key.split(".", 1)[1])] = value
        neurons = cls.from_indices(
            indices,
            sidecar["n_layers"],
            sidecar["d_mlp"],
            model_name=sidecar.get("model_name"),
            provenance=sidecar.get("provenance") or {},
        )
        if "size" in sidecar and sidecar["size"] != len(neurons):
            raise ValueError(f"{tensors_path}: holds {len(neurons)} neurons, its sidecar says {sidecar['size']}.")
        return neurons


def _file_pair(path: str | Path) -> tuple[Path, Path]:
    path = Path(path)
    stem = path.with_suffix("") if path.suffix in {".safetensors", ".json"} else path
    return stem.with_name(stem.name + ".safetensors"), stem.with_name(stem.name + ".json")
