"""Configs: constructor keyword arguments recorded as ``self.config``, dataclasses <-> YAML,
and minGPT-style dotted overrides (``model.dim=64``) where an unknown key is an error.

PyYAML is used for the file format; the merging, validation and override rules are written here
because they are a few dozen lines and must fail loudly on typos, which generic loaders do not.
Result files are written as strict JSON by :func:`write_json` (no ``NaN``/``Infinity`` tokens).
"""

from __future__ import annotations

import ast
import dataclasses
import functools
import inspect
import json
import math
import os
import types
import typing
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any, TypeVar

import yaml

T = TypeVar("T")


def register_to_config(init: Callable[..., None]) -> Callable[..., None]:
    """Decorator for ``__init__``: store the bound keyword arguments (with defaults) as ``self.config``.

    The constructor signature is the config schema (the diffusers convention); ``save_pretrained``
    writes ``self.config`` and ``from_pretrained`` calls the constructor with it.
    """
    sig = inspect.signature(init)

    @functools.wraps(init)
    def wrapper(self: Any, *args: Any, **kwargs: Any) -> None:
        bound = sig.bind(self, *args, **kwargs)
        bound.apply_defaults()
        cfg = {k: v for k, v in bound.arguments.items() if k != "self"}
        extra = cfg.pop("kwargs", None)
        if extra:
            cfg.update(extra)
        init(self, *args, **kwargs)
        object.__setattr__(self, "config", _jsonable(cfg))

    return wrapper


