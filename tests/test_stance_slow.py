"""Slow: the embedded model's stance on the bundled eval split (`pytest -m slow`)."""

import math
import time

import pytest

from polineurons.data import TOPICS, load_data
from polineurons.stance import measure_stance, score_statements, summarize

pytestmark = pytest.mark.slow


def test_embedded_model_stance_on_all_six_topics(embedded_model, capsys):
    start = time.perf_counter()
    result = measure_stance(embedded_model, load_data(), split="eval", progress=False)
    elapsed = time.perf_counter() - start
    assert list(result.topics) == list(TOPICS)
    for topic in result.topics.values():
        assert topic.n == 48 and math.isfinite(topic.score) and topic.ci_low <= topic.score <= topic.ci_high
    with capsys.disabled():
        print(f"\nembedded model, bundled eval split, {len(result.items)} items, {elapsed:.0f} s")
        for name, t in result.topics.items():
            print(f"  {name:<24}{t.score:+.3f} [{t.ci_low:+.3f}, {t.ci_high:+.3f}] right-rate {t.right_rate:.2f}")


def test_embedded_statement_scores_are_finite(embedded_model):
    statements = load_data().statements
    summary = summarize(score_statements(embedded_model, statements, progress=False))
    assert set(summary) == set(TOPICS)
    assert all(math.isfinite(s.score) for s in summary.values())
