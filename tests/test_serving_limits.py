"""The built-in server under attack: bounded metrics, admission control, memory bounds, malformed HTTP.

Each test sends an attack on loopback, checks the status and sentence it gets, and then that a good
request is still served. A `sleep` signature (it counts its calls, then sleeps for the microseconds
asked) makes slow work without using the CPU; `hold` does the same for a request that carries images.
"""

from __future__ import annotations

import concurrent.futures
import functools
import io
import json
import logging
import os
import resource
import signal
import socket
import threading
import time

import grpc
import numpy as np
import pytest
import requests
import tensorflow as tf
from PIL import Image
from tensorflow.core.framework import tensor_pb2, tensor_shape_pb2, types_pb2
from tensorflow.python.data.experimental.ops import testing as data_testing
from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

from serving import _core, _jsonparse, _jsonpool, _rest
from serving import server as server_lib
from tests.test_server import _TestModel, b64, grpc_predict, image_bytes, rest, serving_config, version_of, wait_for

GOOD = image_bytes(seed=11)
SLOW_MICROS = 1_500_000  # each flood request's model call; its deadline is far shorter
SHORT_DEADLINE_S = 0.4


class _SlowModel(_TestModel):
    """The colorizer test model (version 1) plus `sleep` and `count`."""

    def __init__(self):
        super().__init__(1)
        self.calls = tf.Variable(0, dtype=tf.int64)

    @tf.function(input_signature=[tf.TensorSpec([None], tf.int64, name="micros")])
    def sleep(self, micros):
        calls = self.calls.assign_add(1)
        with tf.control_dependencies([calls]):
            slept = tf.data.Dataset.range(1).apply(data_testing.sleep(micros[0])).reduce(
                tf.constant(0, tf.int64), lambda total, x: total + x)
        return {"calls": tf.fill(tf.shape(micros), calls + slept)}

    @tf.function(input_signature=[])
    def count(self):
        return {"calls": self.calls.read_value()}

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="image_bytes"),
                                  tf.TensorSpec([None], tf.int64, name="micros")])
    def hold(self, image_bytes, micros):
        return {"bytes": tf.strings.length(image_bytes, "BYTE") + 0 * tf.cast(self.sleep(micros)["calls"][0], tf.int32)}


@pytest.fixture(scope="module")
def slow_base(tmp_path_factory) -> str:
    """A model base path whose version 1 is the _SlowModel."""
    base = tmp_path_factory.mktemp("slow") / "colorizer"
    model = _SlowModel()
    tf.saved_model.save(model, str(base / "1"), signatures={
        "serving_default": model.colorize, "scale": model.scale, "sleep": model.sleep, "count": model.count,
        "hold": model.hold})
    return str(base)


def _calls(port: int) -> int:
    return int(tf.make_ndarray(grpc_predict(port, {}, "count").outputs["calls"]))


def _good_request_works(running) -> None:
    response = grpc_predict(running.grpc_port, {"image_bytes": [GOOD]})
    assert version_of(response.outputs["colorized_bytes"].string_val[0]) == 1
    status, reply = rest(running.rest_port, "colorizer:predict", {"instances": [b64(GOOD)]})
    assert status == 200, reply


def _peak_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


# ---------------------------------------------------------------- 1. metrics

