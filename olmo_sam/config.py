"""YAML/JSON I/O for OLMo-core configs (plain types only, round-trippable) and a pre-decode check
that names the field of a wrong registered type."""

from __future__ import annotations

import dataclasses
import importlib
import json
import typing
from pathlib import Path
from typing import Any, Dict, Type, TypeVar

import yaml
from olmo_core.config import Config, Registrable
from olmo_core.exceptions import OLMoConfigurationError

from .files import read_yaml

__all__ = ["config_to_plain", "to_yaml", "to_json", "load_config", "check_registered_types"]

C = TypeVar("C", bound=Config)


def config_to_plain(config: Config) -> Dict[str, Any]:
    """``as_config_dict()`` with enums and other str/int subclasses reduced to plain JSON types
    (YAML's safe dumper refuses ``StrEnum`` values such as OLMo-core's dtype fields)."""
    return json.loads(json.dumps(config.as_config_dict()))


def to_yaml(config: Config) -> str:
    return yaml.safe_dump(config_to_plain(config), sort_keys=False)


def to_json(config: Config) -> str:
    return json.dumps(config_to_plain(config), indent=2)


def _candidates(hint: Any) -> list:
    """The classes a field annotation allows (Optional/Union members; containers' values)."""
    origin = typing.get_origin(hint)
    if origin is typing.Union:
        return [c for a in typing.get_args(hint) for c in _candidates(a)]
    return [hint] if isinstance(hint, type) else []


def _resolve(name: str, path: str) -> type:
    module, _, attr = name.rpartition(".")
    try:
        return getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError, ValueError):
        raise OLMoConfigurationError(f"{path}._CLASS_: cannot import '{name}'") from None


def check_registered_types(cls: Any, data: Any, path: str = "") -> None:
    """Walk ``data`` alongside the dataclass ``cls`` and raise, naming the field, where a ``type``
    is not registered for the field's :class:`Registrable` base (OLMo-core's decoder raises a
    bare ``KeyError`` that does not say where)."""
    if isinstance(data, list):
        for i, item in enumerate(data):
            check_registered_types(cls, item, f"{path}.{i}" if path else str(i))
        return
    if not isinstance(data, dict):
        return
    target = cls
    if Config.CLASS_NAME_FIELD in data:
        target = _resolve(data[Config.CLASS_NAME_FIELD], path or "config")
    elif "type" in data and isinstance(cls, type) and issubclass(cls, Registrable):
        names = cls.get_registered_names()
        if data["type"] not in names:
            raise OLMoConfigurationError(
                f"{path + '.' if path else ''}type: {data['type']!r} is not a registered "
                f"{cls.__name__}; choose one of {sorted(names)} (did you import olmo_sam?)"
            )
        target = cls.get_registered_class(data["type"])
    if not (isinstance(target, type) and dataclasses.is_dataclass(target)):
        return
    try:
        hints = typing.get_type_hints(target)
    except Exception:  # noqa: BLE001 - unresolvable forward references: nothing to check here
        return
    for f in dataclasses.fields(target):
        if f.name not in data:
            continue
        hint = hints.get(f.name)
        sub = f"{path}.{f.name}" if path else f.name
        origin = typing.get_origin(hint)
        if origin in (dict, typing.Dict) and isinstance(data[f.name], dict):
            args = typing.get_args(hint)
            for k, v in data[f.name].items():
                for c in _candidates(args[1]) if len(args) == 2 else []:
                    check_registered_types(c, v, f"{sub}.{k}")
            continue
        if origin in (list, typing.List) and isinstance(data[f.name], list):
            args = typing.get_args(hint)
            for c in _candidates(args[0]) if args else []:
                check_registered_types(c, data[f.name], sub)
            continue
        for c in _candidates(hint):
            if dataclasses.is_dataclass(c) or issubclass(c, Registrable):
                check_registered_types(c, data[f.name], sub)
                break


def load_config(cls: Type[C], path: str | Path, overrides: list[str] | None = None) -> C:
    """Decode a YAML/JSON file into ``cls`` (registering olmo-sam's classes first)."""
    import olmo_sam  # noqa: F401

    p = str(path)
    if p.endswith(".json"):
        with open(p) as f:
            data = json.load(f)
    else:
        data = read_yaml(p)
    check_registered_types(cls, data)
    return cls.from_dict(data, overrides=overrides)
