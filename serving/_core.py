"""The model manager behind both APIs: versioned SavedModels, version policy, labels, warmup, predict.

Generic over SavedModels: input and output names, dtypes and shapes come from each signature.
A poll thread lists every model base path each --file_system_poll_wait_seconds. A new
integer-named version folder is loaded fully and warmed up with its
assets.extra/tf_serving_warmup_requests before it is swapped in; then versions beyond the
model_version_policy are unloaded, except a version that a label names: it stays loaded until the
label moves, and a label moves to a version only once that version has loaded (TF Serving's rule for
re-assigned labels), so a request naming a label never meets an unloaded version. A version that fails
to load is logged and skipped while the versions already loaded keep serving; it is retried when any
file under its folder changes (a folder written file by file). Folder names that are not plain
64-bit version numbers are skipped with one log line.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import functools
import io
import itertools
import logging
import math
import os
import re
import threading
import time
from typing import Any, Callable, Iterable

import numpy as np
import tensorflow as tf
from google.protobuf import text_format
from PIL import Image
from tensorflow.core.framework import types_pb2
from tensorflow.core.protobuf import meta_graph_pb2, saved_model_pb2
from tensorflow_serving.apis import get_model_metadata_pb2, get_model_status_pb2, prediction_log_pb2
from tensorflow_serving.config import model_server_config_pb2

from schemas.serving import MAX_VERSION
from serving import _batching, _protos
from serving._jsonparse import DEFAULT_SIGNATURE, MAX_MESSAGE_CHARS, JsonSpec, ServingError, SignatureSpecs, \
    unknown_signature  # noqa: F401 - re-exported: the servers raise and catch _core.ServingError

_log = logging.getLogger("serving.server")

SERVE_TAG = "serve"
WARMUP_FILE = "assets.extra/tf_serving_warmup_requests"
MAX_WARMUP_RECORDS = 1000  # TF Serving's limit
CODE_NAMES = {0: "OK", 1: "CANCELLED", 2: "UNKNOWN", 3: "INVALID_ARGUMENT", 4: "DEADLINE_EXCEEDED", 5: "NOT_FOUND",
              6: "ALREADY_EXISTS", 7: "PERMISSION_DENIED", 8: "RESOURCE_EXHAUSTED", 9: "FAILED_PRECONDITION",
              10: "ABORTED", 11: "OUT_OF_RANGE", 12: "UNIMPLEMENTED", 13: "INTERNAL", 14: "UNAVAILABLE",
              15: "DATA_LOSS", 16: "UNAUTHENTICATED"}
CODE_NUMBERS = {name: number for number, name in CODE_NAMES.items()}
_VERSION_DIR = re.compile(r"^[0-9]+$")
_TF_NOISE = re.compile(r"^(Graph execution error:|Detected at node|<stack traces unavailable>|File \")")
_ASSERTION = "assertion failed: ["


def first_sentence(message: str) -> str:
    """The useful part of a TensorFlow error: an assertion's own message, else its first line, without
    stack traces and node or op annotations."""
    lines = message.splitlines()
    for line in lines:
        at = line.find(_ASSERTION)
        if at >= 0:
            kept = []
            for part in re.findall(r"\[(.*?)\](?= \[|\s*$)", line[at + len(_ASSERTION) - 1:]):
                if part.startswith("Condition "):  # what tf.debugging.assert_* appends after the message
                    break
                kept.append(part)
            text = " ".join("".join(kept).replace("\\'", "'").replace('\\"', '"').split())
            if text:
                return text[:500]
    useful = [line.strip() for line in lines if line.strip() and not line[:1].isspace() and not _TF_NOISE.match(line)]
    line = re.sub(r"\s*\[\[.*$|\s*\[Op:[^\]]*\]\s*$", "", useful[0] if useful else message.strip()).strip()
    return line[:500] or "The model failed without a message."


def dtype_name(dtype: int) -> str:
    return types_pb2.DataType.Name(dtype)


def _shape_text(shape: Iterable[int] | None) -> str:
    return "unknown" if shape is None else "[" + ", ".join(str(d) for d in shape) + "]"


@dataclasses.dataclass(frozen=True)
class TensorSpec:
    """One named input or output of a signature, as its SignatureDef declares it."""

    name: str
    dtype: int
    shape: tuple[int, ...] | None  # None: unknown rank; -1: unknown dimension

    @classmethod
    def from_info(cls, name: str, info: meta_graph_pb2.TensorInfo) -> TensorSpec:
        shape = None if info.tensor_shape.unknown_rank else tuple(d.size for d in info.tensor_shape.dim)
        return cls(name, info.dtype, shape)

    @property
    def numpy_dtype(self) -> np.dtype:
        return np.dtype(object) if self.dtype == types_pb2.DT_STRING else tf.as_dtype(self.dtype).as_numpy_dtype

    def json_spec(self) -> JsonSpec:
        """This input as the JSON parser (serving._jsonparse, maybe in a worker process) needs it."""
        return JsonSpec(self.name, self.dtype, dtype_name(self.dtype), np.dtype(self.numpy_dtype))

    def check(self, value: np.ndarray, signature: str) -> np.ndarray:
        """The value in this tensor's dtype; a wrong dtype or shape raises INVALID_ARGUMENT."""
        expected = self.numpy_dtype
        is_string = value.dtype == object or value.dtype.kind in "SU"
        if is_string != (self.dtype == types_pb2.DT_STRING) or (not is_string and value.dtype != expected):
            got = "DT_STRING" if is_string else dtype_name(tf.as_dtype(value.dtype).as_datatype_enum)
            raise ServingError("INVALID_ARGUMENT", f"Input '{self.name}' of signature '{signature}' must be "
                                                   f"{dtype_name(self.dtype)}, got {got}.")
        if self.shape is not None and (len(self.shape) != value.ndim or any(
                want not in (-1, got) for want, got in zip(self.shape, value.shape))):
            raise ServingError("INVALID_ARGUMENT", f"Input '{self.name}' of signature '{signature}' must have shape "
                                                   f"{_shape_text(self.shape)}, got {_shape_text(value.shape)}.")
        if is_string and value.dtype != object:
            value = value.astype(object)
        return value


