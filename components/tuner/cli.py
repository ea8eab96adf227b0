"""The tuner's command line: TuneConfig's flags (derived from its settings) plus --model."""

from __future__ import annotations

import argparse
import logging
import os
import sys

from components import hparams, settings
from components.tuner.config import TuneConfig, TunerError

DESCRIPTION = (
    "Search the autoencoder variants with keras-tuner and write the best hyperparameters to "
    "OUTPUT_DIR/best_hparams.json (the trainer's --hparams). Re-running the same command resumes the search. "
    "To tune distributed, set KERASTUNER_TUNER_ID (chief, tuner0, tuner1, ...), KERASTUNER_ORACLE_IP and "
    "KERASTUNER_ORACLE_PORT for every process."
)


def _build_parser() -> argparse.ArgumentParser:
    parser = settings.parser(TuneConfig, prog="python -m components.tuner", description=DESCRIPTION)
    parser.add_argument("--model", choices=hparams.FAMILIES, default=None,
                        help="pin the model family, like --fix family=NAME (default: searched)")
    return parser


def run(argv: list[str] | None = None) -> int:
    """CLI entry point; returns the exit status."""
    args = _build_parser().parse_args(argv)
    from components import loader, models
    from components.tuner.search import tune

    try:
        config = settings.from_args(TuneConfig, args)
        if args.model:
            config.fixed["family"] = args.model
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
