"""TF Serving's REST API v1 on a stdlib ThreadingHTTPServer, with its JSON tensor rules (json_tensor.cc).

    GET  /v1/models/{name}[/versions/{v}|/labels/{label}]            model status (GetModelStatusResponse)
    GET  /v1/models/{name}[/versions/{v}|/labels/{label}]/metadata   signature defs (GetModelMetadataResponse)
    POST /v1/models/{name}[/versions/{v}|/labels/{label}]:predict    {"instances": [...]} or {"inputs": ...}

Row ("instances") requests get {"predictions": [...]}, columnar ("inputs") ones {"outputs": ...}.
DT_STRING values may be {"b64": "..."}; string outputs whose name ends in "_bytes" come back as
{"b64": "..."}. Failures answer {"error": "..."} with the HTTP status of the gRPC code.
The JSON rules live in serving._jsonparse; bodies over --json_parse_process_bytes are parsed in a
worker process (serving._jsonpool) so that their parse does not hold this process's GIL.
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

from serving import _core, _jsonparse, _jsonpool, _metrics

_log = logging.getLogger("serving.rest")

HTTP_STATUS = {"OK": 200, "CANCELLED": 499, "UNKNOWN": 500, "INVALID_ARGUMENT": 400, "DEADLINE_EXCEEDED": 504,
               "NOT_FOUND": 404, "ALREADY_EXISTS": 409, "PERMISSION_DENIED": 403, "RESOURCE_EXHAUSTED": 429,
               "FAILED_PRECONDITION": 400, "ABORTED": 409, "OUT_OF_RANGE": 400, "UNIMPLEMENTED": 501,
               "INTERNAL": 500, "UNAVAILABLE": 503, "DATA_LOSS": 500, "UNAUTHENTICATED": 401}
_SPEC = r"/v1/models/([^/:]+)(?:(?:/versions/(\d+))|(?:/labels/([^/:]+)))?"
_PREDICT = re.compile(_SPEC + r":(classify|regress|predict)", re.IGNORECASE)
_STATUS = re.compile(_SPEC + r"(/metadata)?", re.IGNORECASE)
_BYTES_SUFFIX = "_bytes"
_MAX_LINE = 65536  # longest chunk-size line read
_B64_VALUE = re.compile(rb'"b64"\s*:\s*"')
_HEADER_B64_CHARS = 1 << 17  # base64 read per image for its header before the body is parsed (96 KiB of image)


class BadRequest(Exception):
    """A request the HTTP layer cannot read (framing or size); answered 400 with this sentence."""


def body_images(body: bytes) -> Iterator[bytes]:
    """The start of each {"b64": ...} value in a JSON body, decoded: enough bytes for its image header."""
    for match in _B64_VALUE.finditer(body):
        text = body[match.end():match.end() + _HEADER_B64_CHARS].split(b'"', 1)[0].replace(b"\\/", b"/")
        try:
            yield base64.b64decode(text[:len(text) // 4 * 4])
        except (binascii.Error, ValueError):
            continue


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
        raise _core.ServingError("INVALID_ARGUMENT", "The outputs have no common batch size; send the request with "
                                                     "'inputs' instead.")
    columns = {name: _to_json(a, name.endswith(_BYTES_SUFFIX)) for name, a in outputs.items()}
    size = sizes.pop()
    if len(columns) == 1:
        return {"predictions": next(iter(columns.values()))}
    return {"predictions": [{name: column[i] for name, column in columns.items()} for i in range(size)]}


class RestApi:
    """Routes one HTTP request to the core; returns (HTTP status, content type, body)."""

    def __init__(self, core: _core.ServingCore, metrics: _metrics.Metrics, timeout_ms: int,
                 prometheus_path: str | None, parse_process_bytes: int = 0, parse_processes: int = 1):
        """Bodies over `parse_process_bytes` (0: none) are parsed in up to `parse_processes` worker processes."""
        self.core, self.metrics = core, metrics
        self.timeout = timeout_ms / 1000 if timeout_ms > 0 else None
        self.prometheus_path = prometheus_path
        self.parse_process_bytes = parse_process_bytes
        self.parse_pool = _jsonpool.ParsePool(parse_processes) if parse_process_bytes > 0 else None

    def close(self) -> None:
        if self.parse_pool is not None:
            self.parse_pool.close()

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
            raise _core.ServingError("INVALID_ARGUMENT", f"Malformed request: {method} {path}.")
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
            max_depth = self.core.limits.max_json_depth
            if self.parse_pool is not None and len(body) > self.parse_process_bytes:
                def left() -> float | None:
                    return None if self.timeout is None else started + self.timeout - time.monotonic()

                signature, inputs, parsed["rows"] = self.parse_pool.parse(
                    body, servable.json_specs, max_depth, left, cancelled, _core.deadline_exceeded(self.timeout))
            else:
                signature, inputs, parsed["rows"] = _jsonparse.parse_predict_body(body, servable.json_specs,
                                                                                  max_depth)
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
        self.api.close()
