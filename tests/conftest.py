"""Shared fixtures: a small generated corpus run once through the real ingest job."""

from __future__ import annotations

import os
import shutil

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import pytest  # noqa: E402

SIZE = 64  # stored size of the test corpus; tests stay small


@pytest.fixture(scope="session")
def corpus_dirs(tmp_path_factory):
    """Two sources: generated scenes (with duplicates) and a folder of bad and odd files.

    Returns (sources, expected_rejections, odd_valid, duplicates) where
    expected_rejections maps absolute path -> reason.
    """
    from components import synthetic
    from components.example_gen import IMAGE_EXTENSIONS
    from tests import corpus

    root = tmp_path_factory.mktemp("corpus")
    scenes = root / "scenes"
    synthetic.generate(str(scenes), 40, seed=3, size=SIZE)
    written = sorted(p for p in scenes.rglob("*") if p.is_file())
    copies = []
    for i, original in enumerate(written[:2]):
        copy = scenes / "Copies" / f"copy_{i}{original.suffix}"
        copy.parent.mkdir(exist_ok=True)
        shutil.copyfile(original, copy)
        copies.append(str(copy))
    odd = root / "odd"
    bad = corpus.write_bad_corpus(str(odd / "bad"), size=SIZE)
    valid = corpus.write_odd_valid_corpus(str(odd / "valid"), size=SIZE)
    searched = lambda name: name.lower().endswith(IMAGE_EXTENSIONS)  # noqa: E731 - others are never looked at
    expected = {str(odd / "bad" / name): reason for name, reason in bad.items() if searched(name)}
    odd_valid = [str(odd / "valid" / name) for name in valid if searched(name)]
    (odd / "notes.txt").write_text("not an image extension: never looked at")
    return (("scenes", str(scenes)), ("odd", str(odd))), expected, odd_valid, copies


@pytest.fixture(scope="session")
def ingest_config(corpus_dirs, tmp_path_factory):
    from components.example_gen import IngestConfig

    sources, *_ = corpus_dirs
    return IngestConfig(
        sources=sources,
        output_dir=str(tmp_path_factory.mktemp("ingest")),
        stored_size=SIZE,
        min_side=SIZE,
        min_colorfulness=3.0,
    )


@pytest.fixture(scope="session")
def ingested(ingest_config):
    """Statistics of one real DirectRunner run over the corpus."""
    from components.example_gen import run_ingest

    return run_ingest(ingest_config, ["--runner=DirectRunner"])


def read_records(output_dir: str, split: str) -> list[bytes]:
    """Every serialized record of one split, read with tf.data as the trainer will."""
    import glob

    import tensorflow as tf

    files = sorted(glob.glob(os.path.join(output_dir, "examples", split, "*.tfrecord*")))
    if not files:
        return []
    compression = "GZIP" if files[0].endswith(".gz") else ""
    return [r.numpy() for r in tf.data.TFRecordDataset(files, compression_type=compression)]


def write_v1_examples(output_dir: str, count: int = 3, side: int = SIZE) -> str:
    """A schema-version-1 ingest output as the old example_gen wrote it: a PNG of the LAB codes under
    'image/lab_png' in GZIP TFRecords, and statistics.json saying schema_version 1. Returns the train folder."""
    import hashlib
    import json

    import numpy as np
    import tensorflow as tf
    from tensorflow.core.example import example_pb2

    train = os.path.join(output_dir, "examples", "train")
    os.makedirs(train, exist_ok=True)
    with tf.io.TFRecordWriter(os.path.join(train, "data-00000-of-00001.tfrecord.gz"), options="GZIP") as writer:
        for i in range(count):
            codes = np.random.default_rng(i).integers(0, 256, (side, side, 3), dtype=np.uint8)
            png = tf.io.encode_png(codes).numpy()
            example = example_pb2.Example()
            feature = example.features.feature
            feature["image/lab_png"].bytes_list.value.append(png)
            feature["image/height"].int64_list.value.append(side)
            feature["image/width"].int64_list.value.append(side)
            feature["image/source"].bytes_list.value.append(b"old")
            feature["image/path"].bytes_list.value.append(f"old_{i}.jpg".encode())
            feature["image/sha256"].bytes_list.value.append(hashlib.sha256(png).hexdigest().encode())
            feature["image/colorfulness"].float_list.value.append(40.0)
            writer.write(example.SerializeToString())
    os.makedirs(os.path.join(output_dir, "statistics"), exist_ok=True)
    with open(os.path.join(output_dir, "statistics", "statistics.json"), "w") as f:
        json.dump({"schema_version": 1, "stored_size": side, "splits": {"train": {"count": count}}}, f)
    return train
