"""Trainer: artifacts, TensorBoard images, resume after SIGKILL, NaN, precision, strategies, Model 2 backbones."""

from __future__ import annotations

import csv
import dataclasses
import glob
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import zipfile

import h5py
import keras
import numpy as np
import pytest
import tensorflow as tf

from components import hparams, trainer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SIZE = 32
STORED = 40
TINY = {"width": 0.25, "batch_size": 4, "learning_rate": 1e-3}


@pytest.fixture(scope="module")
def examples(tmp_path_factory) -> str:
    """30 generated scenes through the real ingest job, stored at 40x40."""
    from components import synthetic
    from components.example_gen import IngestConfig, run_ingest

    root = tmp_path_factory.mktemp("trainer_data")
    synthetic.generate(str(root / "images"), 30, seed=1, size=64)
    out = str(root / "ingest")
    config = IngestConfig(
        sources=(("s", str(root / "images")),), output_dir=out, stored_size=STORED, min_side=STORED,
        splits=(("train", 60), ("eval", 20), ("test", 20)),
    )
    run_ingest(config, ["--runner=DirectRunner"])
    return out


@pytest.fixture(scope="module")
def embedded_examples(examples, tmp_path_factory) -> str:
    """The same records plus a random 1000-float image/embedding, as the precompute step would add."""
    from components import loader

    out = tmp_path_factory.mktemp("embedded")
    rng = np.random.default_rng(0)
    for split in ("train", "eval"):
        folder = out / "examples" / split
        folder.mkdir(parents=True)
        path = str(folder / "data-00000-of-00001.tfrecord")
        with tf.io.TFRecordWriter(path) as writer:
            for file in loader.example_files(examples, split):
                for record in tf.data.TFRecordDataset(file):  # ingest writes uncompressed records
                    example = tf.train.Example.FromString(record.numpy())
                    probabilities = rng.dirichlet(np.ones(1000)).astype(np.float32)
                    example.features.feature[loader.EMBEDDING_KEY].float_list.value.extend(probabilities)
                    writer.write(example.SerializeToString())
    (out / "statistics").mkdir()
    with open(os.path.join(examples, "statistics", "statistics.json")) as f:
        stored = json.load(f)["stored_size"]
    (out / "statistics" / "statistics.json").write_text(json.dumps({"stored_size": stored}))
    return str(out)


def _hparams_file(tmp_path, **values) -> str:
    return hparams.save({**TINY, **values}, str(tmp_path / "best_hparams.json"))


def _config(examples, out, hparams_path, **overrides) -> trainer.TrainConfig:
    values = dict(
        examples=examples, output_dir=str(out), image_size=SIZE, epochs=2, steps_per_epoch=2, validation_steps=1,
        hparams=hparams_path, precision="float32", seed=0, verbose=0,
    )
    values.update(overrides)
    return trainer.TrainConfig(**values)


def _events(folder: str) -> list:
    values = []
    for path in sorted(glob.glob(os.path.join(folder, "events.out.tfevents.*"))):
        for event in tf.compat.v1.train.summary_iterator(path):
            values.extend(event.summary.value)
    return values


def _epochs_logged(out, partial_ok: bool = False) -> list[int]:
    path = os.path.join(str(out), trainer.CSV_LOG)
    if not os.path.exists(path):
        return []
    with open(path) as f:
        rows = list(csv.DictReader(f))
    if partial_ok:
        rows = [row for row in rows if (row.get("epoch") or "").isdigit()]
    return [int(row["epoch"]) for row in rows]


def _backup_epoch(metadata) -> int:
    """The epoch BackupAndRestore would resume at; 0 while absent or being written."""
    try:
        return int(json.loads(metadata.read_text())["epoch"])
    except (OSError, ValueError, KeyError):
        return 0


@pytest.fixture
def offline(monkeypatch):
    """Fetching ImageNet weights through Keras fails at once, as it does without network."""

    def get_file(fname, origin, *args, **kwargs):
        raise Exception(f"URL fetch failure on {origin}: None -- [Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(keras.utils, "get_file", get_file)


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "components.trainer", *args]


