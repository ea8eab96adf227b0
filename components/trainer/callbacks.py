"""The trainer's Keras callbacks: resumable early stopping, best checkpoint, NaN stop, throughput, time budget, eval
images."""

from __future__ import annotations

import time

import keras
import numpy as np
import tensorflow as tf

from components import loader
from components.trainer.config import IMAGE_TAG



class _ResumableEarlyStopping(keras.callbacks.EarlyStopping):
    """EarlyStopping that, on resume, remembers the best val_loss and patience used before the interruption."""

    def __init__(self, *, resume_best: float | None, resume_wait: int, **kwargs):
        super().__init__(**kwargs)
        self._resume_best, self._resume_wait = resume_best, resume_wait

    def on_train_begin(self, logs=None):
        super().on_train_begin(logs)
        if self._resume_best is not None:
            self.best, self.wait = self._resume_best, self._resume_wait


class _KeptCheckpoint(keras.callbacks.ModelCheckpoint):
    """ModelCheckpoint of `saved` (the end-to-end model when the head is what trains): the epoch with the lowest
    val_loss when `keep` is "best", every epoch (so the last) when it is "last"."""

    def __init__(self, filepath: str, saved: keras.Model, keep: str = "best", **kwargs):
        super().__init__(filepath, monitor="val_loss", save_best_only=keep == "best", **kwargs)
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


class _TimeBudget(keras.callbacks.Callback):
    """Stop training after the epoch during which `minutes` have passed since training began (in this process: a
    resumed run starts a new budget). Under MultiWorkerMirroredStrategy the workers vote each epoch, and all stop
    after the first epoch whose end finds the budget spent on any of them.

    With `decay`, each epoch starts at the learning rate base * (1 - spent share of the budget): linear decay to
    zero over the budget, the schedule that does best when training is cut by a budget (Li, Yumer & Ramanan,
    *Budgeted Training*, ICLR 2020). Without it the last epochs of a noisy loss, such as the class-rebalanced
    cross-entropy, land wherever the constant rate leaves them. Workers use the mean of their clocks."""

    def __init__(self, minutes: float, strategy: tf.distribute.Strategy | None = None, decay: bool = False):
        super().__init__()
        self._seconds = 60.0 * float(minutes)
        self._strategy = strategy
        self._decay = decay
        self.stopped_after: int | None = None
        """The last epoch trained (0-based) when the budget stopped training, else None."""

    def on_train_begin(self, logs=None):
        self._start = time.monotonic()
        if self._decay:
            self._base = float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate))

    def _across_workers(self, value: float, reduction: str) -> float:
        if isinstance(self._strategy, tf.distribute.MultiWorkerMirroredStrategy):
            votes = self._strategy.run(lambda: tf.constant(float(value)))
            return float(self._strategy.reduce(reduction, votes, axis=None))
        return value

    def _spent(self) -> bool:
        spent = time.monotonic() - self._start >= self._seconds
        return self._across_workers(float(spent), "SUM") > 0.0  # spent on any worker

    def on_epoch_begin(self, epoch, logs=None):
        if self._decay:
            share = self._across_workers((time.monotonic() - self._start) / self._seconds, "MEAN")
            self.model.optimizer.learning_rate = self._base * max(0.0, 1.0 - share)

    def on_epoch_end(self, epoch, logs=None):
        if self._spent():
            self.model.stop_training = True
            self.stopped_after = epoch


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

