"""The bundled data sets meet their card: counts, splits, schema, balance of form between the two
sides, no near-duplicates or templates, and evaluation text that never repeats training text."""

import collections
import itertools
import json
import re

import pytest

from polineurons.data import TOPICS, bundled_data_dir, load_data

LEANING_NAMES = re.compile(
    r"\b(left|right|left-wing|right-wing|leftists?|liberals?|conservatives?|progressives?|democrats?|democratic"
    r"|republicans?|gop|maga)\b",
    re.I,
)
LEADING_ANSWER = re.compile(r"^\W*(yes|no|yeah|nope|absolutely|definitely|of course)( not)?\s*[.,!;]", re.I)
FIRST_PERSON = re.compile(r"\b(i|i'm|i've|i'd|my|me|we|our|us)\b", re.I)


def records(name: str) -> list[dict]:
    return [json.loads(line) for path in sorted((bundled_data_dir() / name).glob("*.jsonl")) for line in path.open()]


def words(text: str) -> list[str]:
    return re.findall(r"[a-z']+", text.lower())


def ngrams(text: str, n: int) -> set[tuple[str, ...]]:
    tokens = words(text)
    return {tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1)}


def opening_gaps(rows: list[dict], n_words: int) -> dict[str, int]:
    counts = collections.Counter()
    for r in rows:
        for side in ("left", "right"):
            counts[(" ".join(r[side].lower().split()[:n_words]).strip(".,;:"), side)] += 1
    return {o: abs(counts[(o, "left")] - counts[(o, "right")]) for o, _ in counts}


# ---- shared guarantees of both stance data sets ----------------------------------------------------


@pytest.mark.parametrize("name", ["voices", "arguments"])
def test_ids_questions_and_answers_are_unique_and_never_name_the_leaning(name):
    rows = records(name)
    assert len({r["id"] for r in rows}) == len(rows)
    questions = [r["question"].lower() for r in rows]
    assert len(set(questions)) == len(questions)
    for r in rows:
        assert r["left"].strip() != r["right"].strip()
        for text in (r["question"], r["left"], r["right"]) if name == "voices" else (r["left"], r["right"]):
            assert not LEANING_NAMES.search(text), (r["id"], LEANING_NAMES.search(text).group(0))
        for side in ("left", "right"):
            assert not LEADING_ANSWER.search(r[side]), (r["id"], side)


@pytest.mark.parametrize("name", ["voices", "arguments"])
@pytest.mark.parametrize("n_words", [1, 2, 3])
def test_no_opening_phrase_gives_the_side_away(name, n_words):
    gaps = opening_gaps(records(name), n_words)
    assert max(gaps.values()) <= 10, sorted(gaps.items(), key=lambda kv: -kv[1])[:3]


@pytest.mark.parametrize("name, low, high", [("voices", 35, 90), ("arguments", 25, 70)])
def test_answers_have_similar_lengths(name, low, high):
    ratios = collections.defaultdict(list)
    for r in records(name):
        for side in ("left", "right"):
            assert low <= len(r[side].split()) <= high, (r["id"], side)
        ratios[r["topic"]].append(len(r["right"].split()) / len(r["left"].split()))
    for topic, values in ratios.items():
        assert 0.9 <= sum(values) / len(values) <= 1.1, topic


# ---- v2: partisan voices ---------------------------------------------------------------------------


def test_voices_counts_split_and_schema():
    data = load_data("voices")
    assert data.source == "voices" and load_data().source == "voices" and load_data("bundled").source == "voices"
    assert data.topics == list(TOPICS)
    for topic, counts in data.counts().items():
        assert counts["train"] >= 200 and counts["eval"] >= 40, topic
    rows = records("voices")
    base = {"id", "topic", "question", "question_type", "left", "right", "split"}
    for r in rows:
        assert set(r) == base | ({"option_a"} if r["question_type"] == "survey" else set()), r["id"]
    by_topic = collections.defaultdict(list)
    for r in rows:
        by_topic[r["topic"]].append(r)
    for topic, items in by_topic.items():
        types = collections.Counter(r["question_type"] for r in items)
        assert set(types) == {"yes_no", "open", "survey", "broad"} and min(types.values()) >= 30, (topic, types)
        surveys = [r for r in items if r["question_type"] == "survey"]
        assert all("(A)" in r["question"] and "(B)" in r["question"] for r in surveys)
        sides = collections.Counter(r["option_a"] for r in surveys)
        assert abs(sides["left"] - sides["right"]) <= 2, (topic, sides)  # (A) marks neither side
        first_person = {s: sum(bool(FIRST_PERSON.search(r[s])) for r in items) / len(items) for s in ("left", "right")}
        assert all(0.3 <= share <= 0.75 for share in first_person.values()), (topic, first_person)


