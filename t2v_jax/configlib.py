"""The one boundary where experiment ConfigDicts become typed, frozen, validated dataclasses.

Experiment configs (`configs/*.py`) are `ml_collections.ConfigDict`s so absl's `config_flags`
gives command-line overrides for free. Library code never sees them: each module declares a
frozen dataclass for what it needs, and `from_config(SomeConfig, cfg.section, "section")` builds
it, rejecting unknown keys and wrongly typed values with an error that names the field.

Supported field annotations: bool, int, float, str, `X | None`, `Literal[...]`, `tuple[X, ...]`,
`tuple[X, Y]`, `dict[str, X]` and nested dataclasses.
"""

from __future__ import annotations

import dataclasses
import functools
import types
import typing
from collections.abc import Mapping
from typing import Any, TypeVar

import ml_collections

T = TypeVar("T")


class ConfigError(ValueError):
    """A config value is unknown, missing or of the wrong type; the message names the field."""


def check_choice(argument: str, value: Any, choices: tuple[str, ...]) -> str:
    """`value` if it is one of `choices`, else a ValueError naming `argument` and the choices."""
    if value not in choices:
        raise ValueError(
            f"{argument}: expected one of {', '.join(map(repr, choices))}, got {value!r}"
        )
    return value


def to_dict(cfg: Any) -> Any:
    """Plain-Python (JSON-friendly) view of a ConfigDict, dataclass, or nested mapping."""
    if isinstance(cfg, ml_collections.ConfigDict | ml_collections.FrozenConfigDict):
        return {k: to_dict(v) for k, v in cfg.items()}
    if dataclasses.is_dataclass(cfg) and not isinstance(cfg, type):
        return {f.name: to_dict(getattr(cfg, f.name)) for f in dataclasses.fields(cfg)}
    if isinstance(cfg, Mapping):
        return {k: to_dict(v) for k, v in cfg.items()}
    if isinstance(cfg, list | tuple):
        return [to_dict(v) for v in cfg]
    return cfg


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def from_config(cls: type[T], cfg: Any, where: str = "config") -> T:
    """Builds the frozen dataclass `cls` from a ConfigDict / mapping, validating every field.

    Args:
      cls: a dataclass type.
      cfg: a ConfigDict, mapping, or already an instance of `cls` (returned as is).
      where: the dotted path of `cfg` in the experiment config, used in error messages.

    Raises:
      ConfigError: on unknown keys (listing the allowed ones), missing required keys, or values
        whose type does not match the annotation.
    """
    if isinstance(cfg, cls):
        return cfg
    if not dataclasses.is_dataclass(cls):
        raise TypeError(f"{cls!r} is not a dataclass")
    values = to_dict(cfg) if cfg is not None else {}
    if not isinstance(values, Mapping):
        raise ConfigError(f"{where}: expected a mapping of fields, got {type(cfg).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise ConfigError(
            f"{where}: unknown field(s) {', '.join(unknown)}; "
            f"{cls.__name__} accepts: {', '.join(sorted(fields))}"
        )
    hints = _hints(cls)
    kwargs = {}
    for name, field in fields.items():
        if name not in values:
            if (
                field.default is dataclasses.MISSING
                and field.default_factory is dataclasses.MISSING
            ):
                raise ConfigError(f"{where}.{name}: required field is missing")
            continue
        kwargs[name] = _convert(hints[name], values[name], f"{where}.{name}")
    return cls(**kwargs)


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _convert(tp: Any, value: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _convert(arg, value, where)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(f"{where}: {value!r} matches none of {_type_name(tp)}")
    if origin is typing.Literal:
        if value not in args:
            raise ConfigError(f"{where}: {value!r} is not one of {', '.join(map(repr, args))}")
        return value
    if origin is tuple:
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{where}: expected a sequence for {_type_name(tp)}, got {value!r}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_convert(args[0], v, f"{where}[{i}]") for i, v in enumerate(value))
        if len(args) != len(value):
            raise ConfigError(f"{where}: expected {len(args)} items, got {len(value)}")
        return tuple(
            _convert(a, v, f"{where}[{i}]")
            for i, (a, v) in enumerate(zip(args, value, strict=True))
        )
    if origin is dict:
        if not isinstance(value, Mapping):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        return {k: _convert(args[1], v, f"{where}.{k}") for k, v in value.items()}
    if dataclasses.is_dataclass(tp):
        return from_config(tp, value, where)
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected bool, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected int, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{where}: expected float, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected str, got {value!r}")
        return value
    if isinstance(tp, type):
        if not isinstance(value, tp):
            raise ConfigError(f"{where}: expected {tp.__name__}, got {value!r}")
        return value
    raise TypeError(f"{where}: unsupported annotation {tp!r}")


def load_config(spec: str, overrides: Mapping[str, Any] | None = None) -> ml_collections.ConfigDict:
    """Loads `path/to/config.py[:arg]` the way absl's `config_flags` does, for notebooks and tests.

    Args:
      spec: a config file path, optionally followed by `:arg` passed to its `get_config(arg)`.
      overrides: dotted field -> value, e.g. `{"train.learning_rate": 3e-4}`; each field must
        exist and the value must keep its type (ConfigDict's own type safety).

    Raises:
      ConfigError: the file has no `get_config`, or an override names an unknown field or has
        the wrong type.
    """
    import importlib.util
    import pathlib

    path, _, arg = spec.partition(":")
    file = pathlib.Path(path)
    if not file.is_file():
        raise ConfigError(f"config: no such config file {path!r}")
    module_spec = importlib.util.spec_from_file_location(f"_t2v_config_{file.stem}", file)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    if not hasattr(module, "get_config"):
        raise ConfigError(f"config: {path} defines no get_config(arg)")
    config = module.get_config(arg) if arg else module.get_config()
    for dotted, value in (overrides or {}).items():
        *parents, leaf = dotted.split(".")
        node = config
        for i, name in enumerate(parents):
            if name not in node:
                raise ConfigError(f"config.{'.'.join(parents[: i + 1])}: no such field")
            node = node[name]
        if leaf not in node:
            raise ConfigError(f"config.{dotted}: no such field")
        try:
            node[leaf] = value
        except TypeError as e:
            raise ConfigError(f"config.{dotted}: {e}") from e
    return config
