"""trainer: fit a colorization autoencoder on streamed LAB TFRecords, with checkpoints, resume and TensorBoard.

Local (hyperparameters from the tuner's JSON, or the report's DEFAULTS without --hparams):

    python -m components.trainer --examples out/ingest --output_dir out/train \\
        --image_size 224 --epochs 50 --hparams out/tuner/best_hparams.json
    tensorboard --logdir out/train/logs/tensorboard

A run killed at any point (even with SIGKILL) and started again with the
same --output_dir resumes after its last finished epoch, with that epoch's
weights and optimizer state. Model 2 on precomputed backbone embeddings:

    python -m components.trainer --examples out/embedded --output_dir out/train2 --model model2 --embeddings

Multi-worker (MultiWorkerMirroredStrategy): the same command on every
machine, TF_CONFIG naming the cluster and this machine's task; worker 0 is
the chief and writes --output_dir (shared storage such as gs://), the others
write to temporary dirs:

    TF_CONFIG='{"cluster": {"worker": ["host1:2222", "host2:2222"]}, "task": {"type": "worker", "index": 0}}' \\
        python -m components.trainer --examples gs://bucket/ingest --output_dir gs://bucket/train
    # on host2: the same with "index": 1

Writes under --output_dir: model.keras (the best epoch's weights, float32),
checkpoints/best.keras, backup/ (resume state, removed when training ends),
logs/training_log.csv, logs/tensorboard/ (scalars, and each epoch an image of
gray | predicted | truth for a fixed eval batch), train_summary.json.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import dataclasses
import io
import json
import logging
import math
import os
import posixpath
import shutil
import sys
import tempfile
import time
from typing import Any, Iterator, NamedTuple

import keras
import numpy as np
import tensorflow as tf

import schemas
from schemas.artifacts import MODEL_FILE
from components import hparams as hparams_lib
from components import loader, models

PRECISIONS = ("auto", "float32", "mixed_bfloat16", "mixed_float16")
DISTRIBUTIONS = ("auto", "none", "mirrored", "multi_worker")
BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16")
"""CPU flags for native bfloat16 arithmetic. Without them oneDNN emulates bf16: Model 1 at 224, batch 8, on a
2-core AVX-512 Xeon without these flags took about 18 CPU-seconds per step in mixed_bfloat16 against 6.3 in float32."""

BEST_CHECKPOINT = "checkpoints/best.keras"
BACKUP_DIR = "backup"
CSV_LOG = "logs/training_log.csv"
TENSORBOARD_DIR = "logs/tensorboard"
IMAGES_RUN = "eval_images"
SUMMARY_FILE = "train_summary.json"
IMAGE_TAG = "gray_predicted_truth"
EVAL_IMAGES = 4
RANDOM_BACKBONE_WARNING = "training Model 2 with a randomly initialised backbone: this is not the report's Model 2"

_log = logging.getLogger("components.trainer")  # also when run as __main__


class TrainError(Exception):
    """A training setup the user can fix; the message is one sentence."""


class TrainingDiverged(TrainError):
    """The training loss became NaN or infinite, so training stopped."""


@dataclasses.dataclass
class TrainConfig:
    """One training run. `model`, `batch_size`, `width`, `learning_rate` and `loss` override the hyperparameters file."""

    examples: str
    output_dir: str
    model: str | None = None
    image_size: int = 224
    epochs: int = 50
    steps_per_epoch: int | None = None
    validation_steps: int | None = None
    hparams: str | None = None
    batch_size: int | None = None
    width: float | None = None
    learning_rate: float | None = None
    loss: str | None = None
    precision: str = "auto"
    distribute: str = "auto"
    reduce_lr: bool = False
    patience: int = 5
    backbone_weights: str | None = None
    """"imagenet" (the default for model2, read from the Keras cache), a local .h5 path, or "none"."""
    allow_random_backbone: bool = False
    embeddings: bool = False
    seed: int | None = None
    verbose: int | None = None
    """Keras fit verbosity; None: a progress bar on a terminal, one line per epoch otherwise."""

    def validate(self) -> None:
        """Raise TrainError for values no run could use."""
        if self.model is not None and self.model not in models.FAMILIES:
            raise TrainError(f"model must be one of {list(models.FAMILIES)}, got {self.model!r}.")
        if self.image_size < 8 or self.image_size % 8:
            raise TrainError(f"image_size must be a positive multiple of 8 (the models downsample by 8), got {self.image_size}.")
        if self.epochs < 1 or self.patience < 0:
            raise TrainError(f"epochs must be at least 1 and patience at least 0, got {self.epochs} and {self.patience}.")
        for name in ("steps_per_epoch", "validation_steps", "batch_size"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise TrainError(f"{name} must be at least 1, got {value}.")
        if self.precision not in PRECISIONS:
            raise TrainError(f"precision must be one of {list(PRECISIONS)}, got {self.precision!r}.")
        if self.distribute not in DISTRIBUTIONS:
            raise TrainError(f"distribute must be one of {list(DISTRIBUTIONS)}, got {self.distribute!r}.")


@dataclasses.dataclass
class TrainResult:
    """Where the run wrote its outputs and how it went (the same facts as train_summary.json)."""

    model_path: str
    checkpoint_path: str
    summary_path: str
    log_dir: str
    epochs_run: int
    best_val_loss: float | None
    precision: str
    strategy: str
    summary: dict[str, Any]


# ---------------------------------------------------------------- precision and distribution


def native_bf16_flags(cpuinfo_path: str = "/proc/cpuinfo") -> list[str]:
    """The BF16_CPU_FLAGS this CPU has (empty: oneDNN would emulate bfloat16)."""
    try:
        with open(cpuinfo_path) as f:
            text = f.read()
    except OSError:
        return []
    flags: set[str] = set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "flags":
            flags.update(value.split())
    return sorted(set(BF16_CPU_FLAGS) & flags)


def choose_precision(
    requested: str = "auto", *, cpuinfo_path: str = "/proc/cpuinfo", gpus: int | None = None
) -> tuple[str, str]:
    """The Keras dtype policy to train with, and why.

    auto: mixed_float16 when a GPU is visible; mixed_bfloat16 on a CPU with
    native bf16 (avx512_bf16 or amx_bf16 in `cpuinfo_path`); float32
    otherwise, where bf16 would be emulated and slower.
    """
    if requested not in PRECISIONS:
        raise TrainError(f"precision must be one of {list(PRECISIONS)}, got {requested!r}.")
    if requested != "auto":
        return requested, "requested"
    if gpus is None:
        gpus = len(tf.config.list_physical_devices("GPU"))
    if gpus:
        return "mixed_float16", f"{gpus} GPU(s) visible: float16 compute, float32 weights"
    native = native_bf16_flags(cpuinfo_path)
    if native:
        return "mixed_bfloat16", f"no GPU; the CPU has {' and '.join(native)} (native bfloat16)"
    return "float32", "no GPU and the CPU lacks avx512_bf16/amx_bf16, so bfloat16 would be emulated and slower"


def _cluster(tf_config: str | None) -> dict[str, list[str]]:
    """The "cluster" of a TF_CONFIG JSON; empty when unset."""
    if not tf_config:
        return {}
    try:
        parsed = json.loads(tf_config)
    except json.JSONDecodeError as e:
        raise TrainError(f"TF_CONFIG is not valid JSON ({e}).") from None
    return (parsed.get("cluster") if isinstance(parsed, dict) else None) or {}


def strategy_kind(requested: str = "auto", *, tf_config: str | None = None, gpus: int | None = None) -> str:
    """"multi_worker", "mirrored" or "none" for a --distribute value.

    auto: multi_worker when `tf_config` (TF_CONFIG JSON) names more than one
    worker, mirrored with more than one local GPU, else none.
    """
    if requested not in DISTRIBUTIONS:
        raise TrainError(f"distribute must be one of {list(DISTRIBUTIONS)}, got {requested!r}.")
    if requested != "auto":
        return requested
    cluster = _cluster(tf_config)
    if sum(len(cluster.get(kind, [])) for kind in ("chief", "worker")) > 1:
        return "multi_worker"
    gpus = len(tf.config.list_physical_devices("GPU")) if gpus is None else gpus
    return "mirrored" if gpus > 1 else "none"


def choose_strategy(requested: str = "auto", *, tf_config: str | None = None) -> tf.distribute.Strategy:
    """The tf.distribute strategy for `strategy_kind`; `tf_config` defaults to the environment's TF_CONFIG.

    MultiWorkerMirroredStrategy itself reads TF_CONFIG from the environment,
    and must be created before anything else runs on TensorFlow.
    """
    if tf_config is None:
        tf_config = os.environ.get("TF_CONFIG")
    kind = strategy_kind(requested, tf_config=tf_config)
    if kind == "multi_worker":
        return tf.distribute.MultiWorkerMirroredStrategy()
    if kind == "mirrored":
        return tf.distribute.MirroredStrategy()
    return tf.distribute.get_strategy()


def _worker(strategy: tf.distribute.Strategy) -> tuple[bool, int]:
    """(is_chief, task id) under the Keras multi-worker convention: the chief, or worker 0 when there is none."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy) or resolver is None:
        return True, 0
    task_type, task_id = resolver.task_type, resolver.task_id or 0
    if task_type is None:
        return True, 0
    has_chief = "chief" in resolver.cluster_spec().as_dict()
    return task_type == "chief" or (task_type == "worker" and task_id == 0 and not has_chief), task_id


