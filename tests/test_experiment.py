"""The resumable pipeline on a tiny model (smoke preset: seconds)."""

import json
from dataclasses import replace

import pytest

from polineurons import experiment, load_model
from polineurons.artifacts import collect_results, load_run
from polineurons.config import RunConfig, trial_spec
from polineurons.data import load_data
from polineurons.errors import RunError
from polineurons.experiment import STAGES, downstream, run_pipeline
from polineurons.stance import ScoringConfig, StanceConfig, StanceResult
from polineurons.trial import TrialSpec, train_and_score
from tests.helpers import trial_labels


@pytest.fixture
def smoke_config():
    return RunConfig.from_preset("smoke", model="tiny-llama")


def _run(config, out, **kwargs):
    messages = []
    results = run_pipeline(config, out, progress=False, echo=messages.append, device="cpu", **kwargs)
    ran = [m.split("]")[0][1:] for m in messages if m.endswith(("running", "resuming"))]
    return results, ran


@pytest.fixture
def finished_run(smoke_run):
    return smoke_run


def test_downstream_closure():
    assert downstream(["localize"]) == ["localize", "patch", "mitigate", "figures", "report"]
    assert downstream(["base_stance"]) == ["base_stance", "generalization", "mitigate", "figures", "report"]
    assert downstream(["finetune"]) == list(STAGES[1:])
    assert downstream([]) == []


def test_every_stage_runs_and_writes_its_artifacts(finished_run):
    out, results, ran = finished_run
    assert ran == list(STAGES)
    assert sorted(p.stem for p in (out / "stages").glob("*.json")) == sorted(STAGES)  # no stage left started
    for path in (
        "study.json",
        "results.json",
        "report.html",
        "config.json",
        "localize/general.safetensors",
        "patch/recovery.json",
        "mitigation.json",
        "figures/generalization.html",
        "figures/plotly.min.js",
    ):
        assert (out / path).is_file(), path
    run = load_run(out)
    assert (run.model / "config.json").is_file() and run.model.parent.name == "models"
    # the study's base scores: the eval data, the check data and the neutral texts, once each
    assert sorted(p.name.rsplit("-", 1)[0] for p in (out / "base").glob("*.json")) == [
        "neutral",
        "stance-crosscheck",
        "stance-voices",
    ]
    assert not [p for p in out.rglob("*.tmp")], "temporary files left behind"


def test_results_hold_the_headline_numbers(finished_run):
    _, results, _ = finished_run
    topics = {"crime_and_gun", "economy_and_inequality", "gender_and_sexuality", "immigration", "race", "science"}
    assert set(results["base_stance"]) == set(results["finetuned_stance"]) == set(results["shifts"]) == topics
    assert results["target_shift"] == pytest.approx(results["shifts"]["immigration"]["shift"])
    others = [row["shift"] for topic, row in results["shifts"].items() if topic != "immigration"]
    assert results["ctg"] == pytest.approx(sum(others) / len(others))
    assert results["ctg_ci_low"] <= results["ctg"] <= results["ctg_ci_high"]
    assert results["ctg_ratio"] == pytest.approx(results["ctg"] / results["target_shift"])
    assert [row["seed"] for row in results["per_seed"]] == [0] and results["per_seed"][0]["ctg"] == results["ctg"]
    assert set(results["checks"]) == {"crosscheck"} and "ctg_ci_low" in results["checks"]["crosscheck"]
    general = results["general_neurons"]
    assert general["n_neurons"] == 288 and general["fraction"] == pytest.approx(general["count"] / 288)
    patch = results["patching_recovery_on_target"]
    assert {"general", "random_mean", "specific_target", "all"} <= set(patch) and len(patch["random"]) == 1
    mitigation = results["mitigation"]
    assert set(mitigation["frontier"]) == set(mitigation["at_90"]) == {"inhibit-zero", "caft"}
    for rows in mitigation["frontier"].values():
        assert [r["strength"] for r in rows] == [1.0]
        assert {"target_kept", "ctg_ratio", "ctg_reduction"} <= set(rows[0]) and "ctg_ratio" in rows[0]["control"]


