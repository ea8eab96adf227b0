"""The pipeline's stages and the executor that runs them in order with caching and a manifest.

A Stage names its upstream stages, the config keys and the source files it
depends on; `run_pipeline` fingerprints each stage from those (see
pipeline/manifest.py), takes it from the cache when an earlier execution with
the same fingerprint succeeded and its outputs still exist, runs it otherwise,
and rewrites runs/<run_id>/manifest.json after every change. A failing stage
stops the run with one sentence; re-running continues from it, since
everything before it comes from the cache.

    from pipeline import config, dag
    cfg, beam_args, flags = config.parse_args(["--set", "train.epochs=2"])
    manifest = dag.run_pipeline(dag.build_stages(cfg), cfg, output_dir=cfg.output_dir,
                                beam_args=beam_args, no_cache=flags.no_cache)

Every stage also has its own CLI (`python -m components.<module> ...`);
`Stage.cli` builds that command line from the config, which is what the
Kubeflow compiler (pipeline/kubeflow.py) puts in each container step.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import time
import traceback
from typing import Any, Callable, Iterator, Mapping, Optional, Sequence, Union

from pipeline import manifest as mf

# ---------------------------------------------------------------- the executor


class StageError(Exception):
    """A stage failed for a reason stated in one sentence; user_error: the user can fix it (CLI exit 2)."""

    def __init__(self, message: str, *, user_error: bool = True):
        super().__init__(message)
        self.user_error = user_error


@dataclasses.dataclass
class StageContext:
    """What a stage's run function gets: its config, its own output dir and its upstream stages' outputs."""

    name: str
    config: Any
    output_dir: str
    inputs: dict[str, dict[str, str]]
    """Upstream stage -> its output URIs ("dir" always); {} for a skipped stage."""
    beam_args: list[str]
    run_id: str
    outputs: dict[str, str] = dataclasses.field(default_factory=dict)
    """Output URIs this execution produced; the stage adds to it, "dir" is output_dir."""

    def input_dir(self, stage: str) -> Optional[str]:
        return self.inputs.get(stage, {}).get("dir")

    def output(self, name: str, uri: str) -> str:
        """Record an output URI (checked for existence before a later run reuses this execution)."""
        self.outputs[name] = uri
        return uri


@dataclasses.dataclass(frozen=True)
class Paths:
    """Where each stage writes, for building stage command lines: stage name -> dir, plus the serving dir."""

    stages: Mapping[str, str]
    serving_dir: str


StageRun = Callable[[StageContext], Optional[dict]]
StageCli = Callable[[Any, Paths, Sequence[str]], list]


@dataclasses.dataclass(frozen=True)
class Stage:
    """One step of the DAG.

    run(ctx) does the work and returns a dict of metrics for the manifest;
    inputs are upstream stage names; config_section is one or more dotted
    keys of the config (e.g. "train" or ("tune", "train.image_size")) whose
    values, with the files and folders in `code`, define the execution
    fingerprint. external_inputs(config) fingerprints data from outside the
    pipeline; skip says why this stage does not run in this config.
    """

    name: str
    run: StageRun
    inputs: Sequence[str] = ()
    config_section: Union[str, Sequence[str]] = ()
    code: Sequence[str] = ()
    skip: Optional[str] = None
    external_inputs: Optional[Callable[[Any], dict]] = None
    cli: Optional[StageCli] = None

    @property
    def sections(self) -> tuple[str, ...]:
        return (self.config_section,) if isinstance(self.config_section, str) else tuple(self.config_section)


def section_value(config: Any, dotted: str) -> Any:
    """The JSON-able value at a dotted key of a dataclass or dict config."""
    value = config
    for part in dotted.split(".") if dotted else ():
        value = value[part] if isinstance(value, Mapping) else getattr(value, part)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    return value


def _config_dict(config: Any) -> Any:
    if dataclasses.is_dataclass(config) and not isinstance(config, type):
        return dataclasses.asdict(config)
    return json.loads(json.dumps(config, default=str))


def check_stages(stages: Sequence[Stage]) -> None:
    """Names are unique and every input names an earlier stage (so the list is a topological order)."""
    seen: set[str] = set()
    for stage in stages:
        if stage.name in seen:
            raise ValueError(f"two stages are named {stage.name!r}.")
        unknown = [name for name in stage.inputs if name not in seen]
        if unknown:
            raise ValueError(f"stage {stage.name!r} takes inputs {unknown} that no earlier stage produces.")
        seen.add(stage.name)


def _one_sentence(error: BaseException) -> str:
    if isinstance(error, StageError):
        return str(error)
    if not isinstance(error, Exception):
        return f"interrupted ({type(error).__name__})."
    text = " ".join(str(error).split())
    if len(text) > 300:
        text = text[:297] + "..."
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


def _fingerprint(stage: Stage, record: mf.StageRecord, config: Any, produced: dict, output_dir: str) -> None:
    """Fill in the record's lineage and execution fingerprint, and the output dir that fingerprint addresses."""
    record.inputs = {name: produced[name][0] for name in stage.inputs}
    record.external_inputs = dict(stage.external_inputs(config)) if stage.external_inputs else {}
    record.config_fingerprint = mf.fingerprint_json({s: section_value(config, s) for s in stage.sections})
    record.code_fingerprint = mf.fingerprint_code(stage.code)
    record.fingerprint = mf.fingerprint_json({
        "stage": stage.name, "inputs": record.inputs, "external_inputs": record.external_inputs,
        "config": record.config_fingerprint, "code": record.code_fingerprint,
    })
    record.output_dir = mf.stage_dir(output_dir, stage.name, record.fingerprint)


