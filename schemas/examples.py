"""Feature keys, dtypes, encodings and value ranges of the LAB image records.

Image: CIELAB quantised to 8 bits per channel, L 0..100 scaled to 0..255 and
a, b offset by +128 and clipped to 0..255, stored as the raw codes: height x
width x 3 bytes, row-major, channel order L, a, b, in uncompressed TFRecords.

Schema version 2. Version 1 stored the same codes as a PNG under
'image/lab_png'; decoding it cost the loader 1 ms per image, three quarters
of its time (README, "Loader on many cores"). Version-1 records are refused
with a sentence saying to re-ingest (old_records_error).
"""

from __future__ import annotations

import dataclasses
import re
import struct
from typing import Any

import numpy as np

SCHEMA_VERSION = 2

L_MAX = 100.0
L_SCALE = 255.0 / L_MAX
AB_OFFSET = 128.0
AB_SCALE = 128.0
"""The models' target scale: they predict ab / AB_SCALE (about -1..1); ab in LAB units = output * AB_SCALE."""

IMAGE_KEY = "image/lab_codes"
V1_IMAGE_KEY = "image/lab_png"  # schema version 1's PNG of the codes; only recognised, to refuse it
HEIGHT_KEY = "image/height"
WIDTH_KEY = "image/width"
SOURCE_KEY = "image/source"
PATH_KEY = "image/path"
SHA256_KEY = "image/sha256"
COLORFULNESS_KEY = "image/colorfulness"
EMBEDDING_KEY = "image/embedding"
EMBEDDING_SIZE = 1000  # class probabilities of the frozen fusion backbone

_SHA256_RE = re.compile(r"^[0-9a-f]{64}$")


@dataclasses.dataclass(frozen=True)
class FeatureDef:
    """One feature of the record: key, dtype, encoding and allowed values."""

    name: str
    dtype: str  # "bytes" | "int64" | "float"
    description: str
    encoding: str = ""
    min_value: float | None = None
    max_value: float | None = None
    length: int = 1


FEATURES: tuple[FeatureDef, ...] = (
    FeatureDef(
        IMAGE_KEY,
        "bytes",
        "The image in CIELAB: L*2.55, a+128, b+128, clipped, uint8, height x width x 3 bytes, row-major",
        encoding="raw_uint8",
    ),
    FeatureDef(HEIGHT_KEY, "int64", "Stored image height in pixels", min_value=1, max_value=16384),
    FeatureDef(WIDTH_KEY, "int64", "Stored image width in pixels", min_value=1, max_value=16384),
    FeatureDef(SOURCE_KEY, "bytes", "Name of the source dataset (lfw, flickr8k, ...)", encoding="utf-8"),
    FeatureDef(PATH_KEY, "bytes", "Path of the source file relative to its data dir", encoding="utf-8"),
    FeatureDef(SHA256_KEY, "bytes", "SHA-256 of the source file's bytes, hex", encoding="hex"),
    FeatureDef(
        COLORFULNESS_KEY,
        "float",
        "Hasler-Suesstrunk colourfulness of the stored RGB crop",
        min_value=0.0,
        max_value=469.0,  # spread term + 0.3 x mean term, each at most sqrt(2) * 255
    ),
)
# Added to the records by the embedding precompute step, for training Model 2's head on stored vectors.
EMBEDDING_FEATURE = FeatureDef(
    EMBEDDING_KEY, "float", "Frozen backbone's class probabilities for the stored image",
    min_value=0.0, max_value=1.0, length=EMBEDDING_SIZE,
)
_BY_NAME = {f.name: f for f in FEATURES + (EMBEDDING_FEATURE,)}


# ---------------------------------------------------------------- quantisation


def quantize_lab(lab):
    """float LAB tensor [..., 3] -> uint8 codes [..., 3] (TensorFlow ops)."""
    import tensorflow as tf

    lab = tf.convert_to_tensor(lab, tf.float32)
    scale = tf.constant([L_SCALE, 1.0, 1.0], tf.float32)
    offset = tf.constant([0.0, AB_OFFSET, AB_OFFSET], tf.float32)
    codes = tf.clip_by_value(tf.round(lab * scale + offset), 0.0, 255.0)
    return tf.cast(codes, tf.uint8)


