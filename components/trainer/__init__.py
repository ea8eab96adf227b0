"""trainer: fit a colorization autoencoder on streamed LAB TFRecords, with checkpoints, resume and TensorBoard.

Local (hyperparameters from the tuner's JSON, or the report's DEFAULTS without --hparams):

    python -m components.trainer --examples out/ingest --output_dir out/train \\
        --image_size 224 --epochs 50 --hparams out/tuner/best_hparams.json
    tensorboard --logdir out/train/logs/tensorboard

A run killed at any point (even with SIGKILL) and started again with the
same --output_dir resumes after its last finished epoch, with that epoch's
weights and optimizer state. Model 2 on precomputed backbone embeddings:

    python -m components.trainer --examples out/embedded --output_dir out/train2 --model model2 --embeddings

The classification head (Zhang et al. 2016: ab bins, class-rebalanced
cross-entropy, annealed mean) needs the statistics stage's colour prior; a
time budget stops after the epoch that crosses it:

    python -m components.statistics --examples out/ingest --output_dir out/statistics
    python -m components.trainer --examples out/ingest --output_dir out/train_cls --head classification \\
        --prior out/statistics/prior.json --temperature 0.38 --max_minutes 60

Multi-worker (MultiWorkerMirroredStrategy): the same command on every
machine, TF_CONFIG naming the cluster and this machine's task; worker 0 is
the chief and writes --output_dir (shared storage such as gs://), the others
write to temporary dirs:

    TF_CONFIG='{"cluster": {"worker": ["host1:2222", "host2:2222"]}, "task": {"type": "worker", "index": 0}}' \\
        python -m components.trainer --examples gs://bucket/ingest --output_dir gs://bucket/train
    # on host2: the same with "index": 1

Writes under --output_dir: model.keras (the kept epoch's weights, float32; --keep best or last),
checkpoints/best.keras, backup/ (resume state, removed when training ends),
logs/training_log.csv, logs/tensorboard/ (scalars, and each epoch an image of
gray | predicted | truth for a fixed eval batch), train_summary.json.

The package: config (TrainConfig, the settings that are both this CLI and the
pipeline's `train` section; no TensorFlow), precision (dtype policy and
tf.distribute strategy), resume (backup and the CSV log), callbacks, fit
(train()), cli (the flags, derived from TrainConfig). Importing
components.trainer loads only config; the rest loads on first use.
"""

from __future__ import annotations

from components.lazy import lazy_exports
from components.trainer.config import (  # noqa: F401
    BACKUP_DIR, BEST_CHECKPOINT, BF16_CPU_FLAGS, CSV_LOG, DISTRIBUTIONS, EVAL_IMAGES, IMAGE_TAG, IMAGES_RUN,
    MODEL_FILE, PRECISIONS, RANDOM_BACKBONE_WARNING, SUMMARY_FILE, TENSORBOARD_DIR, TrainConfig, TrainError,
    TrainingDiverged, TrainResult,
)

_LAZY = {
    "native_bf16_flags": "precision", "choose_precision": "precision", "strategy_kind": "precision",
    "choose_strategy": "precision",
    "gray_predicted_truth": "callbacks",
    "train": "fit", "_resolve_hparams": "fit", "_backbone_weights": "fit",
    "_parser": "cli", "main": "cli", "DESCRIPTION": "cli",
}
"""Public names that need TensorFlow (or the CLI), imported from their module on first use."""

__getattr__, __dir__ = lazy_exports(__name__, globals(), _LAZY)
