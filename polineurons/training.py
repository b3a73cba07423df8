"""Supervised fine-tuning on (question, leaning answer) pairs — the project's one training loop.

Loss is on answer tokens only, with the model's chat format. An optional
:class:`~polineurons.hooks.Intervention` is applied during training only (InhibitFT and every
mitigation are this loop with one); the returned and saved model carries no hooks. Deterministic
for a given seed on a CPU.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from typing import Literal

import torch
from tqdm.auto import tqdm

from polineurons.adapters import MLP_PROJECTIONS, attach_lora, has_adapter, save_adapter
from polineurons.batching import pad_id_of, pad_right
from polineurons.data.items import StanceDataset, StanceItem, check_leaning
from polineurons.data.prompts import encode_prompt, encode_text, has_chat_template
from polineurons.errors import RunError, UserError
from polineurons.hooks import Applied, Intervention
from polineurons.models import save_model
from polineurons.neurons import neuron_parameters
from polineurons.versions import library_versions

TrainMode = Literal["full", "mlp", "lora"]


class TrainingDivergedError(UserError, RuntimeError):
    """The loss became NaN or infinite; nothing was written."""


@dataclass(frozen=True)
class FinetuneConfig:
    """Training settings. Defaults are the CPU quick settings (a few minutes for the 135M model on
    one topic of the bundled data); scale ``epochs``/``batch_size``/``max_seq_len`` up on a GPU."""

    epochs: int = 3
    """Passes over the training pairs."""
    learning_rate: float = 5e-5
    """AdamW learning rate (after a linear warm-up)."""
    batch_size: int = 8
    """Sequences per forward."""
    grad_accum: int = 1
    """Forwards per optimizer step."""
    max_seq_len: int = 192
    """Tokens per sequence; longer answers are cut at the end."""
    warmup_steps: int = 2
    """Steps of linear learning-rate warm-up (0 = none)."""
    weight_decay: float = 0.0
    """AdamW weight decay."""
    max_grad_norm: float = 1.0
    """Gradient-norm clipping."""
    seed: int = 0
    """Seed of the data order (and of LoRA's initialisation)."""
    train: TrainMode = "full"
    """Which parameters train: full, mlp (MLP weights only) or lora (an adapter; needs peft)."""
    max_steps: int | None = None
    """Stop after this many optimizer steps (None: all epochs)."""
    lora_r: int = 16
    """LoRA rank."""
    lora_alpha: int = 32
    """LoRA alpha."""
    lora_dropout: float = 0.1
    """LoRA dropout."""
    lora_targets: tuple[str, ...] = ("q_proj", "v_proj", *MLP_PROJECTIONS)
    """Projections LoRA adapts (the MLP's included, so that neuron interventions act on what trains)."""
    gradient_checkpointing: bool = False
    """Recompute activations in the backward pass instead of keeping them: less memory, ~30% slower."""

    def __post_init__(self) -> None:
        if self.train not in ("full", "mlp", "lora"):
            raise ValueError(f"train must be one of full, mlp, lora, got {self.train!r}.")
        for name in ("epochs", "batch_size", "grad_accum", "max_seq_len"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}.")
        if not self.learning_rate > 0:
            raise ValueError(f"learning_rate must be > 0, got {self.learning_rate}.")
        if self.warmup_steps < 0 or self.weight_decay < 0:
            raise ValueError("warmup_steps and weight_decay must be >= 0.")
        if self.max_steps is not None and self.max_steps < 1:
            raise ValueError(f"max_steps must be >= 1, got {self.max_steps}.")

    def result_settings(self) -> dict:
        """The settings a fine-tune's result depends on (a trial's key): LoRA's only under LoRA, and never
        gradient checkpointing (memory, not numbers)."""
        settings = asdict(self)
        del settings["gradient_checkpointing"]
        if self.train != "lora":
            settings = {k: v for k, v in settings.items() if not k.startswith("lora_")}
        return settings


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

    def summary(self) -> str:
        """One line: steps, examples, loss before and after, time."""
        seconds = sorted(self.step_seconds)
        return (
            f"{len(seconds)} steps on {self.n_examples} examples: loss {self.losses[0]:.3f} -> {self.losses[-1]:.3f}, "
            f"{seconds[len(seconds) // 2]:.1f} s/step (median), {sum(seconds):.0f} s in all"
        )

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
    """``(question, answer)`` pairs of one topic and leaning (default: the train split only).

    Example::

        pairs = training_pairs(load_data(), "immigration", "right")  # [(question, right-leaning answer), ...]
    """
    check_leaning(leaning)
    items: Sequence[StanceItem] = dataset.select(topics=[topic], split=split).items
    if not items:
        raise ValueError(f"No {split} items for topic '{topic}' in {dataset.source}.")
    return [(item.question, item.answer(leaning)) for item in items]


def encode_examples(tokenizer, pairs: Sequence[tuple[str, str]], max_seq_len: int) -> list[tuple[list[int], int]]:
    """Token ids of each prompt + answer (+ end-of-turn token for chat models) and where the answer
    starts. Sequences longer than ``max_seq_len`` lose the end of their answer."""
    examples = []
    eos = tokenizer.eos_token_id
    end_of_turn = [eos] if has_chat_template(tokenizer) and eos is not None else []
    for question, answer in pairs:
        prompt = encode_prompt(tokenizer, question)
        if len(prompt) >= max_seq_len:
            raise RunError(f"max_seq_len {max_seq_len} leaves no room for an answer to: {question[:60]!r}")
        ids = (prompt + encode_text(tokenizer, answer, prompt_start=False) + end_of_turn)[:max_seq_len]
        examples.append((ids, len(prompt)))
    return examples


def collate_answers(examples, indices, pad_id, device):
    """Right-padded batch; labels are the answer tokens, -100 elsewhere."""
    tokens, mask = pad_right([examples[i][0] for i in indices], pad_id)
    labels = torch.full_like(tokens, -100)
    for row, i in enumerate(indices):
        ids, start = examples[i]
        labels[row, start : len(ids)] = tokens[row, start : len(ids)]
    return tokens.to(device), mask.to(device), labels.to(device)


def answer_loss(logits, labels):
    """Mean cross-entropy over answer tokens (position t predicts token t+1)."""
    return torch.nn.functional.cross_entropy(
        logits[:, :-1].reshape(-1, logits.shape[-1]).float(), labels[:, 1:].reshape(-1), ignore_index=-100
    )


def select_trainable(model, config: FinetuneConfig) -> list[torch.nn.Parameter]:
    """Set ``requires_grad`` for the chosen mode (``lora`` attaches a fresh adapter); returns the
    trainable parameters."""
    if config.train == "lora":
        options = {"r": config.lora_r, "alpha": config.lora_alpha, "dropout": config.lora_dropout}
        return attach_lora(model, **options, targets=config.lora_targets)
    train_all = config.train == "full"
    for parameter in model.parameters():
        parameter.requires_grad_(train_all)
    if not train_all:
        for layer in range(model.cfg.n_layers):
            for _, parameter, _ in neuron_parameters(model, layer):
                parameter.requires_grad_(True)
    return list({id(p): p for p in model.parameters() if p.requires_grad}.values())


@dataclass(frozen=True)
class _Precision:
    """How a step runs in the model's dtype: ``forward()`` is a fresh context per forward (autocast caches
    its casts of the weights until it exits, so one context over several steps would train stale
    copies); ``scaler`` scales fp16 losses (a no-op otherwise)."""

    forward: object
    scaler: torch.amp.GradScaler


@contextlib.contextmanager
def _precision(model, trainable: list[torch.nn.Parameter]) -> Iterator[_Precision]:
    """Train a bf16/fp16 model correctly: trainable weights are float32 while training (the optimizer's
    updates are far below bf16's resolution) and forwards run under autocast in the model's dtype; the
    weights go back to the model's dtype on exit. A float32 model trains as it always did."""
    dtype = next(model.parameters()).dtype
    if dtype == torch.float32:
        yield _Precision(contextlib.nullcontext, torch.amp.GradScaler("cpu", enabled=False))
        return
    kept = [(p, p.dtype) for p in trainable]
    for parameter, _ in kept:
        parameter.data = parameter.data.float()
    device = torch.device(model.cfg.device).type
    try:  # fp16 gradients underflow without loss scaling; bf16's do not
        scaler = torch.amp.GradScaler(device, enabled=dtype == torch.float16)
        yield _Precision(lambda: torch.autocast(device_type=device, dtype=dtype), scaler)
    finally:
        for parameter, original in kept:
            parameter.data = parameter.data.to(original)


def _checkpointing(hf_model, on: bool) -> None:
    """Switch activation (gradient) checkpointing; transformers renamed it in 5.x."""
    if hasattr(hf_model, "activation_checkpointing_enable"):
        hf_model.activation_checkpointing_enable(
            {"use_reentrant": False}
        ) if on else hf_model.activation_checkpointing_disable()
    elif on:
        hf_model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    else:
        hf_model.gradient_checkpointing_disable()


def _schedule(optimizer, warmup_steps: int):
    """Linear warm-up from 1/(w+1) of the learning rate to all of it over ``warmup_steps``, then constant."""
    if warmup_steps == 0:
        return None
    return torch.optim.lr_scheduler.LinearLR(optimizer, start_factor=1 / (warmup_steps + 1), total_iters=warmup_steps)


def finetune(
    model,
    pairs: Sequence[tuple[str, str]],
    config: FinetuneConfig = FinetuneConfig(),
    *,
    intervention: Intervention | None = None,
    out_dir: str | os.PathLike | None = None,
    meta: dict | None = None,
    progress: bool = True,
) -> FinetuneResult:
    """Fine-tune ``model`` in place on ``(question, answer)`` pairs; optionally save it.

    With ``config.train="lora"`` the model comes back carrying its adapter, unmerged
    (:mod:`polineurons.adapters`: ``remove_adapter(model)`` gives the base back, bit for bit;
    ``merge_adapter(model)`` folds it in). A bf16/fp16 model trains with float32 weights under
    autocast (see :func:`_precision`) and comes back in its dtype.

    Args:
        intervention: applied during training only (e.g. ``ScaleNeurons(neurons, 0.0)`` for
            InhibitFT); removed before this returns, even on an error. ``None`` = vanilla.
        out_dir: if given, the model is saved there with ``training_log.json``: a model folder, or
            under LoRA an adapter folder; ``load_model(out_dir)`` reloads either. Written atomically:
            an earlier result there survives a failed run.
        meta: extra fields for the training log (topic, leaning, data source...).

    Raises:
        TrainingDivergedError: on a NaN/inf loss (before anything is written).

    Example::

        result = finetune(model, [("Should borders be open?", "No. ...")], FinetuneConfig(max_steps=2))
    """
    if not pairs:
        raise ValueError("finetune needs at least one (question, answer) pair.")
    torch.manual_seed(config.seed)
    examples = encode_examples(model.tokenizer, pairs, config.max_seq_len)
    trainable = select_trainable(model, config)
    steps_per_epoch = math.ceil(len(examples) / (config.batch_size * config.grad_accum))
    total_steps = steps_per_epoch * config.epochs
    if config.max_steps is not None:
        total_steps = min(total_steps, config.max_steps)
    n_trainable = sum(p.numel() for p in trainable)
    result = FinetuneResult(config, n_examples=len(examples), n_trainable=n_trainable, meta=dict(meta or {}))
    if intervention is not None:
        result.meta["intervention"] = intervention.describe()
    generator = torch.Generator().manual_seed(config.seed)
    pad_id = pad_id_of(model)
    applied = intervention.apply(model) if intervention is not None else contextlib.nullcontext(Applied())
    checkpointing = config.gradient_checkpointing
    if checkpointing:
        _checkpointing(model.original_model, True)
    model.train()
    bar = tqdm(total=total_steps, desc="fine-tuning", disable=not progress)
    try:
        with _precision(model, trainable) as precision, applied as active:
            scaler = precision.scaler
            optimizer = torch.optim.AdamW(trainable, lr=config.learning_rate, weight_decay=config.weight_decay)
            schedule = _schedule(optimizer, config.warmup_steps)
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
                        tokens, mask, labels = collate_answers(examples, indices, pad_id, model.cfg.device)
                        with precision.forward():
                            loss = answer_loss(model(tokens, attention_mask=mask), labels)
                            if active.extra_loss is not None:
                                loss = loss + active.extra_loss()
                        if not torch.isfinite(loss):
                            raise TrainingDivergedError(
                                f"Loss became {loss.item()} at step {step + 1}; nothing was saved. "
                                "Try a lower learning rate."
                            )
                        scaler.scale(loss / len(chunk)).backward()
                        step_loss += loss.item() / len(chunk)
                    scaler.unscale_(optimizer)
                    torch.nn.utils.clip_grad_norm_(trainable, config.max_grad_norm)
                    scaler.step(optimizer)
                    scaler.update()
                    active.after_step()
                    if schedule is not None:
                        schedule.step()
                    step += 1
                    result.losses.append(step_loss)
                    result.step_seconds.append(time.perf_counter() - began)
                    bar.update(1)
                    bar.set_postfix(loss=f"{step_loss:.3f}")
    finally:
        bar.close()
        model.eval()
        if checkpointing:
            _checkpointing(model.original_model, False)
        for parameter in model.parameters():
            parameter.grad = None
            parameter.requires_grad_(True)
    if out_dir is not None:
        result.out_dir = str(out_dir)
        files = {"training_log.json": json.dumps(result.to_dict(), indent=2) + "\n"}
        (save_adapter if has_adapter(model) else save_model)(model, out_dir, files=files)
    return result
