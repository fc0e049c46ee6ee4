"""The project's one reader of YAML files (study files, recipe and experiment configs).

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

import re
from pathlib import Path
from typing import Any

import yaml
from olmo_core.exceptions import OLMoConfigurationError

__all__ = ["StrictLoader", "parse_yaml", "read_yaml"]


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


def read_yaml(path: str | Path) -> Any:
    """The YAML document in the file ``path`` (see the module docstring); a missing or
    unreadable file is one line naming it."""
    p = Path(path)
    try:
        text = p.read_text()
    except FileNotFoundError:
        raise OLMoConfigurationError(f"{p}: file not found") from None
    except IsADirectoryError:
        raise OLMoConfigurationError(f"{p}: is a directory, expected a YAML file") from None
    except UnicodeDecodeError:
        raise OLMoConfigurationError(f"{p}: not a text file (expected YAML)") from None
    except OSError as e:
        raise OLMoConfigurationError(f"{p}: cannot be read ({e.strerror or e})") from None
    return parse_yaml(text, str(p))
