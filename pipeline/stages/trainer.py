"""train: fit the model on the streamed examples, with the tuner's hyperparameters when it ran (components.trainer)."""

from __future__ import annotations

import dataclasses
from typing import Any

from components import settings
from pipeline import executor
from schemas.artifacts import MODEL_FILE

NAME = "train"


def run(ctx: executor.StageContext) -> dict:
    from components import hparams, loader, models, trainer

    config = dataclasses.replace(ctx.config.train, examples=ctx.input("examples"), output_dir=ctx.output_dir,
                                 hparams=ctx.input("hparams"), prior=ctx.input("prior"))
    with executor.user_errors(trainer.TrainError, hparams.HparamsError, loader.LoaderError,
                              models.MissingWeightsError, failures=(trainer.TrainingDiverged,)):
        result = trainer.train(config)
    ctx.output("summary", result.summary_path)
    ctx.output("tensorboard", result.log_dir)
    s = result.summary
    return {"model": s["model"], "hparams": s["hparams"], "epochs_run": result.epochs_run,
            "best_epoch": s["best_epoch"], "best_val_loss": result.best_val_loss, "precision": result.precision,
            "strategy": result.strategy, "examples_per_second": s["examples_per_second"],
            "trainable_parameters": s["trainable_parameters"]}


def stage(config: Any) -> executor.Stage:
    return executor.Stage(
        NAME, run, inputs={"examples": "ingest", "hparams": "tune.best_hparams", "prior": "statistics.prior"},
        after=("validate",),
        config=lambda c: settings.settings_dict(c.train), code=(__name__,), outputs={"model": MODEL_FILE},
    )
