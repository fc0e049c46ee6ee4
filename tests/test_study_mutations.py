"""Every shipped study file, each value in it broken in turn, through ``olmo-sam study run --dry-run``.

For every node of every shipped study file (``recipes/studies/*.yaml``,
``olmo_sam/study/files/*.yaml``) the test writes a copy with that one node replaced -- by a value
of the wrong type, zero, a negative number, an empty list, or a duplicate (a list entry given
twice, a mapping key given twice in the YAML text) -- and runs the dry run in process (click's
``CliRunner``). Each case must end one of two ways:

* **refused cleanly**: a non-zero exit, no traceback, and exactly one ``Error:`` line naming the
  study-file field it is about (its key or section);
* **accepted cleanly**: exit 0 with the plan printed -- allowed only where the mutation is a valid
  value: a zero where the field documents zero (``ZERO_OK``). A wrong type, a negative number, an
  empty list and a duplicate are never valid, so they must be refused.

A bounded, derandomized hypothesis search then puts arbitrary values (numbers of any sign, text,
booleans, lists, mappings) at random places under the same oracle: a refused case must be refused
cleanly, and an accepted value must not be one the rules above forbid.
"""

from __future__ import annotations

import copy
import math
import re
from collections import Counter
from pathlib import Path
from typing import Any, Iterator, List, Tuple

import pytest
import yaml
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from olmo_sam.cli import main
from olmo_sam.files import read_yaml

ROOT = Path(__file__).resolve().parents[1]
STUDY_FILES = sorted([*ROOT.glob("recipes/studies/*.yaml"), *ROOT.glob("olmo_sam/study/files/*.yaml")])

#: leaf keys where 0 is a documented value: seeds; ``eval_interval: 0`` (no in-loop evaluation),
#: ``rho: 0`` (SAM without its perturbation, >= 0 by SAMConfig), ``power_iters: 0`` (skips them)
ZERO_OK = {"seed", "seeds", "eval_interval", "rho", "power_iters"}

Path_ = Tuple[Any, ...]


def _show(path: Path_) -> str:
    out = ""
    for k in path:
        out += f"[{k}]" if isinstance(k, int) else (f".{k}" if out else str(k))
    return out


def nodes(data: Any, path: Path_ = ()) -> Iterator[Tuple[Path_, Any]]:
    """Every node below the root (mappings, lists and scalars), parents before children."""
    items = data.items() if isinstance(data, dict) else enumerate(data) if isinstance(data, list) else ()
    for k, v in items:
        yield path + (k,), v
        yield from nodes(v, path + (k,))


def _replace(data: Any, path: Path_, value: Any) -> Any:
    data = copy.deepcopy(data)
    node = data
    for k in path[:-1]:
        node = node[k]
    node[path[-1]] = value
    return data


def _leaf_key(path: Path_) -> str:
    return next(str(k) for k in reversed(path) if not isinstance(k, int))


class _DupKey(dict):
    """A mapping written with its first key twice (the second time with ``value``)."""

    def __init__(self, items, key, value):
        super().__init__(items)
        self.dup = (key, value)


class _Dumper(yaml.SafeDumper):
    pass


_Dumper.add_representer(
    _DupKey, lambda d, m: d.represent_mapping("tag:yaml.org,2002:map", [*dict(m).items(), m.dup])
)


def _wrong_type(value: Any) -> Any:
    if isinstance(value, bool):
        return "no"  # a string where YAML's true/false belongs
    if isinstance(value, (int, float)):
        return "many"
    if isinstance(value, str):
        return 7
    if isinstance(value, list):
        return "all"  # a string where a list belongs (not to be read char by char)
    return ["x"]  # a list where a mapping belongs


def mutations(data: Any) -> Iterator[Tuple[str, Path_, Any, Any]]:
    """``(kind, path, new value, new document)`` for every node and every mutation that applies."""
    for path, value in nodes(data):
        yield "wrong type", path, _wrong_type(value), _replace(data, path, _wrong_type(value))
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            yield "zero", path, 0, _replace(data, path, 0)
            neg = -abs(value) if value else -1
            yield "negative", path, neg, _replace(data, path, neg)
        if isinstance(value, list):
            yield "empty list", path, [], _replace(data, path, [])
            if value:
                dup = [value[0], *value]
                yield "duplicate", path, dup, _replace(data, path, dup)
        if isinstance(value, dict) and value:
            first = next(iter(value))
            yield "duplicate", path, value, _replace(data, path, _DupKey(value, first, value[first]))


def must_refuse(kind: str, path: Path_, old: Any, new: Any) -> bool:
    """Whether ``new`` at ``path`` is never a valid value (so an exit 0 is a failure)."""
    if kind == "duplicate" or _category(new) != _category(old):
        return True
    if isinstance(new, list):
        return not new or any(new.count(x) > 1 for x in new if not isinstance(x, (dict, list)))
    if _category(new) == "number":
        return new < 0 or math.isnan(new) or (new == 0 and _leaf_key(path) not in ZERO_OK)
    return False


