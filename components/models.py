"""The report's two colorization autoencoders: L (0..100) in, ab/128 (tanh) out.

Model 1 is a plain convolutional autoencoder. Model 2 fuses a frozen
ImageNet classifier's 1000 class probabilities into the bottleneck; unlike
the report's two-input version, its 299x299x3 backbone input is derived
inside the graph from the single L input, so both models take only "l" and
export to one SavedModel that runs end to end. With `fusion="spatial"`
Model 2 fuses two of the classifier's feature maps instead, resized to the
bottleneck's grid, so the decoder learns where things are, not only what the
picture holds (the pretrained-encoder idea of DeOldify's U-Net, kept to the
report's layout). With `fusion="unet"` the classifier's convolutional layers
run on the image at twice the crop's side and four of their feature maps join
the decoder at every scale (strides 16 and 32 at the bottleneck, 8 and 4 after
each upsampling), that U-Net itself.

Because the backbone is frozen, `build_model2_parts` also splits Model 2
into a `backbone` (L -> embedding; U-Net fusion adds two skip maps) and a `head` ({"l", "embedding"[, skips]} -> ab)
that shares every trainable layer with the end-to-end model: training the
head on precomputed embeddings trains the end-to-end model.

Both models come with one of two heads (`head`): "regression" (the report's:
a 3x3 tanh convolution to ab/128, trained with MSE or Huber) or
"classification" (Zhang, Isola & Efros 2016): a 1x1 convolution to logits over
the Q in-gamut ab bins of components.colorbins ("ab_logits"), decoded by the
annealed mean (colorbins.AnnealedMean, its temperature baked into the model)
to ab/128. Either way the last layer upsamples by 2 to the input's size, so the
saved model's contract (L in, ab/128 out) is the same. The classification
model trains through `logits_model(model)`, which shares its layers, with the
class-rebalanced cross-entropy against a colorbins.ColorPrior; `compile_model`
returns the model to fit.

Model 2's backbone weights follow one rule, `resolve_backbone_weights`, which
the trainer, the tuner and the embeddings job all use: "imagenet" is read from
the Keras cache (`$KERAS_HOME/models/` or `~/.keras/models/`) and, when it is
not there, fetched through Keras with a short network timeout, else refused
with `MissingWeightsError`; a .h5 path (local, or gs:// and other remote paths
TensorFlow can read) is loaded as given; "none" builds a random backbone.

    from components import models
    model = models.compile_model(models.build_model("model1", 224), loss="mse")

    model = models.build_model("model1", 224, head="classification")     # saved and served: L -> ab/128
    fitted = models.compile_model(model, head="classification", prior=colorbins.ColorPrior.load("prior.json"))
    fitted.fit(...)                                                      # L -> logits; trains `model`
"""

from __future__ import annotations

import dataclasses
import logging
import math
import numbers
import os
import posixpath
import socket
import tempfile
from typing import Callable, NamedTuple

import keras
from components import colorbins
from components.hparams import BACKBONES, FAMILIES, FUSIONS, HEADS, LOSSES
from components.settings import NONE
from schemas import AB_SCALE, EMBEDDING_SIZE

IMAGENET = "imagenet"
FETCH_TIMEOUT_S = 20.0
"""Seconds each network operation of fetching ImageNet weights may block (socket default timeout)."""
HUBER_DELTA = 0.1
"""In ab/128 units (about 13 ab): Keras's default 1.0 exceeds almost every error on ab/128, making it plain MSE/2."""
TEMPERATURE = 0.38
"""The classification head's annealed-mean temperature (the paper's): lower is more vivid but blotchier, 1 the mean."""
LOGITS_LAYER = "ab_logits"
"""The classification head's 1x1 convolution: logits over colorbins.in_gamut_centres() at half the input's side."""

_MODEL1_ENCODER = ((64, 3, 1), (128, 3, 2), (256, 3, 1), (256, 3, 2), (256, 3, 1), (256, 3, 2), (256, 4, 1),
                   (256, 3, 1), (256, 3, 1))
_MODEL2_ENCODER = ((64, 3, 2), (128, 3, 1), (128, 3, 2), (256, 3, 1), (256, 3, 2), (512, 3, 1), (512, 3, 1),
                   (256, 3, 1))
"""(filters, kernel, stride) of each encoder convolution, as the report lists them."""

_log = logging.getLogger(__name__)