def _record_failure(manifest: mf.Manifest, record: mf.StageRecord, error: BaseException) -> None:
    """The failure in one sentence; the traceback goes to a file when the error was not foreseen."""
    record.status, record.ended = "failed", mf.utc_now()
    record.error, record.error_type = _one_sentence(error), type(error).__name__
    record.user_error = bool(getattr(error, "user_error", False))
    if not isinstance(error, (StageError, KeyboardInterrupt, SystemExit)):
        record.traceback = mf.join(mf.run_dir(manifest.output_dir, manifest.run_id), f"{record.name}.traceback.txt")
        mf.write_text_atomic(record.traceback,
                             "".join(traceback.format_exception(type(error), error, error.__traceback__)))
    manifest.failed_stage = record.name
    manifest.error = f"stage {record.name} failed: {record.error}"


def _print(line: str) -> None:
    print(line, flush=True)


def run_pipeline(
    stages: Sequence[Stage],
    config: Any,
    *,
    output_dir: str,
    no_cache: bool = False,
    beam_args: Sequence[str] = (),
    run_id: Optional[str] = None,
    log: Callable[[str], None] = _print,
) -> mf.Manifest:
    """Run `stages` in order; returns the manifest (status succeeded, or failed with failed_stage and error).

    A stage whose execution fingerprint matches an earlier successful
    execution whose outputs all exist is not run again ("cached"). A stage
    that runs keeps what its output dir already holds (the trainer and the
    tuner resume from it) except under no_cache, which empties it first and
    runs every stage. An exception from a stage stops the run and is recorded; an
    interrupt (KeyboardInterrupt, SystemExit) is recorded and re-raised.
    """
    check_stages(stages)
    output_dir = output_dir.rstrip("/") or output_dir
    manifest = mf.Manifest(
        run_id=run_id or mf.new_run_id(), output_dir=output_dir, config=_config_dict(config),
        beam_args=list(beam_args), no_cache=no_cache, stages={s.name: mf.StageRecord(s.name) for s in stages},
    )
    manifest.save()
    mf.set_latest(output_dir, manifest.run_id)
    started = time.monotonic()
    produced: dict[str, tuple[str, dict]] = {}  # stage -> (output fingerprint, outputs)

    def finish(status: str) -> mf.Manifest:
        manifest.status, manifest.ended = status, mf.utc_now()
        manifest.duration_s = round(time.monotonic() - started, 3)
        manifest.save()
        return manifest

    for stage in stages:
        record = manifest.stages[stage.name]
        if stage.skip:
            record.status, record.skip_reason, record.output_fingerprint = "skipped", stage.skip, "skipped"
            produced[stage.name] = ("skipped", {})
            manifest.save()
            log(f"[{stage.name}] skipped: {stage.skip}")
            continue
        _fingerprint(stage, record, config, produced, output_dir)
        hit, missing = (None, None) if no_cache else mf.cache_lookup(output_dir, stage.name, record.fingerprint)
        if hit is not None:
            record.status, record.cached = "cached", True
            record.outputs, record.metrics = hit.get("outputs", {}), hit.get("metrics", {})
            record.output_fingerprint, record.produced_by_run = hit["output_fingerprint"], hit.get("run_id")
            produced[stage.name] = (record.output_fingerprint, record.outputs)
            manifest.save()
            log(f"[{stage.name}] cached (from run {record.produced_by_run})")
            continue
        if missing is not None:
            log(f"[{stage.name}] the cached output {missing} is missing; running the stage again")

        record.status, record.started = "running", mf.utc_now()
        manifest.save()
        log(f"[{stage.name}] started")
        t0 = time.monotonic()
        ctx = StageContext(
            name=stage.name, config=config, output_dir=record.output_dir,
            inputs={name: dict(produced[name][1]) for name in stage.inputs}, beam_args=list(beam_args),
            run_id=manifest.run_id, outputs={"dir": record.output_dir},
        )
        try:
            if no_cache:  # a forced execution starts empty; otherwise components may resume from what is there
                mf.remove_tree(record.output_dir)
            mf.makedirs(record.output_dir)
            metrics = stage.run(ctx) or {}
            if not isinstance(metrics, Mapping):
                raise TypeError(f"stage {stage.name} returned {type(metrics).__name__}, not a dict of metrics")
        except BaseException as error:  # noqa: B902 - recorded, then interrupts are re-raised
            record.duration_s = round(time.monotonic() - t0, 3)
            _record_failure(manifest, record, error)
            finish("failed")
            log(f"[{stage.name}] failed after {record.duration_s:.1f} s: {record.error}")
            if not isinstance(error, Exception):
                raise
            return manifest

        record.status, record.ended = "succeeded", mf.utc_now()
        record.duration_s = round(time.monotonic() - t0, 3)
        record.outputs = dict(ctx.outputs)
        record.metrics = json.loads(json.dumps(dict(metrics), default=mf.json_default))
        record.output_fingerprint = mf.fingerprint_json(
            {"execution": record.fingerprint, "run_id": manifest.run_id, "ended": record.ended}
        )
        mf.cache_store(output_dir, stage.name, record.fingerprint, {
            "stage": stage.name, "fingerprint": record.fingerprint, "output_fingerprint": record.output_fingerprint,
            "outputs": record.outputs, "metrics": record.metrics, "run_id": manifest.run_id,
            "ended": record.ended, "duration_s": record.duration_s,
        })
        produced[stage.name] = (record.output_fingerprint, record.outputs)
        manifest.save()
        log(f"[{stage.name}] done in {record.duration_s:.1f} s")
    return finish("succeeded")


