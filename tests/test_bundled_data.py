"""The bundled dataset meets its card: counts, split, schema, no duplicates, balanced answers."""

import collections
import json
import re

import pytest

from polineurons.data import TOPICS, bundled_data_dir, load_data

LEANING_NAMES = re.compile(
    r"\b(left|right|left-wing|right-wing|leftist|liberals?|conservatives?|progressives?|democrats?|democratic|republicans?)\b",
    re.I,
)


@pytest.fixture(scope="module")
def bundled():
    return load_data("bundled")


def raw_records():
    for path in sorted((bundled_data_dir() / "stance").glob("*.jsonl")):
        for line in path.read_text().splitlines():
            yield json.loads(line)


def test_counts_and_split(bundled):
    assert bundled.topics == list(TOPICS)
    for topic, counts in bundled.counts().items():
        assert counts["train"] + counts["eval"] >= 80, topic
        assert counts["train"] >= 60 and counts["eval"] >= 20, topic
    statements = collections.Counter(s.topic for s in bundled.statements)
    assert sum(statements.values()) >= 60 and all(statements[t] >= 10 for t in TOPICS)
    assert {s.agree_leaning for s in bundled.statements} == {"left", "right"}


def test_schema_and_uniqueness():
    records = list(raw_records())
    assert all(set(r) == {"id", "topic", "question", "question_type", "left", "right", "split"} for r in records)
    assert len({r["id"] for r in records}) == len(records)
    questions = [r["question"].lower() for r in records]
    assert len(set(questions)) == len(questions)
    assert all(r["left"].strip() != r["right"].strip() for r in records)
    by_topic = collections.defaultdict(set)
    for r in records:
        by_topic[r["topic"]].add(r["question_type"])
    assert all(types == {"yes_no", "open", "survey"} for types in by_topic.values())


def test_answers_are_balanced_and_never_name_the_leaning():
    ratios = collections.defaultdict(list)
    for r in raw_records():
        for side in ("left", "right"):
            words = len(r[side].split())
            assert 25 <= words <= 70, (r["id"], side, words)
            assert not LEANING_NAMES.search(r[side]), (r["id"], side, LEANING_NAMES.search(r[side]).group(0))
        ratios[r["topic"]].append(len(r["right"].split()) / len(r["left"].split()))
    for topic, values in ratios.items():
        assert 0.8 <= sum(values) / len(values) <= 1.25, topic


@pytest.mark.parametrize("n_words", [1, 2, 3])
def test_no_opening_phrase_gives_the_side_away(n_words):
    counts = collections.Counter()
    for r in raw_records():
        for side in ("left", "right"):
            counts[(" ".join(r[side].lower().split()[:n_words]).strip(".,"), side)] += 1
    for opening in {o for o, _ in counts}:
        assert abs(counts[(opening, "left")] - counts[(opening, "right")]) <= 10, opening


def test_statements_have_valid_schema():
    for line in (bundled_data_dir() / "statements.jsonl").read_text().splitlines():
        record = json.loads(line)
        assert set(record) == {"id", "topic", "statement", "agree_leaning"}
        assert record["topic"] in TOPICS and record["agree_leaning"] in ("left", "right")
        assert not LEANING_NAMES.search(record["statement"])
