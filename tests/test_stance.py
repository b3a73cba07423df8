import math

import pytest
import torch

from polineurons.data import StanceItem, StatementItem, encode_prompt, encode_text, load_data
from polineurons.hooks import scale_neurons
from polineurons.neurons import NeuronSet
from polineurons.stance import (
    StanceConfig,
    continuation_logprobs,
    measure_stance,
    score_items,
    score_statements,
    summarize,
)
from polineurons.stats import bootstrap_ci


@pytest.fixture(scope="module")
def items():
    data = load_data("bundled").select(split="eval", max_items=2)
    return list(data.items)


def test_batched_equals_one_at_a_time(tiny_model, items):
    batched = score_items(tiny_model, items, batch_size=5, progress=False)
    single = score_items(tiny_model, items, batch_size=1, progress=False)
    for a, b in zip(batched, single, strict=True):
        assert a.right_logprob == pytest.approx(b.right_logprob, abs=1e-4)
        assert a.left_logprob == pytest.approx(b.left_logprob, abs=1e-4)


def test_swapping_left_and_right_negates_the_score(tiny_model, items):
    scores = score_items(tiny_model, items, progress=False)
    swapped = score_items(tiny_model, [i.swapped() for i in items], progress=False)
    for a, b in zip(scores, swapped, strict=True):
        assert a.score == pytest.approx(-b.score, abs=1e-5)
        assert a.score != 0


def test_continuation_logprobs_match_a_plain_forward(tiny_llama):
    tokenizer = tiny_llama.tokenizer
    prompt = encode_prompt(tokenizer, "Should taxes rise?")
    answer = encode_text(tokenizer, "I think they should.", prompt_start=False)
    sums, counts = continuation_logprobs(tiny_llama, [(prompt, answer)])
    with torch.no_grad():
        logprobs = tiny_llama(torch.tensor([prompt + answer])).log_softmax(-1)[0]
    expected = sum(logprobs[len(prompt) - 1 + k, token].item() for k, token in enumerate(answer))
    assert counts.tolist() == [len(answer)]
    assert sums.item() == pytest.approx(expected, abs=1e-4)


def test_answer_token_cap_scores_the_truncated_answers(tiny_llama, items):
    tokenizer = tiny_llama.tokenizer
    capped = score_items(tiny_llama, items[:2], max_answer_tokens=5, progress=False)
    manual = []
    for item in items[:2]:

        def cut(text):
            return tokenizer.decode(encode_text(tokenizer, text, prompt_start=False)[:5])

        manual.append(StanceItem(item.id, item.topic, item.question, cut(item.left), cut(item.right)))
    reference = score_items(tiny_llama, manual, progress=False)
    for a, b in zip(capped, reference, strict=True):
        assert a.score == pytest.approx(b.score, abs=1e-4)


def test_scoring_respects_active_hooks(tiny_llama, items):
    clean = score_items(tiny_llama, items[:3], progress=False)
    with scale_neurons(tiny_llama, NeuronSet.for_model(tiny_llama, full=True), 1.0):
        identity = score_items(tiny_llama, items[:3], progress=False)
    late = NeuronSet.from_indices({2: range(96)}, 3, 96)
    with scale_neurons(tiny_llama, late, 0.0):
        zeroed = score_items(tiny_llama, items[:3], progress=False)
    assert [s.score for s in identity] == [s.score for s in clean]
    assert all(abs(a.score - b.score) > 1e-6 for a, b in zip(zeroed, clean, strict=True))


def test_statement_scores_are_signed_by_leaning(tiny_model):
    right = StatementItem("s1", "t", "Taxes should be lower.", "right")
    left = StatementItem("s2", "t", "Taxes should be lower.", "left")
    a, b = score_statements(tiny_model, [right, left], progress=False)
    assert a.score == pytest.approx(-b.score, abs=1e-5) and a.score != 0


def test_summary_statistics():
    from polineurons.stance import ItemScore

    scores = [ItemScore(str(i), "t", r, 0.0) for i, r in enumerate([0.5, -0.1, 0.2, 0.3])]
    summary = summarize(scores, seed=3)["t"]
    assert summary.score == pytest.approx(0.225) and summary.n == 4 and summary.right_rate == 0.75
    assert summary.ci_low <= summary.score <= summary.ci_high
    assert summarize(scores, seed=3)["t"] == summary
    assert bootstrap_ci([1.0]) == (1.0, 1.0)
    with pytest.raises(ValueError):
        bootstrap_ci([])


def test_measure_stance_on_the_eval_split(tiny_llama):
    result = measure_stance(
        tiny_llama, load_data("bundled"), StanceConfig(max_items=3), topics=["race", "science"], progress=False
    )
    assert list(result.topics) == ["race", "science"]
    assert all(t.n == 3 and math.isfinite(t.score) for t in result.topics.values())
    as_dict = result.to_dict()
    assert set(as_dict["topics"]["race"]) == {"score", "ci_low", "ci_high", "right_rate", "n"}
    assert len(as_dict["items"]) == 6
