"""pusher: publish a blessed, validated serving SavedModel into a versioned TF Serving model base path.

Like TFX's InfraValidator + Pusher: nothing is published unless the
evaluator blessed the model (blessing.json says "blessed": true / a BLESSED
marker) and the exported SavedModel, loaded in a fresh Python process,
answers its own warmup requests (assets.extra/tf_serving_warmup_requests)
with a PNG of each request image's size. The version is written to
`<serving_dir>/<model_name>/.tmp-<version>-<pid>/`, validated there, then
renamed to `<serving_dir>/<model_name>/<version>/` (1 + the highest existing
version), so TF Serving never sees a half-written version. Every push
regenerates `<serving_dir>/models.config` (labels stable = previous version,
canary = this one), `batching_parameters.txt` and `monitoring.config`, and
writes a record, `pushed.json`, to the evaluation dir (or --output).

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
import io
import json
import os
import posixpath
import re
import subprocess
import sys
import time
from typing import Any, Sequence

import tensorflow as tf

from components import export

BLESSING_FILE = "blessing.json"
BLESSED_MARKER = "BLESSED"
NOT_BLESSED_MARKER = "NOT_BLESSED"
RECORD_FILE = "pushed.json"
MODELS_CONFIG = "models.config"
BATCHING_FILE = "batching_parameters.txt"
MONITORING_FILE = "monitoring.config"
PROMETHEUS_PATH = "/monitoring/prometheus/metrics"
DEFAULT_BATCHING = {"max_batch_size": 8, "batch_timeout_micros": 2000, "max_enqueued_batches": 100,
                    "num_batch_threads": 2}
"""TF Serving BatchingParameters fields (all integers) and their defaults here."""
VALIDATION_TIMEOUT_S = 600.0
_TMP_PREFIX = ".tmp-"
_TMP_RE = re.compile(r"^\.tmp-(\d+)-(\d+)$")
_MODEL_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
_PACKAGE_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class PushError(Exception):
    """A mistake the user can fix (missing model or blessing, bad config); one sentence naming it."""


@dataclasses.dataclass
class PushConfig:
    """What to push and where; `output` is where pushed.json goes (default: the evaluation dir)."""

    model: str
    evaluation: str
    serving_dir: str
    model_name: str = "colorizer"
    max_pixels: int = export.MAX_PIXELS
    validate: bool = True
    batching: dict = dataclasses.field(default_factory=lambda: dict(DEFAULT_BATCHING))
    output: str | None = None
    validation_timeout_s: float = VALIDATION_TIMEOUT_S

    def validate_config(self) -> None:
        """Raise PushError for a config TF Serving or this pusher cannot use."""
        if not _MODEL_NAME_RE.match(self.model_name or ""):
            raise PushError(f"model name {self.model_name!r} is not a folder name TF Serving accepts; use letters, "
                            "digits, '_', '-' or '.', e.g. colorizer.")
        if not (isinstance(self.max_pixels, int) and self.max_pixels > 0):
            raise PushError(f"max_pixels must be a positive integer, got {self.max_pixels!r}.")
        unknown = sorted(set(self.batching) - set(DEFAULT_BATCHING))
        if unknown:
            raise PushError(f"unknown batching parameter {unknown[0]!r}; use {', '.join(DEFAULT_BATCHING)}.")
        for key, value in self.batching.items():
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise PushError(f"batching parameter {key} must be a positive integer, got {value!r}.")
        if not self.validation_timeout_s > 0:
            raise PushError(f"validation_timeout_s must be positive, got {self.validation_timeout_s!r}.")


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


# ---------------------------------------------------------------- validation


def _first_line(error: BaseException) -> str:
    text = getattr(error, "message", None) or str(error) or type(error).__name__
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    useful = [line for line in lines if not line.startswith(("Graph execution error", "Detected at node", "<stack"))]
    return (useful or lines or [type(error).__name__])[0]


def _image_size(data: bytes) -> tuple[int, int]:
    from PIL import Image

    with Image.open(io.BytesIO(data)) as image:
        return image.size


def _check_answer(request_images: Sequence[bytes], answers: Sequence[bytes]) -> str | None:
    """Why the answers to one request are wrong, or None: each must be an RGB PNG of its image's size."""
    from PIL import Image

    if len(answers) != len(request_images):
        return f"it answered {len(answers)} images to a request of {len(request_images)}"
    for i, (data, answer) in enumerate(zip(request_images, answers)):
        if not answer.startswith(b"\x89PNG\r\n\x1a\n"):
            return f"answer {i} is not a PNG"
        with Image.open(io.BytesIO(answer)) as image:
            size, mode = image.size, image.mode
        if size != _image_size(data) or mode != "RGB":
            return f"answer {i} is a {mode} {size[0]}x{size[1]} PNG for a {'x'.join(map(str, _image_size(data)))} image"
    return None


