"""loader: stream LAB TFRecords into (L, ab/128) training batches with tf.data.

Memory stays flat in the dataset's size (the report's loader held every
image in one numpy array and ran out of RAM at 1,920 images):

    files (shuffled when training)
      -> parallel interleave of TFRecordDatasets (uncompressed; GZIP for .gz)
      -> [cache of serialized records, only when asked]
      -> shuffle buffer of serialized records (training)
      -> [repeat]
      -> (training) zipped with a stream of random seeds, one per record
      -> per record, in parallel: parse the image's features (the schema's
         spec), schemas.decode_codes (the raw 8-bit codes, no
         decompression), random crop + random horizontal flip (training,
         stateless ops keyed by the record's seed) or centre crop (eval) of
         the codes, then L (0..100) and ab / 128 straight from the codes'
         channels
      -> batch -> prefetch

Eval order is deterministic. Training without a seed trades order for
throughput; with a seed every batch is the same on every run (the same
files, order, crops and flips), so a seeded training run is reproducible.

    from components import loader
    train = loader.make_dataset("/tmp/ingest", "train", image_size=224, batch_size=48,
                                training=True, repeat=True)
"""

from __future__ import annotations

import json
import posixpath

import numpy as np
import tensorflow as tf

import schemas
from schemas import (  # AB_SCALE, the report's target scale, stays importable as loader.AB_SCALE
    AB_SCALE,
    EMBEDDING_KEY,
    EXAMPLES_DIR,
    HEIGHT_KEY,
    IMAGE_KEY,
    STATISTICS_FILE,
    WIDTH_KEY,
)

_AUTOTUNE = tf.data.AUTOTUNE
_FILE_GLOB = "*.tfrecord*"


class LoaderError(Exception):
    """Examples the user pointed at cannot be loaded; one sentence naming the path and the fix."""


# ---------------------------------------------------------------- files


def example_files(examples: str, split: str) -> list[str]:
    """Sorted TFRecord files of `split`.

    `examples` is an example_gen output dir (reads `<dir>/examples/<split>/`)
    or a glob pattern or file, local or gs://; a `{split}` in the pattern is
    replaced by the split's name.
    """
    if tf.io.gfile.isdir(examples):
        pattern = posixpath.join(examples, EXAMPLES_DIR, split, _FILE_GLOB)
    else:
        pattern = examples.replace("{split}", split)
    try:
        files = sorted(f for f in tf.io.gfile.glob(pattern) if not tf.io.gfile.isdir(f))
    except tf.errors.OpError:
        files = []
    if not files:
        raise LoaderError(f"no TFRecord files match {pattern}; run example_gen first or check --examples.")
    return files


def stored_size(examples: str) -> int | None:
    """The stored image side from example_gen's statistics.json, or None when `examples` is not its output dir."""
    if not tf.io.gfile.isdir(examples):
        return None
    path = posixpath.join(examples, STATISTICS_FILE)
    if not tf.io.gfile.exists(path):
        return None
    try:
        with tf.io.gfile.GFile(path) as f:
            value = json.load(f)["stored_size"]
        return int(value)
    except (ValueError, KeyError, TypeError) as e:
        raise LoaderError(f"{path} has no readable stored_size ({e}); re-run example_gen.") from None


def _compression(path):
    """The TFRecord compression type of a file name: GZIP for .gz; a str or a string tensor."""
    if isinstance(path, str):
        return "GZIP" if path.endswith(".gz") else ""
    return tf.where(tf.strings.regex_full_match(path, r".*\.gz"), "GZIP", "")


# ---------------------------------------------------------------- upfront check


def _first_record_sides(files: list[str], *, stored_size: int | None, with_embedding: bool) -> list[int]:
    """Check the first record of every file; returns the shorter side of each first image."""
    from tensorflow.core.example import example_pb2

    sides = []
    for path in files:
        try:
            first = list(tf.data.TFRecordDataset(path, compression_type=_compression(path)).take(1).as_numpy_iterator())
        except tf.errors.OpError as e:
            raise LoaderError(
                f"{path} is not a readable TFRecord file ({e.message.splitlines()[0]}); "
                "remove it or re-run example_gen."
            ) from None
        if not first:
            continue
        record = first[0]
        version = schemas.record_schema_version(record)
        if version is not None and version != schemas.SCHEMA_VERSION:
            raise LoaderError(schemas.old_records_error(posixpath.dirname(path), version))
        problems = schemas.check_example(record, stored_size=stored_size, require_embedding=with_embedding)
        if problems:
            raise LoaderError(
                f"{path}: record does not match the schema: {'; '.join(problems)}; "
                "point --examples at example_gen's output or re-run example_gen."
            )
        feature = example_pb2.Example.FromString(record).features.feature
        sides.append(
            min(feature[HEIGHT_KEY].int64_list.value[0], feature[WIDTH_KEY].int64_list.value[0])
        )
    if not sides:
        raise LoaderError(
            f"none of the {len(files)} TFRecord files like {files[0]} holds a record; re-run example_gen."
        )
    return sides


def check_first_records(files: list[str], *, stored_size: int | None = None, with_embedding: bool = False) -> None:
    """Read the first record of each file and check it against the schema; raises LoaderError.

    Catches the common mistakes (wrong files, an old schema, a corrupt or
    non-TFRecord file) before training starts instead of mid-epoch.
    """
    _first_record_sides(files, stored_size=stored_size, with_embedding=with_embedding)


