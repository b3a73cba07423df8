"""Sweeps on Ray: the same trials, stored the same way, as the local launcher; a failing trial is
reported while the others finish; an interrupted sweep resumes. A local Ray instance with 2 CPUs."""

import json
import shutil
import sys
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch

from polineurons.config import RunConfig, trial_spec
from polineurons.data import load_data
from polineurons.errors import MissingDependencyError, RunError
from polineurons.launch import LaunchConfig, RayLauncher, TrialsFailedError
from polineurons.matrix import MatrixConfig, run_matrix
from polineurons.methods import MitigateConfig
from polineurons.mitigate import run_mitigation
from polineurons.study import Study
from polineurons.trial import TrialRequest

SMOKE = RunConfig.from_preset("smoke", model="tiny-llama")
RAY = LaunchConfig(launcher="ray")
RAY_1CPU = LaunchConfig(launcher="ray", cpus_per_trial=1)  # two trials at once on the 2 CPUs


@contextmanager
def torch_threads(n: int):
    """Local runs with the thread count of a Ray trial: CPU sums depend on it."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@pytest.fixture(scope="module")
def ray_instance():
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    # this module's test classes travel to the workers by value (the workers cannot import tests/)
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    yield ray
    ray.shutdown()


def _without_timings(trial: dict) -> dict:
    """A stored trial without its wall-clock times (the only thing a launcher may change)."""
    training = {k: v for k, v in trial["training"].items() if k not in ("seconds_total", "step_seconds")}
    return {**trial, "training": training}


def _trials(folder: Path) -> dict[str, dict]:
    return {p.name: _without_timings(json.loads(p.read_text())) for p in sorted((folder / "trials").glob("*.json"))}


def _matrix(folder: Path, launch: LaunchConfig, cells: MatrixConfig, echo=lambda message: None) -> dict:
    with Study.open(folder, device="cpu", progress=False, echo=echo, launch=launch) as study:
        return run_matrix(study, SMOKE, cells)


def _matrix_on_both(folder: Path, cells: MatrixConfig) -> None:
    """The matrix through the local launcher, then (same folder, emptied) through Ray: the same trials
    and the same matrix.json. One CPU per Ray trial, two at once; the local run uses one thread too."""
    with torch_threads(1):
        local = _matrix(folder, LaunchConfig(), cells)
    local_trials = _trials(folder)
    assert len(local_trials) == 2 * len(cells.targets or load_data(SMOKE.data).topics)
    shutil.rmtree(folder)
    messages = []
    remote = _matrix(folder, RAY_1CPU, cells, echo=messages.append)
    assert sum(m.endswith("on ray") for m in messages) == len(local_trials)
    assert _trials(folder) == local_trials
    assert {k: v for k, v in remote.items() if k != "versions"} == {k: v for k, v in local.items() if k != "versions"}


def test_matrix_on_ray_equals_local_bit_for_bit(ray_instance, tiny_env, tmp_path):
    # 2 of the 6 targets (4 of the 12 cells) keep the default run short; all of them: the slow test below
    _matrix_on_both(tmp_path / "study", MatrixConfig(targets=("immigration", "science")))


@pytest.mark.slow
def test_the_whole_smoke_matrix_on_ray_equals_local_bit_for_bit(ray_instance, tiny_env, tmp_path):
    _matrix_on_both(tmp_path / "study", MatrixConfig())


class Interrupt:
    """An echo that presses Ctrl-C once the sweep has stored ``after`` trials."""

    def __init__(self, after: int):
        self.after, self.stored = after, 0

    def __call__(self, message: str) -> None:
        self.stored += "trained and scored" in message
        if self.stored == self.after:
            raise KeyboardInterrupt


class FailOn:
    """An intervention builder that raises for one seed (and trains the others with no intervention)."""

    def __init__(self, seed: int):
        self.seed = seed

    def __call__(self, study):
        if study.progress is not False:
            raise AssertionError("a Ray worker trains without progress bars")
        if self.seed == 1:
            raise RuntimeError("boom in the worker")


def test_a_failing_trial_is_reported_and_the_others_are_stored(ray_instance, tiny_env, tmp_path):
    spec = trial_spec(SMOKE)
    requests = [TrialRequest(spec, seed, {"method": "fail-on-1"}, FailOn(seed)) for seed in range(3)]
    with Study.open(tmp_path, device="cpu", progress=False, echo=lambda m: None, launch=RAY) as study:
        with pytest.raises(TrialsFailedError) as failed:
            study.run_trials(requests)
        assert [f.name.split("-")[2:4] for f in failed.value.failures] == [["fail", "on"]]
        assert "seed1" in failed.value.failures[0].name
        assert "RuntimeError: boom in the worker" in str(failed.value)
        stored = sorted(p.name for p in (tmp_path / "trials").glob("*.json"))
        assert [name.split("-")[-2] for name in stored] == ["seed0", "seed2"]
    assert isinstance(failed.value, RunError)  # the CLI prints it as a message, not a traceback


def test_small_mitigation_on_ray_equals_local(ray_instance, tiny_env, tmp_path):
    """caft with PCA directions needs the vanilla model first (trained through the launcher, then read
    here); steer needs a vector computed here and shipped. Default resources: each trial gets as many
    threads as torch uses here, so no thread count needs matching."""
    spec, folder = trial_spec(SMOKE), tmp_path / "study"
    config = MitigateConfig(methods=("caft", "steer"), strengths=(1.0,), directions="pca", items=2)

    def mitigate(launch):
        with Study.open(folder, device="cpu", progress=False, echo=lambda m: None, launch=launch) as study:
            return run_mitigation(study, spec, config, seeds=(0,))

    local = mitigate(LaunchConfig())
    local_trials = _trials(folder)
    assert len(local_trials) == 5  # vanilla, caft and steer with their controls
    shutil.rmtree(folder)
    remote = mitigate(RAY)
    assert _trials(folder) == local_trials
    assert remote["frontier"] == local["frontier"]


def test_launch_config_resources_and_refusals(tmp_path, monkeypatch):
    assert LaunchConfig(cpus_per_trial=1).resources("cpu") == {"num_cpus": 1, "num_gpus": 0.0}
    assert LaunchConfig().resources("cpu") == {"num_cpus": torch.get_num_threads(), "num_gpus": 0.0}
    assert LaunchConfig().resources("cuda") == {"num_cpus": 1, "num_gpus": 1.0}
    assert LaunchConfig(gpus_per_trial=0.25, cpus_per_trial=2).resources("cuda") == {"num_cpus": 2, "num_gpus": 0.25}
    for bad in ({"launcher": "slurm"}, {"cpus_per_trial": 0}, {"gpus_per_trial": -1}):
        with pytest.raises(ValueError):
            LaunchConfig(**bad)
    with pytest.raises(RunError, match="--device cuda"):
        RayLauncher(RAY, "cuda:1")
    monkeypatch.setitem(sys.modules, "ray", None)  # as if Ray were not installed
    with pytest.raises(MissingDependencyError, match=r"polineurons\[ray\]"):
        RayLauncher(RAY, "cpu")
    with pytest.raises(MissingDependencyError, match=r"pip install"), Study.open(tmp_path, launch=RAY):
        pass  # refused on opening the folder, before any work


def test_local_launcher_never_starts_ray(tiny_env, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)
    with Study.open(tmp_path, device="cpu", progress=False, echo=lambda m: None) as study:
        study.run_trials([TrialRequest(trial_spec(SMOKE))])
    assert len(list((tmp_path / "trials").glob("*.json"))) == 1


def test_every_sweep_command_passes_its_launcher_options(tmp_path, monkeypatch):
    """`run`, `matrix` and `mitigate` hand --launcher and the Ray options to the library unchanged."""
    from polineurons import cli

    seen = {}

    class Stop(Exception):
        pass

    def recorder(command):
        def record(*args, **options):
            seen[command] = options.get("launch") or args[0].launch  # matrix: the study it was given
            raise Stop  # the options are what this test checks: no need to run the command

        return record

    monkeypatch.setattr(cli, "run_pipeline", recorder("run"))
    monkeypatch.setattr(cli, "mitigate_folder", recorder("mitigate"))
    monkeypatch.setattr(cli, "run_matrix", recorder("matrix"))
    args = ["--preset", "smoke", "--model", "tiny-llama", "--device", "cpu", "--launcher", "ray"]
    args += ["--ray-address", "auto", "--gpus-per-trial", "0.25", "--cpus-per-trial", "3"]
    for command in ("run", "mitigate", "matrix"):
        with pytest.raises(Stop):
            cli.main([command, *args, "--out", str(tmp_path / command)])
        assert seen[command] == LaunchConfig("ray", "auto", 0.25, 3)


def test_an_interrupted_sweep_keeps_its_stored_trials_and_resumes(ray_instance, tiny_env, tmp_path):
    """Ctrl-C after 2 trials: they are stored, the rest is cancelled, the folder is free again, and a
    rerun trains only what is missing. (Last in this module: cancelling kills the workers.)"""
    cells = MatrixConfig(targets=("race", "science"))
    with pytest.raises(KeyboardInterrupt):
        _matrix(tmp_path, RAY_1CPU, cells, echo=Interrupt(after=2))
    assert len(_trials(tmp_path)) == 2
    messages = []
    _matrix(tmp_path, RAY_1CPU, cells, echo=messages.append)
    assert sum("trained and scored" in m for m in messages) == 2
    assert sum(m.endswith("stored") for m in messages) == 2