class MissingWeightsError(Exception):
    """Backbone weights were asked for but are not on this machine; the message says how to get them."""


@dataclasses.dataclass(frozen=True)
class _Backbone:
    """A Keras application used as Model 2's frozen classifier, and where its ImageNet weights live."""

    size: int
    min_size: int
    """The smallest input side the convolutional layers take (U-Net fusion runs them at twice the crop's)."""
    application: Callable[..., keras.Model]
    weights_file: str
    weights_url: str
    spatial_layers: tuple[str, ...] = ()
    """The feature maps spatial fusion takes: one at stride 16, one at 32 (the last before pooling)."""
    unet_layers: tuple[str, ...] = ()
    """The feature maps U-Net fusion takes, at strides 4, 8, 16 and 32 of the backbone's input."""
    weights_hash: str | None = None
    """The file's hash as the Keras application checks it (None where Keras checks none)."""


_BACKBONES = {
    "inception_resnet_v2": _Backbone(
        size=299,
        min_size=75,
        application=keras.applications.InceptionResNetV2,
        weights_file="inception_resnet_v2_weights_tf_dim_ordering_tf_kernels.h5",
        weights_url="https://storage.googleapis.com/tensorflow/keras-applications/inception_resnet_v2/",
        spatial_layers=("mixed_6a", "conv_7b_ac"),
        unet_layers=("mixed_5b", "mixed_5b", "mixed_6a", "conv_7b_ac"),  # no named layer at stride 4
        weights_hash="e693bd0210a403b3192acc6073ad2e96",
    ),
    "mobilenet_v2": _Backbone(
        size=224,
        min_size=32,
        application=keras.applications.MobileNetV2,
        weights_file="mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224.h5",
        weights_url="https://storage.googleapis.com/tensorflow/keras-applications/mobilenet_v2/",
        spatial_layers=("block_13_expand_relu", "out_relu"),
        unet_layers=("block_3_expand_relu", "block_6_expand_relu", "block_13_expand_relu", "out_relu"),
    ),
}


class Model2Parts(NamedTuple):
    """Model 2 three ways; `head` holds all trainable layers, shared with `end_to_end`."""

    end_to_end: keras.Model
    backbone: keras.Model
    head: keras.Model


def _check_size_and_width(image_size: int, width: float) -> None:
    integer = isinstance(image_size, numbers.Integral) and not isinstance(image_size, bool)
    if not integer or image_size <= 0 or image_size % 8:
        raise ValueError(
            f"image_size must be a positive multiple of 8 (the models downsample by 8), got {image_size!r}."
        )
    if isinstance(width, bool) or not isinstance(width, numbers.Real) or not math.isfinite(width) or width <= 0:
        raise ValueError(f"width must be a positive number (1.0 is the report's model), got {width!r}.")


def _check_choice(what: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"Unknown {what} {value!r}; choose one of {', '.join(choices)}.")


def _conv(filters: int, width: float, name: str, kernel: int = 3, strides: int = 1) -> keras.layers.Conv2D:
    """A 'same'-padded relu convolution with `filters` scaled by `width`."""
    scaled = max(1, int(round(filters * width)))
    return keras.layers.Conv2D(scaled, kernel, strides=strides, padding="same", activation="relu", name=name)


def _check_head(head: str, temperature: float) -> None:
    _check_choice("head", head, HEADS)
    if isinstance(temperature, bool) or not isinstance(temperature, numbers.Real) or not temperature > 0:
        raise ValueError(f"temperature must be a positive number ({TEMPERATURE} is the paper's), got {temperature!r}.")


def _ab_output(x, head: str = "regression", temperature: float = TEMPERATURE):
    """The head at H/2, then the last Up2x, all float32 so mixed-precision models still emit float32 ab.

    regression: Conv2 3x3 tanh to ab/128 (the report's). classification: a 1x1 Conv to one logit per
    colorbins bin ("ab_logits"), then the annealed mean at `temperature` to ab/128.
    """
    if head == "classification":
        centres = colorbins.in_gamut_centres()
        x = keras.layers.Conv2D(len(centres), 1, dtype="float32", name=LOGITS_LAYER)(x)
        x = colorbins.AnnealedMean(centres, temperature, name="ab_annealed_mean")(x)
    else:
        x = keras.layers.Conv2D(2, 3, padding="same", activation="tanh", dtype="float32", name="ab_conv")(x)
    return keras.layers.UpSampling2D(2, dtype="float32", name="ab")(x)