# ---------------------------------------------------------------- the pipeline


_NAMES = {IMAGE_KEY: "lab_codes", HEIGHT_KEY: "height", WIDTH_KEY: "width", EMBEDDING_KEY: "embedding"}


def _parse(serialized, with_embedding: bool) -> dict:
    """One serialized record -> the features the models need, by the schema's spec (no source, path or hash).

    Per record, not batched: batching 180 KiB records to parse them with one
    op and unbatching them again copies every image twice more, which cost
    more than the per-record calls it saves (README, "Loader on many cores").
    """
    spec = schemas.feature_spec(with_embedding)
    parsed = tf.io.parse_single_example(serialized, {key: spec[key] for key in _NAMES if key in spec})
    return {_NAMES[key]: value for key, value in parsed.items()}


def _centre_crop(image, size: int):
    shape = tf.shape(image)
    top = (shape[0] - size) // 2
    left = (shape[1] - size) // 2
    return image[top : top + size, left : left + size, :]


def crop_seeds(seed: int | None) -> tf.data.Dataset:
    """The stream of crop keys (int64 [2]) the training stream zips with its records: a new stream each
    epoch; with a seed, the same streams on every run."""
    return tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True).batch(2)


def random_crop_flip(codes, image_size: int, key):
    """A random image_size crop of `codes`, flipped left-right half the time, both drawn from `key` alone."""
    codes = tf.image.stateless_random_crop(codes, [image_size, image_size, 3], seed=key)
    return tf.image.stateless_random_flip_left_right(codes, seed=key[::-1])


def _to_model_io(features: dict, image_size: int, crop_seed=None):
    """One record's image -> (l, ab/128) at image_size: a random crop and flip keyed by `crop_seed`
    (int64 [2], training), else the centre crop.

    The crop and flip run on the 8-bit codes, so only the crop is scaled to floats. Stateless ops: a
    record's crop depends on its seed alone, not on which of the parallel calls ran first.
    """
    codes = schemas.decode_codes(features["lab_codes"], features["height"], features["width"])
    if crop_seed is not None:
        codes = random_crop_flip(codes, image_size, crop_seed)
    else:
        codes = _centre_crop(codes, image_size)
    l, ab = schemas.codes_to_l_ab(tf.ensure_shape(codes, [image_size, image_size, 3]))
    if "embedding" in features:
        return {"l": l, "embedding": features["embedding"]}, ab
    return l, ab


def make_dataset(
    examples: str,
    split: str,
    *,
    image_size: int,
    batch_size: int,
    training: bool,
    shuffle_buffer: int = 1024,
    seed: int | None = None,
    repeat: bool = False,
    cache: bool = False,
    with_embedding: bool = False,
    drop_remainder: bool | None = None,
    check: bool = True,
) -> tf.data.Dataset:
    """Batches of (l [B, S, S, 1] in 0..100, ab/128 [B, S, S, 2]) streamed from `split`'s records.

    with_embedding=True yields ({"l": l, "embedding": [B, 1000]}, ab) for
    Model 2's head. drop_remainder defaults to `training`. cache=True keeps
    the serialized records (not the decoded images) in memory after the
    first epoch; leave it off for datasets larger than RAM.
    """
    if image_size < 1 or batch_size < 1:
        raise LoaderError(f"image_size and batch_size must be at least 1, got {image_size} and {batch_size}.")
    files = example_files(examples, split)
    size = stored_size(examples)
    if check:
        sides = _first_record_sides(files, stored_size=size, with_embedding=with_embedding)
        size = min(sides) if size is None else size
    if size is not None and size < image_size:
        raise LoaderError(
            f"records under {examples} are stored at {size}x{size}, smaller than --image_size {image_size}; "
            f"re-ingest with --stored_size >= {image_size} or use --image_size <= {size}."
        )
    if drop_remainder is None:
        drop_remainder = training
    deterministic = not training or seed is not None

    ds = tf.data.Dataset.from_tensor_slices(files)
    if training:
        ds = ds.shuffle(len(files), seed=seed, reshuffle_each_iteration=True)
    ds = ds.interleave(
        lambda f: tf.data.TFRecordDataset(f, compression_type=_compression(f)),
        cycle_length=min(len(files), 16),
        num_parallel_calls=_AUTOTUNE,
        deterministic=deterministic,
    )
    if cache:
        ds = ds.cache()
    if training:
        ds = ds.shuffle(shuffle_buffer, seed=seed, reshuffle_each_iteration=True)
    if repeat:
        ds = ds.repeat()
    if training:
        ds = tf.data.Dataset.zip(ds, crop_seeds(seed))

    def to_model_io(serialized, crop_seed=None):
        return _to_model_io(_parse(serialized, with_embedding), image_size, crop_seed)

    ds = ds.map(to_model_io, num_parallel_calls=_AUTOTUNE, deterministic=deterministic)
    return ds.batch(batch_size, drop_remainder=drop_remainder).prefetch(_AUTOTUNE)


def fixed_batch(examples: str, split: str, *, image_size: int, batch_size: int) -> tuple[np.ndarray, np.ndarray]:
    """The first `batch_size` images of `split`, centre-cropped, always the same: (l, ab/128) numpy arrays."""
    ds = make_dataset(examples, split, image_size=image_size, batch_size=batch_size, training=False)
    for l, ab in ds.take(1):
        return l.numpy(), ab.numpy()
    raise LoaderError(f"{split} split of {examples} holds no records; re-run example_gen.")
