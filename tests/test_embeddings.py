"""The embedding precompute job: every record gains the backbone's vector of its centre crop, nothing else changes."""

from __future__ import annotations

import dataclasses
import json
import os

import numpy as np
import pytest
from tensorflow.core.example import example_pb2

import schemas
from components import embeddings, loader, models
from tests.conftest import SIZE, read_records, write_v1_examples

CROP = 48
BACKBONE = "mobilenet_v2"


@pytest.fixture(scope="module")
def empty_keras_cache(tmp_path_factory):
    """No ImageNet weights on this machine, whatever its real Keras cache holds, and no network to fetch them."""
    import keras

    def offline_get_file(fname, origin, *args, **kwargs):
        raise Exception(f"URL fetch failure on {origin}: None -- [Errno -3] Temporary failure in name resolution")

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("KERAS_HOME", str(tmp_path_factory.mktemp("keras_home")))
        mp.setattr(keras.utils, "get_file", offline_get_file)
        yield


def _argv(examples: str, output_dir: str, *extra: str) -> list[str]:
    return ["--examples", examples, "--output_dir", output_dir, "--backbone", BACKBONE,
            "--image_size", str(CROP), "--batch_size", "8", *extra, "--runner=DirectRunner"]


@pytest.fixture(scope="module")
def weights_file(tmp_path_factory) -> str:
    """A MobileNetV2 classifier whose outputs differ from image to image, unlike a freshly initialised one.

    Random weights make every activation vanish (features ~1e-11, every
    probability exactly 1/1000); one training-mode pass with momentum 0 sets
    each BatchNormalization's statistics so the features keep their scale,
    and a larger classifier kernel spreads the probabilities.
    """
    import keras

    keras.utils.set_random_seed(7)
    net = keras.applications.MobileNetV2(include_top=True, weights=None, input_shape=(224, 224, 3), classes=1000)
    for layer in net.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.momentum = 0.0
    gray = np.random.default_rng(7).uniform(-1.0, 1.0, (4, 224, 224, 1)).astype(np.float32)
    net(np.repeat(gray, 3, axis=-1), training=True)
    dense = net.get_layer("predictions")
    dense.kernel.assign(dense.kernel * 30.0)
    path = str(tmp_path_factory.mktemp("weights") / "mobilenet_v2_test.weights.h5")
    net.save_weights(path)
    return path


@pytest.fixture(scope="module")
def embedded(ingest_config, ingested, weights_file, tmp_path_factory) -> str:
    out = str(tmp_path_factory.mktemp("embedded"))
    assert embeddings.run(_argv(ingest_config.output_dir, out, "--backbone_weights", weights_file)) == 0
    return out


def _by_sha(records: list[bytes]) -> dict[str, example_pb2.Example]:
    parsed = [example_pb2.Example.FromString(r) for r in records]
    return {e.features.feature[schemas.SHA256_KEY].bytes_list.value[0].decode(): e for e in parsed}


def test_every_record_is_kept_and_gains_a_valid_embedding(embedded, ingest_config, ingested, weights_file):
    counts = {}
    for split in ("train", "eval", "test"):
        before = _by_sha(read_records(ingest_config.output_dir, split))
        records = read_records(embedded, split)
        for record in records:
            assert schemas.check_example(record, stored_size=SIZE, require_embedding=True) == []
        after = _by_sha(records)
        assert after.keys() == before.keys()
        for sha, example in after.items():
            del example.features.feature[schemas.EMBEDDING_KEY]
            assert example == before[sha]
        counts[split] = len(records)
    assert counts == {split: entry["count"] for split, entry in ingested["splits"].items()}
    with open(os.path.join(embedded, embeddings.EMBEDDINGS_FILE)) as f:
        summary = json.load(f)
    assert summary["splits"] == counts
    assert (summary["backbone"], summary["weights"], summary["image_size"]) == (BACKBONE, weights_file, CROP)