# ---------------------------------------------------------------- helpers for the real stages


@contextlib.contextmanager
def user_errors(*types: type, failures: tuple = ()) -> Iterator[None]:
    """Turn a component's own exceptions into StageError with the component's sentence.

    `types` are mistakes the user can fix; `failures` are failures that are
    not (e.g. a training loss that became NaN).
    """
    try:
        yield
    except failures as e:
        raise StageError(str(e), user_error=False) from None
    except types as e:
        raise StageError(str(e), user_error=True) from None


def _opt(flag: str, value: Any) -> list[str]:
    """[flag, value] when value is set, else nothing."""
    return [] if value is None else [flag, str(value)]


def _backbone_weights(value: str) -> Optional[str]:
    """"none" (a random backbone) as the tuner's None; imagenet or a path as given."""
    return None if value.lower() == "none" else value


# ---------------------------------------------------------------- the real stages


CODE = {
    "synthetic": ["components/synthetic.py"],
    "ingest": ["components/example_gen.py", "components/decode.py", "components/color.py",
               "components/tfrecord_sink.py", "schemas"],
    "validate": ["components/validator.py", "schemas"],
    "tune": ["components/tuner.py", "components/hparams.py", "components/loader.py", "components/models.py", "schemas"],
    "train": ["components/trainer.py", "components/hparams.py", "components/loader.py", "components/models.py",
              "components/color.py", "schemas"],
    "evaluate": ["components/evaluator.py", "components/loader.py", "components/color.py", "schemas"],
    "push": ["components/pusher.py", "components/export.py", "components/loader.py", "components/color.py", "schemas"],
}
"""Source files and folders whose change re-runs a stage; pipeline/dag.py (the stage functions) counts for all."""


