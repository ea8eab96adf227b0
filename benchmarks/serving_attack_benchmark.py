"""Serving attack benchmark: the built-in server under each attack of a hostile client, while a good client is served.

The server is `python -m serving.server --implementation=python` in its own process on loopback,
serving Model 1 at --image_size (random weights) exported as in serving_benchmark. A good client
sends one 250x250 JPEG every --good_interval seconds (open loop, alternating gRPC and REST, 20 s
deadline) from start to end. The attacks run one after another, each for at least --attack_seconds:

    names       gRPC and REST predicts naming 1 MB model and signature names, then a metrics GET
    flood       16 clients each send a 2000x2000 JPEG with a 2 s deadline, retrying refusals and
                timeouts 3 times with the project client's backoff (0.5, 1, 2 s); for --flood_seconds
    png7000x3   three 7000x7000 PNGs of a few hundred KiB in one request (147 MP)
    body_80mb   a REST body announced as 80 MB (over the default --max_request_bytes)
    json_28mb   a 28 MB REST body of numbers (under the limit; wrong dtype for the model)
    deep_json   100,000 nested brackets
    tensor_5e8  an 18-byte TensorProto (one float) claiming shape [500000000]
    framing     a Content-Length that is not a number, and a chunk size that is not hexadecimal
    png7000     one such PNG (49 MP, under the default pixel limit); last, as the memory it takes stays resident

For each attack the table shows the statuses it got, the server's peak resident memory (its
process tree, sampled every 50 ms with benchmarks.measure) from the attack's start until
--after_seconds after its end, and the good requests' p50 / p99 latency and failures during the
attack and in the --after_seconds after it. The headline is the good requests' p99 during the flood.

    python -m benchmarks.serving_attack_benchmark [--json out.json] [--server_flag=--max_inflight_pixels=8000000]
"""

from __future__ import annotations

import argparse
import base64
import collections
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

from benchmarks.measure import child_env, machine_info, print_table, tree_rss_bytes, usable_cores
from benchmarks.serving_benchmark import MAX_MESSAGE, MODEL_NAME, REPO, _export, _free_port, _jpeg, _wait_ready
from schemas.serving import IMAGE_BYTES, SERVING_SIGNATURE

GOOD_DEADLINE_S = 20.0
FLOOD_CLIENTS, FLOOD_DEADLINE_S, FLOOD_RETRIES, BACKOFF_S = 16, 2.0, 3, 0.5  # serving.client's backoff
HUGE_NAME = 1_000_000
METRICS_PATH = "/monitoring/prometheus/metrics"
RSS_PERIOD_S = 0.05


class _Server:
    """serving.server in a child process, with its RSS sampled in the background."""

    def __init__(self, base: str, workdir: str, flags: list[str]):
        self.grpc_port, self.rest_port = _free_port(), _free_port()
        monitoring = os.path.join(workdir, "monitoring.config")
        with open(monitoring, "w") as f:
            f.write(f'prometheus_config {{ enable: true, path: "{METRICS_PATH}" }}\n')
        cmd = [sys.executable, "-m", "serving.server", "--implementation=python", f"--port={self.grpc_port}",
               f"--rest_api_port={self.rest_port}", f"--model_name={MODEL_NAME}", f"--model_base_path={base}",
               f"--monitoring_config_file={monitoring}", *flags]
        self.log_path = os.path.join(workdir, "server.log")
        self._log = open(self.log_path, "w")
        self.proc = subprocess.Popen(cmd, cwd=REPO, env=child_env(REPO), stdout=self._log, stderr=subprocess.STDOUT)
        self.samples: list[tuple[float, int]] = []
        self._stop = threading.Event()
        self._sampler = threading.Thread(target=self._sample, name="rss", daemon=True)
        self._sampler.start()
        _wait_ready(self.proc, self.rest_port)

    def _sample(self) -> None:
        while not self._stop.wait(RSS_PERIOD_S):
            self.samples.append((time.monotonic(), tree_rss_bytes(self.proc.pid)))

    def peak_rss(self, start: float, end: float) -> int:
        return max((rss for t, rss in self.samples if start <= t <= end), default=0)

    def stop(self) -> int | None:
        """Stops the server; its exit status if it had already exited (crashed or killed), else None."""
        self._stop.set()
        status = self.proc.poll()
        if status is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        self._log.close()
        return status


