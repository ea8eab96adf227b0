"""The trainer's settings (its CLI and the pipeline's `train` section), errors and output names; no TensorFlow.

Annotations use Optional/Dict so typing.get_type_hints can evaluate them on Python 3.9 too.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Optional

from components import hparams as hparams_lib
from components import settings
from components.settings import artifact, setting
from schemas.artifacts import MODEL_FILE, TRAIN_SUMMARY_FILE  # noqa: F401 - MODEL_FILE: trainer.MODEL_FILE

SUMMARY_FILE = TRAIN_SUMMARY_FILE
"""train_summary.json: the run's facts, next to MODEL_FILE (schemas.artifacts names it)."""

KEEPS = ("best", "last")
LR_DECAYS = ("none", "budget")
PRECISIONS = ("auto", "float32", "mixed_bfloat16", "mixed_float16")
DISTRIBUTIONS = ("auto", "none", "mirrored", "multi_worker")
DEFAULT_PATIENCE = 5
"""EarlyStopping's patience in epochs on val_loss unless --patience says otherwise (none under --lr_decay budget)."""
BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16")
"""CPU flags for native bfloat16 arithmetic. Without them oneDNN emulates bf16: Model 1 at 224, batch 8, on a
2-core AVX-512 Xeon without these flags took about 18 CPU-seconds per step in mixed_bfloat16 against 6.3 in float32."""

BEST_CHECKPOINT = "checkpoints/best.keras"
BACKUP_DIR = "backup"
CSV_LOG = "logs/training_log.csv"
TENSORBOARD_DIR = "logs/tensorboard"
IMAGES_RUN = "eval_images"
IMAGE_TAG = "gray_predicted_truth"
EVAL_IMAGES = 4
RANDOM_BACKBONE_WARNING = "training Model 2 with a randomly initialised backbone: this is not the report's Model 2"

_HPARAMS_NAMES = {"model": "family", "width": "width", "loss": "loss", "learning_rate": "learning_rate",
                  "batch_size": "batch_size", "head": "head", "backbone": "backbone",
                  "fusion": "fusion"}
"""TrainConfig field -> the hyperparameter it pins (components.hparams' names)."""


class TrainError(Exception):
    """A training setup the user can fix; the message is one sentence."""


class TrainingDiverged(TrainError):
    """The training loss became NaN or infinite, so training stopped."""