def _env(**extra: str) -> dict:
    env = {name: value for name, value in os.environ.items() if name != "TF_CONFIG"}
    return {**env, "PYTHONPATH": ROOT, "TF_CPP_MIN_LOG_LEVEL": "2", **extra}


def test_train_writes_model_checkpoint_logs_images_and_summary(examples, tmp_path, monkeypatch):
    out = tmp_path / "run"
    traces, step = [], keras.Model.train_step
    monkeypatch.setattr(keras.Model, "train_step", lambda self, data: traces.append(data) or step(self, data))
    result = trainer.train(_config(examples, out, _hparams_file(tmp_path), batch_size=3, reduce_lr=True))
    assert len(traces) == 1  # the train step is traced once, not again once Adam's slots exist

    for relative in (trainer.MODEL_FILE, trainer.BEST_CHECKPOINT, trainer.CSV_LOG, trainer.SUMMARY_FILE):
        assert (out / relative).is_file(), relative
    assert not (out / trainer.BACKUP_DIR).exists()  # removed once training finished
    assert _epochs_logged(out) == [0, 1]

    tensorboard = out / trainer.TENSORBOARD_DIR
    assert "epoch_loss" in {v.tag for v in _events(str(tensorboard / "train"))}
    assert "epoch_loss" in {v.tag for v in _events(str(tensorboard / "validation"))}
    images = [v for v in _events(str(tensorboard / trainer.IMAGES_RUN)) if v.tag == trainer.IMAGE_TAG]
    assert len(images) == 2  # one per epoch
    width, height = (int(x) for x in images[0].tensor.string_val[:2])
    assert (width, height) == (3 * SIZE, SIZE)  # gray | predicted | truth
    assert len(images[0].tensor.string_val) - 2 == 3  # min(EVAL_IMAGES, batch 3) images

    summary = json.loads((out / trainer.SUMMARY_FILE).read_text())
    assert summary["hparams"]["width"] == 0.25 and summary["hparams"]["batch_size"] == 3
    assert summary["strategy"]["global_batch_size"] == 3
    assert summary["precision"]["policy"] == "float32" and summary["epochs_run"] == 2
    assert summary["best_val_loss"] == pytest.approx(result.best_val_loss) and result.best_val_loss > 0
    assert summary["examples_per_second"] > 0 and summary["trainable_parameters"] > 0
    assert summary["paths"]["model"] == result.model_path == str(out / trainer.MODEL_FILE)

    model = keras.models.load_model(result.model_path)
    weights_bytes = zipfile.ZipFile(result.model_path).getinfo("model.weights.h5").file_size
    assert weights_bytes < 1.5 * 4 * model.count_params()  # the float32 weights, not Adam's slots beside them
    predicted = model.predict(np.full((2, SIZE, SIZE, 1), 50.0, np.float32), verbose=0)
    assert predicted.shape == (2, SIZE, SIZE, 2) and predicted.dtype == np.float32
    assert np.all(np.abs(predicted) <= 1.0)
    best = keras.models.load_model(result.checkpoint_path)
    probe = np.random.default_rng(0).uniform(0, 100, (1, SIZE, SIZE, 1)).astype(np.float32)
    np.testing.assert_allclose(model.predict(probe, verbose=0), best.predict(probe, verbose=0), atol=1e-5)


