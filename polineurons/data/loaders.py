"""Load stance data: the bundled files, our JSONL schema, IDEOINST-style folders, Hugging Face ``datasets``.

Every error names the file and line at fault. Nothing is dropped silently: bad lines raise, unless
``skip_bad_lines=True``, in which case the dataset's ``skipped`` count says how many were dropped.
"""

from __future__ import annotations

import json
import os
import re
import warnings
from collections.abc import Iterator, Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

from polineurons.data.items import (
    LEANINGS,
    SPLITS,
    DataError,
    StanceDataset,
    StanceItem,
    StatementItem,
    assign_split,
)

BUNDLED = "bundled"  # the default bundled data set
DATASETS = {
    "voices": "v2: one partisan voice per leaning reasoning from general values (default)",
    "arguments": "v1: short topic-specific arguments",
    "crosscheck": "check set: partisan survey answers in IDEOINST's form, written independently of voices",
    "briefs": "check set: impersonal policy briefs (no first person), written independently of voices",
}
CHECK_SETS = ("crosscheck", "briefs")  # evaluation only: every item is in the eval split
DEFAULT_DATASET = "voices"
_IDEOINST_FILE = re.compile(r"^(?P<topic>.+)_(?P<leaning>left|right)\.jsonl$")
_STANCE_FIELDS = ("topic", "question", "left", "right")


def bundled_data_dir() -> Path:
    """The project's ``data/`` folder (``$POLINEURONS_DATA`` overrides it)."""
    if env := os.environ.get("POLINEURONS_DATA"):
        return Path(env).expanduser()
    return Path(__file__).resolve().parents[2] / "data"


def load_data(
    spec: str | os.PathLike | Any = DEFAULT_DATASET,
    *,
    eval_size: int = 20,
    seed: int = 0,
    skip_bad_lines: bool = False,
    columns: Mapping[str, str] | None = None,
    split: str | None = None,
) -> StanceDataset:
    """Load stance data from ``spec``.

    Args:
        spec: a bundled data set — ``"voices"`` (default; ``"bundled"`` is the same), ``"arguments"``,
            or the check sets ``"crosscheck"`` and ``"briefs"`` (see ``DATASETS``) — a ``.jsonl`` file or
            folder in our schema, an IDEOINST-style folder (``{topic}_left.jsonl`` /
            ``{topic}_right.jsonl``), ``"hf:NAME"`` for a Hugging Face dataset, or a ``datasets.Dataset``
            or ``DatasetDict`` object (see :func:`load_hf`).
        eval_size: items per topic held out for evaluation, for sources without a fixed split
            (seeded, so evaluation never sees training items).
        seed: seed of that split.
        skip_bad_lines: skip malformed lines instead of raising; the count is reported.
        columns: column mapping for Hugging Face sources.
        split: which split of a Hugging Face DatasetDict to read (default: see :func:`load_hf`).

    Examples:
        >>> load_data("voices").topics[:2]
        ['crime_and_gun', 'economy_and_inequality']
    """
    if not isinstance(spec, str | os.PathLike):
        return load_hf(spec, columns=columns, split=split, eval_size=eval_size, seed=seed)
    text = DEFAULT_DATASET if str(spec) == BUNDLED else str(spec)
    if text in DATASETS:
        root = bundled_data_dir()
        if not (root / text).is_dir():
            raise DataError(
                f"Bundled data set '{text}' not found in {root}: it ships with the polineurons source checkout "
                "(set POLINEURONS_DATA to its data/ folder)."
            )
        if text in CHECK_SETS:  # never trained on, so every item is eval
            dataset = load_ideoinst(root / text, eval_size=0, seed=seed, source=text)
            return replace(dataset, items=tuple(replace(item, split="eval") for item in dataset.items))
        dataset = load_jsonl(root / text, eval_size=eval_size, seed=seed, skip_bad_lines=skip_bad_lines, source=text)
        return replace(dataset, statements=_load_statements(root, skip_bad_lines, [0]))
    if text.startswith("hf:"):
        return load_hf(text[3:], columns=columns, split=split, eval_size=eval_size, seed=seed)
    path = Path(text).expanduser()
    if not path.exists():
        raise DataError(
            f"Data not found: {path} (expected one of {', '.join(DATASETS)}, 'hf:NAME', a .jsonl file or a folder)."
        )
    if path.is_dir() and any(_IDEOINST_FILE.match(p.name) for p in path.iterdir()):
        return load_ideoinst(path, eval_size=eval_size, seed=seed, skip_bad_lines=skip_bad_lines)
    return load_jsonl(path, eval_size=eval_size, seed=seed, skip_bad_lines=skip_bad_lines)


