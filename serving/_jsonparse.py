"""A REST predict body as numpy arrays, with TF Serving's JSON tensor rules (json_tensor.cc); numpy and json only.

The server parses small bodies with it in the request's thread, and large ones in a worker process
(serving._jsonpool) that must not import TensorFlow, so the signatures arrive as plain, picklable
SignatureSpecs and errors as ServingError (gRPC code name and one sentence), the same either way.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import json
import os
import pickle
import re
import signal
import struct
import sys
from typing import Any, BinaryIO

import numpy as np

DEFAULT_SIGNATURE = "serving_default"
MAX_MESSAGE_CHARS = 1000  # client-chosen names quoted in an error message are cut to fit
DT_STRING, DT_BOOL = 7, 10  # tensorflow.core.framework.types_pb2's enum values
_INT_KINDS, _NUMBER_KINDS = "iu", "iuf"
_JSON_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"')
_ALL_BUT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")
_DEPTH_CHUNK = 1 << 20


class ServingError(Exception):
    """A request that cannot be served; `code` is a gRPC status name, the message one sentence."""

    def __init__(self, code: str, message: str):
        if len(message) > MAX_MESSAGE_CHARS:
            message = message[:MAX_MESSAGE_CHARS - 4] + "...."
        super().__init__(code, message)
        self.code, self.message = code, message

    def __str__(self) -> str:
        return self.message


def _error(message: str) -> ServingError:
    return ServingError("INVALID_ARGUMENT", message)


@dataclasses.dataclass(frozen=True)
class JsonSpec:
    """What the JSON rules need of one signature input: its name, dtype enum and name, numpy dtype."""

    name: str
    dtype: int
    dtype_name: str
    numpy_dtype: np.dtype


@dataclasses.dataclass(frozen=True)
class SignatureSpecs:
    """One model version's signatures as JsonSpecs, by signature then input name."""

    model: str
    version: int
    signatures: dict[str, dict[str, JsonSpec]]

    def inputs(self, name: str) -> tuple[str, dict[str, JsonSpec]]:
        """(signature name, its inputs); an unknown name raises INVALID_ARGUMENT."""
        name = name or DEFAULT_SIGNATURE
        if name not in self.signatures:
            raise unknown_signature(name, self.model, self.version, self.signatures)
        return name, self.signatures[name]


def unknown_signature(name: str, model: str, version: int, known: Any) -> ServingError:
    return ServingError("INVALID_ARGUMENT", f"Signature '{name}' is not in model '{model}' version {version}; its "
                                           f"signatures are: {', '.join(sorted(known))}.")


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


def _leaf(value: Any, spec: JsonSpec) -> Any:
    if spec.dtype == DT_STRING:
        if _is_b64(value):
            try:
                return base64.b64decode(value["b64"], validate=True)
            except (binascii.Error, ValueError):
                raise _error(f"Input '{spec.name}' has a 'b64' value that is not valid base64.") from None
        if isinstance(value, str):
            return value.encode("utf-8")
    elif spec.dtype == DT_BOOL:
        if isinstance(value, bool):
            return value
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        if isinstance(value, int) or np.dtype(spec.numpy_dtype).kind == "f":
            return value
    raise _error(f"Input '{spec.name}' has the JSON value {json.dumps(value)[:80]}, which is not of type "
                 f"{spec.dtype_name}.")


def _flatten(value: Any, shape: list[int], level: int, spec: JsonSpec, out: list) -> None:
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


def json_to_array(value: Any, spec: JsonSpec) -> np.ndarray:
    """A JSON value (scalar or nested lists) as an array of the spec's dtype, with TF Serving's checks."""
    if spec.dtype not in (DT_STRING, DT_BOOL) and not isinstance(value, (bool, dict, str)):
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
    dtype = object if spec.dtype == DT_STRING else spec.numpy_dtype
    array = np.empty(len(flat), dtype=dtype)
    try:
        array[:] = flat
    except (OverflowError, ValueError):
        raise _error(f"Input '{spec.name}' has values out of the range of {spec.dtype_name}.") from None
    return array.reshape(shape)