def _strategy_name(strategy: tf.distribute.Strategy) -> str:
    if isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        return "MultiWorkerMirroredStrategy"  # the class is CollectiveAllReduceStrategy
    if isinstance(strategy, tf.distribute.MirroredStrategy):
        return "MirroredStrategy"
    return "default"


@contextlib.contextmanager
def _global_policy(name: str) -> Iterator[None]:
    previous = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy(name)
    try:
        yield
    finally:
        keras.mixed_precision.set_global_policy(previous)


# ---------------------------------------------------------------- resume state


def _resume_epoch(backup_dir: str) -> int:
    """The epoch BackupAndRestore will resume at: 0 for a fresh run."""
    path = posixpath.join(backup_dir, "training_metadata.json")
    if not tf.io.gfile.exists(path):
        return 0
    try:
        with tf.io.gfile.GFile(path) as f:
            return int(json.load(f)["epoch"])
    except (ValueError, KeyError, TypeError):
        return 0


def _read_log(path: str) -> list[dict[str, str]]:
    if not tf.io.gfile.exists(path):
        return []
    with tf.io.gfile.GFile(path) as f:
        return list(csv.DictReader(io.StringIO(f.read())))


def _trim_log(path: str, keep_before: int) -> None:
    """Drop logged epochs >= keep_before: those the resumed (or fresh) run will train again."""
    rows = _read_log(path)
    kept = [row for row in rows if int(row["epoch"]) < keep_before]
    if len(kept) == len(rows):
        return
    if not kept:
        tf.io.gfile.remove(path)
        return
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=list(rows[0]), lineterminator="\n")
    writer.writeheader()
    writer.writerows(kept)
    with tf.io.gfile.GFile(path, "w") as f:
        f.write(out.getvalue())