def _grpc_stub(port: int):
    import grpc
    from tensorflow_serving.apis import prediction_service_pb2_grpc

    channel = grpc.insecure_channel(f"127.0.0.1:{port}", options=[
        ("grpc.max_send_message_length", MAX_MESSAGE), ("grpc.max_receive_message_length", MAX_MESSAGE)])
    return prediction_service_pb2_grpc.PredictionServiceStub(channel)


def _predict_request(images: list[bytes], model: str = MODEL_NAME, signature: str = SERVING_SIGNATURE):
    import tensorflow as tf
    from tensorflow_serving.apis import predict_pb2

    request = predict_pb2.PredictRequest()
    request.model_spec.name, request.model_spec.signature_name = model, signature
    request.inputs[IMAGE_BYTES].CopyFrom(tf.make_tensor_proto(images, dtype=tf.string))
    return request


def _grpc_status(stub, request, deadline: float) -> str:
    import grpc

    try:
        stub.Predict(request, timeout=deadline)
        return "OK"
    except grpc.RpcError as e:
        return e.code().name


def _rest_body(images: list[bytes], signature: str = SERVING_SIGNATURE) -> bytes:
    return json.dumps({"signature_name": signature,
                       "instances": [{"b64": base64.b64encode(b).decode("ascii")} for b in images]}).encode()


