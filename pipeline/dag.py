"""The pipeline's DAG, as data flow: which stage adapter takes which upstream output.

    synthetic.images     -> ingest (only without --data_dir)
    ingest.examples      -> validate, statistics, tune, train, evaluate
    validate             -> tune, train (a gate: they start only after the records passed)
    statistics.prior     -> tune, train, evaluate (the training split's ab prior: the classification head's
                            rebalancing weights, the evaluator's rebalanced AuC)
    tune.best_hparams    -> train.hparams
    train.model          -> evaluate.model, push.model
    evaluate.evaluation  -> push.evaluation (blessing.json)

synthetic only runs when no data source is given; validate is skipped with
ingest.validation=none, tune with tune.enabled=false (train then uses
train.* and the report's defaults).
"""

from __future__ import annotations

from typing import Any

from pipeline import executor
from pipeline.stages import evaluator, example_gen, pusher, statistics, synthetic, trainer, tuner, validator

ADAPTERS = (synthetic, example_gen, validator, statistics, tuner, trainer, evaluator, pusher)
"""The stage adapters in execution order (each module's NAME is the stage's name)."""


def build_stages(config: Any) -> list[executor.Stage]:
    """The pipeline for `config` (a validated pipeline.config.PipelineConfig), in execution order."""
    return [adapter.stage(config) for adapter in ADAPTERS if adapter is not synthetic or not config.data.sources]


def stage_named(config: Any, name: str) -> executor.Stage:
    """One stage of the pipeline for `config`; KeyError naming the valid ones."""
    for stage in build_stages(config):
        if stage.name == name:
            return stage
    raise KeyError(f"no stage {name!r} in this pipeline; the stages are "
                   f"{', '.join(s.name for s in build_stages(config))}.")