def _best(rows: list[dict[str, str]]) -> tuple[float | None, int | None]:
    """(lowest finite val_loss, its epoch) among logged epochs."""
    best, best_epoch = None, None
    for row in rows:
        try:
            value = float(row.get("val_loss", "nan"))
        except ValueError:
            continue
        if math.isfinite(value) and (best is None or value < best):
            best, best_epoch = value, int(row["epoch"])
    return best, best_epoch


# ---------------------------------------------------------------- callbacks


class _ResumableEarlyStopping(keras.callbacks.EarlyStopping):
    """EarlyStopping that, on resume, remembers the best val_loss and patience used before the interruption."""

    def __init__(self, *, resume_best: float | None, resume_wait: int, **kwargs):
        super().__init__(**kwargs)
        self._resume_best, self._resume_wait = resume_best, resume_wait

    def on_train_begin(self, logs=None):
        super().on_train_begin(logs)
        if self._resume_best is not None:
            self.best, self.wait = self._resume_best, self._resume_wait


class _BestCheckpoint(keras.callbacks.ModelCheckpoint):
    """ModelCheckpoint(save_best_only) of `saved` (the end-to-end model when the head is what trains)."""

    def __init__(self, filepath: str, saved: keras.Model, **kwargs):
        super().__init__(filepath, monitor="val_loss", save_best_only=True, **kwargs)
        self._saved = saved

    def set_model(self, model):
        super().set_model(self._saved)


