"""The training run: hyperparameters, Model 2's backbone weights, the colour prior, datasets, fit with resume, and
model.keras.

With the classification head the model that fits is models.logits_model(end-to-end model) (L -> logits, the
rebalanced cross-entropy against the prior); the checkpoints, the TensorBoard images and model.keras are the
end-to-end model (L -> ab/128 through the annealed mean), which shares its layers.
"""

from __future__ import annotations

import json
import logging
import posixpath
import shutil
import sys
import tempfile
from typing import Any, NamedTuple

import keras
import tensorflow as tf

import schemas
from components import colorbins
from components import hparams as hparams_lib
from components import loader, models
from components.trainer.callbacks import (
    _EvalImages, _KeptCheckpoint, _NaNStop, _ResumableEarlyStopping, _Throughput, _TimeBudget,
)
from components.trainer.config import (
    BACKUP_DIR, BEST_CHECKPOINT, CSV_LOG, DEFAULT_PATIENCE, EVAL_IMAGES, IMAGES_RUN, MODEL_FILE,
    RANDOM_BACKBONE_WARNING, SUMMARY_FILE, TENSORBOARD_DIR, TrainConfig, TrainError, TrainingDiverged, TrainResult,
)
from components.trainer.precision import _global_policy, _strategy_name, _worker, choose_precision, choose_strategy
from components.trainer.resume import _best, _read_log, _resume_epoch, _trim_log

_log = logging.getLogger("components.trainer")  # also when run as __main__


class _Paths(NamedTuple):
    model: str
    checkpoint: str
    backup: str
    csv: str
    tensorboard: str
    summary: str


def _paths(root: str) -> _Paths:
    return _Paths(*(posixpath.join(root, name) for name in (
        MODEL_FILE, BEST_CHECKPOINT, BACKUP_DIR, CSV_LOG, TENSORBOARD_DIR, SUMMARY_FILE)))


def _resolve_hparams(config: TrainConfig) -> dict[str, Any]:
    """The hyperparameters file (or the report's DEFAULTS) with the config's pinned values over it, checked."""
    return hparams_lib.validate({**hparams_lib.load(config.hparams), **config.hparams_overrides()})


def _backbone_weights(config: TrainConfig, hp: dict[str, Any]) -> str | None:
    """Model 2's backbone weights file by models.resolve_backbone_weights (None: random, with the warning)."""
    if hp["family"] != "model2":
        return None
    try:
        path = models.resolve_backbone_weights(
            hp["backbone"], config.backbone_weights, allow_random_backbone=config.allow_random_backbone
        )
    except (ValueError, FileNotFoundError) as e:
        raise TrainError(str(e)) from None
    if path is None:
        why = "--backbone_weights none" if models.is_random(config.backbone_weights) else (
            "--allow_random_backbone; ImageNet weights are not in the Keras cache")
        _log.warning("%s (%s).", RANDOM_BACKBONE_WARNING, why)
    return path


def _prior(config: TrainConfig, hp: dict[str, Any]) -> colorbins.ColorPrior | None:
    """The colour prior the classification head trains with (None for regression), checked against the model's
    bins; TrainError with one sentence when it is missing, unreadable or made for other bins."""
    if hp["head"] != "classification":
        if config.prior:
            _log.info("--prior %s is not used: the regression head trains with %s.", config.prior, hp["loss"])
        return None
    if not config.prior:
        raise TrainError(
            "the classification head trains with the class-rebalanced cross-entropy, which needs the colour prior; "
            "pass --prior with the statistics stage's prior.json (python -m components.statistics writes it) or "
            "use --head regression."
        )
    try:
        return colorbins.load_prior(config.prior)
    except ValueError as e:
        raise TrainError(str(e)) from None


def _check_embeddings(examples: str) -> None:
    """One sentence when the train records lack the precomputed embeddings."""
    path = loader.example_files(examples, "train")[0]
    for record in tf.data.TFRecordDataset(path, compression_type="GZIP" if path.endswith(".gz") else "").take(1):
        if schemas.EMBEDDING_KEY not in tf.train.Example.FromString(record.numpy()).features.feature:
            raise TrainError(
                f"the records under {examples} have no '{schemas.EMBEDDING_KEY}' feature; run the embedding "
                "precompute step on them first, or train without --embeddings."
            )


