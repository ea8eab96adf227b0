"""Stage settings declared once: a component's config dataclass is its CLI, its pipeline config section and its step.

A component declares one dataclass. Each field is one of:
- a setting (`setting(...)`): a value the user chooses, with its default, help and choices; it becomes the
  component's `--flag`, a key of the pipeline's config section (`train.epochs`), and part of the stage's
  cache fingerprint;
- an artifact (`artifact("input" | "output", ...)`): a path the pipeline wires from upstream outputs or the
  stage's own directory; a required `--flag` on the component's CLI, never a pipeline config key;
- a linked field (`linked("train.image_size", ...)`): a setting of another section that the pipeline copies in
  (the tuner trains at the trainer's crop size); the component's CLI still takes it as a flag.

A nested dataclass field (the evaluator's thresholds) is a sub-section; its fields are flags of their own.
Nothing here imports TensorFlow, so the pipeline config loads fast.

    @dataclasses.dataclass
    class TrainConfig:
        examples: str = artifact("input", "example_gen output dir")
        epochs: int = setting(50, "maximum epochs")
    parser = settings.parser(TrainConfig, prog="python -m components.trainer", description="...")
    config = settings.from_args(TrainConfig, parser.parse_args(argv))
"""

from __future__ import annotations

import argparse
import dataclasses
import types
from typing import Any, Callable, Optional, Sequence, Union, get_args, get_origin, get_type_hints

NONE = "none"
"""How a user spells "no value" in a flag, a --set or YAML (an optional setting, a random backbone)."""

INPUT, OUTPUT = "input", "output"
_ROLE, _HELP, _CHOICES, _FLAG, _LINK, _METAVAR = "role", "help", "choices", "flag", "link", "metavar"


class SettingsError(Exception):
    """A value that does not fit its setting's type; one sentence naming the key."""


