"""tune: keras-tuner search over the model variants, at the trainer's crop size and pins (components.tuner)."""

from __future__ import annotations

import dataclasses
from typing import Any

from components import settings
from components.tuner import TuneConfig
from pipeline import executor
from schemas.artifacts import BEST_HPARAMS_FILE

NAME = "tune"


def component_config(config: Any, **artifacts: str) -> TuneConfig:
    """The tuner's config: the tune section, with its linked fields taken from the train section."""
    train = config.train
    return settings.narrow(
        config.tune, TuneConfig, image_size=train.image_size, validation_steps=train.validation_steps,
        fixed=train.hparams_overrides(), backbone_weights=train.backbone_weights,
        allow_random_backbone=train.allow_random_backbone, seed=train.seed, **artifacts,
    )


def run(ctx: executor.StageContext) -> dict:
    from components import hparams, loader, models, tuner

    with executor.user_errors(tuner.TunerError, hparams.HparamsError, loader.LoaderError, models.MissingWeightsError):
        result = tuner.tune(component_config(ctx.config, examples=ctx.input("examples"), prior=ctx.input("prior"),
                                             output_dir=ctx.output_dir))
    print(f"tune: best trial {result.trial_id} (val_mae {result.score:.6g}) of {result.completed_trials}: "
          f"{result.hyperparameters}", flush=True)
    return {"best_score": result.score, "trial_id": result.trial_id, "completed_trials": result.completed_trials,
            "hyperparameters": result.hyperparameters}


def stage(config: Any) -> executor.Stage:
    return executor.Stage(
        NAME, run, inputs={"examples": "ingest", "prior": "statistics.prior"}, after=("validate",),
        config=lambda c: dataclasses.asdict(component_config(c)), code=(__name__,),
        skip=None if config.tune.enabled else "tune.enabled is false", outputs={"best_hparams": BEST_HPARAMS_FILE},
    )
