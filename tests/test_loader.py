"""The streaming loader: what the models see, clear refusals of wrong inputs, flat memory."""

from __future__ import annotations

import hashlib
import os

import numpy as np
import pytest
import tensorflow as tf
from tensorflow.core.example import example_pb2

import schemas
from components import loader
from components.loader import LoaderError
from schemas import HEIGHT_KEY, IMAGE_KEY, WIDTH_KEY
from tests.conftest import SIZE, read_records, write_v1_examples

CROP = SIZE - 16


@pytest.fixture(scope="module")
def examples_dir(ingest_config, ingested) -> str:
    return ingest_config.output_dir


def _write(path, records: list[bytes]) -> str:
    options = "GZIP" if str(path).endswith(".gz") else None
    with tf.io.TFRecordWriter(str(path), options=options) as writer:
        for record in records:
            writer.write(record)
    return str(path)


def _lab(record: bytes) -> np.ndarray:
    feature = example_pb2.Example.FromString(record).features.feature
    return schemas.decode_lab(
        feature[IMAGE_KEY].bytes_list.value[0], feature[HEIGHT_KEY].int64_list.value[0],
        feature[WIDTH_KEY].int64_list.value[0],
    ).numpy()


def _batches(ds) -> list:
    return [tuple(t.numpy() for t in batch) for batch in ds]


def _noise_record(side: int, seed: int = 0) -> bytes:
    """A valid record of random codes: its image is side^2 * 3 bytes."""
    codes = np.random.default_rng(seed).integers(0, 256, (side, side, 3), dtype=np.uint8)
    stored = schemas.encode_codes(codes)
    return schemas.make_example(
        lab_codes=stored, height=side, width=side, source="noise", path=f"noise_{seed}.png",
        sha256=hashlib.sha256(stored).hexdigest(), colorfulness=50.0,
    ).SerializeToString()


def _rss_mib() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


# ---------------------------------------------------------------- what the models see


def test_batches_have_the_models_shapes_dtypes_and_ranges(examples_dir):
    for training in (True, False):
        ds = loader.make_dataset(examples_dir, "train", image_size=CROP, batch_size=4, training=training, seed=0)
        assert ds.element_spec[0].shape.as_list() == [4 if training else None, CROP, CROP, 1]
        batches = _batches(ds)
        assert batches and all(l.shape[1:] == (CROP, CROP, 1) and ab.shape[1:] == (CROP, CROP, 2) for l, ab in batches)
        l, ab = np.concatenate([b[0] for b in batches]), np.concatenate([b[1] for b in batches])
        assert l.dtype == ab.dtype == np.float32
        assert 0.0 <= l.min() and l.max() <= 100.0 and l.max() > 50.0
        assert -1.0 <= ab.min() and ab.max() <= 1.0 and np.abs(ab).max() > 0.1
        if training:
            assert all(len(b[0]) == 4 for b in batches)
        else:
            assert len(l) == len(read_records(examples_dir, "train"))


def test_eval_is_the_centre_crop_of_decode_lab_with_no_scaling_drift(examples_dir):
    path = loader.example_files(examples_dir, "eval")[0]
    assert path.endswith(".tfrecord")  # ingest writes uncompressed records by default
    records = [r.numpy() for r in tf.data.TFRecordDataset(path)]
    l, ab = (np.concatenate(t) for t in zip(*_batches(
        loader.make_dataset(path, "eval", image_size=CROP, batch_size=3, training=False))))
    assert len(l) == len(records)
    offset = (SIZE - CROP) // 2
    for i, record in enumerate(records):
        lab = _lab(record)[offset : offset + CROP, offset : offset + CROP]
        np.testing.assert_array_equal(l[i], lab[..., :1])
        np.testing.assert_array_equal(ab[i] * 128.0, lab[..., 1:])


def test_eval_is_deterministic_and_fixed_batch_is_its_first_batch(examples_dir):
    first, second = (
        _batches(loader.make_dataset(examples_dir, "train", image_size=CROP, batch_size=5, training=False))
        for _ in range(2)
    )
    assert len(first) == len(second)
    for (l1, ab1), (l2, ab2) in zip(first, second):
        np.testing.assert_array_equal(l1, l2)
        np.testing.assert_array_equal(ab1, ab2)
    l, ab = loader.fixed_batch(examples_dir, "train", image_size=CROP, batch_size=5)
    np.testing.assert_array_equal(l, first[0][0])
    np.testing.assert_array_equal(ab, first[0][1])