def test_resume_after_sigkill_continues_at_the_next_epoch(examples, tmp_path):
    out = tmp_path / "run"
    epochs = 12
    args = _cli("--examples", examples, "--output_dir", str(out), "--image_size", str(SIZE), "--epochs", str(epochs),
                "--steps_per_epoch", "2", "--validation_steps", "1", "--patience", "100", "--precision", "float32",
                "--hparams", _hparams_file(tmp_path), "--seed", "0")
    metadata = out / trainer.BACKUP_DIR / "training_metadata.json"
    with open(tmp_path / "first.log", "w") as log:
        first = subprocess.Popen(args, cwd=ROOT, env=_env(), stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and first.poll() is None:
            if _backup_epoch(metadata) >= 1 and _epochs_logged(out, partial_ok=True):
                break
            time.sleep(0.05)
        first.send_signal(signal.SIGKILL)
        first.wait()
    assert first.returncode == -signal.SIGKILL, (tmp_path / "first.log").read_text()
    assert not (out / trainer.MODEL_FILE).exists(), "training finished before the kill; raise epochs"
    resume_at = _backup_epoch(metadata)
    assert resume_at >= 1 and _epochs_logged(out)[:resume_at] == list(range(resume_at))
    with h5py.File(out / trainer.BACKUP_DIR / "latest.weights.h5") as backup:
        iterations = int(backup["optimizer/vars/0"][()])  # Adam's state (step count, moments) is backed up too
    assert iterations == 2 * resume_at

    second = subprocess.run(args, cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=150)
    assert second.returncode == 0, second.stdout + second.stderr
    assert f"resuming from epoch {resume_at + 1}" in second.stdout
    assert f"Epoch {resume_at + 1}/{epochs}" in second.stdout and f"Epoch 1/{epochs}" not in second.stdout
    assert _epochs_logged(out) == list(range(epochs))
    summary = json.loads((out / trainer.SUMMARY_FILE).read_text())
    assert summary["resumed_from_epoch"] == resume_at and summary["epochs_run"] == epochs


def test_nan_loss_stops_with_one_sentence_and_nonzero_exit(examples, tmp_path, capsys):
    out = tmp_path / "run"
    path = _hparams_file(tmp_path, learning_rate=1e39)  # inf in float32: the first update makes the weights inf
    code = trainer.main(["--examples", examples, "--output_dir", str(out), "--image_size", str(SIZE), "--epochs", "3",
                         "--steps_per_epoch", "2", "--validation_steps", "1", "--hparams", path,
                         "--precision", "float32"])
    assert code == 1
    err = capsys.readouterr().err
    assert "training stopped: the loss became NaN at epoch 1" in err and "lower the learning rate" in err
    assert not (out / trainer.MODEL_FILE).exists()


def test_choose_precision_reads_cpu_flags(tmp_path):
    plain = tmp_path / "plain"
    plain.write_text("processor\t: 0\nflags\t\t: fpu sse avx2 avx512f avx512_vnni\n\nprocessor\t: 1\nflags\t\t: fpu\n")
    bf16 = tmp_path / "bf16"
    bf16.write_text("processor\t: 0\nflags\t\t: fpu avx512f avx512_bf16 amx_tile amx_bf16\n")
    assert trainer.choose_precision(cpuinfo_path=str(plain), gpus=0)[0] == "float32"
    policy, reason = trainer.choose_precision(cpuinfo_path=str(bf16), gpus=0)
    assert policy == "mixed_bfloat16" and "avx512_bf16" in reason
    assert trainer.choose_precision(cpuinfo_path=str(tmp_path / "missing"), gpus=0)[0] == "float32"
    assert trainer.choose_precision(cpuinfo_path=str(bf16), gpus=1)[0] == "mixed_float16"
    assert trainer.choose_precision("float32", cpuinfo_path=str(bf16), gpus=1) == ("float32", "requested")
    with pytest.raises(trainer.TrainError):
        trainer.choose_precision("float64")


def test_mixed_bfloat16_on_a_mirrored_strategy_trains_and_restores_the_policy(examples, tmp_path):
    before = keras.mixed_precision.global_policy().name
    result = trainer.train(
        _config(examples, tmp_path / "run", _hparams_file(tmp_path), epochs=1, precision="mixed_bfloat16",
                distribute="mirrored")
    )
    assert keras.mixed_precision.global_policy().name == before
    assert result.precision == "mixed_bfloat16" and result.summary["precision"]["reason"] == "requested"
    assert result.strategy == "MirroredStrategy" and result.summary["strategy"]["replicas"] == 1
    model = keras.models.load_model(result.model_path)
    assert model.dtype_policy.name == "float32"  # exported for serving in float32
    assert model.predict(np.zeros((1, SIZE, SIZE, 1), np.float32), verbose=0).shape == (1, SIZE, SIZE, 2)


def test_strategy_kind():
    two = json.dumps({"cluster": {"worker": ["localhost:1", "localhost:2"]}, "task": {"type": "worker", "index": 0}})
    one = json.dumps({"cluster": {"worker": ["localhost:1"]}, "task": {"type": "worker", "index": 0}})
    assert trainer.strategy_kind("auto", tf_config=two, gpus=0) == "multi_worker"
    assert trainer.strategy_kind("auto", tf_config=one, gpus=0) == "none"
    assert trainer.strategy_kind("auto", tf_config=None, gpus=2) == "mirrored"
    assert trainer.strategy_kind("auto", tf_config="", gpus=1) == "none"
    assert trainer.strategy_kind("mirrored", tf_config=two, gpus=0) == "mirrored"
    with pytest.raises(trainer.TrainError, match="TF_CONFIG"):
        trainer.strategy_kind("auto", tf_config="{not json", gpus=0)


def test_user_mistakes_get_one_sentence_and_exit_2(examples, tmp_path, capsys):
    base = ["--output_dir", str(tmp_path / "run"), "--image_size", str(SIZE), "--epochs", "1"]
    assert trainer.main(["--examples", str(tmp_path / "nowhere"), *base]) == 2
    assert "no TFRecord files match" in capsys.readouterr().err
    assert trainer.main(["--examples", examples, "--hparams", str(tmp_path / "missing.json"), *base]) == 2
    assert "missing.json does not exist" in capsys.readouterr().err
    assert trainer.main(["--examples", examples, "--model", "model2", "--embeddings", *base]) == 2
    err = capsys.readouterr().err
    assert "run the embedding precompute step" in err and len(err.strip().splitlines()) == 1
    assert trainer.main(["--examples", examples, "--model", "model2", "--fusion", "spatial", "--embeddings", *base]) == 2
    err = capsys.readouterr().err
    assert "spatial fusion does not use" in err and len(err.strip().splitlines()) == 1
    with pytest.raises(SystemExit) as exit_info:
        trainer.main(["--examples", examples, "--model", "model3", *base])
    assert exit_info.value.code == 2


def test_model2_without_imagenet_weights_exits_2_with_the_sentence(examples, tmp_path, monkeypatch, capsys, offline):
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "empty_keras_home"))
    out = tmp_path / "run"
    path = _hparams_file(tmp_path, family="model2", backbone="mobilenet_v2", batch_size=2)
    code = trainer.main(["--examples", examples, "--output_dir", str(out), "--image_size", str(SIZE), "--epochs", "1",
                         "--hparams", path, "--precision", "float32"])
    assert code == 2
    err = capsys.readouterr().err
    assert "ImageNet weights for mobilenet_v2 are not in the Keras cache" in err
    assert len(err.strip().splitlines()) == 1 and not (out / trainer.MODEL_FILE).exists()


