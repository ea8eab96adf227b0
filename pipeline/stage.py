"""Run one stage adapter alone: what each Kubeflow step runs, the same code as a local pipeline run.

    python -m pipeline.stage train --config run.json --input ingest=/runs/7/ingest --input tune=/runs/7/tune \\
        --output_dir /runs/7/train
    python -m pipeline.stage ingest --config_json '{"data": {"sources": {"lfw": "gs://b/lfw"}}}' \\
        --output_dir gs://b/runs/7/ingest --runner=DataflowRunner --project P --temp_location gs://b/tmp

--config (a JSON or YAML file of config sections, local or gs://) or
--config_json (the same inline) gives the settings over the component
defaults; --set KEY=VALUE overrides one; --input STAGE=DIR names where an
upstream stage wrote its outputs (its declared outputs are found under that
dir). Unknown flags go to Beam. --report_html PATH (the last Kubeflow step)
then writes the run report of every stage under --run_dir DIR (DIR/<stage>)
to PATH and to DIR/report.html, beside a manifest.json of that run, so
`python -m pipeline.report DIR` rebuilds it later. Exit status: 0 done, 2 a
mistake the user can fix (one sentence), 1 another failure.
"""

from __future__ import annotations

import argparse
import json
import os
import posixpath
import sys
import warnings
from typing import Any, Optional, Sequence

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
warnings.filterwarnings("ignore", message="You are using a Python version", category=FutureWarning)

from pipeline import config as config_lib  # noqa: E402
from pipeline import dag, executor  # noqa: E402
from pipeline import manifest as mf  # noqa: E402


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m pipeline.stage", description=__doc__.split("\n\n")[0])
    p.add_argument("name", help="the stage: synthetic, ingest, validate, tune, train, evaluate or push")
    p.add_argument("--config", dest="config_file", metavar="FILE", help="config sections as a JSON or YAML file")
    p.add_argument("--config_json", metavar="JSON", help="config sections as inline JSON")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override one config key, e.g. output_dir=gs://b/colorization; repeatable")
    p.add_argument("--input", dest="inputs", action="append", default=[], metavar="STAGE=DIR",
                   help="where an upstream stage wrote its outputs; repeatable")
    p.add_argument("--output_dir", required=True, help="this stage's own output dir")
    p.add_argument("--run_id", default="standalone", help="the run this step belongs to (for the record)")
    p.add_argument("--run_dir", help="where every stage of this run wrote its outputs, as RUN_DIR/<stage> "
                   "(default: the parent of --output_dir); read by --report_html")
    p.add_argument("--report_html", metavar="PATH",
                   help="after the stage, write the run report here (the last Kubeflow step's HTML artifact)")
    return p


def build_context(args: argparse.Namespace, beam_args: Sequence[str]) -> tuple[executor.Stage, executor.StageContext]:
    """The stage and the context it runs with; ConfigError or StageError for a mistake."""
    values = config_lib.load_yaml(args.config_file) if args.config_file else {}
    if args.config_json:
        try:
            values = json.loads(args.config_json)
        except json.JSONDecodeError as e:
            raise config_lib.ConfigError(f"--config_json is not valid JSON ({e.msg} at {e.pos}); fix it.") from None
    config = config_lib.PipelineConfig()
    config_lib.merge(config, values)
    for assignment in args.overrides:
        config_lib.apply_override(config, assignment)
    config.validate()
    try:
        stage = dag.stage_named(config, args.name)
    except KeyError as e:
        raise config_lib.ConfigError(e.args[0]) from None
    stages = {s.name: s for s in dag.build_stages(config)}
    inputs = {}
    for text in args.inputs:
        name, sep, uri = text.partition("=")
        if not sep or name not in stage.upstream:
            raise config_lib.ConfigError(f"--input {text!r} must be STAGE=DIR with STAGE one of "
                                         f"{', '.join(stage.upstream) or 'none (this stage has no inputs)'}.")
        inputs[name] = stages[name].output_uris(uri.rstrip("/"))
    missing = [ref for ref in stage.wiring.values() if ref.partition(".")[0] not in inputs
               and not stages[ref.partition(".")[0]].skip]
    if missing:
        raise config_lib.ConfigError(f"stage {stage.name} needs --input for {', '.join(missing)}.")
    output_dir = args.output_dir.rstrip("/")
    ctx = executor.StageContext(
        name=stage.name, config=config, output_dir=output_dir, inputs=inputs,
        beam_args=list(beam_args) if stage.beam else [], run_id=args.run_id,
        outputs=stage.output_uris(output_dir), wiring=stage.wiring)
    return stage, ctx


def run_manifest(config: Any, run_dir: str, run_id: str, beam_args: Sequence[str]) -> dict[str, Any]:
    """The manifest of a run whose stages ran as separate steps (Kubeflow), each in run_dir/<stage>: the last step
    runs after all the others succeeded, so every stage that is not skipped succeeded."""
    stages = {}
    for stage in dag.build_stages(config):
        if stage.skip:
            stages[stage.name] = {"name": stage.name, "status": "skipped", "skip_reason": stage.skip}
        else:
            stage_dir = mf.join(run_dir, stage.name)
            stages[stage.name] = {"name": stage.name, "status": "succeeded", "output_dir": stage_dir,
                                  "outputs": stage.output_uris(stage_dir)}
    return {"run_id": run_id, "output_dir": config.output_dir, "config": config_lib.settings_values(config),
            "beam_args": list(beam_args), "status": "succeeded", "ended": mf.utc_now(), "stages": stages,
            "invocation": {"command": "a Kubeflow Pipelines run (python -m pipeline.kubeflow)"}}


def write_run_report(config: Any, run_dir: str, run_id: str, beam_args: Sequence[str], output: str) -> Optional[str]:
    """The run's manifest.json and report.html in run_dir, the report also at `output`; never raises (one line)."""
    from pipeline import report

    try:
        mf.write_json_atomic(mf.join(run_dir, mf.MANIFEST_FILE), run_manifest(config, run_dir, run_id, beam_args))
        path = report.write_quietly(run_dir)
        mf.write_text_atomic(output, mf.read_text(path) if path else (
            "<!DOCTYPE html><meta charset=\"utf-8\"><title>Run report</title><p>The run report could not be built; "
            "the step's log says why.</p>\n"))
        return output
    except Exception as e:  # noqa: BLE001 - the report must never fail the run
        print(f"report: the run report could not be written ({type(e).__name__}: {e}); the run itself is not "
              "affected.", file=sys.stderr)
        return None


def main(argv: Optional[Sequence[str]] = None) -> int:
    args, beam_args = _parser().parse_known_args(argv)
    try:
        stage, ctx = build_context(args, beam_args)
        mf.makedirs(ctx.output_dir)
        metrics = stage.run(ctx) or {}
    except (config_lib.ConfigError, executor.StageError) as e:
        print(f"{args.name}: {e}", file=sys.stderr)
        return 2 if getattr(e, "user_error", True) else 1
    print(json.dumps({"stage": stage.name, "outputs": ctx.outputs, "metrics": metrics}, default=mf.json_default))
    if args.report_html:
        run_dir = (args.run_dir or posixpath.dirname(ctx.output_dir)).rstrip("/")
        run_id = args.run_id if args.run_id != "standalone" else posixpath.basename(run_dir)
        if write_run_report(ctx.config, run_dir, run_id, beam_args, args.report_html):
            print(f"report: wrote {args.report_html} and {mf.join(run_dir, mf.REPORT_FILE)}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
