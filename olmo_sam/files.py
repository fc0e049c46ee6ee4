"""The project's one reader of YAML files (study files, recipe and experiment configs), and
YAML/JSON I/O of OLMo-core configs (plain types only, round-trippable; :func:`load_config` first
names the field of a wrong registered ``type``, which OLMo-core's decoder reports as a bare
``KeyError``).

:func:`read_yaml` parses with :class:`StrictLoader`, PyYAML's safe loader with two changes that
turn silent surprises into errors or plain strings:

* a key given twice in one mapping is an error naming the file, the key and its line (PyYAML
  keeps the last one silently);
* only ``true``/``false`` (any case style YAML 1.2 allows) are booleans: ``yes``, ``no``, ``on``
  and ``off`` stay strings, so a boolean field given ``no`` is refused by its type check
  instead of being read as false (or a dataset named ``on`` read as true).

Any problem is one :class:`OLMoConfigurationError` line starting with the file's path.
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib
import json
import re
import typing
from pathlib import Path
from typing import Any, Dict, Iterator, Sequence, Tuple, Type, TypeVar

import yaml
from olmo_core.config import Config, Registrable
from olmo_core.exceptions import OLMoConfigurationError

from .config import unknown_setting

__all__ = [
    "StrictLoader",
    "parse_yaml",
    "read_yaml",
    "read_text",
    "read_json",
    "iter_jsonl",
    "config_to_plain",
    "to_yaml",
    "to_json",
    "load_config",
    "check_registered_types",
]

C = TypeVar("C", bound=Config)


class StrictLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` refusing duplicate mapping keys, with YAML 1.2 booleans only."""

    def construct_mapping(self, node, deep=False):
        if isinstance(node, yaml.MappingNode):
            # checked before merge keys (<<) are flattened in: a key may override a merged one
            seen = {}
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue
                key = self.construct_object(key_node, deep=True)
                try:
                    first = seen.get(key)
                except TypeError:  # an unhashable key: left to PyYAML's own error
                    continue
                if first is not None:
                    raise yaml.constructor.ConstructorError(
                        None,
                        None,
                        f"duplicate key {key!r} (first at line {first.line + 1}); give each key once",
                        key_node.start_mark,
                    )
                seen[key] = key_node.start_mark
        return super().construct_mapping(node, deep=deep)


# booleans: YAML 1.2's core schema (true/false) instead of YAML 1.1's yes/no/on/off/y/n
StrictLoader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:bool"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
StrictLoader.add_implicit_resolver(
    "tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF")
)


def parse_yaml(text: str, source: str) -> Any:
    """The YAML document in ``text``; errors start with ``source`` (the file's path)."""
    try:
        return yaml.load(text, Loader=StrictLoader)  # noqa: S506 (a SafeLoader subclass)
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        where = f", line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        detail = "; ".join(x for x in (e.context, e.problem) if x)
        raise OLMoConfigurationError(f"{source}{where}: not valid YAML: {detail}") from None
    except yaml.YAMLError as e:
        raise OLMoConfigurationError(f"{source}: not valid YAML: {' '.join(str(e).split())}") from None


def read_text(path: str | Path, what: str = "file") -> str:
    """The text of the file ``path``; a missing, unreadable or binary file is one line naming it
    (``what``: what the file should be, e.g. ``"model config.json"``)."""
    p = Path(path)
    try:
        return p.read_text()
    except FileNotFoundError:
        raise OLMoConfigurationError(f"{p}: {what} not found") from None
    except IsADirectoryError:
        raise OLMoConfigurationError(f"{p}: is a directory, expected a {what}") from None
    except UnicodeDecodeError:
        raise OLMoConfigurationError(f"{p}: the {what} is not text (corrupt?); copy or write it again") from None
    except OSError as e:
        raise OLMoConfigurationError(f"{p}: the {what} cannot be read ({e.strerror or e})") from None


def read_yaml(path: str | Path) -> Any:
    """The YAML document in the file ``path`` (see the module docstring)."""
    return parse_yaml(read_text(path, "YAML file"), str(path))


def _json_error(where: str, what: str, detail: str) -> OLMoConfigurationError:
    return OLMoConfigurationError(
        f"{where}: the {what} is not valid JSON ({detail}); it is truncated or corrupt: copy or write it again"
    )


def read_json(path: str | Path, *, what: str = "JSON file") -> Any:
    """The JSON in the file ``path``; a missing, unreadable or corrupt file is one line naming it."""
    text = read_text(path, what)
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise _json_error(str(path), what, f"{e.msg}, line {e.lineno}") from None


def iter_jsonl(path: str | Path, *, what: str = "JSONL file") -> Iterator[Tuple[str, Any]]:
    """``(where, record)`` for every non-blank line of the JSON-lines file ``path`` (``where``:
    ``path:line`` for the caller's own errors about a record); a missing file or a line that is
    not JSON is one line naming it."""
    p = Path(path)
    if not p.is_file():
        read_text(p, what)  # (raises naming what is wrong)
    with p.open() as f:
        n = 0
        try:
            for n, line in enumerate(f, 1):
                if line.strip():
                    try:
                        yield f"{p}:{n}", json.loads(line)
                    except json.JSONDecodeError as e:
                        raise _json_error(f"{p}:{n}", what, e.msg) from None
        except UnicodeDecodeError:
            raise OLMoConfigurationError(f"{p}:{n + 1}: the {what} is not text (a binary file?)") from None


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


