"""export: the serving SavedModel that TF Serving and saved_model_cli load, preprocessing in the graph.

Signatures (contracts in ../shared/DESIGN.md):
- `serving_default`: `image_bytes` (DT_STRING [-1]: encoded JPEG/PNG/GIF/BMP,
  any size, colour or gray) -> `colorized_bytes` (DT_STRING [-1]: PNG at the
  input's own height x width). The image is decoded (gray becomes RGB, a GIF
  gives its first frame); the model sees its L resized to its training
  size S, and its ab is resized back to H x W and joined with the
  full-resolution L. The full-resolution work runs in strips of rows
  (components.color), so an image costs about 8-13 bytes per pixel beyond
  the model's memory (measured at 49 and 12 megapixels), not float copies
  of itself.
- `predict_ab`: `l` (DT_FLOAT [-1, S, S, 1], L in 0..100) -> `ab`
  (DT_FLOAT [-1, S, S, 2], LAB units), for evaluators comparing models.

Bad requests fail with tf.errors.InvalidArgumentError and one sentence
naming the image's place in the batch: empty bytes, not a JPEG/PNG/GIF/BMP,
or more pixels than `max_pixels` (read from the image header before any
pixel is decoded); a caller sees "assertion failed: [image_bytes[1] is
empty; ...]". A file that starts like an image but is corrupt gets the
decoder's own message (e.g. "Invalid JPEG data"). Only stock
TensorFlow ops are in the graph (tensorflow-io's colour ops are plain TF
Python), so stock `tensorflow_model_server` and `saved_model_cli` run it.

    python -m components.export --model out/train/model.keras --export_dir /tmp/colorizer/1
    saved_model_cli show --dir /tmp/colorizer/1 --all
    python -c "import numpy as np; np.save('/tmp/req.npy', np.array([open('photo.jpg','rb').read()], object))"
    saved_model_cli run --dir /tmp/colorizer/1 --tag_set serve --signature_def serving_default \\
        --inputs image_bytes=/tmp/req.npy --outdir /tmp/out   # /tmp/out/colorized_bytes.npy holds the PNGs
"""

from __future__ import annotations

import argparse
import io
import os
import posixpath
import sys
from typing import TYPE_CHECKING, Sequence

import numpy as np
import tensorflow as tf

from components import colorbins  # noqa: F401 - registers the classification head's layer for load_model
from components import color
from schemas import AB_SCALE
from schemas.serving import (  # noqa: F401  the serving contract, re-exported: export.SERVING_SIGNATURE, ...
    AB_OUTPUT,
    COLORIZED_BYTES,
    IMAGE_BYTES,
    L_INPUT,
    MAX_PIXELS,
    PREDICT_AB_SIGNATURE,
    SERVING_SIGNATURE,
    WARMUP_FILE,
)

if TYPE_CHECKING:
    import keras

PNG_COMPRESSION = 1
"""zlib level of the returned PNGs: at 1024x768, level 1 encodes in 58 ms against 224 ms at the default (6),
for files 8% larger; the encoding was a third of a request's time."""

_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
_HEADER_PAD = b"\0" * 32
_FORMATS = "JPEG, PNG, GIF or BMP"


class ExportError(Exception):
    """The model or export dir the user gave cannot be exported; one sentence naming it and the fix."""


# ---------------------------------------------------------------- graph pieces


def _check(condition, message):
    """An op raising InvalidArgumentError with exactly `message` (a string tensor) when `condition` is false."""
    return tf.debugging.Assert(condition, [message], name="check")


