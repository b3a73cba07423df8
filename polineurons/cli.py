"""`polineurons` command line: measure, localize and mitigate political-stance cross-topic generalization.

Each command is a dataclass of its options; tyro builds the parser from it and from the stage configs it nests.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Annotated, Literal, Union

import tyro

from polineurons.artifacts import load_run, results_text
from polineurons.cli_options import (
    Base,
    Device,
    Flat,
    GeometryOptions,
    JsonOut,
    Leaning,
    Loads,
    MatrixOptions,
    MitigateOptions,
    Model,
    OnData,
    OnPair,
    SearchOptions,
    Sweeps,
    Target,
    narrowed,
    optional_target,
    write_report,
)
from polineurons.config import RunConfig, preset_named
from polineurons.data import load_data
from polineurons.errors import UserError
from polineurons.experiment import STAGES, run_pipeline
from polineurons.generalization import measure_generalization
from polineurons.geometry import GeometryConfig, geometry_folder, geometry_text
from polineurons.layer_search import LayerSearchConfig, layer_search_text, search_layers_folder
from polineurons.league import league_across, league_across_text
from polineurons.matrix import MatrixConfig, matrix_text, run_matrix
from polineurons.mitigate import league_text, mitigate_folder
from polineurons.models import EMBEDDED_MODEL, generate_answer, model_summary
from polineurons.patching import PatchConfig, patch_experiment, recovery_text
from polineurons.pnlac import Localization, LocalizeConfig, localize
from polineurons.report import write_pages
from polineurons.screening import ScreenConfig, screen
from polineurons.stance import ScoringConfig, measure_stance, measure_statements, topic_table
from polineurons.study import Study
from polineurons.training import FinetuneConfig, finetune, training_pairs


@dataclass(kw_only=True)
class Info(Loads):
    """Load a model and print its shape, tokenizer set-up and cache folder (and its answer to --ask)."""

    model: Model = EMBEDDED_MODEL
    ask: str | None = None  # Also print the model's greedy answer to this question, in its chat format.

    def __call__(self) -> None:
        bridge = self.load(self.model)
        rows = model_summary(bridge)
        print("\n".join(f"{key:<{max(map(len, rows))}}  {value}" for key, value in rows.items()))
        if self.ask:
            print(generate_answer(bridge, self.ask))


@dataclass(kw_only=True)
class Stance(OnData):
    """Score a model's stance per topic (positive = leans right) with bootstrap 95% CIs."""

    model: Model = EMBEDDED_MODEL
    topics: tuple[str, ...] = ()  # Topics scored (empty: all).
    split: Literal["train", "eval", "all"] = "eval"
    """Items scored: eval (held out from training), train or all."""
    statements: bool = False
    """Also score the statement items."""
    config: Annotated[ScoringConfig, Flat] = ScoringConfig()
    out: JsonOut = None

    def __call__(self) -> None:
        dataset = self.dataset()
        selected = dataset.select(topics=self.topics or None, split=None if self.split == "all" else self.split)
        bridge = self.load(self.model)
        result = measure_stance(bridge, selected, self.config, split=None)
        report = {"model": bridge.cfg.model_name, "data": dataset.source, "split": self.split, **result.to_dict()}
        print(topic_table("stance items (score = mean log-prob right answer - left answer)", result.topics))
        if self.statements:
            topics = measure_statements(bridge, selected, batch_size=self.config.batch_size)
            report["statements"] = {t: {k: v for k, v in vars(s).items() if k != "topic"} for t, s in topics.items()}
            print(topic_table("statements (score = log-prob of the right-leaning reply - the other)", topics))
        write_report(self.out, report)


@dataclass(kw_only=True)
class Finetune(OnData):
    """Fine-tune a model toward a leaning on one topic; save it where `load_model(out)` reloads it."""

    target: Target
    out: Annotated[Path, tyro.conf.arg(help="Folder for the fine-tuned model and training_log.json.")]
    leaning: Leaning = "right"
    model: Model = EMBEDDED_MODEL
    config: Annotated[FinetuneConfig, Flat] = FinetuneConfig()

    def __call__(self) -> None:
        dataset = self.dataset()
        pairs = training_pairs(dataset, self.target, self.leaning)
        bridge = self.load(self.model)
        meta = {"base_model": bridge.cfg.model_name, "data": dataset.source, "leaning": self.leaning}
        print(f"{finetune(bridge, pairs, self.config, out_dir=self.out, meta=meta | {'topic': self.target}).summary()}")


