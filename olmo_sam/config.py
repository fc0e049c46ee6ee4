"""Configs: the one place their values are checked.

Every config of the package is a dataclass whose fields declare what they take: the annotation
gives the type, :func:`setting` the bounds or choices (``rho: float = setting(0.05, ge=0)``).
:func:`check_fields` checks an instance against those declarations (configs call it from
``__post_init__`` through :class:`Checked`), :func:`check_settings` checks a mapping of some of a
config's fields without building it (a study's arm settings), and :func:`decode` builds a config
from a mapping, refusing unknown keys. All raise :class:`ConfigError`, whose message starts with
the field's path (``arms[1].rho: must be a number >= 0, got -1``); a config nested in a file is
decoded with its place as ``where`` and its errors name the whole path.

Values are read as OLMo-core's YAML decoder reads them: numeric strings (YAML 1.1 reads ``3e-3``
as one) are numbers, an integral float or numeric string is an integer, ``True`` is not a number.

Dependencies: the standard library and OLMo-core only (``patches/`` vendors this module into
OLMo-core forks with the SAM optimizer, whose options it checks). YAML/JSON I/O of configs is
in :mod:`olmo_sam.files`.
"""

from __future__ import annotations

import collections.abc
import dataclasses
import difflib
import functools
import math
import typing
from typing import Any, Callable, Dict, Optional, Sequence, Type, TypeVar, Union

from olmo_core.exceptions import OLMoConfigurationError

__all__ = [
    "ConfigError",
    "Checked",
    "setting",
    "check_fields",
    "check_settings",
    "decode",
    "given",
    "unknown_setting",
    "did_you_mean",
    "describe",
]

T = TypeVar("T")


# -- checking ---------------------------------------------------------------------------------


class ConfigError(OLMoConfigurationError):
    """A bad configuration value. Built with :meth:`at`, it knows the field's path and can be
    placed inside an enclosing config (:meth:`within`); the message starts with the path."""

    path: Optional[str] = None
    problem: str = ""

    @classmethod
    def at(cls, path: str, problem: str) -> "ConfigError":
        err = cls(f"{path}: {problem}" if path else problem)
        err.path, err.problem = path, problem
        return err

    def within(self, where: str) -> "ConfigError":
        """The same error for a config found at ``where`` of an enclosing one."""
        if not where or self.path is None:
            return self
        return ConfigError.at(join_path(where, self.path), self.problem)


def join_path(where: str, name: str) -> str:
    if not where:
        return name
    return f"{where}{name}" if name.startswith("[") else f"{where}.{name}"


@dataclasses.dataclass(frozen=True)
class Rule:
    """What a field's value must meet besides its type (see :func:`setting`)."""

    ge: Optional[float] = None
    gt: Optional[float] = None
    le: Optional[float] = None
    lt: Optional[float] = None
    choices: Union[Sequence[Any], Callable[[], Sequence[Any]], None] = None
    #: the type to check when the annotation is wider (OLMo-core configs annotate ``Union[float,
    #: Any]`` so that its decoder hands a wrong value to ``__post_init__`` unchanged)
    type: Any = None
    #: appended to the error: what the value means or the paper's value
    hint: str = ""


def setting(default: Any = dataclasses.MISSING, *, default_factory: Any = dataclasses.MISSING, **rule: Any) -> Any:
    """A dataclass field with the :class:`Rule` its value must meet: bounds ``ge``/``gt``/``le``/
    ``lt`` (for a list: every entry), ``choices`` (a sequence, or a function returning one for
    lists defined in modules imported late), ``type`` and ``hint``."""
    return dataclasses.field(default=default, default_factory=default_factory, metadata={"rule": Rule(**rule)})


def describe(tp: Any) -> str:
    """A type as the error messages say it (``a number``, ``a list of strings``, ...)."""
    origin = typing.get_origin(tp)
    if origin is Union:
        parts = [a for a in typing.get_args(tp) if a is not type(None)]
        inner = " or ".join(describe(a) for a in parts)
        return f"{inner} (or null)" if len(parts) < len(typing.get_args(tp)) else inner
    if origin in (list, tuple, collections.abc.Sequence) or tp in (list, tuple):
        item = next(iter(typing.get_args(tp)), None)
        items = {int: "whole numbers", float: "numbers", str: "strings"}.get(item)
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


