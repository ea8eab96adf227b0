"""Model server: gRPC and REST predict, metadata, status, errors, versions, labels, batching, metrics, launcher.

Small SavedModels are built here (test_client and test_serving_load import these helpers):
`serving_default` decodes each image and returns a PNG of its size tinted by the model version,
`scale` maps x [-1, 3] and offset [-1] to y = x * version + offset and reports each call's batch size.
"""

from __future__ import annotations

import atexit
import base64
import functools
import io
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

import grpc
import numpy as np
import pytest
import requests
import tensorflow as tf
from PIL import Image
from tensorflow_serving.apis import (get_model_metadata_pb2, get_model_status_pb2, model_management_pb2,
                                     model_service_pb2_grpc, predict_pb2, prediction_log_pb2,
                                     prediction_service_pb2_grpc)
from tensorflow_serving.config import model_server_config_pb2

from serving import server as server_lib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MAX_PIXELS = 64 * 64
TINTS = {1: (200, 0, 0), 2: (0, 200, 0), 3: (0, 0, 200)}
EMPTY = "Empty image bytes: send the file's contents."
NOT_IMAGE = "Unknown image file format. One of JPEG, PNG, GIF, BMP required."
TOO_BIG = f"The image is over the {MAX_PIXELS}-pixel limit; resize it first."


# ---------------------------------------------------------------- test models and images (shared)