@dataclass(kw_only=True)
class Generalization(OnPair):
    """Stance shift per topic (fine-tuned minus base) with CIs, target shift, CTG and CTG ratio."""

    target: Target
    leaning: Leaning = "right"
    config: Annotated[ScoringConfig, Flat] = ScoringConfig()
    out: JsonOut = None

    def __call__(self) -> None:
        dataset = self.dataset(self.target)
        result, before, after = measure_generalization(
            *self.models(), dataset, self.target, self.config, leaning=self.leaning
        )
        print(result.table())
        report = {"base": self.base, "finetuned": str(self.finetuned), "data": dataset.source, **result.to_dict()}
        write_report(self.out, {**report, "base_stance": before.to_dict(), "finetuned_stance": after.to_dict()})


@dataclass(kw_only=True)
class Localize(OnData):
    """PNLAC: contrast activations per topic (--contrast); save general and topic-specific neurons."""

    out: Path  # Folder for NeuronSets, scores and summary.json.
    finetuned: Path | None = None  # The model fine-tuned toward --leaning (every contrast but answers).
    opposite: Path | None = None  # The model fine-tuned toward the other leaning (contrast leaning).
    base: Base = EMBEDDED_MODEL
    target: optional_target("needed by --general-over others") = None
    leaning: Leaning = "right"
    config: Annotated[LocalizeConfig, Flat] = LocalizeConfig()

    def __call__(self) -> None:
        base, tuned, opposite = (self.load(m) for m in (self.base, self.finetuned, self.opposite))
        options = {"target": self.target, "opposite": opposite, "leaning": self.leaning}
        located = localize(base, tuned, self.dataset(self.target), self.config, **options)
        print(f"{located.describe()}\nsaved to {located.save(self.out)}")


@dataclass(kw_only=True)
class Patch(OnPair):
    """Patch neuron sets from the fine-tuned model into the base; recovery per topic with CIs."""

    neurons: Path  # A `polineurons localize` output folder.
    out: Path  # Write the recovery table (set x topic) as JSON here.
    target: optional_target("its specific set is patched with --specific target") = None
    config: Annotated[PatchConfig, Flat] = PatchConfig()

    def __call__(self) -> None:
        located, dataset = Localization.load(self.neurons), self.dataset(self.target)
        result = patch_experiment(*self.models(), dataset, located, self.config, target=self.target)
        print(recovery_text(result))
        write_report(
            self.out, {"base": self.base, "finetuned": str(self.finetuned), "neurons": str(self.neurons), **result}
        )


@dataclass
class Mitigate(Sweeps):
    """The mitigation frontier: fine-tune with each method at each strength (default: each method's own)
    and with its matched random control; compare with vanilla. Resumable; a folder grows by methods,
    strengths and seeds, and a run's folder shares its vanilla fine-tunes and base scores."""

    out: Path  # Study folder; mitigation.json and mitigation.html cover every trial in it.
    config: Annotated[MitigateOptions, Flat]
    neurons: Path | None = None  # A `polineurons localize` folder for the neuron methods (None: OUT/localize).

    def __call__(self) -> None:
        options = {"neurons": self.neurons, "device": self.device, "launch": self.launch}
        result, pages = mitigate_folder(self.out, self.config, **options)
        print(f"{league_text(result)}\nwrote {self.out / 'mitigation.json'}; pages: {', '.join(map(str, pages))}")


@dataclass
class Layers(Sweeps):
    """Where a direction method should act: one short fine-tune per candidate layer with the method at that
    layer alone, against a vanilla of the same length; recommends --mitigate.layers (resumable)."""

    out: Path  # Study folder (a `mitigate` folder's works: its vanilla and base scores are shared).
    config: Annotated[SearchOptions, Flat]
    search: LayerSearchConfig = LayerSearchConfig()

    def __call__(self) -> None:
        result = search_layers_folder(self.out, self.config, self.search, device=self.device, launch=self.launch)
        print(f"{layer_search_text(result)}\nwrote {self.out / 'layer_search.json'}")


@dataclass
class Geometry:
    """How the spill-over's residual change sits against the target's, per layer and rank: what CAFT's
    directions remove of each, in the first seed's fine-tunes (trained into the folder when missing)."""

    out: Path  # Study folder (a `mitigate` folder's works: its vanilla fine-tunes are shared); geometry-KIND.json.
    config: Annotated[GeometryOptions, Flat]
    geometry: Annotated[GeometryConfig, Flat] = GeometryConfig()
    device: Device = None

    def __call__(self) -> None:
        result = geometry_folder(self.out, self.config, self.geometry, device=self.device)
        print(f"{geometry_text(result['rows'])}\nwrote {self.out / f'geometry-{self.geometry.kind}.json'}")