def _number(value: Any) -> Any:
    """A numeric string read as a number (as OLMo-core's YAML decoder reads it); else unchanged."""
    if isinstance(value, str):
        try:
            return float(value.strip())
        except ValueError:
            return value
    return value


def convert(value: Any, tp: Any) -> Any:
    """``value`` as type ``tp``; raises :class:`_Mismatch` when it does not fit."""
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
                return convert(value, a)
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
    if tp in (int, float):
        out = _number(value)
        if isinstance(out, bool) or not isinstance(out, (int, float)) or not math.isfinite(out):
            raise _Mismatch
        if tp is float:
            return float(out)
        if isinstance(out, float) and not out.is_integer():
            raise _Mismatch
        return int(out)
    if tp is str:
        if not isinstance(value, str):
            raise _Mismatch
        return value
    return value  # config objects (tokenizer, ...) are checked by their own class


def _item(value: Any, tp: Any, at: str) -> Any:
    """An entry of a list or mapping: a misfit is reported at the entry."""
    try:
        return convert(value, tp)
    except _Mismatch as e:
        raise _Mismatch(at + e.at, e.tp if e.at else tp, e.value if e.at else value) from None


def _bounds(rule: Rule, number: str) -> str:
    low = ("[", rule.ge) if rule.ge is not None else ("(", rule.gt) if rule.gt is not None else None
    high = ("]", rule.le) if rule.le is not None else (")", rule.lt) if rule.lt is not None else None
    if low and high:
        return f"{number} in {low[0]}{_num(low[1])}, {_num(high[1])}{high[0]}"
    op, bound = next(
        (o, b) for o, b in ((">=", rule.ge), (">", rule.gt), ("<=", rule.le), ("<", rule.lt)) if b is not None
    )
    return f"{number} {op} {_num(bound)}"


def _num(x: float) -> str:
    return str(x) if isinstance(x, int) else f"{x:g}"


def _leaves(tp: Any) -> set:
    """The plain types a (possibly nested: Optional, Union, List) annotation admits."""
    args = typing.get_args(tp)
    return set().union(*(_leaves(a) for a in args)) if args else {tp}


def _meets(rule: Rule, v: Any) -> bool:
    return not (
        (rule.ge is not None and v < rule.ge)
        or (rule.gt is not None and v <= rule.gt)
        or (rule.le is not None and v > rule.le)
        or (rule.lt is not None and v >= rule.lt)
    )


def check_value(value: Any, tp: Any, path: str, rule: Optional[Rule] = None) -> Any:
    """``value`` checked against type ``tp`` and ``rule`` and converted (numeric strings to
    numbers); a :class:`ConfigError` at ``path`` when it does not fit."""
    rule = rule or Rule()
    tp = rule.type or tp
    nested = [c for c in _leaves(tp) if dataclasses.is_dataclass(c)]
    if len(nested) == 1 and not (value is None or isinstance(value, nested[0])):  # a config in a config
        return decode(nested[0], value, path)
    try:
        value = convert(value, tp)
    except _Mismatch as e:
        if e.at:
            raise ConfigError.at(path + e.at, f"expected {describe(e.tp)}, got {e.value!r}{rule.hint}") from None
        raise ConfigError.at(path, f"expected {describe(tp)}, got {value!r}{rule.hint}") from None
    bounded = any(b is not None for b in (rule.ge, rule.gt, rule.le, rule.lt))
    if value is None or (rule.choices is None and not bounded):
        return value
    choices = None if rule.choices is None else list(rule.choices() if callable(rule.choices) else rule.choices)
    entries = list(enumerate(value)) if isinstance(value, (list, tuple)) else [(None, value)]
    for i, v in entries:
        at = path if i is None else f"{path}[{i}]"
        if v is None:
            continue
        if choices is not None and v not in choices:
            close = difflib.get_close_matches(str(v), [str(c) for c in choices], n=1)
            mean = f"; did you mean {close[0]!r}?" if close else ""
            raise ConfigError.at(at, f"must be one of {choices}, got {v!r}{mean}{rule.hint}")
        if bounded and isinstance(v, (int, float)) and not _meets(rule, v):
            number = "a number" if float in _leaves(tp) else "a whole number"
            raise ConfigError.at(at, f"must be {_bounds(rule, number)}, got {v!r}{rule.hint}")
    return value


