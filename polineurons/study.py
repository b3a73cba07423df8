"""The study folder: the one store that ``run``, ``matrix`` and ``mitigate`` write into.

Layout (every file written atomically)::

    .lock                       held by the process working in the folder (its pid inside)
    study.json                  layout version, each plan's guarded settings, library versions
    base/{label}-{key}.json     the base model's scores on one data set, or its neutral-text check:
                                computed once per (model, data, scoring settings)
    trials/{label}-{key}.json   one fine-tune and its scores, stored under a key of its FULL settings
    models/{label}-{key}/       a trial's model, where a plan keeps it (PNLAC, PCA directions)

A key is a hash of everything a result depends on: the model by identity (its config and weight
files, not only its name), the data by content, the training settings and seed, the intervention's
recipe and the scoring settings. Any plan that asks for a trial with the same settings gets the stored
one (``run``'s vanilla fine-tune is ``mitigate``'s vanilla), and a change of any setting is a new
trial, never a stale one. A kill loses at most the trials in progress: files appear complete or not at
all, and the lock dies with its process.

The trials a plan needs are trained by the study's launcher (:mod:`polineurons.launch`): here, one
after another, or as Ray tasks; either way this process stores each result as it arrives.
"""

from __future__ import annotations

import copy
import fcntl
import os
import shutil
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, fields
from pathlib import Path

import torch

from polineurons.adapters import has_adapter, remove_adapter
from polineurons.errors import RunError
from polineurons.hooks import Intervention
from polineurons.io import read_json, write_json
from polineurons.launch import LaunchConfig, RayLauncher, require_ray
from polineurons.models import DType, default_device, load_model, model_identity, resolve_dtype
from polineurons.settings import as_stored, changed_settings, describe_changes, settings_key
from polineurons.stance import ScoringConfig, StanceResult, measure_stance, neutral_logprob, neutral_pairs
from polineurons.stored import neutral_settings, stance_settings, stored_trials
from polineurons.trial import Scores, Trial, TrialRequest, TrialSpec, train_and_score
from polineurons.versions import library_versions

LAYOUT = 2  # study.json's layout version; folders of polineurons before study folders have none