def _jsonable(v: Any) -> Any:
    if isinstance(v, Mapping):
        return {str(k): _jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    if dataclasses.is_dataclass(v) and not isinstance(v, type):
        return _jsonable(dataclasses.asdict(v))
    return v


def check_keys(given: Iterable[str], valid: Iterable[str], where: str) -> None:
    """Raise ``ValueError`` naming every unknown key and the valid ones."""
    valid = sorted(valid)
    unknown = sorted(set(given) - set(valid))
    if unknown:
        raise ValueError(f"unknown key(s) {', '.join(map(repr, unknown))} in {where}; valid keys: {', '.join(valid)}")


def _strip_optional(tp: Any) -> Any:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return tp


def from_dict(cls: type[T], data: Mapping[str, Any], where: str | None = None) -> T:
    """Build the dataclass ``cls`` from ``data``, recursing into nested dataclass fields.

    Raises:
        ValueError: on a key that is not a field (the message lists the valid fields).
    """
    where = where or cls.__name__
    if not isinstance(data, Mapping):
        raise ValueError(f"{where} must be a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    check_keys(data, fields, where)
    kwargs = {}
    for k, v in data.items():
        hint = hints.get(k, Any)
        tp = _strip_optional(hint)
        if dataclasses.is_dataclass(tp) and isinstance(v, Mapping):
            v = from_dict(tp, v, f"{where}.{k}")
        elif tp in (int, float, bool, str) and not (v is None and tp is not hint):
            v = _check_scalar(v, tp, f"{where}.{k}")
        kwargs[k] = v
    return cls(**kwargs)


def _check_scalar(v: Any, tp: type, where: str) -> Any:
    """``v`` as the scalar type ``tp`` of a config field; a value of another kind is a ``ValueError``.

    Integers are accepted for float fields; floats must be finite (a NaN learning rate or temperature
    is a mistake, not a setting); an int field refuses ``2.5`` rather than truncating it.
    """
    if tp is bool:
        if not isinstance(v, bool):
            raise ValueError(f"{where} must be true or false, got {v!r}")
        return v
    if tp is str:
        if not isinstance(v, str):
            raise ValueError(f"{where} must be a string, got {v!r}")
        return v
    if tp is float and isinstance(v, str):  # YAML 1.1 reads ``1e-3`` as a string
        try:
            v = float(v)
        except ValueError:
            raise ValueError(f"{where} must be a number, got {v!r}") from None
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise ValueError(f"{where} must be {'an integer' if tp is int else 'a number'}, got {v!r}")
    if tp is int:
        if isinstance(v, float) and not v.is_integer():
            raise ValueError(f"{where} must be an integer, got {v!r}")
        return int(v)
    if not math.isfinite(v):
        raise ValueError(f"{where} must be a finite number, got {v!r}")
    return float(v) if isinstance(v, float) else v


def to_dict(obj: Any) -> dict[str, Any]:
    """A dataclass as a plain, YAML/JSON-serialisable dict."""
    return _jsonable(dataclasses.asdict(obj))


def parse_value(text: str) -> Any:
    """A CLI value: a Python/YAML literal when it parses as one, else the string itself."""
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        pass
    low = text.strip().lower()
    if low in ("true", "false"):
        return low == "true"
    if low in ("none", "null"):
        return None
    return text


def apply_overrides(data: dict[str, Any], overrides: Iterable[str]) -> dict[str, Any]:
    """Apply ``key.sub=value`` overrides to a nested dict in place (and return it).

    A key path that does not exist raises ``ValueError`` naming the key and the valid ones.
    """
    for item in overrides:
        key, sep, raw = item.partition("=")
        key = key.strip().lstrip("-")
        if not sep or not key:
            raise ValueError(f"override {item!r} must look like key.sub=value")
        node = data
        parts = key.split(".")
        for i, part in enumerate(parts):
            if not isinstance(node, dict) or part not in node:
                valid = sorted(node) if isinstance(node, dict) else []
                raise ValueError(
                    f"unknown config key {'.'.join(parts[: i + 1])!r}; valid keys here: {', '.join(valid)}"
                )
            if i == len(parts) - 1:
                node[part] = parse_value(raw)
            else:
                node = node[part]
    return data


def load_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping, with clear errors for a missing or malformed file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise ValueError(f"could not parse YAML config {path}: {e}") from e
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ValueError(f"config {path} must hold a mapping at the top level")
    return data


def load_config(cls: type[T], path: str | Path, overrides: Iterable[str] = ()) -> T:
    """Load a YAML file into the dataclass ``cls`` after applying dotted overrides.

    Fields absent from the file keep their dataclass defaults, and overrides may name them.
    """
    base = to_dict(cls())
    merged = _deep_merge(base, load_yaml(path), str(path))
    return from_dict(cls, apply_overrides(merged, overrides), where=str(path))


def _deep_merge(base: dict[str, Any], new: Mapping[str, Any], where: str) -> dict[str, Any]:
    check_keys(new, base, where)
    out = dict(base)
    for k, v in new.items():
        if isinstance(out.get(k), dict) and isinstance(v, Mapping) and out[k]:
            out[k] = _deep_merge(out[k], v, f"{where}:{k}")
        else:
            out[k] = v
    return out


# --------------------------------------------------------------------------------------- JSON out
#: Suffix of the flag written next to a value that is not a finite number (see :func:`json_safe`).
NONFINITE_SUFFIX = "_nonfinite"


def _plain_number(v: Any) -> Any:
    """numpy / torch scalars as Python numbers; anything else unchanged."""
    item = getattr(v, "item", None)
    if callable(item) and getattr(v, "ndim", None) == 0:
        try:
            return item()
        except (TypeError, ValueError):
            return v
    return v


def _nonfinite_tag(v: float) -> str:
    return "nan" if math.isnan(v) else ("inf" if v > 0 else "-inf")


def json_safe(obj: Any) -> Any:
    """``obj`` with every non-finite float replaced by ``None`` (strict JSON has no NaN/Infinity).

    In a mapping, a non-finite value under ``key`` becomes ``null`` and the flag
    ``"<key>_nonfinite": "inf" | "-inf" | "nan"`` is added beside it (an infinite PSNR means identical
    images); in a list the element becomes ``null``. Tuples become lists; numpy / torch scalars
    become Python numbers.
    """
    obj = _plain_number(obj)
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, Mapping):
        out: dict[Any, Any] = {}
        for k, v in obj.items():
            v = _plain_number(v)
            if isinstance(v, float) and not math.isfinite(v):
                out[k] = None
                out[f"{k}{NONFINITE_SUFFIX}"] = _nonfinite_tag(v)
            else:
                out[k] = json_safe(v)
        return out
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    return obj


def dumps_json(obj: Any, *, indent: int | None = 2, default: Callable[[Any], Any] | None = None) -> str:
    """Strict JSON text of ``obj`` (after :func:`json_safe`), ending with a newline.

    ``json.dumps(..., allow_nan=False)`` is the final guard: no ``NaN``/``Infinity`` token is ever
    written.
    """
    return json.dumps(json_safe(obj), indent=indent, allow_nan=False, default=default) + "\n"


def write_json(
    path: str | Path, obj: Any, *, indent: int | None = 2, default: Callable[[Any], Any] | None = None
) -> Path:
    """Write ``obj`` as strict JSON (:func:`dumps_json`) to ``path``, creating its folder; returns the path.

    The text is written to a temporary file beside ``path`` and moved into place, so a reader
    never sees half a file.
    """
    path = Path(path)
    text = dumps_json(obj, indent=indent, default=default)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
    return path
