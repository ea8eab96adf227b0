"""pusher: publish a blessed, validated serving SavedModel into a versioned TF Serving model base path.

Like TFX's InfraValidator + Pusher: nothing is published unless the
evaluator blessed the model (blessing.json says "blessed": true / a BLESSED
marker) and the exported SavedModel, loaded in a fresh Python process,
answers its own warmup requests (assets.extra/tf_serving_warmup_requests)
with a PNG of each request image's size. The version is written to
`<serving_dir>/<model_name>/.tmp-<version>-<pid>/`, validated there, then
renamed to `<serving_dir>/<model_name>/<version>/` (1 + the highest existing
version, or the next free one if another pusher took it meanwhile), so TF
Serving never sees a half-written version. Every push regenerates
`<serving_dir>/models.config` (labels stable = previous version, canary =
this one), `batching_parameters.txt` and `monitoring.config`, written before
the rename and moved into place after it, so a full disk leaves the old state
or the new, and writes a record, `pushed.json`, to the evaluation dir (or
--output).

    python -m components.pusher --model out/train/model.keras --evaluation out/eval --serving_dir out/serving
    python -m components.pusher --validate_only out/serving/colorizer/3   # the fresh-process check alone
    tensorflow_model_server --port=8500 --rest_api_port=8501 --model_config_file=out/serving/models.config \\
        --enable_batching --batching_parameters_file=out/serving/batching_parameters.txt \\
        --monitoring_config_file=out/serving/monitoring.config

Exit status: 0 pushed, or not blessed (nothing pushed, the reason printed);
1 the model failed validation (nothing published); 2 a user mistake
(missing model or blessing, bad flags).
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import posixpath
import sys
import time
from typing import Any, Sequence

import tensorflow as tf

from components import export, settings
from components.pusher.publish import (  # noqa: F401  re-exported: pusher.models_config_text, ...
    DEFAULT_BATCHING,
    MODEL_NAME_RE,
    TMP_PREFIX,
    batching_parameters_text,
    copy_tree,
    is_disk_full,
    is_saved_model,
    models_config_text,
    monitoring_config_text,
    publish,
    remove_stale_temp_dirs,
    list_versions,
    serving_config_paths,
    write_record,
)
from components.pusher.validation import (  # noqa: F401
    VALIDATION_TIMEOUT_S,
    validate_in_fresh_process,
    validate_serving_model,
)
from components.settings import artifact, setting
from schemas import (  # noqa: F401  file names shared with the evaluator and the pipeline, re-exported
    BATCHING_FILE,
    BLESSED_MARKER,
    BLESSING_FILE,
    MODELS_CONFIG_FILE,
    MONITORING_FILE,
    NOT_BLESSED_MARKER,
    PUSH_RECORD_FILE,
)
from schemas.serving import MAX_PIXELS, PROMETHEUS_PATH, WARMUP_FILE  # noqa: F401

RECORD_FILE = PUSH_RECORD_FILE
MODELS_CONFIG = MODELS_CONFIG_FILE


class PushError(Exception):
    """A mistake the user can fix (missing model or blessing, bad config); one sentence naming it."""


@dataclasses.dataclass
class PushConfig:
    """What to push and where; `output` is where pushed.json goes (default: the evaluation dir)."""

    model: str = artifact("input", "the trainer's model.keras (or an exported serving SavedModel dir)")
    evaluation: str = artifact("input", "the evaluator's output dir holding blessing.json and BLESSED/NOT_BLESSED")
    serving_dir: str | None = setting(
        None, "TF Serving root: versions go to SERVING_DIR/MODEL_NAME/<version>/; the pipeline's default is "
        "OUTPUT_DIR/serving")
    model_name: str = setting("colorizer", "TF Serving model name")
    max_pixels: int = setting(
        MAX_PIXELS, "largest image a request may send, in pixels; applies when exporting from .keras")
    validate: bool = setting(True, "check in a fresh process that the exported SavedModel loads and answers its "
                             "warmup requests before publishing it")
    batching: dict[str, int] = setting(
        default_factory=lambda: dict(DEFAULT_BATCHING), metavar="KEY=N",
        help="override a batching parameter, e.g. max_batch_size=16 (defaults: "
        + ", ".join(f"{k}={v}" for k, v in DEFAULT_BATCHING.items()) + ")")
    output: str | None = artifact("output", "dir for the pushed.json record (default: the evaluation dir)",
                                  required=False, default=None)
    validation_timeout_s: float = setting(
        VALIDATION_TIMEOUT_S, "give up on the fresh-process check after this many seconds")

    def validate_config(self, prefix: str = "--") -> None:
        """Raise PushError, naming `prefix` + the field, for a config TF Serving or this pusher cannot use."""
        try:
            settings.check_choices(self, prefix)
        except settings.SettingsError as e:
            raise PushError(str(e)) from None
        if not MODEL_NAME_RE.match(self.model_name or ""):
            raise PushError(f"{prefix}model_name {self.model_name!r} is not a folder name TF Serving accepts; use "
                            "letters, digits, '_', '-' or '.', e.g. colorizer.")
        if not (isinstance(self.max_pixels, int) and self.max_pixels > 0):
            raise PushError(f"{prefix}max_pixels must be a positive integer, got {self.max_pixels!r}.")
        unknown = sorted(set(self.batching) - set(DEFAULT_BATCHING))
        if unknown:
            raise PushError(f"{prefix}batching has an unknown parameter {unknown[0]!r}; use "
                            f"{', '.join(DEFAULT_BATCHING)}.")
        for key, value in self.batching.items():
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise PushError(f"{prefix}batching parameter {key} must be a positive integer, got {value!r}.")
        if not self.validation_timeout_s > 0:
            raise PushError(f"{prefix}validation_timeout_s must be positive, got {self.validation_timeout_s!r}.")


@dataclasses.dataclass
class PushResult:
    """What happened: `reason` says why in one sentence; `validation` holds the fresh-process check's result."""

    pushed: bool
    version: int | None
    version_dir: str | None
    reason: str
    record_path: str
    blessed: bool = False
    validation: dict | None = None


