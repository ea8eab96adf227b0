"""The tuner's settings (its CLI and the pipeline's `tune` section) and errors; no TensorFlow."""

from __future__ import annotations

import dataclasses
from typing import Any, Dict, Optional

from components import hparams, settings
from components.settings import artifact, linked, setting

ALGORITHMS = ("random", "hyperband", "bayesian")
OBJECTIVE_METRICS = ("loss", "mae")
"""What models.compile_model reports; an objective is one of these, optionally with val_ in front."""

TUNER_PROJECT = "tuner"
SETTINGS_FILE = "settings.json"
RUN_BY_FILE = "run_by.json"


class TunerError(Exception):
    """A mistake the user can fix; the message is one sentence saying how."""


def check_objective(text: str, prefix: str = "--") -> tuple[str, str]:
    """"val_loss", "loss" or "name:min|max" -> (name, direction), direction min unless given; TunerError else."""
    name, _, direction = text.partition(":")
    direction = direction or "min"
    metric = name[4:] if name.startswith("val_") else name
    if metric not in OBJECTIVE_METRICS or direction not in ("min", "max"):
        choices = ", ".join(f"{p}{m}" for p in ("", "val_") for m in OBJECTIVE_METRICS)
        raise TunerError(
            f"{prefix}objective {text!r} is not a reported metric; use one of {choices}, optionally :min or :max."
        )
    return name, direction


@dataclasses.dataclass
class TuneConfig:
    """One search. `fixed` pins hyperparameters (e.g. {"family": "model1"}, {"head": "regression"}); the rest are
    searched. Classification trials train against `prior`, which the search needs unless head is pinned to
    regression."""

    examples: str = artifact("input", "example_gen's output dir (or a TFRecord glob with {split})")
    output_dir: str = artifact("output", "where best_hparams.json and tuner/ (keras-tuner's state) go")
    prior: Optional[str] = artifact(
        "input", "the statistics stage's prior.json (needed when the search may build the classification head)",
        required=False, default=None,
    )
    algorithm: str = setting("random", "search algorithm", choices=ALGORITHMS)
    max_trials: int = setting(10, "trials in all; for hyperband a cap on what its brackets ask for")
    objective: str = setting(
        "val_mae", "loss, mae, val_loss or val_mae, optionally NAME:min or NAME:max (minimised unless :max; unlike "
        "val_loss, val_mae does not depend on the loss a trial trains with)"
    )
    epochs: int = setting(5, "epochs per trial; hyperband's max_epochs")
    steps_per_epoch: Optional[int] = setting(None, "batches per epoch; none: the whole train split")
    hyperband_factor: int = setting(
        3, "hyperband's reduction factor: each round keeps 1/FACTOR of the trials for FACTOR times the epochs"
    )
    verbose: int = setting(2, "Keras fit verbosity of each trial")
    validation_steps: Optional[int] = linked("train.validation_steps", None, "eval batches; none: the whole eval split")
    image_size: int = linked("train.image_size", 224, "training crop side, a multiple of 8")
    fixed: Dict[str, Any] = linked(
        None, None, "pin a searched hyperparameter, e.g. --fix width=0.5 --fix loss=mse; repeatable",
        default_factory=dict, flag="--fix",
    )
    backbone_weights: str = linked(
        "train.backbone_weights", "imagenet",
        "Model 2's classifier weights: imagenet (the Keras cache, downloaded through Keras when missing) | a .h5 "
        "path | none (a random backbone)",
    )
    allow_random_backbone: bool = linked(
        "train.allow_random_backbone", False,
        "when the ImageNet weights are absent, run Model 2 trials with a random backbone instead of stopping",
    )
    seed: Optional[int] = linked("train.seed", None, "seed for the search algorithm and the data shuffling")

    def validate(self, prefix: str = "--") -> "TuneConfig":
        """Check every field once, naming `prefix + field`; returns self with `fixed` coerced to the
        hyperparameters' types."""
        try:
            settings.check_choices(self, prefix)
        except settings.SettingsError as e:
            raise TunerError(str(e)) from None
        for name in ("max_trials", "epochs", "image_size", "steps_per_epoch", "validation_steps", "hyperband_factor"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise TunerError(f"{prefix}{name} must be a positive whole number, got {value!r}.")
        if self.seed is not None and (isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0):
            raise TunerError(f"{prefix}seed must be a whole number of at least 0, got {self.seed!r}.")
        if self.hyperband_factor < 2:
            raise TunerError(f"{prefix}hyperband_factor must be at least 2, got {self.hyperband_factor}.")
        if self.image_size % 8:
            raise TunerError(
                f"{prefix}image_size must be a multiple of 8 (the models downsample by 8), not {self.image_size}."
            )
        check_objective(self.objective, prefix)
        unknown = sorted(set(self.fixed) - set(hparams.SEARCH_SPACE))
        if unknown:
            raise TunerError(f"cannot fix {unknown}: the searched hyperparameters are {sorted(hparams.SEARCH_SPACE)}.")
        try:
            checked = hparams.validate(dict(self.fixed))
        except hparams.HparamsError as e:
            raise TunerError(str(e)) from None
        self.fixed = {name: checked[name] for name in self.fixed}
        if not str(self.backbone_weights or "").strip():
            raise TunerError(f"{prefix}backbone_weights must be imagenet, a .h5 path or none.")
        return self
