"""LoRA adapters on a ``TransformerBridge`` (peft): attach, switch off, fold in, take out, save, reload.

The bridge wraps each Hugging Face ``Linear``; peft injects its LoRA layer at the ``Linear`` inside
that wrapper (``…q_proj._original_component``), so every hook of the bridge sees the adapted
projection. The adapter's factors are float32 whatever the model's dtype (their optimizer needs the
precision; the frozen base stays in bf16).

On disk an adapter folder is a standard PEFT folder (``adapter_config.json`` and
``adapter_model.safetensors`` named as on the plain Hugging Face model), so peft reads what
polineurons writes and polineurons reads PEFT folders written elsewhere (their ``target_modules`` a
list of module names). ``base_model_name_or_path`` names the base model as :func:`load_model` takes it.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import sys
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path

from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from polineurons.errors import MissingDependencyError, UserError
from polineurons.io import atomic_dir

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
MLP_PROJECTIONS = ("gate_proj", "up_proj", "down_proj")
ATTENTION_PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj")
_WRAPPED = "._original_component"  # the bridge's path to the Hugging Face module it wraps
_PEFT_PREFIX = "base_model.model."  # peft's key prefix in a saved adapter
_NAME = "default"


class AdapterError(UserError, ValueError):
    """An adapter folder or an adapter operation that cannot be honoured."""


def _peft():
    try:
        import peft
    except ImportError:
        raise MissingDependencyError("LoRA needs peft: pip install 'polineurons[lora]' (or peft).") from None
    return peft


def _target_regex(targets: Sequence[str]) -> str:
    names = "|".join(re.escape(t) for t in targets)
    return rf".*\.({names}){re.escape(_WRAPPED)}"


def lora_layers(model) -> dict[str, nn.Module]:
    """The model's LoRA layers by module name (empty when it has no adapter)."""
    if "peft" not in sys.modules:  # no adapter can exist before peft is imported
        return {}
    from peft.tuners.lora import LoraLayer

    return {name: module for name, module in model.original_model.named_modules() if isinstance(module, LoraLayer)}


def has_adapter(model) -> bool:
    """Whether LoRA layers are attached to ``model``."""
    return bool(lora_layers(model))


def attach_lora(
    model, *, r: int = 16, alpha: int = 32, dropout: float = 0.0, targets: Sequence[str] = ATTENTION_PROJECTIONS
) -> list[nn.Parameter]:
    """Attach a fresh LoRA adapter (``lora_B`` zero: the model is unchanged until it trains) to the
    ``targets`` projections of every layer; freeze every other weight. Returns the adapter's
    (trainable, float32) parameters."""
    peft = _peft()
    if has_adapter(model):
        raise AdapterError("The model already carries an adapter; remove_adapter(model) first.")
    config = peft.LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=_target_regex(targets))
    return _inject(model, config)


def _inject(model, config) -> list[nn.Parameter]:
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    try:
        _peft().inject_adapter_in_model(config, model.original_model, adapter_name=_NAME)
    except ValueError as error:  # peft: no module matched the targets
        raise AdapterError(f"LoRA found no projection to adapt ({error}).") from error
    trainable = []
    for name, parameter in model.original_model.named_parameters():
        if ".lora_" in name:
            parameter.data = parameter.data.float()
            parameter.requires_grad_(True)
            trainable.append(parameter)
    return trainable


@contextmanager
def adapter_disabled(model) -> Iterator[None]:
    """Inside the block, the model computes as its base (adapter switched off); restored on exit."""
    layers = lora_layers(model).values()
    before = [layer.disable_adapters for layer in layers]
    try:
        for layer in layers:
            layer.enable_adapters(False)
        yield
    finally:
        for layer, disabled in zip(layers, before, strict=True):
            layer.enable_adapters(not disabled)


def _unwrap(model, merge: bool) -> None:
    from peft.tuners.lora import LoraLayer

    for module in list(model.original_model.modules()):
        for name, child in list(module.named_children()):
            if isinstance(child, LoraLayer):
                if merge:
                    child.merge()
                setattr(module, name, child.get_base_layer())
    model.original_model.__dict__.pop("peft_config", None)
    for parameter in model.parameters():
        parameter.requires_grad_(True)


def merge_adapter(model) -> None:
    """Fold the adapter into the base weights and put the plain projections back."""
    _unwrap(model, merge=True)


def remove_adapter(model) -> None:
    """Drop the adapter: the model is its base again, bit for bit (the base weights never trained)."""
    _unwrap(model, merge=False)


def _plain(name: str) -> str:
    return name.replace(_WRAPPED, "")


