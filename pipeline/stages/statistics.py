"""statistics: the training split's ab colour prior from ingest's counts (components.statistics)."""

from __future__ import annotations

import dataclasses
from typing import Any

from components import settings
from pipeline import executor
from schemas.artifacts import PRIOR_FILE, PRIOR_PICTURE_FILE

NAME = "statistics"


def run(ctx: executor.StageContext) -> dict:
    from components import statistics

    config = dataclasses.replace(ctx.config.statistics, examples=ctx.input("examples"), output_dir=ctx.output_dir)
    with executor.user_errors(statistics.StatisticsError):
        summary = statistics.write_prior(config)
    print(f"statistics: the {summary['split']} split's ab prior over {summary['bins']} bins from "
          f"{summary['pixels']:,} pixels; rebalancing weights {summary['weight_min']:.2f}..{summary['weight_max']:.2f}",
          flush=True)
    return {k: summary[k] for k in ("bins", "pixels", "split", "fingerprint", "weight_min", "weight_max")}


def stage(config: Any) -> executor.Stage:
    return executor.Stage(
        NAME, run, inputs={"examples": "ingest"}, config=lambda c: settings.settings_dict(c.statistics),
        code=(__name__,), outputs={"prior": PRIOR_FILE, "picture": PRIOR_PICTURE_FILE},
    )