def _synthetic_cli(config: Any, paths: Paths, beam_args: Sequence[str]) -> list[str]:
    s = config.data.synthetic
    return ["python", "-m", "components.synthetic", "--output_dir", paths.stages["synthetic"],
            "--num_images", str(s.num_images), "--seed", str(s.seed), "--size", str(s.size)]


def _run_synthetic(ctx: StageContext) -> dict:
    from components import synthetic

    s = ctx.config.data.synthetic
    paths = synthetic.generate(ctx.output_dir, s.num_images, seed=s.seed, size=s.size,
                               workers=1 if s.num_images < 2000 else 2)
    print(f"synthetic: wrote {len(paths)} images to {ctx.output_dir}", flush=True)
    return {"images": len(paths)}


def _sources(config: Any, paths: Paths) -> list[tuple[str, str]]:
    return list(config.data.sources.items()) or [("synthetic", paths.stages["synthetic"])]


def _ingest_cli(config: Any, paths: Paths, beam_args: Sequence[str]) -> list[str]:
    d = config.data
    return ["python", "-m", "components.example_gen",
            *[arg for name, path in _sources(config, paths) for arg in ("--data_dir", f"{name}={path}")],
            "--output_dir", paths.stages["ingest"], *_opt("--limit", d.limit),
            "--stored_size", str(d.stored_size), "--min_side", str(d.min_side),
            "--min_colorfulness", str(d.min_colorfulness), "--splits", config.ingest.splits,
            "--validation", "none", "--overwrite", *beam_args]


def _run_ingest(ctx: StageContext) -> dict:
    from components import example_gen as eg
    from schemas.artifacts import EXAMPLES_DIR, SCHEMA_FILE, STATISTICS_FILE

    d = ctx.config.data
    paths = Paths({"synthetic": ctx.input_dir("synthetic") or ""}, "")
    with user_errors(eg.IngestError):
        ingest_config = eg.IngestConfig(
            sources=tuple(_sources(ctx.config, paths)), output_dir=ctx.output_dir,
            limits=(("*", d.limit),) if d.limit else (), stored_size=d.stored_size, min_side=d.min_side,
            min_colorfulness=d.min_colorfulness, splits=eg.parse_splits(ctx.config.ingest.splits),
        )
        stats = eg.run_ingest(ingest_config, ctx.beam_args, overwrite=True)
    print(eg.format_summary(stats, ctx.output_dir), flush=True)
    for name, relative in (("examples", EXAMPLES_DIR), ("statistics", STATISTICS_FILE), ("schema", SCHEMA_FILE)):
        ctx.output(name, mf.join(ctx.output_dir, relative))
    files = stats["files"]
    return {
        **{k: files[k] for k in ("found", "written", "rejected", "duplicates")},
        "rejected_by_reason": files["rejected_by_reason"],
        "splits": {name: entry["count"] for name, entry in stats["splits"].items()},
        "mean_colorfulness": stats["mean_colorfulness"],
    }