def _header_size(data):
    """(width, height) int64 read from a JPEG/PNG/GIF/BMP header without decoding pixels; (0, 0) if unknown."""
    padded = tf.strings.join([data, _HEADER_PAD])

    def field(offset: int, dtype, little_endian: bool = True):
        width_height = tf.io.decode_raw(
            tf.strings.substr(padded, offset, 2 * dtype.size), dtype, little_endian=little_endian
        )
        return tf.abs(tf.cast(tf.reshape(width_height, [2]), tf.int64))

    def jpeg():
        height_width_channels = tf.image.extract_jpeg_shape(data, output_type=tf.int64)
        return tf.stack([height_width_channels[1], height_width_channels[0]])

    return tf.case(
        [
            (tf.io.is_jpeg(data), jpeg),
            (tf.equal(tf.strings.substr(padded, 0, 8), _PNG_MAGIC), lambda: field(16, tf.int32, False)),
            (tf.equal(tf.strings.substr(padded, 0, 3), b"GIF"), lambda: field(6, tf.uint16)),
            (tf.equal(tf.strings.substr(padded, 0, 2), b"BM"), lambda: field(18, tf.int32)),
        ],
        default=lambda: tf.zeros([2], tf.int64),
        exclusive=False,
    )


def _check_pixels(width, height, index, max_pixels: int):
    pixels = width * height
    return _check(
        pixels <= max_pixels,
        tf.strings.format(
            "image_bytes[{}] is {}x{} = {} pixels, over the limit of {}; send a smaller image.",
            (index, width, height, pixels, max_pixels),
        ),
    )


def decode_rgb(data, index, max_pixels: int = MAX_PIXELS):
    """Encoded JPEG/PNG/GIF/BMP -> uint8 RGB [H, W, 3]; gray becomes RGB, a GIF gives its first frame.

    The size is checked from the header first, so an oversized image never
    allocates its pixels. `index` (its place in the request) names it in errors.
    """
    not_empty = _check(
        tf.strings.length(data) > 0,
        tf.strings.format("image_bytes[{}] is empty; send the bytes of a " + _FORMATS + " file.", index),
    )
    with tf.control_dependencies([not_empty]):
        width_height = _header_size(data)
    is_image = _check(
        tf.reduce_all(width_height > 0),
        tf.strings.format("image_bytes[{}] is not a " + _FORMATS + " image; send the bytes of an image file.", index),
    )
    with tf.control_dependencies([is_image]):
        small_enough = _check_pixels(width_height[0], width_height[1], index, max_pixels)
    with tf.control_dependencies([small_enough]):
        rgb = tf.io.decode_image(data, channels=3, dtype=tf.uint8, expand_animations=False)
    shape = tf.shape(rgb, out_type=tf.int64)
    with tf.control_dependencies([_check_pixels(shape[1], shape[0], index, max_pixels)]):
        return tf.ensure_shape(tf.identity(rgb), [None, None, 3])


class ServingModule(tf.Module):
    """The Keras colorizer wrapped with serving's decode/encode; saved as one SavedModel."""

    def __init__(self, model: keras.Model, max_pixels: int = MAX_PIXELS):
        super().__init__(name="colorizer")
        # Keras 3 variables export as a second copy of each weight, and the C++/TF1 loaders (TF Serving,
        # saved_model_cli run) restore that copy while the graph reads the original ("Could not find variable",
        # keras-team/keras#19274). Track the underlying tf.Variables instead, and not the Keras model.
        object.__setattr__(self, "model", model)
        self.model_variables = [getattr(v, "value", v) for v in model.variables]
        self.image_size = _image_size(model)
        self.max_pixels = int(max_pixels)
        size = self.image_size
        self.predict_ab = tf.function(
            self._predict_ab, input_signature=[tf.TensorSpec([None, size, size, 1], tf.float32, name=L_INPUT)]
        )
        self.serve = tf.function(
            self._serve, input_signature=[tf.TensorSpec([None], tf.string, name=IMAGE_BYTES)]
        )

    def _ab(self, l):
        """L [B, S, S, 1] 0..100 -> ab [B, S, S, 2] in LAB units; an empty batch never reaches the model.

        (TF 2.16's fused convolutions fail on a batch of 0 in graph mode.)
        """
        size = self.image_size
        return tf.cond(
            tf.shape(l)[0] > 0,
            lambda: tf.ensure_shape(tf.cast(self.model(l, training=False), tf.float32), [None, size, size, 2])
            * AB_SCALE,
            lambda: tf.zeros([0, size, size, 2], tf.float32),
        )

    def _predict_ab(self, l):
        return {AB_OUTPUT: self._ab(l)}

    def _prepare(self, args):
        """One encoded image -> L at S x S for the model."""
        data, index = args
        return color.model_input(decode_rgb(data, index, self.max_pixels), self.image_size)

    def _compose(self, args):
        """The encoded image again + the model's ab at S x S -> PNG of the colorized image at the input's size.

        The image is decoded a second time rather than kept from _prepare: its full-resolution pixels then
        exist only while one image is being composed, not for the whole batch during the model call.
        """
        data, ab = args
        with tf.control_dependencies([ab]):  # after _prepare's checks: a bad image gets their sentence, not the decoder's
            rgb = tf.io.decode_image(data, channels=3, dtype=tf.uint8, expand_animations=False)
        return tf.io.encode_png(color.colorize_output(rgb, ab), compression=PNG_COMPRESSION)

    def _serve(self, image_bytes):
        index = tf.range(tf.size(image_bytes, out_type=tf.int64), dtype=tf.int64)
        l_small = tf.map_fn(
            self._prepare,
            (image_bytes, index),
            fn_output_signature=tf.TensorSpec([self.image_size, self.image_size, 1], tf.float32),
        )
        ab = self._ab(l_small)
        return {COLORIZED_BYTES: tf.map_fn(self._compose, (image_bytes, ab), fn_output_signature=tf.string)}


