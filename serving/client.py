"""Colorize image files or whole folders through a model server (TF Serving or serving.server), gRPC or REST.

    python -m serving.client photos/ old_scan.jpg --output_dir out/colorized \\
        --server localhost:8500 --protocol grpc --model_name colorizer --concurrency 4
    python -m serving.client photos/ --output_dir out/colorized --server localhost:8501 --protocol rest \\
        --version_label stable

Folders are searched recursively for JPEG, PNG, GIF and BMP files. Each output is a PNG named after
its input, OUT/<path relative to the folder>.png (a file given directly: OUT/<name>.png); when two
inputs would collide (a.jpg and a.png) the output keeps the input's suffix (a.jpg.png). Tensor names
come from the server's GetModelMetadata (gRPC) or /metadata (REST): the signature's one string input
and its string output. Each request has a --deadline; UNAVAILABLE, DEADLINE_EXCEEDED,
RESOURCE_EXHAUSTED, lost connections and HTTP 503/504/429 are retried --retries times with
exponential backoff; a bad image (INVALID_ARGUMENT) is not. Per-file failures are reported with the
server's sentence and the other files go on; the exit status is 1 if any file failed, 2 for usage
mistakes.
"""

from __future__ import annotations

import argparse
import base64
import concurrent.futures
import dataclasses
import os
import sys
import threading
import time
from typing import Any, Callable, Iterable, Sequence

from schemas.serving import SERVED_IMAGE_EXTENSIONS as IMAGE_EXTENSIONS
from schemas.serving import SERVING_SIGNATURE
PROTOCOLS = ("grpc", "rest")
MAX_MESSAGE_BYTES = 64 * 1024 * 1024
BACKOFF_SECONDS = 0.5
MAX_BACKOFF_SECONDS = 8.0
_RETRY_GRPC_CODES = ("UNAVAILABLE", "DEADLINE_EXCEEDED", "RESOURCE_EXHAUSTED")
_RETRY_HTTP_STATUS = (429, 503, 504)


class ClientError(Exception):
    """A usage mistake (no images, a bad signature); the message is one sentence with the fix."""


class RequestFailed(Exception):
    """A request the server refused or that could not reach it; `retryable` says if trying again may help."""

    def __init__(self, message: str, retryable: bool):
        super().__init__(message)
        self.retryable = retryable


@dataclasses.dataclass
class Summary:
    """What colorize_files did: (input, output) pairs written and (input, reason) pairs failed."""

    written: list[tuple[str, str]] = dataclasses.field(default_factory=list)
    failed: list[tuple[str, str]] = dataclasses.field(default_factory=list)
    seconds: float = 0.0


def _with_retries(call: Callable[[], Any], retries: int, sleep: Callable[[float], None] = time.sleep) -> Any:
    for attempt in range(retries + 1):
        try:
            return call()
        except RequestFailed as e:
            if not e.retryable or attempt == retries:
                raise
            sleep(min(MAX_BACKOFF_SECONDS, BACKOFF_SECONDS * 2 ** attempt))
    raise AssertionError("unreachable")


def _pick_tensors(signature_name: str, inputs: dict[str, str], outputs: dict[str, str]) -> tuple[str, str]:
    """(input name, output name) from a signature's {name: dtype}: one string input, a string output."""
    strings_in = [name for name, dtype in inputs.items() if dtype == "DT_STRING"]
    if len(inputs) != 1 or not strings_in:
        raise ClientError(f"Signature '{signature_name}' takes {', '.join(sorted(inputs)) or 'no inputs'}; this "
                          f"client sends one encoded image to a single DT_STRING input, so pick another "
                          f"--signature_name.")
    strings_out = sorted(name for name, dtype in outputs.items() if dtype == "DT_STRING")
    if not strings_out:
        raise ClientError(f"Signature '{signature_name}' has no DT_STRING output to save as an image; pick "
                          f"another --signature_name.")
    preferred = [name for name in strings_out if name.endswith("_bytes")]
    return strings_in[0], (preferred or strings_out)[0]


