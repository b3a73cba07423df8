"""The localizer's contrasts and selection rules (tiny models): identities, signs, masks, votes."""

import pytest
import torch

from polineurons.contrasts import (
    activation_spread,
    answer_contrast,
    attribution_scores,
    finetune_contrast,
    leaning_contrast,
)
from polineurons.data import load_data
from polineurons.hooks import record_neurons
from polineurons.neurons import NeuronSet
from polineurons.pnlac import (
    LocalizeConfig,
    LocalizeError,
    localize,
    normalize_scores,
    split_general_specific,
    top_percent,
    topic_inputs,
)
from tests.test_patching import tuned_copy


@pytest.fixture(scope="module")
def data():
    return load_data()


@pytest.fixture(scope="module")
def answers(tiny_llama, data):
    return topic_inputs(tiny_llama.tokenizer, data, "race", positions="answer", max_items=3, max_answer_tokens=12)


def test_answer_positions_start_after_the_prompt(tiny_llama, data, answers):
    full = topic_inputs(tiny_llama.tokenizer, data, "race", positions="all", max_items=3, max_answer_tokens=12)
    question = topic_inputs(tiny_llama.tokenizer, data, "race", positions="question", max_items=3)
    assert full.sequences == answers.sequences and set(full.starts) == {0}
    assert len(answers.sequences) == 2 * len(question.sequences)  # right, left per item
    for k, prompt in enumerate(question.sequences):
        for seq, start in zip(answers.sequences[2 * k : 2 * k + 2], answers.starts[2 * k : 2 * k + 2], strict=True):
            assert start == len(prompt) and seq[:start] == prompt and 0 < len(seq) - start <= 12


def test_answer_positions_mask_the_prompt(tiny_llama, tiny_cache, answers):
    """The RMS over answer tokens, recomputed by hand from recorded activations; the prompt is masked."""
    tuned = tuned_copy(tiny_cache)
    scored = finetune_contrast(tiny_llama, tuned, answers.sequences, starts=answers.starts, batch_size=3)
    squares, n = torch.zeros(3, 96, dtype=torch.float64), 0
    for seq, start in zip(answers.sequences, answers.starts, strict=True):
        acts = {}
        for name, model in (("base", tiny_llama), ("tuned", tuned)):
            with torch.no_grad(), record_neurons(model) as recorded:
                model(torch.tensor([seq]))
            acts[name] = {layer: a[0, start:].double() for layer, a in recorded.items()}
        for layer in range(3):
            squares[layer] += (acts["tuned"][layer] - acts["base"][layer]).square().sum(dim=0)
        n += len(seq) - start
    torch.testing.assert_close(scored, (squares / n).sqrt().float(), rtol=1e-4, atol=1e-6)
    everything = finetune_contrast(tiny_llama, tuned, answers.sequences, batch_size=3)
    assert not torch.allclose(scored, everything)


def test_answer_contrast_is_signed_and_batch_independent(tiny_llama, answers):
    seqs, starts = answers.sequences, answers.starts
    scores = answer_contrast(tiny_llama, seqs, starts=starts, batch_size=4)
    swapped = [s for k in range(0, len(seqs), 2) for s in (seqs[k + 1], seqs[k])]
    swapped_starts = [s for k in range(0, len(starts), 2) for s in (starts[k + 1], starts[k])]
    torch.testing.assert_close(answer_contrast(tiny_llama, swapped, starts=swapped_starts), -scores)
    torch.testing.assert_close(
        answer_contrast(tiny_llama, seqs, starts=starts, batch_size=1), scores, atol=1e-6, rtol=1e-4
    )
    same = [s for k in range(0, len(seqs), 2) for s in (seqs[k], seqs[k])]
    same_starts = [s for k in range(0, len(starts), 2) for s in (starts[k], starts[k])]
    assert answer_contrast(tiny_llama, same, starts=same_starts).abs().max() < 1e-6  # up to summation order
    with pytest.raises(ValueError, match="pairs"):
        answer_contrast(tiny_llama, seqs[:3], starts=starts[:3])


def test_leaning_contrast_cancels_shared_drift(tiny_llama, tiny_cache, answers):
    """Both fine-tunes share a drift (the same tuned copy): the leaning contrast of a model with itself is 0;
    swapping left and right negates it; the finetune contrast sees the drift."""
    tuned = tuned_copy(tiny_cache)
    seqs = answers.sequences
    assert torch.count_nonzero(leaning_contrast(tuned, tuned, seqs)) == 0
    assert finetune_contrast(tiny_llama, tuned, seqs).abs().sum() > 0
    torch.testing.assert_close(leaning_contrast(tiny_llama, tuned, seqs), -leaning_contrast(tuned, tiny_llama, seqs))