def test_metrics_label_only_served_models_and_signatures(slow_base):
    with server_lib.serve(serving_config(model_base_path=slow_base, monitoring_config_file=_monitoring(slow_base))) \
            as running:
        huge = "m" * 200_000
        for k in range(10):
            with pytest.raises(grpc.RpcError) as raised:
                grpc_predict(running.grpc_port, {"image_bytes": [GOOD]}, model=f"{k}{huge}")
            assert raised.value.code() == grpc.StatusCode.NOT_FOUND and len(raised.value.details()) <= 1000
            with pytest.raises(grpc.RpcError) as raised:
                grpc_predict(running.grpc_port, {"image_bytes": [GOOD]}, signature=f"{k}{huge}")
            assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert rest(running.rest_port, f"{k}{'r' * 8000}:predict", {"instances": [b64(GOOD)]})[0] == 404
            assert rest(running.rest_port, "colorizer:predict",
                        {"signature_name": f"{k}{huge}", "instances": [b64(GOOD)]})[0] == 400
        _good_request_works(running)
        page = requests.get(f"http://127.0.0.1:{running.rest_port}/monitoring/prometheus/metrics", timeout=20).text
    assert len(page) < 30_000, len(page)
    counts = {line.rsplit(" ", 1)[0]: int(line.rsplit(" ", 1)[1]) for line in page.splitlines()
              if line.startswith(":tensorflow:serving:request_count{")}
    prefix = ":tensorflow:serving:request_count{"
    assert counts[prefix + 'model_name="unknown",signature_name="unknown",entrypoint="GRPC",status="NOT_FOUND"}'] == 10
    assert counts[prefix + 'model_name="unknown",signature_name="unknown",entrypoint="REST",status="NOT_FOUND"}'] == 10
    assert counts[prefix + 'model_name="colorizer",signature_name="unknown",entrypoint="GRPC",'
                           'status="INVALID_ARGUMENT"}'] == 10
    assert counts[prefix + 'model_name="colorizer",signature_name="serving_default",entrypoint="REST",'
                           'status="OK"}'] == 1


def _monitoring(slow_base: str) -> str:
    path = os.path.join(os.path.dirname(slow_base), "monitoring.config")
    with open(path, "w") as f:
        f.write('prometheus_config { enable: true, path: "/monitoring/prometheus/metrics" }')
    return path


# ---------------------------------------------------------------- 2. admission control

def _slow_request(port: int, deadline: float) -> grpc.StatusCode:
    request = predict_pb2.PredictRequest()
    request.model_spec.name, request.model_spec.signature_name = "colorizer", "sleep"
    request.inputs["micros"].CopyFrom(tf.make_tensor_proto([SLOW_MICROS], tf.int64))
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        try:
            prediction_service_pb2_grpc.PredictionServiceStub(channel).Predict(request, timeout=deadline)
            return grpc.StatusCode.OK
        except grpc.RpcError as e:
            return e.code()


def test_a_flood_of_slow_requests_is_refused_or_dropped_and_good_requests_are_served(slow_base):
    config = serving_config(model_base_path=slow_base, max_inflight_requests=1, max_queued_requests=1,
                            rest_api_timeout_in_ms=int(SHORT_DEADLINE_S * 1000))
    with server_lib.serve(config) as running:
        before = _calls(running.grpc_port)
        body = {"signature_name": "sleep", "instances": [SLOW_MICROS]}
        with concurrent.futures.ThreadPoolExecutor(12) as pool:
            grpc_flood = [pool.submit(_slow_request, running.grpc_port, SHORT_DEADLINE_S) for _ in range(6)]
            rest_flood = [pool.submit(rest, running.rest_port, "colorizer:predict", body) for _ in range(6)]
            grpc_codes = [f.result() for f in grpc_flood]
            rest_replies = [f.result() for f in rest_flood]
        rest_codes = [status for status, _ in rest_replies]
        assert grpc.StatusCode.RESOURCE_EXHAUSTED in grpc_codes and 429 in rest_codes, (grpc_codes, rest_codes)
        assert set(grpc_codes) <= {grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.DEADLINE_EXCEEDED}
        assert set(rest_codes) <= {429, 504}
        refused = next(reply for status, reply in rest_replies if status == 429)
        assert refused["error"] == ("The server is at its limit of 1 requests in flight and 1 queued "
                                    "(--max_inflight_requests, --max_queued_requests); retry later.")
        # requests that waited past their deadline never ran: far fewer model calls than requests
        _good_request_works(running)
        assert _calls(running.grpc_port) - before < len(grpc_codes) + len(rest_codes)


