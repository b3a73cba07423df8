"""The mitigation frontier on made-up stance results whose answers are known: the reading at 90% of
the target kept, its control at the same strength, seed pairing in the bootstrap, and the league."""

import math

import pytest

from polineurons.frontier import Arm, compare_runs, frontier, league_text, summarize
from polineurons.stance import ItemScore, StanceResult
from polineurons.stance import summarize as summarize_topics
from polineurons.trial import Scores, Trial

TOPICS = ("a", "b", "c")


def stance(target: float, others: float, *, items: int = 4, noise: float = 0.0) -> StanceResult:
    """Target topic "a" at ``target``, the others at ``others`` (``noise`` alternates ± over items)."""
    scores = []
    for topic in TOPICS:
        level = target if topic == "a" else others
        for i in range(items):
            scores.append(ItemScore(f"{topic}-{i}", topic, level + (noise if i % 2 else -noise), 0.0))
    return StanceResult(tuple(scores), summarize_topics(scores))


BASE = stance(0.0, 0.0)


def test_reading_at_90_interpolates_between_the_strengths_around_it_and_reads_the_control_there():
    vanilla = {0: stance(1.0, 0.4)}
    treated = {0.5: {0: stance(0.95, 0.3)}, 1.0: {0: stance(0.85, 0.1)}}  # kept .95/.85, reduction .25/.75
    controls = {0.5: {0: stance(1.0, 0.4)}, 1.0: {0: stance(1.0, 0.36)}}  # reduction 0 / 0.1
    rows, at_90 = frontier(BASE, vanilla, treated, controls, "a", "right", n_boot=200)
    assert [r["strength"] for r in rows] == [0.5, 1.0]
    assert rows[0]["target_kept"] == pytest.approx(0.95) and rows[1]["ctg_reduction"] == pytest.approx(0.75)
    assert rows[1]["control"]["ctg_reduction"] == pytest.approx(0.1)
    assert at_90["strength"] == pytest.approx(0.75)  # halfway: kept 0.95 -> 0.85 crosses 0.9 in the middle
    assert at_90["ctg_reduction"]["value"] == pytest.approx(0.5)
    assert at_90["control_ctg_reduction"]["value"] == pytest.approx(0.05)
    assert at_90["reason"] is None and at_90["seeds"] == [0]


def test_the_first_strength_below_the_bar_is_read_from_vanilla_and_a_curve_that_never_falls_has_no_reading():
    vanilla = {0: stance(1.0, 0.4)}
    rows, at_90 = frontier(BASE, vanilla, {1.0: {0: stance(0.8, 0.2)}}, {}, "a", "right", n_boot=100)
    # vanilla (s = 0) keeps 1 and reduces 0; s = 1 keeps 0.8 and reduces 0.5: 0.9 is halfway
    assert at_90["strength"] == pytest.approx(0.5) and at_90["ctg_reduction"]["value"] == pytest.approx(0.25)
    assert at_90["control_ctg_reduction"] is None and "control" not in rows[0]
    _, never = frontier(BASE, vanilla, {1.0: {0: stance(0.99, 0.4)}, 2.0: {0: stance(0.95, 0.3)}}, {}, "a", "right")
    assert never["ctg_reduction"] is None and "every strength measured keeps at least 90%" in never["reason"]
    assert "s=2" in never["reason"]


def test_seeds_are_resampled_and_runs_stay_paired_by_seed():
    """Seeds that disagree widen the CI although the items carry no noise (a bootstrap over items only
    would give a zero-width interval); a method that halves every seed's target exactly keeps 0.5 in
    every draw (a bootstrap that drew vanilla's and the method's seeds independently would not)."""
    vanilla = {0: stance(1.0, 0.4), 1: stance(2.0, 0.8), 2: stance(0.5, 0.2)}
    halved = {s: stance(v.topics["a"].score / 2, v.topics["b"].score / 2) for s, v in vanilla.items()}
    rows, _ = frontier(BASE, vanilla, {1.0: halved}, {}, "a", "right", n_boot=300)
    assert rows[0]["seeds"] == [0, 1, 2]
    assert rows[0]["target_kept_ci_low"] == pytest.approx(0.5) and rows[0]["target_kept_ci_high"] == pytest.approx(0.5)
    uneven = {0: stance(1.0, 0.1), 1: stance(1.0, 0.7), 2: stance(1.0, 0.4)}  # reductions 0.75, -0.75, 0
    rows, _ = frontier(BASE, vanilla, {1.0: uneven}, {}, "a", "right", n_boot=300)
    assert rows[0]["ctg_reduction_ci_high"] - rows[0]["ctg_reduction_ci_low"] > 0.3


