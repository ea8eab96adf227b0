"""Pusher: blessed + validated in a fresh process -> a new version, TF Serving configs, a record; otherwise nothing."""

from __future__ import annotations

import dataclasses
import errno
import json
import os
import shutil
import subprocess
import sys

import keras
import pytest
import tensorflow as tf
from google.protobuf import text_format
from tensorflow_serving.config import model_server_config_pb2

from components import export, models, pusher


def _evaluation(folder, blessed: bool, model_path: str) -> str:
    """An evaluator output dir as the evaluator writes it: blessing.json and a BLESSED/NOT_BLESSED marker."""
    os.makedirs(folder, exist_ok=True)
    checks = [{"name": "psnr_vs_gray", "passed": blessed, "detail": "PSNR 24.1 dB vs gray 23.0 dB"}]
    if not blessed:
        checks[0]["detail"] = "PSNR 21.0 dB is under the gray baseline's 23.0 dB"
    blessing = {"blessed": blessed, "checks": checks, "model_path": model_path,
                "metrics_path": os.path.join(folder, "metrics.json"), "thresholds": {}}
    with open(os.path.join(folder, "blessing.json"), "w") as f:
        json.dump(blessing, f)
    open(os.path.join(folder, "BLESSED" if blessed else "NOT_BLESSED"), "w").close()
    return str(folder)


def _models_config(serving_dir: str) -> model_server_config_pb2.ModelServerConfig:
    with open(os.path.join(serving_dir, "models.config")) as f:
        return text_format.Parse(f.read(), model_server_config_pb2.ModelServerConfig())


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return tmp_path_factory.mktemp("pusher")


@pytest.fixture(scope="module")
def model_path(root) -> str:
    keras.utils.set_random_seed(0)
    path = str(root / "model.keras")
    models.build_model1(32, width=0.25).save(path)
    return path


@pytest.fixture(scope="module")
def first_push(root, model_path):
    """One push of a blessed model into an empty serving dir given as a relative path, validated in a fresh process."""
    config = pusher.PushConfig(model=model_path, evaluation=_evaluation(root / "eval", True, model_path),
                               serving_dir="serving")
    cwd = os.getcwd()
    os.chdir(root)  # the fresh process runs elsewhere: relative paths must still reach the same folder
    try:
        result = pusher.push(config)
    finally:
        os.chdir(cwd)
    return dataclasses.replace(config, serving_dir=str(root / "serving")), result


def test_a_blessed_model_is_validated_in_a_fresh_process_and_published_as_version_1(first_push):
    config, result = first_push
    model_dir = os.path.join(config.serving_dir, "colorizer")
    assert result.pushed and result.version == 1, result.reason
    assert result.version_dir == os.path.join("serving", "colorizer", "1")  # as the caller named the serving dir
    version_dir = os.path.join(model_dir, "1")
    assert sorted(os.listdir(model_dir)) == ["1"]
    assert os.path.isfile(os.path.join(version_dir, "saved_model.pb"))
    assert sorted(os.listdir(version_dir)) == ["assets", "assets.extra", "fingerprint.pb", "saved_model.pb",
                                                      "variables"]
    assert len(export.read_warmup(version_dir)) == len(export.sample_images())

    validation = result.validation
    assert validation["ok"] and validation["requests"] == len(export.sample_images()), validation
    assert validation["process_seconds"] > validation["load_seconds"] > 0 and validation["query_seconds"] > 0

    with open(result.record_path) as f:
        record = json.load(f)
    assert result.record_path == os.path.join(config.evaluation, "pushed.json")
    assert record["pushed"] and record["version"] == 1 and record["version_dir"] == result.version_dir
    assert record["validation"] == validation and "validated in a fresh process" in record["reason"]

    entry, = _models_config(config.serving_dir).model_config_list.config
    assert (entry.name, entry.base_path, entry.model_platform) == ("colorizer", os.path.abspath(model_dir),
                                                                   "tensorflow")
    assert entry.model_version_policy.latest.num_versions == 3
    assert dict(entry.version_labels) == {"stable": 1, "canary": 1}
    with open(os.path.join(config.serving_dir, "batching_parameters.txt")) as f:
        assert f.read().split("\n")[:4] == ["max_batch_size { value: 8 }", "batch_timeout_micros { value: 2000 }",
                                            "max_enqueued_batches { value: 100 }", "num_batch_threads { value: 2 }"]
    with open(os.path.join(config.serving_dir, "monitoring.config")) as f:
        text = f.read()
    assert "enable: true" in text and 'path: "/monitoring/prometheus/metrics"' in text


