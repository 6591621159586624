"""Plumbing of :mod:`lrs_plugin.harness.record`: typed record dataclasses to and from their JSON objects.

Rules (the record's classes declare them through :func:`group` / :func:`renamed` field metadata):

* a field with a default is written only when its value is not that default (``None`` / ``False``): an absent key
  means "not recorded"; a field without a default is always written, ``None`` included;
* a *group* field (a dataclass value) is written inline, its fields as keys of the parent, when it is set; it is read
  back when every one of its required keys (it has at least one) is present;
* any other dataclass value is written as a nested object, and lists of them as lists of objects;
* reading checks every value against the field's annotation (``int``, ``float``, ``str``, ``bool``, ``None``, unions,
  ``list[...]``, ``dict[str, ...]``, nested records, ``Any``) and refuses unknown keys inside nested objects; the
  top-level caller decides what to do with the keys left over.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Mapping
from functools import cache
from typing import Any

from lrs_plugin.errors import SampleRecordError

__all__ = ["group", "json_keys", "read_fields", "renamed", "to_json_object"]

_NO_DEFAULT = dataclasses.MISSING


def group() -> Any:
    """A field whose dataclass value is written inline (its keys join the parent's); default ``None``: not recorded."""
    return dataclasses.field(default=None, metadata={"group": True})


def renamed(key: str, **kwargs: Any) -> Any:
    """A field written under the JSON key ``key`` instead of its name."""
    return dataclasses.field(metadata={"key": key}, **kwargs)


def _key(f: dataclasses.Field) -> str:
    return f.metadata.get("key", f.name)


def _has_default(f: dataclasses.Field) -> bool:
    return f.default is not _NO_DEFAULT or f.default_factory is not _NO_DEFAULT


def _fields(cls: type) -> list[dataclasses.Field]:
    return [f for f in dataclasses.fields(cls) if f.name != "extra"]


@cache
def _hints(cls: type) -> dict[str, Any]:
    """The resolved field annotations of a record class (a pure memo: classes do not change)."""
    return typing.get_type_hints(cls)


def _group_type(hint: Any) -> type:
    """The dataclass inside ``Group | None``."""
    arms = [a for a in typing.get_args(hint) if a is not type(None)] or [hint]
    return arms[0]


def json_keys(cls: type) -> tuple[str, ...]:
    """Every top-level JSON key a record of ``cls`` can write, groups expanded, in writing order."""
    keys: list[str] = []
    for f in _fields(cls):
        if f.metadata.get("group"):
            keys += json_keys(_group_type(_hints(cls)[f.name]))
        else:
            keys.append(_key(f))
    return tuple(dict.fromkeys(keys))


def _plain(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return to_json_object(value)
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    return value


def to_json_object(record: Any) -> dict[str, Any]:
    """The JSON object of ``record`` (see the module rules), without its ``extra`` keys."""
    out: dict[str, Any] = {}
    for f in _fields(type(record)):
        value = getattr(record, f.name)
        if f.default is not _NO_DEFAULT and value is f.default:
            continue
        if f.metadata.get("group"):
            inline = to_json_object(value)
            clash = sorted(set(inline) & set(out))
            if clash:
                raise SampleRecordError(f"{type(record).__name__}: keys {clash} are written by two fields")
            out.update(inline)
        else:
            out[_key(f)] = _plain(value)
    return out


def _bad(where: str, value: Any, hint: Any) -> SampleRecordError:
    return SampleRecordError(f"{where}={value!r} does not fit the field's type {_name(hint)}")


def _name(hint: Any) -> str:
    """``int | None``, ``list[FocusPass]``: a field type as it is written."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return " | ".join(_name(a) for a in args)
    if origin is not None:
        return f"{origin.__name__}[{', '.join(_name(a) for a in args)}]"
    return "None" if hint is type(None) else getattr(hint, "__name__", str(hint))


def _parse(value: Any, hint: Any, where: str) -> Any:
    """``value`` (a JSON value) checked against ``hint``; nested records are built."""
    origin = typing.get_origin(hint)
    if hint is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        arms = [a for a in typing.get_args(hint) if a is not type(None)]
        if value is None and len(arms) < len(typing.get_args(hint)):
            return None
        if len(arms) == 1:  # ``X | None``: X's own error names the nested key
            return _parse(value, arms[0], where)
        for arm in arms:
            try:
                return _parse(value, arm, where)
            except SampleRecordError:
                continue
        raise _bad(where, value, hint)
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise _bad(where, value, hint)
        (item,) = typing.get_args(hint)
        return [_parse(v, item, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, Mapping) or not all(isinstance(k, str) for k in value):
            raise _bad(where, value, hint)
        item = typing.get_args(hint)[1]
        return {k: _parse(v, item, f"{where}.{k}") for k, v in value.items()}
    if dataclasses.is_dataclass(hint):
        if not isinstance(value, Mapping):
            raise _bad(where, value, hint)
        rest = dict(value)
        built = hint(**read_fields(hint, rest, f"{where}."))
        if rest:
            raise SampleRecordError(
                f"{where}: unknown keys {sorted(rest)} in a {hint.__name__}; valid: {', '.join(json_keys(hint))}"
            )
        return built
    checks = {
        bool: lambda v: isinstance(v, bool),
        int: lambda v: isinstance(v, int) and not isinstance(v, bool),
        float: lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
        str: lambda v: isinstance(v, str),
    }
    check = checks.get(hint)
    if check is None:
        raise TypeError(f"record field type {hint!r} has no JSON reading rule")
    if not check(value):
        raise _bad(where, value, hint)
    return value


def read_fields(cls: type, data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Constructor arguments of ``cls`` taken out of ``data`` (the keys read are removed; the rest stay).

    Raises:
        SampleRecordError: a value does not fit its field's type, or a required key is missing.
    """
    hints = _hints(cls)
    kwargs: dict[str, Any] = {}
    for f in _fields(cls):
        if not f.metadata.get("group"):
            continue
        part = _group_type(hints[f.name])
        required = [_key(g) for g in _fields(part) if not _has_default(g)]
        if required and all(k in data for k in required):
            kwargs[f.name] = part(**read_fields(part, data, prefix))
    for f in _fields(cls):
        if f.metadata.get("group"):
            continue
        key = _key(f)
        if key in data:
            kwargs[f.name] = _parse(data.pop(key), hints[f.name], prefix + key)
        elif not _has_default(f):
            raise SampleRecordError(f"{prefix}{key} is missing (a {cls.__name__} always records it)")
    return kwargs