def _http_status(port: int, head: str, body: bytes = b"", timeout: float = 120) -> str:
    """Sends a raw HTTP request and returns "HTTP <status>", or how it failed."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        try:
            sock.sendall(head.encode() + b"\r\n" + body)
            reply = sock.recv(64)
        except OSError as e:
            return f"connection {type(e).__name__}"
    return f"HTTP {reply.split()[1].decode()}" if reply.startswith(b"HTTP/") else "no response"


def _post_head(port: int, path: str, headers: str) -> str:
    return f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\n{headers}"


def _rest_post(port: int, path: str, body: bytes, timeout: float = 120) -> str:
    return _http_status(port, _post_head(port, path, f"Content-Length: {len(body)}\r\nConnection: close\r\n"), body,
                        timeout=timeout)


class _GoodClient:
    """One 250x250 request every `interval` seconds (open loop), alternating gRPC and REST; records each."""

    def __init__(self, server: _Server, image: bytes, interval: float):
        import requests

        self.interval, self.records = interval, []  # (start, seconds, status)
        self._stub, self._request = _grpc_stub(server.grpc_port), _predict_request([image])
        self._url = f"http://127.0.0.1:{server.rest_port}/v1/models/{MODEL_NAME}:predict"
        self._body, self._session = _rest_body([image]), requests.Session()
        self._pool, self._stop = ThreadPoolExecutor(128), threading.Event()
        self._thread = threading.Thread(target=self._run, name="good-client", daemon=True)
        self._lock = threading.Lock()

    def start(self) -> None:
        self._thread.start()

    def _one(self, use_grpc: bool, start: float) -> None:
        """One request, timed from when it was due (`start`), also if it waited for a client thread."""
        import requests

        if use_grpc:
            status = _grpc_status(self._stub, self._request, GOOD_DEADLINE_S)
        else:
            try:
                reply = requests.post(self._url, data=self._body, timeout=GOOD_DEADLINE_S)
                status = "OK" if reply.status_code == 200 else f"HTTP {reply.status_code}"
            except requests.RequestException as e:
                status = type(e).__name__
        with self._lock:
            self.records.append((start, time.monotonic() - start, status))

    def _run(self) -> None:
        use_grpc = True
        while not self._stop.wait(self.interval):
            self._pool.submit(self._one, use_grpc, time.monotonic())
            use_grpc = not use_grpc

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()
        self._pool.shutdown(wait=True)

    def window(self, start: float, end: float) -> dict:
        with self._lock:
            chosen = [(seconds, status) for t, seconds, status in self.records if start <= t < end]
        latencies = np.array([s for s, status in chosen if status == "OK"]) * 1e3
        failures = collections.Counter(status for _, status in chosen if status != "OK")
        return {"requests": len(chosen), "failed": sum(failures.values()), "failures": dict(failures),
                "p50_ms": float(np.percentile(latencies, 50)) if len(latencies) else None,
                "p99_ms": float(np.percentile(latencies, 99)) if len(latencies) else None}


def _repeat(seconds: float, attack: Callable[[], list[str]]) -> list[str]:
    """Runs `attack` (which returns its statuses) again and again until `seconds` have passed, at least once."""
    statuses, end = [], time.monotonic() + seconds
    while True:
        statuses += attack()
        if time.monotonic() >= end:
            return statuses


def _png(side: int) -> bytes:
    """A side x side grayscale PNG that compresses to a few hundred KiB (flat with a noisy stripe)."""
    from PIL import Image

    pixels = np.zeros((side, side), np.uint8)
    pixels[: side // 400] = np.random.default_rng(0).integers(0, 255, (side // 400, side), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "PNG")
    return buffer.getvalue()


def _tensor_claim_request():
    from tensorflow.core.framework import tensor_pb2, tensor_shape_pb2, types_pb2

    request = _predict_request([b""])
    request.inputs[IMAGE_BYTES].CopyFrom(tensor_pb2.TensorProto(
        dtype=types_pb2.DT_FLOAT, float_val=[1.0],
        tensor_shape=tensor_shape_pb2.TensorShapeProto(dim=[tensor_shape_pb2.TensorShapeProto.Dim(size=500_000_000)])))
    return request


def _attacks(server: _Server, args) -> dict[str, Callable[[], tuple[list[str], str]]]:
    """name -> a function that runs the attack and returns (statuses, note)."""
    import requests

    grpc_port, rest_port = server.grpc_port, server.rest_port
    stub = _grpc_stub(grpc_port)
    predict_path = f"/v1/models/{MODEL_NAME}:predict"
    huge = "x" * HUGE_NAME
    small = _jpeg(250, 250, seed=7)

    def names() -> tuple[list[str], str]:
        def once() -> list[str]:
            return [_grpc_status(stub, _predict_request([small], model=huge + str(k)), 30) for k in range(3)] + \
                   [_grpc_status(stub, _predict_request([small], signature=huge + str(k)), 30) for k in range(3)] + \
                   [_rest_post(rest_port, f"/v1/models/{'m' * 8000}{k}:predict", _rest_body([small]))
                    for k in range(2)] + \
                   [_rest_post(rest_port, predict_path, _rest_body([small], signature=huge + str(k)))
                    for k in range(2)]
        statuses = _repeat(args.attack_seconds, once)
        page = requests.get(f"http://127.0.0.1:{rest_port}{METRICS_PATH}", timeout=120)
        return statuses + [f"metrics HTTP {page.status_code}"], f"metrics page {len(page.content) / 1024:.0f} KiB"

    def flood() -> tuple[list[str], str]:
        big = _predict_request([_jpeg(2000, 2000, seed=8)])
        statuses: list[str] = []
        lock = threading.Lock()

        def client() -> None:
            for attempt in range(FLOOD_RETRIES + 1):
                status = _grpc_status(stub, big, FLOOD_DEADLINE_S)
                with lock:
                    statuses.append(status)
                if status not in ("DEADLINE_EXCEEDED", "RESOURCE_EXHAUSTED", "UNAVAILABLE") or attempt == FLOOD_RETRIES:
                    return
                time.sleep(BACKOFF_S * 2 ** attempt)

        def round_() -> list[str]:
            with ThreadPoolExecutor(FLOOD_CLIENTS) as pool:
                list(pool.map(lambda _: client(), range(FLOOD_CLIENTS)))
            return []

        _repeat(args.flood_seconds, round_)
        return statuses, f"{FLOOD_CLIENTS} clients, 2000x2000 JPEG, 2 s deadline, {FLOOD_RETRIES} retries"

    png = _png(7000)

    def png7000() -> tuple[list[str], str]:
        return _repeat(args.attack_seconds, lambda: [_grpc_status(stub, _predict_request([png]), 120)]), \
            f"{len(png) / 1024:.0f} KiB each"

    def png7000x3() -> tuple[list[str], str]:
        return _repeat(args.attack_seconds, lambda: [_grpc_status(stub, _predict_request([png] * 3), 120)]), ""

    def body_80mb() -> tuple[list[str], str]:
        head = _post_head(rest_port, predict_path, f"Content-Length: {80 << 20}\r\n")
        return _repeat(args.attack_seconds, lambda: [_http_status(rest_port, head)]), \
            "the headers sent, then the reply read"

    numbers = json.dumps({"instances": [[round(float(v), 6) for v in row] for row in
                                        np.random.default_rng(1).random((175_000, 16))]}).encode()

    def json_28mb() -> tuple[list[str], str]:
        return _repeat(args.attack_seconds, lambda: [_rest_post(rest_port, predict_path, numbers)]), \
            f"{len(numbers) / 1e6:.0f} MB"

    deep = b'{"instances": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"

    def deep_json() -> tuple[list[str], str]:
        return _repeat(args.attack_seconds, lambda: [_rest_post(rest_port, predict_path, deep)]), "100,000 deep"

    claim = _tensor_claim_request()

    def tensor_5e8() -> tuple[list[str], str]:
        return _repeat(args.attack_seconds, lambda: [_grpc_status(stub, claim, 30)]), \
            f"{claim.inputs[IMAGE_BYTES].ByteSize()} bytes on the wire"

    def framing() -> tuple[list[str], str]:
        return _repeat(args.attack_seconds, lambda: [
            _http_status(rest_port, _post_head(rest_port, predict_path, "Content-Length: abc\r\n")),
            _http_status(rest_port, _post_head(rest_port, predict_path, "Transfer-Encoding: chunked\r\n"),
                         b"zz\r\n{}\r\n0\r\n\r\n")]), ""

    # png7000 last: the memory it takes stays resident after it, which would hide the later attacks' peaks
    return {"names": names, "flood": flood, "png7000x3": png7000x3, "body_80mb": body_80mb, "json_28mb": json_28mb,
            "deep_json": deep_json, "tensor_5e8": tensor_5e8, "framing": framing, "png7000": png7000}


def _counts(statuses: list[str]) -> str:
    return ", ".join(f"{status} x{n}" for status, n in sorted(collections.Counter(statuses).items()))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--image_size", type=int, default=224, help="the model's training size (default 224)")
    parser.add_argument("--attack_seconds", type=float, default=4.0, help="each attack repeats this long (4)")
    parser.add_argument("--flood_seconds", type=float, default=12.0, help="the flood repeats this long (12)")
    parser.add_argument("--after_seconds", type=float, default=4.0, help="the good client's window after each (4)")
    parser.add_argument("--good_interval", type=float, default=0.25, help="seconds between good requests (0.25)")
    parser.add_argument("--attacks", nargs="+", default=None, help="run only these attacks (default: all)")
    parser.add_argument("--server_flag", action="append", default=[], help="a flag for serving.server (repeatable)")
    parser.add_argument("--workdir", default=None, help="where the SavedModel goes (default: a temp dir)")
    parser.add_argument("--json", default=None, help="also write every row to this JSON file")
    args = parser.parse_args(argv)

    load_before = os.getloadavg()
    workdir = args.workdir or tempfile.mkdtemp(prefix="serving_attack_bench_")
    os.makedirs(workdir, exist_ok=True)
    base = _export(workdir, args.image_size)
    server = _Server(base, workdir, args.server_flag)
    good = _GoodClient(server, _jpeg(250, 250, seed=0), args.good_interval)
    rows, crashed = [], None
    try:
        attacks = _attacks(server, args)
        unknown = set(args.attacks or ()) - set(attacks)
        if unknown:
            parser.error(f"unknown attack {sorted(unknown)[0]}; choose from {', '.join(attacks)}")
        good.start()
        start = time.monotonic()
        time.sleep(args.after_seconds)
        rows.append({"attack": "none (baseline)", "statuses": "", "note": "",
                     "peak_rss_bytes": server.peak_rss(start, time.monotonic()),
                     "window": (start, time.monotonic(), None)})
        for name, attack in attacks.items():
            if args.attacks and name not in args.attacks:
                continue
            started = time.monotonic()
            statuses, note = attack()
            ended = time.monotonic()
            time.sleep(args.after_seconds)
            rows.append({"attack": name, "statuses": _counts(statuses), "note": note,
                         "peak_rss_bytes": server.peak_rss(started, time.monotonic()),
                         "window": (started, ended, time.monotonic()), "seconds": ended - started})
            print(f"{name}: {rows[-1]['statuses']}", flush=True)
            if server.proc.poll() is not None:
                crashed = f"the server exited with status {server.proc.returncode} during {name}"
                break
    finally:
        good.stop()
        status = server.stop()
    for r in rows:  # every good request has finished now, also those sent just before an attack ended
        started, ended, after = r.pop("window")
        r["during"], r["after"] = good.window(started, ended), None if after is None else good.window(ended, after)
    crashed = crashed or (None if status is None else f"the server exited with status {status}")

    def cell(window: dict | None, key: str) -> str:
        if window is None:
            return ""
        return "" if window[key] is None else f"{window[key]:.0f}"

    print(f"\nserving attack benchmark: Model 1 at {args.image_size}, good 250x250 requests every "
          f"{args.good_interval} s, {usable_cores()} cores shared by server and clients")
    print_table(["attack", "statuses", "peak RSS MB", "p50 ms", "p99 ms", "failed", "after p50", "after p99",
                 "after failed"],
                [[r["attack"], r["statuses"], f"{r['peak_rss_bytes'] / 1e6:.0f}", cell(r["during"], "p50_ms"),
                  cell(r["during"], "p99_ms"), f"{r['during']['failed']}/{r['during']['requests']}",
                  cell(r["after"], "p50_ms"), cell(r["after"], "p99_ms"),
                  f"{r['after']['failed']}/{r['after']['requests']}" if r["after"] else ""] for r in rows])
    for r in rows:
        failures = {**r["during"]["failures"], **((r["after"] or {}).get("failures") or {})}
        if r["note"] or failures:
            print(f"  {r['attack']}: {r['note']}" + (f"; good failures {failures}" if failures else ""))
    load = {"start": load_before, "end": os.getloadavg()}
    print(f"  load average (1, 5, 15 min) at the start {', '.join(f'{v:.2f}' for v in load['start'])}, "
          f"at the end {', '.join(f'{v:.2f}' for v in load['end'])}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"machine": machine_info(), "args": vars(args), "load_average": load, "crashed": crashed,
                       "rows": rows}, f, indent=1)
    flood = next((r for r in rows if r["attack"] == "flood"), None)
    peak = max(r["peak_rss_bytes"] for r in rows)
    print(f"peak server RSS {peak / 1e6:.0f} MB; " + (crashed or "no crash") + "; " +
          ("good p99 during the flood: " + cell(flood["during"], "p99_ms") + " ms, failed "
           f"{flood['during']['failed']}/{flood['during']['requests']}" if flood else "no flood run"))
    return 1 if crashed else 0


if __name__ == "__main__":
    sys.exit(main())
