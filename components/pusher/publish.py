"""The pusher's publishing: atomic versioned publish under a model base path, and TF Serving's config files
(models.config with stable/canary labels, batching_parameters.txt, monitoring.config) regenerated on each push.

A push leaves the old state or the new, never a live version without its config: every byte (the configs, as
hidden partial files) is written before the version folder is renamed in, and only renames follow."""

from __future__ import annotations

import errno
import json
import os
import posixpath
import re

import tensorflow as tf

from schemas import BATCHING_FILE, MODELS_CONFIG_FILE, MONITORING_FILE
from schemas.serving import MAX_VERSION, PROMETHEUS_PATH

DEFAULT_BATCHING = {"max_batch_size": 8, "batch_timeout_micros": 2000, "max_enqueued_batches": 100,
                    "num_batch_threads": 2}
"""TF Serving BatchingParameters fields (all integers) and their defaults here."""
TMP_PREFIX = ".tmp-"
_VERSION_RE = re.compile(r"^[0-9]+$")
_TMP_RE = re.compile(r"^\.tmp-(\d+)-(\d+)$")
MODEL_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
"""A folder name TF Serving accepts as a model name."""
KEPT_VERSIONS = 3
"""models.config's latest{num_versions}: canary, stable, and the previous stable, which the stable label of the
config a server still holds names until it re-reads models.config."""


def list_versions(model_dir: str) -> list[int]:
    """The version folders' numbers, as servers read them: plain numbers up to int64's maximum."""
    if not tf.io.gfile.isdir(model_dir):
        return []
    names = (n.rstrip("/") for n in tf.io.gfile.listdir(model_dir))
    return sorted(int(n) for n in names if _VERSION_RE.match(n) and int(n) <= MAX_VERSION)


def absolute(path: str) -> str:
    return path.rstrip("/") if "://" in path else os.path.abspath(path)


def is_disk_full(error: BaseException) -> bool:
    """ENOSPC, as Python (OSError) or TensorFlow's file system (ResourceExhaustedError) reports it."""
    return isinstance(error, tf.errors.ResourceExhaustedError) or (
        isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT))


def _write_partial(path: str, text: str) -> str:
    """Write `text` beside `path` as a hidden partial file and return its name; on failure none is left."""
    partial = posixpath.join(posixpath.dirname(path), f".{posixpath.basename(path)}.{os.getpid()}.partial")
    try:
        with tf.io.gfile.GFile(partial, "w") as f:
            f.write(text)
    except BaseException:
        if tf.io.gfile.exists(partial):
            tf.io.gfile.remove(partial)
        raise
    return partial


def write_text(path: str, text: str) -> None:
    """Write `text` to `path` via a temp file and a rename, so a polling server never reads half of it."""
    tf.io.gfile.rename(_write_partial(path, text), path, overwrite=True)


def models_config_text(serving_dir: str, adding: tuple[str, int] | None = None) -> str:
    """ModelServerConfig for every model under `serving_dir` (and version adding[1] of model adding[0], about to be
    published): the KEPT_VERSIONS newest versions, stable (the previous version) and canary (the newest) labels."""
    from google.protobuf import text_format
    from tensorflow_serving.config import model_server_config_pb2

    config = model_server_config_pb2.ModelServerConfig()
    names = sorted(n.rstrip("/") for n in tf.io.gfile.listdir(serving_dir)
                   if tf.io.gfile.isdir(posixpath.join(serving_dir, n.rstrip("/"))))
    for name in names:
        model_dir = posixpath.join(serving_dir, name)
        versions = sorted({*list_versions(model_dir), *([adding[1]] if adding and adding[0] == name else [])})
        if not versions or not MODEL_NAME_RE.match(name):
            continue
        entry = config.model_config_list.config.add(
            name=name, base_path=absolute(model_dir), model_platform="tensorflow"
        )
        entry.model_version_policy.latest.num_versions = KEPT_VERSIONS
        entry.version_labels["stable"] = versions[-2] if len(versions) > 1 else versions[-1]
        entry.version_labels["canary"] = versions[-1]
    return text_format.MessageToString(config)