def _category(v: Any) -> str:
    if isinstance(v, bool):
        return "bool"
    if isinstance(v, (int, float)):
        return "number"
    return {str: "text", list: "list", dict: "mapping", _DupKey: "mapping"}.get(type(v), type(v).__name__)


_runner = CliRunner()


def dry_run(study_file: Path, doc: Any, tmp: Path) -> Tuple[str, str]:
    """``("ok" | "refused", output)`` of the dry run of ``doc``; any unclean end raises
    AssertionError with the reason."""
    tmp.mkdir(parents=True, exist_ok=True)
    f = tmp / study_file.name
    f.write_text(yaml.dump(doc, Dumper=_Dumper, sort_keys=False))
    res = _runner.invoke(main, ["study", "run", str(f), "--dry-run", "--allow-missing-data", "--out", str(tmp / "out")])
    out = res.output
    if res.exception is not None and not isinstance(res.exception, SystemExit):
        raise AssertionError(f"traceback: {type(res.exception).__name__}: {res.exception}")
    assert "Traceback" not in out, out
    assert not (tmp / "out").exists(), "the dry run wrote its output directory"
    if res.exit_code == 0:
        assert re.search(r"^study '.*' -> ", out, re.M), out
        return "ok", out
    errors = [ln for ln in out.splitlines() if ln.startswith("Error:")]
    assert len(errors) == 1 and out.rstrip().endswith(errors[0]) and len(errors[0]) > 12, out
    return "refused", errors[0]


def _names_field(message: str, path: Path_) -> bool:
    """The message cites the field: one of its keys (or its section) as written in the file."""
    keys = [str(k) for k in path if not isinstance(k, int)]
    return any(re.search(rf"(?<![\w-]){re.escape(k)}(?![\w-])", message) for k in keys) or "line" in message


def _check(study_file: Path, kind: str, path: Path_, old: Any, new: Any, doc: Any, tmp: Path, counts: Counter):
    where = f"{study_file.name}: {_show(path)} ({kind}) = {new!r}"
    try:
        outcome, text = dry_run(study_file, doc, tmp)
    except AssertionError as e:
        raise AssertionError(f"{where}: {e}") from None
    if outcome == "ok":
        assert not must_refuse(kind, path, old, new), f"{where}: accepted:\n{text}"
        counts["accepted legitimately"] += 1
    else:
        assert _names_field(text, path), f"{where}: the message does not name the field: {text}"
        counts["refused cleanly"] += 1


@pytest.mark.parametrize("study_file", STUDY_FILES, ids=[p.name for p in STUDY_FILES])
def test_shipped_study_file_plans(study_file, tmp_path):
    outcome, out = dry_run(study_file, read_yaml(study_file), tmp_path)
    assert outcome == "ok", out


def test_every_node_of_every_study_file_broken_in_turn(tmp_path):
    counts: Counter = Counter()
    for study_file in STUDY_FILES:
        data = read_yaml(study_file)
        for i, (kind, path, new, doc) in enumerate(mutations(data)):
            old = next(v for p, v in nodes(data) if p == path)
            _check(study_file, kind, path, old, new, doc, tmp_path / f"{study_file.stem}-{i}", counts)
            counts["cases"] += 1
    print(f"\nstudy-file mutations: {dict(counts)}")
    assert counts["cases"] == counts["refused cleanly"] + counts["accepted legitimately"]
    assert counts["refused cleanly"] > 0.9 * counts["cases"]


_values = st.one_of(
    st.integers(-10**6, 10**6), st.floats(allow_nan=False, allow_infinity=True), st.booleans(), st.none(),
    st.text(max_size=6), st.lists(st.integers(-3, 3), max_size=3), st.dictionaries(st.sampled_from(["a", "lr"]), st.integers(), max_size=1),
)  # fmt: skip


@settings(max_examples=150, derandomize=True, deadline=None, suppress_health_check=list(HealthCheck))
@given(file_index=st.integers(0, len(STUDY_FILES) - 1), node_index=st.integers(0, 10**6), new=_values)
def test_random_values_at_random_places(tmp_path_factory, file_index, node_index, new):
    study_file = STUDY_FILES[file_index]
    data = read_yaml(study_file)
    all_nodes = list(nodes(data))
    path, old = all_nodes[node_index % len(all_nodes)]
    kind = "none" if new is None else "random"
    if new is None:  # null means "the default": fine where the field has one, refused cleanly otherwise
        old = None
    _check(study_file, kind, path, old, new, _replace(data, path, new), tmp_path_factory.mktemp("h"), Counter())
