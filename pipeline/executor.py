"""The executor: runs a list of stages in order with lineage, a fingerprint cache and a manifest.

A Stage names its upstream stages through named inputs (TFX's
`trainer.inputs['examples'] = example_gen.outputs['examples']`), says what of
the config it depends on, and which modules it runs; `run_pipeline`
fingerprints each stage from its inputs' fingerprints, that config and the
import closure of its modules (pipeline/manifest.py), takes it from the cache
when an earlier execution with the same fingerprint succeeded and its outputs
still exist, runs it otherwise, and rewrites runs/<run_id>/manifest.json after
every change. A failing stage stops the run with one sentence; re-running
continues from it, since everything before it comes from the cache.

    from pipeline import config, executor, stages
    cfg, beam_args, flags = config.parse_args(["--set", "train.epochs=2"])
    manifest = executor.run_pipeline(stages.build_stages(cfg), cfg, output_dir=cfg.output_dir,
                                     beam_args=beam_args, no_cache=flags.no_cache)

The real stages (pipeline/stages/) are adapters from the config and upstream
artifacts to one component call; `python -m pipeline.stage NAME` runs one of
them alone, which is what each Kubeflow step does.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import posixpath
import time
import traceback
from typing import Any, Callable, Iterator, Mapping, Optional, Sequence, Union

from pipeline import manifest as mf

# ---------------------------------------------------------------- stages


class StageError(Exception):
    """A stage failed for a reason stated in one sentence; user_error: the user can fix it (CLI exit 2)."""

    def __init__(self, message: str, *, user_error: bool = True):
        super().__init__(message)
        self.user_error = user_error


@dataclasses.dataclass
class StageContext:
    """What a stage's run function gets: the config, its own output dir and its upstream stages' outputs."""

    name: str
    config: Any
    output_dir: str
    inputs: dict[str, dict[str, str]]
    """Upstream stage -> its output URIs ("dir" always); {} for a skipped stage."""
    beam_args: list[str]
    run_id: str
    outputs: dict[str, str] = dataclasses.field(default_factory=dict)
    """Output URIs this execution produced; the stage adds to it, "dir" is output_dir."""
    wiring: Mapping[str, str] = dataclasses.field(default_factory=dict)
    """The stage's named inputs: input name -> "stage.output" (Stage.inputs)."""

    def input_dir(self, stage: str) -> Optional[str]:
        return self.inputs.get(stage, {}).get("dir")

    def input(self, name: str) -> Optional[str]:
        """The URI wired to input `name`, or None when its upstream stage was skipped."""
        stage, output = _split_ref(self.wiring.get(name, name))
        return self.inputs.get(stage, {}).get(output)

    def output(self, name: str, uri: str) -> str:
        """Record an output URI (checked for existence before a later run reuses this execution)."""
        self.outputs[name] = uri
        return uri


def _split_ref(ref: str) -> tuple[str, str]:
    """"tune.best_hparams" -> ("tune", "best_hparams"); a bare stage name means its dir."""
    stage, _, output = ref.partition(".")
    return stage, output or "dir"


StageRun = Callable[[StageContext], Optional[dict]]


@dataclasses.dataclass(frozen=True)
class Stage:
    """One step of the DAG.

    run(ctx) does the work and returns a dict of metrics for the manifest.
    inputs: named inputs, input name -> "stage.output" (or a bare upstream
    stage name, meaning its dir); a plain sequence of stage names also works.
    after: upstream stages that gate this one without handing it data (the
    validator). config: what of the config defines the execution, either
    dotted keys ("train", ("tune", "train.image_size")) or a function of the
    config returning a JSON-able value. code: dotted modules (their import
    closure inside the repo) or source paths. outputs: output name -> path
    relative to the stage's dir, which every execution writes (the context
    starts with them), so a step run elsewhere (Kubeflow) finds an upstream
    output from that stage's dir alone. external_inputs(config) fingerprints
    data from outside the pipeline; skip says why this stage does not run.
    """

    name: str
    run: StageRun
    inputs: Union[Mapping[str, str], Sequence[str]] = ()
    config: Union[str, Sequence[str], Callable[[Any], Any]] = ()
    code: Sequence[str] = ()
    skip: Optional[str] = None
    external_inputs: Optional[Callable[[Any], dict]] = None
    after: Sequence[str] = ()
    outputs: Mapping[str, str] = dataclasses.field(default_factory=dict)
    beam: bool = False
    """The stage runs a Beam job: Beam's flags (--runner ...) reach it."""

    @property
    def wiring(self) -> dict[str, str]:
        """Input name -> "stage.output"."""
        if isinstance(self.inputs, Mapping):
            return dict(self.inputs)
        return {name: name for name in self.inputs}

    @property
    def upstream(self) -> tuple[str, ...]:
        """Every stage this one waits for, in the order named: data inputs first, then `after`."""
        names = [_split_ref(ref)[0] for ref in self.wiring.values()] + list(self.after)
        return tuple(dict.fromkeys(names))

    def config_value(self, config: Any) -> Any:
        if callable(self.config):
            return self.config(config)
        keys = (self.config,) if isinstance(self.config, str) else tuple(self.config)
        return {key: section_value(config, key) for key in keys}

    def output_uris(self, stage_dir: str) -> dict[str, str]:
        """The declared outputs under `stage_dir` ("dir" is the dir itself)."""
        return {"dir": stage_dir, **{name: posixpath.join(stage_dir, rel) if rel not in ("", ".") else stage_dir
                                     for name, rel in self.outputs.items()}}


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
        unknown = [name for name in stage.upstream if name not in seen]
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
    record.inputs = {name: produced[name][0] for name in stage.upstream}
    record.external_inputs = dict(stage.external_inputs(config)) if stage.external_inputs else {}
    record.config_fingerprint = mf.fingerprint_json(stage.config_value(config))
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
    invocation: Optional[Mapping[str, Any]] = None,
    log: Callable[[str], None] = _print,
) -> mf.Manifest:
    """Run `stages` in order; returns the manifest (status succeeded, or failed with failed_stage and error).

    A stage whose execution fingerprint matches an earlier successful
    execution whose outputs all exist is not run again ("cached"). A stage
    that runs keeps what its output dir already holds (the trainer and the
    tuner resume from it) except under no_cache, which empties it first and
    runs every stage. An exception from a stage stops the run and is recorded; an
    interrupt (KeyboardInterrupt, SystemExit) is recorded and re-raised.
    invocation (the command line, preset, overrides) goes into the manifest as it is.
    """
    check_stages(stages)
    output_dir = output_dir.rstrip("/") or output_dir
    manifest = mf.Manifest(
        run_id=run_id or mf.new_run_id(), output_dir=output_dir, config=_config_dict(config),
        beam_args=list(beam_args), no_cache=no_cache, invocation=dict(invocation or {}),
        stages={s.name: mf.StageRecord(s.name) for s in stages},
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
            inputs={name: dict(produced[name][1]) for name in stage.upstream}, beam_args=list(beam_args),
            run_id=manifest.run_id, outputs=stage.output_uris(record.output_dir), wiring=stage.wiring,
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


# ---------------------------------------------------------------- for the stage adapters


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