@dataclasses.dataclass(frozen=True)
class Signature:
    name: str
    inputs: dict[str, TensorSpec]
    outputs: dict[str, TensorSpec]
    function: Callable[..., dict[str, tf.Tensor]]

    @property
    def batchable(self) -> bool:
        """Every input and output is declared with an unknown first dimension."""
        specs = list(self.inputs.values()) + list(self.outputs.values())
        return bool(self.inputs) and all(s.shape and s.shape[0] == -1 for s in specs)

    def check_inputs(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        unknown = sorted(set(inputs) - set(self.inputs))
        if unknown:
            raise ServingError("INVALID_ARGUMENT", f"'{unknown[0]}' is not an input of signature '{self.name}'; "
                                                   f"its inputs are: {', '.join(sorted(self.inputs))}.")
        missing = sorted(set(self.inputs) - set(inputs))
        if missing:
            raise ServingError("INVALID_ARGUMENT", f"Input '{missing[0]}' of signature '{self.name}' is missing; "
                                                   f"send every input: {', '.join(sorted(self.inputs))}.")
        return {name: spec.check(inputs[name], self.name) for name, spec in self.inputs.items()}


def _read_meta_graph(path: str) -> meta_graph_pb2.MetaGraphDef:
    saved_model = saved_model_pb2.SavedModel()
    binary = os.path.join(path, "saved_model.pb")
    if tf.io.gfile.exists(binary):
        with tf.io.gfile.GFile(binary, "rb") as f:
            saved_model.ParseFromString(f.read())
    else:
        with tf.io.gfile.GFile(os.path.join(path, "saved_model.pbtxt"), "r") as f:
            text_format.Parse(f.read(), saved_model)
    for meta_graph in saved_model.meta_graphs:
        if SERVE_TAG in meta_graph.meta_info_def.tags:
            return meta_graph
    raise ValueError(f"no MetaGraph tagged '{SERVE_TAG}'")


class Servable:
    """One loaded version of one model."""

    def __init__(self, name: str, version: int, path: str):
        self.name, self.version, self.path = name, version, path
        meta_graph = _read_meta_graph(path)
        self.signature_defs = dict(meta_graph.signature_def)
        self._loaded = tf.saved_model.load(path, tags=[SERVE_TAG])
        self.signatures = {
            key: Signature(
                key,
                {n: TensorSpec.from_info(n, i) for n, i in self.signature_defs[key].inputs.items()},
                {n: TensorSpec.from_info(n, i) for n, i in self.signature_defs[key].outputs.items()},
                function)
            for key, function in self._loaded.signatures.items() if key in self.signature_defs}

    def signature_def_map(self) -> get_model_metadata_pb2.SignatureDefMap:
        result = get_model_metadata_pb2.SignatureDefMap()
        for key, signature_def in self.signature_defs.items():
            result.signature_def[key].CopyFrom(signature_def)
        return result

    def signature(self, name: str) -> Signature:
        name = name or DEFAULT_SIGNATURE
        if name not in self.signatures:
            raise unknown_signature(name, self.name, self.version, self.signatures)
        return self.signatures[name]

    @functools.cached_property
    def json_specs(self) -> SignatureSpecs:
        """The signatures' inputs as plain data for the JSON parser."""
        return SignatureSpecs(self.name, self.version, {
            key: {name: spec.json_spec() for name, spec in signature.inputs.items()}
            for key, signature in self.signatures.items()})

    def run(self, signature: Signature, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Calls the signature; model errors become ServingError with the model's first sentence."""
        try:
            tensors = {name: tf.constant(value, dtype=tf.as_dtype(signature.inputs[name].dtype))
                       for name, value in inputs.items()}
            outputs = signature.function(**tensors)
        except tf.errors.OpError as e:
            raise ServingError(CODE_NAMES.get(e.error_code, "UNKNOWN"), first_sentence(e.message)) from None
        except (TypeError, ValueError) as e:
            raise ServingError("INVALID_ARGUMENT", first_sentence(str(e))) from None
        return {name: value.numpy() for name, value in outputs.items()}

    def warm_up(self) -> int:
        """Replays assets.extra/tf_serving_warmup_requests (PredictionLog records); returns how many ran."""
        path = os.path.join(self.path, WARMUP_FILE)
        if not tf.io.gfile.exists(path):
            return 0
        count = 0
        for record in tf.data.TFRecordDataset(path):
            count += 1
            if count > MAX_WARMUP_RECORDS:
                raise ValueError(f"the warmup file has more than {MAX_WARMUP_RECORDS} records")
            log = prediction_log_pb2.PredictionLog.FromString(record.numpy())
            if log.WhichOneof("log_type") != "predict_log":
                _log.warning("%s: skipping a %s warmup record; only predict_log is replayed",
                             path, log.WhichOneof("log_type"))
                continue
            request = log.predict_log.request
            signature = self.signature(request.model_spec.signature_name)
            inputs = {name: tensor_to_array(name, proto) for name, proto in request.inputs.items()}
            self.run(signature, signature.check_inputs(inputs))
        return count


def _decoded_bytes(proto) -> int:
    """The bytes a TensorProto takes once decoded: TensorFlow repeats the last value sent to fill its shape."""
    count = math.prod(max(d.size, 0) for d in proto.tensor_shape.dim)
    if proto.dtype == types_pb2.DT_STRING:
        return count * np.dtype(object).itemsize + sum(len(v) for v in proto.string_val)
    try:
        return count * tf.as_dtype(proto.dtype).size
    except TypeError:  # not a dtype: tf.make_ndarray names the problem
        return 0


def tensor_to_array(name: str, proto, max_bytes: int | None = None) -> np.ndarray:
    """The array a TensorProto holds; one that would decode to more than `max_bytes` is refused unread."""
    if max_bytes is not None and (size := _decoded_bytes(proto)) > max_bytes:
        raise ServingError("INVALID_ARGUMENT", f"Input '{name}' has shape "
                                               f"{_shape_text(d.size for d in proto.tensor_shape.dim)}, which decodes "
                                               f"to {size} bytes, over the --max_request_bytes limit of {max_bytes}.")
    try:
        return tf.make_ndarray(proto)
    except Exception as e:  # noqa: BLE001 - any malformed TensorProto is the caller's mistake
        raise ServingError("INVALID_ARGUMENT", f"Input '{name}' is not a valid TensorProto: "
                                               f"{first_sentence(str(e))}.") from None


@dataclasses.dataclass(frozen=True)
class ModelSource:
    """One served model: where its versions live, which to keep, and the names of some versions."""

    name: str
    base_path: str
    policy: str = "latest"  # latest | all | specific
    num_versions: int = 1
    specific_versions: frozenset[int] = frozenset()
    labels: tuple[tuple[str, int], ...] = ()

    def aspired(self, candidates: set[int]) -> set[int]:
        if self.policy == "all":
            return set(candidates)
        if self.policy == "specific":
            return candidates & self.specific_versions
        return set(sorted(candidates)[-self.num_versions:])


def absolute_path(path: str) -> str:
    return path if "://" in path else os.path.abspath(path)


def check_base_path(name: str, base_path: str) -> None:
    if not tf.io.gfile.isdir(base_path):
        raise _protos.ConfigFileError(f"The model base path {base_path} of model '{name}' does not exist; pass the "
                                      f"folder that holds the numbered version folders.")
    if tf.io.gfile.exists(os.path.join(base_path, "saved_model.pb")):
        raise _protos.ConfigFileError(f"{base_path} is a SavedModel version folder; pass its parent, the model base "
                                      f"path that holds the numbered version folders.")


def check_under_root(source: ModelSource, root: str) -> None:
    """A config reload may name only base paths inside `root` (symlinks resolved). Checked before anything else
    about the path, with the same message whether or not it exists, so a caller cannot probe the disk."""
    path = source.base_path
    if "://" in path or "://" in root:
        parts = path.rstrip("/").split("/")
        inside = ".." not in parts and (path.rstrip("/") + "/").startswith(root.rstrip("/") + "/")
    else:
        path, root = os.path.realpath(path), os.path.realpath(root)
        inside = os.path.commonpath([path, root]) == root
    if not inside:
        raise _protos.ConfigFileError(f"The base_path of model '{source.name}' is outside the folder this server "
                                      f"reloads models from; name a model folder under --reload_config_allowed_root.")


def sources_from_config(config: model_server_config_pb2.ModelServerConfig, where: str) -> list[ModelSource]:
    """ModelSources from a ModelServerConfig; anything TF Serving would reject raises ConfigFileError."""
    if config.WhichOneof("config") != "model_config_list":
        raise _protos.ConfigFileError(f"{where} must hold a model_config_list; custom_model_config is not supported.")
    sources = []
    for model in config.model_config_list.config:
        if not model.name or not model.base_path:
            raise _protos.ConfigFileError(f"Every model in {where} needs a name and a base_path.")
        if model.model_platform not in ("", "tensorflow"):
            raise _protos.ConfigFileError(f"Model '{model.name}' in {where} has model_platform "
                                          f"'{model.model_platform}'; only 'tensorflow' is served.")
        policy = model.model_version_policy
        kind = policy.WhichOneof("policy_choice") or "latest"
        num_versions = policy.latest.num_versions if kind == "latest" and policy.latest.num_versions else 1
        sources.append(ModelSource(
            model.name, absolute_path(model.base_path), kind, num_versions, frozenset(policy.specific.versions),
            tuple(sorted(model.version_labels.items()))))
    names = [s.name for s in sources]
    if len(set(names)) != len(names):
        raise _protos.ConfigFileError(f"{where} names a model twice.")
    if not sources:
        raise _protos.ConfigFileError(f"{where} names no model.")
    return sources


def read_model_config_file(path: str) -> list[ModelSource]:
    config = _protos.read_text_proto(path, model_server_config_pb2.ModelServerConfig, "model config file")
    return sources_from_config(config, f"The model config file {path}")


@dataclasses.dataclass(frozen=True)
class VersionState:
    state: str  # START | LOADING | AVAILABLE | UNLOADING | END, as ModelVersionStatus.State
    error_code: str = "OK"
    error_message: str = ""


def status_response(states: dict[int, VersionState]) -> get_model_status_pb2.GetModelStatusResponse:
    """ModelService's GetModelStatus answer (REST's status JSON is the same message) for version states."""
    response = get_model_status_pb2.GetModelStatusResponse()
    for version, state in states.items():
        entry = response.model_version_status.add(version=version)
        entry.state = get_model_status_pb2.ModelVersionStatus.State.Value(state.state)
        entry.status.error_code = CODE_NUMBERS[state.error_code]
        entry.status.error_message = state.error_message
    return response


class _Model:
    def __init__(self, source: ModelSource):
        self.source = source
        self.versions: dict[int, Servable] = {}  # replaced, never mutated: readers take a snapshot
        self.states: dict[int, VersionState] = {}
        self.failed: dict[int, tuple] = {}
        self.labels: dict[str, int] = {}  # the labels in effect: each names a loaded version once it has one
        self.warned_empty = False
        self.skipped_names: set[str] = set()
        self.waiting_labels: set[tuple[str, int]] = set()


def _fingerprint(path: str) -> tuple:
    """Every file under a version folder with its size and modification time: any change retries a failed load."""
    try:
        files = []
        for folder, _, names in tf.io.gfile.walk(path):
            for name in names:
                stat = tf.io.gfile.stat(os.path.join(folder, name))
                files.append((os.path.relpath(os.path.join(folder, name), path), stat.length, stat.mtime_nsec))
        return tuple(sorted(files))
    except tf.errors.OpError:
        return ()


class ModelManager:
    """Keeps each model's aspired versions loaded, polling the base paths on a thread."""

    def __init__(self, sources: list[ModelSource], poll_wait_seconds: float,
                 on_state: Callable[[str, int, VersionState], None] | None = None):
        self.poll_wait_seconds = poll_wait_seconds
        self._models = {s.name: _Model(s) for s in sources}
        self._update = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._on_state = on_state

    def start(self) -> None:
        """Loads what is there now (blocking), then polls on a thread."""
        self.poll()
        if self.poll_wait_seconds > 0:
            self._thread = threading.Thread(target=self._poll_loop, name="model-poller", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join(30)

    def _poll_loop(self) -> None:
        while not self._stop.wait(self.poll_wait_seconds):
            try:
                self.poll()
            except Exception:  # noqa: BLE001 - the poller must survive anything a file system does
                _log.exception("polling the model base paths failed")

    def set_sources(self, sources: list[ModelSource]) -> None:
        """Applies a new model list (config reload): new models load now, removed ones unload."""
        with self._update:
            models = dict(self._models)
            for name in set(models) - {s.name for s in sources}:
                _log.info("Unloading model '%s': no longer in the config", name)
                del models[name]
            for source in sources:
                old = models.get(source.name)
                if old is not None and old.source.base_path == source.base_path:
                    old.source = source
                    continue
                model = models[source.name] = _Model(source)
                if old is not None:  # a new folder: its versions replace the old folder's once loaded
                    _log.info("Model '%s' moves from %s to %s", source.name, old.source.base_path, source.base_path)
                    self._poll_model(model)
                    for version in sorted(set(old.versions) - set(model.versions)):
                        self._set_state(old, version, VersionState("END"))
            self._models = models
        self.poll()

    def poll(self) -> None:
        with self._update:
            for model in list(self._models.values()):
                self._poll_model(model)

    def _set_state(self, model: _Model, version: int, state: VersionState) -> None:
        model.states = {**model.states, version: state}
        if self._on_state:
            self._on_state(model.source.name, version, state)

    def _poll_model(self, model: _Model) -> None:
        source = model.source
        try:
            names = tf.io.gfile.listdir(source.base_path)
        except tf.errors.OpError as e:
            _log.error("Cannot list the base path %s of model '%s': %s", source.base_path, source.name,
                       first_sentence(e.message))
            return
        on_disk = {}
        for entry in names:
            entry = entry.rstrip("/")
            if not _VERSION_DIR.match(entry):
                continue
            path = os.path.join(source.base_path, entry)
            if int(entry) > MAX_VERSION:
                if entry not in model.skipped_names:
                    model.skipped_names.add(entry)
                    _log.warning("Skipping %s of model '%s': version folder names must be numbers up to %d",
                                 path, source.name, MAX_VERSION)
                continue
            if tf.io.gfile.isdir(path):
                on_disk[int(entry)] = path
        if not on_disk:
            self._move_labels(model)
            if not model.warned_empty:
                _log.warning("No version folders found under %s for model '%s' yet", source.base_path, source.name)
                model.warned_empty = True
            return
        model.warned_empty = False
        for version, fingerprint in list(model.failed.items()):
            if version not in on_disk or _fingerprint(on_disk[version]) != fingerprint:
                del model.failed[version]
        candidates = set(on_disk) - set(model.failed)
        aspired = source.aspired(candidates) | ({version for _, version in source.labels} & candidates)
        for version in sorted(aspired - set(model.versions), reverse=True):
            self._load(model, version, on_disk[version])
        self._move_labels(model)
        retired = set(model.versions) - aspired - set(model.labels.values())
        if retired and retired == set(model.versions):
            return  # never unload the last serving version while nothing aspired has loaded
        for version in sorted(retired):
            self._set_state(model, version, VersionState("UNLOADING"))
            model.versions = {v: s for v, s in model.versions.items() if v != version}
            self._set_state(model, version, VersionState("END"))
            _log.info("Unloaded model '%s' version %d", source.name, version)

    @staticmethod
    def _move_labels(model: _Model) -> None:
        """Points each configured label at its version once that version is loaded; until then a label in use
        keeps its loaded version (which therefore stays loaded) and a new label waits."""
        labels = {}
        for label, version in model.source.labels:
            current = model.labels.get(label)
            if version in model.versions or current is None or current not in model.versions:
                labels[label] = version
            else:
                labels[label] = current
                if (label, version) not in model.waiting_labels:
                    model.waiting_labels.add((label, version))
                    _log.info("Label '%s' of model '%s' stays on version %d until version %d has loaded",
                              label, model.source.name, current, version)
        model.labels = labels

    def _load(self, model: _Model, version: int, path: str) -> None:
        name = model.source.name
        self._set_state(model, version, VersionState("LOADING"))
        started = time.monotonic()
        fingerprint = _fingerprint(path)  # before loading: a file that changes during the load retries it
        try:
            servable = Servable(name, version, path)
            warmed = servable.warm_up()
        except Exception as e:  # noqa: BLE001 - a broken version folder is skipped, whatever broke it
            message = first_sentence(e.message if isinstance(e, tf.errors.OpError) else str(e))
            code = e.code if isinstance(e, ServingError) else "UNKNOWN"
            model.failed[version] = fingerprint
            self._set_state(model, version, VersionState("END", code, f"Loading {path} failed: {message}"))
            _log.error("Skipping model '%s' version %d: loading %s failed: %s", name, version, path, message)
            return
        model.versions = {**model.versions, version: servable}
        self._set_state(model, version, VersionState("AVAILABLE"))
        _log.info("Loaded model '%s' version %d from %s in %.1f s (%d warmup requests)", name, version, path,
                  time.monotonic() - started, warmed)

    def model_names(self) -> list[str]:
        return sorted(self._models)

    def _model(self, name: str) -> _Model:
        model = self._models.get(name)
        if model is None:
            raise ServingError("NOT_FOUND", f"Model '{name}' is not served here; served models: "
                                            f"{', '.join(self.model_names())}.")
        return model

    def _label_version(self, model: _Model, label: str) -> int:
        configured = dict(model.source.labels)
        if label not in configured:
            known = ", ".join(sorted(configured)) or "none"
            raise ServingError("INVALID_ARGUMENT", f"Model '{model.source.name}' has no version label '{label}'; "
                                                   f"its labels are: {known}.")
        return model.labels.get(label, configured[label])

    def resolve(self, name: str, version: int | None = None, label: str | None = None) -> Servable:
        """The servable a request names: a version, a label, or (neither) the highest loaded version."""
        model = self._model(name)
        versions = model.versions
        if label:
            for _ in range(2):  # labels move before the versions they left unload: a second read sees both moved
                version = self._label_version(model, label)
                versions = model.versions
                if version in versions:
                    break
        loaded = ", ".join(str(v) for v in sorted(versions)) or "none"
        if label:
            if version not in versions:
                raise ServingError("NOT_FOUND", f"Version {version} (label '{label}') of model '{name}' is not "
                                                f"loaded; loaded versions: {loaded}.")
        if version is not None:
            if version not in versions:
                raise ServingError("NOT_FOUND", f"Version {version} of model '{name}' is not loaded; loaded "
                                                f"versions: {loaded}.")
            return versions[version]
        if not versions:
            raise ServingError("UNAVAILABLE", f"Model '{name}' has no loaded version yet; retry once a version "
                                              f"folder under {model.source.base_path} has loaded.")
        return versions[max(versions)]

    def status(self, name: str, version: int | None = None, label: str | None = None) -> dict[int, VersionState]:
        """Version -> state, newest first: one version when asked by version or label, else every one known."""
        model = self._model(name)
        states = model.states
        if label:
            version = self._label_version(model, label)
        if version is not None:
            if version not in states:
                raise ServingError("NOT_FOUND", f"Could not find version {version} of model '{name}'.")
            return {version: states[version]}
        if not states:
            raise ServingError("NOT_FOUND", f"Could not find any versions of model '{name}'.")
        return dict(sorted(states.items(), reverse=True))


@dataclasses.dataclass(frozen=True)
class RequestLimits:
    """Bounds on one predict request's work and memory, and on how many run or wait at once: the server's
    flags of the same names (defaults in serving.server.ServerConfig)."""

    max_inflight_requests: int
    max_queued_requests: int
    max_request_bytes: int
    max_request_pixels: int
    max_json_depth: int
    max_inflight_pixels: int

    @property
    def large_pixels(self) -> int:
        """A request with more image pixels than this is large: its slot's share of the pixel budget."""
        return self.max_inflight_pixels // self.max_inflight_requests


MAX_WEIGHED_VALUES = 256  # string values whose image headers are read before admission; later ones after decoding


def image_pixels(data: bytes) -> int:
    """Width x height from an image's header (JPEG, PNG, GIF, BMP, ...), without decoding; 0 if not an image."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            width, height = image.size
    except Image.DecompressionBombError:  # PIL's own bound (twice MAX_IMAGE_PIXELS) is a lower bound here
        return 2 * (Image.MAX_IMAGE_PIXELS or 0) + 1
    except Exception:  # noqa: BLE001 - not an image (or a truncated header): the model names the problem
        return 0
    return width * height


def count_pixels(values: Iterable[Any], limit: int) -> int:
    """The pixels of the images among `values` (headers only); over `limit` in all raises INVALID_ARGUMENT."""
    total = 0
    for value in values:
        if isinstance(value, bytes):
            total += image_pixels(value)
            if total > limit:
                raise ServingError("INVALID_ARGUMENT", f"The request's images add up to at least {total} pixels, "
                                                       f"over the --max_request_pixels limit of {limit}; send "
                                                       f"fewer or smaller images per request.")
    return total


def announced_pixels(values: Iterable[Any], limit: int) -> int:
    """count_pixels of the first MAX_WEIGHED_VALUES values: a request's weight before it is decoded."""
    return count_pixels(itertools.islice(values, MAX_WEIGHED_VALUES), limit)


def check_pixels(inputs: dict[str, np.ndarray], limit: int) -> int:
    """The pixels of the images in a request's string inputs; over `limit` in all raises INVALID_ARGUMENT."""
    return count_pixels(itertools.chain.from_iterable(
        array.reshape(-1) for array in inputs.values() if array.dtype == object), limit)


@dataclasses.dataclass
class _Ticket:
    """One admitted request: the image pixels it holds and whether it is large (holds pixel budget, no slot)."""

    pixels: int
    large: bool = False


class _Admission:
    """Admission weighted by the image pixels a request brings, in two lanes.

    A small request (at most `large_pixels`) takes one of `max_inflight` slots, waiting in a queue of
    `max_queued` for one; more are refused at once. A large request takes no slot: its pixels must fit
    in `max_pixels` beside the large requests already in flight (or none be in flight), else it is
    refused at once. So large work never piles up and small requests never wait behind it.
    """

    def __init__(self, max_inflight: int, max_queued: int, max_pixels: int, large_pixels: int):
        self.max_inflight, self.max_queued = max_inflight, max_queued
        self.max_pixels, self.large_pixels = max_pixels, large_pixels
        self._cv = threading.Condition()
        self._running = self._waiting = self._large = self._large_pixels = 0

    def enter(self, pixels: int, deadline: float | None, cancelled: Callable[[], bool] | None,
              late: ServingError) -> _Ticket:
        """Admits a request of `pixels` (0 if not known yet); raises RESOURCE_EXHAUSTED when its lane is
        full, `late` when the deadline passes while it waits and CANCELLED when the client goes away."""
        ticket = _Ticket(pixels)
        with self._cv:
            if pixels > self.large_pixels:
                self._refuse_large(pixels, self._large_pixels, self._large)
                self._large += 1
                self._large_pixels += pixels
                ticket.large = True
                return ticket
            if self._running < self.max_inflight and not self._waiting:
                self._running += 1
                return ticket
            if self._waiting >= self.max_queued:
                raise ServingError("RESOURCE_EXHAUSTED", f"The server is at its limit of {self.max_inflight} "
                                                         f"requests in flight and {self.max_queued} queued "
                                                         f"(--max_inflight_requests, --max_queued_requests); "
                                                         f"retry later.")
            self._waiting += 1
            try:
                outcome = _batching.wait_done(
                    lambda seconds: self._cv.wait_for(lambda: self._running < self.max_inflight, seconds),
                    None if deadline is None else deadline - time.monotonic(), cancelled)
            finally:
                self._waiting -= 1
            if outcome != "done":
                raise late if outcome == "late" else cancelled_error()
            self._running += 1
            return ticket

    def _refuse_large(self, pixels: int, in_work: int, others: int) -> None:
        """Raises RESOURCE_EXHAUSTED unless `pixels` fit in the budget beside `in_work` of `others` requests."""
        if others and in_work + pixels > self.max_pixels:
            raise ServingError("RESOURCE_EXHAUSTED", f"The request's {pixels} image pixels do not fit in the "
                                                     f"--max_inflight_pixels budget of {self.max_pixels} beside the "
                                                     f"{in_work} already in work; retry later.")

    def reweigh(self, ticket: _Ticket, pixels: int) -> None:
        """Counts the pixels found once decoded: a request that turns out large moves from its slot to the
        large lane, or is refused with RESOURCE_EXHAUSTED (and leaves as it came)."""
        with self._cv:
            if pixels <= ticket.pixels or (not ticket.large and pixels <= self.large_pixels):
                ticket.pixels = max(ticket.pixels, pixels)
                return
            in_work = self._large_pixels - (ticket.pixels if ticket.large else 0)
            self._refuse_large(pixels, in_work, self._large - ticket.large)
            if not ticket.large:
                self._running -= 1
                self._large += 1
                self._cv.notify_all()
            self._large_pixels = in_work + pixels
            ticket.pixels, ticket.large = pixels, True

    def leave(self, ticket: _Ticket) -> None:
        with self._cv:
            if ticket.large:
                self._large -= 1
                self._large_pixels -= ticket.pixels
            else:
                self._running -= 1
            self._cv.notify_all()

    def counts(self) -> tuple[int, int]:
        """(requests in flight in either lane, requests queued for a slot)."""
        with self._cv:
            return self._running + self._large, self._waiting

    def wait_idle(self, timeout: float) -> bool:
        with self._cv:
            return self._cv.wait_for(lambda: not (self._running or self._waiting or self._large), timeout)


def deadline_exceeded(timeout: float | None) -> ServingError:
    """The answer to a request still at work when its deadline of `timeout` seconds passes."""
    return ServingError("DEADLINE_EXCEEDED", f"The request did not finish within its deadline of "
                                             f"{timeout or 0:.3g} s.")


def cancelled_error() -> ServingError:
    return ServingError("CANCELLED", "The client cancelled the request.")


Decoder = Callable[[], tuple[str, dict[str, np.ndarray]]]
"""Reads a request's signature name and inputs (JSON parsing, TensorProto decoding) inside its time budget."""


class ServingCore:
    """Predict with admission control, deadlines, cancellation and batching, shared by the gRPC and REST front ends.

    Admission is weighted by the image pixels a request brings (read from the headers before anything
    is decoded, and counted again once decoded): a small request takes one of --max_inflight_requests
    slots, waiting in a queue of --max_queued_requests (a full queue answers RESOURCE_EXHAUSTED at
    once); a large one (over --max_inflight_pixels / --max_inflight_requests pixels) takes no slot but
    must fit in the --max_inflight_pixels budget beside the large ones in flight, else it is refused
    at once. Its decoding, checks and model call run on a
    worker within its deadline; a batched signature's call runs in the batch scheduler, whose own
    threads and queue bound it, after the slot is freed. A request whose deadline passes or whose
    client leaves is answered at once; if its work has not started it never runs, and a model call
    already running is not interrupted: its result is dropped and its slot freed when the call returns.
    """

    def __init__(self, manager: ModelManager, batcher: _batching.BatchScheduler | None, limits: RequestLimits):
        self.manager = manager
        self.batcher = batcher
        self.limits = limits
        self._admission = _Admission(limits.max_inflight_requests, limits.max_queued_requests,
                                     limits.max_inflight_pixels, limits.large_pixels)
        # as many large requests can be in flight as small ones, at most (each is over a slot's share of the budget)
        self._executor = concurrent.futures.ThreadPoolExecutor(2 * limits.max_inflight_requests,
                                                               thread_name_prefix="predict")

    def predict(self, servable: Servable, decode: Decoder, output_filter: Iterable[str] = (),
                timeout: float | None = None, cancelled: Callable[[], bool] | None = None,
                pixels: int = 0) -> tuple[Signature, dict[str, np.ndarray]]:
        """Runs one request on `servable`: `decode()` gives its signature name and inputs. `cancelled()`
        tells whether the client has gone away; `timeout` is the seconds left of its deadline; `pixels`
        the image pixels its headers announce (0 if not read before decoding)."""
        late = deadline_exceeded(timeout)
        if timeout is not None and timeout <= 0:
            raise late
        deadline = None if timeout is None else time.monotonic() + timeout
        wanted = list(output_filter)
        ticket = self._admission.enter(pixels, deadline, cancelled, late)
        abandoned = threading.Event()
        try:
            future = self._executor.submit(self._work, servable, decode, wanted, deadline, late, abandoned, ticket)
        except RuntimeError:  # the executor has shut down
            self._admission.leave(ticket)
            raise ServingError("UNAVAILABLE", "The server is shutting down; retry on another replica.") from None
        future.add_done_callback(lambda _: self._admission.leave(ticket))
        left = lambda: None if deadline is None else deadline - time.monotonic()  # noqa: E731
        outcome = _batching.wait_done(lambda seconds: bool(concurrent.futures.wait([future], seconds).done),
                                      left(), cancelled)
        if outcome != "done":
            abandoned.set()
            future.cancel()
            raise late if outcome == "late" else cancelled_error()
        signature, arrays, batched = future.result()
        if batched:
            try:
                arrays = self.batcher.run((servable.name, servable.version, signature.name, id(servable)),
                                          lambda batch: servable.run(signature, batch), arrays, left(), cancelled)
            except TimeoutError:
                raise late from None
            except concurrent.futures.CancelledError:
                raise cancelled_error() from None
            except _batching.BatchingUnavailable as e:
                raise ServingError("UNAVAILABLE", str(e)) from None
        return signature, {name: arrays[name] for name in wanted} if wanted else arrays

    def _work(self, servable: Servable, decode: Decoder, wanted: list[str], deadline: float | None,
              late: ServingError, abandoned: threading.Event,
              ticket: _Ticket) -> tuple[Signature, dict[str, np.ndarray], bool]:
        """(signature, outputs, False), or (signature, checked inputs, True) for the batch scheduler."""
        def check_time() -> None:
            if abandoned.is_set() or (deadline is not None and time.monotonic() >= deadline):
                raise late  # nobody waits for it any more: never run the model

        check_time()
        signature_name, inputs = decode()
        signature = servable.signature(signature_name)
        inputs = signature.check_inputs(inputs)
        unknown = [name for name in wanted if name not in signature.outputs]
        if unknown:
            raise ServingError("INVALID_ARGUMENT", f"'{unknown[0]}' is not an output of signature "
                                                   f"'{signature.name}'; its outputs are: "
                                                   f"{', '.join(sorted(signature.outputs))}.")
        self._admission.reweigh(ticket, check_pixels(inputs, self.limits.max_request_pixels))
        check_time()
        if self.batcher is not None and signature.batchable:
            return signature, inputs, True
        return signature, servable.run(signature, inputs), False

    def load(self) -> tuple[int, int]:
        """(requests holding a slot, requests waiting for one)."""
        return self._admission.counts()

    def drain(self, timeout: float) -> bool:
        """Waits until no predict is in flight or queued; False if some still are after `timeout` seconds."""
        return self._admission.wait_idle(timeout)

    def close(self) -> None:
        if self.batcher is not None:
            self.batcher.stop()
        self._executor.shutdown(wait=False, cancel_futures=True)