def setting(default: Any = dataclasses.MISSING, help: str = "", *, choices: Optional[Sequence[Any]] = None,
            default_factory: Any = dataclasses.MISSING, flag: Optional[str] = None,
            metavar: Optional[str] = None) -> Any:
    """A user-chosen value: a --flag, a pipeline config key, part of the stage's fingerprint."""
    metadata = {_HELP: help, _CHOICES: tuple(choices) if choices is not None else None, _FLAG: flag,
                _METAVAR: metavar}
    if default_factory is not dataclasses.MISSING:
        return dataclasses.field(default_factory=default_factory, metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


def artifact(role: str, help: str, *, required: bool = True, default: Optional[str] = "") -> Any:
    """A path the pipeline wires (an upstream output, or this stage's own dir); a --flag on the component's CLI."""
    if role not in (INPUT, OUTPUT):
        raise ValueError(f"artifact role must be {INPUT} or {OUTPUT}, got {role!r}")
    return dataclasses.field(default=default, metadata={_ROLE: role, _HELP: help, "required": required})


def linked(key: Optional[str], default: Any, help: str, *, choices: Optional[Sequence[Any]] = None,
           default_factory: Any = dataclasses.MISSING, flag: Optional[str] = None) -> Any:
    """A value the pipeline sets for the component: copied from another config key (e.g. "train.image_size"), or,
    with key None, wired by the stage adapter (the evaluator's baseline is the pipeline's last push). A --flag on
    the component's CLI, not a key of its pipeline config section."""
    metadata = {_LINK: key or "pipeline", _HELP: help, _CHOICES: tuple(choices) if choices else None, _FLAG: flag}
    if default_factory is not dataclasses.MISSING:
        return dataclasses.field(default_factory=default_factory, metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


# ---------------------------------------------------------------- reading the declarations


def _hints(cls: type) -> dict[str, Any]:
    return get_type_hints(cls)


def role(field: dataclasses.Field) -> str:
    """'input' or 'output' (an artifact), 'linked', or 'setting'."""
    if field.metadata.get(_ROLE):
        return field.metadata[_ROLE]
    return "linked" if field.metadata.get(_LINK) else "setting"


def link(field: dataclasses.Field) -> Optional[str]:
    return field.metadata.get(_LINK)


def setting_fields(cls: type) -> list[dataclasses.Field]:
    """The fields a pipeline config section may set (no artifacts, no linked fields)."""
    return [f for f in dataclasses.fields(cls) if role(f) == "setting"]


def settings_dict(obj: Any) -> dict[str, Any]:
    """The settings of `obj` (nested sections as dicts), JSON-able: what a config section holds and fingerprints."""
    out = {}
    for f in setting_fields(type(obj)):
        value = getattr(obj, f.name)
        out[f.name] = settings_dict(value) if _is_section(value) else value
    return out


def _is_section(value: Any) -> bool:
    return dataclasses.is_dataclass(value) and not isinstance(value, type)


def _optional(typ: Any) -> tuple[bool, Any]:
    """(is Optional, inner type) for `X | None` or Optional[X]."""
    if get_origin(typ) in (Union, types.UnionType):
        inner = [a for a in get_args(typ) if a is not type(None)]
        if len(inner) == 1 and len(get_args(typ)) == 2:
            return True, inner[0]
    return False, typ


# ---------------------------------------------------------------- coercion (YAML, --set, run.json, flags)

_TRUE = ("true", "yes", "on", "1")
_FALSE = ("false", "no", "off", "0")
_NONE = (NONE, "null", "~", "")


def type_name(typ: Any) -> str:
    optional, inner = _optional(typ)
    if optional:
        return f"{type_name(inner)} or {NONE}"
    if get_origin(typ) is dict or typ is dict:
        return "a mapping of name: value"
    return {bool: "true or false", int: "a whole number", float: "a number", str: "a string"}.get(typ, str(typ))


def coerce(value: Any, typ: Any, key: str) -> Any:
    """`value` (from YAML, a `--set` string or a flag) as type `typ`, or SettingsError naming `key`."""
    optional, inner = _optional(typ)
    if optional:
        if value is None or (isinstance(value, str) and value.strip().lower() in _NONE):
            return None
        return coerce(value, inner, key)
    if get_origin(typ) is dict or typ is dict:
        if not isinstance(value, dict):
            raise SettingsError(f"config key {key} must be {type_name(typ)}, got {value!r}.")
        args = get_args(typ)
        value_type = args[1] if len(args) == 2 else Any
        return {str(k): coerce(v, value_type, f"{key}.{k}") for k, v in value.items()}
    if typ is Any:
        return value
    if typ is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in _TRUE + _FALSE:
            return value.strip().lower() in _TRUE
    elif typ is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, str):
            try:
                return int(value.strip())
            except ValueError:
                pass
    elif typ is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value.strip())
            except ValueError:
                pass
    elif typ is str:
        if isinstance(value, str):
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)
    else:
        raise SettingsError(f"config key {key} has a type ({typ}) that cannot be set from text.")
    raise SettingsError(f"config key {key} must be {type_name(typ)}, got {value!r}.")


def check_choice(key: str, value: Any, field: dataclasses.Field) -> None:
    choices = field.metadata.get(_CHOICES)
    if choices and value is not None and value not in choices:
        raise SettingsError(f"{key} must be one of {', '.join(map(str, choices))}, got {value!r}.")


def check_choices(obj: Any, prefix: str = "--") -> None:
    """SettingsError naming `prefix + field` for any field (nested sections too) outside its declared choices."""
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if _is_section(value):
            check_choices(value, prefix if prefix == "--" else f"{prefix}{f.name}.")
        else:
            check_choice(f"{prefix}{f.name}", value, f)


def narrow(obj: Any, cls: type, **overrides: Any) -> Any:
    """An instance of `cls` from the same-named fields of `obj` (a pipeline section that extends the component's
    config with pipeline-only switches), then `overrides`."""
    values = {f.name: getattr(obj, f.name) for f in dataclasses.fields(cls) if hasattr(obj, f.name)}
    return cls(**{**values, **overrides})


# ---------------------------------------------------------------- the CLI, derived


def _flag_type(typ: Any, key: str) -> Callable[[str], Any]:
    def parse(text: str) -> Any:
        try:
            return coerce(text, typ, key)
        except SettingsError:
            raise argparse.ArgumentTypeError(f"expected {type_name(typ)}, got {text!r}") from None

    parse.__name__ = type_name(typ)
    return parse