def dequantize_lab(codes):
    """uint8 codes [..., 3] -> float32 LAB (L 0..100, a/b -128..127)."""
    import tensorflow as tf

    codes = tf.cast(codes, tf.float32)
    scale = tf.constant([1.0 / L_SCALE, 1.0, 1.0], tf.float32)
    offset = tf.constant([0.0, AB_OFFSET, AB_OFFSET], tf.float32)
    return (codes - offset) * scale


def codes_to_l_ab(codes):
    """uint8 codes [..., 3] -> the models' (L in 0..100 [..., 1], ab / AB_SCALE [..., 2]) (TensorFlow ops).

    The same values as dequantize_lab then a split, bit for bit, but each
    channel group is sliced from the 8-bit codes and scaled by one multiply
    (L) or multiply-add (ab) with the constants folded: no float copy of all
    three channels to slice (several times cheaper per 224 crop; README,
    "Loader on many cores").
    """
    import tensorflow as tf

    l = tf.cast(codes[..., :1], tf.float32) * (1.0 / L_SCALE)
    ab = tf.cast(codes[..., 1:], tf.float32) * (1.0 / AB_SCALE) - AB_OFFSET / AB_SCALE
    return l, ab


# ---------------------------------------------------------------- the stored image


def encode_codes(codes: np.ndarray) -> bytes:
    """The stored bytes of a uint8 [H, W, 3] code array: row-major, channel order L, a, b."""
    codes = np.asarray(codes)
    if codes.dtype != np.uint8 or codes.ndim != 3 or codes.shape[2] != 3:
        raise ValueError(f"encode_codes expects a [H, W, 3] uint8 array, got {codes.dtype} of shape {codes.shape}.")
    return codes.tobytes()


def decode_codes(lab_codes, height, width):
    """One record's stored bytes -> uint8 codes [H, W, 3] (TensorFlow ops: runs eagerly, in tf.data and in graphs)."""
    import tensorflow as tf

    return tf.reshape(tf.io.decode_raw(lab_codes, tf.uint8), tf.stack([height, width, 3]))


def decode_lab(lab_codes, height, width):
    """One record's stored bytes -> float32 LAB [H, W, 3] (L 0..100, a/b -128..127)."""
    return dequantize_lab(decode_codes(lab_codes, height, width))


# ---------------------------------------------------------------- examples


def serialize_example(
    *,
    lab_codes: bytes,
    height: int,
    width: int,
    source: str,
    path: str,
    sha256: str,
    colorfulness: float,
) -> bytes:
    """The serialized tf.train.Example for one image, written in protobuf's wire format without TensorFlow.

    Ingest workers call this for every image: importing TensorFlow only for
    the Example message costs each worker seconds of start-up. Features are
    written in key order, so the same image always gives the same bytes.
    """
    features = (  # in key order
        (COLORFULNESS_KEY, _float_feature(float(colorfulness))),
        (HEIGHT_KEY, _int64_feature(int(height))),
        (IMAGE_KEY, _bytes_feature(lab_codes)),
        (PATH_KEY, _bytes_feature(path.encode("utf-8"))),
        (SHA256_KEY, _bytes_feature(sha256.encode("ascii"))),
        (SOURCE_KEY, _bytes_feature(source.encode("utf-8"))),
        (WIDTH_KEY, _int64_feature(int(width))),
    )
    pieces, size = [b""], 0
    for key, (feature, feature_size) in features:
        key_field = _KEY_FIELDS[key]
        value_header = b"\x12" + _varint(feature_size)  # MapEntry.value
        entry_header = b"\x0a" + _varint(len(key_field) + len(value_header) + feature_size)  # Features.feature
        pieces += (entry_header, key_field, value_header, *feature)
        size += len(entry_header) + len(key_field) + len(value_header) + feature_size
    pieces[0] = b"\x0a" + _varint(size)  # Example.features
    return b"".join(pieces)  # the only copy of the image's bytes


def make_example(**fields):
    """The tf.train.Example message for one image (the fields of serialize_example)."""
    from tensorflow.core.example import example_pb2

    return example_pb2.Example.FromString(serialize_example(**fields))