def _instances(value: Any, signature: str, inputs: dict[str, JsonSpec]) -> dict[str, np.ndarray]:
    if not isinstance(value, list) or not value:
        raise _error("'instances' must be a non-empty list.")
    names = sorted(inputs)
    as_objects = isinstance(value[0], dict) and not _is_b64(value[0])
    if not as_objects and len(names) > 1:
        raise _error(f"'instances' is a plain list, but signature '{signature}' takes several inputs "
                     f"({', '.join(names)}): send a list of objects with one key per input.")
    rows: dict[str, list[np.ndarray]] = {name: [] for name in names}
    for i, item in enumerate(value):
        if as_objects:
            if not isinstance(item, dict) or _is_b64(item):
                raise _error(f"Item {i} of 'instances' is not an object like the first one.")
            if set(item) != set(names):
                raise _error(f"Item {i} of 'instances' has keys {', '.join(sorted(item)) or 'none'}; signature "
                             f"'{signature}' takes: {', '.join(names)}.")
            values = item
        else:
            if isinstance(item, dict) and not _is_b64(item):
                raise _error(f"Item {i} of 'instances' is an object, unlike the first one.")
            values = {names[0]: item}
        for name in names:
            array = json_to_array(values[name], inputs[name])
            if rows[name] and array.shape != rows[name][0].shape:
                raise _error(f"Input '{name}' has shape {list(array.shape)} in item {i} of 'instances' but "
                             f"{list(rows[name][0].shape)} in item 0.")
            rows[name].append(array)
    return {name: np.stack(arrays) for name, arrays in rows.items()}


def _columns(value: Any, signature: str, inputs: dict[str, JsonSpec]) -> dict[str, np.ndarray]:
    names = sorted(inputs)
    if not isinstance(value, dict) or _is_b64(value):
        if len(names) > 1:
            raise _error(f"'inputs' is a plain value, but signature '{signature}' takes several inputs "
                         f"({', '.join(names)}): send an object with one key per input.")
        return {names[0]: json_to_array(value, inputs[names[0]])}
    for key in value:
        if key not in inputs:
            raise _error(f"'{key}' is not an input of signature '{signature}'; its inputs are: "
                         f"{', '.join(names)}.")
    for name in names:
        if name not in value:
            raise _error(f"Missing named input '{name}' in the 'inputs' object.")
    return {name: json_to_array(value[name], inputs[name]) for name in names}


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


def parse_predict_body(body: bytes, specs: SignatureSpecs,
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
    name = doc.get("signature_name", DEFAULT_SIGNATURE)
    if not isinstance(name, str):
        raise _error("'signature_name' must be a string.")
    name, inputs = specs.inputs(name)
    if "instances" in doc and "inputs" in doc:
        raise _error("Send either 'instances' or 'inputs', not both.")
    if "instances" in doc:
        return name, _instances(doc["instances"], name, inputs), True
    if "inputs" in doc:
        return name, _columns(doc["inputs"], name, inputs), False
    raise _error("Missing 'inputs' or 'instances' key.")


# ---------------------------------------------------------------- the worker process (serving._jsonpool starts it)

HEADER = struct.Struct("!QQ")  # a request's sizes: pickled (specs, max_depth), then the body
SIZE = struct.Struct("!Q")  # a reply's size: pickled (reply, resident bytes)


def _read_exactly(stream: BinaryIO, size: int) -> bytes | None:
    data = stream.read(size)
    return data if data is not None and len(data) == size else None


def resident_bytes() -> int:
    """This process's resident memory now (peak where /proc is missing)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGESIZE")
    except (OSError, ValueError, IndexError):
        import resource
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def parse_reply(body: bytes, specs: SignatureSpecs, max_depth: int) -> tuple:
    """("ok", signature, inputs, rows) or ("error", code, sentence): parse_predict_body as picklable data."""
    try:
        return ("ok", *parse_predict_body(body, specs, max_depth))
    except ServingError as e:
        return "error", e.code, e.message
    except MemoryError:
        return "error", "RESOURCE_EXHAUSTED", "The JSON body needs more memory to parse than the server has; send " \
                                              "fewer values per request."
    except Exception as e:  # noqa: BLE001 - the same answer as a bug in the request's thread
        return "error", "INTERNAL", f"Internal error: {e}"


def worker_main() -> None:
    """Reads requests from stdin and writes (reply, resident bytes) to stdout until stdin closes."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the server decides when its workers stop
    requests, replies = sys.stdin.buffer, sys.stdout.buffer
    sys.stdout = sys.stderr  # nothing else may write into the reply pipe
    while (header := _read_exactly(requests, HEADER.size)) is not None:
        task_size, body_size = HEADER.unpack(header)
        task, body = _read_exactly(requests, task_size), _read_exactly(requests, body_size)
        if task is None or body is None:
            return
        reply = parse_reply(body, *pickle.loads(task))
        del body, task
        payload = pickle.dumps((reply, resident_bytes()), protocol=pickle.HIGHEST_PROTOCOL)
        del reply
        try:
            replies.write(SIZE.pack(len(payload)))
            replies.write(payload)
            replies.flush()
        except BrokenPipeError:  # the server has gone
            return


if __name__ == "__main__":
    from serving import _jsonparse  # the module the pickled specs name: its ServingError is the one raised

    _jsonparse.worker_main()