class Colorizer:
    """One connection to a model server; colorize(bytes) -> PNG bytes, safe to call from many threads."""

    def __init__(self, server: str, protocol: str = "grpc", model_name: str = "colorizer",
                 signature_name: str = SERVING_SIGNATURE, *, version: int | None = None,
                 version_label: str | None = None, deadline: float = 30.0, retries: int = 3):
        if protocol not in PROTOCOLS:
            raise ClientError(f"--protocol must be one of {', '.join(PROTOCOLS)}, not '{protocol}'.")
        if version is not None and version_label:
            raise ClientError("Pass --version or --version_label, not both.")
        self.server, self.protocol, self.model_name = server, protocol, model_name
        self.signature_name, self.version, self.version_label = signature_name, version, version_label
        self.deadline, self.retries = deadline, retries
        self._local = threading.local()
        self._channel = None
        self._tensors: tuple[str, str] | None = None
        self._lock = threading.Lock()

    # ---- connection and metadata
    def _grpc_stubs(self):
        import grpc
        from tensorflow_serving.apis import prediction_service_pb2_grpc

        with self._lock:
            if self._channel is None:
                self._channel = grpc.insecure_channel(self.server, options=[
                    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
                    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
                    ("grpc.initial_reconnect_backoff_ms", 200), ("grpc.max_reconnect_backoff_ms", 2000)])
            return prediction_service_pb2_grpc.PredictionServiceStub(self._channel)

    def _session(self):
        import requests

        session = getattr(self._local, "session", None)
        if session is None:
            session = self._local.session = requests.Session()
        return session

    def _url(self, suffix: str) -> str:
        base = self.server if "://" in self.server else f"http://{self.server}"
        path = f"{base.rstrip('/')}/v1/models/{self.model_name}"
        if self.version is not None:
            path += f"/versions/{self.version}"
        elif self.version_label:
            path += f"/labels/{self.version_label}"
        return path + suffix

    def _fill_spec(self, spec: Any) -> None:
        spec.name = self.model_name
        spec.signature_name = self.signature_name
        if self.version is not None:
            spec.version.value = self.version
        elif self.version_label:
            spec.version_label = self.version_label

    def _grpc_call(self, method: Callable, request: Any) -> Any:
        import grpc

        try:
            return method(request, timeout=self.deadline)
        except grpc.RpcError as e:
            code = e.code().name if e.code() else "UNKNOWN"
            details = e.details() or code
            if code == "UNAVAILABLE" and ("connect" in details.lower() or "failed to" in details.lower()):
                details = f"cannot reach {self.server} over gRPC ({details})"
            raise RequestFailed(details, code in _RETRY_GRPC_CODES) from None

    def _rest_call(self, method: str, url: str, body: dict | None = None) -> Any:
        import requests

        try:
            response = self._session().request(method, url, json=body, timeout=self.deadline)
        except (requests.ConnectionError, requests.Timeout) as e:
            raise RequestFailed(f"cannot reach {self.server} over REST ({type(e).__name__})", True) from None
        try:
            payload = response.json()
        except ValueError:
            payload = {"error": f"HTTP {response.status_code} with a body that is not JSON"}
        if response.status_code != 200:
            message = payload.get("error") if isinstance(payload, dict) else None
            raise RequestFailed(message or f"HTTP {response.status_code}",
                                response.status_code in _RETRY_HTTP_STATUS)
        return payload

    def tensor_names(self) -> tuple[str, str]:
        """(input, output) of the signature, read once from the server's metadata (with retries)."""
        if self._tensors is None:
            self._tensors = _with_retries(self._read_tensor_names, self.retries)
        return self._tensors

    def _read_tensor_names(self) -> tuple[str, str]:
        if self.protocol == "rest":
            metadata = self._rest_call("GET", self._url("/metadata"))
            signatures = metadata.get("metadata", {}).get("signature_def", {}).get("signature_def", {})
            if self.signature_name not in signatures:
                raise ClientError(f"Model '{self.model_name}' has no signature '{self.signature_name}'; it has: "
                                  f"{', '.join(sorted(s for s in signatures if not s.startswith('__')))}.")
            found = signatures[self.signature_name]
            inputs = {name: info.get("dtype", "") for name, info in found.get("inputs", {}).items()}
            outputs = {name: info.get("dtype", "") for name, info in found.get("outputs", {}).items()}
        else:
            from tensorflow.core.framework import types_pb2
            from tensorflow_serving.apis import get_model_metadata_pb2

            stub = self._grpc_stubs()
            request = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
            self._fill_spec(request.model_spec)
            request.model_spec.ClearField("signature_name")
            response = self._grpc_call(stub.GetModelMetadata, request)
            signatures = get_model_metadata_pb2.SignatureDefMap()
            response.metadata["signature_def"].Unpack(signatures)
            if self.signature_name not in signatures.signature_def:
                names = sorted(s for s in signatures.signature_def if not s.startswith("__"))
                raise ClientError(f"Model '{self.model_name}' has no signature '{self.signature_name}'; it has: "
                                  f"{', '.join(names)}.")
            found = signatures.signature_def[self.signature_name]
            inputs = {name: types_pb2.DataType.Name(info.dtype) for name, info in found.inputs.items()}
            outputs = {name: types_pb2.DataType.Name(info.dtype) for name, info in found.outputs.items()}
        names = _pick_tensors(self.signature_name, inputs, outputs)
        if self.protocol == "rest" and not names[1].endswith("_bytes"):
            raise ClientError(f"Output '{names[1]}' is not named *_bytes, so REST returns it as text, not binary; "
                              f"use --protocol grpc.")
        return names

    # ---- predict
    def colorize(self, image: bytes) -> bytes:
        """The server's output image for one encoded image; raises RequestFailed with the server's sentence."""
        input_name, output_name = self.tensor_names()
        return _with_retries(lambda: self._predict(input_name, output_name, image), self.retries)

    def _predict(self, input_name: str, output_name: str, image: bytes) -> bytes:
        if self.protocol == "rest":
            body = {"signature_name": self.signature_name,
                    "inputs": {input_name: [{"b64": base64.b64encode(image).decode("ascii")}]}}
            outputs = self._rest_call("POST", self._url(":predict"), body)["outputs"]
            value = outputs[output_name] if isinstance(outputs, dict) and "b64" not in outputs else outputs
            return base64.b64decode(value[0]["b64"])
        from tensorflow.core.framework import tensor_pb2, tensor_shape_pb2, types_pb2
        from tensorflow_serving.apis import predict_pb2

        stub = self._grpc_stubs()
        request = predict_pb2.PredictRequest(output_filter=[output_name])
        self._fill_spec(request.model_spec)
        request.inputs[input_name].CopyFrom(tensor_pb2.TensorProto(
            dtype=types_pb2.DT_STRING, string_val=[image],
            tensor_shape=tensor_shape_pb2.TensorShapeProto(dim=[tensor_shape_pb2.TensorShapeProto.Dim(size=1)])))
        response = self._grpc_call(stub.Predict, request)
        return response.outputs[output_name].string_val[0]

    def close(self) -> None:
        if self._channel is not None:
            self._channel.close()

    def __enter__(self) -> Colorizer:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def find_images(paths: Iterable[str], output_dir: str) -> list[tuple[str, str]]:
    """(input, output) pairs: folders searched recursively, outputs named after inputs with a .png suffix."""
    pairs: list[tuple[str, str]] = []
    for path in paths:
        if os.path.isdir(path):
            for root, dirs, files in os.walk(path):
                dirs.sort()
                for name in sorted(files):
                    if name.lower().endswith(IMAGE_EXTENSIONS):
                        full = os.path.join(root, name)
                        pairs.append((full, os.path.relpath(full, path)))
        elif os.path.isfile(path):
            pairs.append((path, os.path.basename(path)))
        else:
            raise ClientError(f"{path} does not exist; pass image files or folders of images.")
    if not pairs:
        raise ClientError(f"No JPEG, PNG, GIF or BMP files found in {', '.join(paths)}.")
    stems: dict[str, int] = {}
    for _, relative in pairs:
        stem = os.path.splitext(relative)[0]
        stems[stem] = stems.get(stem, 0) + 1
    result, used = [], set()
    for source, relative in pairs:
        stem = os.path.splitext(relative)[0]
        target = (relative if stems[stem] > 1 else stem) + ".png"
        suffix = 1
        while target in used:
            suffix += 1
            target = f"{stem}.{suffix}.png"
        used.add(target)
        result.append((source, os.path.join(output_dir, target)))
    return result


