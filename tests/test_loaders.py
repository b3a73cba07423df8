import json

import pytest

from polineurons.data import DataError, load_data, load_hf


def write_jsonl(path, rows):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def item(i, topic="t1", **extra):
    return {
        "topic": topic,
        "question": f"Question {i}?",
        "left": f"Left answer {i}.",
        "right": f"Right answer {i}.",
        **extra,
    }


def test_our_schema_from_a_file_with_seeded_split(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [item(i) for i in range(10)] + [item(i, "t2") for i in range(6)])
    data = load_data(path, eval_size=3, seed=1)
    assert data.topics == ["t1", "t2"]
    assert data.counts() == {"t1": {"train": 7, "eval": 3}, "t2": {"train": 3, "eval": 3}}
    again = load_data(path, eval_size=3, seed=1)
    assert [i.split for i in again.items] == [i.split for i in data.items]
    other = load_data(path, eval_size=3, seed=2)
    assert [i.split for i in other.items] != [i.split for i in data.items]


def test_explicit_split_is_kept(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [item(0, split="eval"), item(1, split="train")])
    assert [i.split for i in load_data(path).items] == ["eval", "train"]


@pytest.mark.parametrize(
    "bad, message",
    [
        ({"topic": "t1", "question": "Q?", "left": "L."}, r"d\.jsonl:2: missing field 'right'"),
        ({"topic": "t1", "question": "Q?", "left": "L.", "right": "  "}, r"d\.jsonl:2: field 'right' is empty"),
        (
            {"topic": "t1", "question": "Q?", "left": "Same.", "right": "Same."},
            r"d\.jsonl:2: the left and right answers are identical",
        ),
        ('{"topic": "t1", "question": ', r"d\.jsonl:2: unreadable JSON"),
        ({**item(0)}, r"d\.jsonl:2: duplicate question \(first seen at .*d\.jsonl:1\)"),
        ({**item(5), "split": "test"}, r"d\.jsonl:2: split must be one of train, eval"),
    ],
)
def test_bad_lines_name_file_and_line(tmp_path, bad, message):
    path = write_jsonl(tmp_path / "d.jsonl", [item(0), bad, item(2)])
    with pytest.raises(DataError, match=message):
        load_data(path, eval_size=1)


def test_skipping_bad_lines_is_counted_and_reported(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [item(0), "{oops", {"topic": "t1"}, item(1), item(2)])
    with pytest.warns(UserWarning, match="skipped 2 bad line"):
        data = load_data(path, eval_size=1, skip_bad_lines=True)
    assert len(data) == 3 and data.skipped == 2


def test_unknown_topic_and_empty_data(tmp_path):
    data = load_data(write_jsonl(tmp_path / "d.jsonl", [item(0), item(1)]), eval_size=1)
    with pytest.raises(DataError, match="Unknown topic.*nope.*available: t1"):
        data.select(topics=["nope"])
    with pytest.raises(DataError, match="no stance items"):
        load_data(write_jsonl(tmp_path / "empty.jsonl", []))
    with pytest.raises(DataError, match="Data not found"):
        load_data(tmp_path / "missing.jsonl")


def test_select_limits_items_per_topic():
    data = load_data("bundled")
    subset = data.select(topics=["race", "science"], split="eval", max_items=3)
    assert [i.topic for i in subset.items] == ["race"] * 3 + ["science"] * 3
    assert all(i.split == "eval" for i in subset.items)
    assert {s.topic for s in subset.statements} == {"race", "science"}


def ideoinst(tmp_path, n=6, topics=("guns", "taxes")):
    folder = tmp_path / "ideo"
    folder.mkdir()
    for topic in topics:
        for leaning in ("left", "right"):
            rows = [
                {"prompt": f"{topic} question {i}?", "completion": f"{leaning} view {i} on {topic}."} for i in range(n)
            ]
            write_jsonl(folder / f"{topic}_{leaning}.jsonl", rows)
    return folder


def test_ideoinst_folder_discovers_topics_and_splits(tmp_path):
    folder = ideoinst(tmp_path)
    data = load_data(folder, eval_size=2, seed=0)
    assert data.topics == ["guns", "taxes"]
    assert data.counts() == {"guns": {"train": 4, "eval": 2}, "taxes": {"train": 4, "eval": 2}}
    first = data.items[0]
    assert first.question == "guns question 0?" and first.left.startswith("left") and first.right.startswith("right")
    train = {i.question for i in data.items if i.split == "train"}
    assert not train & {i.question for i in data.items if i.split == "eval"}