def test_mitigation_shares_the_finetune_stage_trial_and_training_is_deterministic(finished_run):
    """The mitigate stage's vanilla run IS the finetune stage's trial (one file, trained once), and
    training it afresh with the same settings gives the same stance."""
    out, _, _ = finished_run
    assert trial_labels(out) == [
        "immigration-right-caft-control-s1-seed0",
        "immigration-right-caft-s1-seed0",
        "immigration-right-inhibit-zero-control-s1-seed0",
        "immigration-right-inhibit-zero-s1-seed0",
        "immigration-right-vanilla-seed0",
    ]
    assert load_run(out).training[0]["n_steps"] == 2
    config = RunConfig.from_preset("smoke", model="tiny-llama")
    spec = TrialSpec(load_data(config.data), config.target, config.leaning, config.finetune, config.stance)
    fresh = train_and_score(spec, load_model("tiny-llama", device="cpu"), seed=0, progress=False)
    trial = json.loads(next((out / "trials").glob("immigration-right-vanilla-seed0-*.json")).read_text())
    assert [i.id for i in fresh.stance.items] == [i["id"] for i in trial["stance"]["items"]]
    for a, b in zip(fresh.stance.items, trial["stance"]["items"], strict=True):
        assert a.score == pytest.approx(b["score"], abs=1e-5)


def test_a_second_invocation_resumes_without_recomputing(finished_run):
    out, results, _ = finished_run
    markers = {p.name: p.stat().st_mtime_ns for p in (out / "stages").glob("*.json")}
    again, ran = _run(RunConfig.from_preset("smoke", model="tiny-llama"), out)
    assert ran == []
    assert {p.name: p.stat().st_mtime_ns for p in (out / "stages").glob("*.json")} == markers
    assert again == json.loads(json.dumps(results))


def test_a_changed_config_is_refused_unless_forced(tiny_env, smoke_config, tmp_path):
    _run(smoke_config, tmp_path)
    changed = RunConfig.from_preset("smoke", model="tiny-llama", **{"localize.top_k": 10.0})
    with pytest.raises(RunError, match=r"localize: localize.top_k \(stored 20.0, now 10.0\)") as error:
        _run(changed, tmp_path)
    assert "--force localize" in str(error.value) and "patch" not in str(error.value)
    _, ran = _run(changed, tmp_path, force=["localize"])
    assert ran == ["localize", "patch", "mitigate", "figures", "report"]
    assert load_run(tmp_path).localize["config"]["top_k"] == 10.0


def test_force_recomputes_a_stage_and_what_depends_on_it(tiny_env, smoke_config, tmp_path):
    _run(smoke_config, tmp_path)
    _, ran = _run(smoke_config, tmp_path, force=["patch"])
    assert ran == ["patch", "figures", "report"]
    with pytest.raises(RunError, match="Unknown stage"):
        _run(smoke_config, tmp_path, force=["pach"])


def test_an_interrupted_run_keeps_finished_stages_and_resumes(tiny_env, smoke_config, tmp_path, monkeypatch):
    def interrupted(ctx):
        raise KeyboardInterrupt

    stages = tuple(replace(s, run=interrupted) if s.name == "patch" else s for s in experiment.PIPELINE)
    monkeypatch.setattr(experiment, "PIPELINE", stages)
    with pytest.raises(KeyboardInterrupt):
        _run(smoke_config, tmp_path)
    assert sorted(p.stem for p in (tmp_path / "stages").glob("*.json") if "." not in p.stem) == sorted(
        ["base_stance", "finetune", "generalization", "localize"]
    )
    partial = json.loads((tmp_path / "results.json").read_text())
    assert "general_neurons" in partial and "patching_recovery_on_target" not in partial
    monkeypatch.undo()
    _, ran = _run(smoke_config, tmp_path)
    assert ran == ["patch", "mitigate", "figures", "report"]


