"""Compile the pipeline to a Kubeflow Pipelines v2 spec: one container step per stage adapter.

The DAG is pipeline.dag.build_stages(config), the same one the local runner
executes; every step runs that same stage adapter through
`python -m pipeline.stage NAME --config_json SETTINGS --input STAGE=DIR ...`
in the image built from the repo's Dockerfile, so a local run and a Kubeflow
run execute the same code with the same settings. Stages pass data through a shared pipeline
root, `gs://...` or a PersistentVolumeClaim mounted at the same path in every
step: run R writes `<pipeline_root>/runs/<R's job id>/<stage>/`, and the
pusher publishes to `<pipeline_root>/serving/<model_name>/<version>/` (or
push.serving_dir). Needs the optional extra: pip install -c constraints.txt -e ".[kubeflow]".

    docker build -t REGISTRY/colorization:0.1.0 . && docker push REGISTRY/colorization:0.1.0
    python -m pipeline.kubeflow --output pipeline.yaml --image REGISTRY/colorization:0.1.0 \\
        --pipeline_root gs://BUCKET/colorization
    python -m pipeline.kubeflow --output report1.yaml --preset report-model1 --data_dir lfw=/mnt/data/lfw \\
        --image REGISTRY/colorization:0.1.0 --pipeline_root /mnt/data/colorization --pvc colorization-data --gpus 1
    # then upload pipeline.yaml in the Kubeflow Pipelines UI, or:
    python -c "import kfp; kfp.Client(host='http://HOST').create_run_from_pipeline_package('pipeline.yaml')"

Unknown flags (--runner=DataflowRunner --project ... --temp_location gs://...) go to the Beam steps
(ingest and validate) as they go locally. Tasks are not cached by Kubeflow: each run writes fresh dirs.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
from typing import Any, Optional, Sequence

from pipeline import config as config_lib
from pipeline import dag, executor

DEFAULT_IMAGE = "colorization-pipeline:0.1.0"
PIPELINE_NAME = "colorization"
GPU_STAGES = ("tune", "train")


class KubeflowError(Exception):
    """A compile setting the user can fix; one sentence."""


def step_argv(stage: executor.Stage, config: Any, run_dir: str, pipeline_root: str, present: Sequence[str],
              beam_args: Sequence[str], report_html: Optional[str] = None) -> list[str]:
    """The command line of `stage`'s step: its adapter, the settings, its upstream dirs and its own dir; with
    report_html (the last step), the run report of every stage under run_dir is written there too."""
    argv = ["python", "-m", "pipeline.stage", stage.name,
            "--config_json", json.dumps(config_lib.settings_values(config), sort_keys=True, separators=(",", ":")),
            "--set", f"output_dir={pipeline_root}",
            *[arg for name in stage.upstream if name in present for arg in ("--input", f"{name}={run_dir}/{name}")],
            "--output_dir", f"{run_dir}/{stage.name}"]
    if report_html is not None:
        argv += ["--run_dir", run_dir, "--report_html", report_html]
    return argv + (list(beam_args) if stage.beam else [])


def _component(stage: executor.Stage, config: Any, present: Sequence[str], image: str, beam_args: Sequence[str],
               report: bool = False):
    """A KFP container component running `stage`'s adapter, its paths under the pipeline_root parameter; with
    report, it also has the run report as an HTML output artifact, which the Kubeflow UI shows."""
    from kfp import dsl

    def spec(pipeline_root: str, run_id: str, report_html: Optional[str]) -> Any:
        # the placeholders render as KFP's {{$.inputs.parameters[...]}} and {{$.outputs.artifacts[...].path}}
        argv = step_argv(stage, config, f"{pipeline_root}/runs/{run_id}", pipeline_root, present, beam_args,
                         report_html=report_html)
        return dsl.ContainerSpec(image=image, command=argv[:3], args=argv[3:])

    if report:
        def step(pipeline_root: str, run_id: str, report: Any):
            return spec(pipeline_root, run_id, report.path)

        step.__annotations__ = {"pipeline_root": str, "run_id": str, "report": dsl.Output[dsl.HTML]}
    else:
        def step(pipeline_root: str, run_id: str):
            return spec(pipeline_root, run_id, None)

        step.__annotations__ = {"pipeline_root": str, "run_id": str}  # kfp reads real types, not postponed strings
    step.__name__ = stage.name
    step.__qualname__ = stage.name
    step.__doc__ = f"The {stage.name} stage of the colorization pipeline, run through pipeline.stage."
    return dsl.container_component(step)


def build_pipeline(config: Any, *, image: str = DEFAULT_IMAGE, pipeline_root: str, beam_args: Sequence[str] = (),
                   pvc: Optional[str] = None, gpus: int = 0):
    """The KFP pipeline function for `config`: stages skipped in this config are left out of the DAG."""
    from kfp import dsl

    stages = [s for s in dag.build_stages(config) if not s.skip]
    present = [s.name for s in stages]
    components = {s.name: _component(s, config, present, image, beam_args, report=s is stages[-1]) for s in stages}
    mount_path = pipeline_root

    def colorization(pipeline_root: str = pipeline_root):
        tasks = {}
        for stage in stages:
            task = components[stage.name](pipeline_root=pipeline_root, run_id=dsl.PIPELINE_JOB_ID_PLACEHOLDER)
            task.set_display_name(stage.name)
            task.set_caching_options(False)
            task.after(*[tasks[name] for name in stage.upstream if name in tasks])
            if gpus and stage.name in GPU_STAGES:
                task.set_accelerator_type("nvidia.com/gpu").set_accelerator_limit(gpus)
            if pvc:
                from kfp import kubernetes

                kubernetes.mount_pvc(task, pvc_name=pvc, mount_path=mount_path)
            tasks[stage.name] = task

    colorization.__annotations__ = {"pipeline_root": str}
    return dsl.pipeline(name=PIPELINE_NAME, description="Colorization: ingest, validate, tune, train, evaluate, push.")(
        colorization)


def compile_pipeline(config: Any, output: str, *, image: str = DEFAULT_IMAGE, pipeline_root: str,
                     beam_args: Sequence[str] = (), pvc: Optional[str] = None, gpus: int = 0) -> str:
    """Write the KFP v2 pipeline spec (YAML) for `config` to `output`; returns the path."""
    if "://" not in pipeline_root and not pipeline_root.startswith("/"):
        raise KubeflowError(
            f"--pipeline_root {pipeline_root!r} must be shared by every step: a gs:// URI or an absolute path on a "
            "PersistentVolumeClaim (--pvc NAME mounts it there)."
        )
    if pvc and "://" in pipeline_root:
        raise KubeflowError("--pvc mounts a volume at --pipeline_root, which must then be an absolute path, not a URI.")
    try:
        from kfp import compiler
        if pvc:
            importlib.import_module("kfp.kubernetes")  # the kfp-kubernetes package, used while building
    except ImportError:
        raise KubeflowError(
            "the Kubeflow Pipelines SDK is not installed; pip install -c constraints.txt -e \".[kubeflow]\"."
        ) from None

    pipeline = build_pipeline(config, image=image, pipeline_root=pipeline_root.rstrip("/"), beam_args=beam_args,
                              pvc=pvc, gpus=gpus)
    compiler.Compiler().compile(pipeline, output)
    return output


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m pipeline.kubeflow",
        description="Compile the colorization pipeline (the same stages and config flags as python -m pipeline.run) "
        "to a Kubeflow Pipelines v2 YAML spec, one container step per stage. Unknown flags go to the Beam steps.",
    )
    parser.add_argument("--output", required=True, help="Where to write the pipeline spec (YAML).")
    parser.add_argument("--image", default=DEFAULT_IMAGE,
                        help=f"Container image built from the repo's Dockerfile (default {DEFAULT_IMAGE}).")
    parser.add_argument("--pipeline_root", default="/mnt/colorization",
                        help="Shared storage every step reads and writes: gs://BUCKET/PATH, or an absolute path where "
                        "--pvc is mounted (default /mnt/colorization). A run-time parameter of the pipeline too.")
    parser.add_argument("--pvc", help="Name of a PersistentVolumeClaim to mount at --pipeline_root in every step.")
    parser.add_argument("--gpus", type=int, default=0, help="NVIDIA GPUs for the tune and train steps (default 0).")
    config_lib.add_config_flags(parser)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Parse flags, compile; one sentence and exit 2 for a mistake."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    args, beam_args = _parser().parse_known_args(argv)
    try:
        config = config_lib.config_from_args(args)
        if args.gpus < 0:
            raise KubeflowError(f"--gpus must be 0 or more, got {args.gpus}.")
        path = compile_pipeline(config, args.output, image=args.image, pipeline_root=args.pipeline_root,
                                beam_args=beam_args, pvc=args.pvc, gpus=args.gpus)
    except (config_lib.ConfigError, KubeflowError) as e:
        print(f"kubeflow: {e}", file=sys.stderr)
        return 2
    stages = [s.name for s in dag.build_stages(config) if not s.skip]
    print(f"kubeflow: wrote {path}: {len(stages)} steps ({' -> '.join(stages)}), image {args.image}, "
          f"pipeline_root {args.pipeline_root}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
