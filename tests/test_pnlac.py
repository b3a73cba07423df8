import pytest
import torch

from polineurons import load_model
from polineurons.contrasts import finetune_contrast
from polineurons.data import load_data
from polineurons.pnlac import (
    Localization,
    LocalizeConfig,
    localize,
    shared_prefix_length,
    split_general_specific,
    top_percent,
    topic_sequences,
)


def copy_with(tiny_cache, edit):
    model = load_model("tiny-llama", device="cpu", cache=tiny_cache)
    with torch.no_grad():
        edit(model)
    return model


def bump_neuron(layer, index, factor=3.0):
    def edit(model):
        mlp = model.blocks[layer].mlp
        for role in ("gate", "in"):
            getattr(mlp, role).original_component.weight[index] *= factor

    return edit


@pytest.fixture(scope="module")
def sequences(tiny_cache):
    model = load_model("tiny-llama", device="cpu", cache=tiny_cache)
    return topic_sequences(model.tokenizer, load_data(), "race", max_items=6)


def test_contrast_against_itself_is_zero(tiny_llama, sequences):
    scores = finetune_contrast(tiny_llama, tiny_llama, sequences, batch_size=4)
    assert scores.shape == (3, 96) and torch.count_nonzero(scores) == 0


def test_changed_neuron_ranks_first(tiny_llama, tiny_cache, sequences):
    last = copy_with(tiny_cache, bump_neuron(2, 17))
    scores = finetune_contrast(tiny_llama, last, sequences)
    assert scores[2, 17] > 0 and torch.count_nonzero(scores) == 1  # nothing downstream of the last MLP
    early = copy_with(tiny_cache, bump_neuron(0, 40))
    scores = finetune_contrast(tiny_llama, early, sequences)
    assert divmod(int(scores.flatten().argmax()), 96) == (0, 40)
    assert torch.count_nonzero(scores[0]) == 1  # same-layer neurons see the same input


def test_padding_does_not_change_scores(tiny_llama, tiny_cache, sequences):
    other = copy_with(tiny_cache, bump_neuron(1, 3, 1.5))
    batched = finetune_contrast(tiny_llama, other, sequences, batch_size=6)
    single = finetune_contrast(tiny_llama, other, sequences, batch_size=1)
    torch.testing.assert_close(batched, single, rtol=1e-4, atol=1e-6)


def test_shared_prefix_length():
    assert shared_prefix_length([[1, 2, 3, 4], [1, 2, 5], [1, 2, 3]]) == 2
    assert (
        shared_prefix_length([[1, 2], [1, 2, 3]]) == 2
        and shared_prefix_length([[7], [8]]) == 0
        and shared_prefix_length([]) == 0
    )


def test_skipped_prefix_tokens_are_not_scored(tiny_llama, tiny_cache, sequences):
    other = copy_with(tiny_cache, bump_neuron(1, 3, 1.5))
    skip = shared_prefix_length(sequences)
    assert skip > 0  # the chat template's shared start
    assert torch.equal(
        finetune_contrast(tiny_llama, other, sequences, starts=0), finetune_contrast(tiny_llama, other, sequences)
    )
    scored = finetune_contrast(tiny_llama, other, sequences, starts=skip, batch_size=1)
    assert not torch.allclose(scored, finetune_contrast(tiny_llama, other, sequences, batch_size=1))
    # a sequence that ends inside the skipped prefix contributes nothing
    padded = finetune_contrast(tiny_llama, other, [*sequences, sequences[0][:skip]], starts=skip, batch_size=1)
    torch.testing.assert_close(padded, scored, rtol=1e-5, atol=1e-7)
    with pytest.raises(ValueError, match="No token left"):
        finetune_contrast(tiny_llama, other, [sequences[0][:skip]], starts=skip)


def test_top_percent_keeps_the_highest_scores():
    """Would catch a selection of the lowest scores, or of the right count in the wrong places."""
    scores = torch.tensor([[0.1, 0.9, 0.3, 0.5], [0.8, 0.2, 0.7, 0.0]])
    assert sorted(top_percent(scores, 25)) == [(0, 1), (1, 0)]  # the two highest: 0.9 and 0.8
    assert sorted(top_percent(scores, 50)) == [(0, 1), (0, 3), (1, 0), (1, 2)]
    chosen = top_percent(torch.rand(4, 50, generator=torch.Generator().manual_seed(1)), 30)
    values = torch.rand(4, 50, generator=torch.Generator().manual_seed(1))
    assert values[chosen.mask].min() > values[~chosen.mask].max()


def test_top_percent_and_general_specific_split():
    generator = torch.Generator().manual_seed(0)
    top = {t: top_percent(torch.rand(4, 50, generator=generator), 30) for t in ("a", "b", "c")}
    assert all(len(s) == 60 for s in top.values())
    general, specific = split_general_specific(top)
    union = top["a"] | top["b"] | top["c"]
    assert general == top["a"] & top["b"] & top["c"]
    for topic, s in specific.items():
        assert not s & general and (s | general) == (top[topic] | general)
    assert general | specific["a"] | specific["b"] | specific["c"] == union
    loose, _ = split_general_specific(top, min_topics=2)
    assert len(loose) >= len(general)
    assert split_general_specific(top, min_topics=4)[0] == general  # more than there are: all of them
    with pytest.raises(ValueError, match="min_topics"):
        split_general_specific(top, min_topics=0)
    with pytest.raises(ValueError, match="percent"):
        top_percent(torch.rand(2, 2), 0)


def test_localize_ranking_and_round_trip(tiny_llama, tiny_cache, tmp_path):
    tuned = copy_with(tiny_cache, lambda m: [bump_neuron(layer, 5 + layer, 2.0)(m) for layer in range(3)])
    data = load_data()
    result = localize(
        tiny_llama,
        tuned,
        data,
        LocalizeConfig(contrast="finetune", positions="question", normalize="none", top_k=10, max_items=3),
        topics=["race", "science", "immigration"],
        progress=False,
    )
    assert set(result.top) == {"race", "science", "immigration"}
    summary = result.summary()
    assert summary["general"]["count"] == len(result.general) and summary["jaccard"]["race"]["race"] == 1.0
    bumped = {(0, 5), (1, 6), (2, 7)}  # the edited neurons are general, and the three of them rank first
    assert bumped <= set(result.general) and set(map(tuple, result.general_ranking()[:3].tolist())) == bumped
    ranked = result.general_ranking().tolist()
    topics = list(result.scores)

    def mean_score(layer, index):  # the mean over topics, one topic at a time
        return sum(float(result.scores[t][layer, index]) for t in topics) / len(topics)

    values = [mean_score(layer, i) for layer, i in ranked]
    assert values == pytest.approx(sorted(values, reverse=True)) and len(ranked) == len(result.general)
    chosen = result.top_general(1.0)
    assert len(chosen) == min(round(288 * 0.01), len(result.general)) and not chosen - result.general
    result.save(tmp_path / "loc")
    back = Localization.load(tmp_path / "loc")
    assert back.general == result.general and back.specific["race"] == result.specific["race"]
    assert torch.equal(back.scores["science"], result.scores["science"]) and back.config == result.config
