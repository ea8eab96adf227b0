"""Which Keras dtype policy and tf.distribute strategy a training run uses, and why."""

from __future__ import annotations

import contextlib
import json
import os
from typing import Iterator

import keras
import tensorflow as tf

from components.trainer.config import BF16_CPU_FLAGS, DISTRIBUTIONS, PRECISIONS, TrainError



def native_bf16_flags(cpuinfo_path: str = "/proc/cpuinfo") -> list[str]:
    """The BF16_CPU_FLAGS this CPU has (empty: oneDNN would emulate bfloat16)."""
    try:
        with open(cpuinfo_path) as f:
            text = f.read()
    except OSError:
        return []
    flags: set[str] = set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "flags":
            flags.update(value.split())
    return sorted(set(BF16_CPU_FLAGS) & flags)


def choose_precision(
    requested: str = "auto", *, cpuinfo_path: str = "/proc/cpuinfo", gpus: int | None = None
) -> tuple[str, str]:
    """The Keras dtype policy to train with, and why.

    auto: mixed_float16 when a GPU is visible; mixed_bfloat16 on a CPU with
    native bf16 (avx512_bf16 or amx_bf16 in `cpuinfo_path`); float32
    otherwise, where bf16 would be emulated and slower.
    """
    if requested not in PRECISIONS:
        raise TrainError(f"precision must be one of {list(PRECISIONS)}, got {requested!r}.")
    if requested != "auto":
        return requested, "requested"
    if gpus is None:
        gpus = len(tf.config.list_physical_devices("GPU"))
    if gpus:
        return "mixed_float16", f"{gpus} GPU(s) visible: float16 compute, float32 weights"
    native = native_bf16_flags(cpuinfo_path)
    if native:
        return "mixed_bfloat16", f"no GPU; the CPU has {' and '.join(native)} (native bfloat16)"
    return "float32", "no GPU and the CPU lacks avx512_bf16/amx_bf16, so bfloat16 would be emulated and slower"


def _cluster(tf_config: str | None) -> dict[str, list[str]]:
    """The "cluster" of a TF_CONFIG JSON; empty when unset."""
    if not tf_config:
        return {}
    try:
        parsed = json.loads(tf_config)
    except json.JSONDecodeError as e:
        raise TrainError(f"TF_CONFIG is not valid JSON ({e}).") from None
    return (parsed.get("cluster") if isinstance(parsed, dict) else None) or {}


def strategy_kind(requested: str = "auto", *, tf_config: str | None = None, gpus: int | None = None) -> str:
    """"multi_worker", "mirrored" or "none" for a --distribute value.

    auto: multi_worker when `tf_config` (TF_CONFIG JSON) names more than one
    worker, mirrored with more than one local GPU, else none.
    """
    if requested not in DISTRIBUTIONS:
        raise TrainError(f"distribute must be one of {list(DISTRIBUTIONS)}, got {requested!r}.")
    if requested != "auto":
        return requested
    cluster = _cluster(tf_config)
    if sum(len(cluster.get(kind, [])) for kind in ("chief", "worker")) > 1:
        return "multi_worker"
    gpus = len(tf.config.list_physical_devices("GPU")) if gpus is None else gpus
    return "mirrored" if gpus > 1 else "none"


def choose_strategy(requested: str = "auto", *, tf_config: str | None = None) -> tf.distribute.Strategy:
    """The tf.distribute strategy for `strategy_kind`; `tf_config` defaults to the environment's TF_CONFIG.

    MultiWorkerMirroredStrategy itself reads TF_CONFIG from the environment,
    and must be created before anything else runs on TensorFlow.
    """
    if tf_config is None:
        tf_config = os.environ.get("TF_CONFIG")
    kind = strategy_kind(requested, tf_config=tf_config)
    if kind == "multi_worker":
        return tf.distribute.MultiWorkerMirroredStrategy()
    if kind == "mirrored":
        return tf.distribute.MirroredStrategy()
    return tf.distribute.get_strategy()


def _worker(strategy: tf.distribute.Strategy) -> tuple[bool, int]:
    """(is_chief, task id) under the Keras multi-worker convention: the chief, or worker 0 when there is none."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy) or resolver is None:
        return True, 0
    task_type, task_id = resolver.task_type, resolver.task_id or 0
    if task_type is None:
        return True, 0
    has_chief = "chief" in resolver.cluster_spec().as_dict()
    return task_type == "chief" or (task_type == "worker" and task_id == 0 and not has_chief), task_id


def _strategy_name(strategy: tf.distribute.Strategy) -> str:
    if isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        return "MultiWorkerMirroredStrategy"  # the class is CollectiveAllReduceStrategy
    if isinstance(strategy, tf.distribute.MirroredStrategy):
        return "MirroredStrategy"
    return "default"


@contextlib.contextmanager
def _global_policy(name: str) -> Iterator[None]:
    previous = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy(name)
    try:
        yield
    finally:
        keras.mixed_precision.set_global_policy(previous)

