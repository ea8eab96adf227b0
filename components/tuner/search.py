"""The search: keras-tuner over hparams.SEARCH_SPACE, resumable and distributable; writes best_hparams.json."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import posixpath
import socket
from typing import Any

import keras
import keras_tuner as kt
import tensorflow as tf

from components import colorbins, hparams, loader, models
from components.tuner.config import (
    RUN_BY_FILE, SETTINGS_FILE, TUNER_PROJECT, TuneConfig, TunerError, check_objective,
)
from schemas.artifacts import BEST_HPARAMS_FILE

_log = logging.getLogger("components.tuner")


@dataclasses.dataclass(frozen=True)
class TuneResult:
    """What one process of the search did; workers leave the best_* fields None."""

    role: str
    tuner_dir: str
    trials_run: int
    completed_trials: int | None = None
    best_hparams_path: str | None = None
    hyperparameters: dict[str, Any] | None = None
    score: float | None = None
    trial_id: str | None = None


def parse_objective(text: str) -> kt.Objective:
    """"val_loss", "loss" or "name:min|max" -> keras_tuner.Objective (direction min unless given)."""
    return kt.Objective(*check_objective(text))


def distributed_role() -> str:
    """"local", "chief" or "worker", read from keras-tuner's KERASTUNER_* variables as keras-tuner reads them."""
    if "KERASTUNER_ORACLE_IP" not in os.environ:
        return "local"
    missing = [v for v in ("KERASTUNER_ORACLE_PORT", "KERASTUNER_TUNER_ID") if v not in os.environ]
    if missing:
        raise TunerError(f"KERASTUNER_ORACLE_IP is set but {' and '.join(missing)} not; set all three to tune distributed.")
    return "chief" if "chief" in os.environ["KERASTUNER_TUNER_ID"] else "worker"


def backbone_weights(config: TuneConfig) -> dict[str, str | None]:
    """Model 2's weights file per backbone that may be sampled (None: random), by models.resolve_backbone_weights,
    before any trial runs; MissingWeightsError's sentence stops the search unless allow_random_backbone."""
    if config.fixed.get("family") == "model1":
        return {}
    backbones = [config.fixed["backbone"]] if "backbone" in config.fixed else list(hparams.SEARCH_SPACE["backbone"][1])
    choice = config.backbone_weights
    if not models.is_random(choice) and choice.strip().lower() != models.IMAGENET and len(backbones) > 1:
        raise TunerError(f"--backbone_weights {choice} fits one backbone; add --fix backbone=NAME ({', '.join(backbones)}).")
    resolved: dict[str, str | None] = {}
    for backbone in backbones:
        try:
            resolved[backbone] = models.resolve_backbone_weights(
                backbone, choice, allow_random_backbone=config.allow_random_backbone
            )
        except (ValueError, FileNotFoundError) as e:
            raise TunerError(str(e)) from None
    random = sorted(b for b, w in resolved.items() if w is None)
    if random:
        _log.warning(
            "WARNING: Model 2 trials with backbone %s use a RANDOMLY INITIALISED classifier (--backbone_weights none "
            "or --allow_random_backbone): their scores say nothing about the report's Model 2.",
            ", ".join(random),
        )
    return resolved


def load_prior(config: TuneConfig) -> colorbins.ColorPrior | None:
    """The colour prior classification trials train with, loaded and checked against the models' bins before any
    trial runs; None when head is pinned to regression. TunerError (one sentence) when the search may build the
    classification head and there is no usable prior."""
    heads = [config.fixed["head"]] if "head" in config.fixed else list(hparams.HEADS)
    if "classification" not in heads:
        return None
    if not config.prior:
        raise TunerError(
            "the search may build the classification head, which trains against the colour prior; pass --prior with "
            "the statistics stage's prior.json or pin the head with --fix head=regression."
        )
    try:
        return colorbins.load_prior(config.prior)
    except ValueError as e:
        raise TunerError(str(e)) from None


def oracle_seed(seed: int | None) -> int | None:
    """keras-tuner's seed for `seed`: its oracles read 0 as no seed (`seed or random.randint(1, 10000)`), so
    seed 0 would draw other trials on every run; seed + 1 keeps every seed a seed."""
    return None if seed is None else seed + 1


