"""The mitigations' residual directions on a tiny model: the leaning direction is a unit vector with no
component along the target topic's own direction, PCA of (fine-tuned − base) finds a planted change,
and the spill directions (flip, pca) are orthonormal, blind to which model is which, and orthogonal to
the same difference on the target's own texts."""

import pytest
import torch

from polineurons import load_model
from polineurons.data import encode_prompt, load_data
from polineurons.directions import (
    difference_grams,
    difference_pcs,
    leaning_directions,
    orthogonal_complement,
    spill_directions,
)
from polineurons.screening import answer_direction
from tests.helpers import perturbed_pair


def test_the_leaning_direction_is_a_unit_vector_orthogonal_to_the_targets_own(tiny_llama):
    """Would catch a direction left unorthogonalized (ablating it would also cut the target's own push)."""
    data, layers = load_data(), [0, 2]
    general = leaning_directions(tiny_llama, data, "race", layers, max_items=3)
    plain = leaning_directions(tiny_llama, data, "race", layers, max_items=3, orthogonal_to_target=False)
    own_items = data.select(topics=["race"], split="train", max_items=3).items
    own = answer_direction(tiny_llama, own_items, layers, max_answer_tokens=48).float()
    for k, layer in enumerate(layers):
        v, unit_own = general[layer][:, 0], own[k] / own[k].norm()
        assert general[layer].shape == (tiny_llama.cfg.d_model, 1)
        assert abs(float(v.norm()) - 1) < 1e-5 and abs(float(v @ unit_own)) < 1e-5
        assert abs(float(plain[layer][:, 0] @ unit_own)) > 1e-3  # there was a shared part to remove


def test_difference_pcs_find_a_planted_rank_one_change(tiny_cache):
    """A rank-one edit of one layer's MLP output weights moves the residual stream after that layer
    along one direction only: the top principal component of (fine-tuned − base) is that direction."""
    base = load_model("tiny-llama", device="cpu", cache=tiny_cache)
    tuned = load_model("tiny-llama", device="cpu", cache=tiny_cache)
    generator = torch.Generator().manual_seed(0)
    u = torch.randn(base.cfg.d_model, generator=generator)
    u = u / u.norm()
    with torch.no_grad():
        weight = tuned.blocks[1].mlp.out.original_component.weight  # [d_model, d_mlp]
        weight += torch.outer(u, torch.randn(base.cfg.d_mlp, generator=generator))
    questions = [item.question for item in load_data().select(split="eval", max_items=2).items[:6]]
    sequences = [encode_prompt(base.tokenizer, q) for q in questions]
    pcs = difference_pcs(base, tuned, sequences, [1], 2)[1]
    assert pcs.shape == (base.cfg.d_model, 2)
    torch.testing.assert_close(pcs.T @ pcs, torch.eye(2), atol=1e-5, rtol=0)
    assert abs(float(pcs[:, 0] @ u)) > 0.999


def test_orthogonal_complement_is_orthonormal_orthogonal_and_within_both_spans():
    generator = torch.Generator().manual_seed(0)
    against, _ = torch.linalg.qr(torch.randn(16, 2, generator=generator))
    basis = torch.randn(16, 3, generator=generator)
    rest = orthogonal_complement(basis, against)
    torch.testing.assert_close(rest.T @ rest, torch.eye(3), atol=1e-5, rtol=0)
    assert float((against.T @ rest).abs().max()) < 1e-5
    both = torch.cat([basis, against], dim=1)  # rest lies in span(basis, against): projecting onto it keeps it
    inside = both @ torch.linalg.lstsq(both, rest).solution
    torch.testing.assert_close(inside, rest, atol=1e-4, rtol=0)
    with pytest.raises(ValueError, match="nothing is left"):
        orthogonal_complement(against[:, :1] * 3.0, against)


def test_spill_directions_are_orthogonal_to_the_targets_own_difference_and_blind_to_which_model_is_which(tiny_cache):
    """Two tiny models changed differently stand for the left- and right-leaning fine-tunes."""
    one, other = perturbed_pair(tiny_cache)
    data = load_data()
    texts = {
        name: [encode_prompt(one.tokenizer, i.question) for i in data.select(topics=topics, split="train").items[:4]]
        for name, topics in (("others", ["science", "economy_and_inequality"]), ("own", ["race"]))
    }
    flips = spill_directions(one, other, texts["others"], texts["own"], [1, 2], 2)
    swapped = spill_directions(other, one, texts["others"], texts["own"], [1, 2], 2)
    own = difference_pcs(one, other, texts["own"], [1, 2], 2)
    for layer in (1, 2):
        q = flips[layer]
        assert q.shape == (one.cfg.d_model, 2)
        torch.testing.assert_close(q.T @ q, torch.eye(2), atol=1e-5, rtol=0)
        assert float((own[layer].T @ q).abs().max()) < 1e-5
        torch.testing.assert_close(q @ q.T, swapped[layer] @ swapped[layer].T, atol=1e-4, rtol=0)  # same span


def test_counting_from_a_start_leaves_out_exactly_the_positions_before_it(tiny_cache):
    """Causal attention: a prefix's residuals do not depend on what follows, so the gram from each
    sequence's start on plus the gram of the prefixes alone is the gram of every token; batching and
    one start for all (an int) change nothing."""
    one, other = perturbed_pair(tiny_cache, layer=0)
    items = load_data().select(topics=["race"], split="train").items[:3]
    sequences = [encode_prompt(one.tokenizer, i.question) for i in items]
    starts = [len(s) // 2 for s in sequences]
    full = difference_grams(one, other, sequences, [1])[1]
    rest = difference_grams(one, other, sequences, [1], starts=starts, batch_size=2)[1]
    prefixes = difference_grams(one, other, [s[:k] for s, k in zip(sequences, starts, strict=True)], [1])[1]
    torch.testing.assert_close(rest + prefixes, full, rtol=1e-6, atol=1e-6)
    assert float(prefixes.trace()) > 0 and float(rest.trace()) > 0
    torch.testing.assert_close(difference_grams(one, other, sequences, [1], starts=0)[1], full, rtol=0, atol=0)
    nothing = difference_grams(one, other, sequences, [1], starts=[len(s) for s in sequences])[1]
    assert float(nothing.abs().max()) == 0
    with pytest.raises(ValueError, match="starts"):
        difference_grams(one, other, sequences, [1], starts=[1])
