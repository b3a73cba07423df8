"""The scale benchmark's harness on a CPU (a tiny configuration): every stage runs and is recorded."""

import json

from benchmarks import scale


def test_the_scale_harness_runs_every_stage_on_a_tiny_configuration(tmp_path, monkeypatch, tiny_cache):
    monkeypatch.setattr(scale, "ensure_embedded_cached", lambda: _tokenizer_folder(tiny_cache))
    options = ["--device", "cpu", "--dtype", "float32", "--items", "1", "--steps", "1", "--out", str(tmp_path)]
    results = scale.main(["--models", "tiny", *options])
    stages = results["models"]["tiny"]["stages"]
    assert list(stages) == ["load", "base stance", "finetune", "stance", "localize", "mitigate (one trial)"]
    assert all(entry["seconds"] > 0 and entry["peak_gib"] is None for entry in stages.values())
    assert json.loads((tmp_path / "results-scale.json").read_text())["models"]["tiny"]["parameters"] > 0
    assert "| tiny |" in (tmp_path / "RESULTS-scale.md").read_text()


def _tokenizer_folder(tiny_cache):
    from polineurons.models import ensure_tiny_cached

    return ensure_tiny_cached("tiny-llama", tiny_cache)
