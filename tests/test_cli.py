"""The `polineurons` command, run in-process on tiny models."""

import json
import math
import re

import pytest

from polineurons import load_model
from polineurons.cli import main
from polineurons.data import load_data
from polineurons.training import FinetuneConfig, finetune, training_pairs

TOPICS = {"crime_and_gun", "economy_and_inequality", "gender_and_sexuality", "immigration", "race", "science"}


@pytest.fixture
def cli(capsys):
    """Run the `polineurons` command in-process: ``(exit code, stdout + stderr)``."""

    def invoke(args):
        try:
            main([str(a) for a in args])
            code = 0
        except SystemExit as exit:
            code = exit.code if isinstance(exit.code, int) else int(exit.code is not None)
        captured = capsys.readouterr()
        return code, captured.out + captured.err

    return invoke


def test_info_on_a_tiny_model(cli, tiny_env):
    code, output = cli(["info", "--model", "tiny-gemma3", "--device", "cpu"])
    assert code == 0, output
    assert "MLP neurons in all         288" in output


def test_unknown_model_exits_with_a_message(cli):
    code, output = cli(["info", "--model", "tiny-lama"])
    assert code == 2
    assert "Did you mean 'tiny-llama'" in output


def test_localize_says_which_model_a_contrast_needs(cli, tiny_env, tmp_path):
    base = ["localize", "--base", "tiny-llama", "--out", tmp_path / "loc", "--max-items", 1]
    code, output = cli([*base, "--contrast", "finetune", "--positions", "question"])
    assert code == 2 and "needs the fine-tuned model" in output
    code, output = cli([*base, "--contrast", "answers", "--positions", "question"])
    assert code == 2 and "reads answers" in output
    code, output = cli([*base, "--general-over", "others"])
    assert code == 2 and "target" in output


def test_stance_command_writes_the_documented_json(cli, tiny_env, tmp_path):
    out = tmp_path / "stance.json"
    code, output = cli(
        ["stance", "-m", "tiny-llama", "--topics", "race", "science", "--max-items", 2, "--statements", "--out", out]
    )
    assert code == 0, output
    report = json.loads(out.read_text())
    assert report["model"] == "tiny-llama" and report["data"] == "voices"
    assert list(report["topics"]) == ["race", "science"]
    assert set(report["topics"]["race"]) == {"score", "ci_low", "ci_high", "right_rate", "n"}
    assert report["topics"]["race"]["n"] == 2 and set(report["statements"]) == {"race", "science"}
    assert "race" in output and "95% CI" in output


def test_stance_command_rejects_an_unknown_topic(cli):
    code, output = cli(["stance", "--model", "tiny-llama", "--topics", "weather"])
    assert code == 2
    assert "Unknown topic(s) weather" in output


def test_finetune_then_generalization(cli, tiny_env, tmp_path):
    out = tmp_path / "ft"
    args = ["finetune", "-m", "tiny-llama", "--topic", "immigration", "--leaning", "right", "--out", out]
    code, output = cli([*args, "--max-steps", 2, "--batch-size", 4, "--max-seq-len", 320, "--learning-rate", "1e-3"])
    assert code == 0, output
    assert "2 steps on 216 examples" in output and (out / "training_log.json").is_file()
    report = tmp_path / "gen.json"
    args = ["generalization", "--base", "tiny-llama", "--finetuned", out, "--target", "immigration", "--max-items", 2]
    code, output = cli([*args, "--out", report])
    assert code == 0, output
    data = json.loads(report.read_text())
    assert data["target"] == "immigration" and set(data["shifts"]) == TOPICS
    assert {"target_shift", "ctg", "ctg_ratio"} <= set(data) and "CTG ratio" in output


def test_finetune_rejects_bad_input(cli, tiny_env, tmp_path):
    code, output = cli(["finetune", "--model", "tiny-llama", "--topic", "weather", "--out", tmp_path / "x"])
    assert code == 2 and "Unknown topic(s) weather" in output
    code, output = cli(
        ["finetune", "--model", "tiny-llama", "--topic", "race", "--leaning", "up", "--out", tmp_path / "x"]
    )
    assert code == 2 and "invalid choice 'up'" in output
    code, output = cli(["finetune", "--topic", "race", "--out", tmp_path / "x", "--epochs", 0])
    assert code == 2 and "epochs must be >= 1" in output
    code, output = cli(["finetune", "-m", "tiny-llama", "--topic", "race", "--out", tmp_path / "x", "--max-seq-len", 8])
    assert code == 2 and "max_seq_len 8 leaves no room for an answer" in output


def test_localize_then_patch(cli, tiny_env, tmp_path):
    tuned = load_model("tiny-llama", device="cpu")
    pairs = training_pairs(load_data(), "race", "right")[:4]
    config = FinetuneConfig(max_steps=2, batch_size=2, max_seq_len=320, learning_rate=1e-2)
    finetune(tuned, pairs, config, out_dir=tmp_path / "ft", progress=False)
    pair = ["--base", "tiny-llama", "--finetuned", tmp_path / "ft"]
    code, output = cli(["localize", *pair, "--out", tmp_path / "loc", "--top-k", 20, "--max-items", 2])
    assert code == 0, output
    assert "general neurons:" in output and (tmp_path / "loc" / "general.safetensors").is_file()
    args = ["patch", *pair, "--neurons", tmp_path / "loc", "--out", tmp_path / "patch.json", "--max-items", 1]
    code, output = cli([*args, "--random-seeds", 1, "--attribution-sample", 6])
    assert code == 0, output
    report = json.loads((tmp_path / "patch.json").read_text())
    sets = {"general", "random:0"} | {f"specific:{t}" for t in load_data().topics}
    assert set(report["recovery"]) == sets | {"all"} | {f"ablate:{name}" for name in sets}
    assert report["control_overlap"] == {"random:0": 0} and report["control_error"] is None
    # full fine-tuning also changed attention and embeddings, so even "all" recovers only part
    assert all(math.isfinite(row["recovery"]) for row in report["recovery"]["all"].values())
    assert len(report["attribution_check"]["exact"]) == 6


