"""The benchmark harness itself (not timings): its reference loop must compute the same scores as
PNLAC, and its verdicts must follow the targets."""

import torch

from benchmarks import run as bench
from polineurons.contrasts import finetune_contrast


def test_reference_loop_gives_the_same_scores(tiny_llama, tiny_cache, monkeypatch):
    monkeypatch.setenv("POLINEURONS_CACHE", str(tiny_cache))
    tuned = bench.perturbed_copy("tiny-llama", "cpu")
    sequences = bench.question_sequences(tiny_llama, 6)
    ours = finetune_contrast(tiny_llama, tuned, sequences, batch_size=4)
    theirs = bench.reference_contrast(tiny_llama, tuned, sequences)
    assert ours.abs().max() > 0
    torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-6)


def test_measurement_verdicts():
    slower = bench.Measurement("x", "<= 1.2x", ratios=[1.1, 1.3, 1.15])
    assert slower.ratio == 1.15 and slower.met()
    faster = bench.Measurement("y", ">= 5x", ratios=[4.0, 4.5])
    assert not faster.met() and faster.to_dict()["ratio_min"] == 4.0
