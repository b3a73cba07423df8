"""`polineurons` command line: measure, localize and mitigate political-stance cross-topic generalization.

Each command is a dataclass whose fields are its options. tyro builds the parser from them and from
the stage config dataclasses they nest, so a setting's default, choices and help text live once, in
the library's config; the commands only load inputs, call the library and print.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal, Union

import tyro

from polineurons.artifacts import load_run, results_text
from polineurons.config import RunConfig
from polineurons.data import DataError, load_data
from polineurons.errors import UserError
from polineurons.experiment import STAGES, run_pipeline
from polineurons.finetune import FinetuneConfig, finetune, training_pairs
from polineurons.generalization import measure_generalization
from polineurons.inhibitft import InhibitConfig, comparison_text, plan_variants, run_inhibitft
from polineurons.io import write_json
from polineurons.models import EMBEDDED_MODEL, generate_answer, load_model, model_summary
from polineurons.neurons import NeuronSet
from polineurons.patching import PatchConfig, patch_experiment, recovery_text
from polineurons.pnlac import Localization, LocalizeConfig, localize
from polineurons.report import write_report
from polineurons.stance import StanceConfig, measure_stance, score_statements, summarize, topic_table

Flat = tyro.conf.arg(name="")  # a nested config's options without a prefix: --top-k, not --config.top-k
Model = Annotated[
    str, tyro.conf.arg(aliases=("-m",), help="embedded (default), tiny-llama, tiny-gemma3, a folder or hub id.")
]
Base = Annotated[str, tyro.conf.arg(help="Base model (default: the embedded model).")]
Device = Annotated[str | None, tyro.conf.arg(help="cpu, cuda, ... (default: cuda if available).")]
Data = Annotated[str, tyro.conf.arg(help="'bundled', a JSONL file or folder, an IDEOINST-style folder, or hf:NAME.")]
Target = Annotated[str, tyro.conf.arg(help="The fine-tuning topic.")]
JsonOut = Annotated[Path | None, tyro.conf.arg(help="Write the results as JSON here.")]
Leaning = Literal["left", "right"]


def _dataset(data: str, target: str | None = None):
    dataset = load_data(data)
    if target is not None and target not in dataset.topics:
        raise DataError(f"Unknown target topic '{target}'; topics in {dataset.source}: {', '.join(dataset.topics)}.")
    return dataset


def _write(out: Path | None, report: dict) -> None:
    if out is not None:
        write_json(out, report)
        print(f"wrote {out}")


@dataclass(kw_only=True)
class _OnData:
    data: Data = "bundled"
    device: Device = None


@dataclass(kw_only=True)
class _OnPair(_OnData):
    """A command that compares a fine-tuned model with its base."""

    finetuned: Path
    base: Base = EMBEDDED_MODEL

    def models(self):
        return load_model(self.base, device=self.device), load_model(self.finetuned, device=self.device)


@dataclass
class Info:
    """Load a model and print its shape, tokenizer set-up and where it is cached."""

    model: Model = EMBEDDED_MODEL
    device: Device = None

    def __call__(self) -> None:
        rows = model_summary(load_model(self.model, device=self.device))
        print("\n".join(f"{key:<{max(map(len, rows))}}  {value}" for key, value in rows.items()))


@dataclass
class Generate:
    """Greedy answer of a model to one question, formatted with its chat template."""

    question: tyro.conf.Positional[str]
    model: Model = EMBEDDED_MODEL
    max_new_tokens: int = 64
    device: Device = None

    def __call__(self) -> None:
        print(
            generate_answer(
                load_model(self.model, device=self.device), self.question, max_new_tokens=self.max_new_tokens
            )
        )


@dataclass(kw_only=True)
class Stance(_OnData):
    """Score a model's stance per topic (positive = leans right) with bootstrap 95% CIs."""

    model: Model = EMBEDDED_MODEL
    topics: tuple[str, ...] = ()
    """Topics to score (default: all)."""
    split: Literal["train", "eval", "all"] = "eval"
    statements: bool = False
    """Also score the statement items."""
    config: Annotated[StanceConfig, Flat] = StanceConfig()
    out: JsonOut = None

    def __call__(self) -> None:
        dataset = _dataset(self.data)
        selected = dataset.select(topics=self.topics or None, split=None if self.split == "all" else self.split)
        bridge = load_model(self.model, device=self.device)
        result = measure_stance(bridge, selected, self.config, split=None)
        report = {"model": bridge.cfg.model_name, "data": dataset.source, "split": self.split, **result.to_dict()}
        print(topic_table("stance items (score = mean log-prob right answer - left answer)", result.topics))
        if self.statements and not selected.statements:
            print(f"{dataset.source} has no statement items.", file=sys.stderr)
        elif self.statements:
            topics = summarize(score_statements(bridge, selected.statements, batch_size=self.config.batch_size))
            report["statements"] = {t: {k: v for k, v in vars(s).items() if k != "topic"} for t, s in topics.items()}
            print(topic_table("statements (score = log-prob of the right-leaning reply - the other)", topics))
        _write(self.out, report)


@dataclass(kw_only=True)
class Finetune(_OnData):
    """Fine-tune a model toward a leaning on one topic; save it where `load_model(out)` reloads it."""

    topic: str
    """Topic to fine-tune on (its train split)."""
    out: Path
    """Folder for the fine-tuned model and training_log.json."""
    leaning: Leaning = "right"
    model: Model = EMBEDDED_MODEL
    config: Annotated[FinetuneConfig, Flat] = FinetuneConfig()

    def __call__(self) -> None:
        dataset = _dataset(self.data)
        pairs = training_pairs(dataset, self.topic, self.leaning)
        bridge = load_model(self.model, device=self.device)
        meta = {
            "base_model": bridge.cfg.model_name,
            "data": dataset.source,
            "topic": self.topic,
            "leaning": self.leaning,
        }
        print(f"{finetune(bridge, pairs, self.config, out_dir=self.out, meta=meta).summary()}. Saved to {self.out}")