def check_registered_types(cls: Any, data: Any, path: str = "", certain: bool = True) -> None:
    """Walk ``data`` alongside the dataclass ``cls`` and raise, naming the field, where a ``type``
    is not registered for the field's :class:`Registrable` base (OLMo-core's decoder raises a
    bare ``KeyError`` that does not say where) or a key is not a field of the config it decodes
    into (OLMo-core's says "Failed to coerce" with the whole parent mapping). ``certain``: ``cls``
    is the class ``data`` decodes into, not one of several an annotation allows."""
    if isinstance(data, list):
        for i, item in enumerate(data):
            check_registered_types(cls, item, f"{path}.{i}" if path else str(i), certain)
        return
    if not isinstance(data, dict):
        return
    target = cls
    if Config.CLASS_NAME_FIELD in data:
        target, certain = _resolve(data[Config.CLASS_NAME_FIELD], path or "config"), True
    elif "type" in data and isinstance(cls, type) and issubclass(cls, Registrable):
        names = cls.get_registered_names()
        if data["type"] not in names:
            raise OLMoConfigurationError(
                f"{path + '.' if path else ''}type: {data['type']!r} is not a registered "
                f"{cls.__name__}; choose one of {sorted(names)} (did you import olmo_sam?)"
            )
        target, certain = cls.get_registered_class(data["type"]), True
    if not (isinstance(target, type) and dataclasses.is_dataclass(target)):
        return
    names = [f.name for f in dataclasses.fields(target)]
    for key in data if certain else ():
        if key not in names and key not in (Config.CLASS_NAME_FIELD, "type"):
            raise unknown_setting(key, names, f"{path}.{key}" if path else str(key))
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
            values = _candidates(args[1]) if len(args) == 2 else []
            for k, v in data[f.name].items():
                for c in values:
                    check_registered_types(c, v, f"{sub}.{k}", len(values) == 1)
            continue
        if origin in (list, typing.List) and isinstance(data[f.name], list):
            args = typing.get_args(hint)
            items = _candidates(args[0]) if args else []
            for c in items:
                check_registered_types(c, data[f.name], sub, len(items) == 1)
            continue
        allowed = [c for c in _candidates(hint) if c is not type(None)]
        configs = [c for c in allowed if dataclasses.is_dataclass(c) or issubclass(c, Registrable)]
        if configs:
            check_registered_types(configs[0], data[f.name], sub, len(allowed) == 1)


#: YAML 1.1 booleans that OLMo-core's dotted overrides read as true/false, and olmo-sam's YAML
#: files (1.2, :func:`read_yaml`) refuse for a boolean field
_YAML11_BOOLS = ("yes", "no", "on", "off")


def check_overrides(cfg: Config, overrides: Sequence[str], class_fix: str = "") -> None:
    """Refuse dotted ``KEY=VALUE`` overrides of ``cfg`` that OLMo-core's ``merge`` would get wrong
    silently: a key that is not a field (named with a did-you-mean), a ``...type=`` or
    ``..._CLASS_=`` (the existing ``_CLASS_`` wins, so the class would not change; ``class_fix``
    says what to do instead) and a YAML 1.1 boolean word (``yes``: a file says ``true``)."""
    data = cfg.as_dict(include_class_name=True, include_registered_name=True)
    for raw in overrides:
        if "=" not in raw:
            raise OLMoConfigurationError(f"override {raw!r} must look like KEY=VALUE (e.g. train_module.optim.rho=0.1)")
        key, value = (x.strip() for x in raw.split("=", 1))
        key = key.strip(" -").replace("-", "_")
        parts = key.split(".")
        if parts[-1] in ("type", cfg.CLASS_NAME_FIELD):
            raise OLMoConfigurationError(
                f"override {key!r} would change a config's class, which OLMo-core's merge silently "
                f"ignores (the existing '_CLASS_' wins); {class_fix or 'change the class in the config file'}"
            )
        if value.lower() in _YAML11_BOOLS:
            raise OLMoConfigurationError(
                f"override {key}={value}: write true or false ({value!r} is a YAML 1.1 word that the override "
                "parser would read as a boolean, and a config file refuses)"
            )
        node: Any = data
        for i, part in enumerate(parts):
            if isinstance(node, dict) and part in node:
                node = node[part]
            elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
                node = node[int(part)]
            else:
                where = ".".join(parts[:i]) or "the config"
                options = [k for k in node if k not in ("type", cfg.CLASS_NAME_FIELD)] if isinstance(node, dict) else []
                close = difflib.get_close_matches(part, options, n=3)
                hint = f"; did you mean {close}?" if close else (f"; fields: {sorted(options)}" if options else "")
                raise OLMoConfigurationError(f"unknown config key {key!r}: {where} has no field {part!r}{hint}")


def load_config(cls: Type[C], path: str | Path, overrides: list[str] | None = None) -> C:
    """Decode a YAML/JSON file into ``cls`` (registering olmo-sam's classes first), with dotted
    ``overrides`` checked by :func:`check_overrides` against the decoded file."""
    import olmo_sam  # noqa: F401

    p = str(path)
    data = read_json(p, what="config file") if p.endswith(".json") else read_yaml(p)
    if not isinstance(data, dict):
        raise OLMoConfigurationError(f"{p}: a config file is a mapping of its fields, got {type(data).__name__}")
    check_registered_types(cls, data)
    if overrides:
        check_overrides(cls.from_dict(data), overrides)
    return cls.from_dict(data, overrides=overrides)
