"""evaluate: the model against gray and the last pushed model on the test split; the blessing (components.evaluator)."""

from __future__ import annotations

import dataclasses
from typing import Any

from components import settings
from pipeline import executor
from pipeline import manifest as mf
from schemas import artifacts

NAME = "evaluate"
_SHOWN_METRICS = ("psnr", "ssim", "ab_mse", "colorfulness", "colorfulness_truth", "colorfulness_diff",
                  "colorfulness_ratio", "auc", "auc_rebalanced")


def last_pushed(config: Any) -> str:
    """The TF Serving model base path the pusher publishes to: the evaluator's baseline."""
    return f"{config.serving_dir.rstrip('/')}/{config.push.model_name}"


def run(ctx: executor.StageContext) -> dict:
    from components import evaluator

    config = dataclasses.replace(
        ctx.config.evaluate, model=ctx.input("model"), examples=ctx.input("examples"), prior=ctx.input("prior"),
        output_dir=ctx.output_dir,
        baseline_model=last_pushed(ctx.config), baseline_optional=True)
    with executor.user_errors(evaluator.EvaluationError):
        result = evaluator.evaluate(config)
    failed = result.failed_checks
    m = result.metrics
    shown = {name: ({k: m[name][k] for k in _SHOWN_METRICS if k in m[name]} if m[name] else None)
             for name in ("model", "gray", "baseline")}
    print(f"evaluate: {m['images']} {m['split']} images; PSNR model {shown['model']['psnr']:.2f} dB vs gray "
          f"{shown['gray']['psnr']:.2f} dB; colorfulness diff model {shown['model']['colorfulness_diff']:.2f} vs gray "
          f"{shown['gray']['colorfulness_diff']:.2f}; {result.reason}", flush=True)
    return {"blessed": result.blessed, "reason": result.reason, "failed_checks": failed, "images": m["images"],
            "baseline_model": m["baseline_model"], **shown}


def _external(config: Any) -> dict[str, str]:
    historical = config.evaluate.historical_dir
    return {"historical_dir": mf.fingerprint_tree(historical)} if historical else {}


def stage(config: Any) -> executor.Stage:
    """The last pushed model is left out of the fingerprint: otherwise every run would evaluate again against the
    model it has just pushed."""
    return executor.Stage(
        NAME, run, inputs={"model": "train.model", "examples": "ingest", "prior": "statistics.prior"},
        config=lambda c: settings.settings_dict(c.evaluate), code=(__name__,), external_inputs=_external,
        outputs={"metrics": artifacts.METRICS_FILE, "blessing": artifacts.BLESSING_FILE,
                 "grid": artifacts.GRID_FILE},
    )