def _image_size(model: keras.Model) -> int:
    """The training side S of a model with input [None, S, S, 1] (L) and output [None, S, S, 2] (ab/128)."""
    try:
        inputs, outputs = list(model.inputs), list(model.outputs)
    except (AttributeError, ValueError, TypeError):
        raise ExportError(f"model {getattr(model, 'name', model)!r} has no defined inputs and outputs; export a "
                          "functional model from components.models or the trainer's model.keras.") from None
    shape = tuple(inputs[0].shape) if len(inputs) == 1 else None
    out = tuple(outputs[0].shape) if len(outputs) == 1 else None
    if shape is None or len(shape) != 4 or shape[3] != 1 or not shape[1] or shape[1] != shape[2] or out != (
        None, shape[1], shape[2], 2
    ):
        raise ExportError(
            f"model {model.name!r} takes {[tuple(i.shape) for i in inputs]} and returns "
            f"{[tuple(o.shape) for o in outputs]}; export needs one L input [None, S, S, 1] and an ab output "
            "[None, S, S, 2] (a model from components.models or the trainer's model.keras)."
        )
    return int(shape[1])


# ---------------------------------------------------------------- sample requests


def sample_images() -> list[bytes]:
    """A few real encoded images for warmup and validation: colour JPEG 250x250, gray PNG 97x61, colour PNG."""
    from PIL import Image

    from components.synthetic import render_scene

    rng = np.random.default_rng(20240611)
    images = []
    for pixels, mode, fmt in (
        (render_scene(rng, 250, 250), "RGB", "JPEG"),
        (render_scene(rng, 61, 97), "L", "PNG"),
        (render_scene(rng, 120, 80), "RGB", "PNG"),
    ):
        buf = io.BytesIO()
        Image.fromarray(pixels).convert(mode).save(buf, format=fmt)
        images.append(buf.getvalue())
    return images


def warmup_request(data: bytes):
    """A PredictRequest for `serving_default` holding one encoded image."""
    from tensorflow_serving.apis import predict_pb2

    request = predict_pb2.PredictRequest()
    request.model_spec.signature_name = SERVING_SIGNATURE
    request.inputs[IMAGE_BYTES].CopyFrom(tf.make_tensor_proto([data], dtype=tf.string, shape=[1]))
    return request


