"""The tuner: every algorithm finds hyperparameters the trainer can load, a rerun resumes, workers share trials."""

from __future__ import annotations

import glob
import json
import os
import socket
import subprocess
import sys
import time

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = {"family": "model1", "width": 0.125}
TINY_FLAGS = ["--model", "model1", "--fix", "width=0.125", "--image_size", "32", "--epochs", "1",
              "--steps_per_epoch", "2", "--validation_steps", "1"]


@pytest.fixture(autouse=True)
def _not_distributed(monkeypatch):
    for name in ("KERASTUNER_TUNER_ID", "KERASTUNER_ORACLE_IP", "KERASTUNER_ORACLE_PORT"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture(scope="module")
def examples(tmp_path_factory) -> str:
    """40 synthetic images ingested at 72x72 by the real Beam job, and their train split's colour prior (written by
    the statistics stage next to the ingest dir: prior_of(examples))."""
    from components import statistics, synthetic
    from components.example_gen import IngestConfig, run_ingest

    root = tmp_path_factory.mktemp("tuner_data")
    synthetic.generate(str(root / "images"), 40, seed=1, size=64)
    out = str(root / "ingest")
    run_ingest(IngestConfig(sources=(("s", str(root / "images")),), output_dir=out, stored_size=72, min_side=64),
               ["--runner=DirectRunner"])
    statistics.write_prior(statistics.StatisticsConfig(examples=out, output_dir=str(root / "statistics")))
    return out


def prior_of(examples: str) -> str:
    """The prior.json the examples fixture wrote: the search covers both heads with it."""
    return os.path.join(os.path.dirname(examples), "statistics", "prior.json")


def tiny_config(examples: str, output_dir: str, **overrides):
    from components.tuner import TuneConfig

    settings = dict(examples=examples, output_dir=output_dir, max_trials=2, epochs=1, steps_per_epoch=2,
                    validation_steps=1, image_size=32, fixed=dict(TINY), seed=7, verbose=0, prior=prior_of(examples))
    return TuneConfig(**{**settings, **overrides})


def trial_records(output_dir: str) -> dict[str, dict]:
    """trial id -> keras-tuner's trial.json plus our run_by.json under "run_by"."""
    records = {}
    for path in glob.glob(os.path.join(output_dir, "tuner", "trial_*", "trial.json")):
        with open(path) as f:
            trial = json.load(f)
        run_by = os.path.join(os.path.dirname(path), "run_by.json")
        if os.path.exists(run_by):
            with open(run_by) as f:
                trial["run_by"] = json.load(f)
        records[trial["trial_id"]] = trial
    return records


@pytest.fixture(scope="module")
def random_search(examples, tmp_path_factory):
    from components import tuner

    config = tiny_config(examples, str(tmp_path_factory.mktemp("random")))
    return config, tuner.tune(config)


def test_random_search_writes_hparams_the_trainer_loads(random_search):
    from components import hparams

    config, result = random_search
    assert result.completed_trials == 2 and result.trials_run == 2
    assert result.best_hparams_path == os.path.join(config.output_dir, "best_hparams.json")
    loaded = hparams.load(result.best_hparams_path)
    assert loaded == result.hyperparameters
    assert loaded["family"] == "model1" and loaded["width"] == 0.125
    assert loaded["batch_size"] in hparams.SEARCH_SPACE["batch_size"][1]
    with open(result.best_hparams_path) as f:
        saved = json.load(f)
    assert saved["objective"] == "val_mae" and saved["algorithm"] == "random"
    records = trial_records(config.output_dir)
    assert saved["trial_id"] in records
    assert saved["score"] == min(t["score"] for t in records.values())


def test_a_trial_traces_its_train_step_once(examples, tmp_path):
    import keras_tuner as kt

    from components import tuner

    # Keras would create Adam's slots inside the first traced step, and a step that creates variables is traced
    # twice: every trial would compile its model twice.
    config = tiny_config(examples, str(tmp_path), fixed={**TINY, "head": "regression"})
    hypermodel = tuner.ColorizationHyperModel(config, weights={})
    hp = kt.HyperParameters()
    model = hypermodel.build(hp)
    traces, step = [], model.train_step
    model.train_step = lambda data: traces.append(data) or step(data)  # runs in Python only while tracing
    hypermodel.fit(hp, model, epochs=2, steps_per_epoch=2, validation_steps=1, verbose=0)
    assert len(traces) == 1


def test_the_same_seed_draws_and_scores_the_same_trials(examples, tmp_path):
    from components import tuner

    def trials(name, seed):
        config = tiny_config(examples, str(tmp_path / name), seed=seed)
        tuner.tune(config)
        records = trial_records(config.output_dir)
        return sorted((t["trial_id"], t["hyperparameters"]["values"], t["score"]) for t in records.values())

    first = trials("a", 0)  # keras-tuner by itself reads seed 0 as no seed
    assert trials("b", 0) == first
    assert trials("c", 1) != first
    with pytest.raises(tuner.TunerError, match="seed must be a whole number of at least 0"):
        tiny_config(examples, str(tmp_path / "d"), seed=-1).validate()


def test_rerun_resumes_and_reuses_finished_trials(random_search):
    from components import tuner

    config, _ = random_search
    before = trial_records(config.output_dir)
    result = tuner.tune(tiny_config(config.examples, config.output_dir, max_trials=3))
    after = trial_records(config.output_dir)
    assert result.trials_run == 1 and result.completed_trials == 3
    assert {k: after[k]["metrics"] for k in before} == {k: t["metrics"] for k, t in before.items()}
    with pytest.raises(tuner.TunerError, match="other settings"):
        tuner.tune(tiny_config(config.examples, config.output_dir, max_trials=4, image_size=40))


def test_killed_search_resumes_with_the_interrupted_trial(examples, tmp_path):
    from components import tuner

    out = str(tmp_path / "out")
    command = [sys.executable, "-m", "components.tuner", "--examples", examples, "--output_dir", out,
               "--max_trials", "2", "--seed", "7", "--prior", prior_of(examples), *TINY_FLAGS]
    second_trial = os.path.join(out, "tuner", "trial_1", "run_by.json")
    with open(tmp_path / "killed.log", "w") as log:
        proc = subprocess.Popen(command, cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + 120
            while not os.path.exists(second_trial) and proc.poll() is None and time.monotonic() < deadline:
                time.sleep(0.2)
        finally:
            proc.kill()
            proc.wait(timeout=10)
    assert os.path.exists(second_trial), (tmp_path / "killed.log").read_text()[-3000:]
    before = trial_records(out)
    assert before["0"]["status"] == "COMPLETED" and before["1"]["status"] == "RUNNING"

    result = tuner.tune(tiny_config(examples, out))
    after = trial_records(out)
    assert result.trials_run == 1 and result.completed_trials == 2
    assert after["0"]["metrics"] == before["0"]["metrics"] and after["1"]["status"] == "COMPLETED"
    assert after["1"]["hyperparameters"]["values"] == before["1"]["hyperparameters"]["values"]


def test_hyperband_continues_the_best_trial_from_its_checkpoint(examples, tmp_path):
    from components import tuner

    # Factor 2 over 2 epochs: two 1-epoch trials, then the better one trained on to epoch 2 (max_trials stops there).
    result = tuner.tune(tiny_config(examples, str(tmp_path), algorithm="hyperband", epochs=2, hyperband_factor=2,
                                    max_trials=3, steps_per_epoch=1))
    records = trial_records(str(tmp_path))
    assert result.completed_trials == len(records) == 3
    continued = [t for t in records.values() if "tuner/trial_id" in t["hyperparameters"]["values"]]
    assert len(continued) == 1 and continued[0]["status"] == "COMPLETED"
    assert os.path.exists(os.path.join(str(tmp_path), "best_hparams.json"))


def test_bayesian_optimization_runs_past_its_random_start(examples, tmp_path):
    from components import hparams, tuner

    result = tuner.tune(tiny_config(examples, str(tmp_path), algorithm="bayesian", max_trials=3, objective="val_mae"))
    assert result.completed_trials == 3
    with open(result.best_hparams_path) as f:
        assert json.load(f)["objective"] == "val_mae"
    assert hparams.load(result.best_hparams_path) == result.hyperparameters


def test_model2_without_weights_stops_before_any_trial(examples, tmp_path, monkeypatch, caplog):
    from components import models, tuner

    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "empty_keras_home"))
    monkeypatch.setattr(models.keras.utils, "get_file", _offline_get_file)  # never download in a test
    config = tiny_config(examples, str(tmp_path / "out"), fixed={"family": "model2"}).validate()
    with pytest.raises(models.MissingWeightsError, match="Keras cache"):
        tuner.tune(config)
    assert not os.path.exists(os.path.join(str(tmp_path / "out"), "tuner", "oracle.json"))
    config.allow_random_backbone = True
    assert tuner.backbone_weights(config) == {"inception_resnet_v2": None, "mobilenet_v2": None}
    assert "RANDOMLY INITIALISED" in caplog.text


