import json

import numpy as np
import pytest

from polineurons import load_model
from polineurons.data import load_data
from polineurons.finetune import FinetuneConfig
from polineurons.hooks import FreezeNeurons, ScaleNeurons
from polineurons.inhibitft import InhibitConfig, compare_runs, plan_variants, run_inhibitft
from polineurons.neurons import NeuronSet
from polineurons.stance import ItemScore, StanceConfig, StanceResult, summarize
from polineurons.viz import inhibitft_tradeoff


def ranked(percent):
    return NeuronSet.from_indices({2: range(int(percent))}, 3, 96)


def test_plan_variants():
    variants = plan_variants(ranked, InhibitConfig(percents=(1, 5), modes=("zero", "scale", "freeze")), seeds=(0, 1))
    names = [v.name for v in variants]
    assert names[:5] == [
        "vanilla/seed0",
        "zero/p1/seed0",
        "scale0.5/p1/seed0",
        "freeze/p1/seed0",
        "random-zero/p1/seed0",
    ]
    assert len(variants) == 2 * (1 + 2 * 4)
    control = variants[4]
    assert (
        control.control and control.neurons.layer_counts() == ranked(1).layer_counts() and control.neurons != ranked(1)
    )
    zero, scale, freeze = (variants[i].intervention for i in (1, 2, 3))
    assert isinstance(zero, ScaleNeurons) and zero.scale == 0.0 and zero.neurons == ranked(1)
    assert isinstance(scale, ScaleNeurons) and scale.scale == 0.5 and scale.neurons == ranked(1)
    assert isinstance(freeze, FreezeNeurons) and freeze.neurons == ranked(1) and variants[0].intervention is None
    with pytest.raises(ValueError, match="Unknown mode"):
        InhibitConfig(modes=("anchor",))
    with pytest.raises(ValueError, match="scale must be in"):
        InhibitConfig(modes=("scale",), scale=1.5)


def result(shifts):
    items = tuple(ItemScore(f"{t}-{i}", t, s, 0.0) for t, values in shifts.items() for i, s in enumerate(values))
    return StanceResult(items, summarize(items))


def test_compare_runs_ratios():
    base = result({"a": [0, 0], "b": [0, 0], "c": [0, 0]})
    vanilla = result({"a": [1.0, 1.0], "b": [0.2, 0.2], "c": [0.4, 0.4]})
    inhibited = result({"a": [0.5, 0.5], "b": [0.1, 0.1], "c": [0.1, 0.1]})
    out = compare_runs(base, vanilla, inhibited, "a", n_boot=50)
    assert out["target_kept"]["value"] == pytest.approx(0.5)
    assert out["ctg_reduction"]["value"] == pytest.approx(1 - 0.1 / 0.3)
    assert out["ctg_ratio"]["value"] == pytest.approx(0.2) and out["vanilla_ctg_ratio"]["value"] == pytest.approx(0.3)
    assert out["target_kept"]["ci_low"] == pytest.approx(0.5)  # identical items: no spread


def test_run_is_resumable_and_writes_the_tables(tiny_cache, tmp_path, monkeypatch):
    data = load_data()
    variants = plan_variants(ranked, InhibitConfig(percents=(4,), modes=("zero",)))
    config = FinetuneConfig(max_steps=1, batch_size=4, max_seq_len=320, learning_rate=1e-2)
    load = lambda: load_model("tiny-llama", device="cpu", cache=tiny_cache)  # noqa: E731
    options = {"config": config, "stance": StanceConfig(max_items=1), "progress": False}
    summary = run_inhibitft(load, data, "race", variants, tmp_path, **options)
    assert set(summary["comparisons"]) == {"zero/p4/seed0", "random-zero/p4/seed0"}
    assert set(summary["vanilla"]) == {"vanilla/seed0"} and "shifts" in summary["vanilla"]["vanilla/seed0"]
    assert {"value", "ci_low", "ci_high"} <= set(summary["ctg_reduction"]["zero/p4/seed0"])
    assert json.loads((tmp_path / "summary.json").read_text())["target"] == "race"
    assert len(list((tmp_path / "runs").glob("*.json"))) == 3

    import polineurons.inhibitft as module

    monkeypatch.setattr(module, "finetune", lambda *a, **k: pytest.fail("finished runs must not be retrained"))
    again = run_inhibitft(load, data, "race", variants, tmp_path, **options)
    assert again["comparisons"] == summary["comparisons"]
    figure = inhibitft_tradeoff(summary)
    assert len(figure.data) == 4 and figure.data[0].x == (4,)
    assert np.isfinite(figure.data[1].y[0])
