"""Stance items, statement items, and the dataset that holds them."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Sequence
from dataclasses import astuple, dataclass, replace
from functools import cached_property

from polineurons.errors import UserError

TOPICS = (
    "crime_and_gun",
    "economy_and_inequality",
    "gender_and_sexuality",
    "immigration",
    "race",
    "science",
)
LEANINGS = ("left", "right")
SPLITS = ("train", "eval")


class DataError(UserError, ValueError):
    """Bad or missing data; the message names the file (and line) at fault."""


def check_leaning(leaning: str) -> str:
    if leaning not in LEANINGS:
        raise DataError(f"Unknown leaning '{leaning}': use one of {', '.join(LEANINGS)}.")
    return leaning


@dataclass(frozen=True)
class StanceItem:
    """A question with a left-leaning and a right-leaning answer."""

    id: str
    topic: str
    question: str
    left: str
    right: str
    split: str | None = "train"  # None only while a loader is still assigning the split
    question_type: str | None = None

    def answer(self, leaning: str) -> str:
        return self.left if check_leaning(leaning) == "left" else self.right

    def swapped(self) -> StanceItem:
        """The same item with the two answers exchanged (its stance score is negated)."""
        return replace(self, left=self.right, right=self.left)


@dataclass(frozen=True)
class StatementItem:
    """A short political statement; agreeing with it expresses ``agree_leaning``."""

    id: str
    topic: str
    statement: str
    agree_leaning: str


@dataclass(frozen=True)
class StanceDataset:
    """Stance items (and optionally statements) grouped by topic, with a fixed train/eval split."""

    items: tuple[StanceItem, ...]
    statements: tuple[StatementItem, ...] = ()
    source: str = ""
    skipped: int = 0  # bad lines skipped on request while loading (never silently)

    @property
    def topics(self) -> list[str]:
        """Topics in first-seen order."""
        return list(dict.fromkeys([item.topic for item in self.items] + [s.topic for s in self.statements]))

    def __len__(self) -> int:
        return len(self.items)

    def select(
        self,
        *,
        topics: Iterable[str] | None = None,
        split: str | None = None,
        max_items: int | None = None,
    ) -> StanceDataset:
        """A subset: only ``topics`` (unknown names raise), only ``split``, at most ``max_items``
        per topic (the first ones, so the choice is stable)."""
        if split is not None and split not in SPLITS:
            raise DataError(f"Unknown split '{split}': use one of {', '.join(SPLITS)}.")
        if max_items is not None and max_items < 1:
            raise DataError(f"max_items must be at least 1, got {max_items}.")
        wanted = list(self.topics) if topics is None else list(topics)
        unknown = [t for t in wanted if t not in self.topics]
        if unknown:
            raise DataError(
                f"Unknown topic(s) {', '.join(unknown)} in {self.source or 'the data'}; "
                f"available: {', '.join(self.topics)}."
            )
        items: list[StanceItem] = []
        for topic in wanted:
            chosen = [i for i in self.items if i.topic == topic and (split is None or i.split == split)]
            items.extend(chosen[:max_items] if max_items else chosen)
        statements = tuple(s for s in self.statements if s.topic in wanted)
        return replace(self, items=tuple(items), statements=statements)

    @cached_property
    def identity(self) -> dict[str, str]:
        """Its name and a hash of every stance item's text, topic and split (computed once): the same
        name with edited contents (a user's JSONL file changed between two runs) is other data."""
        text = json.dumps([astuple(item) for item in self.items], ensure_ascii=False)
        return {"source": self.source, "fingerprint": hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]}

    def counts(self) -> dict[str, dict[str, int]]:
        """``topic -> {split: n}``."""
        table: dict[str, dict[str, int]] = {}
        for item in self.items:
            row = table.setdefault(item.topic, {s: 0 for s in SPLITS})
            row[item.split] = row.get(item.split, 0) + 1
        return table


def assign_split(ids: Sequence[str], eval_size: int, seed: int, *, topic: str = "a topic") -> dict[str, str]:
    """Seeded split of one topic's item ids: ``eval_size`` go to eval, the rest to train."""
    import random

    if eval_size < 0:
        raise DataError(f"eval_size must be >= 0, got {eval_size}.")
    if eval_size >= len(ids):
        raise DataError(
            f"eval_size {eval_size} leaves no training items in topic '{topic}' ({len(ids)} items); "
            "choose a smaller eval size."
        )
    order = sorted(ids)
    random.Random(seed).shuffle(order)
    held_out = set(order[:eval_size])
    return {i: ("eval" if i in held_out else "train") for i in ids}