def _l_input(image_size: int) -> keras.KerasTensor:
    return keras.Input(shape=(int(image_size), int(image_size), 1), name="l", dtype="float32")


def build_model1(
    image_size: int = 224, width: float = 1.0, head: str = "regression", temperature: float = TEMPERATURE
) -> keras.Model:
    """The report's Model 1 (4,756,770 trainable parameters at width 1.0 with the regression head)."""
    _check_size_and_width(image_size, width)
    _check_head(head, temperature)
    l = _l_input(image_size)
    x = l
    for i, (filters, kernel, strides) in enumerate(_MODEL1_ENCODER, start=1):
        x = _conv(filters, width, f"encoder_conv{i}", kernel, strides)(x)
    x = _conv(128, width, "decoder_conv1")(x)
    x = keras.layers.UpSampling2D(2, name="decoder_up1")(x)
    x = _conv(64, width, "decoder_conv2")(x)
    x = keras.layers.UpSampling2D(2, name="decoder_up2")(x)
    x = _conv(32, width, "decoder_conv3")(x)
    return keras.Model(l, _ab_output(x, head, temperature), name="model1")


def _weights_dir() -> str:
    """The Keras cache's models/ folder, resolved as Keras does but reading $KERAS_HOME now, not at import."""
    if "KERAS_HOME" in os.environ:
        home = os.environ["KERAS_HOME"]
    else:
        base = os.path.expanduser("~")
        home = os.path.join(base if os.access(base, os.W_OK) else "/tmp", ".keras")
    return os.path.join(os.path.expanduser(home), "models")


def backbone_weights_path(backbone: str) -> str:
    """Where the Keras cache keeps `backbone`'s ImageNet weights (the file may be absent)."""
    return os.path.join(_weights_dir(), _BACKBONES[backbone].weights_file)


def fetch_imagenet_weights(backbone: str) -> str:
    """Download `backbone`'s ImageNet weights into the Keras cache through Keras, from the URL the Keras
    application uses, each network operation limited to FETCH_TIMEOUT_S seconds; returns the file's path."""
    spec = _BACKBONES[backbone]
    folder = _weights_dir()
    os.makedirs(folder, exist_ok=True)  # else Keras falls back to /tmp/.keras for a cache dir that does not exist
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(FETCH_TIMEOUT_S)
    try:
        return keras.utils.get_file(
            spec.weights_file, spec.weights_url + spec.weights_file, file_hash=spec.weights_hash,
            cache_subdir=os.path.basename(folder), cache_dir=os.path.dirname(folder),
        )
    finally:
        socket.setdefaulttimeout(previous)


_remote_copies: dict[str, str] = {}


def _local_copy(path: str) -> str:
    """A remote weights file (gs://...) copied once per process to a local temp file Keras can open."""
    if path not in _remote_copies:
        import tensorflow as tf

        if not tf.io.gfile.exists(path):
            raise FileNotFoundError(f"Backbone weights file {path} does not exist; pass the path of a .h5 file.")
        local = os.path.join(tempfile.mkdtemp(prefix="backbone_weights_"), posixpath.basename(path))
        tf.io.gfile.copy(path, local, overwrite=True)
        _remote_copies[path] = local
    return _remote_copies[path]


def is_random(weights: str | os.PathLike | None) -> bool:
    """Whether `weights` asks for a random backbone: "none" (any case), or None from Python callers."""
    return weights is None or os.fspath(weights).strip().lower() == NONE