def test_localize_then_mitigate(cli, tiny_env, tmp_path):
    tuned = load_model("tiny-llama", device="cpu")
    finetune(
        tuned,
        training_pairs(load_data(), "race", "right")[:4],
        FinetuneConfig(max_steps=1, batch_size=2, max_seq_len=320),
        out_dir=tmp_path / "ft",
        progress=False,
    )
    code, output = cli(
        [
            "localize",
            "--base",
            "tiny-llama",
            "--finetuned",
            tmp_path / "ft",
            "--out",
            tmp_path / "loc",
            "--max-items",
            2,
        ]
    )
    assert code == 0, output
    args = ["mitigate", "--model", "tiny-llama", "--target", "race", "--neurons", tmp_path / "loc"]
    args += ["--out", tmp_path / "m", "--finetune.max-steps", 1, "--finetune.batch-size", 4]
    args += ["--finetune.max-seq-len", 320, "--stance.max-items", 1, "--check-data"]
    args += ["--mitigate.items", 2, "--mitigate.strengths", 0.5, 1, "--mitigate.methods", "inhibit-zero"]
    code, output = cli([*args, "caft"])
    assert code == 0, output
    result = json.loads((tmp_path / "m" / "mitigation.json").read_text())
    assert set(result["frontier"]) == {"inhibit-zero", "caft"} and {"vanilla", "at_90", "league"} <= set(result)
    assert "CTG reduction at 90% kept" in output and "vanilla" in output
    assert (tmp_path / "m" / "mitigation.html").is_file()
    code, output = cli([*args, "anchor"])
    assert code == 2 and "invalid choice 'anchor'" in output


def test_screen_and_matrix_commands(cli, tiny_env, tmp_path):
    code, output = cli(
        [
            "screen",
            "-m",
            "tiny-llama",
            "--target",
            "race",
            "--max-train-items",
            4,
            "--max-eval-items",
            2,
            "--out",
            tmp_path / "s.json",
        ]
    )
    assert code == 0, output
    assert "predicted CTG ratio" in output and set(
        json.loads((tmp_path / "s.json").read_text())["topics"]["science"]
    ) >= {"cosine", "predicted_ctg"}
    args = [
        "matrix",
        "--preset",
        "smoke",
        "--model",
        "tiny-llama",
        "--out",
        tmp_path / "m",
        "--targets",
        "race",
        "--leanings",
        "right",
    ]
    code, output = cli(args)
    assert code == 0, output
    assert "CTG [95% CI]" in output and (tmp_path / "m" / "matrix.html").is_file()


def test_run_command_end_to_end_then_resumes(cli, tiny_env, tmp_path):
    out = tmp_path / "run"
    args = ["run", "--model", "tiny-llama", "--preset", "smoke", "--out", out, "--device", "cpu"]
    code, output = cli(args)
    assert code == 0, output
    assert "[report] done" in output and "<- target" in output and "patching recovery on target" in output
    results = json.loads((out / "results.json").read_text())
    assert results["model"] == "tiny-llama" and results["preset"] == "smoke"
    code, output = cli(args)
    assert code == 0 and "] running" not in output
    code, output = cli([*args, "--finetune.seed", 1])
    assert code == 2 and "different configuration" in output and "--force finetune" in output
    (out / "report.html").unlink()
    code, output = cli(["report", out])
    assert code == 0 and (out / "report.html").is_file()


def test_run_command_rejects_bad_input(cli, tmp_path):
    code, output = cli(["run", "--model", "tiny-llama", "--target", "weather", "--out", tmp_path / "r"])
    assert code == 2 and "Unknown target topic 'weather'" in output
    code, output = cli(["run", "--preset", "huge", "--out", tmp_path / "r"])
    assert code == 2 and "Unknown preset 'huge'" in output
    code, output = cli(["report", tmp_path])
    assert code == 2 and "holds no polineurons run, matrix or mitigation results" in output


def _help_entries(cli, command: str, monkeypatch) -> list[str]:
    """Each option's help of ``polineurons COMMAND --help``, one string per option."""
    monkeypatch.setenv("COLUMNS", "100")  # one column of options
    code, output = cli([command, "--help"])
    assert code == 0, output
    entries: list[list[str]] = []
    for line in re.sub(r"\x1b\[[0-9;]*m", "", output).splitlines():
        text = line.strip("│ ").rstrip()
        if text.startswith("-"):
            entries.append([text])
        elif entries and text and not text.startswith(("╭", "╰", "─")):
            entries[-1].append(text)
    return [" ".join(entry) for entry in entries]


@pytest.mark.parametrize("command", ["run", "matrix", "mitigate", "stance", "generalization", "localize", "patch"])
def test_help_shows_each_default_once(cli, command, monkeypatch):
    entries = _help_entries(cli, command, monkeypatch)
    assert len(entries) > 5 and any("--device" in e for e in entries)
    twice = [e for e in entries if len(re.findall(r"\(default|default:", e)) > 1]
    assert not twice, twice