def _ingest_external(config: Any) -> dict[str, str]:
    return {f"data_dir:{name}": mf.fingerprint_tree(path) for name, path in sorted(config.data.sources.items())}


def _sample_rate(config: Any) -> float:
    return 1.0 if config.ingest.validation == "all" else config.ingest.validation_sample_rate


def _validate_cli(config: Any, paths: Paths, beam_args: Sequence[str]) -> list[str]:
    return ["python", "-m", "components.validator", "--output_dir", paths.stages["ingest"],
            "--sample_rate", str(_sample_rate(config)), *beam_args]


def _run_validate(ctx: StageContext) -> dict:
    from components import validator
    from schemas.artifacts import ANOMALIES_FILE

    examples = ctx.input_dir("ingest")
    with user_errors(validator.ValidationError):
        report = validator.run_validation(examples, ctx.beam_args, sample_rate=_sample_rate(ctx.config),
                                          stored_size=ctx.config.data.stored_size)
    print(validator.format_report(report, examples), flush=True)
    ctx.output("anomalies", mf.join(examples, ANOMALIES_FILE))
    return {"records_read": sum(report["records_read"].values()),
            "records_checked": sum(report["records_checked"].values()), "anomalies": len(report["anomalies"])}


def _tune_cli(config: Any, paths: Paths, beam_args: Sequence[str]) -> list[str]:
    t, tr = config.tune, config.train
    fixed = {k: v for k, v in tr.hparams_overrides().items() if k != "family"}
    weights = _backbone_weights(tr.backbone_weights)
    return ["python", "-m", "components.tuner", "--examples", paths.stages["ingest"],
            "--output_dir", paths.stages["tune"], "--algorithm", t.algorithm, "--max_trials", str(t.max_trials),
            "--epochs", str(t.epochs), *_opt("--steps_per_epoch", t.steps_per_epoch),
            *_opt("--validation_steps", tr.validation_steps), "--image_size", str(tr.image_size),
            "--model", tr.model, *[arg for k, v in fixed.items() for arg in ("--fix", f"{k}={v}")],
            "--backbone_weights", weights or "none",
            *(["--allow_random_backbone"] if tr.allow_random_backbone else []), *_opt("--seed", tr.seed)]


def _run_tune(ctx: StageContext) -> dict:
    from components import hparams, loader, models, tuner

    t, tr = ctx.config.tune, ctx.config.train
    with user_errors(tuner.TunerError, hparams.HparamsError, loader.LoaderError, models.MissingWeightsError):
        result = tuner.tune(tuner.TuneConfig(
            examples=ctx.input_dir("ingest"), output_dir=ctx.output_dir, algorithm=t.algorithm,
            max_trials=t.max_trials, epochs=t.epochs, steps_per_epoch=t.steps_per_epoch,
            validation_steps=tr.validation_steps, image_size=tr.image_size, fixed=tr.hparams_overrides(),
            backbone_weights=_backbone_weights(tr.backbone_weights),
            allow_random_backbone=tr.allow_random_backbone, seed=tr.seed,
        ))
    ctx.output("best_hparams", result.best_hparams_path)
    print(f"tune: best trial {result.trial_id} (val_mae {result.score:.6g}) of {result.completed_trials}: "
          f"{result.hyperparameters}", flush=True)
    return {"best_score": result.score, "trial_id": result.trial_id, "completed_trials": result.completed_trials,
            "hyperparameters": result.hyperparameters}


def _train_cli(config: Any, paths: Paths, beam_args: Sequence[str]) -> list[str]:
    from schemas.artifacts import BEST_HPARAMS_FILE

    tr = config.train
    hparams_file = f"{paths.stages['tune']}/{BEST_HPARAMS_FILE}" if "tune" in paths.stages else None
    return ["python", "-m", "components.trainer", "--examples", paths.stages["ingest"],
            "--output_dir", paths.stages["train"], "--model", tr.model, "--image_size", str(tr.image_size),
            "--epochs", str(tr.epochs), *_opt("--steps_per_epoch", tr.steps_per_epoch),
            *_opt("--validation_steps", tr.validation_steps), *_opt("--hparams", hparams_file),
            *_opt("--batch_size", tr.batch_size), *_opt("--width", tr.width),
            *_opt("--learning_rate", tr.learning_rate), *_opt("--loss", tr.loss), "--patience", str(tr.patience),
            "--backbone_weights", tr.backbone_weights,
            *(["--allow_random_backbone"] if tr.allow_random_backbone else []), *_opt("--seed", tr.seed)]