def _build(config: TrainConfig, hp: dict[str, Any], weights: str | None) -> tuple[keras.Model, keras.Model]:
    """(model that trains, end-to-end model that is saved); the same model except for model2 on embeddings."""
    try:
        if hp["family"] == "model1" or not config.embeddings:
            model = models.build_model(
                hp["family"], config.image_size, width=hp["width"], backbone=hp["backbone"], weights=weights,
                head=hp["head"], temperature=config.temperature, fusion=hp["fusion"],
            )
            return model, model
        parts = models.build_model2_parts(
            config.image_size, hp["width"], hp["backbone"], weights, head=hp["head"], temperature=config.temperature,
            fusion=hp["fusion"],
        )
        return parts.head, parts.end_to_end
    except models.MissingWeightsError:
        raise
    except (ValueError, FileNotFoundError) as e:
        raise TrainError(str(e)) from None


def _datasets(config: TrainConfig, global_batch: int, multi_worker: bool) -> tuple[tf.data.Dataset, tf.data.Dataset]:
    common = dict(image_size=config.image_size, batch_size=global_batch, with_embedding=config.embeddings)
    train = loader.make_dataset(
        config.examples, "train", training=True, seed=config.seed, repeat=config.steps_per_epoch is not None, **common
    )
    val = loader.make_dataset(
        config.examples, "eval", training=False, repeat=config.validation_steps is not None, **common
    )
    if multi_worker:
        options = tf.data.Options()
        options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
        train, val = train.with_options(options), val.with_options(options)
    return train, val


def _work_around_keras_multi_worker_bugs(model: keras.Model, dataset: tf.data.Dataset) -> None:
    """Make Keras 3's fit() run under MultiWorkerMirroredStrategy (keras-team/keras#20585).

    fit() builds the model by all-reducing a distributed data batch ("Attempt
    to convert a value (PerReplica...)"), and reduces each step's scalar logs
    with axis=0 ("Invalid reduction dimension 0"). Build the model here from
    the dataset's shapes instead, and reduce scalars across workers with
    axis=None, as intended.
    """
    from keras.src.backend.tensorflow import trainer as tf_trainer

    batch = tf.nest.map_structure(lambda spec: tf.zeros([1, *spec.shape[1:]], spec.dtype), dataset.element_spec)
    model._maybe_symbolic_build(data_batch=batch)
    model._maybe_symbolic_build = lambda iterator=None, data_batch=None: None

    original = getattr(tf_trainer.reduce_per_replica, "__wrapped__", tf_trainer.reduce_per_replica)

    def reduce_per_replica(values, strategy, reduction):
        if reduction in ("auto", "mean") and isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
            return tf.nest.map_structure(lambda v: strategy.reduce("MEAN", v, axis=None), values)
        return original(values, strategy, reduction)

    reduce_per_replica.__wrapped__ = original
    tf_trainer.reduce_per_replica = reduce_per_replica


def _export(
    config: TrainConfig, hp: dict[str, Any], weights: str | None, checkpoint: str, fallback: keras.Model, path: str
) -> keras.Model:
    """Save the best checkpoint's weights as a float32 end-to-end model (L -> ab/128; compiled for the regression
    head, the classification head's annealed mean and temperature inside), atomically."""
    with _global_policy("float32"):
        model = models.build_model(
            hp["family"], config.image_size, width=hp["width"], backbone=hp["backbone"], weights=weights,
            head=hp["head"], temperature=config.temperature, fusion=hp["fusion"],
        )
        if tf.io.gfile.exists(checkpoint):
            model.load_weights(checkpoint)
        else:
            model.set_weights(fallback.get_weights())
        if hp["head"] == "regression":  # the classification head compiles its logits model, not this one
            models.compile_model(model, learning_rate=hp["learning_rate"], loss=hp["loss"])
        partial = posixpath.join(posixpath.dirname(path), ".partial." + posixpath.basename(path))
        model.save(partial, overwrite=True)
        tf.io.gfile.rename(partial, path, overwrite=True)
    return model