def test_embedding_is_the_backbone_of_the_loaders_centre_crop(embedded, weights_file):
    (features, _), = loader.make_dataset(
        embedded, "train", image_size=CROP, batch_size=4, training=False, with_embedding=True
    ).take(1)
    backbone = models.build_model2_parts(CROP, 0.25, BACKBONE, weights_file).backbone
    stored = features["embedding"].numpy()
    direct = np.asarray(backbone(features["l"], training=False))
    np.testing.assert_allclose(stored, direct, atol=1e-4)
    assert np.abs(stored - stored[::-1]).max() > 1e-2, "the embeddings of different images should differ"
    shifted = np.asarray(backbone(np.roll(features["l"].numpy(), 4, axis=1), training=False))
    assert np.abs(shifted - direct).max() > 10 * max(np.abs(stored - direct).max(), 1e-5)


def test_output_is_an_examples_dir_the_validator_and_trainer_accept(embedded):
    import keras

    from components import validator

    report = validator.run_validation(embedded, ["--runner=DirectRunner"])
    assert report["anomalies"] == []
    keras.utils.set_random_seed(1)
    parts = models.build_model2_parts(CROP, 0.125, BACKBONE, None)
    parts.head.compile(optimizer=keras.optimizers.Adam(1e-2), loss="mse")
    batch = loader.make_dataset(embedded, "train", image_size=CROP, batch_size=4, training=True, with_embedding=True)
    l = next(iter(batch))[0]["l"]
    before = parts.end_to_end.predict_on_batch(l)
    parts.head.fit(batch.take(1), epochs=1, verbose=0)
    assert np.abs(parts.end_to_end.predict_on_batch(l) - before).max() > 0


def test_random_backbone_only_when_allowed_and_the_same_on_every_worker(empty_keras_cache, caplog):
    config = embeddings.EmbeddingsConfig("unused", "unused", backbone=BACKBONE, image_size=CROP)
    with pytest.raises(models.MissingWeightsError):
        embeddings.resolve_backbone(config)
    spec, digest = embeddings.resolve_backbone(dataclasses.replace(config, allow_random_backbone=True))
    assert spec.weights is None and embeddings.RANDOM_BACKBONE_WARNING in caplog.text
    worker_model = embeddings.BackboneModelHandler(spec, 8, digest).load_model()  # raises if it differs
    assert embeddings.fingerprint(worker_model) == digest


def test_missing_weights_exit_2_with_one_sentence(ingest_config, ingested, empty_keras_cache, tmp_path, capsys):
    assert embeddings.run(_argv(ingest_config.output_dir, str(tmp_path / "out"))) == 2
    err = capsys.readouterr().err
    assert "ImageNet weights for mobilenet_v2 are not in the Keras cache" in err
    assert "Traceback" not in err and not (tmp_path / "out").exists()


def test_bad_paths_exit_2(embedded, ingest_config, tmp_path, capsys):
    assert embeddings.run(_argv(str(tmp_path / "nothing"), str(tmp_path / "out"), "--allow_random_backbone")) == 2
    assert "holds no TFRecord files; pass --examples the --output_dir of example_gen" in capsys.readouterr().err
    assert embeddings.run(_argv(ingest_config.output_dir, embedded, "--allow_random_backbone")) == 2
    err = capsys.readouterr().err
    assert "already holds" in err and "pass --overwrite" in err


def test_schema_version_1_records_are_refused_with_one_sentence(tmp_path, capsys):
    train = write_v1_examples(str(tmp_path / "old"))
    assert embeddings.run(_argv(str(tmp_path / "old"), str(tmp_path / "out"), "--allow_random_backbone")) == 2
    err = capsys.readouterr().err
    assert schemas.old_records_error(train, 1) in err and "Traceback" not in err
    assert not (tmp_path / "out" / "examples").exists()


def test_a_damaged_record_file_is_one_sentence_naming_it(ingest_config, ingested, tmp_path, capsys):
    import shutil

    examples = tmp_path / "damaged"
    shutil.copytree(ingest_config.output_dir, examples)
    path = sorted((examples / "examples" / "eval").glob("*.tfrecord"))[-1]
    data = bytearray(path.read_bytes())
    data[-3] ^= 1  # the last record's CRC
    path.write_bytes(bytes(data))
    assert embeddings.run(_argv(str(examples), str(tmp_path / "out"), "--allow_random_backbone")) == 2
    err = capsys.readouterr().err
    assert f"{path} is not a valid TFRecord file: a record of" in err and "does not match its CRC" in err
    assert "Traceback" not in err and "DataLoss" not in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "out" / "examples").exists()