def _run_train(ctx: StageContext) -> dict:
    from components import hparams, loader, models, trainer

    tr = ctx.config.train
    hparams_file = ctx.inputs.get("tune", {}).get("best_hparams")
    with user_errors(trainer.TrainError, hparams.HparamsError, loader.LoaderError, models.MissingWeightsError,
                     failures=(trainer.TrainingDiverged,)):
        result = trainer.train(trainer.TrainConfig(
            examples=ctx.input_dir("ingest"), output_dir=ctx.output_dir, model=tr.model, image_size=tr.image_size,
            epochs=tr.epochs, steps_per_epoch=tr.steps_per_epoch, validation_steps=tr.validation_steps,
            hparams=hparams_file, batch_size=tr.batch_size, width=tr.width, learning_rate=tr.learning_rate,
            loss=tr.loss, patience=tr.patience,
            backbone_weights=tr.backbone_weights, allow_random_backbone=tr.allow_random_backbone, seed=tr.seed,
        ))
    ctx.output("model", result.model_path)
    ctx.output("summary", result.summary_path)
    ctx.output("tensorboard", result.log_dir)
    s = result.summary
    return {"model": s["model"], "hparams": s["hparams"], "epochs_run": result.epochs_run,
            "best_epoch": s["best_epoch"], "best_val_loss": result.best_val_loss, "precision": result.precision,
            "strategy": result.strategy, "examples_per_second": s["examples_per_second"],
            "trainable_parameters": s["trainable_parameters"]}


def _evaluate_cli(config: Any, paths: Paths, beam_args: Sequence[str]) -> list[str]:
    from schemas.artifacts import MODEL_FILE

    e = config.evaluate
    return ["python", "-m", "components.evaluator", "--model", f"{paths.stages['train']}/{MODEL_FILE}",
            "--examples", paths.stages["ingest"], "--output_dir", paths.stages["evaluate"], "--split", e.split,
            *_opt("--max_images", e.max_images), "--grid_images", str(e.grid_images),
            *_opt("--historical_dir", e.historical_dir),
            "--baseline_model", f"{paths.serving_dir.rstrip('/')}/{config.push.model_name}", "--baseline_optional",
            *[arg for k, v in dataclasses.asdict(e.thresholds).items() for arg in (f"--{k}", str(v))]]


_SHOWN_METRICS = ("psnr", "ssim", "ab_mse", "colorfulness", "colorfulness_truth", "colorfulness_diff", "auc")


def _run_evaluate(ctx: StageContext) -> dict:
    from components import evaluator

    e, config = ctx.config.evaluate, ctx.config
    last_blessed = f"{config.serving_dir.rstrip('/')}/{config.push.model_name}"  # pushed versions live here
    with user_errors(evaluator.EvaluationError):
        result = evaluator.evaluate(evaluator.EvalConfig(
            model=ctx.inputs["train"]["model"], examples=ctx.input_dir("ingest"), output_dir=ctx.output_dir,
            baseline_model=last_blessed, baseline_optional=True, split=e.split, max_images=e.max_images, grid_images=e.grid_images,
            historical_dir=e.historical_dir, thresholds=evaluator.Thresholds(**dataclasses.asdict(e.thresholds)),
        ))
    ctx.output("metrics", result.metrics_path)
    ctx.output("blessing", result.blessing_path)
    ctx.output("grid", result.grid_path)
    failed = result.failed_checks
    m = result.metrics
    shown = {name: ({k: m[name][k] for k in _SHOWN_METRICS if k in m[name]} if m[name] else None)
             for name in ("model", "gray", "baseline")}
    print(f"evaluate: {m['images']} {m['split']} images; PSNR model {shown['model']['psnr']:.2f} dB vs gray "
          f"{shown['gray']['psnr']:.2f} dB; colorfulness diff model {shown['model']['colorfulness_diff']:.2f} vs gray "
          f"{shown['gray']['colorfulness_diff']:.2f}; "
          f"{'BLESSED' if result.blessed else 'NOT BLESSED (failed: ' + ', '.join(failed) + ')'}", flush=True)
    return {"blessed": result.blessed, "failed_checks": failed, "images": m["images"],
            "baseline_model": m["baseline_model"],
            **shown}


