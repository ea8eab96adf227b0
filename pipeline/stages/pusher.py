"""push: publish the blessed model into the TF Serving model base path (components.pusher)."""

from __future__ import annotations

import dataclasses
from typing import Any

from components import settings
from pipeline import executor
from schemas import artifacts

NAME = "push"


def run(ctx: executor.StageContext) -> dict:
    from components import pusher

    config = dataclasses.replace(ctx.config.push, model=ctx.input("model"), evaluation=ctx.input("evaluation"),
                                 serving_dir=ctx.config.serving_dir, output=ctx.output_dir)
    with executor.user_errors(pusher.PushError):
        result = pusher.push(config)
    if result.blessed and not result.pushed:
        raise executor.StageError(result.reason, user_error=False)
    if result.pushed:
        ctx.output("version_dir", result.version_dir)
    print(f"push: {result.reason}", flush=True)
    return {"pushed": result.pushed, "blessed": result.blessed, "version": result.version,
            "version_dir": result.version_dir, "reason": result.reason}


def stage(config: Any) -> executor.Stage:
    return executor.Stage(
        NAME, run, inputs={"model": "train.model", "evaluation": "evaluate"},
        config=lambda c: {**settings.settings_dict(c.push), "serving_dir": c.serving_dir}, code=(__name__,),
        outputs={"record": artifacts.PUSH_RECORD_FILE},
    )
