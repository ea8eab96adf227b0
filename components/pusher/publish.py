"""The pusher's publishing: atomic versioned publish under a model base path, and TF Serving's config files
(models.config with stable/canary labels, batching_parameters.txt, monitoring.config) regenerated on each push."""

from __future__ import annotations

import json
import os
import posixpath
import re

import tensorflow as tf

from schemas import BATCHING_FILE, MODELS_CONFIG_FILE, MONITORING_FILE
from schemas.serving import PROMETHEUS_PATH

DEFAULT_BATCHING = {"max_batch_size": 8, "batch_timeout_micros": 2000, "max_enqueued_batches": 100,
                    "num_batch_threads": 2}
"""TF Serving BatchingParameters fields (all integers) and their defaults here."""
TMP_PREFIX = ".tmp-"
_TMP_RE = re.compile(r"^\.tmp-(\d+)-(\d+)$")
MODEL_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
"""A folder name TF Serving accepts as a model name."""


def list_versions(model_dir: str) -> list[int]:
    if not tf.io.gfile.isdir(model_dir):
        return []
    return sorted(int(n.rstrip("/")) for n in tf.io.gfile.listdir(model_dir) if n.rstrip("/").isdigit())


def absolute(path: str) -> str:
    return path.rstrip("/") if "://" in path else os.path.abspath(path)


def write_text(path: str, text: str) -> None:
    """Write `text` to `path` via a temp file and a rename, so a polling server never reads half of it."""
    partial = posixpath.join(posixpath.dirname(path), f".{posixpath.basename(path)}.{os.getpid()}.partial")
    with tf.io.gfile.GFile(partial, "w") as f:
        f.write(text)
    tf.io.gfile.rename(partial, path, overwrite=True)


def models_config_text(serving_dir: str) -> str:
    """ModelServerConfig for every model under `serving_dir`: the two newest versions, stable and canary labels."""
    from google.protobuf import text_format
    from tensorflow_serving.config import model_server_config_pb2

    config = model_server_config_pb2.ModelServerConfig()
    names = sorted(n.rstrip("/") for n in tf.io.gfile.listdir(serving_dir)
                   if tf.io.gfile.isdir(posixpath.join(serving_dir, n.rstrip("/"))))
    for name in names:
        model_dir = posixpath.join(serving_dir, name)
        versions = list_versions(model_dir)
        if not versions or not MODEL_NAME_RE.match(name):
            continue
        entry = config.model_config_list.config.add(
            name=name, base_path=absolute(model_dir), model_platform="tensorflow"
        )
        entry.model_version_policy.latest.num_versions = 2
        entry.version_labels["stable"] = versions[-2] if len(versions) > 1 else versions[-1]
        entry.version_labels["canary"] = versions[-1]
    return text_format.MessageToString(config)


def batching_parameters_text(batching: dict) -> str:
    """TF Serving BatchingParameters text proto (pad_variable_length_inputs stays off: inputs are strings)."""
    return "".join(f"{key} {{ value: {int(batching[key])} }}\n" for key in DEFAULT_BATCHING if key in batching)


def monitoring_config_text() -> str:
    """TF Serving MonitoringConfig: Prometheus metrics on the REST port."""
    return f'prometheus_config {{\n  enable: true\n  path: "{PROMETHEUS_PATH}"\n}}\n'


def write_serving_configs(serving_dir: str, batching: dict) -> dict[str, str]:
    """(Re)write models.config, batching_parameters.txt and monitoring.config; returns their paths."""
    paths = {
        "models_config": posixpath.join(serving_dir, MODELS_CONFIG_FILE),
        "batching_parameters": posixpath.join(serving_dir, BATCHING_FILE),
        "monitoring_config": posixpath.join(serving_dir, MONITORING_FILE),
    }
    write_text(paths["models_config"], models_config_text(serving_dir))
    write_text(paths["batching_parameters"], batching_parameters_text(batching))
    write_text(paths["monitoring_config"], monitoring_config_text())
    return paths



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



def publish(staging: str, model_dir: str, version: int) -> tuple[int, str]:
    """Rename `staging` to the first free version dir from `version` on; (version, dir)."""
    for _ in range(100):
        version = max([version, *(v + 1 for v in list_versions(model_dir))])
        target = posixpath.join(model_dir, str(version))
        try:
            tf.io.gfile.rename(staging, target, overwrite=False)
            return version, target
        except tf.errors.AlreadyExistsError:
            version += 1
    raise RuntimeError(f"could not find a free version under {model_dir} after 100 tries")


def write_record(path: str, record: dict) -> None:
    tf.io.gfile.makedirs(posixpath.dirname(path) or ".")
    write_text(path, json.dumps(record, indent=2) + "\n")