class _NaNStop(keras.callbacks.TerminateOnNaN):
    """TerminateOnNaN that remembers where the loss stopped being finite."""

    def __init__(self):
        super().__init__()
        self.epoch = 0
        self.stopped_at: tuple[int, int] | None = None

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

    def on_batch_end(self, batch, logs=None):
        loss = (logs or {}).get("loss")
        if loss is not None and not np.isfinite(loss) and self.stopped_at is None:
            self.stopped_at = (self.epoch, batch)
        super().on_batch_end(batch, logs)


class _Throughput(keras.callbacks.Callback):
    """Training examples per second, leaving out the first epoch of this process (tracing) when there are more."""

    def __init__(self, global_batch: int):
        super().__init__()
        self._global_batch = global_batch
        self._epochs: list[tuple[int, float]] = []

    def on_epoch_begin(self, epoch, logs=None):
        self._start, self._batches = time.perf_counter(), 0

    def on_train_batch_end(self, batch, logs=None):
        self._batches, self._last = batch + 1, time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        if self._batches:
            self._epochs.append((self._batches, self._last - self._start))

    def examples_per_second(self) -> float | None:
        timed = self._epochs[1:] or self._epochs
        seconds = sum(s for _, s in timed)
        return round(sum(b for b, _ in timed) * self._global_batch / seconds, 2) if seconds > 0 else None


def gray_predicted_truth(l: np.ndarray, predicted_ab: np.ndarray, true_ab: np.ndarray) -> tf.Tensor:
    """RGB panels [B, S, 3S, 3] in [0, 1]: the L input as gray | L + predicted ab | L + true ab (ab in ab/128 units)."""
    from components.color import lab_to_rgb

    l = tf.convert_to_tensor(l, tf.float32)
    gray = tf.repeat(l / 100.0, 3, axis=-1)
    predicted = lab_to_rgb(tf.concat([l, tf.cast(predicted_ab, tf.float32) * loader.AB_SCALE], -1))
    truth = lab_to_rgb(tf.concat([l, tf.cast(true_ab, tf.float32) * loader.AB_SCALE], -1))
    return tf.concat([gray, predicted, truth], axis=2)


class _EvalImages(keras.callbacks.Callback):
    """Each epoch, a TensorBoard image of gray | predicted | truth for a fixed eval batch."""

    def __init__(self, log_dir: str, batch: tuple[np.ndarray, np.ndarray], predictor: keras.Model):
        super().__init__()
        self._l, self._ab = batch
        self._predictor = predictor
        self._writer = tf.summary.create_file_writer(log_dir)

    def on_epoch_end(self, epoch, logs=None):
        predicted = self._predictor(self._l, training=False)
        with self._writer.as_default():
            tf.summary.image(
                IMAGE_TAG, gray_predicted_truth(self._l, predicted, self._ab), step=epoch,
                max_outputs=len(self._l), description="fixed eval batch: gray input | predicted | truth",
            )
        self._writer.flush()

    def on_train_end(self, logs=None):
        self._writer.close()


# ---------------------------------------------------------------- the run


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
    values = hparams_lib.load(config.hparams)
    if config.model:
        values["family"] = config.model
    for name in ("batch_size", "width", "learning_rate", "loss"):
        if getattr(config, name) is not None:
            values[name] = getattr(config, name)
    return hparams_lib.validate(values)


def _backbone_weights(config: TrainConfig, family: str) -> str | None:
    if family != "model2":
        return None
    weights = config.backbone_weights or "imagenet"
    if weights.lower() == "none":
        _log.warning("%s (--backbone_weights none).", RANDOM_BACKBONE_WARNING)
        return None
    return weights


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
                hp["family"], config.image_size, width=hp["width"], backbone=hp["backbone"], weights=weights
            )
            return model, model
        parts = models.build_model2_parts(config.image_size, hp["width"], hp["backbone"], weights)
        return parts.head, parts.end_to_end
    except models.MissingWeightsError:
        raise
    except (ValueError, FileNotFoundError) as e:
        raise TrainError(str(e)) from None


