"""The study folder: one lock per folder, trials keyed by full settings (the model by identity), one
trial shared by every plan that asks for it, clear errors for broken model folders, a kill that loses
nothing finished, and a presentation layer that loads no training code."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from polineurons.cli import main
from polineurons.config import RunConfig
from polineurons.data import load_data
from polineurons.errors import RunError
from polineurons.mitigate import MitigateConfig, run_mitigation
from polineurons.models import EMBEDDED_MODEL, model_identity, resolve_model_path
from polineurons.report import write_pages
from polineurons.study import Study, folder_lock
from polineurons.trial import TrialSpec

ROOT = Path(__file__).resolve().parents[1]
CLI = [sys.executable, "-c", "import sys; from polineurons.cli import main; main(sys.argv[1:])"]
SMOKE_RUN = ["run", "--preset", "smoke", "--model", "tiny-llama", "--device", "cpu"]


def run_cli(args, capsys) -> tuple[int, str]:
    try:
        main([str(a) for a in args])
        code = 0
    except SystemExit as exit_:
        code = exit_.code
    captured = capsys.readouterr()
    return code, captured.out + captured.err


def subprocess_env(tiny_cache) -> dict:
    return {**os.environ, "POLINEURONS_CACHE": str(tiny_cache), "PYTHONUNBUFFERED": "1", "HF_HUB_OFFLINE": "1"}


def wait_for(condition, timeout: float = 120.0) -> None:
    end = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > end:
            pytest.fail("timed out waiting")
        time.sleep(0.05)


def test_a_second_process_is_refused_at_once_and_the_first_finishes_untouched(tiny_cache, tiny_env, tmp_path, capsys):
    out = tmp_path / "run"
    first = subprocess.Popen(
        [*CLI, *SMOKE_RUN, "--out", out],
        env=subprocess_env(tiny_cache),
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    lock = out / ".lock"
    wait_for(lambda: lock.is_file() and lock.read_text().strip() == str(first.pid))
    began = time.monotonic()
    code, output = run_cli([*SMOKE_RUN, "--out", out], capsys)
    assert code == 2 and f"is in use by process {first.pid}" in output and time.monotonic() - began < 5
    assert first.wait(timeout=600) == 0, first.stdout.read()[-3000:]
    results = json.loads((out / "results.json").read_text())
    assert "mitigation" in results and not list((out / "stages").glob("*.started.json"))
    assert lock.read_text() == ""  # released; the next process takes it
    code, output = run_cli([*SMOKE_RUN, "--out", out], capsys)
    assert code == 0 and "] running" not in output


def test_the_lock_is_released_when_its_holder_raises(tmp_path):
    with pytest.raises(ValueError), folder_lock(tmp_path):
        raise ValueError("boom")
    with folder_lock(tmp_path):  # not held any more
        pass


def test_a_folder_of_an_earlier_version_is_refused_and_left_alone(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "trials").mkdir()
    with pytest.raises(RunError, match="from before study folders"), Study.open(tmp_path):
        pass
    assert sorted(p.name for p in tmp_path.iterdir()) == [".lock", "config.json", "trials"]


def test_a_model_is_known_by_its_contents_not_its_name(tiny_cache, tiny_env, tmp_path):
    folder = tmp_path / "model"
    shutil.copytree(resolve_model_path("tiny-llama")[1], folder)
    before = model_identity(folder)
    assert model_identity(folder) == before and set(before["weights"]) == {"model.safetensors"}
    weights = folder / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-8:] = bytes(8)  # the same size, other weights at the end of the file
    weights.write_bytes(bytes(data))
    after = model_identity(folder)
    assert after["name"] == before["name"] and after["weights"] != before["weights"]


def test_a_run_on_a_replaced_model_folder_is_refused_naming_the_weights(tiny_cache, tiny_env, tmp_path, capsys):
    """The same `--model FOLDER` with other contents is another model: a finished run is not reused."""
    folder = tmp_path / "model"
    shutil.copytree(resolve_model_path("tiny-llama")[1], folder)
    args = [*SMOKE_RUN, "--model", folder, "--out", tmp_path / "run", "--mitigate.methods", "caft"]
    assert run_cli(args, capsys)[0] == 0
    shutil.rmtree(folder)
    shutil.copytree(resolve_model_path("tiny-gemma3")[1], folder)
    code, output = run_cli(args, capsys)
    assert code == 2 and "base_stance: model.config_sha256" in output and "--force base_stance" in output


def test_broken_model_folders_give_one_line_errors_and_embedded_is_a_name(
    tiny_cache, tiny_env, tmp_path, capsys, monkeypatch
):
    truncated = tmp_path / "truncated"
    shutil.copytree(resolve_model_path("tiny-llama")[1], truncated)
    with (truncated / "model.safetensors").open("r+b") as handle:
        handle.truncate(1000)
    no_type = tmp_path / "no-type"
    shutil.copytree(resolve_model_path("tiny-llama")[1], no_type)
    config = json.loads((no_type / "config.json").read_text())
    del config["model_type"]
    (no_type / "config.json").write_text(json.dumps(config))
    for folder in (truncated, no_type):
        code, output = run_cli(["info", "-m", folder, "--device", "cpu"], capsys)
        lines = [line for line in output.splitlines() if line.startswith("error:")]
        assert code == 2 and len(lines) == 1 and f"Cannot load the model folder {folder}:" in lines[0]
        assert "Traceback" not in output
    import polineurons.models as models

    monkeypatch.setattr(models, "ensure_embedded_cached", lambda cache=None: tmp_path / "embedded")
    assert resolve_model_path("embedded") == (EMBEDDED_MODEL, str(tmp_path / "embedded"))


def test_a_trial_shared_by_run_and_mitigate_is_trained_once(smoke_run, tiny_env, tmp_path, monkeypatch):
    """`mitigate` into a run's folder with the run's settings reuses the run's vanilla fine-tune and
    scores (nothing but the new method is trained), and mitigation.json, results.json and the report
    then cover the run's methods and the new one."""
    out = tmp_path / "run"
    shutil.copytree(smoke_run[0], out)
    config = RunConfig.from_preset("smoke", model="tiny-llama")
    data, checks = load_data(config.data), {name: load_data(name) for name in config.check_data}
    spec = TrialSpec(
        data, config.target, config.leaning, config.finetune, config.stance, checks, config.check, config.model
    )
    import polineurons.study as study_module

    trained, messages = [], []
    real = study_module.train_and_score
    monkeypatch.setattr(study_module, "train_and_score", lambda *a, **k: trained.append(k["seed"]) or real(*a, **k))
    added = MitigateConfig(methods=("steer",), strengths=(1.0,), controls=False, items=2)
    with Study.open(out, device="cpu", progress=False, echo=messages.append) as study:
        result = run_mitigation(study, spec, added, seeds=(0,))
        pages = write_pages(out)
    assert (
        trained == [0]
        and messages[0].startswith("[immigration-right-vanilla-seed0-")
        and messages[0].endswith("stored")
    )
    assert len(list((out / "base").glob("*.json"))) == 3  # the run's base scores, not computed again
    assert set(result["frontier"]) == {"inhibit-zero", "caft", "steer"}
    assert set(json.loads((out / "results.json").read_text())["mitigation"]["frontier"]) == set(result["frontier"])
    assert pages == [out / "report.html", out / "mitigation.html"] and "steer" in pages[0].read_text()