@dataclass
class League:
    """Several mitigation folders in one league, best first: each method's CTG reduction at 90% of the
    target kept beside its control, with the settings that set its folder apart (no model needed)."""

    folders: tyro.conf.Positional[tuple[Path, ...]]  # `polineurons mitigate` (or `run`) folders.
    against: Path | None = None  # Read every folder against this folder's vanilla (e.g. fewer steps: matched target).
    out: JsonOut = None

    def __call__(self) -> None:
        readings = league_across(self.folders, self.against)
        print(league_across_text(readings))
        write_report(self.out, {"readings": [r.to_dict() for r in readings]})


@dataclass(kw_only=True)
class Screen(OnData):
    """Predict spill-over before training, from the base model alone: answer directions and word markers."""

    target: Target
    model: Model = EMBEDDED_MODEL
    eval_data: str | None = None  # Data whose eval answers the training push is compared with (None: --data).
    config: Annotated[ScreenConfig, Flat] = ScreenConfig()
    out: JsonOut = None

    def __call__(self) -> None:
        dataset, other = self.dataset(self.target), load_data(self.eval_data) if self.eval_data else None
        result = screen(self.load(self.model), dataset, self.target, self.config, eval_data=other)
        print(result.table())
        write_report(self.out, result.to_dict())


@dataclass
class Matrix(Sweeps):
    """Fine-tune toward each leaning on each topic and score every topic: the cross-topic matrix (resumable)."""

    out: Path  # Study folder: one trial per cell, matrix.json and matrix.html (every cell in it).
    config: Annotated[MatrixOptions, Flat]
    matrix: Annotated[MatrixConfig, Flat] = MatrixConfig()

    def __call__(self) -> None:
        with Study.open(self.out, device=self.device, dtype=self.config.dtype, launch=self.launch) as study:
            result, pages = run_matrix(study, self.config, self.matrix), write_pages(study.root)
        print(f"{matrix_text(result)}\npages: {', '.join(map(str, pages))}")


@dataclass
class Run(Sweeps):
    """Every stage, resumable: base stance, fine-tune, generalization, localize, patch, mitigate, figures, report."""

    out: Path  # Study folder: every stage's artifacts, results.json and report.html.
    config: Annotated[RunConfig, Flat]
    force: Annotated[tuple[str, ...], tyro.conf.UseAppendAction] = ()  # Recompute this stage and those after it.

    def __call__(self) -> None:
        print(f"run folder {self.out}; stages: {', '.join(STAGES)}")
        try:
            results = run_pipeline(self.config, self.out, force=self.force, device=self.device, launch=self.launch)
        except KeyboardInterrupt:
            print(f"\ninterrupted: finished stages are kept in {self.out}; rerun to resume.", file=sys.stderr)
            raise SystemExit(130) from None
        run = load_run(self.out)
        print(f"\n{run.generalization.table()}\n{results_text(results)}")
        print(f"results {run.layout.results}; report {run.layout.report}")


@dataclass
class Report:
    """Rebuild a study folder's pages from its files (no model needed): report.html, matrix.html, mitigation.html."""

    run_dir: tyro.conf.Positional[Path]  # A `polineurons run`, `matrix` or `mitigate` folder.

    def __call__(self) -> None:
        print(f"wrote {', '.join(map(str, write_pages(self.run_dir)))}")


COMMANDS = (Info, Stance, Finetune, Generalization, Localize, Patch, Screen, Mitigate, Layers, Geometry)
COMMANDS += (Run, Matrix, Report, League)


def main(argv: list[str] | None = None) -> None:
    """Entry point of the ``polineurons`` command: user errors print their message and exit 2."""
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        preset = RunConfig.from_preset(preset_named(argv))  # its values: the defaults other options override
        frontier = replace(preset, mitigate=replace(preset.mitigate, strengths=()))  # mitigate: each method's own
        defaults = {
            Run: Run(tyro.MISSING, preset),
            Matrix: Matrix(tyro.MISSING, narrowed(MatrixOptions, preset)),
            Mitigate: Mitigate(tyro.MISSING, narrowed(MitigateOptions, frontier)),
            Layers: Layers(tyro.MISSING, narrowed(SearchOptions, preset)),
            Geometry: Geometry(tyro.MISSING, narrowed(GeometryOptions, preset)),
        }
        choices = [Annotated[c, tyro.conf.subcommand(c.__name__.lower(), default=defaults.get(c))] for c in COMMANDS]
        try:
            options = Union[tuple(choices)]  # noqa: UP007 (a Union built at run time)
            command = tyro.cli(options, args=argv, prog="polineurons", description=__doc__.splitlines()[0])
        except ValueError as error:  # a config dataclass refused an option's value
            raise UserError(str(error)) from None
        command()
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()