# ---------------------------------------------------------------- blessing


def _read_json(path: str) -> Any:
    with tf.io.gfile.GFile(path) as f:
        return json.load(f)


def read_blessing(evaluation: str) -> tuple[bool, str, dict]:
    """(blessed, reason, blessing.json contents or {}) of an evaluator output dir; PushError when there is none."""
    if not tf.io.gfile.isdir(evaluation):
        raise PushError(f"evaluation dir {evaluation} does not exist; run the evaluator first or fix --evaluation.")
    path = posixpath.join(evaluation, BLESSING_FILE)
    marked_blessed = tf.io.gfile.exists(posixpath.join(evaluation, BLESSED_MARKER))
    marked_not = tf.io.gfile.exists(posixpath.join(evaluation, NOT_BLESSED_MARKER))
    blessing: dict = {}
    if tf.io.gfile.exists(path):
        try:
            blessing = _read_json(path)
        except (ValueError, tf.errors.OpError) as e:
            raise PushError(f"{path} is not valid JSON ({e}); re-run the evaluator.") from None
        if not isinstance(blessing, dict) or not isinstance(blessing.get("blessed"), bool):
            raise PushError(f"{path} has no true/false \"blessed\" field; re-run the evaluator.")
    elif not (marked_blessed or marked_not):
        raise PushError(f"evaluation dir {evaluation} holds no blessing ({BLESSING_FILE}, {BLESSED_MARKER} or "
                        f"{NOT_BLESSED_MARKER}); run the evaluator with --output_dir {evaluation} first.")
    votes = {v for v, present in ((True, marked_blessed), (False, marked_not)) if present}
    if blessing:
        votes.add(blessing["blessed"])
    if len(votes) > 1:
        return False, (f"the blessing in {evaluation} contradicts itself ({BLESSING_FILE}, {BLESSED_MARKER}, "
                       f"{NOT_BLESSED_MARKER} disagree); re-run the evaluator."), blessing
    if votes == {True}:
        return True, "the evaluator blessed the model", blessing
    failed = [c for c in blessing.get("checks", []) if isinstance(c, dict) and not c.get("passed", True)]
    detail = "; ".join(f"{c.get('name', '?')}: {c.get('detail', '')}".rstrip(": ") for c in failed)
    return False, "the evaluator did not bless the model" + (f" (failed: {detail})" if detail else ""), blessing


def _same_path(a: str, b: str) -> bool:
    if "://" in a or "://" in b:
        return a.rstrip("/") == b.rstrip("/")
    return os.path.realpath(a) == os.path.realpath(b)


# ---------------------------------------------------------------- push


def _stage(config: PushConfig, staging: str) -> None:
    """Write the serving SavedModel into `staging`: exported from .keras, or copied from a SavedModel dir."""
    if is_saved_model(config.model):
        copy_tree(config.model, staging)
        if not tf.io.gfile.exists(posixpath.join(staging, WARMUP_FILE)):
            export.write_warmup(staging, export.sample_images())
        return
    try:
        export.export_serving_model(config.model, staging, max_pixels=config.max_pixels,
                                    warmup=export.sample_images())
    except export.ExportError as e:
        raise PushError(str(e)) from None