def _build_with_backbone_fallback(
    config: TrainConfig, hp: dict[str, Any], weights: str | None
) -> tuple[keras.Model, keras.Model, str | None]:
    """_build, retried with a random backbone when ImageNet weights are missing and the user allowed that."""
    try:
        return (*_build(config, hp, weights), weights)
    except models.MissingWeightsError:
        if not config.allow_random_backbone:
            raise
        _log.warning("%s (--allow_random_backbone; ImageNet weights are not in the Keras cache).", RANDOM_BACKBONE_WARNING)
        return (*_build(config, hp, None), None)


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
    """Save the best checkpoint's weights as a float32 end-to-end model, compiled, atomically."""
    with _global_policy("float32"):
        model = models.build_model(
            hp["family"], config.image_size, width=hp["width"], backbone=hp["backbone"], weights=weights
        )
        if tf.io.gfile.exists(checkpoint):
            model.load_weights(checkpoint)
        else:
            model.set_weights(fallback.get_weights())
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
    if config.embeddings and hp["family"] != "model2":
        raise TrainError("--embeddings trains Model 2's head on precomputed embeddings; add --model model2.")
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
    weights = _backbone_weights(config, hp["family"])

    print(f"trainer: {hp['family']} width {hp['width']:g}, global batch {global_batch}, precision {policy} "
          f"({policy_reason}), {_strategy_name(strategy)} strategy with {replicas} replica(s); "
          f"writing to {config.output_dir}", flush=True)
    if initial_epoch:
        print(f"trainer: resuming from epoch {initial_epoch + 1} (backup in {out.backup})", flush=True)

    try:
        with _global_policy(policy), strategy.scope():
            trained, end_to_end, weights = _build_with_backbone_fallback(config, hp, weights)
            models.compile_model(trained, learning_rate=hp["learning_rate"], loss=hp["loss"])
            if multi_worker:
                _work_around_keras_multi_worker_bugs(trained, train_ds)
            nan_stop, throughput = _NaNStop(), _Throughput(global_batch)
            callbacks = [
                nan_stop,
                throughput,
                _BestCheckpoint(mine.checkpoint, end_to_end, initial_value_threshold=resume_best),
                _ResumableEarlyStopping(
                    monitor="val_loss", patience=config.patience, restore_best_weights=True, resume_best=resume_best,
                    resume_wait=0 if resume_best is None else initial_epoch - 1 - resume_best_epoch,
                ),
                keras.callbacks.TensorBoard(mine.tensorboard, write_graph=False, update_freq="epoch"),
                _EvalImages(posixpath.join(mine.tensorboard, IMAGES_RUN), eval_batch, end_to_end),
                keras.callbacks.CSVLogger(mine.csv, append=True),
            ]
            if config.reduce_lr:
                callbacks.append(keras.callbacks.ReduceLROnPlateau(
                    monitor="val_loss", factor=0.5, patience=max(1, config.patience // 2), min_lr=1e-6, verbose=1
                ))
            callbacks.append(keras.callbacks.BackupAndRestore(mine.backup))
            trained.fit(
                train_ds, validation_data=val_ds, epochs=config.epochs, steps_per_epoch=config.steps_per_epoch,
                validation_steps=config.validation_steps, callbacks=callbacks, verbose=verbose, shuffle=False,
            )
        if nan_stop.stopped_at is not None:
            epoch, batch = nan_stop.stopped_at
            raise TrainingDiverged(
                f"training stopped: the loss became NaN at epoch {epoch + 1} (batch {batch + 1}); lower the "
                f"learning rate ({hp['learning_rate']:g}, set in --hparams) or check the data."
            )

        rows = _read_log(mine.csv)
        best_val_loss, best_epoch = _best(rows)
        epochs_run = max((int(r["epoch"]) + 1 for r in rows), default=0)
        summary = {
            "model": hp["family"],
            "hparams": hp,
            "image_size": config.image_size,
            "precision": {"policy": policy, "reason": policy_reason},
            "strategy": {"name": _strategy_name(strategy), "replicas": replicas, "global_batch_size": global_batch},
            "epochs_requested": config.epochs,
            "epochs_run": epochs_run,
            "resumed_from_epoch": initial_epoch,
            "best_val_loss": best_val_loss,
            "best_epoch": None if best_epoch is None else best_epoch + 1,
            "trainable_parameters": models.trainable_parameters(end_to_end),
            "examples_per_second": throughput.examples_per_second(),
            "backbone_weights": weights if hp["family"] == "model2" else None,
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
            print(f"trainer: wrote {out.model} (best val_loss {best_val_loss} at epoch {summary['best_epoch']}), "
                  f"{out.checkpoint}, {out.csv}, {out.summary}; tensorboard --logdir {out.tensorboard}", flush=True)
    finally:
        if scratch:
            shutil.rmtree(scratch, ignore_errors=True)
    return TrainResult(
        model_path=out.model, checkpoint_path=out.checkpoint, summary_path=out.summary, log_dir=out.tensorboard,
        epochs_run=epochs_run, best_val_loss=best_val_loss, precision=policy, strategy=_strategy_name(strategy),
        summary=summary,
    )


# ---------------------------------------------------------------- CLI


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m components.trainer",
        description="Train a colorization autoencoder on example_gen's LAB TFRecords; resumes an interrupted "
        "run in the same --output_dir.",
    )
    p.add_argument("--examples", required=True, help="example_gen output dir (or a TFRecord glob with {split})")
    p.add_argument("--output_dir", required=True, help="where model.keras, checkpoints/, backup/, logs/ go")
    p.add_argument("--model", choices=models.FAMILIES, help="model family; overrides the hyperparameters file")
    p.add_argument("--image_size", type=int, default=224, help="training crop side, a multiple of 8 (default 224)")
    p.add_argument("--epochs", type=int, default=50, help="maximum epochs; EarlyStopping may stop sooner (default 50)")
    p.add_argument("--steps_per_epoch", type=int, help="batches per epoch (default: one pass over the train split)")
    p.add_argument("--validation_steps", type=int, help="eval batches per epoch (default: the whole eval split)")
    p.add_argument("--hparams", help="the tuner's best hyperparameters JSON (default: the report's settings)")
    p.add_argument("--batch_size", type=int, help="per-replica batch size; overrides the hyperparameters file")
    p.add_argument("--width", type=float, help="channel-width multiplier; overrides the hyperparameters file")
    p.add_argument("--learning_rate", type=float, help="Adam's learning rate; overrides the hyperparameters file")
    p.add_argument("--loss", choices=models.LOSSES, help="training loss; overrides the hyperparameters file")
    p.add_argument("--precision", choices=PRECISIONS, default="auto",
                   help="auto: mixed_float16 on GPU, mixed_bfloat16 on CPUs with native bf16, else float32")
    p.add_argument("--distribute", choices=DISTRIBUTIONS, default="auto",
                   help="auto: multi_worker when TF_CONFIG names >1 worker, mirrored with >1 GPU, else none")
    p.add_argument("--reduce_lr", action="store_true", help="halve the learning rate when val_loss plateaus")
    p.add_argument("--patience", type=int, default=5, help="EarlyStopping patience in epochs on val_loss (default 5)")
    p.add_argument("--backbone_weights",
                   help="model2's backbone: imagenet (default, from the Keras cache), a local .h5 path, or none")
    p.add_argument("--allow_random_backbone", action="store_true",
                   help="if ImageNet weights are missing, train model2 with a random backbone instead of failing")
    p.add_argument("--embeddings", action="store_true",
                   help="train model2's head on the records' precomputed image/embedding feature")
    p.add_argument("--seed", type=int, help="random seed for weights, shuffling and crops")
    return p


def main(argv: list[str] | None = None) -> int:
    """Parse flags, train; one sentence and exit 2 for a setup mistake, 1 when the loss diverged."""
    args = _parser().parse_args(argv)
    config = TrainConfig(**vars(args))
    try:
        train(config)
    except TrainingDiverged as e:
        print(f"trainer: {e}", file=sys.stderr)
        return 1
    except (TrainError, hparams_lib.HparamsError, loader.LoaderError, models.MissingWeightsError) as e:
        print(f"trainer: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    _handler = logging.StreamHandler()
    _handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    logging.getLogger("components").addHandler(_handler)
    sys.exit(main())