@dataclasses.dataclass
class TrainConfig:
    """One training run. `model`, `head`, `batch_size`, `width`, `learning_rate` and `loss` override the hyperparameters
    file."""

    examples: str = artifact("input", "example_gen output dir (or a TFRecord glob with {split})")
    output_dir: str = artifact("output", "where model.keras, checkpoints/, backup/, logs/ go")
    hparams: Optional[str] = artifact(
        "input", "the tuner's best hyperparameters JSON (default: the report's settings)", required=False, default=None
    )
    prior: Optional[str] = artifact(
        "input", "the statistics stage's prior.json (needed by the classification head)", required=False, default=None
    )
    model: Optional[str] = setting(None, "model family; overrides the hyperparameters file",
                                choices=hparams_lib.FAMILIES)
    image_size: int = setting(224, "training crop side, a multiple of 8")
    epochs: int = setting(50, "maximum epochs; EarlyStopping may stop sooner")
    steps_per_epoch: Optional[int] = setting(None, "batches per epoch; none: one pass over the train split")
    validation_steps: Optional[int] = setting(None, "eval batches per epoch; none: the whole eval split")
    batch_size: Optional[int] = setting(None, "per-replica batch size; overrides the hyperparameters file")
    width: Optional[float] = setting(None, "channel-width multiplier; overrides the hyperparameters file")
    learning_rate: Optional[float] = setting(None, "Adam's learning rate; overrides the hyperparameters file")
    loss: Optional[str] = setting(None, "the regression head's training loss; overrides the hyperparameters file",
                                  choices=hparams_lib.LOSSES)
    head: Optional[str] = setting(
        None, "output head: regression (tanh ab, the report's) or classification (ab bins with the class-rebalanced "
        "cross-entropy, needs --prior); overrides the hyperparameters file", choices=hparams_lib.HEADS,
    )
    backbone: Optional[str] = setting(
        None, "model2's frozen ImageNet classifier; overrides the hyperparameters file", choices=hparams_lib.BACKBONES
    )
    fusion: Optional[str] = setting(
        None, "what model2 fuses: global (the classifier's 1000 class probabilities, the report's), spatial (two "
        "of its feature maps, resized to the bottleneck) or unet (four of them, at twice the crop's side, joining "
        "the decoder at every scale); overrides the hyperparameters file",
        choices=hparams_lib.FUSIONS,
    )
    temperature: float = setting(
        0.38, "annealed-mean temperature of the classification head, baked into the saved model: lower is more vivid "
        "but blotchier, 1 is the plain mean (desaturated)"
    )
    max_minutes: Optional[float] = setting(
        None, "stop training after this many minutes (a time budget); --keep says which epoch is kept"
    )
    lr_decay: str = setting(
        "none", "learning-rate schedule: none (constant) or budget (linear decay to zero over --max_minutes, "
        "budgeted training: the model stops where the rate has settled it, not mid-swing)", choices=LR_DECAYS,
    )
    keep: str = setting(
        "best", "which epoch model.keras holds: best (lowest val_loss) or last (the final one: for time-budgeted "
        "classification runs, whose validation cross-entropy flattens epochs before the colour stops improving)",
        choices=KEEPS,
    )
    precision: str = setting(
        "auto", "auto: mixed_float16 on GPU, mixed_bfloat16 on CPUs with native bf16, else float32",
        choices=PRECISIONS,
    )
    distribute: str = setting(
        "auto", "auto: multi_worker when TF_CONFIG names >1 worker, mirrored with >1 GPU, else none",
        choices=DISTRIBUTIONS,
    )
    reduce_lr: bool = setting(False, "halve the learning rate when val_loss plateaus")
    patience: Optional[int] = setting(
        None, f"EarlyStopping patience in epochs on val_loss; none: {DEFAULT_PATIENCE}, or no early stopping with "
        "--lr_decay budget (its schedule runs the whole budget down to a zero rate; stopping it early keeps a "
        "half-decayed model)"
    )
    backbone_weights: str = setting(
        "imagenet", "model2's backbone: imagenet (the Keras cache, downloaded through Keras when missing) | "
        "a .h5 path | none (a random backbone)"
    )
    allow_random_backbone: bool = setting(
        False, "if ImageNet weights are missing, train model2 with a random backbone instead of failing"
    )
    embeddings: bool = setting(False, "train model2's head on the records' precomputed image/embedding feature")
    seed: Optional[int] = setting(None, "random seed for weights, shuffling and crops: the same seed "
                                  "trains the same weights on the same machine")
    verbose: Optional[int] = setting(None, "Keras fit verbosity; none: a progress bar on a terminal, else one line "
                                        "per epoch")

    def early_stopping_patience(self) -> int | None:
        """EarlyStopping's patience, None for none: --patience when given, else DEFAULT_PATIENCE, except under
        --lr_decay budget, whose rate only reaches zero at the end of the budget."""
        if self.patience is not None:
            return self.patience
        return None if self.lr_decay == "budget" else DEFAULT_PATIENCE

    def hparams_overrides(self) -> dict[str, Any]:
        """The hyperparameters this run pins, in components.hparams' names (family from `model`)."""
        pinned = {name: getattr(self, field) for field, name in _HPARAMS_NAMES.items()}
        return {name: value for name, value in pinned.items() if value is not None}

    def validate(self, prefix: str = "--") -> None:
        """Raise TrainError naming `prefix + field` (--epochs on the CLI, train.epochs in the pipeline)."""
        try:
            settings.check_choices(self, prefix)
        except settings.SettingsError as e:
            raise TrainError(str(e)) from None
        if self.image_size < 8 or self.image_size % 8:
            raise TrainError(
                f"{prefix}image_size must be a positive multiple of 8 (the models downsample by 8), "
                f"got {self.image_size}."
            )
        if self.epochs < 1:
            raise TrainError(f"{prefix}epochs must be at least 1, got {self.epochs}.")
        if self.seed is not None and self.seed < 0:
            raise TrainError(f"{prefix}seed must be at least 0, got {self.seed}.")
        if self.patience is not None and self.patience < 0:
            raise TrainError(f"{prefix}patience must be at least 0, got {self.patience}.")
        for name in ("steps_per_epoch", "validation_steps", "batch_size"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise TrainError(f"{prefix}{name} must be at least 1, got {value}.")
        for name in ("width", "learning_rate", "temperature", "max_minutes"):
            value = getattr(self, name)
            if value is not None and not value > 0:
                raise TrainError(f"{prefix}{name} must be positive, got {value}.")
        if self.lr_decay == "budget" and self.max_minutes is None:
            raise TrainError(f"{prefix}lr_decay budget decays the learning rate over the time budget; set "
                             f"{prefix}max_minutes too.")
        if not str(self.backbone_weights or "").strip():
            raise TrainError(
                f"{prefix}backbone_weights is empty; use imagenet, a .h5 path, or none for a random backbone."
            )


@dataclasses.dataclass
class TrainResult:
    """Where the run wrote its outputs and how it went (the same facts as SUMMARY_FILE)."""

    model_path: str
    checkpoint_path: str
    summary_path: str
    log_dir: str
    epochs_run: int
    best_val_loss: Optional[float]
    precision: str
    strategy: str
    summary: dict[str, Any]
