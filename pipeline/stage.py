"""Run one stage adapter alone: what each Kubeflow step runs, the same code as a local pipeline run.

    python -m pipeline.stage train --config run.json --input ingest=/runs/7/ingest --input tune=/runs/7/tune \\
        --output_dir /runs/7/train
    python -m pipeline.stage ingest --config_json '{"data": {"sources": {"lfw": "gs://b/lfw"}}}' \\
        --output_dir gs://b/runs/7/ingest --runner=DataflowRunner --project P --temp_location gs://b/tmp

--config (a JSON or YAML file of config sections, local or gs://) or
--config_json (the same inline) gives the settings over the component
defaults; --set KEY=VALUE overrides one; --input STAGE=DIR names where an
upstream stage wrote its outputs (its declared outputs are found under that
dir). Unknown flags go to Beam. Exit status: 0 done, 2 a mistake the user can
fix (one sentence), 1 another failure.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import warnings
from typing import Optional, Sequence

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
    return 0


if __name__ == "__main__":
    sys.exit(main())
