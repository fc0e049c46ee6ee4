"""Settings from a study file checked against the dataclass they build (names and types).

YAML gives strings, numbers, lists and mappings; a recipe's dataclass declares what each field
takes. :func:`typed_settings` refuses unknown names and values of the wrong type, naming the
field, and reads numbers written as strings (YAML 1.1 reads ``3e-3`` as a string) for float
fields. Used by the study jobs themselves and by the plan step, so both see the same values.
"""

from __future__ import annotations

import collections.abc
import dataclasses
import math
import typing
from typing import Any, Dict, Optional, Sequence, Union

from olmo_core.exceptions import OLMoConfigurationError

__all__ = ["StudyError", "typed_settings", "typed_fields", "check_value", "describe"]


class StudyError(OLMoConfigurationError):
    """A bad study file; the message starts with the field's path in the file."""


def describe(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Union:
        parts = [a for a in typing.get_args(tp) if a is not type(None)]
        inner = " or ".join(describe(a) for a in parts)
        return f"{inner} (or null)" if len(parts) < len(typing.get_args(tp)) else inner
    if origin in (list, tuple, collections.abc.Sequence) or tp in (list, tuple):
        items = {int: "whole numbers", float: "numbers", str: "strings"}.get(next(iter(typing.get_args(tp)), None))
        return f"a list of {items}" if items else "a list"
    if origin is dict or tp is dict:
        return "a mapping"
    return {int: "a whole number", float: "a number", str: "a string", bool: "true or false"}.get(tp, str(tp))


class _Mismatch(Exception):
    """A value that does not fit; ``at`` is the place of the misfit inside it (``[2]``, ``.code``),
    ``tp`` and ``value`` what was expected and found there."""

    def __init__(self, at: str = "", tp: Any = None, value: Any = None):
        super().__init__(at)
        self.at, self.tp, self.value = at, tp, value


def check_value(value: Any, tp: Any) -> Any:
    """``value`` as type ``tp`` (float fields accept ints and numeric strings); raises
    :class:`_Mismatch` when it does not fit."""
    if tp is Any or isinstance(tp, typing.TypeVar):
        return value
    origin = typing.get_origin(tp)
    if origin is Union:
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        misses = []
        for a in inner:
            try:
                return check_value(value, a)
            except _Mismatch as e:
                misses.append(e)
        deep = [e for e in misses if e.at]
        raise deep[0] if len(inner) == 1 and deep else _Mismatch
    if origin in (list, tuple, collections.abc.Sequence):
        if not isinstance(value, (list, tuple)):
            raise _Mismatch
        args = [a for a in typing.get_args(tp) if a is not Ellipsis]
        item = args[0] if len(args) == 1 else Any
        return type(value)(_item(v, item, f"[{i}]") for i, v in enumerate(value))
    if origin is dict:
        if not isinstance(value, dict):
            raise _Mismatch
        args = typing.get_args(tp)
        return {k: _item(v, args[1], f".{k}") for k, v in value.items()} if len(args) == 2 else value
    if tp is bool:
        if not isinstance(value, bool):
            raise _Mismatch
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise _Mismatch
        return value
    if tp is float:
        if isinstance(value, bool):
            raise _Mismatch
        if isinstance(value, (int, float)):
            return float(value)
        if isinstance(value, str):
            try:
                v = float(value)
            except ValueError:
                raise _Mismatch from None
            if math.isnan(v):
                raise _Mismatch
            return v
        raise _Mismatch
    if tp is str:
        if not isinstance(value, str):
            raise _Mismatch
        return value
    return value  # config objects (tokenizer, ...) are not set from study files


def _item(value: Any, tp: Any, at: str) -> Any:
    """An entry of a list or mapping: a misfit is reported at the entry."""
    try:
        return check_value(value, tp)
    except _Mismatch as e:
        raise _Mismatch(at + e.at, e.tp if e.at else tp, e.value if e.at else value) from None


def typed_settings(
    cls, settings: Dict[str, Any], where: str, paths: Optional[Dict[str, str]] = None, reserved: Sequence[str] = ()
) -> Dict[str, Any]:
    """``settings`` checked against the fields of dataclass ``cls``; errors name the field as
    ``paths[name]`` (its place in the study file) or ``{where}.{name}``. ``reserved``: fields
    the caller sets itself (not offered as allowed settings)."""
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)} - set(reserved)
    paths = paths or {}
    out: Dict[str, Any] = {}
    for key, value in settings.items():
        path = paths.get(key, f"{where}.{key}" if where else key)
        if key not in names:
            raise StudyError(f"{path}: unknown setting; allowed: {sorted(names)}")
        try:
            out[key] = check_value(value, hints[key])
        except _Mismatch as e:
            if e.at:
                raise StudyError(f"{path}{e.at}: expected {describe(e.tp)}, got {e.value!r}") from None
            raise StudyError(f"{path}: expected {describe(hints[key])}, got {value!r}") from None
    return out


def typed_fields(cls, data: Dict[str, Any], where: str) -> Dict[str, Any]:
    """``data`` (a section of the study file) checked against the fields of dataclass ``cls``:
    unknown keys and values of the wrong type are errors naming ``{where}.{key}``."""
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise StudyError(f"{where}: unknown key(s) {unknown}; allowed: {sorted(names)}")
    return typed_settings(cls, data, where)
