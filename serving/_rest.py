"""TF Serving's REST API v1 on a stdlib ThreadingHTTPServer, with its JSON tensor rules (json_tensor.cc).

    GET  /v1/models/{name}[/versions/{v}|/labels/{label}]            model status (GetModelStatusResponse)
    GET  /v1/models/{name}[/versions/{v}|/labels/{label}]/metadata   signature defs (GetModelMetadataResponse)
    POST /v1/models/{name}[/versions/{v}|/labels/{label}]:predict    {"instances": [...]} or {"inputs": ...}

Row ("instances") requests get {"predictions": [...]}, columnar ("inputs") ones {"outputs": ...}.
DT_STRING values may be {"b64": "..."}; string outputs whose name ends in "_bytes" come back as
{"b64": "..."}. Failures answer {"error": "..."} with the HTTP status of the gRPC code.
"""

from __future__ import annotations

import base64
import binascii
import http.server
import json
import logging
import re
import select
import socket
import sys
import threading
import time
import urllib.parse
from typing import Any, Callable, Iterator

import numpy as np
from google.protobuf import json_format
from tensorflow.core.framework import types_pb2

from serving import _core, _metrics

_log = logging.getLogger("serving.rest")

HTTP_STATUS = {"OK": 200, "CANCELLED": 499, "UNKNOWN": 500, "INVALID_ARGUMENT": 400, "DEADLINE_EXCEEDED": 504,
               "NOT_FOUND": 404, "ALREADY_EXISTS": 409, "PERMISSION_DENIED": 403, "RESOURCE_EXHAUSTED": 429,
               "FAILED_PRECONDITION": 400, "ABORTED": 409, "OUT_OF_RANGE": 400, "UNIMPLEMENTED": 501,
               "INTERNAL": 500, "UNAVAILABLE": 503, "DATA_LOSS": 500, "UNAUTHENTICATED": 401}
_SPEC = r"/v1/models/([^/:]+)(?:(?:/versions/(\d+))|(?:/labels/([^/:]+)))?"
_PREDICT = re.compile(_SPEC + r":(classify|regress|predict)", re.IGNORECASE)
_STATUS = re.compile(_SPEC + r"(/metadata)?", re.IGNORECASE)
_BYTES_SUFFIX = "_bytes"
_INT_KINDS, _NUMBER_KINDS = "iu", "iuf"
_JSON_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"')
_ALL_BUT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")
_DEPTH_CHUNK = 1 << 20
_MAX_LINE = 65536  # longest chunk-size line read
_B64_VALUE = re.compile(rb'"b64"\s*:\s*"')
_HEADER_B64_CHARS = 1 << 17  # base64 read per image for its header before the body is parsed (96 KiB of image)


class BadRequest(Exception):
    """A request the HTTP layer cannot read (framing or size); answered 400 with this sentence."""


def _error(message: str) -> _core.ServingError:
    return _core.ServingError("INVALID_ARGUMENT", message)


def _is_b64(value: Any) -> bool:
    return isinstance(value, dict) and len(value) == 1 and isinstance(value.get("b64"), str)


def _dense_shape(value: Any) -> list[int]:
    shape = []
    while isinstance(value, list):
        shape.append(len(value))
        if not value:
            break
        value = value[0]
    return shape


def _leaf(value: Any, spec: _core.TensorSpec) -> Any:
    if spec.dtype == types_pb2.DT_STRING:
        if _is_b64(value):
            try:
                return base64.b64decode(value["b64"], validate=True)
            except (binascii.Error, ValueError):
                raise _error(f"Input '{spec.name}' has a 'b64' value that is not valid base64.") from None
        if isinstance(value, str):
            return value.encode("utf-8")
    elif spec.dtype == types_pb2.DT_BOOL:
        if isinstance(value, bool):
            return value
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        if isinstance(value, int) or np.dtype(spec.numpy_dtype).kind == "f":
            return value
    raise _error(f"Input '{spec.name}' has the JSON value {json.dumps(value)[:80]}, which is not of type "
                 f"{_core.dtype_name(spec.dtype)}.")