@contextmanager
def folder_lock(root: Path) -> Iterator[None]:
    """Hold ``root/.lock`` for the duration, or fail at once naming the process that holds it. The
    kernel drops the lock when its process dies, so a killed run never leaves the folder locked."""
    path = root / ".lock"
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)  # no O_TRUNC: the holder's pid must survive
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "unknown"
            raise RunError(
                f"{root} is in use by process {holder}: wait for it to finish, or use another --out folder."
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        try:
            yield
        finally:
            os.ftruncate(fd, 0)
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def _check_layout(root: Path) -> None:
    """Refuse folders this version cannot extend: an earlier polineurons's run, matrix or mitigation
    folder (no study.json), or a newer layout."""
    meta = root / "study.json"
    if meta.is_file():
        layout = read_json(meta).get("layout")
        if layout != LAYOUT:
            raise RunError(f"{root} has study layout {layout}; this polineurons writes layout {LAYOUT}.")
        return
    old = [name for name in ("config.json", "trials", "mitigation.json", "matrix.json") if (root / name).exists()]
    if old:
        raise RunError(
            f"{root} was written by a polineurons from before study folders (it holds {', '.join(old)} but no "
            "study.json); its files are left as they are. Use a new --out folder."
        )


@dataclass(frozen=True)
class TrialWorker:
    """Trains and scores one trial in a launcher's worker process: it opens the study folder without
    its lock (the process that launched the sweep holds it, and stores what this returns)."""

    root: Path
    device: str | None
    dtype: DType
    threads: int

    def __call__(self, request: TrialRequest) -> tuple[dict, float]:
        torch.set_num_threads(self.threads)  # CPU sums depend on it: as many as the local launcher uses
        study = Study(self.root, self.device, progress=False, echo=lambda _: None, dtype=self.dtype)
        trial, seconds = study.execute(request)
        return trial.to_dict(), seconds


@dataclass
class Study:
    """An open study folder (see the module docstring). Make one with :meth:`open`, which holds the
    folder's lock while the block runs; plans call :meth:`trial`, :meth:`base_scores` and :meth:`guard`."""

    root: Path
    device: str | None = None
    progress: bool = True
    echo: Callable[[str], None] = print
    dtype: DType = "auto"
    launch: LaunchConfig = LaunchConfig()
    _identities: dict[str, dict] = field(default_factory=dict, repr=False)
    _base_models: dict[str, object] = field(default_factory=dict, repr=False)
    _workbenches: dict[str, object] = field(default_factory=dict, repr=False)
    _ray: RayLauncher | None = field(default=None, repr=False)

    @classmethod
    @contextmanager
    def open(
        cls,
        root: str | os.PathLike,
        *,
        device: str | None = None,
        progress: bool = True,
        echo: Callable[[str], None] = print,
        dtype: DType = "auto",
        launch: LaunchConfig = LaunchConfig(),
    ) -> Iterator[Study]:
        """Create or reopen the folder, lock it, and yield the study (the lock is released on exit, even
        on an exception). Models are loaded on ``device`` in ``dtype`` (:func:`polineurons.models.resolve_dtype`);
        ``launch`` says where trials train (a Ray instance it starts is stopped on exit).
        Raises :class:`RunError` for an unwritable, busy or old-layout folder."""
        root = Path(root)
        try:
            root.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise RunError(f"Cannot write to the folder {root}: {error}") from error
        if not os.access(root, os.W_OK):
            raise RunError(f"Cannot write to the folder {root}: permission denied.")
        if launch.launcher == "ray":
            require_ray()
        with folder_lock(root):
            _check_layout(root)
            if not (root / "study.json").is_file():
                write_json(root / "study.json", {"layout": LAYOUT, "plans": {}, "versions": library_versions()})
            study = cls(root, device, progress, echo, dtype, launch)
            try:
                yield study
            finally:
                if study._ray is not None:
                    study._ray.close()

    # ---- models ------------------------------------------------------------------------------------

    @property
    def torch_dtype(self) -> torch.dtype:
        """The dtype every model of the study is loaded in."""
        return resolve_dtype(self.dtype, self.device)

    def identity(self, model: str) -> dict:
        """The model's identity as loaded here (:func:`polineurons.models.model_identity`, with the
        dtype), computed once per study."""
        if model not in self._identities:
            self._identities[model] = model_identity(model, dtype=self.torch_dtype)
        return self._identities[model]

    def load(self, folder: str | os.PathLike):
        """A model folder (a kept trial's model, an adapter folder) loaded as the study loads models."""
        return load_model(folder, device=self.device, dtype=self.torch_dtype)

    def base_model(self, model: str):
        """The base model, loaded once per study and kept resident: every base score and every trial
        uses it (:meth:`trainee`)."""
        if model not in self._base_models:
            self._base_models[model] = self.load(model)
        return self._base_models[model]

    @contextmanager
    def trainee(self, spec: TrialSpec) -> Iterator[object]:
        """The model one trial fine-tunes, equal to the base on entry; the base is intact on exit.

        Under LoRA it is the resident base itself: the trial attaches its adapter to it, and the adapter
        is removed on exit (the base weights never train, so the base comes back bit for bit). Otherwise
        it is a second resident copy (made once, in memory), reset from the base's weights before each
        trial — never a load from disk."""
        base = self.base_model(spec.model)
        if spec.finetune.train == "lora":
            try:
                yield base
            finally:
                if has_adapter(base):
                    remove_adapter(base)
            return
        bench = self._workbenches.get(spec.model)
        if bench is None:
            bench = self._workbenches[spec.model] = copy.deepcopy(base)
        else:
            with torch.no_grad():
                for mine, theirs in zip(bench.state_dict().values(), base.state_dict().values(), strict=True):
                    mine.copy_(theirs)
        yield bench

    # ---- base scores -------------------------------------------------------------------------------

    def _base_path(self, label: str, settings: dict) -> Path:
        return self.root / "base" / f"{label}-{settings_key(as_stored(settings))}.json"

    def _base_file(self, path: Path, settings: dict, compute: Callable[[], dict]) -> dict:
        if path.is_file():
            return read_json(path)
        payload = {"settings": as_stored(settings), **compute()}
        write_json(path, payload)
        return payload

    def _stance_file(self, model: str, data, config: ScoringConfig) -> tuple[Path, dict]:
        scoring = {f.name: getattr(config, f.name) for f in fields(ScoringConfig)}
        settings = stance_settings(self.identity(model), data.identity, scoring)
        return self._base_path(f"stance-{Path(data.source).name or 'data'}", settings), settings

    def _neutral_file(self, model: str, items: int | None, batch_size: int) -> tuple[Path, dict]:
        settings = neutral_settings(self.identity(model), items, batch_size)
        return self._base_path("neutral", settings), settings

    def base_stance(self, model: str, data, config: ScoringConfig) -> StanceResult:
        """The base model's stance on ``data``'s eval items, scored once per (model, data, scoring)."""
        path, settings = self._stance_file(model, data, config)

        def compute() -> dict:
            return measure_stance(self.base_model(model), data, config, progress=self.progress).to_dict()

        return StanceResult.from_dict(self._base_file(path, settings, compute))

    def base_neutral(self, model: str, items: int | None, batch_size: int = 16) -> float:
        """The base model's mean log-prob of the first ``items`` neutral texts, computed once."""
        path, settings = self._neutral_file(model, items, batch_size)

        def compute() -> dict:
            base = self.base_model(model)
            pairs = neutral_pairs(base.tokenizer, items)
            return {"neutral_logprob": neutral_logprob(base, pairs, batch_size=batch_size)}

        return self._base_file(path, settings, compute)["neutral_logprob"]

    def base_scores(self, spec: TrialSpec) -> Scores:
        """The base model scored exactly as every trial of ``spec`` is (:func:`polineurons.trial.score_model`)."""
        stance = self.base_stance(spec.model, spec.dataset, spec.stance)
        checks = {name: self.base_stance(spec.model, d, spec.check_stance) for name, d in spec.checks.items()}
        neutral = self.base_neutral(spec.model, spec.stance.neutral_items, spec.stance.batch_size)
        return Scores(stance, checks, neutral)

    def base_files(self, spec: TrialSpec) -> dict:
        """Where :meth:`base_scores` keeps each part, relative to the folder."""
        stance = self._stance_file(spec.model, spec.dataset, spec.stance)[0]
        checks = {name: self._stance_file(spec.model, d, spec.check_stance)[0] for name, d in spec.checks.items()}
        neutral = self._neutral_file(spec.model, spec.stance.neutral_items, spec.stance.batch_size)[0]
        relative = lambda path: str(path.relative_to(self.root))  # noqa: E731
        return {
            "stance": relative(stance),
            "checks": {n: relative(p) for n, p in checks.items()},
            "neutral": relative(neutral),
        }

    def forget_base(self, spec: TrialSpec) -> None:
        """Delete the stored base scores of ``spec``, so that they are computed again."""
        files = self.base_files(spec)
        for relative in [files["stance"], files["neutral"], *files["checks"].values()]:
            (self.root / relative).unlink(missing_ok=True)

    # ---- trials ------------------------------------------------------------------------------------

    def trial_settings(self, spec: TrialSpec, seed: int, recipe: dict | None = None) -> dict:
        """The full settings of a trial, as stored: what its key is made of."""
        finetune = {**spec.finetune.result_settings(), "seed": seed}
        settings = {
            "model": self.identity(spec.model),
            "data": spec.dataset.identity,
            "target": spec.target,
            "leaning": spec.leaning,
            "finetune": finetune,
            "intervention": recipe,
            "scoring": spec.scoring(),
        }
        return as_stored(settings)

    def trial_path(self, settings: dict) -> Path:
        recipe = settings["intervention"]
        label = recipe.get("label", recipe.get("method", "intervention")) if recipe else "vanilla"
        name = f"{settings['target']}-{settings['leaning']}-{label}-seed{settings['finetune']['seed']}"
        return self.root / "trials" / f"{name}-{settings_key(settings)}.json"

    def model_path(self, settings: dict) -> Path:
        """Where a trial's model is kept, when a plan asks for it."""
        return self.root / "models" / self.trial_path(settings).stem

    def stored_trial(self, spec: TrialSpec, *, seed: int = 0, recipe: dict | None = None) -> Trial | None:
        """The stored trial with these settings, or None."""
        path = self.trial_path(self.trial_settings(spec, seed, recipe))
        return Trial.from_dict(read_json(path)) if path.is_file() else None

    def trial(
        self,
        spec: TrialSpec,
        *,
        seed: int = 0,
        recipe: dict | None = None,
        intervention: Callable[[Study], Intervention | None] | None = None,
        keep_model: bool = False,
    ) -> Trial:
        """The trial of ``spec`` with ``seed`` and the intervention ``recipe`` describes (None: vanilla):
        the stored one when the folder holds it (and its model, with ``keep_model``), else trained,
        scored and stored (see :class:`TrialRequest`)."""
        return self.run_trials([TrialRequest(spec, seed, recipe, intervention, keep_model)])[0]

    def run_trials(self, requests: Sequence[TrialRequest]) -> list[Trial]:
        """Every requested trial, in order: stored ones read back, the others prepared here, then trained
        and scored by the launcher (``self.launch``) and stored as each finishes. Locally the first
        error stops the sweep; on Ray every other trial finishes first
        (:class:`polineurons.launch.TrialsFailedError`)."""
        paths = [self._path_of(request) for request in requests]
        for request, _ in self._missing(requests, paths):
            if hasattr(request.intervention, "prepare"):
                request.intervention.prepare(self)  # may itself train a trial (PCA directions' vanilla)
        todo = self._missing(requests, paths)  # preparing can have trained some
        training = {path for _, path in todo}
        for path in dict.fromkeys(paths):
            if path not in training:
                self.echo(f"[{path.stem}] stored")
        if self.launch.launcher == "local":
            for request, path in todo:
                self._store(request, path, *self.execute(request))
        elif todo:
            self._release_models()  # the workers load their own: free this process's (GPU) memory for them

            def done(request: TrialRequest, result: tuple[dict, float]) -> None:
                self._store(request, self._path_of(request), Trial.from_dict(result[0]), result[1])

            launcher = self._launcher()
            worker = TrialWorker(self.root, launcher.device, self.dtype, self.launch.threads(launcher.device))
            name = lambda request: self._path_of(request).stem  # noqa: E731
            launcher.run([r for r, _ in todo], worker, done=done, name=name, progress=self.progress)
        return [Trial.from_dict(read_json(path)) for path in paths]

    def _path_of(self, request: TrialRequest) -> Path:
        return self.trial_path(self.trial_settings(request.spec, request.seed, request.recipe))

    def _model_dir(self, request: TrialRequest) -> Path | None:
        settings = self.trial_settings(request.spec, request.seed, request.recipe)
        return self.model_path(settings) if request.keep_model else None

    def _missing(self, requests: Sequence[TrialRequest], paths: Sequence[Path]) -> list[tuple[TrialRequest, Path]]:
        """The requests whose trial (or kept model) the folder lacks, once each (keeping the model wins)."""
        missing: dict[Path, TrialRequest] = {}
        for request, path in zip(requests, paths, strict=True):
            model_dir = self._model_dir(request)
            if path.is_file() and (model_dir is None or (model_dir / "config.json").is_file()):
                continue
            if path not in missing or request.keep_model:
                missing[path] = request
        return [(request, path) for path, request in missing.items()]

    def execute(self, request: TrialRequest) -> tuple[Trial, float]:
        """Train and score ``request`` (building its intervention here), storing nothing but its kept
        model: ``(trial, seconds)``. Launchers call this; plans call :meth:`run_trials`."""
        began = time.perf_counter()
        built = request.intervention(self) if request.intervention is not None else None
        with self.trainee(request.spec) as model:
            options = {"intervention": built, "model_dir": self._model_dir(request), "progress": self.progress}
            trial = train_and_score(request.spec, model, seed=request.seed, **options)
        return trial, time.perf_counter() - began

    def _store(self, request: TrialRequest, path: Path, trial: Trial, seconds: float) -> None:
        settings = self.trial_settings(request.spec, request.seed, request.recipe)
        write_json(path, {"settings": settings, **trial.to_dict()}, indent=None)
        where = "" if self.launch.launcher == "local" else f" on {self.launch.launcher}"
        self.echo(f"[{path.stem}] trained and scored in {seconds:.0f} s{where}")

    def _launcher(self) -> RayLauncher:
        if self._ray is None:
            self._ray = RayLauncher(self.launch, self.device or default_device())
        return self._ray

    def _release_models(self) -> None:
        self._base_models.clear()
        self._workbenches.clear()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    def forget_trial(self, spec: TrialSpec, *, seed: int = 0, recipe: dict | None = None) -> None:
        """Delete a stored trial (and its kept model), so that the next :meth:`trial` trains it again."""
        settings = self.trial_settings(spec, seed, recipe)
        self.trial_path(settings).unlink(missing_ok=True)
        model_dir = self.model_path(settings)
        if model_dir.is_dir():
            shutil.rmtree(model_dir)

    def trials(self) -> Iterator[tuple[dict, Trial]]:
        """Every trial the folder holds, as ``(settings, trial)``, in file-name order."""
        return stored_trials(self.root)

    # ---- the guard ---------------------------------------------------------------------------------

    def plans(self) -> dict[str, dict]:
        """Each plan's guarded settings, as stored."""
        return read_json(self.root / "study.json")["plans"]

    def guard(self, plan: str, settings: dict, *, replace: bool = False) -> None:
        """Refuse to add to ``plan``'s results (a summary over every trial of that plan in the folder)
        with other settings than the folder's, naming what changed; the first call stores them.
        ``replace`` stores the new settings instead (a plan that recomputes its results from scratch)."""
        meta = read_json(self.root / "study.json")
        settings = as_stored(settings)
        stored = meta["plans"].get(plan)
        if stored is not None and stored != settings and not replace:
            raise RunError(
                f"{self.root} holds {plan} results computed with other settings: "
                f"{describe_changes(changed_settings(stored, settings))}; use a new --out folder."
            )
        if stored != settings:
            meta["plans"][plan] = settings
            meta["versions"] = library_versions()
            write_json(self.root / "study.json", meta)