def write_warmup(export_dir: str, images: Sequence[bytes]) -> str:
    """Write assets.extra/tf_serving_warmup_requests: one PredictionLog per image; returns its path."""
    from tensorflow_serving.apis import prediction_log_pb2

    path = posixpath.join(export_dir, WARMUP_FILE)
    tf.io.gfile.makedirs(posixpath.dirname(path))
    with tf.io.TFRecordWriter(path) as writer:
        for data in images:
            log = prediction_log_pb2.PredictionLog(
                predict_log=prediction_log_pb2.PredictLog(request=warmup_request(data))
            )
            writer.write(log.SerializeToString())
    return path


def read_warmup(export_dir: str) -> list:
    """The PredictionLogs of a version dir's warmup file (an empty list when it has none)."""
    from tensorflow_serving.apis import prediction_log_pb2

    path = posixpath.join(export_dir, WARMUP_FILE)
    if not tf.io.gfile.exists(path):
        return []
    return [prediction_log_pb2.PredictionLog.FromString(r.numpy()) for r in tf.data.TFRecordDataset(path)]


# ---------------------------------------------------------------- export


def load_keras_model(path: str) -> keras.Model:
    """A trainer's .keras file, uncompiled; ExportError naming the path when it cannot be read."""
    import keras

    if not tf.io.gfile.exists(path):
        raise ExportError(f"model file {path} does not exist; pass the trainer's OUT/model.keras.")
    try:
        return keras.models.load_model(path, compile=False)
    except (OSError, ValueError, TypeError, KeyError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ExportError(f"model file {path} is not a readable Keras model ({first}); pass the trainer's "
                          "OUT/model.keras.") from None


def export_serving_model(
    model: keras.Model | str, export_dir: str, *, max_pixels: int = MAX_PIXELS, warmup: Sequence[bytes] = ()
) -> None:
    """Write the serving SavedModel (both signatures) to `export_dir`, plus warmup requests from `warmup`.

    `model` is a Keras model (float32 "l" [None, S, S, 1] 0..100 -> ab/128)
    or the path of one saved as .keras. `export_dir` must not exist yet or be empty.
    """
    if isinstance(model, (str, os.PathLike)):
        model = load_keras_model(os.fspath(model))
    if not (isinstance(max_pixels, int) and max_pixels > 0):
        raise ExportError(f"max_pixels must be a positive integer, got {max_pixels!r}.")
    if tf.io.gfile.exists(export_dir) and tf.io.gfile.listdir(export_dir):
        raise ExportError(f"export dir {export_dir} is not empty; pass a new directory.")
    module = ServingModule(model, max_pixels)
    signatures = {
        SERVING_SIGNATURE: module.serve.get_concrete_function(),
        PREDICT_AB_SIGNATURE: module.predict_ab.get_concrete_function(),
    }
    tf.saved_model.save(module, export_dir, signatures=signatures)
    if warmup:
        write_warmup(export_dir, warmup)


# ---------------------------------------------------------------- CLI


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m components.export",
        description="Export a trained colorizer (.keras) as a serving SavedModel: serving_default takes encoded "
        "images and returns colorized PNGs at the input's size; predict_ab maps L to ab.",
    )
    p.add_argument("--model", required=True, help="the trainer's model.keras")
    p.add_argument("--export_dir", required=True, help="new directory for the SavedModel (local or gs://)")
    p.add_argument("--max_pixels", type=int, default=MAX_PIXELS,
                   help=f"largest image a request may send, in pixels (default {MAX_PIXELS:,})")
    p.add_argument("--no_warmup", action="store_true",
                   help="do not write assets.extra/tf_serving_warmup_requests (sample images)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Export; one sentence and exit 2 for a missing or unfit model or a non-empty export dir."""
    args = _parser().parse_args(argv)
    try:
        export_serving_model(args.model, args.export_dir, max_pixels=args.max_pixels,
                             warmup=() if args.no_warmup else sample_images())
    except ExportError as e:
        print(f"export: {e}", file=sys.stderr)
        return 2
    print(f"export: wrote the serving SavedModel to {args.export_dir}"
          + ("" if args.no_warmup else f" with warmup requests in {WARMUP_FILE}"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