def _flatten(value: Any, shape: list[int], level: int, spec: _core.TensorSpec, out: list) -> None:
    if not isinstance(value, list):
        if level != len(shape):
            raise _error(f"Input '{spec.name}' is not a dense tensor: a value sits at depth {level}, "
                         f"expected {len(shape)}.")
        out.append(_leaf(value, spec))
        return
    if level >= len(shape) or len(value) != shape[level]:
        raise _error(f"Input '{spec.name}' is not a dense tensor: its lists have different lengths.")
    for item in value:
        _flatten(item, shape, level + 1, spec, out)


def json_to_array(value: Any, spec: _core.TensorSpec) -> np.ndarray:
    """A JSON value (scalar or nested lists) as an array of the spec's dtype, with TF Serving's checks."""
    if spec.dtype not in (types_pb2.DT_STRING, types_pb2.DT_BOOL) and not isinstance(value, (bool, dict, str)):
        try:
            fast = np.asarray(value)
        except ValueError:  # ragged lists: the walk below names the problem
            fast = None
        kinds = _INT_KINDS if np.dtype(spec.numpy_dtype).kind in _INT_KINDS else _NUMBER_KINDS
        if fast is not None and fast.dtype.kind in kinds and fast.size:
            return fast.astype(spec.numpy_dtype)
    shape = _dense_shape(value)
    flat: list = []
    _flatten(value, shape, 0, spec, flat)
    dtype = object if spec.dtype == types_pb2.DT_STRING else spec.numpy_dtype
    array = np.empty(len(flat), dtype=dtype)
    try:
        array[:] = flat
    except (OverflowError, ValueError):
        raise _error(f"Input '{spec.name}' has values out of the range of {_core.dtype_name(spec.dtype)}.") from None
    return array.reshape(shape)


def _instances(value: Any, signature: _core.Signature) -> dict[str, np.ndarray]:
    if not isinstance(value, list) or not value:
        raise _error("'instances' must be a non-empty list.")
    names = sorted(signature.inputs)
    as_objects = isinstance(value[0], dict) and not _is_b64(value[0])
    if not as_objects and len(names) > 1:
        raise _error(f"'instances' is a plain list, but signature '{signature.name}' takes several inputs "
                     f"({', '.join(names)}): send a list of objects with one key per input.")
    rows: dict[str, list[np.ndarray]] = {name: [] for name in names}
    for i, item in enumerate(value):
        if as_objects:
            if not isinstance(item, dict) or _is_b64(item):
                raise _error(f"Item {i} of 'instances' is not an object like the first one.")
            if set(item) != set(names):
                raise _error(f"Item {i} of 'instances' has keys {', '.join(sorted(item)) or 'none'}; signature "
                             f"'{signature.name}' takes: {', '.join(names)}.")
            values = item
        else:
            if isinstance(item, dict) and not _is_b64(item):
                raise _error(f"Item {i} of 'instances' is an object, unlike the first one.")
            values = {names[0]: item}
        for name in names:
            array = json_to_array(values[name], signature.inputs[name])
            if rows[name] and array.shape != rows[name][0].shape:
                raise _error(f"Input '{name}' has shape {list(array.shape)} in item {i} of 'instances' but "
                             f"{list(rows[name][0].shape)} in item 0.")
            rows[name].append(array)
    return {name: np.stack(arrays) for name, arrays in rows.items()}


def _columns(value: Any, signature: _core.Signature) -> dict[str, np.ndarray]:
    names = sorted(signature.inputs)
    if not isinstance(value, dict) or _is_b64(value):
        if len(names) > 1:
            raise _error(f"'inputs' is a plain value, but signature '{signature.name}' takes several inputs "
                         f"({', '.join(names)}): send an object with one key per input.")
        return {names[0]: json_to_array(value, signature.inputs[names[0]])}
    for key in value:
        if key not in signature.inputs:
            raise _error(f"'{key}' is not an input of signature '{signature.name}'; its inputs are: "
                         f"{', '.join(names)}.")
    for name in names:
        if name not in value:
            raise _error(f"Missing named input '{name}' in the 'inputs' object.")
    return {name: json_to_array(value[name], signature.inputs[name]) for name in names}