def trial_seed(seed: int, values: dict[str, Any]) -> int:
    """The random seed a trial builds its model under: the same for the same seed and hyperparameters."""
    digest = hashlib.sha256(json.dumps([seed, values], sort_keys=True, default=str).encode("utf-8")).digest()
    return int.from_bytes(digest[:4], "little")


class ColorizationHyperModel(kt.HyperModel):
    """build(hp): one autoencoder from hparams' search space, compiled by models.compile_model (for the
    classification head that is the logits model, which shares the model's layers); fit(hp, ...): datasets with
    the sampled batch size."""

    def __init__(self, config: TuneConfig, weights: dict[str, str | None],
                 color_prior: colorbins.ColorPrior | None = None):
        super().__init__(name="colorization")
        self.config = config
        self.weights = weights
        self.prior = color_prior

    def declare_hyperparameters(self, hp: kt.HyperParameters) -> None:
        """The whole space, the conditional ones (Model 2's backbone, the regression head's loss) included, without
        building a model."""
        hparams.define_search_space(hp, self.config.fixed)
        for parent, active in (("family", "model2"), ("head", "regression")):
            if parent not in self.config.fixed:
                default = hp.values[parent]
                hp.values[parent] = active
                hparams.define_search_space(hp, self.config.fixed)
                hp.values[parent] = default

    def build(self, hp: kt.HyperParameters) -> keras.Model:
        values = hparams.define_search_space(hp, self.config.fixed)
        if self.config.seed is not None:  # a trial's initial weights follow from the seed and its values
            keras.utils.set_random_seed(trial_seed(self.config.seed, values))
        model = models.build_model(
            values["family"],
            self.config.image_size,
            width=values["width"],
            backbone=values["backbone"],
            weights=self.weights.get(values["backbone"]) if values["family"] == "model2" else None,
            head=values["head"],
            fusion=values["fusion"],
        )
        return models.compile_model(
            model, learning_rate=values["learning_rate"], loss=values["loss"], head=values["head"], prior=self.prior
        )

    def fit(self, hp: kt.HyperParameters, model: keras.Model, *args, **kwargs) -> keras.callbacks.History:
        batch_size = hparams.define_search_space(hp, self.config.fixed)["batch_size"]
        common = dict(image_size=self.config.image_size, batch_size=batch_size, seed=self.config.seed, check=False)
        train = loader.make_dataset(
            self.config.examples, "train", training=True, drop_remainder=False,
            repeat=self.config.steps_per_epoch is not None, **common,
        )
        validation = loader.make_dataset(
            self.config.examples, "eval", training=False, repeat=self.config.validation_steps is not None, **common
        )
        models.build_optimizer(model)  # else each trial traces its train step twice
        return model.fit(train, *args, validation_data=validation, shuffle=False, **kwargs)


class RecordsTrials:
    """Writes run_by.json into each trial's directory and declares the space without building models."""

    trials_run = 0

    def _populate_initial_space(self) -> None:
        # keras-tuner's version builds the model once per conditional scope; the space is known without that.
        hp = self.oracle.get_space()
        self.hypermodel.declare_hyperparameters(hp)
        self.oracle.update_space(hp)

    def on_trial_begin(self, trial: kt.engine.trial.Trial) -> None:
        super().on_trial_begin(trial)
        record = {"tuner_id": self.tuner_id, "host": socket.gethostname(), "pid": os.getpid()}
        with tf.io.gfile.GFile(posixpath.join(self.get_trial_dir(trial.trial_id), RUN_BY_FILE), "w") as f:
            json.dump(record, f)
        self.trials_run += 1


class RandomSearch(RecordsTrials, kt.RandomSearch):
    """keras-tuner's RandomSearch, recording who ran each trial."""


class Hyperband(RecordsTrials, kt.Hyperband):
    """keras-tuner's Hyperband (continues the best trials from their checkpoints), recording who ran each trial."""


class BayesianOptimization(RecordsTrials, kt.BayesianOptimization):
    """keras-tuner's Gaussian-process BayesianOptimization, recording who ran each trial.

    tune() starts it with max_trials // 2 random trials (at least 2) rather
    than keras-tuner's 3 per hyperparameter, which would leave the Gaussian
    process unused within a usual budget of 10-20 trials.
    """


TUNERS = {"random": RandomSearch, "hyperband": Hyperband, "bayesian": BayesianOptimization}