class _TestModel(tf.Module):
    def __init__(self, version: int):
        super().__init__()
        self.tint = tf.constant(TINTS[version], tf.int32)
        self.version = float(version)

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="image_bytes")])
    def colorize(self, image_bytes):
        def one(data):
            with tf.control_dependencies([tf.debugging.assert_greater(tf.strings.length(data), 0, message=EMPTY)]):
                image = tf.io.decode_image(data, channels=3, expand_animations=False)
            shape = tf.shape(image)
            with tf.control_dependencies([tf.debugging.assert_less_equal(shape[0] * shape[1], MAX_PIXELS,
                                                                         message=TOO_BIG)]):
                return tf.io.encode_png(tf.cast(tf.cast(image, tf.int32) // 2 + self.tint // 2, tf.uint8))

        return {"colorized_bytes": tf.map_fn(one, image_bytes, fn_output_signature=tf.string)}

    @tf.function(input_signature=[tf.TensorSpec([None, 3], tf.float32, name="x"),
                                  tf.TensorSpec([None], tf.float32, name="offset")])
    def scale(self, x, offset):
        rows = tf.shape(x)[0]
        return {"y": x * self.version + offset[:, None], "batch_size": tf.fill([rows], rows)}


def image_bytes(height: int = 24, width: int = 32, seed: int = 0, fmt: str = "JPEG") -> bytes:
    """A gray noise image (R = G = B) so the model's tint alone decides the output's hue."""
    gray = np.random.default_rng(seed).integers(40, 200, (height, width), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(np.stack([gray] * 3, axis=-1)).save(buffer, fmt)
    return buffer.getvalue()


def version_of(png: bytes) -> int:
    """Which test model version tinted this PNG (its dominant channel)."""
    image = Image.open(io.BytesIO(png))
    assert image.format == "PNG" and image.mode == "RGB"
    means = np.asarray(image, np.float64).reshape(-1, 3).mean(axis=0)
    assert means.max() - np.median(means) > 60, means
    return int(np.argmax(means)) + 1


def _warmup_record(data: bytes) -> bytes:
    log = prediction_log_pb2.PredictionLog()
    request = log.predict_log.request
    request.model_spec.name = "colorizer"
    request.model_spec.signature_name = "serving_default"
    request.inputs["image_bytes"].CopyFrom(tf.make_tensor_proto([data]))
    return log.SerializeToString()


def write_warmup(version_dir: str, data: bytes) -> None:
    os.makedirs(os.path.join(version_dir, "assets.extra"), exist_ok=True)
    with tf.io.TFRecordWriter(os.path.join(version_dir, "assets.extra", "tf_serving_warmup_requests")) as writer:
        writer.write(_warmup_record(data))


_BUILT = tempfile.mkdtemp(prefix="serving_test_models_")
atexit.register(shutil.rmtree, _BUILT, True)


@functools.lru_cache(maxsize=None)
def built_model(version: int, kind: str = "good") -> str:
    """A SavedModel version folder, built once per process: good, broken (not a SavedModel) or bad_warmup."""
    path = os.path.join(_BUILT, f"{kind}-{version}")
    if kind == "broken":
        os.makedirs(path)
        with open(os.path.join(path, "saved_model.pb"), "wb") as f:
            f.write(b"this is not a SavedModel")
        return path
    module = _TestModel(version)
    tf.saved_model.save(module, path, signatures={"serving_default": module.colorize, "scale": module.scale})
    write_warmup(path, b"" if kind == "bad_warmup" else image_bytes(8, 8, fmt="PNG"))
    return path


def publish(base_path: str, version: int, kind: str = "good", *, model: int | None = None, rename: bool = True) -> str:
    """Copies a built model (`model`, default `version`) in as the pusher does: a temporary folder, then a rename."""
    os.makedirs(base_path, exist_ok=True)
    temporary = os.path.join(base_path, f".tmp-{version}-{os.getpid()}")
    shutil.copytree(built_model(model or version, kind), temporary)
    if not rename:
        return temporary
    final = os.path.join(base_path, str(version))
    os.rename(temporary, final)
    return final


def wait_for(predicate, timeout: float = 10.0, interval: float = 0.05):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"condition not met within {timeout} s")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def serving_config(**kwargs) -> server_lib.ServerConfig:
    return server_lib.ServerConfig(port=0, rest_api_port=0, bind_address="127.0.0.1", grpc_max_threads=16,
                                   **kwargs)


def grpc_predict(port: int, inputs: dict, signature: str = "", model: str = "colorizer", version: int | None = None,
                 label: str | None = None) -> predict_pb2.PredictResponse:
    request = predict_pb2.PredictRequest()
    request.model_spec.name = model
    request.model_spec.signature_name = signature
    if version is not None:
        request.model_spec.version.value = version
    if label:
        request.model_spec.version_label = label
    for name, value in inputs.items():
        request.inputs[name].CopyFrom(tf.make_tensor_proto(value))
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        return prediction_service_pb2_grpc.PredictionServiceStub(channel).Predict(request, timeout=20)


def rest(port: int, path: str, body=None, raw: bytes | None = None) -> tuple[int, dict]:
    url = f"http://127.0.0.1:{port}/v1/models/{path}"
    if raw is not None:
        response = requests.post(url, data=raw, timeout=20)
    elif body is not None:
        response = requests.post(url, json=body, timeout=20)
    else:
        response = requests.get(url, timeout=20)
    return response.status_code, response.json()


def b64(data: bytes) -> dict:
    return {"b64": base64.b64encode(data).decode()}


# ---------------------------------------------------------------- the shared server: versions 1 and 2, labels

@pytest.fixture(scope="module")
def serving_dir(tmp_path_factory) -> str:
    root = tmp_path_factory.mktemp("serving")
    base = root / "colorizer"
    publish(str(base), 1)
    publish(str(base), 2)
    (root / "models.config").write_text(f"""
model_config_list {{
  config {{
    name: "colorizer"
    base_path: "{base}"
    model_platform: "tensorflow"
    model_version_policy {{ latest {{ num_versions: 2 }} }}
    version_labels {{ key: "stable" value: 1 }}
    version_labels {{ key: "canary" value: 2 }}
  }}
}}
""")
    (root / "monitoring.config").write_text(
        'prometheus_config { enable: true, path: "/monitoring/prometheus/metrics" }')
    return str(root)


@pytest.fixture(scope="module")
def server(serving_dir):
    config = serving_config(model_config_file=os.path.join(serving_dir, "models.config"),
                         monitoring_config_file=os.path.join(serving_dir, "monitoring.config"),
                         allow_reload_config=True)
    with server_lib.serve(config) as running:
        yield running


def test_grpc_predict_returns_a_png_of_the_input_size_from_the_latest_version(server):
    jpeg = image_bytes(24, 32, seed=1)
    response = grpc_predict(server.grpc_port, {"image_bytes": [jpeg]})
    assert response.model_spec.name == "colorizer"
    assert response.model_spec.version.value == 2
    assert response.model_spec.signature_name == "serving_default"
    png = response.outputs["colorized_bytes"].string_val[0]
    assert Image.open(io.BytesIO(png)).size == (32, 24)
    assert version_of(png) == 2


def test_rest_predict_row_and_columnar_forms(server):
    images = [image_bytes(20, 30, seed=2), image_bytes(10, 12, seed=3, fmt="PNG")]
    status, rows = rest(server.rest_port, "colorizer:predict", {"instances": [b64(i) for i in images]})
    assert status == 200
    pngs = [base64.b64decode(p["b64"]) for p in rows["predictions"]]
    assert [Image.open(io.BytesIO(p)).size for p in pngs] == [(30, 20), (12, 10)]
    status, named = rest(server.rest_port, "colorizer:predict", {"instances": [{"image_bytes": b64(images[0])}]})
    assert status == 200 and base64.b64decode(named["predictions"][0]["b64"]) == pngs[0]
    status, columns = rest(server.rest_port, "colorizer:predict", {"inputs": {"image_bytes": [b64(images[1])]}})
    assert status == 200 and base64.b64decode(columns["outputs"][0]["b64"]) == pngs[1]

    x = [[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]]
    status, rows = rest(server.rest_port, "colorizer/versions/1:predict", {
        "signature_name": "scale", "instances": [{"x": x[0], "offset": 10}, {"x": x[1], "offset": 0.5}]})
    assert status == 200
    assert rows["predictions"] == [{"y": [11.0, 12.0, 13.0], "batch_size": 2},
                                   {"y": [4.5, 5.5, 6.5], "batch_size": 2}]
    status, columns = rest(server.rest_port, "colorizer:predict",
                           {"signature_name": "scale", "inputs": {"x": x, "offset": [0, 1]}})
    assert status == 200
    assert columns["outputs"] == {"y": [[2.0, 4.0, 6.0], [9.0, 11.0, 13.0]], "batch_size": [2, 2]}


def test_metadata_over_grpc_and_rest(server):
    request = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
    request.model_spec.name = "colorizer"
    with grpc.insecure_channel(f"127.0.0.1:{server.grpc_port}") as channel:
        response = prediction_service_pb2_grpc.PredictionServiceStub(channel).GetModelMetadata(request, timeout=10)
    assert response.model_spec.version.value == 2
    signatures = get_model_metadata_pb2.SignatureDefMap()
    assert response.metadata["signature_def"].Unpack(signatures)
    default = signatures.signature_def["serving_default"]
    assert default.inputs["image_bytes"].dtype == tf.string.as_datatype_enum
    assert [d.size for d in default.inputs["image_bytes"].tensor_shape.dim] == [-1]
    assert set(default.outputs) == {"colorized_bytes"}
    assert set(signatures.signature_def["scale"].inputs) == {"x", "offset"}

    status, metadata = rest(server.rest_port, "colorizer/labels/stable/metadata")
    assert status == 200
    assert metadata["model_spec"]["version"] == "1"
    scale = metadata["metadata"]["signature_def"]["signature_def"]["scale"]
    assert scale["inputs"]["x"]["dtype"] == "DT_FLOAT"
    assert [d["size"] for d in scale["inputs"]["x"]["tensor_shape"]["dim"]] == ["-1", "3"]
    assert scale["outputs"]["batch_size"]["dtype"] == "DT_INT32"


def test_model_status_over_grpc_and_rest(server):
    status, body = rest(server.rest_port, "colorizer")
    assert status == 200
    assert [(s["version"], s["state"], s["status"]["error_code"]) for s in body["model_version_status"]] == [
        ("2", "AVAILABLE", "OK"), ("1", "AVAILABLE", "OK")]
    assert rest(server.rest_port, "colorizer/versions/1")[1]["model_version_status"][0]["version"] == "1"
    assert rest(server.rest_port, "colorizer/labels/canary")[1]["model_version_status"][0]["version"] == "2"

    request = get_model_status_pb2.GetModelStatusRequest()
    request.model_spec.name = "colorizer"
    request.model_spec.version.value = 1
    with grpc.insecure_channel(f"127.0.0.1:{server.grpc_port}") as channel:
        response = model_service_pb2_grpc.ModelServiceStub(channel).GetModelStatus(request, timeout=10)
    assert [(s.version, s.state) for s in response.model_version_status] == [
        (1, get_model_status_pb2.ModelVersionStatus.AVAILABLE)]


def test_version_labels_pick_versions_and_a_config_reload_moves_them(server, serving_dir):
    jpeg = image_bytes(seed=4)
    status, body = rest(server.rest_port, "colorizer/labels/stable:predict", {"instances": [b64(jpeg)]})
    assert status == 200 and version_of(base64.b64decode(body["predictions"][0]["b64"])) == 1
    response = grpc_predict(server.grpc_port, {"image_bytes": [jpeg]}, label="canary")
    assert response.model_spec.version.value == 2
    assert version_of(response.outputs["colorized_bytes"].string_val[0]) == 2

    config = model_server_config_pb2.ModelServerConfig()
    model = config.model_config_list.config.add(name="colorizer", base_path=os.path.join(serving_dir, "colorizer"),
                                                model_platform="tensorflow")
    model.model_version_policy.latest.num_versions = 2
    model.version_labels["stable"] = 2
    with grpc.insecure_channel(f"127.0.0.1:{server.grpc_port}") as channel:
        stub = model_service_pb2_grpc.ModelServiceStub(channel)
        reply = stub.HandleReloadConfigRequest(model_management_pb2.ReloadConfigRequest(config=config), timeout=30)
        assert reply.status.error_code == 0, reply.status.error_message
        try:
            assert grpc_predict(server.grpc_port, {"image_bytes": [jpeg]}, label="stable").model_spec.version.value == 2
            assert rest(server.rest_port, "colorizer/labels/canary:predict", {"instances": [b64(jpeg)]})[0] == 400
        finally:
            model.version_labels["stable"] = 1
            model.version_labels["canary"] = 2
            stub.HandleReloadConfigRequest(model_management_pb2.ReloadConfigRequest(config=config), timeout=30)


BAD_REQUESTS = [
    # (name, gRPC request kwargs, REST path, REST body, code, sentence)
    ("empty bytes", dict(inputs={"image_bytes": [b""]}), "colorizer:predict",
     {"instances": [b64(b"")]}, "INVALID_ARGUMENT", EMPTY),
    ("not an image", dict(inputs={"image_bytes": [b"%PDF-1.4 not an image"]}), "colorizer:predict",
     {"instances": [b64(b"%PDF-1.4 not an image")]}, "INVALID_ARGUMENT", NOT_IMAGE),
    ("over the pixel limit", dict(inputs={"image_bytes": [image_bytes(80, 80, fmt="PNG")]}), "colorizer:predict",
     {"instances": [b64(image_bytes(80, 80, fmt="PNG"))]}, "INVALID_ARGUMENT", TOO_BIG),
    ("wrong signature", dict(inputs={"image_bytes": [b"x"]}, signature="colorise"), "colorizer:predict",
     {"signature_name": "colorise", "instances": [b64(b"x")]}, "INVALID_ARGUMENT",
     "Signature 'colorise' is not in model 'colorizer' version 2; its signatures are: scale, serving_default."),
    ("wrong input name", dict(inputs={"images": [b"x"]}), "colorizer:predict",
     {"inputs": {"images": [b64(b"x")]}}, "INVALID_ARGUMENT",
     "'images' is not an input of signature 'serving_default'; its inputs are: image_bytes."),
    ("wrong dtype", dict(inputs={"image_bytes": [1.5]}), "colorizer:predict",
     {"instances": [1.5]}, "INVALID_ARGUMENT", None),
    ("unknown model", dict(inputs={"image_bytes": [b"x"]}, model="colourizer"), "colourizer:predict",
     {"instances": [b64(b"x")]}, "NOT_FOUND", "Model 'colourizer' is not served here; served models: colorizer."),
    ("unknown version", dict(inputs={"image_bytes": [b"x"]}, version=7), "colorizer/versions/7:predict",
     {"instances": [b64(b"x")]}, "NOT_FOUND", "Version 7 of model 'colorizer' is not loaded; loaded versions: 1, 2."),
    ("unknown label", dict(inputs={"image_bytes": [b"x"]}, label="beta"), "colorizer/labels/beta:predict",
     {"instances": [b64(b"x")]}, "INVALID_ARGUMENT",
     "Model 'colorizer' has no version label 'beta'; its labels are: canary, stable."),
]
HTTP = {"INVALID_ARGUMENT": 400, "NOT_FOUND": 404}
PUSHER_FILES = ["models.config", "batching_parameters.txt", "monitoring.config"]  # contracts.md


@pytest.mark.parametrize("case", BAD_REQUESTS, ids=[c[0] for c in BAD_REQUESTS])
def test_bad_requests_get_one_sentence_and_the_server_keeps_serving(server, case):
    _, grpc_kwargs, path, body, code, sentence = case
    with pytest.raises(grpc.RpcError) as raised:
        grpc_predict(server.grpc_port, **grpc_kwargs)
    assert raised.value.code() == grpc.StatusCode[code]
    status, reply = rest(server.rest_port, path, body)
    assert status == HTTP[code]
    for message in (raised.value.details(), reply["error"]):
        assert "\n" not in message and "Traceback" not in message and message.endswith(".")
        if sentence:
            assert message == sentence
    good = image_bytes(seed=5)
    assert grpc_predict(server.grpc_port, {"image_bytes": [good]}).outputs["colorized_bytes"].string_val
    assert rest(server.rest_port, "colorizer:predict", {"instances": [b64(good)]})[0] == 200


def test_rest_rejects_malformed_bodies_and_paths(server):
    port = server.rest_port
    status, reply = rest(port, "colorizer:predict", raw=b'{"instances": [')
    assert status == 400 and reply["error"].startswith("JSON Parse error:")
    assert rest(port, "colorizer:predict", {"instances": []}) == (
        400, {"error": "'instances' must be a non-empty list."})
    assert rest(port, "colorizer:predict", {"nothing": 1}) == (400, {"error": "Missing 'inputs' or 'instances' key."})
    status, reply = rest(port, "colorizer:predict", {"signature_name": "scale", "instances": [[1.0, 2.0, 3.0]]})
    assert status == 400 and "takes several inputs (offset, x)" in reply["error"]
    status, reply = rest(port, "colorizer:predict",
                         {"signature_name": "scale", "inputs": {"x": [[1.0, 2.0], [3.0]], "offset": [1, 2]}})
    assert status == 400 and "not a dense tensor" in reply["error"]
    status, reply = rest(port, "colorizer:predict", {"signature_name": "scale", "inputs": {"x": [[1, 2, 3, 4]],
                                                                                            "offset": [1]}})
    assert status == 400 and reply["error"] == "Input 'x' of signature 'scale' must have shape [-1, 3], got [1, 4]."
    status, reply = rest(port, "colorizer:predict", {"instances": [{"b64": "***"}]})
    assert status == 400 and "not valid base64" in reply["error"]
    assert requests.get(f"http://127.0.0.1:{port}/v1/models/colorizer:predict", timeout=10).status_code == 400
    assert rest(port, "colorizer:classify", {"examples": [{}]})[0] == 501
    assert grpc_predict(server.grpc_port, {"image_bytes": [image_bytes()]}).model_spec.version.value == 2


def test_prometheus_metrics_count_requests_by_model_signature_and_status(server):
    grpc_predict(server.grpc_port, {"image_bytes": [image_bytes(seed=6)]})
    rest(server.rest_port, "colorizer:predict", {"instances": [b64(b"")]})
    response = requests.get(f"http://127.0.0.1:{server.rest_port}/monitoring/prometheus/metrics", timeout=10)
    assert response.status_code == 200 and response.headers["Content-Type"].startswith("text/plain")
    counts = {}
    for line in response.text.splitlines():
        if line.startswith(":tensorflow:serving:request_count{"):
            labels, value = line.rsplit(" ", 1)
            counts[labels] = int(value)
    ok = ':tensorflow:serving:request_count{model_name="colorizer",signature_name="serving_default",' \
         'entrypoint="GRPC",status="OK"}'
    bad = ':tensorflow:serving:request_count{model_name="colorizer",signature_name="serving_default",' \
          'entrypoint="REST",status="INVALID_ARGUMENT"}'
    assert counts[ok] >= 1 and counts[bad] >= 1
    assert ':tensorflow:serving:request_latency_count{model_name="colorizer",signature_name="serving_default",' \
           'entrypoint="GRPC"}' in response.text
    assert 'model_version_state{model_name="colorizer",version="2",state="AVAILABLE"} 1' in response.text


# ---------------------------------------------------------------- versions appearing on disk

def _status(port: int) -> dict[str, tuple[str, str]]:
    body = rest(port, "colorizer")[1]
    return {s["version"]: (s["state"], s["status"]["error_message"]) for s in body["model_version_status"]}


def test_new_versions_are_served_and_broken_ones_skipped(tmp_path):
    base = str(tmp_path / "colorizer")
    publish(base, 1)
    with server_lib.serve(serving_config(model_base_path=base, file_system_poll_wait_seconds=0.1)) as running:
        port, jpeg = running.rest_port, image_bytes(seed=7)

        def served_version() -> int:
            status, body = rest(port, "colorizer:predict", {"instances": [b64(jpeg)]})
            assert status == 200, body
            return version_of(base64.b64decode(body["predictions"][0]["b64"]))

        assert served_version() == 1
        publish(base, 2, "broken")
        wait_for(lambda: _status(port).get("2", ("",))[0] == "END")
        assert "Loading" in _status(port)["2"][1] and "failed" in _status(port)["2"][1]
        assert served_version() == 1

        temporary = publish(base, 3, rename=False)  # complete, but not yet renamed in
        time.sleep(0.4)
        assert "3" not in _status(port) and served_version() == 1
        os.rename(temporary, os.path.join(base, "3"))
        wait_for(lambda: _status(port).get("3", ("",))[0] == "AVAILABLE", timeout=5)  # 50 poll intervals
        assert served_version() == 3
        wait_for(lambda: _status(port)["1"][0] == "END")  # latest{1}: version 1 unloaded
        assert rest(port, "colorizer/versions/1:predict", {"instances": [b64(jpeg)]})[0] == 404

        publish(base, 4, "bad_warmup", model=3)
        wait_for(lambda: _status(port).get("4", ("",))[0] == "END")
        assert EMPTY in _status(port)["4"][1]
        assert served_version() == 3


def test_model_config_file_changes_are_applied_while_serving(tmp_path):
    base = tmp_path / "colorizer"
    publish(str(base), 1)
    publish(str(base), 2)
    config_file = tmp_path / "models.config"

    def write_config(num_versions: int, stable: int) -> None:
        partial = tmp_path / "models.config.partial"
        partial.write_text(f'model_config_list {{ config {{ name: "colorizer" base_path: "{base}" '
                           f'model_version_policy {{ latest {{ num_versions: {num_versions} }} }} '
                           f'version_labels {{ key: "stable" value: {stable} }} }} }}')
        os.replace(partial, config_file)

    write_config(2, 1)
    config = serving_config(model_config_file=str(config_file), model_config_file_poll_wait_seconds=0.1)
    with server_lib.serve(config) as running:
        jpeg = image_bytes(seed=8)
        assert grpc_predict(running.grpc_port, {"image_bytes": [jpeg]}, label="stable").model_spec.version.value == 1
        write_config(1, 2)
        wait_for(lambda: _status(running.rest_port)["1"][0] == "END")
        assert grpc_predict(running.grpc_port, {"image_bytes": [jpeg]}, label="stable").model_spec.version.value == 2


# ---------------------------------------------------------------- batching

def test_batching_merges_concurrent_requests_and_splits_results(tmp_path):
    base = str(tmp_path / "colorizer")
    publish(base, 2)
    params = tmp_path / "batching_parameters.txt"
    params.write_text("max_batch_size { value: 8 } batch_timeout_micros { value: 1000000 } "
                      "max_enqueued_batches { value: 100 } num_batch_threads { value: 2 }")
    config = serving_config(model_base_path=base, enable_batching=True, batching_parameters_file=str(params))
    with server_lib.serve(config) as running:
        rows_per_request = [1, 2, 1, 1, 2, 1]  # 8 rows: one full batch
        barrier = threading.Barrier(len(rows_per_request))
        results: dict[int, predict_pb2.PredictResponse] = {}

        def send(i: int, rows: int) -> None:
            x = np.arange(rows * 3, dtype=np.float32).reshape(rows, 3) + 100 * i
            barrier.wait()
            results[i] = grpc_predict(running.grpc_port, {"x": x, "offset": np.full(rows, i, np.float32)}, "scale")

        threads = [threading.Thread(target=send, args=(i, r)) for i, r in enumerate(rows_per_request)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        calls = 0.0
        for i, rows in enumerate(rows_per_request):
            y = tf.make_ndarray(results[i].outputs["y"])
            x = np.arange(rows * 3, dtype=np.float32).reshape(rows, 3) + 100 * i
            np.testing.assert_allclose(y, x * 2 + i)
            sizes = tf.make_ndarray(results[i].outputs["batch_size"])
            assert len(sizes) == rows
            calls += rows / sizes[0]
        assert round(calls) < len(rows_per_request) and round(calls) <= 2

        images = [image_bytes(16, 16 + i, seed=i) for i in range(3)] + [b"not an image"]
        outcome: dict[int, object] = {}

        def colorize(i: int) -> None:
            try:
                outcome[i] = grpc_predict(running.grpc_port, {"image_bytes": [images[i]]})
            except grpc.RpcError as e:
                outcome[i] = e

        threads = [threading.Thread(target=colorize, args=(i,)) for i in range(len(images))]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        for i in range(3):
            png = outcome[i].outputs["colorized_bytes"].string_val[0]
            assert Image.open(io.BytesIO(png)).size == (16 + i, 16)
        assert outcome[3].code() == grpc.StatusCode.INVALID_ARGUMENT and outcome[3].details() == NOT_IMAGE


def test_full_batch_queue_is_unavailable_and_slow_rest_requests_time_out(tmp_path):
    base = str(tmp_path / "colorizer")
    publish(base, 1)
    params = tmp_path / "batching_parameters.txt"
    params.write_text("max_batch_size { value: 2 } batch_timeout_micros { value: 4000000 } "
                      "max_enqueued_batches { value: 1 } num_batch_threads { value: 1 }")
    config = serving_config(model_base_path=base, enable_batching=True, batching_parameters_file=str(params),
                         rest_api_timeout_in_ms=300)
    with server_lib.serve(config) as running:
        waiting: dict[str, object] = {}

        def open_batch() -> None:
            """Its batch of 1 row waits for a second row or the 4 s timeout (room on a busy machine)."""
            for _ in range(100):
                try:
                    waiting["response"] = grpc_predict(running.grpc_port, {"x": np.ones((1, 3), np.float32),
                                                                           "offset": np.zeros(1, np.float32)}, "scale")
                    return
                except grpc.RpcError as e:  # a probe's batch of 2 held the queue when it arrived: try again
                    if e.code() != grpc.StatusCode.UNAVAILABLE:
                        raise
                    time.sleep(0.05)

        opener = threading.Thread(target=open_batch)
        opener.start()
        refused = None
        while refused is None and opener.is_alive():
            try:  # 2 rows do not fit beside it, and the queue holds one batch
                grpc_predict(running.grpc_port, {"x": np.ones((2, 3), np.float32),
                                                 "offset": np.zeros(2, np.float32)}, "scale")
                time.sleep(0.05)  # ran alone: the opener had not reached the queue yet
            except grpc.RpcError as e:
                refused = e
        assert refused is not None and refused.code() == grpc.StatusCode.UNAVAILABLE
        assert refused.details() == "The batch queue is full (max_enqueued_batches: 1); retry later."
        opener.join(20)
        assert tf.make_ndarray(waiting["response"].outputs["y"]).tolist() == [[1.0, 1.0, 1.0]]

        status, reply = rest(running.rest_port, "colorizer:predict",
                             {"signature_name": "scale", "inputs": {"x": [[1, 2, 3]], "offset": [0]}})
        assert status == 504 and reply["error"].startswith("The request did not finish within its deadline")


# ---------------------------------------------------------------- launcher and CLI

def test_launcher_execs_tensorflow_model_server_with_the_same_flags(tmp_path):
    fake_bin = tmp_path / "bin"
    fake_bin.mkdir()
    record = tmp_path / "argv.json"
    fake = fake_bin / "tensorflow_model_server"
    fake.write_text(f"#!{sys.executable}\nimport json, sys\njson.dump(sys.argv, open({str(record)!r}, 'w'))\n")
    fake.chmod(0o755)
    env = {**os.environ, "PATH": f"{fake_bin}{os.pathsep}{os.environ['PATH']}", "PYTHONPATH": ROOT}
    command = [sys.executable, "-m", "serving.server", "--model_config_file=/models/models.config",
               "--enable_batching", "--batching_parameters_file=/models/batching_parameters.txt",
               "--monitoring_config_file", "/models/monitoring.config", "--rest_api_port=8601",
               "--tensorflow_intra_op_parallelism=2"]
    done = subprocess.run(command, env=env, cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    argv = json.loads(record.read_text())
    assert argv[0].endswith("tensorflow_model_server")
    assert argv[1:] == ["--port=8500", "--rest_api_port=8601", "--model_config_file=/models/models.config",
                        "--enable_batching=true", "--batching_parameters_file=/models/batching_parameters.txt",
                        "--monitoring_config_file=/models/monitoring.config", "--rest_api_timeout_in_ms=30000",
                        "--file_system_poll_wait_seconds=1", "--tensorflow_intra_op_parallelism=2"]
    assert "Running tensorflow_model_server" in done.stderr


def test_cli_mistakes_exit_2_with_one_sentence(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))  # no tensorflow_model_server here
    assert server_lib.main([]) == 2
    assert "Pass --model_base_path" in capsys.readouterr().err
    assert server_lib.main(["--implementation=binary", f"--model_base_path={tmp_path}"]) == 2
    assert "tensorflow_model_server is not on PATH" in capsys.readouterr().err
    assert server_lib.main([f"--model_base_path={tmp_path / 'missing'}"]) == 2
    assert capsys.readouterr().err.strip() == (
        f"The model base path {tmp_path / 'missing'} of model 'colorizer' does not exist; pass the folder that "
        "holds the numbered version folders.")
    version_dir = publish(str(tmp_path / "colorizer"), 1)
    assert server_lib.main([f"--model_base_path={version_dir}"]) == 2
    assert "is a SavedModel version folder; pass its parent" in capsys.readouterr().err
    bad_config = tmp_path / "models.config"
    bad_config.write_text("model_config_list { config { nme: 'x' } }")
    assert server_lib.main([f"--model_config_file={bad_config}"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"The model config file {bad_config} is not a valid ModelServerConfig text proto")
    assert server_lib.main([f"--model_base_path={tmp_path}", "--some_binary_flag=1"]) == 2
    assert "works only with tensorflow_model_server" in capsys.readouterr().err
    with socket.socket() as taken:
        taken.bind(("0.0.0.0", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert server_lib.main([f"--model_base_path={tmp_path / 'colorizer'}", f"--port={port}"]) == 2
        assert capsys.readouterr().err.strip() == (f"Cannot listen for gRPC on 0.0.0.0 port {port}; pass a free "
                                                   "--port and an address of this machine as --grpc_bind_address.")
        assert server_lib.main([f"--model_base_path={tmp_path / 'colorizer'}", "--port=0",
                                f"--rest_api_port={port}"]) == 2
        assert "Cannot listen for REST on 0.0.0.0 port" in capsys.readouterr().err


def test_main_serves_until_sigterm_and_stops_gracefully(tmp_path):
    base = str(tmp_path / "colorizer")
    publish(base, 1)
    rest_port = free_port()
    env = {**os.environ, "PYTHONPATH": ROOT, "TF_CPP_MIN_LOG_LEVEL": "2"}
    process = subprocess.Popen(
        [sys.executable, "-m", "serving.server", "--implementation=python", "--port=0",
         f"--rest_api_port={rest_port}", f"--model_base_path={base}"],
        cwd=ROOT, env=env, stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: process.poll() is not None or _reachable(rest_port), timeout=60, interval=0.2)
        assert process.poll() is None
        assert rest(rest_port, "colorizer:predict", {"instances": [b64(image_bytes())]})[0] == 200
        process.send_signal(signal.SIGTERM)
        assert process.wait(30) == 0
    finally:
        if process.poll() is None:
            process.kill()
    err = process.stderr.read()
    assert "Serving colorizer: gRPC on port" in err and "Stopped in" in err
    cpus = os.cpu_count() or 1  # its own TensorFlow: the pools sized before the first model loaded
    assert f"TensorFlow threads: inter-op {2 * cpus}, intra-op {cpus}." in err, err[-2000:]


def _reachable(port: int) -> bool:
    try:
        return requests.get(f"http://127.0.0.1:{port}/v1/models/colorizer", timeout=1).status_code == 200
    except (requests.ConnectionError, requests.Timeout):  # not listening yet, or listening while models load
        return False


def test_model_config_version_policies_choose_versions_as_tf_serving_does(tmp_path):
    from serving import _core

    config = tmp_path / "models.config"
    config.write_text("""
model_config_list {
  config { name: "newest" base_path: "/m/a" model_platform: "tensorflow" }
  config { name: "two" base_path: "/m/b" model_version_policy { latest { num_versions: 2 } } }
  config { name: "every" base_path: "/m/c" model_version_policy { all {} } }
  config { name: "pinned" base_path: "/m/d" model_version_policy { specific { versions: 1 versions: 3 } }
           version_labels { key: "stable" value: 1 } }
}
""")
    sources = {s.name: s for s in _core.read_model_config_file(str(config))}
    on_disk = {1, 2, 3, 4}
    assert sources["newest"].aspired(on_disk) == {4}
    assert sources["two"].aspired(on_disk) == {3, 4}
    assert sources["every"].aspired(on_disk) == on_disk
    assert sources["pinned"].aspired(on_disk) == {1, 3} and dict(sources["pinned"].labels) == {"stable": 1}
    config.write_text('model_config_list { config { name: "x" base_path: "/m" model_platform: "pytorch" } }')
    with pytest.raises(ValueError, match="has model_platform 'pytorch'; only 'tensorflow' is served"):
        _core.read_model_config_file(str(config))


def test_deployment_files_run_stock_tf_serving_on_the_pushers_files():
    import yaml

    parser = server_lib.build_parser()
    with open(os.path.join(ROOT, "serving", "kubernetes.yaml")) as f:
        deployment, service = yaml.safe_load_all(f)
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    assert container["image"].startswith("tensorflow/serving:") and container["command"] == [server_lib.BINARY]
    args, unknown = parser.parse_known_args(container["args"])
    assert not unknown and args.enable_batching
    assert [os.path.basename(p) for p in (args.model_config_file, args.batching_parameters_file,
                                          args.monitoring_config_file)] == PUSHER_FILES
    assert container["readinessProbe"]["httpGet"]["path"] == "/v1/models/colorizer"
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"grpc": args.port, "http": args.rest_api_port}
    assert {p["targetPort"] for p in service["spec"]["ports"]} == set(ports)
    assert deployment["spec"]["template"]["metadata"]["annotations"]["prometheus.io/path"] == \
        "/monitoring/prometheus/metrics"

    with open(os.path.join(ROOT, "serving", "docker-compose.yml")) as f:
        compose = yaml.safe_load(f)["services"]["tensorflow-serving"]
    args, unknown = parser.parse_known_args([arg.replace("${SERVING_DIR}", "/srv") for arg in compose["command"]])
    assert not unknown and args.enable_batching
    assert [args.model_config_file, args.batching_parameters_file, args.monitoring_config_file] == [
        f"/srv/{name}" for name in PUSHER_FILES]
    assert compose["entrypoint"] == [server_lib.BINARY] and compose["ports"] == ["8500:8500", "8501:8501"]


# ---------------------------------------------------------------- safe version and label changes, the reload door

def _reload(port: int, *models: tuple[str, str], labels: dict | None = None) -> model_management_pb2.ReloadConfigResponse:
    """HandleReloadConfigRequest with (name, base_path) models, latest{1}, and `labels` on the first."""
    config = model_server_config_pb2.ModelServerConfig()
    for name, base_path in models:
        config.model_config_list.config.add(name=name, base_path=base_path, model_platform="tensorflow")
    for label, version in (labels or {}).items():
        config.model_config_list.config[0].version_labels[label] = version
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        return model_service_pb2_grpc.ModelServiceStub(channel).HandleReloadConfigRequest(
            model_management_pb2.ReloadConfigRequest(config=config), timeout=30)


def test_a_version_folder_written_file_by_file_loads_once_complete(tmp_path):
    base = tmp_path / "colorizer"
    publish(str(base), 1)
    source, target = built_model(2), base / "2"
    files = sorted(os.path.relpath(os.path.join(folder, name), source)
                   for folder, _, names in os.walk(source) for name in names)
    with server_lib.serve(serving_config(model_base_path=str(base), file_system_poll_wait_seconds=0.05)) as running:
        for folder, _, _ in os.walk(source):  # folders first, as a copy tool makes them: variables/ still empty
            os.makedirs(target / os.path.relpath(folder, source), exist_ok=True)
        shutil.copyfile(os.path.join(source, "saved_model.pb"), target / "saved_model.pb")
        wait_for(lambda: _status(running.rest_port).get("2", ("",))[0] == "END")  # tried and failed
        for name in files:
            if name != "saved_model.pb":
                time.sleep(0.2)
                shutil.copyfile(os.path.join(source, name), target / name)
        wait_for(lambda: _status(running.rest_port)["2"][0] == "AVAILABLE", timeout=30)
        response = grpc_predict(running.grpc_port, {"image_bytes": [image_bytes(seed=9)]})
        assert response.model_spec.version.value == 2
        assert version_of(response.outputs["colorized_bytes"].string_val[0]) == 2


def test_version_folders_beyond_64_bits_are_skipped_with_one_log_line(tmp_path, caplog):
    base = tmp_path / "colorizer"
    publish(str(base), 1)
    huge = "99999999999999999999"
    shutil.copytree(built_model(2), base / huge)
    config = serving_config(model_base_path=str(base), file_system_poll_wait_seconds=0.05)
    with caplog.at_level(logging.WARNING, logger="serving.server"), server_lib.serve(config) as running:
        time.sleep(0.5)  # several polls
        assert grpc_predict(running.grpc_port, {"image_bytes": [image_bytes()]}).model_spec.version.value == 1
        assert rest(running.rest_port, "colorizer:predict", {"instances": [b64(image_bytes())]})[0] == 200
        assert list(_status(running.rest_port)) == ["1"]
    skipped = [r.getMessage() for r in caplog.records if huge in r.getMessage()]
    assert len(skipped) == 1 and "version folder names must be numbers up to 9223372036854775807" in skipped[0]


def test_a_labelled_version_stays_loaded_until_its_label_moves(tmp_path):
    base = tmp_path / "colorizer"
    publish(str(base), 1)
    publish(str(base), 2)
    config_file = tmp_path / "models.config"
    built = {1: 1, 2: 2, 3: 3, 4: 1}  # version -> the test model (tint) it was copied from

    def write_config(stable: int, canary: int) -> None:  # latest{1}: only the labels keep older versions
        partial = tmp_path / "models.config.partial"
        partial.write_text(f'model_config_list {{ config {{ name: "colorizer" base_path: "{base}" '
                           f'version_labels {{ key: "stable" value: {stable} }} '
                           f'version_labels {{ key: "canary" value: {canary} }} }} }}')
        os.replace(partial, config_file)

    def served(label: str) -> int:
        response = grpc_predict(running.grpc_port, {"image_bytes": [image_bytes(seed=10)]}, label=label)
        version = response.model_spec.version.value
        assert version_of(response.outputs["colorized_bytes"].string_val[0]) == built[version]
        return version

    def loaded() -> set[int]:
        return {int(v) for v, (state, _) in _status(running.rest_port).items() if state == "AVAILABLE"}

    write_config(1, 2)
    config = serving_config(model_config_file=str(config_file), model_config_file_poll_wait_seconds=0.05,
                            file_system_poll_wait_seconds=0.05)
    with server_lib.serve(config) as running:
        assert loaded() == {1, 2} and (served("stable"), served("canary")) == (1, 2)
        publish(str(base), 3)  # the newest, but no label names it yet: 1 and 2 stay, being named
        wait_for(lambda: loaded() == {1, 2, 3})
        time.sleep(0.3)
        assert loaded() == {1, 2, 3} and (served("stable"), served("canary")) == (1, 2)
        write_config(2, 3)  # the labels move: version 1 is named by none and unloads
        wait_for(lambda: loaded() == {2, 3})
        assert (served("stable"), served("canary")) == (2, 3)
        write_config(3, 4)  # version 4 is not there yet: canary stays on 3 instead of pointing at nothing
        wait_for(lambda: loaded() == {3})
        assert (served("stable"), served("canary")) == (3, 3)
        publish(str(base), 4, model=1)
        wait_for(lambda: loaded() == {3, 4})
        assert (served("stable"), served("canary")) == (3, 4)


def test_bind_address_flags_choose_where_each_api_listens(tmp_path, capsys, monkeypatch):
    base = str(tmp_path / "colorizer")
    publish(base, 1)
    args = server_lib.build_parser().parse_args([f"--model_base_path={base}", "--port=0", "--rest_api_port=0",
                                                 "--grpc_bind_address=127.0.0.2", "--rest_bind_address=127.0.0.2"])
    config = server_lib.config_from_args(args)
    config.rest_api_port = 0
    with server_lib.serve(config) as running:
        request = predict_pb2.PredictRequest()
        request.model_spec.name = "colorizer"
        request.inputs["image_bytes"].CopyFrom(tf.make_tensor_proto([image_bytes()]))
        for host, reachable in (("127.0.0.2", True), ("127.0.0.1", False)):
            with grpc.insecure_channel(f"{host}:{running.grpc_port}") as channel:
                stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
                if reachable:
                    assert stub.Predict(request, timeout=20).model_spec.version.value == 1
                else:
                    with pytest.raises(grpc.RpcError) as raised:
                        stub.Predict(request, timeout=5)
                    assert raised.value.code() == grpc.StatusCode.UNAVAILABLE
        url = f"http://{{}}:{running.rest_port}/v1/models/colorizer"
        assert requests.get(url.format("127.0.0.2"), timeout=10).status_code == 200
        with pytest.raises(requests.ConnectionError):
            requests.get(url.format("127.0.0.1"), timeout=10)
    fake_bin = tmp_path / "bin"  # the stock binary has no such flag: say so instead of ignoring it
    fake_bin.mkdir()
    (fake_bin / server_lib.BINARY).write_text("#!/bin/sh\nexit 0\n")
    (fake_bin / server_lib.BINARY).chmod(0o755)
    monkeypatch.setenv("PATH", str(fake_bin))
    assert server_lib.main([f"--model_base_path={base}", "--rest_bind_address=127.0.0.1"]) == 2
    assert capsys.readouterr().err.strip() == ("--rest_bind_address is a flag of the built-in server only; drop it "
                                               "or pass --implementation=python.")
    assert server_lib.main([f"--model_base_path={base}", "--max_request_pixels=1000"]) == 2  # so are the limits
    assert capsys.readouterr().err.strip() == ("--max_request_pixels is a flag of the built-in server only; drop it "
                                               "or pass --implementation=python.")


def test_config_reload_is_off_unless_enabled(tmp_path):
    base = str(tmp_path / "colorizer")
    publish(base, 1)
    with server_lib.serve(serving_config(model_base_path=base)) as running:
        with pytest.raises(grpc.RpcError) as raised:
            _reload(running.grpc_port, ("colorizer", base), ("other", base))
        assert raised.value.code() == grpc.StatusCode.PERMISSION_DENIED
        assert raised.value.details() == ("HandleReloadConfigRequest is off on this server; start it with "
                                          "--allow_reload_config to use it.")
        assert running.core.manager.model_names() == ["colorizer"]
        assert grpc_predict(running.grpc_port, {"image_bytes": [image_bytes()]}).model_spec.version.value == 1


def test_config_reload_stays_under_its_root_and_a_new_base_path_serves_its_own_versions(tmp_path):
    root = tmp_path / "serving"
    first, second = root / "colorizer", root / "colorizer_retrained"
    publish(str(first), 1)
    publish(str(second), 1, model=3)  # also version 1, but another model: tint 3
    outside = tmp_path / "private"
    publish(str(outside), 1)
    config_file = root / "models.config"
    config_file.write_text(f'model_config_list {{ config {{ name: "colorizer" base_path: "{first}" }} }}')
    os.symlink(outside, root / "link_out")
    with server_lib.serve(serving_config(model_config_file=str(config_file), allow_reload_config=True)) as running:
        refused = {}
        for path in (outside, tmp_path / "missing", f"{root}/../private", root / "link_out", "/etc"):
            reply = _reload(running.grpc_port, ("colorizer", str(path)))
            refused[str(path)] = (reply.status.error_code, reply.status.error_message)
        assert set(refused.values()) == {(3, "The base_path of model 'colorizer' is outside the folder this server "
                                             "reloads models from; name a model folder under "
                                             "--reload_config_allowed_root.")}, refused
        jpeg = image_bytes(seed=11)
        assert version_of(grpc_predict(running.grpc_port, {"image_bytes": [jpeg]}).outputs[
            "colorized_bytes"].string_val[0]) == 1

        reply = _reload(running.grpc_port, ("colorizer", str(second)))
        assert reply.status.error_code == 0, reply.status.error_message
        response = grpc_predict(running.grpc_port, {"image_bytes": [jpeg]})
        assert response.model_spec.version.value == 1
        assert version_of(response.outputs["colorized_bytes"].string_val[0]) == 3  # the new folder's version 1
