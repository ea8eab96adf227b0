"""tuner: keras-tuner search over the autoencoder variants; the best hyperparameters go to JSON.

Each trial builds one model from hparams.SEARCH_SPACE (family, width,
Model 2's backbone, loss, learning rate, batch size), streams the train and
eval splits with the sampled batch size and reports the objective (default
val_mae: val_loss would favour Huber trials, whose loss is on a smaller
scale than MSE's). The winner is written with hparams.save, so the trainer reads it
with `--hparams OUT/best_hparams.json`. keras-tuner's own state lives in
OUT/tuner/: re-running the same command resumes, reusing finished trials
and re-running one that was interrupted.

Local, on example_gen's output (--algorithm hyperband uses --epochs as its
max_epochs):

    python -m components.tuner --examples /tmp/ingest --output_dir /tmp/tune \\
        --algorithm random --max_trials 20 --epochs 5 --steps_per_epoch 100 --image_size 224

Model 1 only, quickly (pin any hyperparameter with --fix NAME=VALUE):

    python -m components.tuner --examples /tmp/ingest --output_dir /tmp/tune \\
        --model model1 --fix width=0.5 --max_trials 4 --epochs 2 --steps_per_epoch 20 --image_size 64

Distributed (keras-tuner's own mode): the same command on every machine,
OUT on storage they all share (e.g. gs://), one chief that runs the oracle
and writes best_hparams.json when the search is done, and workers that run
trials:

    KERASTUNER_TUNER_ID=chief KERASTUNER_ORACLE_IP=0.0.0.0 KERASTUNER_ORACLE_PORT=8000 \\
        python -m components.tuner --examples gs://BUCKET/ingest --output_dir gs://BUCKET/tune ...
    KERASTUNER_TUNER_ID=tuner0 KERASTUNER_ORACLE_IP=CHIEF_IP KERASTUNER_ORACLE_PORT=8000 \\
        python -m components.tuner --examples gs://BUCKET/ingest --output_dir gs://BUCKET/tune ...
    KERASTUNER_TUNER_ID=tuner1 ...   # one distinct id per worker

Every trial directory OUT/tuner/trial_<id>/ holds run_by.json naming the
tuner that ran it.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import posixpath
import socket
import sys
from typing import Any

import keras
import keras_tuner as kt
import tensorflow as tf

from components import hparams, loader, models
from schemas.artifacts import BEST_HPARAMS_FILE

ALGORITHMS = ("random", "hyperband", "bayesian")
OBJECTIVE_METRICS = ("loss", "mae")
"""What models.compile_model reports; an objective is one of these, optionally with val_ in front."""

TUNER_PROJECT = "tuner"
SETTINGS_FILE = "settings.json"
RUN_BY_FILE = "run_by.json"

_log = logging.getLogger(__name__)


class TunerError(Exception):
    """A mistake the user can fix; the message is one sentence saying how."""


@dataclasses.dataclass
class TuneConfig:
    """One search. `fixed` pins hyperparameters (e.g. {"family": "model1"}); the rest are searched."""

    examples: str
    output_dir: str
    algorithm: str = "random"
    max_trials: int = 10
    objective: str = "val_mae"
    epochs: int = 5
    steps_per_epoch: int | None = None
    validation_steps: int | None = None
    image_size: int = 224
    fixed: dict[str, Any] = dataclasses.field(default_factory=dict)
    backbone_weights: str | None = "imagenet"
    allow_random_backbone: bool = False
    seed: int | None = None
    hyperband_factor: int = 3
    verbose: int = 2

    def validate(self) -> "TuneConfig":
        """Check every field once; returns self with `fixed` coerced to the hyperparameters' types."""
        if self.algorithm not in ALGORITHMS:
            raise TunerError(f"algorithm must be one of {', '.join(ALGORITHMS)}, got {self.algorithm!r}.")
        for name in ("max_trials", "epochs", "image_size", "steps_per_epoch", "validation_steps", "hyperband_factor"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise TunerError(f"--{name} must be a positive whole number, got {value!r}.")
        if self.hyperband_factor < 2:
            raise TunerError(f"--hyperband_factor must be at least 2, got {self.hyperband_factor}.")
        if self.image_size % 8:
            raise TunerError(f"--image_size must be a multiple of 8 (the models downsample by 8), not {self.image_size}.")
        parse_objective(self.objective)
        unknown = sorted(set(self.fixed) - set(hparams.SEARCH_SPACE))
        if unknown:
            raise TunerError(f"cannot fix {unknown}: the searched hyperparameters are {sorted(hparams.SEARCH_SPACE)}.")
        try:
            checked = hparams.validate(dict(self.fixed))
        except hparams.HparamsError as e:
            raise TunerError(str(e)) from None
        self.fixed = {name: checked[name] for name in self.fixed}
        if self.backbone_weights is not None and not self.backbone_weights:
            raise TunerError("--backbone_weights must be imagenet, a .h5 path or none.")
        return self


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


def parse_objective(text: str):
    """"val_loss", "loss" or "name:min|max" -> keras_tuner.Objective (direction min unless given)."""
    name, _, direction = text.partition(":")
    direction = direction or "min"
    metric = name[4:] if name.startswith("val_") else name
    if metric not in OBJECTIVE_METRICS or direction not in ("min", "max"):
        choices = ", ".join(f"{p}{m}" for p in ("", "val_") for m in OBJECTIVE_METRICS)
        raise TunerError(f"--objective {text!r} is not a reported metric; use one of {choices}, optionally :min or :max.")
    return kt.Objective(name, direction)


def distributed_role() -> str:
    """"local", "chief" or "worker", read from keras-tuner's KERASTUNER_* variables as keras-tuner reads them."""
    if "KERASTUNER_ORACLE_IP" not in os.environ:
        return "local"
    missing = [v for v in ("KERASTUNER_ORACLE_PORT", "KERASTUNER_TUNER_ID") if v not in os.environ]
    if missing:
        raise TunerError(f"KERASTUNER_ORACLE_IP is set but {' and '.join(missing)} not; set all three to tune distributed.")
    return "chief" if "chief" in os.environ["KERASTUNER_TUNER_ID"] else "worker"


def backbone_weights(config: TuneConfig) -> dict[str, str | None]:
    """Model 2's `weights` argument per backbone that may be sampled, checked before any trial runs.

    As in the trainer: "imagenet" comes from the Keras cache or a path is
    loaded as given; when they are absent the search stops with
    MissingWeightsError's sentence unless allow_random_backbone. None
    (--backbone_weights none) and that fallback build a random backbone and
    say so loudly.
    """
    if config.fixed.get("family") == "model1":
        return {}
    backbones = [config.fixed["backbone"]] if "backbone" in config.fixed else list(hparams.SEARCH_SPACE["backbone"][1])
    choice = config.backbone_weights
    if choice not in (None, "imagenet") and len(backbones) > 1:
        raise TunerError(f"--backbone_weights {choice} fits one backbone; add --fix backbone=NAME ({', '.join(backbones)}).")
    resolved: dict[str, str | None] = {}
    for backbone in backbones:
        if choice is None:
            resolved[backbone] = None
            continue
        try:
            models.backbone_weights_path(backbone, choice)
            resolved[backbone] = choice
        except models.MissingWeightsError:
            if not config.allow_random_backbone:
                raise
            resolved[backbone] = None
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


class ColorizationHyperModel(kt.HyperModel):
    """build(hp): one autoencoder from hparams' search space; fit(hp, ...): datasets with the sampled batch size."""

    def __init__(self, config: TuneConfig, weights: dict[str, str | None]):
        super().__init__(name="colorization")
        self.config = config
        self.weights = weights

    def declare_hyperparameters(self, hp: kt.HyperParameters) -> None:
        """The whole space, Model 2's backbone included, without building a model."""
        hparams.define_search_space(hp, self.config.fixed)
        if "family" not in self.config.fixed:
            default = hp.values["family"]
            hp.values["family"] = "model2"
            hparams.define_search_space(hp, self.config.fixed)
            hp.values["family"] = default

    def build(self, hp: kt.HyperParameters) -> keras.Model:
        values = hparams.define_search_space(hp, self.config.fixed)
        model = models.build_model(
            values["family"],
            self.config.image_size,
            width=values["width"],
            backbone=values["backbone"],
            weights=self.weights.get(values["backbone"]) if values["family"] == "model2" else None,
        )
        return models.compile_model(model, learning_rate=values["learning_rate"], loss=values["loss"])

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


def _settings(config: TuneConfig) -> dict[str, Any]:
    """What must not change between runs sharing one OUT/tuner (max_trials may grow)."""
    keep = ("examples", "algorithm", "objective", "epochs", "steps_per_epoch", "validation_steps", "image_size",
            "fixed", "seed", "hyperband_factor")
    return {name: getattr(config, name) for name in keep}


def _check_settings(config: TuneConfig, tuner_dir: str) -> None:
    """Refuse to resume a search started with other settings; record them on the first run."""
    path = posixpath.join(tuner_dir, SETTINGS_FILE)
    wanted = json.loads(json.dumps(_settings(config)))
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
    if role != "worker":
        _check_settings(config, tuner_dir)

    common = dict(
        hypermodel=ColorizationHyperModel(config, weights),
        objective=objective,
        seed=config.seed,
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


def _parse_fixed(pairs: list[str]) -> dict[str, Any]:
    """["width=0.5", "family=model1"] -> {"width": 0.5, "family": "model1"}."""
    fixed = {}
    for pair in pairs:
        name, sep, text = pair.partition("=")
        if not sep or not name:
            raise TunerError(f"--fix takes NAME=VALUE, got {pair!r}.")
        try:
            fixed[name] = json.loads(text)
        except json.JSONDecodeError:
            fixed[name] = text
    return fixed


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m components.tuner",
        description="Search the autoencoder variants with keras-tuner and write the best hyperparameters to "
        "OUTPUT_DIR/best_hparams.json (the trainer's --hparams). Re-running the same command resumes the search. "
        "To tune distributed, set KERASTUNER_TUNER_ID (chief, tuner0, tuner1, ...), KERASTUNER_ORACLE_IP and "
        "KERASTUNER_ORACLE_PORT for every process.",
    )
    add = parser.add_argument
    add("--examples", required=True, help="example_gen's output dir (or a TFRecord glob with {split}).")
    add("--output_dir", required=True, help="Where best_hparams.json and tuner/ (keras-tuner's state) go.")
    add("--algorithm", choices=ALGORITHMS, default="random", help="Search algorithm (default random).")
    add("--max_trials", type=_positive_int, default=10,
        help="Trials in all (default 10); for hyperband a cap on what its brackets ask for.")
    add("--objective", default="val_mae",
        help="loss, mae, val_loss or val_mae, optionally NAME:min or NAME:max (default val_mae, minimised: unlike "
        "val_loss it does not depend on the loss a trial trains with).")
    add("--epochs", type=_positive_int, default=5, help="Epochs per trial; hyperband's max_epochs (default 5).")
    add("--steps_per_epoch", type=_positive_int, default=None, help="Batches per epoch (default: the whole train split).")
    add("--validation_steps", type=_positive_int, default=None, help="Eval batches (default: the whole eval split).")
    add("--image_size", type=_positive_int, default=224, help="Training crop side, a multiple of 8 (default 224).")
    add("--model", choices=("model1", "model2"), default=None, help="Pin the model family (default: searched).")
    add("--fix", action="append", default=[], metavar="NAME=VALUE",
        help="Pin any searched hyperparameter, e.g. --fix width=0.5 --fix loss=mse; repeatable.")
    add("--backbone_weights", default="imagenet",
        help="Model 2's classifier weights: imagenet (from the Keras cache, never downloaded), a .h5 PATH, or none "
        "(a random backbone; default imagenet).")
    add("--allow_random_backbone", action="store_true",
        help="When the weights are absent, run Model 2 trials with a random backbone instead of stopping.")
    add("--hyperband_factor", type=int, default=3,
        help="Hyperband's reduction factor: each round keeps 1/FACTOR of the trials for FACTOR times the epochs (default 3).")
    add("--seed", type=int, default=None, help="Seed for the search algorithm and the data shuffling.")
    return parser


def run(argv: list[str] | None = None) -> int:
    """CLI entry point; returns the exit status."""
    args = _build_parser().parse_args(argv)
    try:
        fixed = _parse_fixed(args.fix)
        if args.model:
            fixed["family"] = args.model
        config = TuneConfig(
            examples=args.examples,
            output_dir=args.output_dir,
            algorithm=args.algorithm,
            max_trials=args.max_trials,
            objective=args.objective,
            epochs=args.epochs,
            steps_per_epoch=args.steps_per_epoch,
            validation_steps=args.validation_steps,
            image_size=args.image_size,
            fixed=fixed,
            backbone_weights=None if args.backbone_weights.lower() == "none" else args.backbone_weights,
            allow_random_backbone=args.allow_random_backbone,
            seed=args.seed,
            hyperband_factor=args.hyperband_factor,
        )
        result = tune(config)
    except (TunerError, hparams.HparamsError, loader.LoaderError, models.MissingWeightsError) as e:
        print(f"tuner: {e}", file=sys.stderr)
        return 2
    if result.role == "worker":
        print(f"Worker {os.environ.get('KERASTUNER_TUNER_ID')} ran {result.trials_run} trials in {result.tuner_dir}; "
              "the chief writes best_hparams.json.")
    else:
        print(f"Best hyperparameters (trial {result.trial_id}, {config.objective} {result.score:.6g}, "
              f"{result.completed_trials} trials, {config.algorithm}): {result.best_hparams_path}")
    return 0


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    return run(argv)


if __name__ == "__main__":
    sys.exit(main())
