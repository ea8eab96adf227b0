"""The trainer's command line, derived from TrainConfig's settings."""

from __future__ import annotations

import argparse
import logging
import sys

from components import settings
from components.trainer.config import TrainConfig, TrainError, TrainingDiverged


DESCRIPTION = (
    "Train a colorization autoencoder on example_gen's LAB TFRecords; resumes an interrupted run in the same "
    "--output_dir."
)


def _parser() -> argparse.ArgumentParser:
    return settings.parser(TrainConfig, prog="python -m components.trainer", description=DESCRIPTION)


def main(argv: list[str] | None = None) -> int:
    """Parse flags, train; one sentence and exit 2 for a setup mistake, 1 when the loss diverged."""
    config = settings.from_args(TrainConfig, _parser().parse_args(argv))
    from components import hparams as hparams_lib
    from components import loader, models
    from components.trainer.fit import train

    try:
        train(config)
    except TrainingDiverged as e:
        print(f"trainer: {e}", file=sys.stderr)
        return 1
    except (TrainError, hparams_lib.HparamsError, loader.LoaderError, models.MissingWeightsError) as e:
        print(f"trainer: {e}", file=sys.stderr)
        return 2
    return 0


def run_main() -> None:
    """`python -m components.trainer`: warnings on stderr, then main's exit status."""
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    logging.getLogger("components").addHandler(handler)
    sys.exit(main())