def test_ideoinst_misaligned_prompts(tmp_path):
    folder = ideoinst(tmp_path)
    rows = [json.loads(line) for line in (folder / "taxes_right.jsonl").read_text().splitlines()]
    rows[3]["prompt"] = "something else?"
    write_jsonl(folder / "taxes_right.jsonl", rows)
    with pytest.raises(DataError, match=r"taxes_left\.jsonl:4 / .*taxes_right\.jsonl:4: misaligned"):
        load_data(folder, eval_size=1)


def test_ideoinst_structural_errors(tmp_path):
    folder = ideoinst(tmp_path)
    (folder / "taxes_right.jsonl").write_text(
        (folder / "taxes_right.jsonl").read_text() + json.dumps({"prompt": "x?", "completion": "y"}) + "\n"
    )
    with pytest.raises(DataError, match="has 6 lines but .* has 7"):
        load_data(folder, eval_size=1)
    with pytest.raises(DataError, match="eval_size 20 leaves no training items in topic 'guns'"):
        load_data(folder)
    (folder / "taxes_right.jsonl").unlink()
    with pytest.raises(DataError, match="topic 'taxes' has no taxes_right.jsonl"):
        load_data(folder, eval_size=1)
    (folder / "taxes_left.jsonl").unlink()
    (folder / "guns_left.jsonl").write_text("")
    with pytest.raises(DataError, match="guns_left.jsonl: empty topic file"):
        load_data(folder, eval_size=1)


def test_ideoinst_missing_completion(tmp_path):
    folder = ideoinst(tmp_path, topics=("guns",))
    write_jsonl(
        folder / "guns_left.jsonl",
        [{"prompt": f"guns question {i}?", "completion": "x" if i != 2 else ""} for i in range(6)],
    )
    with pytest.raises(DataError, match=r"guns_left\.jsonl:3: field 'completion' is empty"):
        load_data(folder, eval_size=1)


def test_hugging_face_dataset_object_with_column_mapping():
    import datasets

    table = datasets.Dataset.from_dict(
        {
            "issue": ["a", "a", "a", "b", "b", "b"],
            "prompt": [f"Q{i}?" for i in range(6)],
            "dem": [f"L{i}" for i in range(6)],
            "rep": [f"R{i}" for i in range(6)],
        }
    )
    data = load_hf(table, columns={"topic": "issue", "question": "prompt", "left": "dem", "right": "rep"}, eval_size=1)
    assert data.topics == ["a", "b"]
    assert data.counts() == {"a": {"train": 2, "eval": 1}, "b": {"train": 2, "eval": 1}}
    with pytest.raises(DataError, match=r"missing column\(s\) \['question'\]"):
        load_hf(table, columns={"topic": "issue", "left": "dem", "right": "rep"})


def _rows(start: int, n: int) -> dict:
    """``n`` items per topic a and b in our column names, numbered from ``start``."""
    numbers = range(start, start + n)
    return {
        "topic": ["a"] * n + ["b"] * n,
        "question": [f"Q{t}{i}?" for t in "ab" for i in numbers],
        "left": [f"L{t}{i}" for t in "ab" for i in numbers],
        "right": [f"R{t}{i}" for t in "ab" for i in numbers],
    }


def test_load_data_takes_a_dataset_and_a_dataset_dict():
    import datasets

    table = datasets.Dataset.from_dict(_rows(0, 4))
    assert load_data(table, eval_size=1).counts() == {"a": {"train": 3, "eval": 1}, "b": {"train": 3, "eval": 1}}
    assert load_data(table, eval_size=1) == load_hf(table, eval_size=1)
    # train + test: the test split is the eval split, whatever eval_size says
    both = datasets.DatasetDict({"train": table, "test": datasets.Dataset.from_dict(_rows(10, 2))})
    data = load_data(both)
    assert data.counts() == {"a": {"train": 4, "eval": 2}, "b": {"train": 4, "eval": 2}}
    assert {i.question for i in data.items if i.split == "eval"} == {"Qa10?", "Qa11?", "Qb10?", "Qb11?"}
    # one chosen split: our seeded split is drawn from it
    chosen = load_data(both, split="train", eval_size=1)
    assert chosen.counts() == {"a": {"train": 3, "eval": 1}, "b": {"train": 3, "eval": 1}}
    assert load_data(datasets.DatasetDict({"only": table}), eval_size=1) == load_data(table, eval_size=1)
    with pytest.raises(DataError, match="no split 'dev'; its splits are train, test"):
        load_data(both, split="dev")
    with pytest.raises(DataError, match="splits x, y: choose one with split="):
        load_data(datasets.DatasetDict({"x": table, "y": table}))
    with pytest.raises(DataError, match="this is one Dataset"):
        load_data(table, split="train")


def test_hub_dataset_name_offline_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path))
    with pytest.raises(DataError, match="hf:polineurons-test/nothing: cannot load the dataset"):
        load_data("hf:polineurons-test/nothing")
