"""The spill-over's geometry: planted changes read back (a spill change orthogonal to the target's is
ablated whole and spares the target; a shared one cannot be separated), the ablated directions are
exactly CAFT's, shares are blind to which model is which, and the command writes its table."""

import json

import pytest
import torch

from polineurons.data import encode_prompt, load_data
from polineurons.directions import difference_grams, spill_directions
from polineurons.geometry import GeometryConfig, geometry_text, layer_geometry, spill_geometry
from tests.helpers import perturbed_pair

D = 16


def _planted(direction: torch.Tensor, scale: float, seed: int) -> torch.Tensor:
    """A second moment of 64 tokens: a large change along ``direction`` plus small isotropic noise."""
    noise = 0.05 * torch.randn(64, D, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    signal = scale * torch.randn(64, 1, generator=torch.Generator().manual_seed(seed + 1), dtype=torch.float64)
    tokens = noise + signal * direction.double()
    return tokens.T @ tokens


def test_a_spill_change_apart_from_the_targets_is_ablated_whole_and_spares_the_target():
    eye = torch.eye(D)
    row = layer_geometry(3, 1, _planted(eye[0], 1.0, 0), _planted(eye[1], 1.0, 2), 64, 64)
    assert row.layer == 3 and row.rank == 1 and row.chance == pytest.approx(1 / D)
    assert row.spill_captured > 0.95 and row.spill_ablated > 0.95  # one direction holds it, and it is ablated
    assert row.target_in_spill < 0.02 and row.target_ablated < 0.02 and row.cosine < 0.1


def test_a_spill_change_along_the_targets_cannot_be_separated():
    """The ablated directions are the spill's with the target's projected out: what is left holds little."""
    shared = torch.eye(D)[0]
    row = layer_geometry(0, 1, _planted(shared, 1.0, 0), _planted(shared, 3.0, 2), 64, 64)
    assert row.spill_captured > 0.95 and row.target_in_spill > 0.95 and row.cosine > 0.99
    assert row.spill_ablated < 0.05 and row.target_ablated < 0.05
    assert row.target_rms > 2 * row.spill_rms


def test_shares_are_bounded_and_the_top_components_hold_the_most():
    generator = torch.Generator().manual_seed(0)
    spill = torch.randn(40, D, generator=generator, dtype=torch.float64)
    target = torch.randn(40, D, generator=generator, dtype=torch.float64)
    for k in (1, 2, 4):
        row = layer_geometry(0, k, spill.T @ spill, target.T @ target, 40, 40)
        shares = (row.spill_captured, row.target_in_spill, row.spill_ablated, row.target_ablated)
        assert all(0 <= s <= 1 for s in shares) and 0 <= row.cosine <= 1 + 1e-9
        assert row.spill_captured >= max(row.spill_ablated, row.chance)  # top-k: the most any k dims hold
    with pytest.raises(ValueError, match="rank"):
        layer_geometry(0, 0, spill.T @ spill, target.T @ target, 40, 40)


def test_the_ablated_directions_are_cafts_and_the_shares_blind_to_which_model_is_which(tiny_cache):
    one, other = perturbed_pair(tiny_cache)
    data = load_data()
    others, own = (
        [encode_prompt(one.tokenizer, i.question) for i in data.select(topics=topics, split="train").items[:4]]
        for topics in (["science", "economy_and_inequality"], ["race"])
    )
    rows = spill_geometry(one, other, others, own, [1, 2], ranks=(1, 2))
    swapped = spill_geometry(other, one, others, own, [1, 2], ranks=(1, 2))
    assert [(r.layer, r.rank) for r in rows] == [(1, 1), (1, 2), (2, 1), (2, 2)]
    for row, twin in zip(rows, swapped, strict=True):
        for field in ("spill_captured", "target_in_spill", "spill_ablated", "target_ablated", "cosine", "spill_rms"):
            assert getattr(row, field) == pytest.approx(getattr(twin, field), abs=1e-4)
    # the shares of the ablated directions are those of the directions CAFT ablates
    target_gram = difference_grams(one, other, own, [2])[2]
    q = spill_directions(one, other, others, own, [2], 2)[2].double()
    ablated = float((q.T @ target_gram @ q).trace() / target_gram.trace())
    assert rows[3].target_ablated == pytest.approx(ablated, abs=1e-5)
    # the same model twice: no change to share
    still = spill_geometry(one, one, others, own, [1], ranks=(1,))[0]
    assert still.spill_rms == 0 and still.spill_captured == 0 and still.target_ablated == 0
    assert "layer" in geometry_text(rows).splitlines()[0] and len(geometry_text(rows).splitlines()) == 5
    with pytest.raises(ValueError, match="texts"):
        spill_geometry(one, other, [], own, [1])


def test_the_command_writes_the_geometry_of_both_leanings_fine_tunes(tiny_env, tmp_path, capsys):
    from polineurons.cli import main

    args = ["geometry", "--out", tmp_path, "--model", "tiny-llama", "--target", "race", "--layers", 0, 2]
    args += ["--ranks", 1, 2, "--finetune.max-steps", 1, "--finetune.batch-size", 4, "--mitigate.items", 2]
    main([str(a) for a in args])
    output = capsys.readouterr().out
    result = json.loads((tmp_path / "geometry-flip.json").read_text())
    assert result["kind"] == "flip" and result["target"] == "race" and result["leaning"] == "right"
    assert [(r["layer"], r["rank"]) for r in result["rows"]] == [(0, 1), (0, 2), (2, 1), (2, 2)]
    assert all(r["spill_rms"] > 0 for r in result["rows"])  # the right and left fine-tunes differ
    assert "spill ablated" in output and "geometry-flip.json" in output
    assert len(list((tmp_path / "models").iterdir())) == 2  # both leanings' fine-tunes, kept for reuse
    with pytest.raises(SystemExit) as exit:  # a layer the model lacks: a message, no traceback
        main([str(a) for a in [*args[:8], 9, *args[10:]]])
    assert exit.value.code == 2 and "layers (0.." in capsys.readouterr().err


def test_the_config_refuses_what_cannot_be_measured():
    for bad in ({"kind": "leaning"}, {"ranks": ()}, {"ranks": (0,)}, {"layers": (-1,)}):
        with pytest.raises(ValueError):
            GeometryConfig(**bad)