def adapter_state(model) -> dict[str, Tensor]:
    """The adapter's factors under their standard PEFT names (``base_model.model.….lora_A.weight``)."""
    state = _peft().get_peft_model_state_dict(model.original_model, adapter_name=_NAME, save_embedding_layers=False)
    return {_PEFT_PREFIX + _plain(key): value.detach().contiguous() for key, value in state.items()}


def _base_reference(base: str) -> str:
    path = Path(base).expanduser()
    return str(path.resolve()) if path.exists() else base  # a folder stays findable from any directory


def save_adapter(model, out_dir: str | os.PathLike, *, files: Mapping[str, str] | None = None) -> Path:
    """Write the model's adapter as a PEFT folder that :func:`polineurons.models.load_model` reloads on
    the base (``model.cfg.model_name``) and peft reads; ``files``: extra name -> text. Atomic."""
    layers = lora_layers(model)
    if not layers:
        raise AdapterError("The model has no adapter to save.")
    peft_config = model.original_model.peft_config[_NAME]
    targets = sorted({name.rsplit(".", 1)[-1] for name in map(_plain, layers)})
    stored = peft_config.to_dict() | {
        "target_modules": targets,
        "base_model_name_or_path": _base_reference(model.cfg.model_name),
        "inference_mode": True,
    }
    with atomic_dir(out_dir, replace=True) as tmp:
        save_file(adapter_state(model), str(tmp / ADAPTER_WEIGHTS))
        (tmp / ADAPTER_CONFIG).write_text(json.dumps(stored, indent=2, default=list) + "\n", encoding="utf-8")
        for name, text in (files or {}).items():
            (tmp / name).write_text(text, encoding="utf-8")
    return Path(out_dir)


def is_adapter_folder(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a PEFT adapter folder (``adapter_config.json`` in it)."""
    return (Path(path) / ADAPTER_CONFIG).is_file()


def adapter_base(path: str | os.PathLike) -> str:
    """The base model an adapter folder was trained on, as :func:`load_model` takes it."""
    stored = json.loads((Path(path) / ADAPTER_CONFIG).read_text(encoding="utf-8"))
    base = stored.get("base_model_name_or_path")
    if not base:
        raise AdapterError(f"{path}/{ADAPTER_CONFIG} names no base_model_name_or_path.")
    return base


def load_adapter(model, path: str | os.PathLike) -> None:
    """Attach the adapter saved in the PEFT folder ``path`` to ``model`` (its base), unmerged: the model
    computes exactly as the one that was saved."""
    peft = _peft()
    folder = Path(path)
    config = peft.LoraConfig.from_pretrained(str(folder))
    targets = config.target_modules
    if isinstance(targets, str) or not targets:
        raise AdapterError(f"{folder}: target_modules must be a list of module names, got {targets!r}.")
    if config.peft_type != peft.PeftType.LORA:
        raise AdapterError(f"{folder} holds a {config.peft_type} adapter; polineurons reads LoRA adapters.")
    _inject(model, dataclasses.replace(config, target_modules=_target_regex(sorted(targets)), inference_mode=False))
    wanted = peft.get_peft_model_state_dict(model.original_model, adapter_name=_NAME, save_embedding_layers=False)
    by_plain = {_PEFT_PREFIX + _plain(key): key for key in wanted}
    saved = load_file(str(folder / ADAPTER_WEIGHTS))
    missing = sorted(set(by_plain) - set(saved))
    if missing:
        remove_adapter(model)
        raise AdapterError(f"{folder} lacks adapter weights for {missing[:3]} (another model's adapter?).")
    state = {by_plain[key]: value.float() for key, value in saved.items() if key in by_plain}
    peft.set_peft_model_state_dict(model.original_model, state, adapter_name=_NAME)
    model.eval()


def neuron_adapter_parameters(model, layer: int) -> list[tuple[str, nn.Parameter, int]]:
    """The adapter factors through which LoRA changes ``layer``'s neurons: ``(name, parameter, dim)``,
    slicing ``parameter`` along ``dim`` at neuron ``i`` gives the factor row/column that alone carries
    the adapter's change to neuron ``i``'s weights — ``lora_B`` rows of the gate/up projections (its
    input weights), ``lora_A`` columns of the down projection (its output weights). Empty where the
    layer's MLP is not adapted."""
    if not has_adapter(model):
        return []
    from peft.tuners.lora import LoraLayer

    found = []
    mlp = model.blocks[layer].mlp
    for role in ("gate", "in", "out"):
        bridge = getattr(mlp, role, None)
        linear = getattr(bridge, "original_component", None)
        if not isinstance(linear, LoraLayer) or _NAME not in linear.lora_A:
            continue
        if role == "out":
            found.append((f"blocks.{layer}.mlp.{role}.lora_A", linear.lora_A[_NAME].weight, 1))
        else:
            found.append((f"blocks.{layer}.mlp.{role}.lora_B", linear.lora_B[_NAME].weight, 0))
    return found
