"""Loading the colorizers the evaluator compares: a .keras file or a serving SavedModel's `predict_ab`, as Predictors."""

from __future__ import annotations

import dataclasses
import posixpath
from typing import Callable

import tensorflow as tf

from components import colorbins  # noqa: F401 - registers the classification head's layer for load_model
from components.evaluator.errors import EvaluationError
from schemas import AB_SCALE
from schemas.serving import PREDICT_AB_SIGNATURE


@dataclasses.dataclass
class Predictor:
    """A colorizer as one callable: L (0..100) [B, S, S, 1] -> ab in LAB units [B, S, S, 2].

    `size` is the side the model was built for (None: any); inputs of
    another side are resized to it and the ab resized back.
    """

    path: str
    size: int | None
    predict: Callable[[tf.Tensor], tf.Tensor]
    keep_alive: object = None  # a loaded SavedModel's signatures die with the object they came from

    def __call__(self, l) -> tf.Tensor:
        l = tf.convert_to_tensor(l, tf.float32)
        height, width = int(l.shape[1]), int(l.shape[2])
        if self.size is None or (height, width) == (self.size, self.size):
            return self.predict(l)
        small = tf.image.resize(l, [self.size, self.size], method="bilinear", antialias=True)
        return tf.image.resize(self.predict(small), [height, width], method="bilinear")


def _square_side(shape, path: str, what: str, channels: int) -> int | None:
    """The side of an image batch shape [B, S, S, channels]; raises EvaluationError for any other shape."""
    dims = [None if d is None else int(d) for d in shape]
    if len(dims) != 4 or dims[3] != channels or dims[1] != dims[2]:
        raise EvaluationError(
            f"{path} has {what} shape {tuple(dims)}, not [batch, S, S, {channels}]; "
            "pass a colorization model from components.trainer or components.export."
        )
    return dims[1]


def _load_keras(path: str) -> Predictor:
    import keras

    try:
        model = keras.models.load_model(path, compile=False)
    except Exception as e:  # Keras raises ValueError, OSError, KeyError, zipfile errors... for a bad file
        reason = " ".join(str(e).split())[:200] or type(e).__name__
        raise EvaluationError(
            f"{path} could not be loaded as a Keras model ({reason}); pass the trainer's model.keras."
        ) from None
    if len(model.inputs) != 1 or len(model.outputs) != 1:
        raise EvaluationError(
            f"{path} takes {len(model.inputs)} inputs and gives {len(model.outputs)} outputs, not L -> ab; "
            "pass an end-to-end model (the trainer's model.keras)."
        )
    size = _square_side(model.inputs[0].shape, path, "input", 1)
    _square_side(model.outputs[0].shape, path, "output", 2)
    predict = tf.function(
        lambda l: tf.cast(model(l, training=False), tf.float32) * AB_SCALE, reduce_retracing=True
    )
    return Predictor(path, size, predict, keep_alive=model)


def _find_saved_model(path: str) -> str | None:
    """`path` itself if it is a SavedModel dir, else the highest integer version under it; None when neither."""
    if tf.io.gfile.exists(posixpath.join(path, "saved_model.pb")):
        return path
    versions = sorted(
        (int(name.rstrip("/")) for name in tf.io.gfile.listdir(path) if name.rstrip("/").isdigit()), reverse=True
    )
    for version in versions:
        candidate = posixpath.join(path, str(version))
        if tf.io.gfile.exists(posixpath.join(candidate, "saved_model.pb")):
            return candidate
    return None


def has_model(path: str) -> bool:
    """Whether `path` holds something to load: a file, a SavedModel dir, or a model base path with a version."""
    if not tf.io.gfile.exists(path):
        return False
    return not tf.io.gfile.isdir(path) or _find_saved_model(path) is not None


def _saved_model_dir(path: str) -> str:
    """A SavedModel version dir: `path` itself, or the highest integer version under a model base path."""
    found = _find_saved_model(path)
    if found is not None:
        return found
    raise EvaluationError(
        f"{path} is neither a SavedModel dir (no saved_model.pb) nor a model base path with version dirs; "
        "pass a .keras file or a serving version dir such as serving/colorizer/1."
    )


def _load_saved_model(path: str) -> Predictor:
    version_dir = _saved_model_dir(path)
    try:
        loaded = tf.saved_model.load(version_dir)
    except Exception as e:  # a broken SavedModel surfaces as OSError, ValueError or an OpError
        reason = " ".join(str(e).split())[:200] or type(e).__name__
        raise EvaluationError(f"{version_dir} could not be loaded as a SavedModel ({reason}); re-export it.") from None
    signature = loaded.signatures.get(PREDICT_AB_SIGNATURE)
    if signature is None:
        raise EvaluationError(
            f"{version_dir} has no {PREDICT_AB_SIGNATURE!r} signature (it has {sorted(loaded.signatures)}); "
            "pass a model exported by components.export or a .keras file."
        )
    inputs = signature.structured_input_signature[1]
    outputs = signature.structured_outputs
    if len(inputs) != 1 or len(outputs) != 1:
        raise EvaluationError(
            f"{version_dir}'s {PREDICT_AB_SIGNATURE} signature maps {sorted(inputs)} to {sorted(outputs)}, "
            "not one L input to one ab output; re-export it with components.export."
        )
    (input_name, spec), = inputs.items()
    (output_name, output_spec), = outputs.items()
    size = _square_side(spec.shape, version_dir, f"{PREDICT_AB_SIGNATURE} input", 1)
    _square_side(output_spec.shape, version_dir, f"{PREDICT_AB_SIGNATURE} output", 2)

    def predict(l):
        return signature(**{input_name: l})[output_name]

    return Predictor(version_dir, size, predict, keep_alive=loaded)


def load_predictor(path: str) -> Predictor:
    """A .keras file or a SavedModel (version dir or model base path) as a Predictor; raises EvaluationError."""
    if not tf.io.gfile.exists(path):
        raise EvaluationError(f"model {path} does not exist; pass the trainer's model.keras or a serving version dir.")
    if tf.io.gfile.isdir(path):
        return _load_saved_model(path)
    return _load_keras(path)


def gray_ab(l) -> tf.Tensor:
    """The gray baseline's prediction: a = b = 0 for every pixel of an L batch."""
    return tf.zeros(tf.concat([tf.shape(l)[:-1], [2]], 0), tf.float32)