def batching_parameters_text(batching: dict) -> str:
    """TF Serving BatchingParameters text proto (pad_variable_length_inputs stays off: inputs are strings)."""
    return "".join(f"{key} {{ value: {int(batching[key])} }}\n" for key in DEFAULT_BATCHING if key in batching)


def monitoring_config_text() -> str:
    """TF Serving MonitoringConfig: Prometheus metrics on the REST port."""
    return f'prometheus_config {{\n  enable: true\n  path: "{PROMETHEUS_PATH}"\n}}\n'


def serving_config_paths(serving_dir: str) -> dict[str, str]:
    """Where models.config, batching_parameters.txt and monitoring.config go."""
    return {
        "models_config": posixpath.join(serving_dir, MODELS_CONFIG_FILE),
        "batching_parameters": posixpath.join(serving_dir, BATCHING_FILE),
        "monitoring_config": posixpath.join(serving_dir, MONITORING_FILE),
    }


def is_saved_model(path: str) -> bool:
    return tf.io.gfile.isdir(path) and tf.io.gfile.exists(posixpath.join(path, "saved_model.pb"))


def copy_tree(source: str, target: str) -> None:
    for folder, _, files in tf.io.gfile.walk(source):
        relative = os.path.relpath(folder, source) if "://" not in source else folder[len(source):].lstrip("/")
        destination = target if relative in ("", ".") else posixpath.join(target, relative)
        tf.io.gfile.makedirs(destination)
        for name in files:
            tf.io.gfile.copy(posixpath.join(folder, name), posixpath.join(destination, name))


def remove_stale_temp_dirs(model_dir: str) -> None:
    """Remove .tmp-<version>-<pid> dirs left by pushes on this machine whose process is gone (local dirs only)."""
    if "://" in model_dir or not os.path.isdir(model_dir):
        return
    for name in os.listdir(model_dir):
        match = _TMP_RE.match(name)
        if not match or int(match.group(2)) == os.getpid():
            continue
        try:
            os.kill(int(match.group(2)), 0)
        except ProcessLookupError:
            tf.io.gfile.rmtree(os.path.join(model_dir, name))
        except PermissionError:
            pass  # a live process of another user



def publish(staging: str, serving_dir: str, model_name: str, version: int,
            batching: dict) -> tuple[int, str, dict[str, str]]:
    """Rename `staging` in as the first free version from `version` on, with the serving configs that name it;
    (version, its dir, the config paths).

    The configs are written as partial files first, so a full disk fails here with nothing published and no
    partial file left; then the version is renamed in (a version number another pusher took meanwhile moves
    this one to the next) and the configs over the old ones, models.config last. If a config rename fails, the
    version is renamed back to `staging`.
    """
    model_dir = posixpath.join(serving_dir, model_name)
    paths = serving_config_paths(serving_dir)
    for _ in range(100):
        version = max([version, *(v + 1 for v in list_versions(model_dir))])
        target = posixpath.join(model_dir, str(version))
        texts = [(paths["batching_parameters"], batching_parameters_text(batching)),
                 (paths["monitoring_config"], monitoring_config_text()),
                 (paths["models_config"], models_config_text(serving_dir, (model_name, version)))]
        partials: list[tuple[str, str]] = []
        try:
            for path, text in texts:
                partials.append((_write_partial(path, text), path))
            try:
                tf.io.gfile.rename(staging, target, overwrite=False)
            except (tf.errors.AlreadyExistsError, tf.errors.FailedPreconditionError):
                if not tf.io.gfile.exists(target):
                    raise
                version += 1  # another pusher published this number first
                continue
            try:
                for partial, path in partials:
                    tf.io.gfile.rename(partial, path, overwrite=True)
            except BaseException:
                tf.io.gfile.rename(target, staging)
                raise
            return version, target, paths
        finally:
            for partial, _ in partials:
                if tf.io.gfile.exists(partial):
                    tf.io.gfile.remove(partial)
    raise RuntimeError(f"could not find a free version under {model_dir} after 100 tries")


def write_record(path: str, record: dict) -> None:
    tf.io.gfile.makedirs(posixpath.dirname(path) or ".")
    write_text(path, json.dumps(record, indent=2) + "\n")