def test_a_second_push_is_version_2_labelled_canary_and_leaves_no_temp_dirs(first_push, tmp_path, capsys):
    config, _ = first_push
    model_dir = os.path.join(config.serving_dir, "colorizer")
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    stale = os.path.join(model_dir, f".tmp-2-{int(dead.stdout)}")  # left by a push that was killed
    os.makedirs(os.path.join(stale, "variables"))

    code = pusher.main(["--model", config.model, "--evaluation", config.evaluation, "--serving_dir",
                        config.serving_dir, "--no_validate", "--batching", "max_batch_size=16",
                        "--output", str(tmp_path / "records")])

    out = capsys.readouterr().out
    assert code == 0
    version_dir = os.path.join(model_dir, "2")
    assert "pushed colorizer version 2" in out and f"wrote {version_dir}/" in out
    assert os.path.join(config.serving_dir, "models.config") in out
    assert sorted(os.listdir(model_dir)) == ["1", "2"]
    entry, = _models_config(config.serving_dir).model_config_list.config
    assert dict(entry.version_labels) == {"stable": 1, "canary": 2}
    with open(os.path.join(config.serving_dir, "batching_parameters.txt")) as f:
        assert f.read().split("\n")[:2] == ["max_batch_size { value: 16 }", "batch_timeout_micros { value: 2000 }"]
    with open(tmp_path / "records" / "pushed.json") as f:
        record = json.load(f)
    assert record["pushed"] and record["version"] == 2 and record["validation"] is None


