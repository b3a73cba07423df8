"""Slow: quick-settings fine-tune of the embedded model (`pytest -m slow`, about 5 minutes here)."""

import pytest

from polineurons import load_model
from polineurons.data import load_data
from polineurons.finetune import FinetuneConfig, finetune, training_pairs
from polineurons.generalization import measure_generalization

pytestmark = pytest.mark.slow


def test_right_leaning_finetune_moves_the_target_topic_right(embedded_model, tmp_path, capsys):
    data = load_data()
    tuned = load_model(device="cpu")
    result = finetune(
        tuned, training_pairs(data, "immigration", "right"), FinetuneConfig(), out_dir=tmp_path / "ft", progress=False
    )
    assert result.losses[-1] < result.losses[0]
    shifts, _, _ = measure_generalization(embedded_model, tuned, data, "immigration", progress=False)
    target = shifts.shifts["immigration"]
    with capsys.disabled():
        print(
            f"\ntarget shift {target.shift:+.3f} [{target.ci_low:+.3f}, {target.ci_high:+.3f}], CTG {shifts.ctg:+.3f}"
        )
    assert target.shift > 0 and target.ci_low > 0
