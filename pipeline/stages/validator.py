"""validate: check the written records against the schema and the statistics (components.validator)."""

from __future__ import annotations

from typing import Any

from pipeline import executor
from schemas.artifacts import ANOMALIES_FILE

NAME = "validate"


def _sample_rate(config: Any) -> float:
    return 1.0 if config.ingest.validation == "all" else config.ingest.validation_sample_rate


def run(ctx: executor.StageContext) -> dict:
    from components import validator

    with executor.user_errors(validator.ValidationError):
        report = validator.run_validation(ctx.input("examples"), ctx.beam_args, sample_rate=_sample_rate(ctx.config),
                                          stored_size=ctx.config.data.stored_size, report_dir=ctx.output_dir)
    print(validator.format_report(report, ctx.output_dir), flush=True)
    return {"records_read": sum(report["records_read"].values()),
            "records_checked": sum(report["records_checked"].values()), "anomalies": len(report["anomalies"])}


def stage(config: Any) -> executor.Stage:
    return executor.Stage(
        NAME, run, inputs={"examples": "ingest"},
        config=("ingest.validation", "ingest.validation_sample_rate", "data.stored_size"), code=(__name__,),
        skip="ingest.validation is none" if config.ingest.validation == "none" else None, beam=True,
        outputs={"anomalies": ANOMALIES_FILE},
    )