def test_a_killed_sweep_resumes_to_the_same_numbers(tiny_cache, tiny_env, tmp_path):
    args = ["mitigate", "--model", "tiny-llama", "--target", "race", "--check-data", "--device", "cpu"]
    args += ["--finetune.max-steps", "2", "--finetune.batch-size", "4", "--finetune.max-seq-len", "320"]
    args += ["--stance.max-items", "1", "--stance.neutral-items", "4", "--mitigate.items", "2"]
    args += ["--mitigate.methods", "caft", "steer", "--mitigate.strengths", "1", "2"]
    env = subprocess_env(tiny_cache)
    killed = subprocess.Popen(
        [*CLI, *args, "--out", str(tmp_path / "k")], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    trials = tmp_path / "k" / "trials"
    wait_for(lambda: len(list(trials.glob("*.json"))) >= 3 or killed.poll() is not None)
    killed.send_signal(signal.SIGKILL)
    killed.wait()
    done = len(list(trials.glob("*.json")))
    assert 3 <= done < 9, "the kill came after the sweep finished"
    for path in (tmp_path / "k").rglob("*.json"):  # every file the kill left is whole (written atomically)
        json.loads(path.read_text())
    resumed = subprocess.run([*CLI, *args, "--out", str(tmp_path / "k")], env=env, capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert resumed.stdout.count("] stored") >= done and resumed.stdout.count("trained and scored") == 9 - done
    whole = subprocess.run([*CLI, *args, "--out", str(tmp_path / "w")], env=env, capture_output=True, text=True)
    assert whole.returncode == 0, whole.stderr[-2000:]
    a, b = (json.loads((tmp_path / name / "mitigation.json").read_text()) for name in ("k", "w"))
    assert a["frontier"] == b["frontier"] and a["at_90"] == b["at_90"]


def test_a_run_killed_mid_fine_tune_resumes_to_the_same_numbers(tiny_cache, tiny_env, tmp_path):
    args = [*SMOKE_RUN, "--seeds", "3", "--mitigate.methods"]  # three fine-tunes, no mitigation
    env = subprocess_env(tiny_cache)
    killed = subprocess.Popen(
        [*CLI, *args, "--out", tmp_path / "k"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    trials = tmp_path / "k" / "trials"
    wait_for(lambda: len(list(trials.glob("*.json"))) >= 1 or killed.poll() is not None)
    killed.send_signal(signal.SIGKILL)
    killed.wait()
    stages = tmp_path / "k" / "stages"
    assert (stages / "finetune.started.json").is_file() and not (stages / "finetune.json").is_file()
    assert 1 <= len(list(trials.glob("*.json"))) < 3, "the kill came after the fine-tunes"
    resumed = subprocess.run([*CLI, *args, "--out", tmp_path / "k"], env=env, capture_output=True, text=True)
    assert resumed.returncode == 0 and "[finetune] resuming" in resumed.stdout, resumed.stderr[-2000:]
    whole = subprocess.run([*CLI, *args, "--out", tmp_path / "w"], env=env, capture_output=True, text=True)
    assert whole.returncode == 0, whole.stderr[-2000:]

    def numbers(folder):  # everything but times
        results = json.loads((folder / "results.json").read_text())
        results.pop("stage_seconds")
        for row in results["finetune"]:
            row.pop("seconds")
        return results

    assert numbers(tmp_path / "k") == numbers(tmp_path / "w")


def test_reading_a_run_folder_imports_no_training_code():
    code = (
        "import sys, polineurons.artifacts, polineurons.viz, polineurons.report\n"
        "loaded = [m for m in ('polineurons.training', 'polineurons.trial', 'polineurons.mitigate',"
        " 'polineurons.study', 'polineurons.config') if m in sys.modules]\n"
        "assert not loaded, loaded"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-2000:]