def _settings(config: TuneConfig, color_prior: colorbins.ColorPrior | None = None) -> dict[str, Any]:
    """What must not change between runs sharing one OUT/tuner (max_trials may grow); the prior by its fingerprint
    (recorded only when classification trials use one, so searches without one resume as before)."""
    keep = ("examples", "algorithm", "objective", "epochs", "steps_per_epoch", "validation_steps", "image_size",
            "fixed", "seed", "hyperband_factor")
    values = {name: getattr(config, name) for name in keep}
    if color_prior is not None:
        values["prior_fingerprint"] = color_prior.fingerprint
    return values


def _check_settings(config: TuneConfig, tuner_dir: str, color_prior: colorbins.ColorPrior | None = None) -> None:
    """Refuse to resume a search started with other settings; record them on the first run."""
    path = posixpath.join(tuner_dir, SETTINGS_FILE)
    wanted = json.loads(json.dumps(_settings(config, color_prior)))
    if tf.io.gfile.exists(path):
        with tf.io.gfile.GFile(path) as f:
            found = json.load(f)
        changed = sorted(k for k in set(found) | set(wanted) if found.get(k) != wanted.get(k))
        if changed:
            detail = ", ".join(f"{k} {found.get(k)!r} there, {wanted.get(k)!r} now" for k in changed)
            raise TunerError(
                f"{tuner_dir} holds a search with other settings ({detail}); rerun with the same flags to resume "
                "or choose a new --output_dir."
            )
        return
    tf.io.gfile.makedirs(tuner_dir)
    with tf.io.gfile.GFile(path, "w") as f:
        json.dump(wanted, f, indent=1, sort_keys=True)


def _check_examples(config: TuneConfig) -> None:
    """Fail before the first trial when a split is missing, unreadable or too small for image_size."""
    for split in ("train", "eval"):
        loader.make_dataset(config.examples, split, image_size=config.image_size, batch_size=1, training=False)


def tune(config: TuneConfig) -> TuneResult:
    """Run (or resume, or join) the search; the chief or a local run writes OUT/best_hparams.json."""
    config.validate()
    role = distributed_role()
    objective = parse_objective(config.objective)
    output_dir = config.output_dir.rstrip("/")
    tuner_dir = posixpath.join(output_dir, TUNER_PROJECT)
    if role != "chief":
        _check_examples(config)
    weights = backbone_weights(config)
    color_prior = load_prior(config)
    if role != "worker":
        _check_settings(config, tuner_dir, color_prior)

    common = dict(
        hypermodel=ColorizationHyperModel(config, weights, color_prior),
        objective=objective,
        seed=oracle_seed(config.seed),
        directory=output_dir,
        project_name=TUNER_PROJECT,
        overwrite=False,
    )
    tuner_class = TUNERS[config.algorithm]
    if config.algorithm == "hyperband":
        tuner = tuner_class(max_epochs=config.epochs, factor=config.hyperband_factor, **common)
        if role != "worker":
            tuner.oracle.max_trials = config.max_trials
    elif config.algorithm == "bayesian":
        tuner = tuner_class(max_trials=config.max_trials, num_initial_points=max(2, config.max_trials // 2), **common)
    else:
        tuner = tuner_class(max_trials=config.max_trials, **common)

    tuner.search(
        epochs=config.epochs,
        steps_per_epoch=config.steps_per_epoch,
        validation_steps=config.validation_steps,
        verbose=config.verbose,
    )
    if role == "worker":
        return TuneResult(role, tuner_dir, tuner.trials_run)

    completed = [t for t in tuner.oracle.trials.values() if t.status == "COMPLETED"]
    if not completed:
        raise TunerError(f"no trial completed; the errors are in {tuner_dir}/trial_*/trial.json (\"message\").")
    best = tuner.oracle.get_best_trials(1)[0]
    values = hparams.define_search_space(best.hyperparameters.copy(), config.fixed)
    path = hparams.save(
        values,
        posixpath.join(output_dir, BEST_HPARAMS_FILE),
        objective=objective.name,
        direction=objective.direction,
        score=float(best.score),
        trial_id=best.trial_id,
        algorithm=config.algorithm,
        completed_trials=len(completed),
        image_size=config.image_size,
    )
    return TuneResult(
        role, tuner_dir, tuner.trials_run, len(completed), path, hparams.validate(values), float(best.score), best.trial_id
    )
