"""Lazy package exports (PEP 562): a package's __init__ names what its TensorFlow modules define, and imports a
module only when one of its names is first used, so `from components.trainer import TrainConfig` (the pipeline
config) loads no TensorFlow. pipeline/manifest.py's import closure counts every module of such a package."""

from __future__ import annotations

import importlib
from typing import Any, Callable


def lazy_exports(package: str, namespace: dict, names: dict[str, str]) -> tuple[Callable, Callable]:
    """(__getattr__, __dir__) for `package`'s __init__: name -> the submodule (relative) that defines it."""

    def __getattr__(name: str) -> Any:
        if name in names:
            value = getattr(importlib.import_module(f"{package}.{names[name]}"), name)
            namespace[name] = value
            return value
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    def __dir__() -> list[str]:
        return sorted(set(namespace) | set(names))

    return __getattr__, __dir__