def push(config: PushConfig) -> PushResult:
    """Export, validate in a fresh process and publish `config.model` if blessed; always writes pushed.json.

    Raises PushError for user mistakes (missing model or blessing, a
    blessing for a different model, a bad config).
    """
    config.validate_config()
    if config.serving_dir is None:
        raise PushError("no serving dir was given; pass --serving_dir, the TF Serving root that versions go under.")
    if not (tf.io.gfile.exists(config.model)):
        raise PushError(f"model {config.model} does not exist; pass the trainer's OUT/model.keras "
                        "(or a serving SavedModel dir).")
    blessed, reason, blessing = read_blessing(config.evaluation)
    evaluated = blessing.get("model_path")
    if isinstance(evaluated, str) and evaluated and not _same_path(evaluated, config.model):
        raise PushError(f"the blessing in {config.evaluation} is for {evaluated}, not {config.model}; "
                        "evaluate this model first or push the evaluated one.")
    record_path = posixpath.join(config.output or config.evaluation, PUSH_RECORD_FILE)
    record: dict[str, Any] = {
        "pushed": False, "blessed": blessed, "version": None, "version_dir": None, "reason": reason,
        "model": config.model, "evaluation": config.evaluation, "serving_dir": config.serving_dir,
        "model_name": config.model_name, "validation": None, "export_seconds": None, "configs": None,
        "time": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }

    def finish(**changes: Any) -> PushResult:
        record.update(changes)
        write_record(record_path, record)
        return PushResult(pushed=record["pushed"], version=record["version"], version_dir=record["version_dir"],
                          reason=record["reason"], record_path=record_path, blessed=blessed,
                          validation=record["validation"])

    if not blessed:
        return finish(reason=f"nothing pushed: {reason}")
    model_dir = posixpath.join(config.serving_dir, config.model_name)
    tf.io.gfile.makedirs(model_dir)
    remove_stale_temp_dirs(model_dir)
    version = (list_versions(model_dir) or [0])[-1] + 1
    staging = posixpath.join(model_dir, f"{TMP_PREFIX}{version}-{os.getpid()}")
    try:
        start = time.monotonic()
        _stage(config, staging)
        record["export_seconds"] = round(time.monotonic() - start, 3)
        if config.validate:
            validation = validate_in_fresh_process(staging, config.validation_timeout_s)
            record["validation"] = validation
            if not validation["ok"]:
                return finish(reason=f"nothing pushed: the exported model failed validation: "
                              f"{validation['reason']}")
        version, version_dir, configs = publish(staging, config.serving_dir, config.model_name, version,
                                                config.batching)
    except (OSError, tf.errors.ResourceExhaustedError) as e:
        if not is_disk_full(e):
            raise
        reason = (f"nothing pushed: the disk under {config.serving_dir} is full (models.config and the served "
                  f"versions are unchanged); free some space and push again")
        try:
            return finish(reason=reason)
        except (OSError, tf.errors.ResourceExhaustedError):
            raise PushError(f"{reason}.") from None
    finally:
        if tf.io.gfile.exists(staging):
            tf.io.gfile.rmtree(staging)
    checked = "validated in a fresh process" if config.validate else "not validated (--no_validate)"
    try:
        return finish(pushed=True, version=version, version_dir=version_dir, configs=configs,
                      reason=f"pushed {config.model_name} version {version}: blessed and {checked}")
    except (OSError, tf.errors.ResourceExhaustedError) as e:
        if not is_disk_full(e):
            raise
        raise PushError(f"pushed {config.model_name} version {version}, but its disk is full so the record "
                        f"{record_path} was not written; free some space there.") from None


# ---------------------------------------------------------------- CLI


def _parser() -> argparse.ArgumentParser:
    p = settings.parser(
        PushConfig,
        prog="python -m components.pusher",
        description="Publish a blessed model into a TF Serving model base path, after checking in a fresh process "
        "that the exported SavedModel loads and answers its warmup requests.",
        skip=("validate",),
    )
    for action in p._actions:  # --validate_only DIR needs neither: main() names the missing ones
        if action.dest in ("model", "evaluation"):
            action.required = False
    p.add_argument("--no_validate", "--no-validate", dest="validate", action="store_false",
                   help="skip the fresh-process load-and-query check")
    p.add_argument("--validate_only", metavar="SAVED_MODEL_DIR",
                   help="only run the load-and-query check on this SavedModel here and print its result as JSON")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Push (exit 0, also when not blessed), 1 when validation failed, 2 for a user mistake."""
    parser = _parser()
    args = parser.parse_args(argv)
    if args.validate_only:
        result = validate_serving_model(args.validate_only)
        print(json.dumps(result), flush=True)
        return 0 if result["ok"] else 1
    missing = [f"--{name}" for name in ("model", "evaluation", "serving_dir") if not getattr(args, name)]
    if missing:
        parser.error(f"{', '.join(missing)} required (or use --validate_only DIR)")
    config = settings.from_args(PushConfig, args)
    try:
        result = push(config)
    except PushError as e:
        print(f"pusher: {e}", file=sys.stderr)
        return 2
    if result.pushed:
        validation = result.validation
        timing = (f" (fresh process: loaded in {validation['load_seconds']} s, answered "
                  f"{validation['requests']} warmup requests in {validation['query_seconds']} s)" if validation else "")
        configs = [posixpath.join(config.serving_dir, name) for name in (MODELS_CONFIG_FILE, BATCHING_FILE, MONITORING_FILE)]
        print(f"pusher: {result.reason}{timing}.\npusher: wrote {result.version_dir}/, {', '.join(configs)} "
              f"and {result.record_path}")
        return 0
    print(f"pusher: {result.reason}.\npusher: wrote {result.record_path}",
          file=sys.stderr if result.blessed else sys.stdout)
    return 1 if result.blessed else 0


if __name__ == "__main__":
    sys.exit(main())