def test_bad_input_fails_before_any_work(tiny_env, tmp_path):
    with pytest.raises(RunError, match="Unknown target topic 'weather'"):
        _run(RunConfig.from_preset("smoke", model="tiny-llama", target="weather"), tmp_path / "a")
    with pytest.raises(RunError, match="Did you mean 'tiny-llama'"):
        _run(RunConfig.from_preset("smoke", model="tiny-lama"), tmp_path / "b")
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(RunError, match="Cannot write to the folder"):
        _run(RunConfig.from_preset("smoke", model="tiny-llama"), blocker / "run")
    with pytest.raises(RunError, match="Unknown preset"):
        RunConfig.from_preset("fast")
    assert not (tmp_path / "a" / "stages").exists()


def test_own_topics_skip_check_sets_without_them_and_set_their_eval_size(tmp_path):
    rows = [
        {"topic": topic, "question": f"{topic} question {i}?", "left": f"left {i}", "right": f"right {i}"}
        for topic in ("taxes", "zoning")
        for i in range(6)
    ]
    data = tmp_path / "mine.jsonl"
    data.write_text("".join(json.dumps(row) + "\n" for row in rows))
    with pytest.warns(UserWarning, match="Check data crosscheck is not scored: it needs the topic 'taxes'"):
        spec = trial_spec(RunConfig(data=str(data), target="taxes", eval_size=2))
    assert spec.checks == {} and spec.dataset.counts()["taxes"] == {"train": 4, "eval": 2}
    with pytest.raises(ValueError, match="eval_size must be >= 1"):
        RunConfig(eval_size=0)


def test_check_data_scoring_has_no_neutral_texts_and_keeps_stored_trial_keys():
    # check sets are scored by a ScoringConfig: the neutral-text check is sized once, by stance.neutral_items
    with pytest.raises(ValueError, match="check scores no neutral text"):
        RunConfig(check=StanceConfig(neutral_items=4))
    spec = trial_spec(RunConfig())
    assert type(spec.check_stance) is ScoringConfig
    as_before = replace(spec, check_stance=StanceConfig(**vars(spec.check_stance)))  # how trials were keyed
    assert spec.scoring() == as_before.scoring()


def test_collect_results_of_a_partial_run(finished_run, tmp_path):
    out, _, _ = finished_run
    run = load_run(out)
    run.patch = run.recovery = run.mitigation = None
    results = collect_results(run)
    assert "patching_recovery_on_target" not in results and "mitigation" not in results and "target_shift" in results


def test_stance_round_trips_through_json(finished_run):
    out, _, _ = finished_run
    data = json.loads(next((out / "base").glob("stance-voices-*.json")).read_text())
    assert StanceResult.from_dict(data).to_dict() == {k: data[k] for k in ("topics", "items")}


def test_seeds_and_a_left_leaning_run(tiny_env, tmp_path):
    """Two seeds of a left-leaning fine-tune: per-seed rows, pooled = their mean, signed toward left."""
    config = RunConfig.from_preset("smoke", model="tiny-llama", leaning="left", seeds=2)
    results, _ = _run(config.with_overrides({"mitigate.controls": False, "mitigate.methods": ("caft",)}), tmp_path)
    assert [row["seed"] for row in results["per_seed"]] == [0, 1]
    assert results["ctg"] == pytest.approx(sum(row["ctg"] for row in results["per_seed"]) / 2)
    assert results["target_shift"] == pytest.approx(sum(row["target_shift"] for row in results["per_seed"]) / 2)
    check = results["checks"]["crosscheck"]  # the check data, per seed too
    assert [row["seed"] for row in check["per_seed"]] == [0, 1] and set(check["seed_sd"]) >= {"ctg"}
    assert check["ctg"] == pytest.approx(sum(row["ctg"] for row in check["per_seed"]) / 2)
    first = load_run(tmp_path).generalization
    assert first.leaning == "left" and results["per_seed"][0]["target_shift"] == pytest.approx(first.target_shift)
    assert first.target_shift == pytest.approx(-first.shifts["immigration"].shift)
    assert trial_labels(tmp_path) == [
        "immigration-left-caft-s1-seed0",
        "immigration-left-caft-s1-seed1",
        "immigration-left-vanilla-seed0",
        "immigration-left-vanilla-seed1",
    ]  # one vanilla trial per seed, shared by the finetune and mitigate stages
    assert len(list((tmp_path / "models").iterdir())) == 1  # only the first seed's model is kept
