"""Where a sweep's trials run: one after another in this process (``local``), or spread as Ray tasks
over this machine's or a cluster's GPUs and CPUs (``ray``, the optional extra ``polineurons[ray]``).

A launcher only runs work: the study folder (:mod:`polineurons.study`) decides which trials are
missing, builds what they need, and stores each result the moment it comes back, the same way
whichever launcher ran it. So a trial's numbers never depend on the launcher, a killed sweep resumes
from its stored trials, and a trial that raises is reported at the end while the others finish.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
from tqdm.auto import tqdm

from polineurons.errors import MissingDependencyError, RunError

# What a Ray worker must see as the driver does: where models are cached, and offline mode.
FORWARDED_ENV = ("POLINEURONS_CACHE", "HF_HOME", "HF_HUB_CACHE", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")


@dataclass(frozen=True)
class LaunchConfig:
    """How a sweep's trials are run; results do not depend on it. On a CPU a Ray trial runs with as many
    torch threads as the launching process by default: float sums depend on the thread count, so the
    results then equal the local launcher's bit for bit."""

    launcher: Literal["local", "ray"] = "local"
    """local: one trial after another in this process; ray: one Ray task per trial (pip install polineurons[ray])."""
    ray_address: str | None = None
    """Ray cluster to join (auto, or ray://HEAD:10001; None: start Ray on this machine for the sweep)."""
    gpus_per_trial: float | None = None
    """GPUs a Ray trial asks for; fractions share a GPU, e.g. 0.25 for the 135M model (None: 1 on a GPU)."""
    cpus_per_trial: int | None = None
    """Torch threads per Ray trial (None: 1 beside a GPU; on a CPU this process's, so results match local)."""

    def __post_init__(self) -> None:
        if self.launcher not in ("local", "ray"):
            raise ValueError(f"Unknown launcher '{self.launcher}': use local or ray.")
        if (self.cpus_per_trial is not None and self.cpus_per_trial < 1) or (self.gpus_per_trial or 0) < 0:
            raise ValueError("cpus_per_trial must be >= 1 and gpus_per_trial >= 0.")

    def threads(self, device: str) -> int:
        """The torch threads of one trial on ``device``: ``cpus_per_trial``; else 1 beside a GPU, and on a
        CPU as many as this process uses (CPU float sums depend on the thread count)."""
        return self.cpus_per_trial or (torch.get_num_threads() if device == "cpu" else 1)

    def resources(self, device: str) -> dict[str, float]:
        """What one trial asks Ray for on ``device`` (cpu, cuda)."""
        gpus = self.gpus_per_trial if self.gpus_per_trial is not None else float(device.startswith("cuda"))
        return {"num_cpus": self.threads(device), "num_gpus": gpus}


@dataclass(frozen=True)
class Failure:
    """A unit of work that raised: its name and the error, in one line."""

    name: str
    error: str


class TrialsFailedError(RunError):
    """Some trials raised; every other trial was finished and stored."""

    def __init__(self, failures: Sequence[Failure]):
        self.failures = list(failures)
        listed = "\n".join(f"  {f.name}: {f.error}" for f in self.failures)
        super().__init__(
            f"{len(self.failures)} trial(s) failed (the others are stored; a rerun retries only these):\n{listed}"
        )


def require_ray():
    """The ``ray`` module; when Ray is missing, an error saying how to install it (raised before a sweep
    does any work)."""
    try:
        import ray
    except ImportError as error:
        raise MissingDependencyError(
            "--launcher ray needs Ray: pip install 'polineurons[ray]' (or pip install ray)."
        ) from error
    return ray


def _run_unit(work: Callable[[Any], Any], unit: Any) -> Any:
    return work(unit)  # Ray makes tasks of functions, not of callable objects


def _one_line(error: BaseException) -> str:
    cause = getattr(error, "cause", None) or error  # a RayTaskError carries the worker's exception
    text = str(cause).strip().splitlines()
    return f"{type(cause).__name__}: {text[-1] if text else ''}"


class RayLauncher:
    """Runs picklable work as one Ray task per unit, on a cluster it joins or a local instance it
    starts on first use (and stops in :meth:`close`); an instance already initialised in this process
    (``ray.init`` in a notebook) is used as it is."""

    def __init__(self, config: LaunchConfig, device: str):
        if device.startswith("cuda:"):
            raise RunError("With --launcher ray, Ray assigns each trial its GPU: use --device cuda, not a GPU index.")
        self.config, self.device, self._started = config, device, False
        require_ray()  # fail before any work when Ray is missing

    def _connect(self):
        ray = require_ray()
        if not ray.is_initialized():
            # the driver only collects results: workers' logs stay in Ray's session folder
            ray.init(address=self.config.ray_address, include_dashboard=False, log_to_driver=False)
            self._started = True
        return ray

    def run(
        self,
        units: Sequence[Any],
        work: Callable[[Any], Any],
        *,
        done: Callable[[Any, Any], None],
        name: Callable[[Any], str] = str,
        progress: bool = True,
    ) -> None:
        """``work(unit)`` for every unit as a Ray task; ``done(unit, result)`` in this process as each
        finishes (in completion order). Raises :class:`TrialsFailedError` at the end, naming each unit
        whose work raised; an interrupt cancels what is still running."""
        if not units:
            return
        ray = self._connect()
        env = {key: os.environ[key] for key in FORWARDED_ENV if key in os.environ}
        task = ray.remote(_run_unit).options(**self.config.resources(self.device), runtime_env={"env_vars": env})
        shared = ray.put(work)  # shipped once, not once per task
        pending = {task.remote(shared, unit): unit for unit in units}
        failures: list[Failure] = []
        try:
            with tqdm(total=len(units), desc="trials", disable=not progress) as bar:
                while pending:
                    finished, _ = ray.wait(list(pending), num_returns=1)
                    unit = pending.pop(finished[0])
                    try:
                        result = ray.get(finished[0])
                    except Exception as error:  # the worker's error: reported once every unit is done
                        failures.append(Failure(name(unit), _one_line(error)))
                    else:
                        with tqdm.external_write_mode():  # what `done` prints goes above the bar
                            done(unit, result)
                    bar.update()
        finally:
            for ref in pending:  # only after an interrupt or an error in `done`
                ray.cancel(ref, force=True)
        if failures:
            raise TrialsFailedError(failures)

    def close(self) -> None:
        """Stop the Ray instance this launcher started (a joined cluster keeps running)."""
        if self._started:
            require_ray().shutdown()
            self._started = False
