"""The pusher's fresh-process validation (TFX InfraValidator's load-and-query): the exported SavedModel must load
in a new Python process and answer its own warmup requests with a PNG of each request image's size.

The fresh process is `python -m components.pusher --validate_only DIR`, which prints this module's result as JSON.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import time
from typing import Any, Sequence

import tensorflow as tf

from components import export
from components.pusher.publish import absolute
from schemas.serving import (
    AB_OUTPUT,
    COLORIZED_BYTES,
    IMAGE_BYTES,
    L_INPUT,
    PREDICT_AB_SIGNATURE,
    SERVING_SIGNATURE,
    WARMUP_FILE,
)

VALIDATION_TIMEOUT_S = 600.0
_PACKAGE_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


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
        result["reason"] = f"its warmup file {WARMUP_FILE} is unreadable: {_first_line(e)}"
        return result
    if not logs:
        result["reason"] = f"it has no warmup requests in {WARMUP_FILE} to validate with"
        return result
    missing = [s for s in (SERVING_SIGNATURE, PREDICT_AB_SIGNATURE) if s not in loaded.signatures]
    if missing:
        result["reason"] = f"it lacks the signature {missing[0]!r}"
        return result
    start = time.monotonic()
    for n, log in enumerate(logs):
        if not log.HasField("predict_log"):
            result["reason"] = f"warmup record {n} is not a PredictLog"
            return result
        request = log.predict_log.request
        name = request.model_spec.signature_name or SERVING_SIGNATURE
        if name not in loaded.signatures:
            result["reason"] = f"warmup request {n} asks for the missing signature {name!r}"
            return result
        inputs = {key: tf.constant(tf.make_ndarray(proto)) for key, proto in request.inputs.items()}
        try:
            outputs = loaded.signatures[name](**inputs)
        except Exception as e:  # a failing request is the finding
            result["reason"] = f"warmup request {n} failed: {_first_line(e)}"
            return result
        if name == SERVING_SIGNATURE:
            images = [bytes(b) for b in inputs.get(IMAGE_BYTES, tf.constant([], tf.string)).numpy()]
            answers = outputs.get(COLORIZED_BYTES)
            problem = ("it returned no colorized_bytes" if answers is None
                       else _check_answer(images, [bytes(b) for b in answers.numpy()]))
            if problem:
                result["reason"] = f"warmup request {n}: {problem}"
                return result
        result["requests"] = n + 1
    predict_ab = loaded.signatures[PREDICT_AB_SIGNATURE]
    spec = predict_ab.structured_input_signature[1].get(L_INPUT)
    if spec is None or spec.shape.rank != 4:
        result["reason"] = f"predict_ab does not take an L batch {L_INPUT!r} [-1, S, S, 1]"
        return result
    size = spec.shape[1]
    try:
        ab = predict_ab(**{L_INPUT: tf.fill([1, size, size, 1], 50.0)})[AB_OUTPUT].numpy()
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
    command = [sys.executable, "-m", "components.pusher", "--validate_only", absolute(export_dir)]
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

