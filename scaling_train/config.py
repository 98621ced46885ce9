"""Typed configs: nested dataclasses loaded from YAML with dotted ``key=value`` overrides.

Every field carries its documentation in ``field(metadata={"doc": ...})`` so that
``scaling-train train --help-config`` and the README's config reference come from one place.
Unknown keys and badly typed values fail before any work, naming the key, the value, where it
came from (file or command line) and what is allowed.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar, Union, get_args, get_origin, get_type_hints

import yaml

T = TypeVar("T")


class ConfigError(ValueError):
    """A config key or value is wrong; the message says which, where from, and what is allowed."""


def doc(text: str, default: Any = dataclasses.MISSING, **kw: Any) -> Any:
    """A dataclass field with a documentation string (shown by ``--help-config``)."""
    if "default_factory" in kw:
        return dataclasses.field(default_factory=kw.pop("default_factory"), metadata={"doc": text}, **kw)
    return dataclasses.field(default=default, metadata={"doc": text}, **kw)


def _type_name(tp: Any) -> str:
    if isinstance(tp, type):
        return tp.__name__
    return str(tp).replace("typing.", "")


def _coerce(value: Any, tp: Any, key: str, source: str) -> Any:
    """Convert ``value`` (from YAML or a command-line string) to the annotated type ``tp``."""
    origin = get_origin(tp)
    if origin in (Union, types.UnionType):
        args = get_args(tp)
        if value is None or (isinstance(value, str) and value.lower() in ("null", "none", "~")):
            if type(None) in args:
                return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, key, source)
            except ConfigError:
                pass  # try the next member of the union
        raise ConfigError(f"{source}: {key}={value!r} is not a valid {_type_name(tp)}")
    if origin is typing.Literal:
        allowed = get_args(tp)
        if value not in allowed:
            raise ConfigError(f"{source}: {key}={value!r} is not allowed; choose one of {list(allowed)}")
        return value
    if origin in (list, tuple, Sequence):
        (item_tp, *_) = get_args(tp) or (Any,)
        if isinstance(value, str):
            value = yaml.safe_load(value) if value.strip().startswith("[") else value.split(",")
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{source}: {key}={value!r} must be a list")
        out = [_coerce(v, item_tp, f"{key}[{i}]", source) for i, v in enumerate(value)]
        return tuple(out) if origin is tuple else out
    if origin in (dict, Mapping):
        if not isinstance(value, dict):
            raise ConfigError(f"{source}: {key}={value!r} must be a mapping")
        return dict(value)
    if tp is Any:
        return value
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{source}: {key} must be a mapping of {tp.__name__} fields, got {value!r}")
        return from_dict(tp, value, source=source, prefix=f"{key}.")
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "yes", "1", "on", "false", "no", "0", "off"):
            return value.lower() in ("true", "yes", "1", "on")
        raise ConfigError(f"{source}: {key}={value!r} must be true or false")
    if tp is int:
        if isinstance(value, bool):
            raise ConfigError(f"{source}: {key}={value!r} must be an integer")
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            try:
                f = float(value.replace("_", ""))
            except ValueError:
                f = None
            if f is not None and f.is_integer():
                return int(f)
        raise ConfigError(f"{source}: {key}={value!r} must be an integer")
    if tp is float:
        if isinstance(value, bool):
            raise ConfigError(f"{source}: {key}={value!r} must be a number")
        try:
            return float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{source}: {key}={value!r} must be a number") from None
    if tp is str:
        if isinstance(value, (dict, list)):
            raise ConfigError(f"{source}: {key}={value!r} must be a string")
        return str(value)
    return value


def _hints(cls: type) -> dict[str, Any]:
    return get_type_hints(cls)


def from_dict(cls: type[T], data: Mapping[str, Any], *, source: str = "<dict>", prefix: str = "") -> T:
    """Build ``cls`` from a nested mapping; unknown keys raise with the list of known ones."""
    hints = _hints(cls)
    names = {f.name: f for f in dataclasses.fields(cls) if f.init}
    kwargs = {}
    for k, v in data.items():
        if k not in names:
            raise ConfigError(
                f"{source}: unknown key {(prefix + k)!r}; known keys of {cls.__name__}: {sorted(names)}"
            )
        kwargs[k] = _coerce(v, hints[k], f"{prefix}{k}", source)
    try:
        return cls(**kwargs)
    except ConfigError as e:
        raise ConfigError(f"{source}: {e}") from None
    except (ValueError, TypeError) as e:
        raise ConfigError(f"{source}: {prefix.rstrip('.') or cls.__name__}: {e}") from None


def to_dict(obj: Any) -> Any:
    """Plain nested dict/list form of a config (for YAML, hashing and W&B)."""
    if dataclasses.is_dataclass(obj):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_dict(v) for k, v in obj.items()}
    return obj


def parse_overrides(items: Sequence[str]) -> dict[str, Any]:
    """``["optim.lr=3e-3", "model.size=2M"]`` -> nested dict of raw values (parsed as YAML scalars)."""
    out: dict[str, Any] = {}
    for item in items:
        if "=" not in item:
            raise ConfigError(
                f"command line: override {item!r} must look like key=value (e.g. optim.lr=3e-3)"
            )
        key, raw = item.split("=", 1)
        key = key.strip()
        if not key or any(not p for p in key.split(".")):
            raise ConfigError(f"command line: override key {key!r} in {item!r} is empty or malformed")
        try:
            value = yaml.safe_load(raw) if raw != "" else ""
        except yaml.YAMLError:
            value = raw
        node = out
        parts = key.split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ConfigError(f"command line: override {item!r} conflicts with another override of {p!r}")
        node[parts[-1]] = value
    return out


def deep_merge(base: Mapping[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in over.items():
        if isinstance(v, Mapping) and isinstance(out.get(k), Mapping):
            out[k] = deep_merge(out[k], v)
        else:
            out[k] = v
    return out


def load_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {str(path)!r} does not exist")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a mapping, got {type(data).__name__}")
    return data


def _resolve_includes(cls: type, data: dict[str, Any], base: Path | None) -> dict[str, Any]:
    """A sub-config given as a path (``model: configs/models/1M.yaml``) is read from that file,
    relative to the including file first, then to the working directory."""
    hints = _hints(cls)
    out = dict(data)
    for k, v in data.items():
        tp = hints.get(k)
        if (
            tp is not None
            and dataclasses.is_dataclass(tp)
            and isinstance(v, str)
            and v.endswith((".yaml", ".yml"))
        ):
            cands = ([base / v] if base is not None else []) + [Path(v)]
            hit = next((c for c in cands if c.is_file()), None)
            if hit is None:
                raise ConfigError(f"{k}={v!r}: included file not found (looked at {[str(c) for c in cands]})")
            out[k] = _resolve_includes(tp, load_yaml(hit), hit.parent)
        elif tp is not None and dataclasses.is_dataclass(tp) and isinstance(v, dict):
            out[k] = _resolve_includes(tp, v, base)
    return out


def load(cls: type[T], path: str | Path | None, overrides: Sequence[str] = ()) -> T:
    """Load ``cls`` from a YAML file plus command-line overrides (overrides win)."""
    data = _resolve_includes(cls, load_yaml(path), Path(path).parent) if path is not None else {}
    over = parse_overrides(overrides)
    src = str(path) if path is not None else "<defaults>"
    if over:
        # Validate the overrides on their own first so their errors name the command line.
        _check_keys(cls, over, source="command line")
        over = _resolve_includes(cls, over, None)
        src = f"{src} + command line"
    return from_dict(cls, deep_merge(data, over), source=src)


def _check_keys(cls: type, data: Mapping[str, Any], *, source: str, prefix: str = "") -> None:
    hints = _hints(cls)
    names = {f.name for f in dataclasses.fields(cls) if f.init}
    for k, v in data.items():
        if k not in names:
            raise ConfigError(
                f"{source}: unknown key {(prefix + k)!r}; known keys of {cls.__name__}: {sorted(names)}"
            )
        tp = hints[k]
        if dataclasses.is_dataclass(tp) and isinstance(v, Mapping):
            _check_keys(tp, v, source=source, prefix=f"{prefix}{k}.")


def describe(cls: type, prefix: str = "") -> list[tuple[str, str, str, str]]:
    """(key, type, default, doc) rows for every field, nested dataclasses flattened."""
    rows = []
    hints = _hints(cls)
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        if dataclasses.is_dataclass(tp):
            rows.extend(describe(tp, prefix=f"{prefix}{f.name}."))
            continue
        if f.default is not dataclasses.MISSING:
            default = repr(f.default)
        elif f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
            default = repr(f.default_factory())  # type: ignore[misc]
        else:
            default = "(required)"
        rows.append((prefix + f.name, _type_name(tp), default, f.metadata.get("doc", "")))
    return rows


def markdown_reference(cls: type) -> str:
    """The config reference table of the README (``scaling-train train --help-config --markdown``)."""
    lines = ["| key | type | default | meaning |", "| --- | --- | --- | --- |"]
    for key, tp, default, text in describe(cls):
        tp = tp.replace("|", "\\|")
        text = text.replace("|", "\\|")
        lines.append(f"| `{key}` | {tp} | `{default}` | {text} |")
    return "\n".join(lines)