def train(config: TrainConfig) -> TrainResult:
    """Train, checkpoint, resume if `config.output_dir` holds an interrupted run, and save OUT/model.keras.

    Raises TrainError (and TrainingDiverged on a NaN loss), HparamsError,
    LoaderError or MissingWeightsError with a one-sentence message.
    """
    config.validate()
    strategy = choose_strategy(config.distribute)
    hp = _resolve_hparams(config)
    prior = _prior(config, hp)
    if config.embeddings and hp["family"] != "model2":
        raise TrainError("--embeddings trains Model 2's head on precomputed embeddings; add --model model2.")
    if config.embeddings and hp["fusion"] != "global":
        raise TrainError(f"--embeddings holds the records' global class probabilities, which {hp['fusion']} fusion "
                         "does not use; leave out --embeddings or train with --fusion global.")
    if config.embeddings:
        _check_embeddings(config.examples)
    policy, policy_reason = choose_precision(config.precision)
    is_chief, task_id = _worker(strategy)
    multi_worker = isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy)
    verbose = config.verbose if config.verbose is not None else (1 if sys.stdout.isatty() else 2)
    if config.seed is not None:
        keras.utils.set_random_seed(config.seed)

    out = _paths(config.output_dir)
    scratch = None if is_chief else tempfile.mkdtemp(prefix=f"trainer_worker{task_id}_")
    mine = out if is_chief else _paths(scratch)
    initial_epoch = _resume_epoch(out.backup)
    tf.io.gfile.makedirs(posixpath.dirname(mine.csv))
    if is_chief:
        _trim_log(out.csv, initial_epoch)
        if not initial_epoch and tf.io.gfile.exists(out.checkpoint):
            tf.io.gfile.remove(out.checkpoint)
    elif tf.io.gfile.exists(out.backup):
        tf.io.gfile.makedirs(mine.backup)
        for name in tf.io.gfile.listdir(out.backup):
            tf.io.gfile.copy(posixpath.join(out.backup, name), posixpath.join(mine.backup, name), overwrite=True)
    resume_best, resume_best_epoch = _best(_read_log(out.csv)) if initial_epoch else (None, None)

    replicas = strategy.num_replicas_in_sync
    global_batch = hp["batch_size"] * replicas
    train_ds, val_ds = _datasets(config, global_batch, multi_worker)
    eval_batch = loader.fixed_batch(
        config.examples, "eval", image_size=config.image_size, batch_size=min(EVAL_IMAGES, hp["batch_size"])
    )
    weights = _backbone_weights(config, hp)

    head = "regression head" if hp["head"] == "regression" else f"classification head (T={config.temperature:g})"
    family = f"{hp['family']} ({hp['backbone']}, {hp['fusion']} fusion)" if hp["family"] == "model2" else hp["family"]
    budget_note = "" if config.max_minutes is None else f", a {config.max_minutes:g}-minute budget" + (
        " with the learning rate decaying to 0" if config.lr_decay == "budget" else "")
    print(f"trainer: {family} width {hp['width']:g}, {head}, global batch {global_batch}{budget_note}, keeping the "
          f"{config.keep} epoch, precision {policy} ({policy_reason}), {_strategy_name(strategy)} strategy with "
          f"{replicas} replica(s); writing to {config.output_dir}", flush=True)
    if initial_epoch:
        print(f"trainer: resuming from epoch {initial_epoch + 1} (backup in {out.backup})", flush=True)

    try:
        with _global_policy(policy), strategy.scope():
            trained, end_to_end = _build(config, hp, weights)
            fitted = models.compile_model(
                trained, learning_rate=hp["learning_rate"], loss=hp["loss"], head=hp["head"], prior=prior
            )
            models.build_optimizer(fitted)  # else the first epoch traces its train step twice
            if multi_worker:
                _work_around_keras_multi_worker_bugs(fitted, train_ds)
            print(f"trainer: XLA {'on' if fitted.jit_compile else 'off'} (Keras's jit_compile='auto': on with a GPU "
                  "and no distribution strategy, off on CPU, where benchmarks/accelerator_benchmark.py measured it "
                  "slower), input pipeline parallelism tf.data AUTOTUNE on all cores", flush=True)
            nan_stop, throughput = _NaNStop(), _Throughput(global_batch)
            budget = None if config.max_minutes is None else _TimeBudget(
                config.max_minutes, strategy, decay=config.lr_decay == "budget")
            patience = config.early_stopping_patience()
            early_stopping = [] if patience is None else [_ResumableEarlyStopping(
                monitor="val_loss", patience=patience, restore_best_weights=config.keep == "best",
                resume_best=resume_best, resume_wait=0 if resume_best is None else initial_epoch - 1 - resume_best_epoch,
            )]
            callbacks = [
                nan_stop,
                throughput,
                _KeptCheckpoint(mine.checkpoint, end_to_end, config.keep, initial_value_threshold=resume_best),
                *early_stopping,
                keras.callbacks.TensorBoard(mine.tensorboard, write_graph=False, update_freq="epoch"),
                _EvalImages(posixpath.join(mine.tensorboard, IMAGES_RUN), eval_batch, end_to_end),
                keras.callbacks.CSVLogger(mine.csv, append=True),
            ]
            if config.reduce_lr:
                callbacks.append(keras.callbacks.ReduceLROnPlateau(
                    monitor="val_loss", factor=0.5, patience=max(1, (patience or DEFAULT_PATIENCE) // 2), min_lr=1e-6, verbose=1
                ))
            if budget is not None:
                callbacks.append(budget)
            callbacks.append(keras.callbacks.BackupAndRestore(mine.backup))
            fitted.fit(
                train_ds, validation_data=val_ds, epochs=config.epochs, steps_per_epoch=config.steps_per_epoch,
                validation_steps=config.validation_steps, callbacks=callbacks, verbose=verbose, shuffle=False,
            )
        if nan_stop.stopped_at is not None:
            epoch, batch = nan_stop.stopped_at
            raise TrainingDiverged(
                f"training stopped: the loss became NaN at epoch {epoch + 1} (batch {batch + 1}); lower the "
                f"learning rate ({hp['learning_rate']:g}, set in --hparams) or check the data."
            )
        if budget is not None and budget.stopped_after is not None:
            print(f"trainer: stopped after epoch {budget.stopped_after + 1}: the time budget of {config.max_minutes:g} "
                  f"minutes is spent (model.keras is the {config.keep} epoch so far)", flush=True)

        rows = _read_log(mine.csv)
        best_val_loss, best_epoch = _best(rows)
        epochs_run = max((int(r["epoch"]) + 1 for r in rows), default=0)
        summary = {
            "model": hp["family"],
            "hparams": hp,
            "head": hp["head"],
            "temperature": config.temperature if hp["head"] == "classification" else None,
            "prior": config.prior if prior is not None else None,
            "prior_fingerprint": None if prior is None else prior.fingerprint,
            "max_minutes": config.max_minutes,
            "stopped_by_time_budget": budget is not None and budget.stopped_after is not None,
            "early_stopping_patience": config.early_stopping_patience(),
            "image_size": config.image_size,
            "precision": {"policy": policy, "reason": policy_reason},
            "strategy": {"name": _strategy_name(strategy), "replicas": replicas, "global_batch_size": global_batch},
            "epochs_requested": config.epochs,
            "epochs_run": epochs_run,
            "resumed_from_epoch": initial_epoch,
            "best_val_loss": best_val_loss,
            "best_epoch": None if best_epoch is None else best_epoch + 1,
            "keep": config.keep,
            "lr_decay": config.lr_decay,
            "kept_epoch": epochs_run if config.keep == "last" else (None if best_epoch is None else best_epoch + 1),
            "trainable_parameters": models.trainable_parameters(end_to_end),
            "examples_per_second": throughput.examples_per_second(),
            "backbone_weights": config.backbone_weights if weights is not None else None,
            "embeddings": config.embeddings,
            "paths": {
                "model": out.model, "best_checkpoint": out.checkpoint, "training_log": out.csv,
                "tensorboard": out.tensorboard,
            },
        }
        if is_chief:
            _export(config, hp, weights, out.checkpoint, end_to_end, out.model)
            with tf.io.gfile.GFile(out.summary, "w") as f:
                json.dump(summary, f, indent=1, sort_keys=True)
            print(f"trainer: wrote {out.model} (epoch {summary['kept_epoch']}, the {config.keep}; best val_loss "
                  f"{best_val_loss} at epoch {summary['best_epoch']}), "
                  f"{out.checkpoint}, {out.csv}, {out.summary}; tensorboard --logdir {out.tensorboard}", flush=True)
    finally:
        if scratch:
            shutil.rmtree(scratch, ignore_errors=True)
    return TrainResult(
        model_path=out.model, checkpoint_path=out.checkpoint, summary_path=out.summary, log_dir=out.tensorboard,
        epochs_run=epochs_run, best_val_loss=best_val_loss, precision=policy, strategy=_strategy_name(strategy),
        summary=summary,
    )