def resolve_backbone_weights(
    backbone: str, weights: str | os.PathLike | None = IMAGENET, *, allow_random_backbone: bool = False
) -> str | None:
    """The one backbone-weights rule: the local .h5 file to load for Model 2's `backbone`, or None (random).

    `weights` is "imagenet" (the Keras cache; when missing, fetched through
    Keras with a FETCH_TIMEOUT_S timeout, else MissingWeightsError), a .h5
    path (a remote one is copied locally first), or "none" (a random backbone).
    With `allow_random_backbone`, missing ImageNet weights give None (random)
    instead of MissingWeightsError. Raises ValueError for anything else and
    FileNotFoundError for a .h5 path that does not exist.
    """
    _check_choice("backbone", backbone, BACKBONES)
    if is_random(weights):
        return None
    spec = _BACKBONES[backbone]
    weights = os.fspath(weights).strip()
    if weights.lower() == IMAGENET:
        path = backbone_weights_path(backbone)
        if os.path.isfile(path):
            return path
        try:
            fetched = fetch_imagenet_weights(backbone)
            if os.path.isfile(fetched):
                return fetched
        except Exception as e:  # noqa: BLE001 - Keras raises plain Exception for a failed download
            _log.debug("fetching ImageNet weights for %s failed: %s", backbone, e)
        if allow_random_backbone:
            _log.warning("ImageNet weights for %s are missing and could not be downloaded; allow_random_backbone "
                         "builds a randomly initialised backbone.", backbone)
            return None
        raise MissingWeightsError(
            f"ImageNet weights for {backbone} are not in the Keras cache and could not be downloaded (offline?); "
            f"put {spec.weights_file} in {os.path.dirname(path)}/ or pass --backbone_weights PATH of a local .h5 copy."
        )
    if not weights.endswith((".h5", ".hdf5")):
        raise ValueError(f"Backbone weights must be imagenet, none or a .h5/.weights.h5 file, got {weights!r}.")
    if "://" in weights:
        return _local_copy(weights)
    if not os.path.isfile(weights):
        raise FileNotFoundError(
            f"Backbone weights file {weights} does not exist; pass the path of a local {spec.weights_file} "
            f"(or a .weights.h5 saved from the {backbone} classifier)."
        )
    return weights


def _frozen_classifier(backbone: str, weights: str | None) -> keras.Model:
    """The Keras application with its 1000-class top, weights loaded from disk only, frozen."""
    spec = _BACKBONES[backbone]
    path = resolve_backbone_weights(backbone, weights)
    net = spec.application(
        include_top=True, weights=None, input_shape=(spec.size, spec.size, 3), classes=EMBEDDING_SIZE
    )
    if path is not None:
        try:
            net.load_weights(path)
        except (ValueError, KeyError, OSError) as e:
            raise ValueError(f"Backbone weights file {path} does not fit the {backbone} classifier: {e}") from e
    net.trainable = False
    return net


def _gray_rgb(l, size: int):
    """L [S, S, 1] -> the applications' "tf"-preprocessed gray RGB at size x size: L/100 in [0, 1] mapped to
    [-1, 1], repeated to three channels."""
    x = keras.layers.Resizing(size, size, name="backbone_resize")(l)
    x = keras.layers.Rescaling(2.0 / 100.0, offset=-1.0, name="backbone_scale")(x)
    return keras.layers.Concatenate(name="backbone_gray_rgb")([x, x, x])


def _feature_extractor(backbone: str, classifier: keras.Model, size: int) -> keras.Model:
    """The frozen classifier's convolutional layers rebuilt for a size x size input, its weights copied layer by
    layer (the applications build the same layers in the same order with and without the top)."""
    net = _BACKBONES[backbone].application(include_top=False, weights=None, input_shape=(size, size, 3))
    for layer, source in zip(net.layers, classifier.layers):
        if layer.weights:
            layer.set_weights(source.get_weights())
    net.trainable = False
    return net


def _resized(tensor, cells: int, name: str):
    return tensor if tuple(tensor.shape[1:3]) == (cells, cells) else keras.layers.Resizing(cells, cells, name=name)(
        tensor)