def test_a_broken_saved_model_is_rejected_and_nothing_is_published(first_push, root, capsys):
    config, result = first_push
    broken = str(root / "broken_saved_model")
    shutil.copytree(os.path.join(config.serving_dir, "colorizer", "1"), broken)
    data = os.path.join(broken, "variables", "variables.data-00000-of-00001")
    with open(data, "r+b") as f:
        f.truncate(os.path.getsize(data) // 2)
    evaluation = _evaluation(root / "eval_broken", True, broken)
    serving = str(root / "serving_broken")

    code = pusher.main(["--model", broken, "--evaluation", evaluation, "--serving_dir", serving])

    err = capsys.readouterr().err
    assert code == 1
    assert "nothing pushed: the exported model failed validation: the SavedModel in" in err
    assert "does not load" in err and "Traceback" not in err
    assert os.listdir(os.path.join(serving, "colorizer")) == []
    with open(os.path.join(evaluation, "pushed.json")) as f:
        record = json.load(f)
    assert not record["pushed"] and record["version"] is None
    assert not record["validation"]["ok"] and "does not load" in record["reason"]
    assert record["validation"]["process_seconds"] > 0


def test_a_model_that_was_not_blessed_is_not_pushed(root, model_path, capsys):
    evaluation = _evaluation(root / "eval_not_blessed", False, model_path)
    serving = str(root / "serving_not_blessed")

    code = pusher.main(["--model", model_path, "--evaluation", evaluation, "--serving_dir", serving])

    out = capsys.readouterr().out
    assert code == 0
    assert "nothing pushed: the evaluator did not bless the model" in out
    assert "under the gray baseline" in out
    assert not os.path.exists(os.path.join(serving, "colorizer"))
    with open(os.path.join(evaluation, "pushed.json")) as f:
        record = json.load(f)
    assert not record["pushed"] and not record["blessed"] and record["validation"] is None


def test_user_mistakes_exit_2_with_one_sentence(root, model_path, capsys):
    blessed = _evaluation(root / "eval_mistakes", True, model_path)
    empty = root / "eval_empty"
    empty.mkdir()
    other = str(root / "other.keras")
    shutil.copyfile(model_path, other)
    cases = [
        (["--model", str(root / "missing.keras"), "--evaluation", blessed], "missing.keras does not exist"),
        (["--model", model_path, "--evaluation", str(empty)], "holds no blessing (blessing.json, BLESSED or"),
        (["--model", model_path, "--evaluation", str(root / "no_eval")], "no_eval does not exist"),
        (["--model", other, "--evaluation", blessed], "is for " + model_path),
        (["--model", model_path, "--evaluation", blessed, "--model_name", "../up"], "not a folder name"),
    ]
    for args, sentence in cases:
        code = pusher.main([*args, "--serving_dir", str(root / "serving_mistakes")])
        err = capsys.readouterr().err
        assert code == 2 and sentence in err and err.count("\n") == 1, (args, err)
    assert not os.path.exists(root / "serving_mistakes" / "colorizer")


def _push_saved_model(first_push, tmp_path, capsys) -> tuple[str, list[str]]:
    """A serving dir holding version 1 pushed from the first push's SavedModel; the argv that pushes it again."""
    config, _ = first_push
    saved_model = os.path.join(config.serving_dir, "colorizer", "1")
    evaluation = _evaluation(tmp_path / "eval", True, saved_model)
    serving = str(tmp_path / "serving")
    argv = ["--model", saved_model, "--evaluation", evaluation, "--serving_dir", serving, "--no_validate"]
    assert pusher.main(argv) == 0
    capsys.readouterr()
    return serving, argv


def _leftovers(folder: str) -> list[str]:
    return [name for _, dirs, files in os.walk(folder) for name in dirs + files
            if name.endswith(".partial") or name.startswith(".tmp-")]


@pytest.mark.parametrize("step", ["config write", "config rename after the version rename"])
@pytest.mark.parametrize("error", [OSError(errno.ENOSPC, "No space left on device"),
                                   tf.errors.ResourceExhaustedError(None, None, "No space left on device")],
                         ids=["OSError", "ResourceExhaustedError"])
def test_a_full_disk_leaves_the_old_version_and_config_and_says_so_in_one_sentence(
        first_push, tmp_path, capsys, monkeypatch, step, error):
    serving, argv = _push_saved_model(first_push, tmp_path, capsys)
    with open(os.path.join(serving, "models.config")) as f:
        before = f.read()
    real_gfile, real_rename = tf.io.gfile.GFile, tf.io.gfile.rename

    class FullDisk(real_gfile):
        def write(self, data):
            if ".models.config." in self.name and step == "config write":
                raise error
            return super().write(data)

    def rename(source, target, overwrite=False):
        if target.endswith("models.config") and step.startswith("config rename"):
            raise error
        return real_rename(source, target, overwrite)

    monkeypatch.setattr(tf.io.gfile, "GFile", FullDisk)
    monkeypatch.setattr(tf.io.gfile, "rename", rename)

    code = pusher.main(argv)

    err = capsys.readouterr().err
    assert code == 1
    assert err == (f"pusher: nothing pushed: the disk under {serving} is full (models.config and the served versions "
                   "are unchanged); free some space and push again.\n"
                   f"pusher: wrote {argv[3]}/pushed.json\n")
    assert sorted(os.listdir(os.path.join(serving, "colorizer"))) == ["1"]
    with open(os.path.join(serving, "models.config")) as f:
        assert f.read() == before
    assert _leftovers(serving) == []


@pytest.mark.parametrize("checked", [True, False], ids=["seen before the rename", "lost in the rename itself"])
def test_a_pusher_losing_the_rename_race_publishes_the_next_free_version(first_push, tmp_path, capsys, monkeypatch,
                                                                       checked):
    serving, argv = _push_saved_model(first_push, tmp_path, capsys)
    real_rename = tf.io.gfile.rename
    raced = []

    def rename(source, target, overwrite=False):
        if target == os.path.join(serving, "colorizer", "2") and not raced:
            raced.append(target)  # another pusher publishes version 2 first
            shutil.copytree(os.path.join(serving, "colorizer", "1"), target)
            overwrite = not checked  # not checked: the existence check passed before it, the rename itself fails
        return real_rename(source, target, overwrite)

    monkeypatch.setattr(tf.io.gfile, "rename", rename)

    code = pusher.main(argv)

    out = capsys.readouterr().out
    assert code == 0 and raced and "pushed colorizer version 3" in out, out
    assert sorted(os.listdir(os.path.join(serving, "colorizer"))) == ["1", "2", "3"]
    entry, = _models_config(serving).model_config_list.config
    assert dict(entry.version_labels) == {"stable": 2, "canary": 3}
    assert _leftovers(serving) == []


def test_versions_are_the_folder_names_servers_read_as_versions(tmp_path):
    for name in ("1", "7", "99999999999999999999", "\u00b2", ".tmp-8-1", "notes"):
        (tmp_path / name).mkdir()
    assert pusher.list_versions(str(tmp_path)) == [1, 7]
