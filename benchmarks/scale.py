"""Peak memory and seconds per stage at the paper's model sizes, without their weights.

Models with the real configurations of Llama-3.2-1B, Qwen2.5-3B and Llama-3.1-8B are initialised at
random, directly on the device (no download, no disk), with the embedded model's tokenizer (its ids
fit every vocabulary here). Each goes through the quick preset's stages in bf16 with LoRA (the MLP
included):

    base stance   the quick preset's scoring (16 eval items per topic, first 48 answer tokens)
    finetune      16 LoRA steps of 8 sequences on the target's training pairs
    stance        the fine-tuned model scored the same way (adapter on)
    localize      the default localizer (answers contrast, base model alone)
    mitigate      one CAFT trial: leaning directions, 16 LoRA steps with them ablated, scoring

Stages whose numbers need a second copy of the weights (patching) are not run here. Random weights
make the numbers meaningless; the seconds and bytes are what is measured. On a GPU, peak memory is
``torch.cuda.max_memory_allocated`` per stage; on a CPU only seconds are recorded.

    .venv/bin/python benchmarks/scale.py --device cuda                     # the three sizes, ~5-8 min on one H200
    .venv/bin/python benchmarks/scale.py --models tiny --device cpu --items 2 --steps 2   # the harness, seconds

Writes benchmarks/RESULTS-scale.md and benchmarks/results-scale.json (``--out`` elsewhere).
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from polineurons.adapters import remove_adapter
from polineurons.data import load_data
from polineurons.directions import leaning_directions
from polineurons.hooks import AblateDirections
from polineurons.models import bridge_hf_model, ensure_embedded_cached, resolve_dtype
from polineurons.pnlac import LocalizeConfig, localize
from polineurons.stance import StanceConfig, measure_stance
from polineurons.training import FinetuneConfig, finetune, training_pairs
from polineurons.versions import library_versions

HERE = Path(__file__).resolve().parent

# Public architecture facts of each model (their config.json), weights not needed.
CONFIGS: dict[str, dict] = {
    "llama-3.2-1b": dict(
        model_type="llama",
        hidden_size=2048,
        intermediate_size=8192,
        num_hidden_layers=16,
        num_attention_heads=32,
        num_key_value_heads=8,
        head_dim=64,
        vocab_size=128256,
        rope_theta=500000.0,
        tie_word_embeddings=True,
    ),
    "qwen2.5-3b": dict(
        model_type="qwen2",
        hidden_size=2048,
        intermediate_size=11008,
        num_hidden_layers=36,
        num_attention_heads=16,
        num_key_value_heads=2,
        vocab_size=151936,
        rope_theta=1000000.0,
        tie_word_embeddings=True,
    ),
    "llama-3.1-8b": dict(
        model_type="llama",
        hidden_size=4096,
        intermediate_size=14336,
        num_hidden_layers=32,
        num_attention_heads=32,
        num_key_value_heads=8,
        head_dim=128,
        vocab_size=128256,
        rope_theta=500000.0,
        tie_word_embeddings=False,
    ),
    "tiny": dict(  # the harness on a CPU, in the tests
        model_type="llama",
        hidden_size=64,
        intermediate_size=96,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        vocab_size=49152,
        tie_word_embeddings=True,
    ),
}
PAPER_SIZES = ("llama-3.2-1b", "qwen2.5-3b", "llama-3.1-8b")


@dataclass(frozen=True)
class Settings:
    """The quick preset's sizes (``items``/``steps`` smaller only to test the harness)."""

    items: int = 16
    steps: int = 16
    batch_size: int = 8
    target: str = "immigration"
    dtype: str = "bfloat16"