def test_training_crops_are_random_windows_and_flips_happen(examples_dir, tmp_path):
    record = read_records(examples_dir, "train")[0]
    full = _lab(record)
    path = _write(tmp_path / "copies.tfrecord", [record] * 40)

    def crops(seed):
        ds = loader.make_dataset(path, "train", image_size=CROP, batch_size=40, training=True, seed=seed)
        return next(iter(ds))[0].numpy()[..., 0]

    seen_flipped = seen_plain = 0
    offsets = set()
    first = crops(1)
    for crop in first:
        for image, flipped in ((full[..., 0], False), (full[:, ::-1, 0], True)):
            found = [(y, x) for y in range(SIZE - CROP + 1) for x in range(SIZE - CROP + 1)
                     if np.array_equal(image[y : y + CROP, x : x + CROP], crop)]
            if found:
                offsets.add(found[0])
                seen_flipped += flipped
                seen_plain += not flipped
                break
        else:
            pytest.fail("a training image is not a window of the stored image or of its mirror")
    assert seen_flipped and seen_plain and len(offsets) > 5
    assert not np.array_equal(first, crops(2))


def test_a_seeded_training_stream_is_the_same_on_every_run_and_new_each_epoch(examples_dir):
    def stream(seed, epochs=1):
        ds = loader.make_dataset(examples_dir, "train", image_size=CROP, batch_size=3, training=True, seed=seed)
        return [np.concatenate([ab for _, ab in _batches(ds)]) for _ in range(epochs)]

    first, second = stream(7, epochs=2)
    np.testing.assert_array_equal(first, stream(7)[0])  # order, crops and flips, with parallel reads and maps
    assert not np.array_equal(first, second)  # the next epoch reshuffles and crops anew
    assert not np.array_equal(first, stream(8)[0])


# ---------------------------------------------------------------- refusals a user can cause


def test_missing_or_empty_inputs_name_the_path(tmp_path):
    (tmp_path / "empty").mkdir()
    for examples in (tmp_path / "nope", tmp_path / "empty", tmp_path / "empty" / "*.tfrecord.gz"):
        with pytest.raises(LoaderError, match="run example_gen first") as raised:
            loader.make_dataset(str(examples), "train", image_size=8, batch_size=2, training=True)
        assert str(examples) in str(raised.value)


@pytest.mark.parametrize("name", ["garbage.tfrecord.gz", "garbage.tfrecord"])
def test_a_file_that_is_not_a_tfrecord_is_named(tmp_path, name):
    path = tmp_path / name
    path.write_bytes(os.urandom(2000))
    with pytest.raises(LoaderError, match="not a readable TFRecord") as raised:
        loader.make_dataset(str(path), "train", image_size=8, batch_size=2, training=True)
    assert str(path) in str(raised.value)


def test_records_without_the_schemas_features_are_refused_with_the_missing_feature(tmp_path):
    example = example_pb2.Example()
    example.features.feature[IMAGE_KEY].bytes_list.value.append(b"not codes")
    good = tmp_path / "good.tfrecord.gz"
    _write(good, [_noise_record(16)])
    bad = _write(tmp_path / "other.tfrecord.gz", [example.SerializeToString()])
    with pytest.raises(LoaderError, match=f"missing feature '{HEIGHT_KEY}'") as raised:
        loader.make_dataset(str(tmp_path / "*.tfrecord.gz"), "train", image_size=8, batch_size=2, training=True)
    assert bad in str(raised.value) and "re-run example_gen" in str(raised.value)


def test_schema_version_1_records_are_refused_with_one_sentence_saying_to_re_ingest(tmp_path):
    train = write_v1_examples(str(tmp_path / "old"))
    for examples in (str(tmp_path / "old"), os.path.join(train, "*.tfrecord.gz")):
        with pytest.raises(LoaderError) as raised:
            loader.make_dataset(examples, "train", image_size=8, batch_size=2, training=True)
        message = str(raised.value)
        assert message == schemas.old_records_error(train, 1)
        assert "schema version 1" in message and f"schema version {schemas.SCHEMA_VERSION}" in message
        assert "re-ingest" in message and "components.example_gen" in message and message.count(". ") == 0


def test_a_record_whose_codes_do_not_fill_height_x_width_is_refused(tmp_path):
    example = example_pb2.Example.FromString(_noise_record(16))
    example.features.feature[HEIGHT_KEY].int64_list.value[0] = 17
    path = _write(tmp_path / "short.tfrecord", [example.SerializeToString()])
    with pytest.raises(LoaderError, match=r"holds 768 bytes, height x width x 3 = 17x16x3 is 816"):
        loader.make_dataset(path, "train", image_size=8, batch_size=2, training=True)