@pytest.mark.parametrize("side", ["left", "right"])
def test_voices_have_no_templates_or_near_duplicates(side):
    rows = records("voices")
    grams = [g for r in rows for g in (lambda t: [tuple(t[i : i + 4]) for i in range(len(t) - 3)])(words(r[side]))]
    assert len(set(grams)) / len(grams) >= 0.95  # distinct 4-gram ratio: recurring values, fresh wording
    shingles = [(r["id"], ngrams(r[side], 3)) for r in rows]
    worst = max(((len(a & b) / len(a | b), i, j) for (i, a), (j, b) in itertools.combinations(shingles, 2)))
    assert worst[0] < 0.25, worst  # max pairwise 3-gram Jaccard, across all topics


def test_voices_eval_answers_reuse_no_training_text():
    rows = records("voices")
    train = {g for r in rows if r["split"] == "train" for side in ("left", "right") for g in ngrams(r[side], 8)}
    reused = [
        (r["id"], side)
        for r in rows
        if r["split"] == "eval"
        for side in ("left", "right")
        if ngrams(r[side], 8) & train
    ]
    assert not reused  # no 8-word run of any eval answer appears in any training answer, of any topic


# ---- v1: topic-specific arguments ------------------------------------------------------------------


def test_arguments_counts_split_and_schema():
    data = load_data("arguments")
    assert data.topics == list(TOPICS)
    for topic, counts in data.counts().items():
        assert counts["train"] >= 60 and counts["eval"] >= 20, topic
    statements = collections.Counter(s.topic for s in data.statements)
    assert sum(statements.values()) >= 60 and all(statements[t] >= 10 for t in TOPICS)
    assert {s.agree_leaning for s in data.statements} == {"left", "right"}
    rows = records("arguments")
    assert all(set(r) == {"id", "topic", "question", "question_type", "left", "right", "split"} for r in rows)
    types = collections.defaultdict(set)
    for r in rows:
        types[r["topic"]].add(r["question_type"])
    assert all(t == {"yes_no", "open", "survey"} for t in types.values())


# ---- the independent check set ---------------------------------------------------------------------


@pytest.mark.parametrize("name, low, high, first_person", [("crosscheck", 30, 70, True), ("briefs", 25, 55, False)])
def test_check_sets_are_independent_ideoinst_folders(name, low, high, first_person):
    data = load_data(name)
    assert data.source == name and data.topics == list(TOPICS) and len(data) == 6 * 48
    assert all(item.split == "eval" for item in data.items)  # evaluation only: never trained on
    questions = [i.question.lower() for i in data.items]
    assert len(set(questions)) == len(questions)
    for item in data.items:
        for text in (item.question, item.left, item.right):
            assert not LEANING_NAMES.search(text), item.id
        for answer in (item.left, item.right):
            assert low <= len(answer.split()) <= high and not LEADING_ANSWER.search(answer), item.id
            assert first_person or not FIRST_PERSON.search(answer), item.id
    voices = {g for r in records("voices") for side in ("left", "right") for g in ngrams(r[side], 8)}
    shared = sum(bool(ngrams(a, 8) & voices) for i in data.items for a in (i.left, i.right))
    assert shared <= 0.05 * 2 * len(data), shared  # written apart: few answers share even one 8-word run
    gaps = opening_gaps([{"left": i.left, "right": i.right} for i in data.items], 2)
    assert max(gaps.values()) <= 10


def test_statements_have_valid_schema():
    for line in (bundled_data_dir() / "statements.jsonl").read_text().splitlines():
        record = json.loads(line)
        assert set(record) == {"id", "topic", "statement", "agree_leaning"}
        assert record["topic"] in TOPICS and record["agree_leaning"] in ("left", "right")
        assert not LEANING_NAMES.search(record["statement"])