@functools.lru_cache(maxsize=None)
def _declared(cls: type) -> Dict[str, tuple]:
    """name -> (type, rule) of every field of dataclass ``cls``."""
    hints = typing.get_type_hints(cls)
    return {f.name: (hints[f.name], f.metadata.get("rule")) for f in dataclasses.fields(cls) if f.init}


def check_fields(obj: Any) -> None:
    """Check every field of the dataclass instance ``obj`` against its declaration, converting in
    place (also on frozen dataclasses)."""
    for name, (tp, rule) in _declared(type(obj)).items():
        object.__setattr__(obj, name, check_value(getattr(obj, name), tp, name, rule))


class Checked:
    """Mixin for dataclass configs: fields checked by :func:`check_fields` when built. A subclass
    with cross-field rules overrides ``__post_init__`` and calls ``super().__post_init__()`` first."""

    def __post_init__(self) -> None:
        check_fields(self)


def given(config: Any) -> Dict[str, Any]:
    """The fields of a config that were given (not ``None``): what a section passes on to the
    function it configures, whose own defaults then apply."""
    return {f.name: getattr(config, f.name) for f in dataclasses.fields(config) if getattr(config, f.name) is not None}


def did_you_mean(word: str, options: Sequence[str]) -> str:
    """``"did you mean 'x'? "`` for the option closest to ``word``, or ``""`` when none is close."""
    close = difflib.get_close_matches(word, sorted(options), n=1)
    return f"did you mean {close[0]!r}? " if close else ""


def unknown_setting(key: str, names: Sequence[str], path: str) -> ConfigError:
    return ConfigError.at(path, f"unknown setting; {did_you_mean(key, names)}allowed: {sorted(names)}")


def check_settings(
    cls: type,
    settings: Dict[str, Any],
    where: str = "",
    paths: Optional[Dict[str, str]] = None,
    reserved: Sequence[str] = (),
) -> Dict[str, Any]:
    """``settings`` (some fields of dataclass ``cls``) checked and converted without building it;
    errors name the field as ``paths[name]`` (its place in a file) or ``{where}.{name}``.
    ``reserved``: fields the caller sets itself (not offered as allowed settings)."""
    declared = {k: v for k, v in _declared(cls).items() if k not in reserved}
    paths = paths or {}
    out: Dict[str, Any] = {}
    for key, value in settings.items():
        path = paths.get(key, join_path(where, key))
        if key not in declared:
            raise unknown_setting(key, list(declared), path)
        tp, rule = declared[key]
        out[key] = check_value(value, tp, path, rule)
    return out


def decode(cls: Type[T], data: Any, where: str = "") -> T:
    """An instance of dataclass ``cls`` from the mapping ``data`` (``None``: all defaults); an
    unknown key, a value of the wrong type or a rule broken is a :class:`ConfigError` naming
    ``{where}.{key}``."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError.at(where, f"expected a mapping (key: value), got {data!r}")
    names = list(_declared(cls))
    for key in data:
        if key not in names:
            raise unknown_setting(key, names, join_path(where, key))
    for f in dataclasses.fields(cls):
        required = f.init and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        if required and f.name not in data:
            raise ConfigError.at(join_path(where, f.name), "required")
    try:
        obj = cls(**data)
        if not isinstance(obj, Checked):
            check_fields(obj)
    except ConfigError as e:
        raise e.within(where) from None
    return obj