def _build_backbone(image_size: int, backbone: str, weights: str | None, fusion: str = "global") -> keras.Model:
    """L [S, S, 1] -> what Model 2 fuses, from the frozen classifier, preprocessed in the graph.

    global (the report's): the 1000 class probabilities. spatial: the classifier's `spatial_layers` feature
    maps, each resized (bilinear) to the bottleneck's S/8 x S/8 grid and concatenated: where the sky, the
    grass and the faces are, not only that there are some. unet: the classifier's convolutional layers run on
    the image at 2S (no 224 or 299 upsampling, so a third of the cost at S = 64), its `unet_layers` feeding
    the decoder at every scale, as the pretrained encoder of a U-Net: {"embedding": strides 16 and 32 at S/8,
    "skip_s4": stride 8 at S/4, "skip_s2": stride 4 at S/2}.
    """
    spec = _BACKBONES[backbone]
    l = _l_input(image_size)
    cells = int(image_size) // 8
    classifier = _frozen_classifier(backbone, weights)
    if fusion == "unet":
        size = max(2 * int(image_size), spec.min_size)
        features = _feature_extractor(backbone, classifier, size)
        maps = keras.Model(features.inputs, [features.get_layer(name).output for name in spec.unet_layers],
                           name=f"{backbone}_unet_features")(_gray_rgb(l, size))
        bottleneck = [_resized(m, cells, f"backbone_features{i}_resize") for i, m in enumerate(maps[2:], start=1)]
        outputs = {
            "embedding": keras.layers.Concatenate(name="backbone_features")(bottleneck),
            "skip_s4": _resized(maps[1], 2 * cells, "backbone_skip_s4_resize"),
            "skip_s2": _resized(maps[0], 4 * cells, "backbone_skip_s2_resize"),
        }
        return keras.Model(l, outputs, name="model2_backbone")
    x = _gray_rgb(l, spec.size)
    if fusion == "global":
        return keras.Model(l, classifier(x), name="model2_backbone")
    features = keras.Model(
        classifier.inputs, [classifier.get_layer(name).output for name in spec.spatial_layers],
        name=f"{backbone}_features",
    )
    maps = [_resized(m, cells, f"backbone_features{i}_resize") for i, m in enumerate(features(x), start=1)]
    return keras.Model(l, keras.layers.Concatenate(name="backbone_features")(maps), name="model2_backbone")


def _feature_shapes(backbone_model: keras.Model) -> dict[str, tuple[int, ...]]:
    """What the backbone gives, by the head's input name: {"embedding": shape} or U-Net fusion's three maps."""
    out = backbone_model.output
    if isinstance(out, dict):
        return {name: tuple(t.shape[1:]) for name, t in out.items()}
    return {"embedding": tuple(out.shape[1:])}


def _head_inputs(l, backbone_output) -> dict:
    return {"l": l, **backbone_output} if isinstance(backbone_output, dict) else {"l": l, "embedding": backbone_output}


def _build_head(
    image_size: int, width: float, head: str = "regression", temperature: float = TEMPERATURE,
    features: dict[str, tuple[int, ...]] | tuple[int, ...] = (EMBEDDING_SIZE,),
) -> keras.Model:
    """{"l": L, "embedding": what the backbone gives[, "skip_s4", "skip_s2"]} -> ab/128: every trainable layer of
    Model 2.

    `features` is the backbone output's shape (or shapes by name): (1000,) probabilities are repeated over the
    S/8 x S/8 grid (the report's fusion); a (S/8, S/8, C) feature map is concatenated as it is; U-Net fusion's
    skip maps are concatenated after the first and second upsampling.
    """
    shapes = dict(features) if isinstance(features, dict) else {"embedding": tuple(features)}
    l = _l_input(image_size)
    inputs = {"l": l, **{name: keras.Input(shape=shape, name=name, dtype="float32") for name, shape in shapes.items()}}
    embedding = inputs["embedding"]
    x = l
    for i, (filters, kernel, strides) in enumerate(_MODEL2_ENCODER, start=1):
        x = _conv(filters, width, f"encoder_conv{i}", kernel, strides)(x)
    cells = int(image_size) // 8
    if len(shapes["embedding"]) == 1:
        fused = keras.layers.RepeatVector(cells * cells, name="fusion_repeat")(embedding)
        fused = keras.layers.Reshape((cells, cells, shapes["embedding"][0]), name="fusion_reshape")(fused)
    else:
        fused = embedding
    x = keras.layers.Concatenate(name="fusion_concat")([x, fused])
    x = _conv(256, width, "fusion_conv", kernel=1)(x)
    x = _conv(256, width, "decoder_conv1")(x)
    x = keras.layers.UpSampling2D(2, name="decoder_up1")(x)
    if "skip_s4" in inputs:
        x = keras.layers.Concatenate(name="skip_s4_concat")([x, inputs["skip_s4"]])
    x = _conv(128, width, "decoder_conv2")(x)
    x = keras.layers.UpSampling2D(2, name="decoder_up2")(x)
    if "skip_s2" in inputs:
        x = keras.layers.Concatenate(name="skip_s2_concat")([x, inputs["skip_s2"]])
    x = _conv(32, width, "decoder_conv3")(x)
    x = _conv(16, width, "decoder_conv4")(x)
    return keras.Model(inputs, _ab_output(x, head, temperature), name="model2_head")


