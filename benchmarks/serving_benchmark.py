"""Serving benchmark: latency and throughput of the colorizer over gRPC and REST against calling it in-process.

One exported serving SavedModel (Model 1 at --image_size, random weights:
speed does not depend on their values) answers two request images, a
250x250 JPEG (LFW's size) and a 1024x768 JPEG (a phone photo scaled down),
both from the project's own scene generator:

1. in-process: `tf.saved_model.load(...).signatures["serving_default"]`
   called from --concurrency threads in this process: the floor.
2. gRPC (`PredictionService/Predict`) and REST (`POST /v1/models/colorizer:predict`,
   base64 "instances"), each against `python -m serving.server` started as a
   separate process on loopback, once with batching off and once with
   `--enable_batching` (the pusher's batching_parameters.txt defaults).

For every (image, path, batching, concurrency) it sends --warmup untimed
requests, then --requests timed ones from `concurrency` client threads
(closed loop: each thread sends its next request when the last returns),
and reports p50 and p99 latency and requests/s. Overhead = served p50 /
in-process p50 at the same image and concurrency. Every request must
succeed: a failure is counted and shown. Server and clients share the
machine's cores (the table says how many).

    python -m benchmarks.serving_benchmark [--image_size 224] [--requests 60] [--concurrency 1 8]
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Callable

import numpy as np

from benchmarks.measure import child_env, machine_info, median, print_table, usable_cores
from schemas.artifacts import BATCHING_FILE
from schemas.serving import COLORIZED_BYTES, IMAGE_BYTES, SERVING_SIGNATURE

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODEL_NAME = "colorizer"
IMAGES = {"250x250": (250, 250), "1024x768": (768, 1024)}  # name -> (height, width)
MAX_MESSAGE = 64 * 1024 * 1024


def _jpeg(height: int, width: int, seed: int) -> bytes:
    from PIL import Image

    from components import synthetic

    rgb = synthetic.render_scene(np.random.default_rng(seed), height, width)
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _export(workdir: str, image_size: int) -> str:
    """Model 1 with random weights, exported as the serving SavedModel version 1; returns the base path."""
    from components import export, models

    base = os.path.join(workdir, "serving", MODEL_NAME)
    version = os.path.join(base, "1")
    if not os.path.isdir(version):
        model = models.build_model1(image_size)
        export.export_serving_model(model, version, warmup=export.sample_images())
    return base


def _closed_loop(call: Callable[[], None], *, concurrency: int, warmup: int, requests: int) -> dict:
    """p50/p99 latency (ms), requests/s and failures of `requests` calls from `concurrency` threads."""
    errors: list[str] = []
    latencies: list[float] = []
    lock = threading.Lock()
    remaining = [requests]

    def one() -> None:
        t0 = time.perf_counter()
        try:
            call()
        except Exception as e:  # counted and shown: a benchmark must not hide failures
            with lock:
                errors.append(str(e).splitlines()[0][:200])
            return
        with lock:
            latencies.append(time.perf_counter() - t0)

    def worker() -> None:
        while True:
            with lock:
                if remaining[0] <= 0:
                    return
                remaining[0] -= 1
            one()

    with ThreadPoolExecutor(concurrency) as pool:
        list(pool.map(lambda _: call(), range(max(warmup, concurrency))))
        start = time.perf_counter()
        for f in [pool.submit(worker) for _ in range(concurrency)]:
            f.result()
        wall = time.perf_counter() - start
    lat = np.array(latencies) * 1e3
    return {
        "p50_ms": float(np.percentile(lat, 50)) if len(lat) else None,
        "p99_ms": float(np.percentile(lat, 99)) if len(lat) else None,
        "rps": len(latencies) / wall if wall else None,
        "ok": len(latencies),
        "failed": len(errors),
        "first_error": errors[0] if errors else None,
    }


def _in_process(base: str, images: dict[str, bytes], args) -> list[dict]:
    import tensorflow as tf

    fn = tf.saved_model.load(os.path.join(base, "1")).signatures[SERVING_SIGNATURE]
    rows = []
    for name, data in images.items():
        request = tf.constant([data])
        for c in args.concurrency:
            stats = _closed_loop(lambda: fn(image_bytes=request), concurrency=c, warmup=args.warmup,
                                 requests=args.requests)
            rows.append({"image": name, "path": "in-process", "batching": "-", "concurrency": c, **stats})
    return rows


def _grpc_caller(port: int, data: bytes) -> Callable[[], None]:
    import grpc
    import tensorflow as tf
    from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

    channel = grpc.insecure_channel(f"127.0.0.1:{port}", options=[
        ("grpc.max_send_message_length", MAX_MESSAGE), ("grpc.max_receive_message_length", MAX_MESSAGE)])
    stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
    request = predict_pb2.PredictRequest()
    request.model_spec.name = MODEL_NAME
    request.model_spec.signature_name = SERVING_SIGNATURE
    request.inputs[IMAGE_BYTES].CopyFrom(tf.make_tensor_proto([data], dtype=tf.string))

    def call() -> None:
        response = stub.Predict(request, timeout=120)
        if not response.outputs[COLORIZED_BYTES].string_val:
            raise RuntimeError("gRPC response holds no colorized_bytes")

    return call


def _rest_caller(port: int, data: bytes) -> Callable[[], None]:
    """A caller that keeps one HTTP session per client thread (requests.Session is not thread-safe)."""
    url = f"http://127.0.0.1:{port}/v1/models/{MODEL_NAME}:predict"
    body = json.dumps({"instances": [{"b64": base64.b64encode(data).decode("ascii")}]})
    local = threading.local()

    def call() -> None:
        if not hasattr(local, "call"):
            local.call = _rest_caller_single(url, body)
        local.call()

    return call


def _rest_caller_single(url: str, body: str) -> Callable[[], None]:
    import requests

    session = requests.Session()

    def call() -> None:
        r = session.post(url, data=body, headers={"Content-Type": "application/json"}, timeout=120)
        if r.status_code != 200:
            raise RuntimeError(f"HTTP {r.status_code}: {r.text[:200]}")
        if "predictions" not in r.json():
            raise RuntimeError("REST response holds no predictions")

    return call


def _wait_ready(proc: subprocess.Popen, rest_port: int, timeout_s: float = 180) -> None:
    import requests

    deadline = time.time() + timeout_s
    url = f"http://127.0.0.1:{rest_port}/v1/models/{MODEL_NAME}"
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"serving.server exited with status {proc.returncode} before it was ready")
        try:
            r = requests.get(url, timeout=2)
            states = [v.get("state") for v in r.json().get("model_version_status", [])]
            if r.status_code == 200 and "AVAILABLE" in states:
                return
        except (requests.RequestException, ValueError):
            pass
        time.sleep(0.5)
    raise RuntimeError(f"serving.server was not ready within {timeout_s:.0f} s")


def _served(base: str, images: dict[str, bytes], args, batching: bool, workdir: str) -> list[dict]:
    grpc_port, rest_port = _free_port(), _free_port()
    cmd = [sys.executable, "-m", "serving.server", f"--port={grpc_port}", f"--rest_api_port={rest_port}",
           f"--model_name={MODEL_NAME}", f"--model_base_path={base}"]
    if batching:
        params = os.path.join(workdir, BATCHING_FILE)
        with open(params, "w") as f:
            f.write("max_batch_size { value: 8 }\nbatch_timeout_micros { value: 2000 }\n"
                    "max_enqueued_batches { value: 100 }\nnum_batch_threads { value: 2 }\n")
        cmd += ["--enable_batching", f"--batching_parameters_file={params}"]
    log = open(os.path.join(workdir, f"server_batching_{int(batching)}.log"), "w")
    proc = subprocess.Popen(cmd, cwd=REPO, env=child_env(REPO), stdout=log, stderr=subprocess.STDOUT)
    rows = []
    try:
        _wait_ready(proc, rest_port)
        for name, data in images.items():
            for protocol, make in (("grpc", lambda: _grpc_caller(grpc_port, data)),
                                   ("rest", lambda: _rest_caller(rest_port, data))):
                call = make()
                for c in args.concurrency:
                    stats = _closed_loop(call, concurrency=c, warmup=args.warmup, requests=args.requests)
                    rows.append({"image": name, "path": protocol, "batching": "on" if batching else "off",
                                 "concurrency": c, **stats})
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--image_size", type=int, default=224, help="the model's training size (default 224)")
    parser.add_argument("--requests", type=int, default=60, help="timed requests per cell (default 60)")
    parser.add_argument("--warmup", type=int, default=5, help="untimed requests per cell first (default 5)")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8], help="client threads (default 1 8)")
    parser.add_argument("--workdir", default=None, help="where the SavedModel goes (default: a temp dir)")
    parser.add_argument("--json", default=None, help="also write every row to this JSON file")
    args = parser.parse_args(argv)

    workdir = args.workdir or tempfile.mkdtemp(prefix="serving_bench_")
    os.makedirs(workdir, exist_ok=True)
    base = _export(workdir, args.image_size)
    images = {name: _jpeg(h, w, seed=i) for i, (name, (h, w)) in enumerate(IMAGES.items())}

    rows = _in_process(base, images, args)
    for batching in (False, True):
        rows += _served(base, images, args, batching, workdir)

    floor = {(r["image"], r["concurrency"]): r for r in rows if r["path"] == "in-process"}
    table = []
    for r in rows:
        ref = floor[(r["image"], r["concurrency"])]
        overhead = r["p50_ms"] / ref["p50_ms"] if r["p50_ms"] and ref["p50_ms"] else None
        r["overhead_p50"] = overhead
        table.append([r["image"], r["path"], r["batching"], r["concurrency"], _f(r["p50_ms"]), _f(r["p99_ms"]),
                      _f(r["rps"]), "" if r["path"] == "in-process" else _f(overhead, 2), r["failed"]])
    print(f"\nserving benchmark: Model 1 at {args.image_size}, {args.requests} timed requests per row, "
          f"{usable_cores()} cores shared by server and clients")
    print_table(["image", "path", "batching", "concurrency", "p50 ms", "p99 ms", "req/s", "overhead", "failed"],
                table)
    failed = sum(r["failed"] for r in rows)
    for r in rows:
        if r["first_error"]:
            print(f"  {r['image']} {r['path']} batching {r['batching']} c{r['concurrency']}: {r['first_error']}")
    grpc1 = [r for r in rows if r["path"] == "grpc" and r["batching"] == "off" and r["concurrency"] == 1]
    headline = median([r["overhead_p50"] for r in grpc1])
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"machine": machine_info(), "args": vars(args), "rows": rows}, f, indent=1)
    print(f"serving overhead, gRPC p50 / in-process p50 at concurrency 1 (median over images): "
          f"{_f(headline, 2)}x; failed requests: {failed}")
    return 1 if failed else 0


def _f(value: float | None, digits: int = 1) -> str:
    return "" if value is None else f"{value:.{digits}f}"


if __name__ == "__main__":
    sys.exit(main())
