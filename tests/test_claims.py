"""The claims table: each claim holds exactly when its measurement clears its control."""

import torch

from polineurons.claims import claims_markdown, paper_claims
from polineurons.directions import neuron_direction_cosines, output_weights
from polineurons.neurons import NeuronSet


def recovery(value, low, high):
    return {"recovery": value, "ci_low": low, "ci_high": high, "patched_shift": 0.0, "full_shift": 1.0, "n": 48}


def localize_payload(count=500, fraction=0.01, overlap=0.2, layers=(100, 300, 100)):
    general = {"count": count, "fraction": fraction, "layer_counts": list(layers)}
    return {"summary": {"general": general, "pairwise_jaccard": {"min": 0.1, "mean": overlap, "max": 0.3}}}


def patch_payload(general, controls, specific=None):
    rows = {"general": {"ctg": recovery(*general), "race": recovery(*general)}}
    rows |= {f"random:{k}": {"ctg": recovery(*c), "race": recovery(*c)} for k, c in enumerate(controls)}
    if specific:
        rows["specific:race"] = {"race": recovery(*specific[0]), "ctg": recovery(*specific[1])}
    return {"target": "race", "recovery": rows}


def test_the_control_overlap_is_shown():
    patch = patch_payload((0.5, 0.3, 0.7), [(0.1, 0.0, 0.2)] * 3) | {"control_overlap": {"random:0": 0, "random:1": 0}}
    assert "general neurons in them: 0)" in by_key(paper_claims(localize_payload(), patch))["ii"].control


def by_key(claims):
    return {c.key: c for c in claims}


def test_small_set_claim():
    assert by_key(paper_claims(localize_payload()))["i"].holds is True
    assert by_key(paper_claims(localize_payload(fraction=0.28)))["i"].holds is False
    assert by_key(paper_claims(localize_payload(overlap=0.95)))["i"].holds is False


def test_folders_from_before_the_pairwise_summary_still_read():
    payload = localize_payload()
    del payload["summary"]["pairwise_jaccard"]
    payload["summary"]["jaccard"] = {"a": {"a": 1.0, "b": 0.2, "c": 0.4}, "b": {"c": 0.3}, "c": {}}
    assert "overlap 0.30 (mean Jaccard, max 0.40)" in by_key(paper_claims(payload))["i"].measured


def test_folders_from_before_the_ctg_column_read_as_not_measured():
    """A run's patch/recovery.json written before CTG recovery was scored has per-topic rows only."""
    patch = patch_payload((0.5, 0.3, 0.7), [(0.1, 0.0, 0.2)] * 3)
    patch["recovery"] = {name: {"race": rows["race"]} for name, rows in patch["recovery"].items()}
    assert by_key(paper_claims(localize_payload(), patch))["ii"].measured == "not measured"


def test_patching_claim_needs_twice_the_controls_and_separate_cis():
    controls = [(0.1, 0.0, 0.2)] * 3
    holds = by_key(paper_claims(localize_payload(), patch_payload((0.5, 0.3, 0.7), controls)))
    assert holds["ii"].holds is True and "3 random sets (general neurons in them: not recorded)" in holds["ii"].control
    overlapping = by_key(paper_claims(localize_payload(), patch_payload((0.5, 0.15, 0.8), controls)))
    assert overlapping["ii"].holds is False  # 5x the controls, but the CIs overlap
    small = by_key(paper_claims(localize_payload(), patch_payload((0.15, 0.12, 0.18), [(0.1, 0.08, 0.11)])))
    assert small["ii"].holds is False  # CIs apart, but under twice the controls
    assert holds["ii-b"].holds is None  # no ablation measured


def test_specific_claim_and_unmeasured_rows():
    patch = patch_payload((0.5, 0.3, 0.7), [(0.1, 0.0, 0.2)], specific=((0.8, 0.6, 0.9), (0.2, 0.1, 0.3)))
    claims = by_key(paper_claims(localize_payload(), patch))
    assert claims["iii"].holds is True and claims["iv"].holds is None and claims["v"].holds is None
    assert "20% / 60% / 20%" in claims["v"].measured
    assert claims_markdown(list(claims.values())).count("\n") == len(claims) + 1


def frontier_row(kept, reduction, ci, control_ci):
    estimates = {"target_kept": kept, "target_kept_ci_low": kept - 0.05, "target_kept_ci_high": kept + 0.05}
    estimates |= {"ctg_reduction": reduction, "ctg_reduction_ci_low": ci[0], "ctg_reduction_ci_high": ci[1]}
    control = {"target_kept": 1.0, "ctg_reduction": 0.0, "ctg_reduction_ci_low": control_ci[0]}
    control |= {"ctg_reduction_ci_high": control_ci[1]}
    return {"strength": 1.0, "seeds": [0, 1, 2], **estimates, "control": control}


def test_inhibit_claim_needs_the_target_kept_and_the_control_cleared():
    good = {"frontier": {"inhibit-zero": [frontier_row(0.92, 0.3, (0.1, 0.5), (-0.1, 0.05))]}}
    assert by_key(paper_claims(localize_payload(), None, good))["iv"].holds is True
    lost = {"frontier": {"stopgrad": [frontier_row(0.7, 0.6, (0.4, 0.8), (-0.1, 0.05))]}}
    assert by_key(paper_claims(localize_payload(), None, lost))["iv"].holds is False
    tied = {"frontier": {"inhibit-freeze": [frontier_row(0.95, 0.1, (-0.05, 0.3), (-0.1, 0.1))]}}
    assert by_key(paper_claims(localize_payload(), None, tied))["iv"].holds is False


def test_output_weight_cosines(tiny_llama):
    weights = output_weights(tiny_llama, 1)
    direction = weights[7] / weights[7].norm()
    signs = torch.ones(3, 96)
    signs[1, 8] = -1.0
    one = NeuronSet.from_pairs([(1, 7)], 3, 96)
    result = neuron_direction_cosines(tiny_llama, one, signs, {4: direction[:, None]})
    assert abs(result[4]["mean"] - 1.0) < 1e-5 and result[4]["n"] == 1
    flipped = neuron_direction_cosines(
        tiny_llama, NeuronSet.from_pairs([(1, 8)], 3, 96), signs, {4: weights[8][:, None]}
    )
    assert abs(flipped[4]["mean"] + 1.0) < 1e-5 and abs(flipped[4]["mean_abs"] - 1.0) < 1e-5


def test_patching_says_why_a_disjoint_control_is_missing(tiny_llama, tiny_cache):
    """A general set filling most of a layer: the patch result names the layer instead of drawing an
    overlapping control, and the claims table carries the reason with no verdict."""
    from polineurons.data import load_data
    from polineurons.patching import PatchConfig, patch_experiment
    from polineurons.pnlac import Localization
    from tests.test_patching import tuned_copy

    crowded = NeuronSet.from_indices({1: range(60)}, 3, 96)
    located = Localization({"race": torch.rand(3, 96)}, {"race": crowded}, crowded, {"race": crowded - crowded})
    config = PatchConfig(max_items=1, max_answer_tokens=4, random_seeds=2, specific="target", all_neurons=False)
    data = load_data().select(topics=["race", "science"])
    result = patch_experiment(tiny_llama, tuned_copy(tiny_cache), data, located, config, target="race", progress=False)
    assert "Layer 1" in result["control_error"] and not [n for n in result["recovery"] if "random" in n]
    claim = by_key(paper_claims(localize_payload(), result))["ii"]
    assert claim.holds is None and "Layer 1" in claim.control
