"""Hyperparameters: the documented defaults and the tuner's search space, defined once.

The trainer uses DEFAULTS (the report's settings) unless given a best
hyperparameters JSON written by the tuner; the tuner searches SEARCH_SPACE.
The `loss` (mse or huber) is the regression head's: the classification head
(Zhang et al. 2016) always trains with the class-rebalanced cross-entropy, so
the tuner searches `loss` only for regression trials.
"""

from __future__ import annotations

import json
from typing import Any

FAMILIES = ("model1", "model2")
BACKBONES = ("inception_resnet_v2", "mobilenet_v2")
LOSSES = ("mse", "huber")
HEADS = ("regression", "classification")
FUSIONS = ("global", "spatial", "unet")
"""The model families, Model 2's backbones, the regression head's losses, the output heads (regression: tanh
ab; classification: logits over colorbins' ab bins decoded by the annealed mean) and what Model 2 fuses (global:
the classifier's 1000 class probabilities, the report's; spatial: two of its feature maps, resized to the
bottleneck; unet: four of its feature maps, run at twice the crop's side, joining the decoder at every scale);
components.models builds them; here so a config can name its choices without importing Keras."""

# The report: Model 1, Adam at Keras's default rate, MSE, batch 48.
DEFAULTS: dict[str, Any] = {
    "family": "model1",
    "width": 1.0,
    "backbone": "inception_resnet_v2",
    "loss": "mse",
    "learning_rate": 1e-3,
    "batch_size": 48,
    "head": "regression",
    "fusion": "global",
}

# name -> (kind, choices or (min, max, sampling)); read by define_search_space.
SEARCH_SPACE: dict[str, tuple] = {
    "family": ("choice", FAMILIES),
    "width": ("choice", (0.5, 1.0)),
    "backbone": ("choice", BACKBONES),
    "loss": ("choice", LOSSES),
    "learning_rate": ("float", (1e-4, 3e-3, "log")),
    "batch_size": ("choice", (16, 32, 48)),
    "head": ("choice", HEADS),
    "fusion": ("choice", FUSIONS),
}


_CONDITIONAL = {"backbone": ("family", "model2"), "fusion": ("family", "model2"), "loss": ("head", "regression")}
"""name -> (parent, the parent's value under which it is searched)."""


class HparamsError(Exception):
    """A hyperparameters file or override the user can fix; one sentence."""


def define_search_space(hp, fixed: dict[str, Any] | None = None) -> dict[str, Any]:
    """Register SEARCH_SPACE on a keras_tuner HyperParameters; returns the sampled values.

    Names in `fixed` are pinned with hp.Fixed (e.g. family=model1 when the
    user chose the model). The backbone only matters for model2 and the loss
    only for the regression head, so they are conditional hyperparameters:
    model1 trials do not search the backbone, classification trials not the
    loss (their value is then DEFAULTS').
    """
    fixed = fixed or {}
    values: dict[str, Any] = {}
    for name, (kind, spec) in SEARCH_SPACE.items():
        if name in fixed:
            values[name] = hp.Fixed(name, fixed[name])
            continue
        if name in _CONDITIONAL:
            continue
        if kind == "choice":
            values[name] = hp.Choice(name, list(spec))
        else:
            low, high, sampling = spec
            values[name] = hp.Float(name, low, high, sampling=sampling)
    for name, (parent, active) in _CONDITIONAL.items():
        if name not in values:
            with hp.conditional_scope(parent, [active]):
                value = hp.Choice(name, list(SEARCH_SPACE[name][1]))
            values[name] = value if values[parent] == active else DEFAULTS[name]
    return values


def validate(hparams: dict[str, Any]) -> dict[str, Any]:
    """Complete `hparams` with DEFAULTS and check every value; raises HparamsError."""
    unknown = sorted(set(hparams) - set(DEFAULTS))
    if unknown:
        raise HparamsError(f"unknown hyperparameters {unknown}; known ones are {sorted(DEFAULTS)}.")
    merged = {**DEFAULTS, **hparams}
    for name in ("family", "backbone", "loss", "head", "fusion"):
        choices = SEARCH_SPACE[name][1]
        if merged[name] not in choices:
            raise HparamsError(f"{name} must be one of {list(choices)}, got {merged[name]!r}.")
    try:
        merged["width"] = float(merged["width"])
        merged["learning_rate"] = float(merged["learning_rate"])
        merged["batch_size"] = int(merged["batch_size"])
    except (TypeError, ValueError) as e:
        raise HparamsError(f"width, learning_rate and batch_size must be numbers ({e}).") from None
    if merged["width"] <= 0 or merged["learning_rate"] <= 0 or merged["batch_size"] < 1:
        raise HparamsError("width and learning_rate must be positive and batch_size at least 1.")
    return merged


def load(path: str | None) -> dict[str, Any]:
    """DEFAULTS, or the tuner's best hyperparameters JSON at `path` (local or gs://)."""
    if not path:
        return dict(DEFAULTS)
    import tensorflow as tf

    if not tf.io.gfile.exists(path):
        raise HparamsError(f"hyperparameters file {path} does not exist; run the tuner first or leave --hparams out.")
    try:
        with tf.io.gfile.GFile(path) as f:
            data = json.load(f)
    except json.JSONDecodeError as e:
        raise HparamsError(f"hyperparameters file {path} is not valid JSON ({e}).") from None
    values = data.get("hyperparameters", data) if isinstance(data, dict) else None
    if not isinstance(values, dict):
        raise HparamsError(f"hyperparameters file {path} must hold a JSON object of name: value.")
    return validate(values)


def save(hparams: dict[str, Any], path: str, **extra: Any) -> str:
    """Write {"hyperparameters": ..., **extra} as JSON (the format `load` reads)."""
    import tensorflow as tf

    parent = path.rsplit("/", 1)[0]
    if parent and parent != path:
        tf.io.gfile.makedirs(parent)
    with tf.io.gfile.GFile(path, "w") as f:
        json.dump({"hyperparameters": validate(hparams), **extra}, f, indent=1, sort_keys=True)
    return path