def build_model2_parts(
    image_size: int = 224, width: float = 1.0, backbone: str = "inception_resnet_v2", weights: str | None = None,
    head: str = "regression", temperature: float = TEMPERATURE, fusion: str = "global",
) -> Model2Parts:
    """The report's Model 2 (7,075,922 trainable parameters at 224, regression head, global fusion) and its
    backbone/head split.

    `weights`: as resolve_backbone_weights takes it: "none" or None (random
    backbone: not the report's model, a warning is logged), "imagenet" (the
    Keras cache, fetched when missing) or a .h5 path. `fusion`: global (the
    report's class probabilities), spatial (feature maps at the bottleneck) or
    unet (feature maps at every decoder scale); see _build_backbone.
    """
    _check_size_and_width(image_size, width)
    _check_choice("backbone", backbone, BACKBONES)
    _check_head(head, temperature)
    _check_choice("fusion", fusion, FUSIONS)
    if is_random(weights):
        _log.warning(
            "Model 2 is built with a randomly initialised %s: its embeddings carry no ImageNet meaning, "
            "so this is not the report's Model 2.", backbone,
        )
    backbone_model = _build_backbone(image_size, backbone, weights, fusion)
    head_model = _build_head(image_size, width, head, temperature, _feature_shapes(backbone_model))
    l = _l_input(image_size)
    ab = head_model(_head_inputs(l, backbone_model(l)))
    return Model2Parts(keras.Model(l, ab, name="model2"), backbone_model, head_model)


def build_model2(
    image_size: int = 224, width: float = 1.0, backbone: str = "inception_resnet_v2", weights: str | None = None,
    head: str = "regression", temperature: float = TEMPERATURE, fusion: str = "global",
) -> keras.Model:
    """Model 2 end to end: L in, ab/128 out, the backbone input derived in the graph."""
    return build_model2_parts(image_size, width, backbone, weights, head, temperature, fusion).end_to_end


def build_model(
    family: str, image_size: int, *, width: float = 1.0, backbone: str = "inception_resnet_v2",
    weights: str | None = None, head: str = "regression", temperature: float = TEMPERATURE, fusion: str = "global",
) -> keras.Model:
    """One entry point for the trainer and tuner; `backbone`, `weights` and `fusion` only matter to model2,
    `temperature` (the annealed mean's, saved in the model) only to the classification head."""
    _check_choice("model family", family, FAMILIES)
    if family == "model1":
        return build_model1(image_size, width, head, temperature)
    return build_model2(image_size, width, backbone, weights, head, temperature, fusion)


# ---------------------------------------------------------------- the classification head


def _annealed_mean_layer(model: keras.Model) -> colorbins.AnnealedMean | None:
    """The model's AnnealedMean layer, looking inside nested models (Model 2's head); None for regression."""
    for layer in model.layers:
        if isinstance(layer, colorbins.AnnealedMean):
            return layer
        if isinstance(layer, keras.Model):
            found = _annealed_mean_layer(layer)
            if found is not None:
                return found
    return None


def head_of(model: keras.Model) -> str:
    """ "classification" when the model decodes ab bins with an annealed mean (nested models included), else
    "regression"; works on a model loaded from .keras too."""
    return "regression" if _annealed_mean_layer(model) is None else "classification"


def centres_of(model: keras.Model):
    """The classification model's bin centres [Q, 2] (LAB units), from its AnnealedMean layer."""
    layer = _annealed_mean_layer(model)
    if layer is None:
        raise ValueError(f"Model {model.name} has the regression head; it has no colour bins.")
    return layer.centres


def logits_model(model: keras.Model) -> keras.Model:
    """The same inputs to the "ab_logits" tensor [B, S/2, S/2, Q] (float32): what the classification head trains.

    It is built from `model`'s own layers, so fitting it trains `model` (and its saved, end-to-end form). For
    Model 2 end to end (backbone and head nested) the head's logits are wired to the backbone's embedding of the
    same L input.
    """
    names = [layer.name for layer in model.layers]
    if LOGITS_LAYER in names:
        return keras.Model(model.inputs, model.get_layer(LOGITS_LAYER).output, name=f"{model.name}_logits")
    nested = [layer for layer in model.layers if isinstance(layer, keras.Model)]
    heads = [layer for layer in nested if head_of(layer) == "classification"]
    if not heads:
        raise ValueError(f"Model {model.name} has the regression head; build it with head='classification'.")
    head_logits = logits_model(heads[0])
    backbones = [layer for layer in nested if layer is not heads[0]]
    if len(backbones) != 1 or len(model.inputs) != 1 or len(head_logits.inputs) < 2:
        raise ValueError(f"Cannot find the logits of model {model.name}; build it with components.models.build_model.")
    l = model.inputs[0]
    return keras.Model(l, head_logits(_head_inputs(l, backbones[0](l))), name=f"{model.name}_logits")


