"""Supervised fine-tuning on (question, leaning answer) pairs — the project's one training loop.

Loss is on answer tokens only, with the model's chat format. Optional neuron hooks (a NeuronSet
plus a scale, through :func:`polineurons.hooks.scale_neurons`) are active during training only;
InhibitFT is this loop with those hooks. Deterministic for a given seed on a CPU.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from tqdm.auto import tqdm

from polineurons.data.items import StanceDataset, StanceItem, check_leaning
from polineurons.data.prompts import encode_prompt, encode_text, has_chat_template
from polineurons.hooks import scale_neurons
from polineurons.neurons import NeuronSet, neuron_parameters
from polineurons.stance import pad_id_of, pad_right
from polineurons.versions import library_versions

TRAIN_MODES = ("full", "mlp", "lora")
INHIBIT_MODES = ("scale", "freeze")


class TrainingDivergedError(RuntimeError):
    """The loss became NaN or infinite; nothing was written."""


@dataclass(frozen=True)
class FinetuneConfig:
    """Training settings. Defaults are the CPU quick settings (a few minutes for the 135M model on
    one topic of the bundled data); scale ``epochs``/``batch_size``/``max_seq_len`` up on a GPU."""

    epochs: int = 3
    learning_rate: float = 5e-5
    batch_size: int = 8
    grad_accum: int = 1
    max_seq_len: int = 192
    warmup_steps: int = 2
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    seed: int = 0
    train: str = "full"  # full | mlp | lora
    max_steps: int | None = None
    lora_r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.1
    lora_targets: tuple[str, ...] = ("q_proj", "v_proj")

    def __post_init__(self) -> None:
        if self.train not in TRAIN_MODES:
            raise ValueError(f"train must be one of {', '.join(TRAIN_MODES)}, got {self.train!r}.")
        for name in ("epochs", "batch_size", "grad_accum", "max_seq_len"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}.")
        if not self.learning_rate > 0:
            raise ValueError(f"learning_rate must be > 0, got {self.learning_rate}.")


@dataclass
class FinetuneResult:
    """What a run did: per-step losses and times, and where the model was saved (if it was)."""

    config: FinetuneConfig
    losses: list[float] = field(default_factory=list)
    step_seconds: list[float] = field(default_factory=list)
    n_examples: int = 0
    n_trainable: int = 0
    out_dir: str | None = None
    meta: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {
            "config": asdict(self.config),
            "losses": self.losses,
            "step_seconds": self.step_seconds,
            "n_steps": len(self.losses),
            "n_examples": self.n_examples,
            "n_trainable_parameters": self.n_trainable,
            "seconds_total": sum(self.step_seconds),
            "out_dir": self.out_dir,
            **self.meta,
            "versions": library_versions(),
        }


def training_pairs(dataset: StanceDataset, topic: str, leaning: str, split: str = "train") -> list[tuple[str, str]]:
    """``(question, answer)`` pairs of one topic and leaning (default: the train split only)."""
    check_leaning(leaning)
    items: Sequence[StanceItem] = dataset.select(topics=[topic], split=split).items
    if not items:
        raise ValueError(f"No {split} items for topic '{topic}' in {dataset.source}.")
    return [(item.question, item.answer(leaning)) for item in items]


def encode_examples(tokenizer, pairs: Sequence[tuple[str, str]], max_seq_len: int) -> list[tuple[list[int], int]]:
    """Token ids of each prompt + answer (+ end-of-turn token for chat models) and where the answer
    starts. Sequences longer than ``max_seq_len`` lose the end of their answer."""
    examples = []
    end_of_turn = [tokenizer.eos_token_id] if has_chat_template(tokenizer) and tokenizer.eos_token_id is not None else []
    for question, answer in pairs:
        prompt = encode_prompt(tokenizer, question)
        if len(prompt) >= max_seq_len:
            raise ValueError(f"max_seq_len {max_seq_len} leaves no room for an answer to: {question[:60]!r}")
        ids = (prompt + encode_text(tokenizer, answer, prompt_start=False) + end_of_turn)[:max_seq_len]
        examples.append((ids, len(prompt)))
    return examples


def _collate(examples, indices, pad_id, device):
    """Right-padded batch; labels are the answer tokens, -100 elsewhere."""
    tokens, mask = pad_right([examples[i][0] for i in indices], pad_id)
    labels = torch.full_like(tokens, -100)
    for row, i in enumerate(indices):
        ids, start = examples[i]
        labels[row, start : len(ids)] = tokens[row, start : len(ids)]
    return tokens.to(device), mask.to(device), labels.to(device)


def _answer_loss(logits, labels):
    """Mean cross-entropy over answer tokens (position t predicts token t+1)."""
    return torch.nn.functional.cross_entropy(
        logits[:, :-1].reshape(-1, logits.shape[-1]).float(), labels[:, 1:].reshape(-1), ignore_index=-100
    )


def select_trainable(model, config: FinetuneConfig):
    """Set ``requires_grad`` for the chosen mode; returns the trainable parameters (and a peft
    wrapper for ``lora``, else None)."""
    peft_model = None
    if config.train == "lora":
        try:
            from peft import LoraConfig, get_peft_model
        except ImportError:
            raise ImportError(
                "train='lora' needs peft: pip install 'polineurons[lora]' (or pip install peft)."
            ) from None
        # The bridge wraps each HF Linear in a LinearBridge; LoRA attaches to the Linear inside it.
        targets = "|".join(config.lora_targets)
        lora = LoraConfig(
            r=config.lora_r,
            lora_alpha=config.lora_alpha,
            lora_dropout=config.lora_dropout,
            target_modules=rf".*\.({targets})\._original_component",
        )
        peft_model = get_peft_model(model.original_model, lora)
    else:
        train_all = config.train == "full"
        for parameter in model.parameters():
            parameter.requires_grad_(train_all)
        if not train_all:
            for layer in range(model.cfg.n_layers):
                for _, parameter, _ in neuron_parameters(model, layer):
                    parameter.requires_grad_(True)
    trainable = list({id(p): p for p in model.parameters() if p.requires_grad}.values())
    return trainable, peft_model


def finetune(
    model,
    pairs: Sequence[tuple[str, str]],
    config: FinetuneConfig = FinetuneConfig(),
    *,
    inhibit: NeuronSet | None = None,
    inhibit_scale: float = 0.0,
    inhibit_mode: str = "scale",
    out_dir: str | os.PathLike | None = None,
    meta: dict | None = None,
    progress: bool = True,
) -> FinetuneResult:
    """Fine-tune ``model`` in place on ``(question, answer)`` pairs; optionally save it.

    Args:
        inhibit: neurons to inhibit during training (InhibitFT). With ``inhibit_mode="scale"``
            their activations are multiplied by ``inhibit_scale`` (0 = zeroed) through forward hooks
            that are removed before this returns, even on an error. With ``"freeze"`` activations are
            untouched and the neurons' input and output weights are held fixed (gradient masks, and
            restored after each step so weight decay cannot move them either).
        out_dir: if given, the model is saved there (a folder ``load_model(out_dir)`` reloads) with
            ``training_log.json``. Written atomically: an earlier result there survives a failed run.
        meta: extra fields for the training log (topic, leaning, data source...).

    Raises:
        TrainingDivergedError: on a NaN/inf loss (before anything is written).
    """
    if not pairs:
        raise ValueError("finetune needs at least one (question, answer) pair.")
    torch.manual_seed(config.seed)
    examples = encode_examples(model.tokenizer, pairs, config.max_seq_len)
    trainable, peft_model = select_trainable(model, config)
    optimizer = torch.optim.AdamW(trainable, lr=config.learning_rate, weight_decay=config.weight_decay)
    steps_per_epoch = math.ceil(len(examples) / (config.batch_size * config.grad_accum))
    total_steps = steps_per_epoch * config.epochs
    if config.max_steps is not None:
        total_steps = min(total_steps, config.max_steps)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: min(1.0, (step + 1) / (config.warmup_steps + 1))
    )
    result = FinetuneResult(config, n_examples=len(examples), n_trainable=sum(p.numel() for p in trainable), meta=dict(meta or {}))
    generator = torch.Generator().manual_seed(config.seed)
    pad_id = pad_id_of(model)
    if inhibit_mode not in INHIBIT_MODES:
        raise ValueError(f"inhibit_mode must be one of {', '.join(INHIBIT_MODES)}, got {inhibit_mode!r}.")
    active = inhibit is not None and bool(inhibit)
    hooks = scale_neurons(model, inhibit, inhibit_scale) if active and inhibit_mode == "scale" else contextlib.nullcontext()
    freezer = frozen_neurons(model, inhibit) if active and inhibit_mode == "freeze" else contextlib.nullcontext()
    model.train()
    bar = tqdm(total=total_steps, desc="fine-tuning", disable=not progress)
    try:
        with hooks, freezer as restore:
            step = 0
            while step < total_steps:
                order = torch.randperm(len(examples), generator=generator).tolist()
                micro = [order[i : i + config.batch_size] for i in range(0, len(order), config.batch_size)]
                for start in range(0, len(micro), config.grad_accum):
                    if step >= total_steps:
                        break
                    began = time.perf_counter()
                    optimizer.zero_grad(set_to_none=True)
                    chunk = micro[start : start + config.grad_accum]
                    step_loss = 0.0
                    for indices in chunk:
                        tokens, mask, labels = _collate(examples, indices, pad_id, model.cfg.device)
                        loss = _answer_loss(model(tokens, attention_mask=mask), labels)
                        if not torch.isfinite(loss):
                            raise TrainingDivergedError(
                                f"Loss became {loss.item()} at step {step + 1}; nothing was saved. "
                                "Try a lower learning rate."
                            )
                        (loss / len(chunk)).backward()
                        step_loss += loss.item() / len(chunk)
                    torch.nn.utils.clip_grad_norm_(trainable, config.max_grad_norm)
                    optimizer.step()
                    if restore is not None:
                        restore()
                    schedule.step()
                    step += 1
                    result.losses.append(step_loss)
                    result.step_seconds.append(time.perf_counter() - began)
                    bar.update(1)
                    bar.set_postfix(loss=f"{step_loss:.3f}")
    finally:
        bar.close()
        model.eval()
        optimizer.zero_grad(set_to_none=True)
        if peft_model is not None:
            _merge_lora(model, peft_model)
        for parameter in model.parameters():
            parameter.requires_grad_(True)
    if out_dir is not None:
        save_model(model, out_dir, training_log=result)
        result.out_dir = str(out_dir)
    return result


@contextlib.contextmanager
def frozen_neurons(model, neurons: NeuronSet):
    """Hold the input/output weights of ``neurons`` fixed during training.

    Gradient hooks zero those rows/columns; the yielded ``restore()`` (call it after each optimizer
    step) copies the saved values back, so weight decay or momentum cannot move them. Hooks are
    removed on exit."""
    neurons.validate_for(model)
    saved, handles = [], []
    for layer, index in neurons.by_layer.items():
        for _, parameter, dim in neuron_parameters(model, layer):
            idx = index.to(parameter.device)
            saved.append((parameter, dim, idx, parameter.detach().index_select(dim, idx).clone()))
            keep = torch.ones(parameter.shape[dim], dtype=parameter.dtype, device=parameter.device)
            keep[idx] = 0
            shape = [1] * parameter.ndim
            shape[dim] = -1
            handles.append(parameter.register_hook(lambda grad, keep=keep.view(shape): grad * keep))

    def restore() -> None:
        with torch.no_grad():
            for parameter, dim, idx, values in saved:
                parameter.index_copy_(dim, idx, values)

    try:
        yield restore
    finally:
        for handle in handles:
            handle.remove()


def _merge_lora(model, peft_model) -> None:
    """Fold the LoRA update into the base weights and put the plain Linear modules back."""
    from peft.tuners.lora import LoraLayer

    peft_model.merge_adapter()
    for module in list(model.original_model.modules()):
        for name, child in list(module.named_children()):
            if isinstance(child, LoraLayer):
                setattr(module, name, child.get_base_layer())


def hf_state_dict(model) -> dict[str, torch.Tensor]:
    """The wrapped Hugging Face model's weights under their usual names."""
    return {key.replace("._original_component", ""): value for key, value in model.original_model.state_dict().items()}