@dataclass(kw_only=True)
class Generalization(_OnPair):
    """Stance shift per topic (fine-tuned minus base) with CIs, target shift, CTG and CTG ratio."""

    target: Target
    config: Annotated[StanceConfig, Flat] = StanceConfig()
    out: JsonOut = None

    def __call__(self) -> None:
        dataset = _dataset(self.data, self.target)
        result, before, after = measure_generalization(*self.models(), dataset, self.target, self.config)
        print(result.table())
        report = {"base": self.base, "finetuned": str(self.finetuned), "data": dataset.source, **result.to_dict()}
        _write(self.out, {**report, "base_stance": before.to_dict(), "finetuned_stance": after.to_dict()})


@dataclass(kw_only=True)
class Localize(_OnPair):
    """PNLAC: contrast base and fine-tuned activations per topic; save general and topic-specific neurons."""

    out: Path
    """Folder for NeuronSets, scores and summary.json."""
    config: Annotated[LocalizeConfig, Flat] = LocalizeConfig()

    def __call__(self) -> None:
        located = localize(*self.models(), _dataset(self.data), self.config)
        located.save(self.out)
        print(f"{located.describe()}\nsaved to {self.out}")


@dataclass(kw_only=True)
class Patch(_OnPair):
    """Patch neuron sets from the fine-tuned model into the base; recovery per topic with CIs."""

    neurons: Path
    """A `polineurons localize` output folder."""
    out: Path
    """Write the recovery table (set x topic) as JSON here."""
    target: Target | None = None
    config: Annotated[PatchConfig, Flat] = PatchConfig()

    def __call__(self) -> None:
        located, dataset = Localization.load(self.neurons), _dataset(self.data, self.target)
        result = patch_experiment(*self.models(), dataset, located, self.config, target=self.target)
        print(recovery_text(result))
        _write(self.out, {"base": self.base, "finetuned": str(self.finetuned), "neurons": str(self.neurons), **result})


@dataclass(kw_only=True)
class Inhibitft(_OnData):
    """InhibitFT vs vanilla fine-tuning (and a random control): target shift kept and CTG reduction."""

    target: Target
    neurons: Path
    """A `polineurons localize` folder, or one NeuronSet file to inhibit as is."""
    out: Path
    """Folder for per-run results and summary.json (reruns resume)."""
    base: Base = EMBEDDED_MODEL
    leaning: Leaning = "right"
    config: Annotated[InhibitConfig, Flat] = InhibitConfig()
    seeds: tuple[int, ...] = (0,)
    """Training seeds (one vanilla run per seed)."""
    finetune: FinetuneConfig = FinetuneConfig()
    stance: StanceConfig = StanceConfig()

    def __call__(self) -> None:
        if (self.neurons / "summary.json").is_file():
            ranked = Localization.load(self.neurons).top_general
        else:
            ranked = (lambda fixed: lambda _percent: fixed)(NeuronSet.load(self.neurons))
        dataset = _dataset(self.data, self.target)
        load = lambda: load_model(self.base, device=self.device)  # noqa: E731
        load()  # fail early on a bad model name
        variants = plan_variants(ranked, self.config, seeds=self.seeds)
        options = {"leaning": self.leaning, "config": self.finetune, "stance": self.stance}
        summary = run_inhibitft(load, dataset, self.target, variants, self.out, **options)
        print(f"{comparison_text(summary)}\nwrote {self.out / 'summary.json'}")


@dataclass
class Run:
    """Every stage, resumable: base stance, fine-tune, generalization, localize, patch, InhibitFT, figures, report."""

    out: Path
    """Run folder: every stage's artifacts, results.json and report.html."""
    config: Annotated[RunConfig, Flat]
    force: Annotated[tuple[str, ...], tyro.conf.UseAppendAction] = ()
    """Recompute this stage and the stages after it (repeatable)."""
    device: Device = None

    def __call__(self) -> None:
        print(f"run folder {self.out}; stages: {', '.join(STAGES)}")
        try:
            results = run_pipeline(self.config, self.out, force=self.force, device=self.device)
        except KeyboardInterrupt:
            print(f"\ninterrupted: finished stages are kept in {self.out}; rerun to resume.", file=sys.stderr)
            raise SystemExit(130) from None
        run = load_run(self.out)
        print(f"\n{run.generalization.table()}\n{results_text(results)}")
        print(f"results {run.layout.results}; report {run.layout.report}")


@dataclass
class Report:
    """Rebuild DIR/report.html from a run folder's artifacts (no model needed)."""

    run_dir: tyro.conf.Positional[Path]

    def __call__(self) -> None:
        print(f"wrote {write_report(load_run(self.run_dir), self.run_dir / 'report.html')}")


COMMANDS = (Info, Generate, Stance, Finetune, Generalization, Localize, Patch, Inhibitft, Run, Report)


def _preset(argv: list[str]) -> RunConfig:
    """The preset named by ``--preset``: the defaults that ``run``'s other options override."""
    name = next((v for k, v in zip(argv, argv[1:], strict=False) if k == "--preset"), "quick")
    name = next((a.split("=", 1)[1] for a in argv if a.startswith("--preset=")), name)
    return RunConfig.from_preset(name)


def main(argv: list[str] | None = None) -> None:
    """Entry point of the ``polineurons`` command: user errors print their message and exit 2."""
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        defaults = {Run: Run(out=tyro.MISSING, config=_preset(argv))}
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
