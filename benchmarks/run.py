"""polineurons benchmarks: what the toolkit adds on top of the forward/backward passes it needs.

Every measurement is a RATIO against a baseline run side by side in the same process, alternating
candidate and baseline for several repetitions (median and min–max spread reported), so machine
load cancels out as far as it can. Absolute seconds are recorded too, but only ratios are judged.

    .venv/bin/python benchmarks/run.py            # embedded SmolLM2-135M-Instruct (about 19 minutes on 2 cores)
    .venv/bin/python benchmarks/run.py --quick    # tiny random model (under a minute)

Writes benchmarks/RESULTS.md and benchmarks/results.json (RESULTS-quick.md / results-quick.json
with --quick), with the machine description.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from polineurons import load_model
from polineurons.batching import length_sorted_batches, pad_id_of, pad_right, sequence_batches
from polineurons.contrasts import finetune_contrast
from polineurons.data import encode_prompt, load_data
from polineurons.hooks import ScaleNeurons
from polineurons.models import EMBEDDED_MODEL
from polineurons.neurons import NeuronSet, mlp_post_hook_name, model_shape
from polineurons.patching import check_attribution
from polineurons.pnlac import top_percent
from polineurons.stance import continuation_logprobs, stance_pairs
from polineurons.training import FinetuneConfig, finetune, training_pairs
from polineurons.versions import library_versions

HERE = Path(__file__).resolve().parent


@dataclass
class Measurement:
    name: str
    target: str  # e.g. "<= 1.2x"
    ratios: list[float] = field(default_factory=list)
    candidate_seconds: list[float] = field(default_factory=list)
    baseline_seconds: list[float] = field(default_factory=list)
    extra: dict = field(default_factory=dict)

    @property
    def ratio(self) -> float:
        return statistics.median(self.ratios)

    def met(self) -> bool:
        op, value = self.target.split()
        value = float(value.rstrip("x"))
        return self.ratio <= value if op == "<=" else self.ratio >= value

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "target": self.target,
            "ratio_median": self.ratio,
            "ratio_min": min(self.ratios),
            "ratio_max": max(self.ratios),
            "met": self.met(),
            "ratios": self.ratios,
            "candidate_seconds": self.candidate_seconds,
            "baseline_seconds": self.baseline_seconds,
            **self.extra,
        }


def _timed(fn: Callable[[], object]) -> tuple[float, object]:
    gc.collect()
    start = time.perf_counter()
    value = fn()
    return time.perf_counter() - start, value


def side_by_side(
    name: str,
    target: str,
    candidate: Callable[[], object],
    baseline: Callable[[], object],
    reps: int,
    *,
    invert: bool = False,
) -> Measurement:
    """Warm both up, then alternate them ``reps`` times; ratio = candidate / baseline (or the inverse)."""
    candidate(), baseline()
    m = Measurement(name, target)
    for rep in range(reps):
        order = [("c", candidate), ("b", baseline)] if rep % 2 == 0 else [("b", baseline), ("c", candidate)]
        times = {}
        for key, fn in order:
            times[key] = _timed(fn)[0]
        m.candidate_seconds.append(times["c"])
        m.baseline_seconds.append(times["b"])
        m.ratios.append(times["b"] / times["c"] if invert else times["c"] / times["b"])
    return m


# ---- workloads -------------------------------------------------------------------------------------------


def question_sequences(model, n: int) -> list[list[int]]:
    items = load_data().select(split="train").items
    return [encode_prompt(model.tokenizer, items[i % len(items)].question) for i in range(n)]


def plain_forwards(base, tuned, sequences, batch_size: int = 8) -> None:
    """Baseline for PNLAC: the two forwards it cannot avoid, over the same batches, no hooks."""
    for indices in length_sorted_batches([len(s) for s in sequences], batch_size):
        tokens, mask = pad_right([sequences[i] for i in indices], pad_id_of(base))
        with torch.no_grad():
            base(tokens.to(base.cfg.device), attention_mask=mask.to(base.cfg.device))
            tuned(tokens.to(base.cfg.device), attention_mask=mask.to(base.cfg.device))


def reference_contrast(base, tuned, sequences) -> torch.Tensor:
    """Mirror of the paper's released localization script: one prompt at a time, every layer's MLP
    output copied to NumPy per sample, plus a separate one-token generate per model per sample."""
    n_layers, d_mlp = model_shape(base)
    sum_squares = np.zeros((n_layers, d_mlp))
    n_tokens = 0
    for ids in sequences:
        tokens = torch.tensor([ids], device=base.cfg.device)
        per_model = []
        for model in (base, tuned):
            captured: dict[int, np.ndarray] = {}

            def make(layer: int):
                def hook(activation, hook):
                    captured[layer] = activation[0].detach().cpu().numpy().copy()

                return hook

            with (
                torch.no_grad(),
                model.hooks(fwd_hooks=[(mlp_post_hook_name(layer), make(layer)) for layer in range(n_layers)]),
            ):
                model(tokens)
            with torch.no_grad():
                model.generate(tokens, max_new_tokens=1, do_sample=False, verbose=False)
            per_model.append(np.stack([captured[layer] for layer in range(n_layers)]))  # [layers, pos, d_mlp]
        diff = per_model[1].astype(np.float64) - per_model[0].astype(np.float64)
        sum_squares += (diff**2).sum(axis=1)
        n_tokens += len(ids)
    return torch.from_numpy(np.sqrt(sum_squares / n_tokens)).float()


def perturbed_copy(name: str, device: str, seed: int = 0, scale: float = 0.02):
    """A stand-in 'fine-tuned' model: the base with small seeded noise on its MLP weights (benchmarks
    time code paths, so any weight change that moves activations will do)."""
    model = load_model(name, device=device)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter_name, parameter in model.named_parameters():
            if ".mlp." in parameter_name and parameter.ndim == 2:
                noise = (
                    torch.randn(parameter.shape, generator=generator) * parameter.detach().float().std().item() * scale
                )
                parameter.add_(noise.to(parameter.device, parameter.dtype))
    return model


# ---- the seven measurements --------------------------------------------------------------------------------


def bench_contrast_vs_forwards(base, tuned, n_prompts: int, reps: int) -> Measurement:
    sequences = question_sequences(base, n_prompts)
    m = side_by_side(
        "1. PNLAC contrast vs two plain forwards",
        "<= 1.2x",
        lambda: finetune_contrast(base, tuned, sequences),
        lambda: plain_forwards(base, tuned, sequences),
        reps,
    )
    m.extra["prompts"] = n_prompts
    return m


def bench_contrast_vs_reference(base, tuned, n_prompts: int, reps: int) -> Measurement:
    sequences = question_sequences(base, n_prompts)
    ours = finetune_contrast(base, tuned, sequences)
    theirs = reference_contrast(base, tuned, sequences)
    m = side_by_side(
        "2. PNLAC contrast vs per-sample reference loop",
        ">= 5x",
        lambda: finetune_contrast(base, tuned, sequences),
        lambda: reference_contrast(base, tuned, sequences),
        reps,
        invert=True,
    )
    top_ours, top_theirs = top_percent(ours, 5.0), top_percent(theirs, 5.0)
    m.extra.update(
        prompts=n_prompts,
        max_abs_score_difference=float((ours - theirs).abs().max()),
        top5_percent_jaccard=len(top_ours & top_theirs) / max(len(top_ours | top_theirs), 1),
    )
    return m


def bench_stance_scoring(model, n_items: int, reps: int) -> Measurement:
    items = load_data().select(split="eval").items[:n_items]
    pairs = stance_pairs(model.tokenizer, items)
    batches, _ = sequence_batches(pairs, 16, pad_id_of(model), model.cfg.device)

    def plain():
        with torch.no_grad():
            for batch in batches:
                model(batch.tokens, attention_mask=batch.mask)

    m = side_by_side(
        "3. stance scoring vs plain forwards (same padded batches)",
        "<= 1.2x",
        lambda: continuation_logprobs(model, pairs, batch_size=16, progress=False),
        plain,
        reps,
    )
    tokens = sum(int(b.mask.sum()) for b in batches)
    m.extra.update(
        items=len(items),
        tokens=tokens,
        tokens_per_second_scoring=tokens / statistics.median(m.candidate_seconds),
        tokens_per_second_plain=tokens / statistics.median(m.baseline_seconds),
    )
    return m


def bench_attribution(base, tuned, n_items: int, sample: int) -> Measurement:
    items = load_data().select(split="eval", topics=["immigration", "race"]).items[:n_items]
    n_layers, d_mlp = model_shape(base)
    generator = torch.Generator().manual_seed(0)
    chosen = [divmod(i, d_mlp) for i in torch.randperm(n_layers * d_mlp, generator=generator)[:sample].tolist()]
    check = check_attribution(base, tuned, items, chosen, max_answer_tokens=32)
    m = Measurement("4. attribution patching (all neurons) vs exact per-neuron patching", ">= 100x")
    m.ratios = [check.speedup(n_layers * d_mlp)]
    m.candidate_seconds = [check.seconds_attribution]
    m.baseline_seconds = [check.seconds_exact_per_neuron * n_layers * d_mlp]
    m.extra.update(
        items=len(items),
        sampled_neurons=sample,
        spearman=check.spearman,
        exact_seconds_per_neuron=check.seconds_exact_per_neuron,
        extrapolated=True,
    )
    return m


def bench_inhibit_step(name: str, device: str, steps: int, reps: int, seq_len: int) -> Measurement:
    data = load_data()
    pairs = training_pairs(data, "immigration", "right")[:8]  # one batch, the same every step
    config = FinetuneConfig(epochs=steps, batch_size=8, max_seq_len=seq_len, warmup_steps=0)
    model = load_model(name, device=device)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    n_layers, d_mlp = model_shape(model)
    generator = torch.Generator().manual_seed(0)
    flat = torch.randperm(n_layers * d_mlp, generator=generator)[: round(0.05 * n_layers * d_mlp)].tolist()
    inhibited = NeuronSet.from_pairs([divmod(i, d_mlp) for i in flat], n_layers, d_mlp)  # 5% of all neurons

    def step_time(inhibit) -> float:
        model.load_state_dict(state)
        intervention = ScaleNeurons(inhibit, 0.0) if inhibit is not None else None
        result = finetune(model, pairs, config, intervention=intervention, progress=False)
        return statistics.median(result.step_seconds[1:])  # the first step pays for optimizer-state allocation

    m = Measurement("5. InhibitFT training step vs plain step (same batch)", "<= 1.1x")
    step_time(inhibited), step_time(None)
    for rep in range(reps):
        if rep % 2 == 0:
            candidate, baseline = step_time(inhibited), step_time(None)
        else:
            baseline, candidate = step_time(None), step_time(inhibited)
        m.candidate_seconds.append(candidate)
        m.baseline_seconds.append(baseline)
        m.ratios.append(candidate / baseline)
    m.extra.update(inhibited_neurons=len(inhibited), steps_per_run=steps)
    return m


def _memory_child(name: str, device: str, n_prompts: int) -> dict:
    """Run in a fresh process: extra peak memory of one contrast pass above the loaded models."""
    base, tuned = load_model(name, device=device), perturbed_copy(name, device)
    # the same 64 prompts repeated: both sizes share the longest batch, so only the count differs
    sequences = question_sequences(base, 64) * max(1, n_prompts // 64)
    finetune_contrast(base, tuned, sequences[:8])  # warm-up: allocator pools, lazy init
    gc.collect()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        finetune_contrast(base, tuned, sequences)
        return {"extra_peak_bytes": torch.cuda.max_memory_allocated() - before, "kind": "cuda allocated"}
    Path("/proc/self/clear_refs").write_text("5")  # reset the peak-RSS counter (VmHWM)
    before = _status_kb("VmRSS")
    finetune_contrast(base, tuned, sequences)
    return {"extra_peak_bytes": (_status_kb("VmHWM") - before) * 1024, "kind": "process RSS"}


def _status_kb(key: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise KeyError(key)


def bench_memory(name: str, device: str, small: int, large: int) -> Measurement:
    def child(n: int) -> dict:
        done = subprocess.run(
            [sys.executable, __file__, "--memory-child", str(n), "--model", name, "--device", device],
            capture_output=True,
            text=True,
            check=True,
        )
        return json.loads(done.stdout.strip().splitlines()[-1])

    low, high = child(small), child(large)
    m = Measurement(f"6. peak memory of the contrast pass, {large} vs {small} prompts", "<= 1.2x")
    m.ratios = [high["extra_peak_bytes"] / max(low["extra_peak_bytes"], 1)]
    m.extra.update(
        measured=low["kind"],
        extra_peak_mib={small: low["extra_peak_bytes"] / 2**20, large: high["extra_peak_bytes"] / 2**20},
    )
    return m


def bench_load(name: str, device: str) -> Measurement:
    """Cold load (GGUF dequantization + conversion; for a tiny model: building it) vs warm (cached)."""
    with tempfile.TemporaryDirectory() as cache:
        cold, _ = _timed(lambda: load_model(name, device=device, cache=cache))
        warm = [_timed(lambda: load_model(name, device=device, cache=cache))[0] for _ in range(3)]
    m = Measurement("7. model load: cold (convert) vs warm (cached folder)", ">= 1x")
    m.ratios = [cold / statistics.median(warm)]
    m.candidate_seconds, m.baseline_seconds = [cold], warm
    m.extra.update(
        cold_seconds=cold,
        warm_seconds_median=statistics.median(warm),
        note="informational: cold/warm speed-up of caching",
    )
    return m


# ---- report -----------------------------------------------------------------------------------------------


def machine() -> dict:
    cpu = "unknown"
    if Path("/proc/cpuinfo").is_file():
        names = [
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ]
        cpu = names[0] if names else cpu
    return {
        "platform": platform.platform(),
        "cpu": cpu,
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "versions": library_versions(),
    }


def write_results(measurements: list[Measurement], info: dict, out_md: Path, out_json: Path) -> None:
    rows = ["| measurement | ratio (median) | spread (min–max) | target | met? |", "|---|---|---|---|---|"]
    for m in measurements:
        rows.append(
            f"| {m.name} | {m.ratio:.2f}× | {min(m.ratios):.2f}–{max(m.ratios):.2f} | {m.target.replace('x', '×')} | "
            f"{'yes' if m.met() else 'no'} |"
        )
    details = []
    for m in measurements:
        extra = ", ".join(f"{k} {v:.3g}" if isinstance(v, float) else f"{k} {v}" for k, v in m.extra.items())
        seconds = (
            f"candidate {statistics.median(m.candidate_seconds):.3g} s, "
            f"baseline {statistics.median(m.baseline_seconds):.3g} s"
            if m.baseline_seconds
            else ""
        )
        details.append(
            f"- **{m.name}** — {len(m.ratios)} repetition(s); {seconds}{'; ' if seconds and extra else ''}{extra}"
        )
    text = "\n".join(
        [
            f"# Benchmarks — {info['model']}",
            "",
            f"Command: `{info['command']}` — {info['date']}, {info['seconds']:.0f} s in all.",
            f"Machine: {info['machine']['cpu']}, {info['machine']['cores']} cores, "
            f"{info['machine']['torch_threads']} torch threads, "
            f"device {info['device']}{' (' + info['machine']['cuda'] + ')' if info['machine']['cuda'] else ''}; "
            + ", ".join(f"{k} {v}" for k, v in info["machine"]["versions"].items())
            + ".",
            "",
            "Ratios: candidate / baseline run side by side in one process (alternating), "
            "so machine load largely cancels; "
            "rows 2, 4 and 7 are speed-ups (baseline / candidate).",
            "",
            *rows,
            "",
            "Details:",
            "",
            *details,
            "",
        ]
    )
    out_md.write_text(text)
    out_json.write_text(json.dumps({**info, "measurements": [m.to_dict() for m in measurements]}, indent=2) + "\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny random model, fewer repetitions")
    parser.add_argument("--model", default=None, help="model name (default: embedded; tiny-llama with --quick)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--reps", type=int, default=None)
    parser.add_argument("--only", default=None, help="comma-separated measurement numbers, e.g. 1,3")
    parser.add_argument("--memory-child", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    name = args.model or ("tiny-llama" if args.quick else EMBEDDED_MODEL)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if args.memory_child is not None:
        print(json.dumps(_memory_child(name, args.device, args.memory_child)))
        return 0
    reps = args.reps or 3
    n_prompts = 24 if args.quick else 48
    only = {int(x) for x in args.only.split(",")} if args.only else set(range(1, 8))
    started = time.perf_counter()
    torch.manual_seed(0)
    base, tuned = load_model(name, device=args.device), perturbed_copy(name, args.device)
    measurements = []
    jobs = {
        1: lambda: bench_contrast_vs_forwards(base, tuned, n_prompts, reps),
        2: lambda: bench_contrast_vs_reference(base, tuned, n_prompts // 2, max(2, reps - 2)),
        3: lambda: bench_stance_scoring(base, 32 if not args.quick else 16, reps),
        4: lambda: bench_attribution(base, tuned, 4, 8 if args.quick else 16),
        5: lambda: bench_inhibit_step(name, args.device, 4, reps, 320 if args.quick else 192),
        6: lambda: bench_memory(name, args.device, 64, 512),
        7: lambda: bench_load(name, args.device),
    }
    for number in sorted(only):
        print(f"running measurement {number} ...", flush=True)
        measurement = jobs[number]()
        measurements.append(measurement)
        print(
            f"  {measurement.name}: {measurement.ratio:.2f}x (target {measurement.target}) "
            f"{'met' if measurement.met() else 'NOT met'}",
            flush=True,
        )
    suffix = "-quick" if args.quick else ""
    info = {
        "model": name,
        "device": args.device,
        "command": " ".join(["python benchmarks/run.py", *(argv if argv is not None else sys.argv[1:])]),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "seconds": time.perf_counter() - started,
        "machine": machine(),
    }
    write_results(measurements, info, HERE / f"RESULTS{suffix}.md", HERE / f"results{suffix}.json")
    print(f"wrote {HERE / f'RESULTS{suffix}.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