def _offline_get_file(fname, origin, *args, **kwargs):
    """keras.utils.get_file on a machine without network: Keras raises a plain Exception."""
    raise Exception(f"URL fetch failure on {origin}: None -- [Errno -3] Temporary failure in name resolution")


def test_objective_forms():
    from components import tuner

    assert (tuner.parse_objective("val_loss").name, tuner.parse_objective("val_loss").direction) == ("val_loss", "min")
    assert tuner.parse_objective("loss").direction == "min"
    assert tuner.parse_objective("val_mae:max").direction == "max"
    with pytest.raises(tuner.TunerError, match="not a reported metric"):
        tuner.parse_objective("val_accuracy")


def test_cli_bad_input_is_one_sentence(tmp_path, capsys):
    from components import tuner

    assert tuner.run(["--examples", str(tmp_path / "missing"), "--output_dir", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("tuner: ") and "missing" in err and len(err.splitlines()) == 1
    with pytest.raises(SystemExit) as exit_info:
        tuner.run(["--output_dir", str(tmp_path / "out")])
    assert exit_info.value.code == 2 and "--examples" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        tuner.run(["--examples", str(tmp_path), "--output_dir", str(tmp_path), "--algorithm", "grid"])
    assert exit_info.value.code == 2
    assert "invalid choice: 'grid'" in capsys.readouterr().err


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_distributed_chief_and_two_workers_share_the_trials(examples, tmp_path):
    out = str(tmp_path / "out")
    port = _free_port()
    command = [sys.executable, "-m", "components.tuner", "--examples", examples, "--output_dir", out,
               "--max_trials", "4", "--seed", "3", "--prior", prior_of(examples), *TINY_FLAGS]
    procs: dict[str, subprocess.Popen] = {}
    logs = {}
    try:
        for tuner_id in ("chief", "tuner0", "tuner1"):
            env = {**os.environ, "KERASTUNER_TUNER_ID": tuner_id, "KERASTUNER_ORACLE_IP": "127.0.0.1",
                   "KERASTUNER_ORACLE_PORT": str(port), "TF_CPP_MIN_LOG_LEVEL": "2", "CUDA_VISIBLE_DEVICES": ""}
            logs[tuner_id] = str(tmp_path / f"{tuner_id}.log")
            with open(logs[tuner_id], "w") as log:
                procs[tuner_id] = subprocess.Popen(command, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 150
        for tuner_id, proc in procs.items():
            proc.wait(timeout=max(1.0, deadline - time.monotonic()))
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=10)
    tails = "\n".join(f"--- {k}\n{open(v).read()[-3000:]}" for k, v in logs.items())
    assert all(p.returncode == 0 for p in procs.values()), tails

    records = trial_records(out)
    ran = [t["run_by"]["tuner_id"] for t in records.values()]
    assert len(records) == 4 and all(t["status"] == "COMPLETED" for t in records.values()), tails
    assert ran.count("tuner0") > 0 and ran.count("tuner1") > 0 and "chief" not in ran, ran
    for worker in ("tuner0", "tuner1"):
        assert f"Worker {worker} ran {ran.count(worker)} trials" in open(logs[worker]).read(), tails
    with open(os.path.join(out, "best_hparams.json")) as f:
        assert json.load(f)["completed_trials"] == 4
    assert "Best hyperparameters" in open(logs["chief"]).read()


def test_a_search_that_may_build_the_classification_head_needs_a_prior(examples, tmp_path, capsys):
    from components import tuner

    out = str(tmp_path / "out")
    assert tuner.run(["--examples", examples, "--output_dir", out, *TINY_FLAGS]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("tuner: the search may build the classification head") and "--prior" in err
    assert len(err.splitlines()) == 1 and err.count(". ") == 0
    assert not os.path.exists(os.path.join(out, "tuner", "oracle.json"))
    assert tuner.run(["--examples", examples, "--output_dir", out, "--prior", str(tmp_path / "absent.json"),
                      *TINY_FLAGS]) == 2
    assert "absent.json does not exist" in capsys.readouterr().err
    pinned = tiny_config(examples, out, prior=None, fixed={**TINY, "head": "regression"}).validate()
    assert tuner.load_prior(pinned) is None  # a regression-only search runs without one


def test_classification_trials_report_the_decoded_val_mae_and_the_trainer_builds_the_winner(examples, tmp_path):
    from components import hparams, models, trainer, tuner

    config = tiny_config(examples, str(tmp_path / "out"), max_trials=1, fixed={**TINY, "head": "classification"})
    result = tuner.tune(config.validate())
    assert result.completed_trials == 1 and result.hyperparameters["head"] == "classification"
    assert 0.0 < result.score < 1.0  # val_mae of ab/128, comparable with the regression trials'
    train = trainer.TrainConfig(examples, str(tmp_path / "train"), hparams=result.best_hparams_path)
    resolved = trainer._resolve_hparams(train)
    assert resolved == hparams.load(result.best_hparams_path) and resolved["head"] == "classification"
    model = models.build_model(resolved["family"], 32, width=resolved["width"], head=resolved["head"])
    assert models.head_of(model) == "classification"


def test_model2_trials_search_the_fusion_and_model1_trials_do_not():
    import keras_tuner as kt

    from components import hparams

    hp = kt.HyperParameters()
    assert hparams.define_search_space(hp, {"family": "model1"})["fusion"] == "global"
    assert not hp.is_active("fusion")
    hp = kt.HyperParameters()
    assert hparams.define_search_space(hp, {"family": "model2", "fusion": "spatial"})["fusion"] == "spatial"
    hp = kt.HyperParameters()
    hparams.define_search_space(hp, {"family": "model2"})
    assert hp.is_active("fusion") and hp.get("fusion") in hparams.FUSIONS
    with pytest.raises(hparams.HparamsError, match="fusion must be one of"):
        hparams.validate({"fusion": "local"})