def validate_serving_model(export_dir: str) -> dict:
    """Load a serving SavedModel and replay its warmup requests; {"ok", "reason", timings}. Never raises.

    This is the check the fresh process runs (TFX InfraValidator's
    load-and-query): a model that cannot load, has no warmup requests, or
    answers any of them with anything but a PNG of the request image's size fails.
    """
    result: dict[str, Any] = {"ok": False, "reason": "", "requests": 0, "load_seconds": None,
                              "query_seconds": None}
    start = time.monotonic()
    try:
        loaded = tf.saved_model.load(export_dir)
    except Exception as e:  # any failure to load is the finding, reported in one line
        result["reason"] = f"the SavedModel in {export_dir} does not load: {_first_line(e)}"
        return result
    result["load_seconds"] = round(time.monotonic() - start, 3)
    try:
        logs = export.read_warmup(export_dir)
    except Exception as e:  # a corrupt warmup file would also stop TF Serving from loading the model
        result["reason"] = f"its warmup file {export.WARMUP_FILE} is unreadable: {_first_line(e)}"
        return result
    if not logs:
        result["reason"] = f"it has no warmup requests in {export.WARMUP_FILE} to validate with"
        return result
    missing = [s for s in (export.SERVING_SIGNATURE, export.PREDICT_AB_SIGNATURE) if s not in loaded.signatures]
    if missing:
        result["reason"] = f"it lacks the signature {missing[0]!r}"
        return result
    start = time.monotonic()
    for n, log in enumerate(logs):
        if not log.HasField("predict_log"):
            result["reason"] = f"warmup record {n} is not a PredictLog"
            return result
        request = log.predict_log.request
        name = request.model_spec.signature_name or export.SERVING_SIGNATURE
        if name not in loaded.signatures:
            result["reason"] = f"warmup request {n} asks for the missing signature {name!r}"
            return result
        inputs = {key: tf.constant(tf.make_ndarray(proto)) for key, proto in request.inputs.items()}
        try:
            outputs = loaded.signatures[name](**inputs)
        except Exception as e:  # a failing request is the finding
            result["reason"] = f"warmup request {n} failed: {_first_line(e)}"
            return result
        if name == export.SERVING_SIGNATURE:
            images = [bytes(b) for b in inputs.get(export.IMAGE_BYTES, tf.constant([], tf.string)).numpy()]
            answers = outputs.get(export.COLORIZED_BYTES)
            problem = ("it returned no colorized_bytes" if answers is None
                       else _check_answer(images, [bytes(b) for b in answers.numpy()]))
            if problem:
                result["reason"] = f"warmup request {n}: {problem}"
                return result
        result["requests"] = n + 1
    predict_ab = loaded.signatures[export.PREDICT_AB_SIGNATURE]
    spec = predict_ab.structured_input_signature[1].get(export.L_INPUT)
    if spec is None or spec.shape.rank != 4:
        result["reason"] = f"predict_ab does not take an L batch {export.L_INPUT!r} [-1, S, S, 1]"
        return result
    size = spec.shape[1]
    try:
        ab = predict_ab(**{export.L_INPUT: tf.fill([1, size, size, 1], 50.0)})[export.AB_OUTPUT].numpy()
    except Exception as e:  # a failing signature is the finding
        result["reason"] = f"predict_ab failed: {_first_line(e)}"
        return result
    if ab.shape != (1, size, size, 2) or not bool(tf.reduce_all(tf.math.is_finite(ab))):
        result["reason"] = f"predict_ab returned {ab.shape} values that are not all finite ab [1, {size}, {size}, 2]"
        return result
    result["query_seconds"] = round(time.monotonic() - start, 3)
    result.update(ok=True, reason=f"loaded and answered its {result['requests']} warmup requests")
    return result


