"""The local runner: the whole pipeline on this machine, cached, with a manifest per run.

    python -m pipeline.run --runner=DirectRunner          # the quick preset on the built-in synthetic set
    python -m pipeline.run --preset report-model1 --data_dir lfw=/data/lfw --output_dir out/report1 \\
        --runner=DirectRunner --direct_num_workers=2 --direct_running_mode=multi_processing
    python -m pipeline.run --no-cache                      # run every stage again

Stages: synthetic (only without --data_dir) -> ingest -> validate -> tune ->
train -> evaluate -> push. Each run writes OUT/runs/<run_id>/manifest.json and
OUT/runs/<run_id>/report.html, the page to open first (pipeline/report.py;
OUT/runs/latest names the newest run); a stage whose inputs, config and code are
unchanged since a successful execution comes from the cache, so re-running
after a failure continues from the failed stage. Every flag the pipeline does
not know is a Beam option for the ingest and validate stages. Exit status: 0
done, 2 a mistake the user can fix (one sentence names it), 1 another failure.
"""

from __future__ import annotations

import os
import sys
import warnings
from typing import Sequence

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# google-cloud clients (pulled in by Beam) warn about Python versions at import; not this run's business.
warnings.filterwarnings("ignore", message="You are using a Python version", category=FutureWarning)

from pipeline import config as config_lib  # noqa: E402
from pipeline import dag, executor  # noqa: E402
from pipeline import manifest as mf  # noqa: E402
from pipeline import report  # noqa: E402
from schemas.artifacts import MODELS_CONFIG_FILE  # noqa: E402


def summary(manifest: mf.Manifest, cfg: config_lib.PipelineConfig, report_path: str | None = None) -> str:
    """What a person needs after a successful run: the report first, then where things are and how to serve and
    query the model."""
    stages = manifest.stages
    lines = [f"pipeline: run {manifest.run_id} done in {manifest.duration_s:.0f} s "
             f"({sum(1 for s in stages.values() if s.cached)} of {len(stages)} stages from cache)"]
    if report_path:
        lines.append(f"  {'report':<14}{report_path}   <- open this first")
    lines.append(f"  {'manifest':<14}{manifest.path}")

    def line(stage: str, what: str, key: str) -> None:
        uri = stages[stage].outputs.get(key) if stage in stages else None
        if uri:
            lines.append(f"  {what:<14}{uri}")

    line("ingest", "examples", "examples")
    line("ingest", "statistics", "statistics")
    line("statistics", "colour prior", "prior")
    line("tune", "best hparams", "best_hparams")
    line("train", "model", "model")
    line("evaluate", "metrics", "metrics")
    line("evaluate", "test grid", "grid")
    evaluation = stages.get("evaluate")
    if evaluation and evaluation.metrics.get("model"):
        m, g = evaluation.metrics["model"], evaluation.metrics["gray"]
        ratio = m["colorfulness"] / m["colorfulness_truth"] if m["colorfulness_truth"] else None
        lines.append(f"  {'result':<14}PSNR {m['psnr']:.2f} dB (gray {g['psnr']:.2f}), colorfulness "
                     f"{m['colorfulness']:.1f} vs truth {m['colorfulness_truth']:.1f}"
                     + (f" ({100 * ratio:.0f}%)" if ratio is not None else "") + ": "
                     + (evaluation.metrics.get("reason") or
                        ("blessed" if evaluation.metrics.get("blessed") else "not blessed")))
    push = stages.get("push")
    serving = cfg.serving_dir
    if push and push.metrics.get("pushed"):
        lines.append(f"  {'served model':<14}{push.metrics['version_dir']}")
    elif push:
        lines.append(f"  {'served model':<14}nothing new pushed: {push.metrics.get('reason', '')}")
    if mf.exists(mf.join(serving, MODELS_CONFIG_FILE)):
        lines.append("Serve it (gRPC :8500, REST :8501), then colorize a photo or a folder:")
        lines += [f"  {command}" for command in report.serving_commands(serving, cfg.push.model_name)]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    try:
        cfg, beam_args, flags = config_lib.parse_args(argv)
    except config_lib.ConfigError as e:
        print(f"pipeline: {e}", file=sys.stderr)
        return 2
    print(f"pipeline: preset {flags.preset}, output {cfg.output_dir}"
          + (f", Beam options {' '.join(beam_args)}" if beam_args else ""), flush=True)
    invocation = {"argv": list(sys.argv[1:] if argv is None else argv), "preset": flags.preset,
                  "config_file": flags.config_file, "overrides": list(flags.overrides),
                  "data_dirs": list(flags.data_dirs)}
    manifest = executor.run_pipeline(dag.build_stages(cfg), cfg, output_dir=cfg.output_dir, beam_args=beam_args,
                                     no_cache=flags.no_cache, invocation=invocation)
    report_path = report.write_quietly(mf.run_dir(manifest.output_dir, manifest.run_id))
    if not manifest.ok:
        print(f"pipeline: {manifest.error} Fix it and run the same command again: finished stages come from the "
              f"cache. " + (f"Report: {report_path}. " if report_path else "") + f"Manifest: {manifest.path}",
              file=sys.stderr)
        return 2 if manifest.user_error else 1
    print(summary(manifest, cfg, report_path), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