def json_depth_over(body: bytes, limit: int) -> bool:
    """Whether the JSON text nests arrays and objects deeper than `limit`, found before parsing."""
    brackets = _JSON_STRING.sub(b"", body).translate(None, _ALL_BUT_BRACKETS)
    depth = 0
    for start in range(0, len(brackets), _DEPTH_CHUNK):
        chunk = np.frombuffer(brackets, np.uint8, min(_DEPTH_CHUNK, len(brackets) - start), start)
        levels = depth + np.cumsum(np.where((chunk == ord("[")) | (chunk == ord("{")), 1, -1), dtype=np.int64)
        if levels.max() > limit:
            return True
        depth = int(levels[-1])
    return False


def body_images(body: bytes) -> Iterator[bytes]:
    """The start of each {"b64": ...} value in a JSON body, decoded: enough bytes for its image header."""
    for match in _B64_VALUE.finditer(body):
        text = body[match.end():match.end() + _HEADER_B64_CHARS].split(b'"', 1)[0].replace(b"\\/", b"/")
        try:
            yield base64.b64decode(text[:len(text) // 4 * 4])
        except (binascii.Error, ValueError):
            continue


def parse_predict_body(body: bytes, servable: _core.Servable,
                       max_depth: int) -> tuple[str, dict[str, np.ndarray], bool]:
    """(signature name, inputs, row format?) from a predict request body."""
    too_deep = _error(f"The JSON body nests deeper than the --max_json_depth limit of {max_depth}.")
    if json_depth_over(body, max_depth):
        raise too_deep
    try:
        doc = json.loads(body)
    except RecursionError:
        raise too_deep from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        where = f" at offset {e.pos}" if isinstance(e, json.JSONDecodeError) else ""
        message = e.msg if isinstance(e, json.JSONDecodeError) else "the body is not UTF-8"
        raise _error(f"JSON Parse error: {message}{where}.") from None
    if not isinstance(doc, dict):
        raise _error("The request body must be a JSON object with 'instances' or 'inputs'.")
    name = doc.get("signature_name", _core.DEFAULT_SIGNATURE)
    if not isinstance(name, str):
        raise _error("'signature_name' must be a string.")
    signature = servable.signature(name)
    if "instances" in doc and "inputs" in doc:
        raise _error("Send either 'instances' or 'inputs', not both.")
    if "instances" in doc:
        return signature.name, _instances(doc["instances"], signature), True
    if "inputs" in doc:
        return signature.name, _columns(doc["inputs"], signature), False
    raise _error("Missing 'inputs' or 'instances' key.")


def _to_json(array: np.ndarray, as_bytes: bool) -> Any:
    if array.dtype != object and array.dtype.kind not in "SU":
        return array.tolist()
    encode: Callable[[Any], Any] = ((lambda b: {"b64": base64.b64encode(b).decode("ascii")}) if as_bytes
                                    else (lambda b: b.decode("utf-8", "replace") if isinstance(b, bytes) else b))
    flat = [encode(b) for b in array.reshape(-1).tolist()]
    if array.ndim == 0:
        return flat[0]
    nested: Any = flat
    for size in reversed(array.shape[1:]):
        nested = [nested[i:i + size] for i in range(0, len(nested), size)]
    return nested


def predict_response(outputs: dict[str, np.ndarray], rows: bool) -> dict[str, Any]:
    """{"predictions": ...} (row format) or {"outputs": ...} (columnar), as MakeJsonFromTensors writes them."""
    if not rows:
        values = {name: _to_json(a, name.endswith(_BYTES_SUFFIX)) for name, a in outputs.items()}
        return {"outputs": values if len(values) > 1 else next(iter(values.values()))}
    sizes = {a.shape[0] if a.ndim else None for a in outputs.values()}
    if len(sizes) != 1 or None in sizes:
        raise _error("The outputs have no common batch size; send the request with 'inputs' instead.")
    columns = {name: _to_json(a, name.endswith(_BYTES_SUFFIX)) for name, a in outputs.items()}
    size = sizes.pop()
    if len(columns) == 1:
        return {"predictions": next(iter(columns.values()))}
    return {"predictions": [{name: column[i] for name, column in columns.items()} for i in range(size)]}


class RestApi:
    """Routes one HTTP request to the core; returns (HTTP status, content type, body)."""

    def __init__(self, core: _core.ServingCore, metrics: _metrics.Metrics, timeout_ms: int,
                 prometheus_path: str | None):
        self.core, self.metrics = core, metrics
        self.timeout = timeout_ms / 1000 if timeout_ms > 0 else None
        self.prometheus_path = prometheus_path

    def handle(self, method: str, raw_path: str, body: bytes,
               cancelled: Callable[[], bool] | None = None) -> tuple[int, str, bytes]:
        """`cancelled()` tells whether the client has gone away (its predict is then dropped)."""
        path = urllib.parse.urlsplit(raw_path).path
        if self.prometheus_path and path == self.prometheus_path and method == "GET":
            return 200, "text/plain; version=0.0.4", self.metrics.render().encode()
        try:
            return 200, "application/json", json.dumps(self._route(method, path, body, cancelled), indent=1).encode()
        except _core.ServingError as e:
            return error_reply(HTTP_STATUS.get(e.code, 500), e.message)
        except Exception as e:  # noqa: BLE001 - one request's bug must not take the server down
            _log.exception("REST %s %s failed", method, path)
            return error_reply(500, f"Internal error: {e}")

    def _route(self, method: str, path: str, body: bytes, cancelled: Callable[[], bool] | None) -> dict[str, Any]:
        if not path.lower().startswith("/v1/"):
            raise _core.ServingError("NOT_FOUND", f"{path} is not an API path; use /v1/models/NAME.")
        match = (_PREDICT if method == "POST" else _STATUS).fullmatch(path) if method in ("GET", "POST") else None
        if match is None:
            raise _error(f"Malformed request: {method} {path}.")
        name, version, label = urllib.parse.unquote(match.group(1)), match.group(2), match.group(3)
        version = int(version) if version else None
        label = urllib.parse.unquote(label) if label else None
        if method == "POST":
            if match.group(4).lower() != "predict":
                raise _core.ServingError("UNIMPLEMENTED", f"{match.group(4)} is not supported here; use :predict.")
            return self._predict(name, version, label, body, cancelled)
        if match.group(4):
            servable = self.core.manager.resolve(name, version, label)
            return metadata_json(servable)
        return status_json(self.core.manager.status(name, version, label))

    def _predict(self, name: str, version: int | None, label: str | None, body: bytes,
                 cancelled: Callable[[], bool] | None) -> dict[str, Any]:
        started, code, servable, parsed = time.monotonic(), "OK", None, {"signature": "", "rows": True}

        def decode() -> tuple[str, dict[str, np.ndarray]]:
            signature, inputs, parsed["rows"] = parse_predict_body(body, servable, self.core.limits.max_json_depth)
            parsed["signature"] = signature
            return signature, inputs

        try:
            servable = self.core.manager.resolve(name, version, label)
            pixels = _core.announced_pixels(body_images(body), self.core.limits.max_request_pixels)
            _, outputs = self.core.predict(servable, decode, timeout=self.timeout, cancelled=cancelled, pixels=pixels)
            return predict_response(outputs, parsed["rows"])
        except _core.ServingError as e:
            code = e.code
            raise
        finally:
            self.metrics.observe_request(*_metrics.request_labels(servable, parsed["signature"]), "REST", code,
                                         time.monotonic() - started)


def error_reply(status: int, message: str) -> tuple[int, str, bytes]:
    return status, "application/json", json.dumps({"error": message}).encode()


def status_json(states: dict[int, _core.VersionState]) -> dict[str, Any]:
    return json_format.MessageToDict(_core.status_response(states), preserving_proto_field_name=True, including_default_value_fields=True)


def metadata_json(servable: _core.Servable) -> dict[str, Any]:
    """GetModelMetadataResponse as TF Serving's REST API writes it: the SignatureDefMap unpacked."""
    as_dict = lambda m: json_format.MessageToDict(  # noqa: E731
        m, preserving_proto_field_name=True, including_default_value_fields=True)
    return {"model_spec": {"name": servable.name, "signature_name": "", "version": str(servable.version)},
            "metadata": {"signature_def": as_dict(servable.signature_def_map())}}


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "colorization-model-server"
    timeout = 60  # seconds an idle keep-alive connection is kept
    server: RestServer

    def _body(self) -> bytes:
        """The request body, read only while it stays within --max_request_bytes; BadRequest otherwise."""
        limit = self.server.api.core.limits.max_request_bytes
        too_big = BadRequest(f"The request body is over the --max_request_bytes limit of {limit} bytes.")
        encoding = self.headers.get("Transfer-Encoding")
        if encoding is not None:
            if encoding.strip().lower() != "chunked":
                raise BadRequest(f"Transfer-Encoding '{encoding[:40]}' is not supported; send 'chunked' or a "
                                 f"Content-Length.")
            chunks, total = [], 0
            while True:
                line = self.rfile.readline(_MAX_LINE + 1)
                try:
                    size = int(line.split(b";")[0].strip(), 16)
                except ValueError:
                    size = -1
                if size < 0 or not line.endswith(b"\n"):
                    raise BadRequest("A chunk size is not a hexadecimal number on its own line.")
                if size == 0:
                    break
                total += size
                if total > limit:
                    raise too_big
                chunks.append(self.rfile.read(size))
                if len(chunks[-1]) < size or self.rfile.readline(3).strip():
                    raise BadRequest("A chunk is shorter than its size or not followed by CRLF.")
            while self.rfile.readline(_MAX_LINE + 1).strip():  # trailers
                pass
            return b"".join(chunks)
        lengths = set(self.headers.get_all("Content-Length") or [])
        if not lengths:
            return b""
        text = lengths.pop().strip()
        if lengths or not (text.isascii() and text.isdigit()):
            raise BadRequest("The Content-Length header is not one number of bytes.")
        if int(text) > limit:
            raise too_big
        body = self.rfile.read(int(text))
        if len(body) < int(text):
            raise BadRequest("The body is shorter than its Content-Length.")
        return body

    def _peer_gone(self) -> bool:
        """Whether the client has closed its connection (read end at EOF)."""
        try:
            readable, _, _ = select.select([self.connection], [], [], 0)
            return bool(readable) and self.connection.recv(1, socket.MSG_PEEK) == b""
        except (OSError, ValueError):
            return True

    def _serve(self) -> None:
        try:
            body = self._body()
        except BadRequest as e:
            self.close_connection = True  # the rest of this connection's bytes cannot be framed
            self._reply(*error_reply(400, str(e)))
            return
        if self.server.stopping.is_set():
            self.close_connection = True
            self._reply(*error_reply(503, "The server is shutting down; retry on another replica."))
            return
        self._reply(*self.server.api.handle(self.command, self.path, body, self._peer_gone))

    def _reply(self, status: int, kind: str, payload: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(payload)))
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(payload)

    do_GET = do_POST = do_PUT = do_DELETE = _serve

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class's name
        _log.debug("%s %s", self.address_string(), format % args)


class RestServer(http.server.ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], api: RestApi):
        super().__init__(address, _Handler)
        self.api = api
        self.stopping = threading.Event()
        self._thread = threading.Thread(target=self.serve_forever, name="rest", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A connection that broke (the client left mid-reply) or failed: one log line, no traceback."""
        error = sys.exc_info()[1]
        if isinstance(error, OSError):
            _log.debug("REST connection from %s closed: %s", client_address[0], error)
        else:
            _log.error("REST connection from %s failed: %r", client_address[0], error)

    def stop(self) -> None:
        self.stopping.set()
        self.shutdown()
        self.server_close()
