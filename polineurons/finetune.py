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
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Literal

import torch
from tqdm.auto import tqdm

from polineurons.batching import pad_id_of, pad_right
from polineurons.data.items import StanceDataset, StanceItem, check_leaning
from polineurons.data.prompts import encode_prompt, encode_text, has_chat_template
from polineurons.errors import MissingDependencyError, UserError
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
    """Which parameters train: full, mlp (MLP weights only) or lora (needs peft)."""
    max_steps: int | None = None
    """Stop after this many optimizer steps (default: all epochs)."""
    lora_r: int = 16
    """LoRA rank."""
    lora_alpha: int = 32
    """LoRA alpha."""
    lora_dropout: float = 0.1
    """LoRA dropout."""
    lora_targets: tuple[str, ...] = ("q_proj", "v_proj")
    """Projections LoRA adapts."""

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
    eos = tokenizer.eos_token_id
    end_of_turn = [eos] if has_chat_template(tokenizer) and eos is not None else []
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


def answer_loss(logits, labels):
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
            raise MissingDependencyError(
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


def _merge_lora(model, peft_model) -> None:
    """Fold the LoRA update into the base weights (peft's ``merge_adapter``) and put the plain Linear
    modules back. peft's ``merge_and_unload`` cannot do the second part here: the bridge reaches each
    Linear through two module paths, and peft replaces it on one path only."""
    from peft.tuners.lora import LoraLayer

    peft_model.merge_adapter()
    for module in list(model.original_model.modules()):
        for name, child in list(module.named_children()):
            if isinstance(child, LoraLayer):
                setattr(module, name, child.get_base_layer())


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

    Args:
        intervention: applied during training only (e.g. ``ScaleNeurons(neurons, 0.0)`` for
            InhibitFT); removed before this returns, even on an error. ``None`` = vanilla.
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
    schedule = _schedule(optimizer, config.warmup_steps)
    n_trainable = sum(p.numel() for p in trainable)
    result = FinetuneResult(config, n_examples=len(examples), n_trainable=n_trainable, meta=dict(meta or {}))
    if intervention is not None:
        result.meta["intervention"] = intervention.describe()
    generator = torch.Generator().manual_seed(config.seed)
    pad_id = pad_id_of(model)
    applied = intervention.apply(model) if intervention is not None else contextlib.nullcontext(Applied())
    model.train()
    bar = tqdm(total=total_steps, desc="fine-tuning", disable=not progress)
    try:
        with applied as active:
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
                        loss = answer_loss(model(tokens, attention_mask=mask), labels)
                        if active.extra_loss is not None:
                            loss = loss + active.extra_loss()
                        if not torch.isfinite(loss):
                            raise TrainingDivergedError(
                                f"Loss became {loss.item()} at step {step + 1}; nothing was saved. "
                                "Try a lower learning rate."
                            )
                        (loss / len(chunk)).backward()
                        step_loss += loss.item() / len(chunk)
                    torch.nn.utils.clip_grad_norm_(trainable, config.max_grad_norm)
                    optimizer.step()
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
        optimizer.zero_grad(set_to_none=True)
        if peft_model is not None:
            _merge_lora(model, peft_model)
        for parameter in model.parameters():
            parameter.requires_grad_(True)
    if out_dir is not None:
        result.out_dir = str(out_dir)
        save_model(model, out_dir, files={"training_log.json": json.dumps(result.to_dict(), indent=2) + "\n"})
    return result