def load_neutral() -> list[tuple[str, str]]:
    """The bundled neutral, non-political ``(prompt, response)`` pairs (``data/neutral.jsonl``): text
    whose likelihood measures what a political fine-tune costs the model elsewhere."""
    path = bundled_data_dir() / "neutral.jsonl"
    if not path.is_file():
        raise DataError(f"Neutral text not found at {path}: it ships with the polineurons source checkout.")
    return [
        (_text_field(r, "prompt", f"{path}:{n}"), _text_field(r, "response", f"{path}:{n}"))
        for n, r in _records(path, False, [0])
    ]


# ---- our JSONL schema ------------------------------------------------------------------------------


def _records(path: Path, skip_bad_lines: bool, counter: list[int]) -> Iterator[tuple[int, dict]]:
    """``(line_number, record)`` for each non-blank line of a JSONL file."""
    try:
        handle = path.open(encoding="utf-8")
    except OSError as error:
        raise DataError(f"{path}: cannot read ({error.strerror}).") from None
    with handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as error:
                _bad(DataError(f"{path}:{number}: unreadable JSON ({error.msg})."), skip_bad_lines, counter)
                continue
            if not isinstance(record, dict):
                _bad(DataError(f"{path}:{number}: expected a JSON object."), skip_bad_lines, counter)
                continue
            yield number, record


def _bad(error: DataError, skip: bool, counter: list[int]) -> None:
    """Raise ``error``, or count it when the caller asked to skip bad lines."""
    if not skip:
        raise error
    counter[0] += 1


def _text_field(record: dict, key: str, where: str) -> str:
    if key not in record:
        raise DataError(f"{where}: missing field '{key}'.")
    value = record[key]
    if not isinstance(value, str) or not value.strip():
        raise DataError(f"{where}: field '{key}' is empty.")
    return value.strip()


def _stance_jsonl_files(path: Path) -> list[Path]:
    if path.is_file():
        return [path]
    folder = path / "stance" if (path / "stance").is_dir() else path
    files = sorted(folder.glob("*.jsonl"))
    if not files:
        raise DataError(f"{path}: no .jsonl stance files found.")
    return files


def load_jsonl(
    path: str | os.PathLike,
    *,
    eval_size: int = 20,
    seed: int = 0,
    skip_bad_lines: bool = False,
    source: str | None = None,
) -> StanceDataset:
    """Read stance items in our schema (one JSON object per line: ``topic``, ``question``, ``left``,
    ``right``; optional ``id``, ``split``, ``question_type``) from a file or a folder of files.
    A folder may also hold ``statements.jsonl`` (``topic``, ``statement``, ``agree_leaning``).

    Items without a ``split`` are split per topic with ``eval_size`` and ``seed``.
    """
    path = Path(path)
    skipped = [0]
    items: list[StanceItem] = []
    seen_questions: dict[tuple[str, str], str] = {}
    for file in _stance_jsonl_files(path):
        if file.name == "statements.jsonl":
            continue
        for number, record in _records(file, skip_bad_lines, skipped):
            where = f"{file}:{number}"
            try:
                item = _item_from_record(record, where, f"{file.stem}-{number}")
                key = (item.topic, item.question)
                if key in seen_questions:
                    raise DataError(f"{where}: duplicate question (first seen at {seen_questions[key]}).")
            except DataError as error:
                _bad(error, skip_bad_lines, skipped)
                continue
            seen_questions[key] = where
            items.append(item)
    items = _fill_splits(items, str(path), eval_size, seed)
    statements = _load_statements(path, skip_bad_lines, skipped) if path.is_dir() else ()
    return _finish(items, statements, source or str(path), skipped[0])


def _item_from_record(record: Mapping[str, Any], where: str, fallback_id: str) -> StanceItem:
    """Validate one record of our schema. An item that names no split gets ``split=None`` until
    :func:`_fill_splits` assigns one."""
    fields = {key: _text_field(record, key, where) for key in _STANCE_FIELDS}
    if fields["left"] == fields["right"]:
        raise DataError(f"{where}: the left and right answers are identical.")
    split = record.get("split")
    if split is not None and split not in SPLITS:
        raise DataError(f"{where}: split must be one of {', '.join(SPLITS)}, got {split!r}.")
    return StanceItem(
        id=str(record.get("id") or f"{fields['topic']}-{fallback_id}"),
        split=split,
        question_type=record.get("question_type"),
        **fields,
    )


