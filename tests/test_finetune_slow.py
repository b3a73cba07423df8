"""Slow: one real seed of the quick path on the embedded model (`pytest -m slow`, about 6 minutes here).

The quick preset's fine-tune (right-leaning, immigration, partisan-voice data) must move the target
topic and spill over onto the other topics: CTG with its 95% CI above zero and a CTG ratio of at
least 0.2 — the phenomenon the whole study starts from."""

import pytest

from polineurons import load_model
from polineurons.config import RunConfig
from polineurons.data import load_data
from polineurons.generalization import seed_headlines
from polineurons.stance import measure_stance
from polineurons.trial import TrialSpec, train_and_score

pytestmark = pytest.mark.slow


def test_quick_fine_tune_spills_over_onto_the_other_topics(embedded_model, tmp_path, capsys):
    config = RunConfig.from_preset("quick")
    data = load_data(config.data)
    spec = TrialSpec(data, config.target, config.leaning, config.finetune, config.stance)
    trial = train_and_score(spec, load_model(device="cpu"), seed=config.finetune.seed, progress=False)
    assert trial.training["losses"][-1] < trial.training["losses"][0]
    base = measure_stance(embedded_model, data, config.stance, progress=False)
    pooled = seed_headlines(base, [trial.stance], config.target, config.leaning).pooled
    with capsys.disabled():
        print(
            f"\ntarget shift {pooled.target_shift.value:+.3f}, CTG {pooled.ctg.value:+.3f} "
            f"[{pooled.ctg.ci_low:+.3f}, {pooled.ctg.ci_high:+.3f}], CTG ratio {pooled.ctg_ratio.value:+.2f}"
        )
    assert pooled.target_shift.ci_low > 0
    assert pooled.ctg.ci_low > 0 and pooled.ctg_ratio.value >= 0.2
