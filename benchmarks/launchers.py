"""One sweep through the local launcher and through Ray, side by side: wall time of each (the command as a
user runs it, process and Ray start included) and whether their trials came out the same.

    .venv/bin/python benchmarks/launchers.py                      # the smoke matrix on tiny-llama, CPU
    .venv/bin/python benchmarks/launchers.py --gpus-per-trial 0.25 -- \\
        mitigate --device cuda --seeds 3 --mitigate.methods caft steer   # quick frontier, one GPU

Everything after ``--`` is a `polineurons` command without ``--out`` (default: the smoke matrix).
Repetitions alternate local and Ray, each in a fresh folder. Writes benchmarks/RESULTS-launchers.md and
benchmarks/results-launchers.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
SMOKE_MATRIX = ["matrix", "--preset", "smoke", "--model", "tiny-llama", "--device", "cpu"]
TIMINGS = ("seconds_total", "step_seconds")


def trial_files(folder: Path) -> dict[str, dict]:
    """Each stored trial without its wall-clock times and the folder it was written in."""
    trials = {}
    for path in sorted((folder / "trials").glob("*.json")):
        trial = json.loads(path.read_text())
        trial["training"] = {k: v for k, v in trial["training"].items() if k not in (*TIMINGS, "out_dir")}
        trials[path.name] = trial
    return trials


def timed(command: list[str], out: Path) -> float:
    began = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "polineurons.cli", *command, "--out", str(out)], capture_output=True)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{done.stderr.decode()[-3000:]}")
    return time.perf_counter() - began


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=2)
    parser.add_argument("--gpus-per-trial", type=float, default=None)
    parser.add_argument("--cpus-per-trial", type=int, default=None)
    parser.add_argument("command", nargs="*", default=SMOKE_MATRIX)
    args = parser.parse_args()
    ray = ["--launcher", "ray"]
    ray += ["--gpus-per-trial", str(args.gpus_per_trial)] if args.gpus_per_trial is not None else []
    ray += ["--cpus-per-trial", str(args.cpus_per_trial)] if args.cpus_per_trial is not None else []
    seconds: dict[str, list[float]] = {"local": [], "ray": []}
    same = []
    with tempfile.TemporaryDirectory() as tmp:
        for rep in range(args.reps):
            folders = {}
            for launcher, extra in (("local", []), ("ray", ray)):
                folders[launcher] = Path(tmp) / f"{launcher}-{rep}"
                seconds[launcher].append(timed([*args.command, *extra], folders[launcher]))
                print(f"rep {rep} {launcher}: {seconds[launcher][-1]:.1f} s", flush=True)
            same.append(trial_files(folders["local"]) == trial_files(folders["ray"]))
            n_trials = len(trial_files(folders["local"]))
    result = {
        "command": ["polineurons", *args.command],
        "ray_options": ray,
        "trials": n_trials,
        "seconds": seconds,
        "median_seconds": {k: statistics.median(v) for k, v in seconds.items()},
        "ray_over_local": statistics.median(seconds["ray"]) / statistics.median(seconds["local"]),
        "same_trials": same,
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "python": platform.python_version()},
    }
    # one entry per (command, Ray options): a measurement replaces its own earlier entry only
    path = HERE / "results-launchers.json"
    runs = json.loads(path.read_text()) if path.is_file() else {}
    runs[" ".join([*result["command"], "|", *ray])] = result
    path.write_text(json.dumps(runs, indent=2) + "\n")
    text = results_text(runs)
    (HERE / "RESULTS-launchers.md").write_text(text)
    print(text)


def results_text(runs: dict) -> str:
    lines = ["# Local launcher vs Ray, one sweep", "", "`.venv/bin/python benchmarks/launchers.py [...]`", ""]
    for result in runs.values():
        median, machine = result["median_seconds"], result["machine"]
        command, options = " ".join(result["command"]), " ".join(result["ray_options"])
        lines += [
            f"## `{command}` ({result['trials']} trials), Ray with `{options}`",
            "",
            f"{len(result['seconds']['local'])} repetitions, {machine['cpus']} CPUs, {machine['platform']}.",
            "",
            "| launcher | wall seconds (each repetition) | median |",
            "|---|---|---|",
            *(f"| {k} | {', '.join(f'{s:.1f}' for s in v)} | {median[k]:.1f} |" for k, v in result["seconds"].items()),
            "",
            f"Ray / local: {result['ray_over_local']:.2f}. Trials identical (timings aside): {result['same_trials']}.",
            "",
        ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