def validate_in_fresh_process(export_dir: str, timeout_s: float = VALIDATION_TIMEOUT_S) -> dict:
    """Run validate_serving_model in a new Python process, as a server would load the model from scratch."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (_PACKAGE_ROOT, env.get("PYTHONPATH")) if p)
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    command = [sys.executable, "-m", "components.pusher", "--validate_only", _absolute(export_dir)]
    start = time.monotonic()
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout_s, env=env,
                              cwd=_PACKAGE_ROOT)
    except subprocess.TimeoutExpired:
        return {"ok": False, "reason": f"the fresh process did not finish validating within {timeout_s:g} s",
                "process_seconds": round(time.monotonic() - start, 3)}
    elapsed = round(time.monotonic() - start, 3)
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    try:
        result = json.loads(lines[-1])
    except (IndexError, ValueError):
        tail = [line for line in done.stderr.strip().splitlines() if line.strip()]
        result = {"ok": False, "reason": f"the fresh process exited with status {done.returncode}"
                  + (f": {tail[-1].strip()}" if tail else "")}
    result["ok"] = bool(result.get("ok")) and done.returncode == 0
    result["process_seconds"] = elapsed
    return result


# ---------------------------------------------------------------- serving configs


def _versions(model_dir: str) -> list[int]:
    if not tf.io.gfile.isdir(model_dir):
        return []
    return sorted(int(n.rstrip("/")) for n in tf.io.gfile.listdir(model_dir) if n.rstrip("/").isdigit())


def _absolute(path: str) -> str:
    return path.rstrip("/") if "://" in path else os.path.abspath(path)


def _write_text(path: str, text: str) -> None:
    """Write `text` to `path` via a temp file and a rename, so a polling server never reads half of it."""
    partial = posixpath.join(posixpath.dirname(path), f".{posixpath.basename(path)}.{os.getpid()}.partial")
    with tf.io.gfile.GFile(partial, "w") as f:
        f.write(text)
    tf.io.gfile.rename(partial, path, overwrite=True)


def models_config_text(serving_dir: str) -> str:
    """ModelServerConfig for every model under `serving_dir`: the two newest versions, stable and canary labels."""
    from google.protobuf import text_format
    from tensorflow_serving.config import model_server_config_pb2

    config = model_server_config_pb2.ModelServerConfig()
    names = sorted(n.rstrip("/") for n in tf.io.gfile.listdir(serving_dir)
                   if tf.io.gfile.isdir(posixpath.join(serving_dir, n.rstrip("/"))))
    for name in names:
        model_dir = posixpath.join(serving_dir, name)
        versions = _versions(model_dir)
        if not versions or not _MODEL_NAME_RE.match(name):
            continue
        entry = config.model_config_list.config.add(
            name=name, base_path=_absolute(model_dir), model_platform="tensorflow"
        )
        entry.model_version_policy.latest.num_versions = 2
        entry.version_labels["stable"] = versions[-2] if len(versions) > 1 else versions[-1]
        entry.version_labels["canary"] = versions[-1]
    return text_format.MessageToString(config)


def batching_parameters_text(batching: dict) -> str:
    """TF Serving BatchingParameters text proto (pad_variable_length_inputs stays off: inputs are strings)."""
    return "".join(f"{key} {{ value: {int(batching[key])} }}\n" for key in DEFAULT_BATCHING if key in batching)


def monitoring_config_text() -> str:
    """TF Serving MonitoringConfig: Prometheus metrics on the REST port."""
    return f'prometheus_config {{\n  enable: true\n  path: "{PROMETHEUS_PATH}"\n}}\n'


def write_serving_configs(serving_dir: str, batching: dict) -> dict[str, str]:
    """(Re)write models.config, batching_parameters.txt and monitoring.config; returns their paths."""
    paths = {
        "models_config": posixpath.join(serving_dir, MODELS_CONFIG),
        "batching_parameters": posixpath.join(serving_dir, BATCHING_FILE),
        "monitoring_config": posixpath.join(serving_dir, MONITORING_FILE),
    }
    _write_text(paths["models_config"], models_config_text(serving_dir))
    _write_text(paths["batching_parameters"], batching_parameters_text(batching))
    _write_text(paths["monitoring_config"], monitoring_config_text())
    return paths


# ---------------------------------------------------------------- push


def _is_saved_model(path: str) -> bool:
    return tf.io.gfile.isdir(path) and tf.io.gfile.exists(posixpath.join(path, "saved_model.pb"))


def _copy_tree(source: str, target: str) -> None:
    for folder, _, files in tf.io.gfile.walk(source):
        relative = os.path.relpath(folder, source) if "://" not in source else folder[len(source):].lstrip("/")
        destination = target if relative in ("", ".") else posixpath.join(target, relative)
        tf.io.gfile.makedirs(destination)
        for name in files:
            tf.io.gfile.copy(posixpath.join(folder, name), posixpath.join(destination, name))


def _remove_stale_temp_dirs(model_dir: str) -> None:
    """Remove .tmp-<version>-<pid> dirs left by pushes on this machine whose process is gone (local dirs only)."""
    if "://" in model_dir or not os.path.isdir(model_dir):
        return
    for name in os.listdir(model_dir):
        match = _TMP_RE.match(name)
        if not match or int(match.group(2)) == os.getpid():
            continue
        try:
            os.kill(int(match.group(2)), 0)
        except ProcessLookupError:
            tf.io.gfile.rmtree(os.path.join(model_dir, name))
        except PermissionError:
            pass  # a live process of another user


def _stage(config: PushConfig, staging: str) -> None:
    """Write the serving SavedModel into `staging`: exported from .keras, or copied from a SavedModel dir."""
    if _is_saved_model(config.model):
        _copy_tree(config.model, staging)
        if not tf.io.gfile.exists(posixpath.join(staging, export.WARMUP_FILE)):
            export.write_warmup(staging, export.sample_images())
        return
    try:
        export.export_serving_model(config.model, staging, max_pixels=config.max_pixels,
                                    warmup=export.sample_images())
    except export.ExportError as e:
        raise PushError(str(e)) from None


def _publish(staging: str, model_dir: str, version: int) -> tuple[int, str]:
    """Rename `staging` to the first free version dir from `version` on; (version, dir)."""
    for _ in range(100):
        version = max([version, *(v + 1 for v in _versions(model_dir))])
        target = posixpath.join(model_dir, str(version))
        try:
            tf.io.gfile.rename(staging, target, overwrite=False)
            return version, target
        except tf.errors.AlreadyExistsError:
            version += 1
    raise RuntimeError(f"could not find a free version under {model_dir} after 100 tries")


def _write_record(path: str, record: dict) -> None:
    tf.io.gfile.makedirs(posixpath.dirname(path) or ".")
    _write_text(path, json.dumps(record, indent=2) + "\n")


def push(config: PushConfig) -> PushResult:
    """Export, validate in a fresh process and publish `config.model` if blessed; always writes pushed.json.

    Raises PushError for user mistakes (missing model or blessing, a
    blessing for a different model, a bad config).
    """
    config.validate_config()
    if not (tf.io.gfile.exists(config.model)):
        raise PushError(f"model {config.model} does not exist; pass the trainer's OUT/model.keras "
                        "(or a serving SavedModel dir).")
    blessed, reason, blessing = read_blessing(config.evaluation)
    evaluated = blessing.get("model_path")
    if isinstance(evaluated, str) and evaluated and not _same_path(evaluated, config.model):
        raise PushError(f"the blessing in {config.evaluation} is for {evaluated}, not {config.model}; "
                        "evaluate this model first or push the evaluated one.")
    record_path = posixpath.join(config.output or config.evaluation, RECORD_FILE)
    record: dict[str, Any] = {
        "pushed": False, "blessed": blessed, "version": None, "version_dir": None, "reason": reason,
        "model": config.model, "evaluation": config.evaluation, "serving_dir": config.serving_dir,
        "model_name": config.model_name, "validation": None, "export_seconds": None, "configs": None,
        "time": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }

    def finish(**changes: Any) -> PushResult:
        record.update(changes)
        _write_record(record_path, record)
        return PushResult(pushed=record["pushed"], version=record["version"], version_dir=record["version_dir"],
                          reason=record["reason"], record_path=record_path, blessed=blessed,
                          validation=record["validation"])

    if not blessed:
        return finish(reason=f"nothing pushed: {reason}")
    model_dir = posixpath.join(config.serving_dir, config.model_name)
    tf.io.gfile.makedirs(model_dir)
    _remove_stale_temp_dirs(model_dir)
    version = (_versions(model_dir) or [0])[-1] + 1
    staging = posixpath.join(model_dir, f"{_TMP_PREFIX}{version}-{os.getpid()}")
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
        version, version_dir = _publish(staging, model_dir, version)
    finally:
        if tf.io.gfile.exists(staging):
            tf.io.gfile.rmtree(staging)
    configs = write_serving_configs(config.serving_dir, config.batching)
    checked = "validated in a fresh process" if config.validate else "not validated (--no_validate)"
    return finish(pushed=True, version=version, version_dir=version_dir, configs=configs,
                  reason=f"pushed {config.model_name} version {version}: blessed and {checked}")


# ---------------------------------------------------------------- CLI


def _batching_flag(text: str) -> tuple[str, int]:
    key, sep, value = text.partition("=")
    if not sep or key not in DEFAULT_BATCHING or not value.isdigit() or int(value) < 1:
        raise argparse.ArgumentTypeError(
            f"expected KEY=POSITIVE_INT with KEY one of {', '.join(DEFAULT_BATCHING)}, got {text!r}")
    return key, int(value)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m components.pusher",
        description="Publish a blessed model into a TF Serving model base path, after checking in a fresh process "
        "that the exported SavedModel loads and answers its warmup requests.",
    )
    p.add_argument("--model", help="the trainer's model.keras (or an exported serving SavedModel dir)")
    p.add_argument("--evaluation", help="the evaluator's output dir holding blessing.json and BLESSED/NOT_BLESSED")
    p.add_argument("--serving_dir", help="TF Serving root: versions go to SERVING_DIR/MODEL_NAME/<version>/")
    p.add_argument("--model_name", default="colorizer", help="TF Serving model name (default colorizer)")
    p.add_argument("--output", help="dir for the pushed.json record (default: the evaluation dir)")
    p.add_argument("--max_pixels", type=int, default=export.MAX_PIXELS,
                   help=f"largest image a request may send, in pixels (default {export.MAX_PIXELS:,}); "
                   "applies when exporting from .keras")
    p.add_argument("--batching", type=_batching_flag, action="append", default=[], metavar="KEY=N",
                   help="override a batching parameter, e.g. max_batch_size=16 (defaults: "
                   + ", ".join(f"{k}={v}" for k, v in DEFAULT_BATCHING.items()) + ")")
    p.add_argument("--no_validate", action="store_true", help="skip the fresh-process load-and-query check")
    p.add_argument("--validation_timeout_s", type=float, default=VALIDATION_TIMEOUT_S,
                   help="give up on the fresh-process check after this many seconds "
                   f"(default {VALIDATION_TIMEOUT_S:g})")
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
    config = PushConfig(
        model=args.model, evaluation=args.evaluation, serving_dir=args.serving_dir, model_name=args.model_name,
        max_pixels=args.max_pixels, validate=not args.no_validate,
        batching={**DEFAULT_BATCHING, **dict(args.batching)}, output=args.output,
        validation_timeout_s=args.validation_timeout_s,
    )
    try:
        result = push(config)
    except PushError as e:
        print(f"pusher: {e}", file=sys.stderr)
        return 2
    if result.pushed:
        validation = result.validation
        timing = (f" (fresh process: loaded in {validation['load_seconds']} s, answered "
                  f"{validation['requests']} warmup requests in {validation['query_seconds']} s)" if validation else "")
        configs = [posixpath.join(config.serving_dir, name) for name in (MODELS_CONFIG, BATCHING_FILE, MONITORING_FILE)]
        print(f"pusher: {result.reason}{timing}.\npusher: wrote {result.version_dir}/, {', '.join(configs)} "
              f"and {result.record_path}")
        return 0
    print(f"pusher: {result.reason}.\npusher: wrote {result.record_path}",
          file=sys.stderr if result.blessed else sys.stdout)
    return 1 if result.blessed else 0


if __name__ == "__main__":
    sys.exit(main())