def test_the_reading_uses_the_strengths_measured_on_the_most_seeds():
    vanilla = {0: stance(1.0, 0.4), 1: stance(1.0, 0.4)}
    treated = {0.1: {0: stance(0.95, 0.3)}, 0.2: {0: stance(0.5, 0.0), 1: stance(0.5, 0.0)}}
    rows, at_90 = frontier(BASE, vanilla, treated, {}, "a", "right", n_boot=100)
    assert [(r["strength"], r["seeds"]) for r in rows] == [(0.1, [0]), (0.2, [0, 1])]
    assert at_90["seeds"] == [0, 1] and at_90["strengths"] == [0.2]
    assert at_90["strength"] == pytest.approx(0.04)  # from vanilla to s = 0.2 (kept 0.5): 0.9 at a fifth


def test_summary_league_ranks_by_reduction_at_90_and_lists_every_method():
    def trial(seed, result):
        return Trial(seed, {}, result, {}, -2.0)

    runs = [
        (Arm("vanilla", seed=0), trial(0, stance(1.0, 0.4, noise=0.05))),
        (Arm("caft", 1.0, 0), trial(0, stance(0.8, 0.0, noise=0.05))),
        (Arm("caft", 1.0, 0, control=True), trial(0, stance(1.0, 0.38, noise=0.05))),
        (Arm("steer", 1.0, 0), trial(0, stance(0.8, 0.3, noise=0.05))),
        (Arm("kl", 1.0, 0), trial(0, stance(1.0, 0.4, noise=0.05))),
    ]
    result = summarize(Scores(BASE, {}, -2.0), runs, "a", "right", n_boot=100)
    assert [row["method"] for row in result["league"]] == ["caft", "steer"]
    assert result["league"][0]["ctg_reduction"]["value"] == pytest.approx(0.5)
    assert result["league"][0]["control_ctg_reduction"]["value"] == pytest.approx(0.025)
    assert result["at_90"]["kl"]["ctg_reduction"] is None and result["frontier"]["kl"][0]["target_kept"] == 1.0
    assert math.isclose(result["frontier"]["caft"][0]["perplexity_change"], 0.0, abs_tol=1e-12)
    text = league_text(result)
    assert text.index("caft") < text.index("steer") and "kl: no reading at 90% kept" in text


def test_item_pairing_makes_a_method_that_halves_every_item_keep_exactly_half():
    """Items that disagree (noisy shifts) but a method that halves each item's shift: paired across
    base, vanilla and treated, every bootstrap draw keeps exactly half; drawing the items of each run
    independently would give a wide interval."""
    levels = [0.2, 1.9, -0.4, 0.7, 1.2, 0.1]

    def run(scale: float) -> StanceResult:
        scores = [ItemScore(f"{t}-{i}", t, scale * v, 0.0) for t in TOPICS for i, v in enumerate(levels)]
        return StanceResult(tuple(scores), summarize_topics(scores))

    zero = run(0.0)
    out = compare_runs(zero, [run(1.0)], [run(0.5)], "a", "right", n_boot=300)
    assert out["target_kept"].ci_low == pytest.approx(0.5) and out["target_kept"].ci_high == pytest.approx(0.5)
    assert out["ctg_reduction"].value == pytest.approx(0.5) and out["target_shift"].ci_high > out["target_shift"].ci_low