def save_model(model, out_dir: str | os.PathLike, *, training_log: FinetuneResult | None = None) -> Path:
    """Save a bridge's model as a Hugging Face folder (safetensors, config, tokenizer) that
    :func:`polineurons.load_model` reloads. Atomic: the folder appears complete or not at all, and
    an earlier folder at ``out_dir`` is replaced only once the new one is written."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        config = model.original_model.config
        with torch.device("meta"):
            fresh = AutoModelForCausalLM.from_config(config)
        wanted = set(fresh.state_dict())
        weights = {k: v for k, v in hf_state_dict(model).items() if k in wanted}
        missing = wanted - set(weights) - {"lm_head.weight"} if config.tie_word_embeddings else wanted - set(weights)
        if missing:
            raise RuntimeError(f"Cannot save: weights missing for {sorted(missing)[:5]}")
        fresh.load_state_dict(weights, assign=True, strict=False)
        fresh.tie_weights()
        fresh.save_pretrained(tmp)
        try:  # the bridge's tokenizer was reloaded with add_bos_token=True; save the original one
            tokenizer = AutoTokenizer.from_pretrained(model.tokenizer.name_or_path)
        except (OSError, ValueError):
            tokenizer = model.tokenizer
        tokenizer.save_pretrained(tmp)
        if training_log is not None:
            (tmp / "training_log.json").write_text(json.dumps(training_log.to_dict(), indent=2) + "\n")
        _replace_dir(tmp, out_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out_dir


def _replace_dir(new: Path, target: Path) -> None:
    if target.exists():
        backup = target.with_name(f".{target.name}.old")
        shutil.rmtree(backup, ignore_errors=True)
        os.replace(target, backup)
        os.replace(new, target)
        shutil.rmtree(backup, ignore_errors=True)
    else:
        os.replace(new, target)