def test_model2_head_trains_on_embeddings_with_a_random_backbone_and_saves_end_to_end(
    embedded_examples, tmp_path, monkeypatch, caplog, offline
):
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "empty_keras_home"))
    out = tmp_path / "run"
    path = _hparams_file(tmp_path, family="model2", backbone="mobilenet_v2", batch_size=2)
    code = trainer.main(["--examples", embedded_examples, "--output_dir", str(out), "--image_size", str(SIZE),
                         "--epochs", "1", "--steps_per_epoch", "2", "--validation_steps", "1", "--hparams", path,
                         "--precision", "float32", "--embeddings", "--allow_random_backbone"])
    assert code == 0
    assert trainer.RANDOM_BACKBONE_WARNING in caplog.text
    summary = json.loads((out / trainer.SUMMARY_FILE).read_text())
    assert summary["model"] == "model2" and summary["embeddings"] is True and summary["backbone_weights"] is None
    for saved in (trainer.MODEL_FILE, trainer.BEST_CHECKPOINT):
        model = keras.models.load_model(out / saved)
        assert [i.name for i in model.inputs] == ["l"]  # end to end, not the head
    assert model.predict(np.zeros((1, SIZE, SIZE, 1), np.float32), verbose=0).shape == (1, SIZE, SIZE, 2)