def _evaluate_external(config: Any) -> dict[str, str]:
    historical = config.evaluate.historical_dir
    return {"historical_dir": mf.fingerprint_tree(historical)} if historical else {}


def _push_cli(config: Any, paths: Paths, beam_args: Sequence[str]) -> list[str]:
    from schemas.artifacts import MODEL_FILE

    return ["python", "-m", "components.pusher", "--model", f"{paths.stages['train']}/{MODEL_FILE}",
            "--evaluation", paths.stages["evaluate"], "--serving_dir", paths.serving_dir,
            "--model_name", config.push.model_name]


def _run_push(ctx: StageContext) -> dict:
    from components import pusher

    config = ctx.config
    with user_errors(pusher.PushError):
        result = pusher.push(pusher.PushConfig(
            model=ctx.inputs["train"]["model"], evaluation=ctx.input_dir("evaluate"),
            serving_dir=config.serving_dir, model_name=config.push.model_name,
        ))
    ctx.output("record", result.record_path)
    if result.blessed and not result.pushed:
        raise StageError(result.reason, user_error=False)
    if result.pushed:
        ctx.output("version_dir", result.version_dir)
    print(f"push: {result.reason}", flush=True)
    return {"pushed": result.pushed, "blessed": result.blessed, "version": result.version,
            "version_dir": result.version_dir, "reason": result.reason}


def build_stages(config: Any) -> list[Stage]:
    """The pipeline for `config` (a validated pipeline.config.PipelineConfig), in execution order.

    synthetic only runs when no data source is given; validate is skipped
    with ingest.validation=none, tune with tune.enabled=false.
    """
    def code(name: str) -> list[str]:
        return [*CODE[name], "pipeline/dag.py"]

    stages = []
    if not config.data.sources:
        stages.append(Stage("synthetic", _run_synthetic, (), "data.synthetic", code("synthetic"), cli=_synthetic_cli))
    stages += [
        Stage("ingest", _run_ingest, ("synthetic",) if not config.data.sources else (),
              ("data.sources", "data.stored_size", "data.min_side", "data.limit", "data.min_colorfulness",
               "ingest.splits"),
              code("ingest"), external_inputs=_ingest_external, cli=_ingest_cli),
        Stage("validate", _run_validate, ("ingest",),
              ("ingest.validation", "ingest.validation_sample_rate", "data.stored_size"), code("validate"),
              skip="ingest.validation is none" if config.ingest.validation == "none" else None, cli=_validate_cli),
        Stage("tune", _run_tune, ("ingest", "validate"),
              ("tune", "train.model", "train.width", "train.loss", "train.learning_rate", "train.batch_size",
               "train.image_size", "train.validation_steps", "train.backbone_weights", "train.allow_random_backbone",
               "train.seed"),
              code("tune"), skip=None if config.tune.enabled else "tune.enabled is false", cli=_tune_cli),
        Stage("train", _run_train, ("ingest", "validate", "tune"), "train", code("train"), cli=_train_cli),
        Stage("evaluate", _run_evaluate, ("ingest", "train"), "evaluate", code("evaluate"),
              external_inputs=_evaluate_external, cli=_evaluate_cli),
        Stage("push", _run_push, ("train", "evaluate"), "push", code("push"), cli=_push_cli),
    ]
    return stages