def _fill_splits(items: list[StanceItem], source: str, eval_size: int, seed: int) -> list[StanceItem]:
    """Give items without a split a seeded per-topic train/eval split; refuse an empty list."""

    if not items:
        raise DataError(f"{source}: no stance items.")
    by_topic: dict[str, list[int]] = {}
    for index, item in enumerate(items):
        if item.split is None:
            by_topic.setdefault(item.topic, []).append(index)
    for topic, topic_indices in by_topic.items():
        splits = assign_split([items[i].id for i in topic_indices], eval_size, seed, topic=topic)
        for i in topic_indices:
            items[i] = replace(items[i], split=splits[items[i].id])
    return items


def _load_statements(folder: Path, skip_bad_lines: bool, skipped: list[int]) -> tuple[StatementItem, ...]:
    file = folder / "statements.jsonl"
    if not file.is_file():
        return ()
    statements = []
    for number, record in _records(file, skip_bad_lines, skipped):
        where = f"{file}:{number}"
        try:
            topic = _text_field(record, "topic", where)
            text = _text_field(record, "statement", where)
            leaning = _text_field(record, "agree_leaning", where)
            if leaning not in LEANINGS:
                raise DataError(f"{where}: agree_leaning must be 'left' or 'right', got {leaning!r}.")
        except DataError as error:
            _bad(error, skip_bad_lines, skipped)
            continue
        statements.append(StatementItem(str(record.get("id") or f"{topic}-s{number}"), topic, text, leaning))
    return tuple(statements)


def _finish(items, statements, source: str, skipped: int) -> StanceDataset:
    if skipped:
        warnings.warn(f"{source}: skipped {skipped} bad line(s).", stacklevel=3)
    return StanceDataset(tuple(items), tuple(statements), source=source, skipped=skipped)


# ---- IDEOINST-style folders ------------------------------------------------------------------------


def load_ideoinst(
    folder: str | os.PathLike,
    *,
    eval_size: int = 20,
    seed: int = 0,
    skip_bad_lines: bool = False,
    source: str | None = None,
) -> StanceDataset:
    """Read an IDEOINST-style folder: per topic ``{topic}_left.jsonl`` and ``{topic}_right.jsonl``,
    one ``{"prompt": ..., "completion": ...}`` per line, aligned line by line (same prompt).
    Topics come from the file names; ``eval_size`` items per topic are held out (seeded)."""
    folder = Path(folder)
    pairs: dict[str, dict[str, Path]] = {}
    for file in sorted(folder.iterdir()):
        if match := _IDEOINST_FILE.match(file.name):
            pairs.setdefault(match["topic"], {})[match["leaning"]] = file
    if not pairs:
        raise DataError(f"{folder}: no {{topic}}_left.jsonl / {{topic}}_right.jsonl files.")
    skipped = [0]
    items: list[StanceItem] = []
    for topic, files in pairs.items():
        missing = [leaning for leaning in LEANINGS if leaning not in files]
        if missing:
            raise DataError(f"{folder}: topic '{topic}' has no {topic}_{missing[0]}.jsonl to pair with.")
        rows = {leaning: _ideoinst_rows(files[leaning]) for leaning in LEANINGS}
        if len(rows["left"]) != len(rows["right"]):
            raise DataError(
                f"{files['left']} has {len(rows['left'])} lines but {files['right']} has "
                f"{len(rows['right'])}: the two files must be aligned line by line."
            )
        topic_items = []
        for (number, left), (_, right) in zip(rows["left"], rows["right"], strict=True):
            where = f"{files['left']}:{number} / {files['right']}:{number}"
            try:
                question = _text_field(left, "prompt", f"{files['left']}:{number}")
                if _text_field(right, "prompt", f"{files['right']}:{number}") != question:
                    raise DataError(f"{where}: misaligned lines, the two prompts differ.")
                left_answer = _text_field(left, "completion", f"{files['left']}:{number}")
                right_answer = _text_field(right, "completion", f"{files['right']}:{number}")
                if left_answer == right_answer:
                    raise DataError(f"{where}: the left and right completions are identical.")
            except DataError as error:
                _bad(error, skip_bad_lines, skipped)
                continue
            topic_items.append(StanceItem(f"{topic}-{number:04d}", topic, question, left_answer, right_answer, None))
        items.extend(_fill_splits(topic_items, f"{folder} (topic '{topic}')", eval_size, seed))
    return _finish(items, (), source or str(folder), skipped[0])


