"""tuner: keras-tuner search over the autoencoder variants; the best hyperparameters go to JSON.

Each trial builds one model from hparams.SEARCH_SPACE (family, width,
Model 2's backbone and fusion, head, the regression head's loss, learning
rate, batch size), streams the train and eval splits with the sampled batch size and
reports the objective (default val_mae: val_loss would favour Huber trials,
whose loss is on a smaller scale than MSE's, and cannot compare the heads).
The winner is written with hparams.save, so the trainer reads it with
`--hparams OUT/best_hparams.json`. keras-tuner's own state lives in
OUT/tuner/: re-running the same command resumes, reusing finished trials
and re-running one that was interrupted.

Local, on example_gen's output (--algorithm hyperband uses --epochs as its
max_epochs):

    python -m components.tuner --examples /tmp/ingest --output_dir /tmp/tune \\
        --algorithm random --max_trials 20 --epochs 5 --steps_per_epoch 100 --image_size 224

Classification trials (the head is searched unless pinned, e.g. --fix
head=regression) train against the statistics stage's colour prior, so pass
--prior OUT/statistics/prior.json; their val_mae is the decoded ab's, so
it compares the heads.

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

The package: config (TuneConfig, the settings that are both this CLI and the
pipeline's `tune` section; no TensorFlow), search (the hypermodel, the
keras-tuner classes, tune()), cli (the flags). Importing components.tuner
loads only config; the rest loads on first use.
"""

from __future__ import annotations

from components.lazy import lazy_exports
from components.tuner.config import (  # noqa: F401
    ALGORITHMS, OBJECTIVE_METRICS, RUN_BY_FILE, SETTINGS_FILE, TUNER_PROJECT, TuneConfig, TunerError,
    check_objective,
)

_SEARCH = ("TuneResult", "parse_objective", "distributed_role", "backbone_weights", "load_prior",
           "ColorizationHyperModel", "RecordsTrials", "RandomSearch", "Hyperband", "BayesianOptimization", "TUNERS",
           "tune")
_LAZY = {**{name: "search" for name in _SEARCH}, **{name: "cli" for name in ("_build_parser", "run", "main")}}
"""Public names that need TensorFlow (or the CLI), imported from their module on first use."""

__getattr__, __dir__ = lazy_exports(__name__, globals(), _LAZY)