def test_cancelled_queued_requests_never_run(slow_base):
    config = serving_config(model_base_path=slow_base, max_inflight_requests=1, max_queued_requests=4)
    with server_lib.serve(config) as running, grpc.insecure_channel(f"127.0.0.1:{running.grpc_port}") as channel:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        before = _calls(running.grpc_port)

        def sleep_request(micros: int) -> predict_pb2.PredictRequest:
            request = predict_pb2.PredictRequest()
            request.model_spec.name, request.model_spec.signature_name = "colorizer", "sleep"
            request.inputs["micros"].CopyFrom(tf.make_tensor_proto([micros], tf.int64))
            return request

        first = stub.Predict.future(sleep_request(4 * SLOW_MICROS), timeout=30)  # holds the only slot
        wait_for(lambda: running.core.load() == (1, 0))
        second = stub.Predict.future(sleep_request(1000), timeout=30)
        wait_for(lambda: running.core.load() == (1, 1))
        second.cancel()
        wait_for(lambda: running.core.load() == (1, 0))  # it left the queue while the first still runs
        body = json.dumps({"signature_name": "sleep", "instances": [1000]}).encode()
        with socket.create_connection(("127.0.0.1", running.rest_port), timeout=20) as sock:
            sock.sendall(_post(f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n", body))
            wait_for(lambda: running.core.load() == (1, 1))
        wait_for(lambda: running.core.load() == (1, 0))  # the REST client hung up: dropped from the queue
        assert int(tf.make_ndarray(first.result().outputs["calls"])[0]) == before + 1
        _good_request_works(running)
        assert _calls(running.grpc_port) == before + 1  # the cancelled ones never ran


# ---------------------------------------------------------------- 2b. admission weighted by image pixels

LARGE = image_bytes(100, 200, seed=3, fmt="PNG")  # 20,000 pixels: large beside a budget of 10,000
BUDGET_REFUSAL = ("The request's 20000 image pixels do not fit in the --max_inflight_pixels budget of 10000 beside "
                  "the 20000 already in work; retry later.")


def _hold_request(port: int, image: bytes, micros: int, timeout: float = 60) -> grpc.Future:
    request = predict_pb2.PredictRequest()
    request.model_spec.name, request.model_spec.signature_name = "colorizer", "hold"
    request.inputs["image_bytes"].CopyFrom(tf.make_tensor_proto([image]))
    request.inputs["micros"].CopyFrom(tf.make_tensor_proto([micros], tf.int64))
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    return prediction_service_pb2_grpc.PredictionServiceStub(channel).Predict.future(request, timeout=timeout)


def test_large_work_beyond_the_pixel_budget_is_refused_at_once_and_small_requests_pass_it(slow_base):
    # one slot: before the budget, a small request waited behind the large one in it
    config = serving_config(model_base_path=slow_base, max_inflight_requests=1, max_queued_requests=2,
                            max_inflight_pixels=10_000)
    with server_lib.serve(config) as running:
        large = _hold_request(running.grpc_port, LARGE, 6 * SLOW_MICROS)  # over the budget: admitted alone
        wait_for(lambda: running.core.load() == (1, 0))
        with pytest.raises(grpc.RpcError) as raised:
            _hold_request(running.grpc_port, LARGE, 1000).result()
        assert (raised.value.code(), raised.value.details()) == (grpc.StatusCode.RESOURCE_EXHAUSTED, BUDGET_REFUSAL)
        body = {"signature_name": "hold", "instances": [{"image_bytes": b64(LARGE), "micros": 1000}]}
        assert rest(running.rest_port, "colorizer:predict", body) == (429, {"error": BUDGET_REFUSAL})
        _good_request_works(running)  # small: takes the free slot while the large one still runs
        assert not large.done()
        assert large.result().outputs["bytes"].int_val == [len(LARGE)]
        # the budget is free again: the next large request is served
        assert rest(running.rest_port, "colorizer:predict", body)[0] == 200


def test_a_request_found_large_only_once_decoded_leaves_its_slot_or_is_refused(slow_base):
    config = serving_config(model_base_path=slow_base, max_inflight_requests=1, max_queued_requests=2,
                            max_inflight_pixels=10_000)
    encoded = b64(LARGE)["b64"]

    def hidden(micros: int) -> bytes:
        """A JSON escape hides the image header from the scan before parsing; only decoding finds its size."""
        return ('{"signature_name": "hold", "instances": [{"micros": %d, "image_bytes": {"b64": "\\u00%x%s"}}]}'
                % (micros, ord(encoded[0]), encoded[1:])).encode()

    assert _core.announced_pixels(_rest.body_images(hidden(1)), 10 ** 9) == 0
    assert _core.announced_pixels(_rest.body_images(hidden(1).replace(b"\\u00%x" % ord(encoded[0]),
                                                                      encoded[0].encode())), 10 ** 9) == 20_000
    with server_lib.serve(config) as running, concurrent.futures.ThreadPoolExecutor(2) as pool:
        first = pool.submit(rest, running.rest_port, "colorizer:predict", None, hidden(6 * SLOW_MICROS))
        wait_for(lambda: running.core.load() == (1, 0))
        _good_request_works(running)  # the slot it entered by is free again
        with pytest.raises(grpc.RpcError) as raised:
            _hold_request(running.grpc_port, LARGE, 1000).result()
        assert raised.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert not first.done()
        assert first.result()[0] == 200
        assert rest(running.rest_port, "colorizer:predict", None, hidden(1000)) == \
            (200, {"predictions": [len(LARGE)]})


# ---------------------------------------------------------------- 3. memory bounds

def _raw_http(port: int, data: bytes, shutdown: bool = False) -> tuple[int, dict]:
    """Sends raw bytes, returns the (status, JSON body) of the one response."""
    with socket.create_connection(("127.0.0.1", port), timeout=20) as sock:
        sock.sendall(data)
        if shutdown:
            sock.shutdown(socket.SHUT_WR)
        received = b""
        while b"\r\n\r\n" not in received or len(received.split(b"\r\n\r\n", 1)[1]) < _length(received):
            chunk = sock.recv(65536)
            assert chunk, f"the server closed the connection without a full response: {received!r}"
            received += chunk
    head, body = received.split(b"\r\n\r\n", 1)
    return int(head.split()[1]), json.loads(body)


def _length(received: bytes) -> int:
    for line in received.split(b"\r\n\r\n", 1)[0].split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return int(value)
    return 1 << 30


def _post(headers: str, body: bytes = b"") -> bytes:
    return (f"POST /v1/models/colorizer:predict HTTP/1.1\r\nHost: x\r\n{headers}\r\n").encode() + body


def test_request_bytes_tensor_sizes_pixels_and_json_depth_are_checked_before_allocating(slow_base):
    config = serving_config(model_base_path=slow_base, max_request_bytes=1_000_000, max_request_pixels=10_000,
                            max_json_depth=16)
    with server_lib.serve(config) as running:
        port = running.rest_port
        too_big = {"error": "The request body is over the --max_request_bytes limit of 1000000 bytes."}
        assert _raw_http(port, _post("Content-Length: 5000000000\r\n")) == (400, too_big)
        chunk = b"%x\r\n" % 600_000 + b"x" * 600_000 + b"\r\n"
        assert _raw_http(port, _post("Transfer-Encoding: chunked\r\n", chunk * 2)) == (400, too_big)

        with pytest.raises(grpc.RpcError) as raised:  # gRPC refuses the message itself
            grpc_predict(running.grpc_port, {"image_bytes": [b"x" * 2_000_000]})
        assert raised.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED

        # 18 bytes on the wire that claim 500 million floats
        claim = tensor_pb2.TensorProto(dtype=types_pb2.DT_FLOAT, float_val=[1.0], tensor_shape=tensor_shape_pb2.
                                       TensorShapeProto(dim=[tensor_shape_pb2.TensorShapeProto.Dim(size=500_000_000)]))
        request = predict_pb2.PredictRequest()
        request.model_spec.name, request.model_spec.signature_name = "colorizer", "scale"
        request.inputs["offset"].CopyFrom(claim)
        peak = _peak_rss_bytes()
        with grpc.insecure_channel(f"127.0.0.1:{running.grpc_port}") as channel, pytest.raises(grpc.RpcError) as raised:
            prediction_service_pb2_grpc.PredictionServiceStub(channel).Predict(request, timeout=20)
        assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert raised.value.details() == ("Input 'offset' has shape [500000000], which decodes to 2000000000 bytes, "
                                          "over the --max_request_bytes limit of 1000000.")

        # 3 images of 60 x 60 are 10,800 pixels: refused from their headers; 2 pass
        small = [image_bytes(60, 60, seed=k, fmt="PNG") for k in range(3)]
        with pytest.raises(grpc.RpcError) as raised:
            grpc_predict(running.grpc_port, {"image_bytes": small})
        assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert raised.value.details() == ("The request's images add up to at least 10800 pixels, over the "
                                          "--max_request_pixels limit of 10000; send fewer or smaller images per "
                                          "request.")
        assert rest(port, "colorizer:predict", {"instances": [b64(b) for b in small]})[0] == 400
        assert len(grpc_predict(running.grpc_port, {"image_bytes": small[:2]}).outputs["colorized_bytes"]
                   .string_val) == 2

        deep = b'{"instances": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
        assert rest(port, "colorizer:predict", raw=deep) == (
            400, {"error": "The JSON body nests deeper than the --max_json_depth limit of 16."})
        brackets_in_strings = {"signature_name": "scale", "inputs": {"x": [[1, 2, 3]], "offset": [1]},
                               "note": "[" * 100}
        assert rest(port, "colorizer:predict", brackets_in_strings)[0] == 200
        _good_request_works(running)
        assert _peak_rss_bytes() - peak < 500_000_000  # the 2 GB tensor was never allocated


def test_huge_images_under_the_default_pixel_limit_add_up_and_are_refused_undecoded(slow_base):
    buffer = io.BytesIO()
    Image.new("1", (5000, 4000)).save(buffer, "PNG")  # 20 megapixels in a few kilobytes
    huge = buffer.getvalue()
    assert len(huge) < 100_000
    with server_lib.serve(serving_config(model_base_path=slow_base)) as running:
        peak = _peak_rss_bytes()
        with pytest.raises(grpc.RpcError) as raised:
            grpc_predict(running.grpc_port, {"image_bytes": [huge] * 3})
        assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "--max_request_pixels limit of 50000000" in raised.value.details()
        _good_request_works(running)
        assert _peak_rss_bytes() - peak < 500_000_000


def test_json_is_parsed_within_the_request_deadline(slow_base):
    config = serving_config(model_base_path=slow_base, rest_api_timeout_in_ms=20)
    with server_lib.serve(config) as running:
        rows = np.random.default_rng(0).random((400_000, 3)).round(6).tolist()
        body = {"signature_name": "scale", "inputs": {"x": rows, "offset": [0.0] * len(rows)}}
        status, reply = rest(running.rest_port, "colorizer:predict", body)
        assert status == 504 and reply["error"].startswith("The request did not finish within its deadline")


# ---------------------------------------------------------------- 4. large JSON bodies parsed in a worker process

@functools.lru_cache(1)
def _numbers() -> bytes:
    """19 MB of numbers, as the attack benchmark sends: a wrong dtype for serving_default, found after parsing."""
    return json.dumps({"instances": np.random.default_rng(1).random((120_000, 16)).round(6).tolist()}).encode()

GOOD_REQUEST_BOUND_S = 0.3  # a small request's latency while a large body is parsed


def _scale_body(rows: int, seed: int = 0) -> tuple[bytes, np.ndarray]:
    x = np.random.default_rng(seed).random((rows, 3)).round(6)
    return json.dumps({"signature_name": "scale", "inputs": {"x": x.tolist(), "offset": [0.5] * rows}}).encode(), x


def _resident_bytes(pid: int | str = "self") -> int:
    with open(f"/proc/{pid}/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _worker_pids(running) -> list[int]:
    return running.rest_api.parse_pool.pids()


BAD_BODIES = [
    b'{"instances": [1, 2,' + b" " * 300_000 + b"]",  # cut short
    b'{"signature_name": "scale", "inputs": {"x": [[1, 2, 3]], "offset": ["a"]}, "pad": "' + b"p" * 300_000 + b'"}',
    b'{"signature_name": "scale", "inputs": {"x": [[1, 2, 3], [4, 5]], "offset": [1, 2]}, "pad": "'
    + b"p" * 300_000 + b'"}',
    b'{"signature_name": "nope", "instances": [1], "pad": "' + b"p" * 300_000 + b'"}',
    b'{"instances": ' + b"[" * 200_000 + b"]" * 200_000 + b"}",
    b'{"instances": [{"b64": "not base64!"}], "pad": "' + b"p" * 300_000 + b'"}',
    b'[' + b"1, " * 100_000 + b"1]",
]


def test_a_large_json_body_is_parsed_in_a_worker_with_the_answers_of_the_in_thread_parse(slow_base):
    assert (_jsonparse.DT_STRING, _jsonparse.DT_BOOL) == (types_pb2.DT_STRING, types_pb2.DT_BOOL)
    config = serving_config(model_base_path=slow_base, json_parse_process_bytes=100_000)
    with server_lib.serve(config) as running:
        worker = wait_for(lambda: _worker_pids(running))[0]
        with open(f"/proc/{worker}/maps") as f:
            assert "tensorflow" not in f.read()  # the worker is numpy and json only
        body, x = _scale_body(50_000)
        assert len(body) > 100_000
        status, reply = rest(running.rest_port, "colorizer:predict", raw=body)
        assert status == 200
        np.testing.assert_allclose(reply["outputs"]["y"], x.astype(np.float32) + 0.5, rtol=1e-6)
        servable = running.core.manager.resolve("colorizer")
        for bad in BAD_BODIES:
            assert len(bad) > 100_000
            with pytest.raises(_core.ServingError) as in_thread:
                _jsonparse.parse_predict_body(bad, servable.json_specs, config.max_json_depth)
            expected = (_rest.HTTP_STATUS[in_thread.value.code], {"error": in_thread.value.message})
            assert rest(running.rest_port, "colorizer:predict", raw=bad) == expected
        assert _worker_pids(running) == [worker]  # errors are answers, not crashes
        _good_request_works(running)


def test_a_good_request_is_answered_while_a_large_json_body_is_parsed(slow_base):
    specs = _jsonparse.SignatureSpecs("colorizer", 1, {"serving_default": {"image_bytes": _jsonparse.JsonSpec(
        "image_bytes", types_pb2.DT_STRING, "DT_STRING", np.dtype(object))}})
    started = time.monotonic()
    with pytest.raises(_core.ServingError):
        _jsonparse.parse_predict_body(_numbers(), specs, 64)
    in_thread = time.monotonic() - started
    assert in_thread > 1.5 * GOOD_REQUEST_BOUND_S, f"the body parses in {in_thread:.2f} s: too small to tell"
    with server_lib.serve(serving_config(model_base_path=slow_base)) as running, \
            concurrent.futures.ThreadPoolExecutor(1) as pool:
        _good_request_works(running)  # warm
        baseline = _resident_bytes()
        peak = [baseline]
        attack = pool.submit(rest, running.rest_port, "colorizer:predict", None, _numbers())
        wait_for(lambda: running.core.load()[0] == 1, interval=0.005)
        latencies = []
        while not attack.done():
            started = time.monotonic()
            grpc_predict(running.grpc_port, {"image_bytes": [GOOD]})
            latencies.append(time.monotonic() - started)
            peak.append(_resident_bytes())
        status, reply = attack.result()
        assert status == 400 and reply["error"].endswith("which is not of type DT_STRING.")
        assert len(latencies) >= 2 and max(latencies) < GOOD_REQUEST_BOUND_S, (in_thread, latencies)
        # the parse's memory (about 10 times the body's size) stayed in the worker
        assert max(peak) - baseline < 3 * len(_numbers()), (max(peak) - baseline) >> 20


def test_a_worker_that_holds_memory_after_a_parse_is_replaced():
    specs = _jsonparse.SignatureSpecs("m", 1, {"serving_default": {"x": _jsonparse.JsonSpec(
        "x", types_pb2.DT_FLOAT, "DT_FLOAT", np.dtype(np.float32))}})
    body, x = _scale_body(1000)
    body = json.dumps({"inputs": x.tolist()}).encode()
    pool = _jsonpool.ParsePool(1, retire_bytes=1)
    try:
        before = wait_for(pool.pids)[0]
        name, inputs, rows = pool.parse(body, specs, 64, lambda: 20.0, None, _core.deadline_exceeded(20))
        assert (name, rows) == ("serving_default", False)
        np.testing.assert_array_equal(inputs["x"], x.astype(np.float32))
        after = wait_for(pool.pids)
        assert after != [before]
        assert not os.path.exists(f"/proc/{before}")  # stopped and reaped
    finally:
        pool.close()


def test_a_killed_worker_answers_its_request_and_is_replaced(slow_base):
    with server_lib.serve(serving_config(model_base_path=slow_base)) as running, \
            concurrent.futures.ThreadPoolExecutor(1) as pool:
        worker = wait_for(lambda: _worker_pids(running))[0]
        attack = pool.submit(rest, running.rest_port, "colorizer:predict", None, _numbers())
        wait_for(lambda: not _worker_pids(running), interval=0.005)  # it took the worker
        threading.Event().wait(0.1)
        os.kill(worker, signal.SIGKILL)
        assert attack.result() == (429, {"error": _jsonpool.died_error(-signal.SIGKILL).message})
        replacement = wait_for(lambda: _worker_pids(running))
        assert replacement != [worker]
        _good_request_works(running)
        body, x = _scale_body(50_000)
        status, reply = rest(running.rest_port, "colorizer:predict", raw=body)
        assert status == 200 and len(reply["outputs"]["y"]) == 50_000


def test_a_parse_past_its_deadline_or_left_by_its_client_stops_its_worker(slow_base):
    config = serving_config(model_base_path=slow_base, rest_api_timeout_in_ms=200)
    with server_lib.serve(config) as running:
        worker = wait_for(lambda: _worker_pids(running))[0]
        status, reply = rest(running.rest_port, "colorizer:predict", raw=_numbers())
        assert (status, reply) == (504, {"error": "The request did not finish within its deadline of 0.2 s."})
        wait_for(lambda: not os.path.exists(f"/proc/{worker}"))  # killed, not left parsing
        worker = wait_for(lambda: _worker_pids(running))[0]
        with socket.create_connection(("127.0.0.1", running.rest_port), timeout=20) as sock:
            sock.sendall(_post(f"Content-Length: {len(_numbers())}\r\n", _numbers()))
            wait_for(lambda: not _worker_pids(running), interval=0.005)
        wait_for(lambda: not os.path.exists(f"/proc/{worker}"))  # the client left: its parse stopped
        wait_for(lambda: running.core.load() == (0, 0))
        _good_request_works(running)


# ---------------------------------------------------------------- 7. malformed HTTP

MALFORMED = [
    ("Content-Length: abc\r\n", b"", "The Content-Length header is not one number of bytes."),
    ("Content-Length: -5\r\n", b"", "The Content-Length header is not one number of bytes."),
    ("Content-Length: 2\r\nContent-Length: 3\r\n", b"{}", "The Content-Length header is not one number of bytes."),
    ("Transfer-Encoding: chunked\r\n", b"zz\r\n{}\r\n0\r\n\r\n",
     "A chunk size is not a hexadecimal number on its own line."),
    ("Transfer-Encoding: chunked\r\n", b"-2\r\n{}\r\n0\r\n\r\n",
     "A chunk size is not a hexadecimal number on its own line."),
    ("Transfer-Encoding: chunked\r\n", b"2\r\n{}XX0\r\n\r\n",
     "A chunk is shorter than its size or not followed by CRLF."),
    ("Transfer-Encoding: gzip\r\n", b"",
     "Transfer-Encoding 'gzip' is not supported; send 'chunked' or a Content-Length."),
]


@pytest.mark.parametrize("headers, body, sentence", MALFORMED, ids=[m[0].split(":")[0] + str(i)
                                                                    for i, m in enumerate(MALFORMED)])
def test_malformed_http_gets_a_400_with_one_sentence(slow_base, headers, body, sentence, capfd, caplog):
    with server_lib.serve(serving_config(model_base_path=slow_base)) as running, caplog.at_level(logging.INFO):
        assert _raw_http(running.rest_port, _post(headers, body)) == (400, {"error": sentence})
        _good_request_works(running)
    assert "Traceback" not in capfd.readouterr().err
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info]


def test_a_body_cut_short_gets_a_400_and_no_traceback(slow_base, capfd, caplog):
    with server_lib.serve(serving_config(model_base_path=slow_base)) as running, caplog.at_level(logging.INFO):
        reply = _raw_http(running.rest_port, _post("Content-Length: 100\r\n", b'{"instances": '), shutdown=True)
        assert reply == (400, {"error": "The body is shorter than its Content-Length."})
        with socket.create_connection(("127.0.0.1", running.rest_port), timeout=20) as sock:  # leaves mid-request
            sock.sendall(_post("Content-Length: 1000\r\n", b"{"))
        threading.Event().wait(0.2)
        _good_request_works(running)
    assert "Traceback" not in capfd.readouterr().err
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info]


def test_limit_flags_reach_the_server_and_bad_values_exit_2(slow_base, capsys):
    args = server_lib.build_parser().parse_args([
        f"--model_base_path={slow_base}", "--max_inflight_requests=3", "--max_queued_requests=5",
        "--max_request_bytes=1000", "--max_request_pixels=100", "--max_json_depth=4", "--max_inflight_pixels=300"])
    limits = server_lib.config_from_args(args).request_limits()
    assert (limits.max_inflight_requests, limits.max_queued_requests, limits.max_request_bytes,
            limits.max_request_pixels, limits.max_json_depth, limits.max_inflight_pixels) == (3, 5, 1000, 100, 4, 300)
    assert limits.large_pixels == 100
    assert server_lib.main([f"--model_base_path={slow_base}", "--implementation=python",
                            "--max_queued_requests=0"]) == 2
    assert capsys.readouterr().err.strip() == "--max_queued_requests must be at least 1, got 0."
    args = server_lib.build_parser().parse_args([f"--model_base_path={slow_base}", "--json_parse_process_bytes=0"])
    assert server_lib.config_from_args(args).json_parse_process_bytes == 0
    assert server_lib.main([f"--model_base_path={slow_base}", "--implementation=python",
                            "--json_parse_process_bytes=-1"]) == 2
    assert capsys.readouterr().err.strip() == ("--json_parse_process_bytes must be 0 (parse every body in the "
                                               "request's thread) or more, got -1.")
    assert server_lib.main([f"--model_base_path={slow_base}", "--implementation=python",
                            "--tensorflow_inter_op_parallelism=-2"]) == 2
    assert capsys.readouterr().err.strip() == ("--tensorflow_inter_op_parallelism must be 0 (automatic) or a number "
                                               "of threads, got -2.")


def test_tensorflow_thread_flags_are_tf_servings_and_default_to_two_inter_op_threads_per_cpu(slow_base):
    parser = server_lib.build_parser()
    cpus = os.cpu_count() or 1
    defaults = parser.parse_args([f"--model_base_path={slow_base}"])
    assert server_lib.tensorflow_threads(server_lib.config_from_args(defaults)) == (2 * cpus, cpus)
    assert "--tensorflow_inter_op_parallelism" not in " ".join(server_lib.tensorflow_model_server_argv(defaults))
    chosen = parser.parse_args([f"--model_base_path={slow_base}", "--tensorflow_inter_op_parallelism=3",
                                "--tensorflow_intra_op_parallelism=1"])
    assert server_lib.tensorflow_threads(server_lib.config_from_args(chosen)) == (3, 1)
    argv = server_lib.tensorflow_model_server_argv(chosen)  # stock tensorflow_model_server has the same two flags
    assert "--tensorflow_inter_op_parallelism=3" in argv and "--tensorflow_intra_op_parallelism=1" in argv