class _Progress:
    """A one-line progress bar on stderr, redrawn at most ten times a second."""

    def __init__(self, total: int, enabled: bool):
        self.total, self.enabled = total, enabled
        self.done = self.failed = 0
        self._last = 0.0
        self._lock = threading.Lock()

    def update(self, failed: bool) -> None:
        with self._lock:
            self.done += 1
            self.failed += failed
            now = time.monotonic()
            if self.enabled and (now - self._last > 0.1 or self.done == self.total):
                self._last = now
                filled = int(30 * self.done / self.total)
                sys.stderr.write(f"\r[{'#' * filled}{'.' * (30 - filled)}] {self.done}/{self.total}"
                                 f"{f' ({self.failed} failed)' if self.failed else ''}")
                if self.done == self.total:
                    sys.stderr.write("\n")
                sys.stderr.flush()


def colorize_files(paths: Sequence[str], output_dir: str, *, server: str, protocol: str = "grpc",
                   model_name: str = "colorizer", signature_name: str = SERVING_SIGNATURE,
                   version: int | None = None, version_label: str | None = None, deadline: float = 30.0,
                   retries: int = 3, concurrency: int = 4, progress: bool = False) -> Summary:
    """Colorizes every image under `paths` into `output_dir`; failures are collected, not raised.

    Raises ClientError for usage mistakes and RequestFailed when the server's metadata cannot be read.
    """
    if concurrency < 1:
        raise ClientError("--concurrency must be at least 1.")
    started = time.monotonic()
    pairs = find_images(paths, output_dir)
    summary = Summary()
    bar = _Progress(len(pairs), progress)
    with Colorizer(server, protocol, model_name, signature_name, version=version, version_label=version_label,
                   deadline=deadline, retries=retries) as colorizer:
        colorizer.tensor_names()

        def one(source: str, target: str) -> str | None:
            try:
                with open(source, "rb") as f:
                    image = f.read()
                png = colorizer.colorize(image)
            except OSError as e:
                return f"cannot read it ({e.strerror})"
            except RequestFailed as e:
                return str(e)
            os.makedirs(os.path.dirname(target) or ".", exist_ok=True)
            partial = f"{target}.partial"
            with open(partial, "wb") as f:
                f.write(png)
            os.replace(partial, target)  # an interrupted run leaves no truncated PNG behind
            return None

        with concurrent.futures.ThreadPoolExecutor(concurrency) as pool:
            futures = {pool.submit(one, source, target): (source, target) for source, target in pairs}
            for future in concurrent.futures.as_completed(futures):
                source, target = futures[future]
                error = future.result()
                if error is None:
                    summary.written.append((source, target))
                else:
                    summary.failed.append((source, error))
                bar.update(error is not None)
    summary.written.sort()
    summary.failed.sort()
    summary.seconds = time.monotonic() - started
    return summary


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m serving.client",
                                     description="Colorize image files or folders through a TF Serving model server.",
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    add = parser.add_argument
    add("paths", nargs="+", help="image files and folders (searched recursively)")
    add("--output_dir", required=True, help="where the PNGs go, named after the inputs")
    add("--server", default="localhost:8500", help="host:port of the gRPC (8500) or REST (8501) API")
    add("--protocol", choices=PROTOCOLS, default="grpc")
    add("--model_name", default="colorizer")
    add("--signature_name", default=SERVING_SIGNATURE)
    add("--version", type=int, help="ask for this model version")
    add("--version_label", help="ask for the version with this label (e.g. stable, canary)")
    add("--deadline", type=float, default=30.0, help="seconds per request")
    add("--retries", type=int, default=3, help="retries, with exponential backoff, when the server is unavailable")
    add("--concurrency", type=int, default=4, help="requests in flight at once")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        summary = colorize_files(args.paths, args.output_dir, server=args.server, protocol=args.protocol,
                                 model_name=args.model_name, signature_name=args.signature_name,
                                 version=args.version, version_label=args.version_label, deadline=args.deadline,
                                 retries=args.retries, concurrency=args.concurrency, progress=sys.stderr.isatty())
    except ClientError as e:
        print(e, file=sys.stderr)
        return 2
    except RequestFailed as e:
        print(f"Cannot read model '{args.model_name}' metadata from {args.server}: {e}", file=sys.stderr)
        return 1
    for source, reason in summary.failed:
        print(f"FAILED {source}: {reason}", file=sys.stderr)
    count = len(summary.written)
    print(f"Wrote {count} image{'' if count == 1 else 's'} to {args.output_dir} in {summary.seconds:.1f} s"
          f"{f'; {len(summary.failed)} failed' if summary.failed else ''}.")
    return 1 if summary.failed else 0


if __name__ == "__main__":
    sys.exit(main())