def _varint(value: int) -> bytes:
    out = bytearray()
    value &= (1 << 64) - 1  # negative int64 values are written as their 64-bit two's complement
    while value > 0x7F:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _bytes_feature(value: bytes) -> tuple[tuple[bytes, ...], int]:
    """Feature.bytes_list holding `value`, as (pieces, total size): the value itself is not copied."""
    inner = b"\x0a" + _varint(len(value))  # BytesList.value
    outer = b"\x0a" + _varint(len(inner) + len(value))  # Feature.bytes_list
    return (outer, inner, value), len(outer) + len(inner) + len(value)


def _int64_feature(value: int) -> tuple[tuple[bytes, ...], int]:
    packed = _varint(value)
    encoded = b"\x1a" + _varint(len(packed) + 2) + b"\x0a" + _varint(len(packed)) + packed  # Feature.int64_list
    return (encoded,), len(encoded)


def _float_feature(value: float) -> tuple[tuple[bytes, ...], int]:
    encoded = b"\x12\x06\x0a\x04" + struct.pack("<f", value)  # Feature.float_list, packed value
    return (encoded,), len(encoded)


_KEY_FIELDS = {key: b"\x0a" + _varint(len(key.encode("utf-8"))) + key.encode("utf-8") for key in (
    IMAGE_KEY, HEIGHT_KEY, WIDTH_KEY, SOURCE_KEY, PATH_KEY, SHA256_KEY, COLORFULNESS_KEY)}  # MapEntry.key


def feature_spec(with_embedding: bool = False) -> dict[str, Any]:
    """The tf.io.parse_example spec of every feature (plus the embedding when asked)."""
    import tensorflow as tf

    dtypes = {"bytes": tf.string, "int64": tf.int64, "float": tf.float32}
    features = FEATURES + ((EMBEDDING_FEATURE,) if with_embedding else ())
    return {
        f.name: tf.io.FixedLenFeature([] if f.length == 1 else [f.length], dtypes[f.dtype]) for f in features
    }


def parse_examples(serialized, with_embedding: bool = False):
    """Batch of serialized Examples -> dict of tensors (tf.io.parse_example)."""
    import tensorflow as tf

    return tf.io.parse_example(serialized, feature_spec(with_embedding))


def check_example(
    serialized: bytes, *, stored_size: int | None = None, require_embedding: bool = False
) -> list[str]:
    """Check one serialized record against the schema; returns the problems found.

    The embedding feature is optional unless `require_embedding`. A
    version-1 record gets one problem saying to re-ingest.
    Pure Python (protobuf only), so the validator runs on any Beam worker
    without TensorFlow ops.
    """
    from tensorflow.core.example import example_pb2

    try:
        example = example_pb2.Example.FromString(serialized)
    except Exception as e:  # a protobuf DecodeError is the expected case
        return [f"record is not a tf.train.Example ({e})"]
    problems: list[str] = []
    features = example.features.feature
    if V1_IMAGE_KEY in features and IMAGE_KEY not in features:
        return [
            f"record is of schema version 1 (a PNG under '{V1_IMAGE_KEY}'), this code reads schema version "
            f"{SCHEMA_VERSION}; re-ingest the images with the current `python -m components.example_gen`"
        ]
    for extra in sorted(set(features) - set(_BY_NAME)):
        problems.append(f"unexpected feature '{extra}'")
    values: dict[str, Any] = {}
    kinds = {"bytes": "bytes_list", "int64": "int64_list", "float": "float_list"}
    if require_embedding and EMBEDDING_KEY not in features:
        problems.append(f"missing feature '{EMBEDDING_KEY}' (run the embedding precompute step first)")
    checked = FEATURES + ((EMBEDDING_FEATURE,) if EMBEDDING_KEY in features else ())
    for spec in checked:
        if spec.name not in features:
            problems.append(f"missing feature '{spec.name}'")
            continue
        feature = features[spec.name]
        kind = feature.WhichOneof("kind")
        if kind != kinds[spec.dtype]:
            problems.append(f"feature '{spec.name}' has type {kind}, expected {kinds[spec.dtype]}")
            continue
        held = getattr(feature, kind).value
        if len(held) != spec.length:
            count = "one value" if spec.length == 1 else f"{spec.length} values"
            problems.append(f"feature '{spec.name}' must hold exactly {count}, holds {len(held)}")
            continue
        low, high = (min(held), max(held)) if spec.dtype != "bytes" else (None, None)
        if spec.min_value is not None and low < spec.min_value:
            problems.append(f"feature '{spec.name}' = {low} is below {spec.min_value}")
        if spec.max_value is not None and high > spec.max_value:
            problems.append(f"feature '{spec.name}' = {high} is above {spec.max_value}")
        values[spec.name] = held[0]
    if problems:
        return problems
    for key in (SOURCE_KEY, PATH_KEY):
        try:
            if not values[key].decode("utf-8"):
                problems.append(f"feature '{key}' is empty")
        except UnicodeDecodeError:
            problems.append(f"feature '{key}' is not UTF-8")
    if not _SHA256_RE.match(values[SHA256_KEY].decode("ascii", "replace")):
        problems.append(f"feature '{SHA256_KEY}' is not 64 lowercase hex digits")
    height, width = values[HEIGHT_KEY], values[WIDTH_KEY]
    if stored_size is not None and (height, width) != (stored_size, stored_size):
        problems.append(f"image is {height}x{width}, the stored size is {stored_size}x{stored_size}")
    stored = len(values[IMAGE_KEY])
    if stored != height * width * 3:
        problems.append(
            f"feature '{IMAGE_KEY}' holds {stored} bytes, height x width x 3 = {height}x{width}x3 is {height * width * 3}"
        )
    return problems


