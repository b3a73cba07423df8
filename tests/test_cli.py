import math

from typer.testing import CliRunner

from polineurons.cli import app


def test_info_on_a_tiny_model(tiny_cache, monkeypatch):
    monkeypatch.setenv("POLINEURONS_CACHE", str(tiny_cache))
    result = CliRunner().invoke(app, ["info", "--model", "tiny-gemma3", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    assert "MLP neurons in all         288" in result.output


def test_unknown_model_exits_with_a_message():
    result = CliRunner().invoke(app, ["info", "--model", "tiny-lama"])
    assert result.exit_code == 2
    assert "Did you mean 'tiny-llama'" in result.output


def test_stance_command_writes_the_documented_json(tiny_cache, monkeypatch, tmp_path):
    import json

    monkeypatch.setenv("POLINEURONS_CACHE", str(tiny_cache))
    out = tmp_path / "stance.json"
    args = ["stance", "--model", "tiny-llama", "--topics", "race,science", "--max-items", "2", "--statements", "--out", str(out)]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    report = json.loads(out.read_text())
    assert report["model"] == "tiny-llama" and report["data"] == "bundled"
    assert list(report["topics"]) == ["race", "science"]
    assert set(report["topics"]["race"]) == {"score", "ci_low", "ci_high", "right_rate", "n"}
    assert report["topics"]["race"]["n"] == 2 and set(report["statements"]) == {"race", "science"}
    assert "race" in result.output and "95% CI" in result.output


def test_stance_command_rejects_an_unknown_topic():
    result = CliRunner().invoke(app, ["stance", "--model", "tiny-llama", "--topics", "weather"])
    assert result.exit_code == 2
    assert "Unknown topic(s) weather" in result.output


def test_finetune_then_generalization(tiny_cache, monkeypatch, tmp_path):
    import json

    monkeypatch.setenv("POLINEURONS_CACHE", str(tiny_cache))
    out = tmp_path / "ft"
    args = ["finetune", "--model", "tiny-llama", "--topic", "immigration", "--leaning", "right", "--out", str(out),
            "--max-steps", "2", "--batch-size", "4", "--max-seq-len", "320", "--lr", "1e-3"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "2 steps on 61 examples" in result.output and (out / "training_log.json").is_file()
    report = tmp_path / "gen.json"
    args = ["generalization", "--base", "tiny-llama", "--finetuned", str(out), "--target", "immigration",
            "--max-items", "2", "--out", str(report)]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    data = json.loads(report.read_text())
    assert data["target"] == "immigration" and set(data["shifts"]) == {
        "crime_and_gun", "economy_and_inequality", "gender_and_sexuality", "immigration", "race", "science"}
    assert {"target_shift", "ctg", "ctg_ratio"} <= set(data) and "CTG ratio" in result.output


def test_finetune_rejects_bad_input(tmp_path):
    result = CliRunner().invoke(app, ["finetune", "--model", "tiny-llama", "--topic", "weather", "--out", str(tmp_path / "x")])
    assert result.exit_code == 2 and "Unknown topic(s) weather" in result.output
    result = CliRunner().invoke(app, ["finetune", "--model", "tiny-llama", "--topic", "race", "--leaning", "up", "--out", str(tmp_path / "x")])
    assert result.exit_code == 2 and "Unknown leaning 'up'" in result.output


def test_localize_then_patch(tiny_cache, monkeypatch, tmp_path):
    import json

    from polineurons import load_model
    from polineurons.data import load_data
    from polineurons.finetune import FinetuneConfig, finetune, training_pairs

    monkeypatch.setenv("POLINEURONS_CACHE", str(tiny_cache))
    tuned = load_model("tiny-llama", device="cpu")
    pairs = training_pairs(load_data(), "race", "right")[:4]
    finetune(tuned, pairs, FinetuneConfig(max_steps=2, batch_size=2, max_seq_len=320, learning_rate=1e-2), out_dir=tmp_path / "ft", progress=False)
    args = ["localize", "--base", "tiny-llama", "--finetuned", str(tmp_path / "ft"), "--out", str(tmp_path / "loc"),
            "--top-k", "20", "--max-items", "2"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "general neurons:" in result.output and (tmp_path / "loc" / "general.safetensors").is_file()
    args = ["patch", "--base", "tiny-llama", "--finetuned", str(tmp_path / "ft"), "--neurons", str(tmp_path / "loc"),
            "--out", str(tmp_path / "patch.json"), "--max-items", "1", "--random-seeds", "1", "--attribution-sample", "6"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "patch.json").read_text())
    assert set(report["recovery"]) == {"general", "random:0", "all"} | {f"specific:{t}" for t in load_data().topics}
    # full fine-tuning also changed attention and embeddings, so even "all" recovers only part
    assert all(math.isfinite(row["recovery"]) for row in report["recovery"]["all"].values())
    assert len(report["attribution_check"]["exact"]) == 6


def test_inhibitft_command(tiny_cache, monkeypatch, tmp_path):
    import json

    from polineurons.neurons import NeuronSet

    monkeypatch.setenv("POLINEURONS_CACHE", str(tiny_cache))
    NeuronSet.from_indices({2: range(5)}, 3, 96).save(tmp_path / "set")
    args = ["inhibitft", "--base", "tiny-llama", "--target", "race", "--neurons", str(tmp_path / "set.safetensors"),
            "--out", str(tmp_path / "inh"), "--max-steps", "1", "--batch-size", "4", "--max-seq-len", "320",
            "--max-items", "1", "--mode", "zero,freeze"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    summary = json.loads((tmp_path / "inh" / "summary.json").read_text())
    assert set(summary["comparisons"]) == {"zero/p5/seed0", "freeze/p5/seed0", "random-zero/p5/seed0"}
    assert {"ctg_reduction", "target_kept", "vanilla", "inhibited"} <= set(summary)
    bad = CliRunner().invoke(app, args[:-1] + ["anchor"])
    assert bad.exit_code == 2 and "Unknown mode" in bad.output


def test_run_command_end_to_end_then_resumes(tiny_cache, monkeypatch, tmp_path):
    import json

    monkeypatch.setenv("POLINEURONS_CACHE", str(tiny_cache))
    out = tmp_path / "run"
    args = ["run", "--model", "tiny-llama", "--preset", "smoke", "--out", str(out), "--device", "cpu"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "[report] done" in result.output and "<- target" in result.output and "patching recovery on target" in result.output
    results = json.loads((out / "results.json").read_text())
    assert results["model"] == "tiny-llama" and results["preset"] == "smoke"
    again = CliRunner().invoke(app, args)
    assert again.exit_code == 0 and "] running" not in again.output
    changed = CliRunner().invoke(app, [*args, "--seed", "1"])
    assert changed.exit_code == 2 and "different configuration" in changed.output and "--force finetune" in changed.output
    (out / "report.html").unlink()
    rebuilt = CliRunner().invoke(app, ["report", str(out)])
    assert rebuilt.exit_code == 0 and (out / "report.html").is_file()


def test_run_command_rejects_bad_input(tmp_path):
    result = CliRunner().invoke(app, ["run", "--model", "tiny-llama", "--target", "weather", "--out", str(tmp_path / "r")])
    assert result.exit_code == 2 and "Unknown target topic 'weather'" in result.output
    result = CliRunner().invoke(app, ["run", "--preset", "huge", "--out", str(tmp_path / "r")])
    assert result.exit_code == 2 and "Unknown preset 'huge'" in result.output
    result = CliRunner().invoke(app, ["report", str(tmp_path)])
    assert result.exit_code == 2 and "not a polineurons run folder" in result.output