def _free_ports(n: int) -> list[int]:
    sockets = [socket.socket() for _ in range(n)]
    for s in sockets:
        s.bind(("localhost", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def test_two_workers_on_loopback_train_in_sync_and_only_the_chief_writes(examples, tmp_path):
    out, scratch = tmp_path / "run", tmp_path / "tmp"
    scratch.mkdir()
    workers = [f"localhost:{port}" for port in _free_ports(2)]
    args = _cli("--examples", examples, "--output_dir", str(out), "--image_size", str(SIZE), "--epochs", "1",
                "--steps_per_epoch", "2", "--validation_steps", "1", "--precision", "float32",
                "--hparams", _hparams_file(tmp_path, batch_size=2))
    procs = [
        subprocess.Popen(
            args, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            env=_env(TMPDIR=str(scratch), TF_CONFIG=json.dumps(
                {"cluster": {"worker": workers}, "task": {"type": "worker", "index": i}})),
        )
        for i in range(2)
    ]
    outputs = [p.communicate(timeout=170)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], "\n".join(outputs)
    summary = json.loads((out / trainer.SUMMARY_FILE).read_text())
    assert summary["strategy"] == {"name": "MultiWorkerMirroredStrategy", "replicas": 2, "global_batch_size": 4}
    assert _epochs_logged(out) == [0]
    losses = [re.findall(r"(?:val_)?loss: [0-9.e-]+", text) for text in outputs]
    assert losses[0] and losses[0] == losses[1]  # one model: both workers see the same all-reduced losses
    assert "wrote" not in outputs[1] and not list(scratch.iterdir())  # worker 1 wrote to a temp dir, then removed it


def test_width_learning_rate_and_loss_flags_override_the_hyperparameters_file(tmp_path):
    path = _hparams_file(tmp_path, width=0.5, learning_rate=1e-3, loss="mse")
    config = trainer.TrainConfig(**vars(trainer._parser().parse_args([
        "--examples", "unused", "--output_dir", "unused", "--hparams", path,
        "--width", "0.25", "--learning_rate", "0.002", "--loss", "huber",
    ])))
    resolved = trainer._resolve_hparams(config)
    assert (resolved["width"], resolved["learning_rate"], resolved["loss"]) == (0.25, 0.002, "huber")
    assert trainer._resolve_hparams(trainer.TrainConfig("unused", "unused", hparams=path))["width"] == 0.5


# ---------------------------------------------------------------- the classification head and the time budget


@pytest.fixture(scope="module")
def prior_path(examples, tmp_path_factory) -> str:
    """The train split's colour prior, written by the statistics stage from the ingest's ab counts."""
    from components import statistics

    out = str(tmp_path_factory.mktemp("statistics"))
    return statistics.write_prior(statistics.StatisticsConfig(examples=examples, output_dir=out))["prior"]


def test_classification_head_trains_and_beats_gray(examples, prior_path, tmp_path):
    from components import colorbins, loader, models

    out = tmp_path / "run"
    path = _hparams_file(tmp_path, width=0.5, batch_size=8, learning_rate=3e-3)
    result = trainer.train(_config(examples, out, path, head="classification", prior=prior_path, epochs=10,
                                   steps_per_epoch=16, patience=100))

    summary = json.loads((out / trainer.SUMMARY_FILE).read_text())
    assert summary["head"] == summary["hparams"]["head"] == "classification" and summary["temperature"] == 0.38
    assert summary["prior"] == prior_path
    assert summary["prior_fingerprint"] == colorbins.ColorPrior.load(prior_path).fingerprint
    with open(out / trainer.CSV_LOG) as f:
        assert {"loss", "mae", "val_loss", "val_mae"} <= set(next(csv.DictReader(f)))
    images = [v for v in _events(str(out / trainer.TENSORBOARD_DIR / trainer.IMAGES_RUN)) if v.tag == trainer.IMAGE_TAG]
    assert len(images) == 10 and tuple(int(x) for x in images[0].tensor.string_val[:2]) == (3 * SIZE, SIZE)

    model = keras.models.load_model(result.model_path)  # end to end: L -> ab/128, float32, the temperature inside
    assert models.head_of(model) == "classification" and model.dtype_policy.name == "float32"
    assert models._annealed_mean_layer(model).temperature == pytest.approx(0.38)
    l, ab = loader.fixed_batch(examples, "eval", image_size=SIZE, batch_size=6)
    predicted = model.predict(l, verbose=0)
    assert predicted.shape == ab.shape and predicted.dtype == np.float32
    chroma = np.linalg.norm(predicted * 128.0, axis=-1).mean()
    error, gray_error = np.abs(predicted - ab).mean() * 128.0, np.abs(ab).mean() * 128.0
    assert chroma > 10.0, chroma  # gray's is 0
    assert error < 0.85 * gray_error, (error, gray_error)


def test_classification_without_a_usable_prior_exits_2_before_training(examples, prior_path, tmp_path, capsys):
    from components import colorbins

    out = tmp_path / "run"
    base = ["--examples", examples, "--output_dir", str(out), "--image_size", str(SIZE), "--epochs", "1",
            "--hparams", _hparams_file(tmp_path), "--precision", "float32"]
    assert trainer.main([*base, "--head", "classification"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("trainer: the classification head") and "--prior" in err
    assert len(err.splitlines()) == 1 and err.count(". ") == 0
    assert not out.exists()

    other = tmp_path / "other_prior.json"
    counts = np.load(os.path.join(examples, "statistics", "ab_counts.npz"))["train"]
    colorbins.ColorPrior.from_counts(counts, centres=colorbins.in_gamut_centres()[::2]).save(str(other))
    assert trainer.main([*base, "--head", "classification", "--prior", str(other)]) == 2
    err = capsys.readouterr().err.strip()
    assert "colour bins differ" in err and len(err.splitlines()) == 1
    assert trainer.main([*base, "--head", "classification", "--prior", str(tmp_path / "absent.json")]) == 2
    assert "absent.json does not exist" in capsys.readouterr().err
    assert not out.exists()

    hparams_path = hparams.save({**TINY, "head": "classification"}, str(tmp_path / "cls_hparams.json"))
    config = trainer.TrainConfig(examples, str(out), hparams=hparams_path)
    with pytest.raises(trainer.TrainError, match="needs the colour prior"):  # the head from the tuner's file too
        trainer.train(config)
    with pytest.raises(trainer.TrainError, match="temperature must be positive"):
        trainer.TrainConfig(examples, str(out), temperature=0.0).validate()
    with pytest.raises(SystemExit):
        trainer.main([*base, "--head", "softmax"])


def test_max_minutes_stops_after_the_epoch_that_crosses_the_budget(examples, tmp_path, capsys):
    out = tmp_path / "run"
    result = trainer.train(_config(examples, out, _hparams_file(tmp_path), epochs=20, max_minutes=1e-6, patience=100))
    assert result.epochs_run == 1 and _epochs_logged(out) == [0]
    assert "the time budget of 1e-06 minutes is spent" in capsys.readouterr().out
    assert result.summary["stopped_by_time_budget"] is True and result.summary["max_minutes"] == 1e-6
    assert (out / trainer.MODEL_FILE).is_file() and not (out / trainer.BACKUP_DIR).exists()
    assert result.summary["head"] == "regression" and result.summary["prior_fingerprint"] is None
    with pytest.raises(trainer.TrainError, match="max_minutes must be positive"):
        trainer.TrainConfig("unused", "unused", max_minutes=0.0).validate()


def test_model2_classification_head_trains_on_embeddings(
    embedded_examples, prior_path, tmp_path, monkeypatch, offline
):
    from components import models

    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "empty_keras_home"))
    out = tmp_path / "run"
    path = _hparams_file(tmp_path, family="model2", backbone="mobilenet_v2", batch_size=2)
    code = trainer.main(["--examples", embedded_examples, "--output_dir", str(out), "--image_size", str(SIZE),
                         "--epochs", "1", "--steps_per_epoch", "2", "--validation_steps", "1", "--hparams", path,
                         "--precision", "float32", "--embeddings", "--allow_random_backbone",
                         "--head", "classification", "--prior", prior_path, "--temperature", "0.2"])
    assert code == 0
    model = keras.models.load_model(out / trainer.MODEL_FILE)
    assert [i.name for i in model.inputs] == ["l"] and models.head_of(model) == "classification"
    assert models._annealed_mean_layer(model).temperature == pytest.approx(0.2)
    assert model.predict(np.zeros((1, SIZE, SIZE, 1), np.float32), verbose=0).shape == (1, SIZE, SIZE, 2)


@pytest.mark.parametrize("keep, kept_loss", [("best", 1.0), ("last", 3.0)])
def test_kept_checkpoint_holds_the_best_or_the_last_epoch(tmp_path, keep, kept_loss):
    from components.trainer.callbacks import _KeptCheckpoint

    model = keras.Sequential([keras.Input((1,)), keras.layers.Dense(1, use_bias=False)])
    path = str(tmp_path / "kept.keras")
    callback = _KeptCheckpoint(path, model, keep)
    callback.set_model(model)
    for epoch, val_loss in enumerate((1.0, 2.0, 3.0)):  # validation worsens: "best" keeps epoch 1's weights
        model.set_weights([np.full((1, 1), val_loss, np.float32)])
        callback.on_epoch_end(epoch, {"val_loss": val_loss})
    assert keras.models.load_model(path).get_weights()[0][0, 0] == kept_loss


def test_the_same_seed_trains_the_same_weights(examples, tmp_path):
    hparams_path = _hparams_file(tmp_path)

    def weights(name, seed):
        trainer.train(_config(examples, tmp_path / name, hparams_path, seed=seed, patience=100))
        return keras.models.load_model(str(tmp_path / name / trainer.MODEL_FILE)).get_weights()

    first, again, other = weights("a", 3), weights("b", 3), weights("c", 4)
    assert all(np.array_equal(x, y) for x, y in zip(first, again, strict=True))
    assert not all(np.array_equal(x, y) for x, y in zip(first, other, strict=True))


def test_keep_last_exports_the_final_epoch(examples, tmp_path):
    out = tmp_path / "run"
    result = trainer.train(_config(examples, out, _hparams_file(tmp_path), epochs=3, patience=100, keep="last"))
    assert result.summary["keep"] == "last" and result.summary["kept_epoch"] == result.epochs_run == 3
    with pytest.raises(trainer.TrainError, match="keep must be one of"):
        trainer.TrainConfig("unused", "unused", keep="first").validate()


def test_budget_decay_lowers_the_learning_rate_linearly_over_the_time_budget(monkeypatch):
    from components.trainer import callbacks

    model = keras.Sequential([keras.Input((1,)), keras.layers.Dense(1)])
    model.compile(optimizer=keras.optimizers.Adam(learning_rate=0.01), loss="mse")
    clock = [100.0]
    monkeypatch.setattr(callbacks.time, "monotonic", lambda: clock[0])
    budget = callbacks._TimeBudget(minutes=10.0, decay=True)
    budget.set_model(model)
    budget.on_train_begin()
    rates = []
    for epoch, seconds in enumerate((0.0, 150.0, 300.0, 599.0, 700.0)):
        clock[0] = 100.0 + seconds
        budget.on_epoch_begin(epoch)
        rates.append(float(keras.ops.convert_to_numpy(model.optimizer.learning_rate)))
        budget.on_epoch_end(epoch)
    np.testing.assert_allclose(rates, [0.01, 0.0075, 0.005, 0.01 / 600, 0.0], rtol=1e-5, atol=1e-9)
    assert budget.stopped_after == 4 and model.stop_training
    with pytest.raises(trainer.TrainError, match="set --max_minutes too"):
        trainer.TrainConfig("unused", "unused", lr_decay="budget").validate()


def test_budget_decay_runs_the_whole_budget_unless_patience_is_given():
    decaying = trainer.TrainConfig("unused", "unused", max_minutes=30.0, lr_decay="budget")
    assert decaying.early_stopping_patience() is None  # EarlyStopping would keep a half-decayed model
    assert dataclasses.replace(decaying, patience=3).early_stopping_patience() == 3
    assert trainer.TrainConfig("unused", "unused", max_minutes=30.0).early_stopping_patience() == 5
    with pytest.raises(trainer.TrainError, match="patience must be at least 0"):
        trainer.TrainConfig("unused", "unused", patience=-1).validate()