def record_schema_version(serialized: bytes) -> int | None:
    """The schema version a record was written with: SCHEMA_VERSION (raw codes), 1 (a PNG) or None (neither)."""
    from tensorflow.core.example import example_pb2

    try:
        features = example_pb2.Example.FromString(serialized).features.feature
    except Exception:  # not an Example at all: check_example names the problem
        return None
    if IMAGE_KEY in features:
        return SCHEMA_VERSION
    if V1_IMAGE_KEY in features:
        return 1
    return None


def old_records_error(folder: str, found: int) -> str:
    """The one sentence that refuses records of another schema version in `folder`."""
    return (
        f"{folder} holds records of schema version {found}, but this code reads schema version {SCHEMA_VERSION} "
        "(raw 8-bit LAB codes instead of a PNG); re-ingest the images with the current "
        "`python -m components.example_gen` into a new --output_dir."
    )


# ---------------------------------------------------------------- tensorflow-metadata


def tfmd_schema(stored_size: int | None = None):
    """The feature definitions as a tensorflow-metadata Schema proto (for TFDV/TFX)."""
    from tensorflow_metadata.proto.v0 import schema_pb2

    schema = schema_pb2.Schema()
    types = {"bytes": schema_pb2.BYTES, "int64": schema_pb2.INT, "float": schema_pb2.FLOAT}
    for spec in FEATURES:
        feature = schema.feature.add(name=spec.name, type=types[spec.dtype])
        feature.presence.min_fraction = 1.0
        feature.presence.min_count = 1
        feature.value_count.min = 1
        feature.value_count.max = 1
        feature.annotation.comment.append(spec.description)
        if spec.encoding:
            feature.annotation.tag.append(f"encoding:{spec.encoding}")
        if spec.dtype == "int64":
            low, high = int(spec.min_value), int(spec.max_value)
            if stored_size is not None and spec.name in (HEIGHT_KEY, WIDTH_KEY):
                low = high = stored_size
            feature.int_domain.min, feature.int_domain.max = low, high
        elif spec.dtype == "float" and spec.min_value is not None:
            feature.float_domain.min, feature.float_domain.max = spec.min_value, spec.max_value
    schema.default_environment.append("TRAINING")
    schema.annotation.tag.append(f"colorization_schema_version:{SCHEMA_VERSION}")
    return schema


def schema_pbtxt(stored_size: int | None = None) -> str:
    """The tensorflow-metadata schema in text format, as TFDV and TFX write schema.pbtxt."""
    from google.protobuf import text_format

    return text_format.MessageToString(tfmd_schema(stored_size))