def test_gzip_records_load_like_uncompressed_ones(tmp_path):
    records = [_noise_record(16, seed) for seed in range(4)]
    plain, packed = (_write(tmp_path / name, records) for name in ("r.tfrecord", "r.tfrecord.gz"))
    a, b = (_batches(loader.make_dataset(p, "eval", image_size=16, batch_size=4, training=False))
            for p in (plain, packed))
    np.testing.assert_array_equal(a[0][0], b[0][0])
    np.testing.assert_array_equal(a[0][1], b[0][1])


def test_a_bad_record_past_the_first_fails_at_run_time_with_the_problem(tmp_path):
    path = _write(tmp_path / "mixed.tfrecord", [_noise_record(16), b"not an example"])
    ds = loader.make_dataset(path, "train", image_size=8, batch_size=2, training=False)
    with pytest.raises(tf.errors.InvalidArgumentError, match="parse"):
        _batches(ds)


def test_an_image_size_above_the_stored_size_says_how_to_fix_it(examples_dir):
    assert loader.stored_size(examples_dir) == SIZE
    for examples in (examples_dir, loader.example_files(examples_dir, "train")[0]):
        fix = rf"stored at {SIZE}x{SIZE}.*--stored_size >= {SIZE + 1}.*--image_size <= {SIZE}"
        with pytest.raises(LoaderError, match=fix):
            loader.make_dataset(examples, "train", image_size=SIZE + 1, batch_size=2, training=True)
    l, _ = next(iter(loader.make_dataset(examples_dir, "eval", image_size=SIZE, batch_size=2, training=False)))
    assert l.shape[1:] == (SIZE, SIZE, 1)


def test_globs_take_a_split_placeholder(examples_dir):
    pattern = os.path.join(examples_dir, "examples", "{split}", "*.tfrecord")
    for split in ("train", "eval"):
        assert loader.example_files(pattern, split) == loader.example_files(examples_dir, split)
    assert loader.stored_size(pattern) is None


# ---------------------------------------------------------------- Model 2's precomputed embeddings


def test_with_embedding_yields_the_heads_inputs(examples_dir, tmp_path):
    records, embeddings = [], []
    for i, record in enumerate(read_records(examples_dir, "eval")[:5]):
        example = example_pb2.Example.FromString(record)
        embedding = np.random.default_rng(i).random(schemas.EMBEDDING_SIZE, dtype=np.float32)
        example.features.feature[schemas.EMBEDDING_KEY].float_list.value.extend(embedding)
        records.append(example.SerializeToString())
        embeddings.append(embedding)
    path = _write(tmp_path / "embedded.tfrecord.gz", records)

    ds = loader.make_dataset(path, "eval", image_size=CROP, batch_size=5, training=False, with_embedding=True)
    inputs, ab = next(iter(ds))
    assert set(inputs) == {"l", "embedding"}
    assert inputs["l"].shape == (5, CROP, CROP, 1) and ab.shape == (5, CROP, CROP, 2)
    np.testing.assert_array_equal(inputs["embedding"].numpy(), np.stack(embeddings))
    l, _ = next(iter(loader.make_dataset(path, "eval", image_size=CROP, batch_size=5, training=False)))
    np.testing.assert_array_equal(l, inputs["l"])

    with pytest.raises(LoaderError, match=f"missing feature '{schemas.EMBEDDING_KEY}'"):
        loader.make_dataset(examples_dir, "eval", image_size=CROP, batch_size=5, training=False, with_embedding=True)


# ---------------------------------------------------------------- memory


def test_memory_stays_flat_while_streaming_many_records(tmp_path):
    """1,000 batches of 4 records of about 28 KiB each.

    A cache or a leak of the records adds about 100 MiB between batches 100 and 1,000 (measured: 98 MiB with
    cache=True, under 3 MiB without).
    """
    batch_size = 4
    path = _write(tmp_path / "many.tfrecord", [_noise_record(96)] * (1100 * batch_size))
    ds = loader.make_dataset(
        path, "train", image_size=80, batch_size=batch_size, training=True, shuffle_buffer=256, seed=0
    )
    for i, _ in enumerate(ds):
        if i == 100:
            after_100 = _rss_mib()
        if i == 1000:
            after_1000 = _rss_mib()
            break
    assert after_1000 - after_100 < 40.0, f"RSS grew {after_1000 - after_100:.0f} MiB from batch 100 to batch 1000"