@keras.saving.register_keras_serializable(package="colorization")
class DecodedMeanAbsoluteError(keras.metrics.MeanMetricWrapper):
    """Keras's mean absolute error on ab/128, for a model that outputs logits: the logits are decoded by the
    annealed mean and upsampled (nearest, as the model's last Up2x) to the target's size first, so the number is
    the one "mae" gives for the end-to-end model and compares the two heads (the tuner's val_mae)."""

    def __init__(self, centres=None, temperature: float = TEMPERATURE, name: str = "mae", dtype=None):
        self.centres = colorbins._centres(centres)
        self.temperature = float(temperature)
        super().__init__(fn=self._decoded_error, name=name, dtype=dtype)

    def _decoded_error(self, y_true, logits):
        ab = colorbins.annealed_mean(logits, self.centres, self.temperature) / AB_SCALE
        factor = keras.ops.shape(y_true)[1] // keras.ops.shape(ab)[1]
        ab = keras.ops.repeat(keras.ops.repeat(ab, factor, axis=1), factor, axis=2)
        return keras.losses.mean_absolute_error(y_true, ab)

    def get_config(self):
        return {"name": self.name, "dtype": self.dtype, "centres": self.centres.tolist(),
                "temperature": self.temperature}


def compile_model(
    model: keras.Model, *, learning_rate: float = 1e-3, loss: str = "mse", head: str = "regression",
    prior: colorbins.ColorPrior | None = None,
) -> keras.Model:
    """Compile for training and return the model to fit.

    regression: `model` itself, with Adam and MSE (the report's) or Huber on ab/128, mean absolute error
    reported alongside as "mae". classification: `logits_model(model)` (which shares `model`'s layers) with Adam
    and colorbins.RebalancedCrossEntropy weighted by `prior` (the statistics stage's), "mae" being the same
    error of the decoded ab; `loss` is ignored. `head` must be the model's own.
    """
    _check_choice("head", head, HEADS)
    _check_choice("loss", loss, LOSSES)
    if not learning_rate > 0:
        raise ValueError(f"learning_rate must be positive, got {learning_rate!r}.")
    if head_of(model) != head:
        raise ValueError(f"Model {model.name} has the {head_of(model)} head, not the {head} head compile_model was "
                         "asked for; build it with the same head.")
    optimizer = keras.optimizers.Adam(learning_rate=learning_rate)
    if head == "classification":
        if prior is None:
            raise ValueError("The classification head trains with the class-rebalanced cross-entropy, which needs "
                             "the colour prior: pass prior=colorbins.ColorPrior.load(path to the statistics stage's "
                             "prior.json).")
        layer = _annealed_mean_layer(model)
        prior.check_compatible(layer.centres)
        fitted = logits_model(model)
        fitted.compile(
            optimizer=optimizer,
            loss=colorbins.RebalancedCrossEntropy(layer.centres, prior.weights),
            metrics=[DecodedMeanAbsoluteError(layer.centres, layer.temperature, name="mae")],
        )
        return fitted
    loss_fn = keras.losses.MeanSquaredError() if loss == "mse" else keras.losses.Huber(delta=HUBER_DELTA)
    model.compile(
        optimizer=optimizer,
        loss=loss_fn,
        metrics=[keras.metrics.MeanAbsoluteError(name="mae")],
    )
    return model


def build_optimizer(model: keras.Model) -> None:
    """Create a compiled model's optimizer slots before its first fit.

    Outside a distribution strategy, and under the default one, Keras creates them inside the first traced
    train step, and a step that creates variables is traced twice: the first epoch (each tuner trial's) would
    compile the step twice. compile_model leaves them out, as Keras does: a model compiled only to be saved (the
    trainer's export) would carry them, zeroed, at twice its weights' size.
    """
    model.optimizer.build(model.trainable_variables)


def trainable_parameters(model: keras.Model) -> int:
    """The count the report quotes: trainable weights only (a frozen backbone adds 0)."""
    return int(sum(math.prod(w.shape) for w in model.trainable_weights))