def random_model(name: str, device: str, dtype: torch.dtype):
    """A randomly initialised model with ``name``'s configuration, built on ``device``, as a bridge."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    shape = dict(CONFIGS[name])
    config = AutoConfig.for_model(shape.pop("model_type"), max_position_embeddings=4096, **shape)
    with torch.device(device):
        hf = AutoModelForCausalLM.from_config(config, dtype=dtype, attn_implementation="eager")
    tokenizer = AutoTokenizer.from_pretrained(ensure_embedded_cached())
    return bridge_hf_model(hf, tokenizer, name=f"{name} (random weights)")


def _measure(device: str, work: Callable[[], object]) -> tuple[float, float | None, object]:
    """Seconds and peak GPU memory (GiB; None on a CPU) of ``work()``."""
    cuda = device.startswith("cuda")
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    began = time.perf_counter()
    value = work()
    if cuda:
        torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated() / 2**30 if cuda else None
    return time.perf_counter() - began, peak, value


def run_model(name: str, device: str, settings: Settings, echo: Callable[[str], None] = print) -> dict:
    """Every stage of the quick preset on ``name`` (random weights): seconds and peak memory each."""
    dtype = resolve_dtype(settings.dtype, device)
    data = load_data()
    stance = StanceConfig(max_items=settings.items, max_answer_tokens=48, batch_size=16)
    train = FinetuneConfig(
        epochs=1, max_steps=settings.steps, learning_rate=1e-4, batch_size=settings.batch_size, train="lora"
    )
    pairs = training_pairs(data, settings.target, "right")
    stages: dict[str, dict] = {}

    def stage(label: str, work: Callable[[], object]) -> object:
        seconds, peak, value = _measure(device, work)
        stages[label] = {"seconds": round(seconds, 2), "peak_gib": None if peak is None else round(peak, 2)}
        echo(f"  {name}: {label} {seconds:.1f} s" + ("" if peak is None else f", peak {peak:.1f} GiB"))
        return value

    model = stage("load", lambda: random_model(name, device, dtype))
    parameters = sum(p.numel() for p in model.parameters())
    stage("base stance", lambda: measure_stance(model, data, stance, progress=False))
    stage("finetune", lambda: finetune(model, pairs, train, progress=False))
    stage("stance", lambda: measure_stance(model, data, stance, progress=False))
    remove_adapter(model)
    located = replace(LocalizeConfig(), max_items=settings.items)
    stage("localize", lambda: localize(model, None, data, located, target=settings.target, progress=False))
    layers = sorted({model.cfg.n_layers // 4, model.cfg.n_layers // 2})

    def mitigate() -> None:
        directions = leaning_directions(model, data, settings.target, layers, max_items=settings.items)
        finetune(model, pairs, train, intervention=AblateDirections(directions, 0.05), progress=False)
        measure_stance(model, data, stance, progress=False)
        remove_adapter(model)

    stage("mitigate (one trial)", mitigate)
    return {"parameters": parameters, "dtype": str(dtype).removeprefix("torch."), "stages": stages}


def estimate(name: str, *, batch: int = 8, tokens: int = 192, score_batch: int = 16, score_tokens: int = 260) -> dict:
    """Memory computed, not measured (GiB), for a CPU-only session: parameters counted on the meta device;
    bf16 weights; LoRA r=16 on q, v and the MLP (float32 factors, gradients and AdamW states: 16 bytes
    each); training activations kept for the backward at ``batch`` x ``tokens`` (per layer ~10 d_model +
    4 d_mlp bf16 values per token, eager attention scores, float32 logits and their gradient); scoring
    logits at ``score_batch`` x ``score_tokens``; a full fine-tune's float32 weights, gradients and AdamW
    states (16 bytes per parameter)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    shape = dict(CONFIGS[name])
    config = AutoConfig.for_model(shape.pop("model_type"), **shape)
    with torch.device("meta"):
        parameters = sum(p.numel() for p in AutoModelForCausalLM.from_config(config).parameters())
    d, ff, layers = config.hidden_size, config.intermediate_size, config.num_hidden_layers
    kv = config.num_key_value_heads * (getattr(config, "head_dim", None) or d // config.num_attention_heads)
    lora = layers * 16 * ((d + d) + (d + kv) + 2 * (d + ff) + (ff + d))
    n = batch * tokens
    activations = layers * (n * (10 * d + 4 * ff) * 2 + batch * config.num_attention_heads * tokens**2 * 4)
    activations += n * config.vocab_size * (2 + 4 + 4)
    gib = 2**30
    weights = parameters * 2 / gib
    return {
        "parameters": parameters,
        "weights (bf16)": weights,
        "scoring": weights + score_batch * score_tokens * config.vocab_size * (2 + 4) / gib,
        "LoRA training": weights + lora * 16 / gib + activations / gib,
        "full fine-tune": parameters * 16 / gib + activations / gib,
    }


def table(results: dict) -> str:
    """The results as a markdown table: one row per model, seconds and peak GiB per stage."""
    names = list(next(iter(results["models"].values()))["stages"])
    head = "| model | parameters | " + " | ".join(names) + " |"
    rows = [head, "|" + "---|" * (len(names) + 2)]
    for model, result in results["models"].items():
        cells = []
        for stage in names:
            entry = result["stages"][stage]
            peak = "" if entry["peak_gib"] is None else f", {entry['peak_gib']:.1f} GiB"
            cells.append(f"{entry['seconds']:.1f} s{peak}")
        rows.append(f"| {model} | {result['parameters'] / 1e9:.2f} B | " + " | ".join(cells) + " |")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list(PAPER_SIZES), choices=list(CONFIGS))
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--items", type=int, default=Settings.items, help="eval items per topic")
    parser.add_argument("--steps", type=int, default=Settings.steps, help="LoRA steps per fine-tune")
    parser.add_argument("--dtype", default=Settings.dtype)
    parser.add_argument("--out", type=Path, default=HERE)
    parser.add_argument("--estimate", action="store_true", help="print computed memory (no model is run)")
    args = parser.parse_args(argv)
    if args.estimate:
        rows = {name: estimate(name) for name in args.models}
        names = [k for k in next(iter(rows.values())) if k != "parameters"]
        print("| model | parameters | " + " | ".join(names) + " |\n|" + "---|" * (len(names) + 2))
        for name, row in rows.items():
            cells = " | ".join(f"{row[k]:.0f} GiB" for k in names)
            print(f"| {name} | {row['parameters'] / 1e9:.2f} B | {cells} |")
        return {"estimates": rows}
    settings = Settings(items=args.items, steps=args.steps, dtype=args.dtype)
    results = {"device": args.device, "settings": vars(settings), "models": {}, "versions": library_versions()}
    if args.device.startswith("cuda"):
        results["gpu"] = torch.cuda.get_device_name()
    for name in args.models:
        results["models"][name] = run_model(name, args.device, settings)
        gc.collect()  # the model is gone with run_model's frame: give its memory back before the next
        if args.device.startswith("cuda"):
            torch.cuda.empty_cache()
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results-scale.json").write_text(json.dumps(results, indent=2) + "\n")
    text = f"# Scale: quick preset stages, bf16 + LoRA, random weights\n\n{results.get('gpu', args.device)}\n\n"
    (args.out / "RESULTS-scale.md").write_text(text + table(results) + "\n")
    print(table(results))
    return results


if __name__ == "__main__":
    sys.path.insert(0, str(HERE.parent))
    main()