def _ideoinst_rows(file: Path) -> list[tuple[int, dict]]:
    """All lines (blank ones too would break the alignment, so they are errors)."""
    rows = []
    try:
        lines = file.read_text(encoding="utf-8").splitlines()
    except OSError as error:
        raise DataError(f"{file}: cannot read ({error.strerror}).") from None
    while lines and not lines[-1].strip():
        lines.pop()
    for number, line in enumerate(lines, start=1):
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            raise DataError(f"{file}:{number}: unreadable JSON ({error.msg}).") from None
        if not isinstance(record, dict):
            raise DataError(f"{file}:{number}: expected a JSON object.")
        rows.append((number, record))
    if not rows:
        raise DataError(f"{file}: empty topic file.")
    return rows


# ---- Hugging Face datasets -------------------------------------------------------------------------

DEFAULT_COLUMNS = {"topic": "topic", "question": "question", "left": "left", "right": "right"}


HELD_OUT_SPLITS = ("eval", "validation", "test")  # a DatasetDict's split that becomes our eval split


def _hf_parts(dataset: Any, split: str | None, name: str) -> list[tuple[Any, str | None]]:
    """The ``datasets.Dataset`` parts to read, each with the split its items get (None: ours, seeded):
    a Dataset whole; a DatasetDict's ``split``; else its train split as train and its eval, validation
    or test split as eval; else its only split."""
    import datasets

    if not isinstance(dataset, datasets.DatasetDict):
        if split is not None:
            raise DataError(f"{name}: split={split!r} chooses a split of a DatasetDict; this is one Dataset.")
        return [(dataset, None)]
    splits = list(dataset)
    if split is not None:
        if split not in dataset:
            raise DataError(f"{name}: no split {split!r}; its splits are {', '.join(splits)}.")
        return [(dataset[split], None)]
    held_out = [s for s in HELD_OUT_SPLITS if s in dataset]
    if "train" in dataset and held_out:
        return [(dataset["train"], "train"), (dataset[held_out[0]], "eval")]
    if len(splits) == 1:
        return [(dataset[splits[0]], None)]
    raise DataError(f"{name}: a DatasetDict with splits {', '.join(splits)}: choose one with split=.")


def load_hf(
    dataset: Any,
    *,
    columns: Mapping[str, str] | None = None,
    split: str | None = None,
    eval_size: int = 20,
    seed: int = 0,
) -> StanceDataset:
    """Stance items from a Hugging Face ``datasets.Dataset`` or ``DatasetDict``, or a dataset name (needs
    the network or the HF cache). ``columns`` maps our fields (``topic``, ``question``, ``left``,
    ``right``, and optionally ``split``) to the dataset's column names. Of a DatasetDict (a name loads
    one): ``split`` if given (our train/eval split is then drawn from it); else its ``train`` split for
    training and its ``eval``, ``validation`` or ``test`` split for evaluation; else its only split.

    Examples:
        >>> rows = [{"issue": "tax", "prompt": "Raise taxes?", "dem": "Yes.", "rep": "No."}]
        >>> columns = {"topic": "issue", "question": "prompt", "left": "dem", "right": "rep"}
        >>> load_hf(datasets.Dataset.from_list(rows * 3), columns=columns, eval_size=1).counts()
        {'tax': {'train': 2, 'eval': 1}}
    """
    mapping = {**DEFAULT_COLUMNS, **(columns or {})}
    name = f"hf:{dataset}" if isinstance(dataset, str) else _hf_name(dataset)
    if isinstance(dataset, str):
        import datasets

        try:
            dataset = datasets.load_dataset(dataset)
        except Exception as error:  # datasets raises many types for "not available"
            raise DataError(f"{name}: cannot load the dataset ({error}).") from error
    items = []
    for part, fixed in _hf_parts(dataset, split, name):
        missing = [column for key, column in mapping.items() if key != "split" and column not in part.column_names]
        if missing:
            raise DataError(f"{name}: missing column(s) {missing}; columns are {part.column_names}.")
        for row in part:
            number = len(items) + 1
            record = {key: row[column] for key, column in mapping.items() if column in row}
            record = {**record, "split": fixed} if fixed else record
            items.append(_item_from_record(record, f"{name} row {number}", f"{number:05d}"))
    items = _fill_splits(items, name, eval_size, seed)
    return StanceDataset(tuple(items), (), source=name)


def _hf_name(dataset: Any) -> str:
    """A ``datasets`` object's name as a data source: ``hf:`` and its builder's name, when it has one."""
    parts = dataset.values() if hasattr(dataset, "values") else [dataset]
    info = getattr(next(iter(parts), None), "info", None)
    return f"hf:{getattr(info, 'dataset_name', None) or 'dataset'}"