def test_base_std_normalisation(tiny_llama, answers):
    spread = activation_spread(tiny_llama, answers.sequences, starts=answers.starts)
    scores = torch.randn(3, 96, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(normalize_scores(scores, "base_std", spread), scores / spread)
    dead = spread.clone()
    dead[1, 5] = 0.0
    assert normalize_scores(scores, "base_std", dead)[1, 5] == 0.0
    manual = []
    for seq, start in zip(answers.sequences, answers.starts, strict=True):
        with torch.no_grad(), record_neurons(tiny_llama, [2]) as recorded:
            tiny_llama(torch.tensor([seq]))
        manual.append(recorded[2][0, start:, 7].double())
    assert float(spread[2, 7]) == pytest.approx(float(torch.cat(manual).std()), rel=1e-4)


def test_sign_agreement_and_voters():
    mask = torch.zeros(2, 4, dtype=torch.bool)
    mask[0, :2] = True  # neurons (0, 0) and (0, 1) are in every topic's top set
    top = {t: NeuronSet(mask.clone()) for t in ("a", "b", "c")}
    positive = torch.ones(2, 4)
    mixed = positive.clone()
    mixed[0, 1] = -1.0  # topic c disagrees in sign on neuron (0, 1)
    general, specific = split_general_specific(top, signs={"a": positive, "b": positive, "c": mixed})
    assert sorted(general) == [(0, 0)] and sorted(specific["c"]) == [(0, 1)]
    loose, _ = split_general_specific(top, min_topics=2, signs={"a": positive, "b": positive, "c": mixed})
    assert sorted(loose) == [(0, 0), (0, 1)]  # two topics agree on the sign of (0, 1)
    only_target = {**top, "c": NeuronSet(torch.ones(2, 4, dtype=torch.bool))}
    others, specific = split_general_specific(only_target, voters=["a", "b"])
    assert sorted(others) == [(0, 0), (0, 1)] and len(specific["c"]) == 6  # the target's own set stays specific
    with pytest.raises(ValueError, match="Voters"):
        split_general_specific(top, voters=["z"])


def test_signed_top_sets_rank_by_magnitude():
    scores = torch.tensor([[0.1, -0.9, 0.3, 0.5]])
    assert sorted(top_percent(scores.abs(), 50)) == [(0, 1), (0, 3)]


@pytest.mark.parametrize("contrast", ["answers", "attribution", "leaning", "finetune"])
def test_every_contrast_localizes(tiny_llama, tiny_cache, data, contrast):
    tuned, opposite = tuned_copy(tiny_cache), tuned_copy(tiny_cache, factor=0.7)
    positions = "question" if contrast in ("finetune", "leaning") else "answer"
    options = {"top_k": 10, "max_items": 2, "max_answer_tokens": 8, "normalize": "base_std"}
    config = LocalizeConfig(contrast=contrast, positions=positions, **options)
    topics = ["race", "science", "immigration"]
    result = localize(tiny_llama, tuned, data, config, topics=topics, target="race", opposite=opposite, progress=False)
    assert set(result.top) == set(topics) and all(len(s) == round(288 * 0.1) for s in result.top.values())
    assert result.signed == (contrast != "finetune")
    for topic, neurons in result.top.items():
        strength = result.scores[topic].abs()
        assert strength[neurons.mask].min() >= strength[~neurons.mask].max()
    if contrast == "attribution":  # the topic's score is the attribution of that topic's items, normalised
        items = data.select(topics=["science"], split="train", max_items=2).items
        raw = attribution_scores(tiny_llama, tuned, items, max_answer_tokens=8, answer_only=True, progress=False)
        inputs = topic_inputs(
            tiny_llama.tokenizer, data, "science", positions="answer", max_items=2, max_answer_tokens=8
        )
        spread = activation_spread(tiny_llama, inputs.sequences, starts=inputs.starts)
        torch.testing.assert_close(result.scores["science"], normalize_scores(raw.float(), "base_std", spread))


def test_localize_says_what_it_needs(tiny_llama, data):
    with pytest.raises(LocalizeError, match="fine-tuned model"):
        localize(tiny_llama, None, data, LocalizeConfig(contrast="finetune", positions="question", max_items=1))
    with pytest.raises(LocalizeError, match="opposite"):
        localize(tiny_llama, tiny_llama, data, LocalizeConfig(contrast="leaning", positions="question", max_items=1))
    with pytest.raises(LocalizeError, match="target"):
        localize(tiny_llama, None, data, LocalizeConfig(general_over="others", max_items=1))
    with pytest.raises(ValueError, match="reads answers"):
        LocalizeConfig(contrast="answers", positions="question")