def _pair(value_type: Any, key: str) -> Callable[[str], tuple[str, Any]]:
    def parse(text: str) -> tuple[str, Any]:
        name, sep, value = text.partition("=")
        if not sep or not name:
            raise argparse.ArgumentTypeError(f"expected NAME=VALUE, got {text!r}")
        return name, _flag_type(value_type, f"{key}.{name}")(value)

    return parse


def _help(field: dataclasses.Field, default: Any) -> str:
    text = field.metadata.get(_HELP, "")
    if field.metadata.get(_ROLE) or default is dataclasses.MISSING or isinstance(default, dict):
        return text.replace("%", "%%")
    shown = NONE if default is None else default
    return f"{text} (default {shown})".replace("%", "%%").strip()


def add_arguments(parser: argparse.ArgumentParser, cls: type, *, skip: Sequence[str] = ()) -> None:
    """One --flag per field of `cls` (a nested section's fields unprefixed), with types, choices and defaults."""
    hints = _hints(cls)
    for f in dataclasses.fields(cls):
        if f.name in skip:
            continue
        typ = hints[f.name]
        default = f.default if f.default is not dataclasses.MISSING else (
            f.default_factory() if f.default_factory is not dataclasses.MISSING else dataclasses.MISSING)
        if dataclasses.is_dataclass(typ):
            group = parser.add_argument_group(f.name, f.metadata.get(_HELP) or typ.__doc__)
            add_arguments(group, typ)
            continue
        flag = f.metadata.get(_FLAG) or f"--{f.name}"
        kwargs: dict[str, Any] = {"dest": f.name, "help": _help(f, default)}
        if f.metadata.get(_ROLE):
            kwargs["required"] = f.metadata.get("required", True)
            kwargs["default"] = None if not kwargs["required"] else dataclasses.MISSING
            if kwargs["default"] is dataclasses.MISSING:
                del kwargs["default"]
        elif typ is bool:
            kwargs["action"] = argparse.BooleanOptionalAction if default else "store_true"
            kwargs["default"] = bool(default)
        elif get_origin(typ) is dict or typ is dict:
            args = get_args(typ)
            kwargs.update(action="append", type=_pair(args[1] if len(args) == 2 else str, f.name), default=[],
                          metavar=f.metadata.get(_METAVAR) or "NAME=VALUE")
        else:
            kwargs["type"] = _flag_type(typ, f"--{f.name}")
            kwargs["default"] = default
            choices = f.metadata.get(_CHOICES)
            if choices:
                kwargs["choices"] = list(choices) + ([None] if _optional(typ)[0] else [])
                kwargs["metavar"] = "{" + ",".join(map(str, choices)) + "}"
            if f.metadata.get(_METAVAR):
                kwargs["metavar"] = f.metadata[_METAVAR]
        parser.add_argument(flag, **kwargs)


def parser(cls: type, *, prog: str, description: str, skip: Sequence[str] = ()) -> argparse.ArgumentParser:
    """The component's argparse parser, derived from its config dataclass."""
    p = argparse.ArgumentParser(prog=prog, description=description)
    add_arguments(p, cls, skip=skip)
    return p


def from_args(cls: type, args: argparse.Namespace, **overrides: Any) -> Any:
    """An instance of `cls` from parsed flags (dict fields merged over their defaults), then `overrides`."""
    hints = _hints(cls)
    kwargs: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        typ = hints[f.name]
        if dataclasses.is_dataclass(typ):
            kwargs[f.name] = from_args(typ, args)
        elif hasattr(args, f.name):
            value = getattr(args, f.name)
            if get_origin(typ) is dict or typ is dict:
                base = f.default_factory() if f.default_factory is not dataclasses.MISSING else {}
                value = {**base, **dict(value or [])}
            if value is None and f.metadata.get(_ROLE) and not f.metadata.get("required", True):
                value = f.default
            kwargs[f.name] = value
    kwargs.update(overrides)
    return cls(**kwargs)
