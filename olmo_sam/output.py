"""The project's one home for atomic output: files (text/JSON, Markdown + CSV tables, matplotlib
figures) and whole directories.

Every file is written to a temporary sibling and moved into place with :func:`os.replace`, and a
directory is built beside its destination and renamed into place (:func:`atomic_dir`), so a
reader (or a killed writer) never sees a half-written table, plot or dataset. Inter-process locks
live in :mod:`olmo_sam.locks`.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import io
import json
import math
import operator
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Mapping, Sequence, Tuple

from olmo_core.exceptions import OLMoConfigurationError

__all__ = [
    "atomic_write",
    "atomic_write_text",
    "atomic_dir",
    "json_text",
    "json_digest",
    "plain",
    "differences",
    "write_json",
    "read_json_or_none",
    "markdown_table",
    "csv_text",
    "write_table",
    "save_figure",
]


def atomic_write(path: str | Path, write: Callable[[Path], None]) -> Path:
    """Call ``write(tmp)`` on a temporary sibling of ``path``, then ``os.replace`` it into place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        write(tmp)
        with open(tmp, "rb") as f:  # durable before it becomes visible
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def atomic_write_text(path: str | Path, text: str) -> Path:
    return atomic_write(path, lambda tmp: tmp.write_text(text))


def check_out_dir(out: str | Path, *, overwrite: bool = False, inputs: Sequence[str | Path] = ()) -> Path:
    """``out`` as a one-shot writer's output directory: it must not exist unless ``overwrite``,
    and it may never be, or hold, one of the ``inputs`` (replacing it would delete what is read:
    ``export-hf RUN --out RUN --overwrite`` replaced a whole training run by its export)."""
    out = Path(out)
    target = out.resolve()
    for src in inputs:
        if Path(src).exists() and (target == Path(src).resolve() or target in Path(src).resolve().parents):
            raise OLMoConfigurationError(
                f"--out {out} holds the input {src}: writing it would delete the input; choose another --out"
            )
    if out.exists() and not overwrite:
        raise OLMoConfigurationError(f"{out} already exists; pass --overwrite to replace it")
    return out


@contextlib.contextmanager
def logger_at_least(name: str, level: int) -> Iterator[None]:
    """The logger ``name`` passes only records of ``level`` and above inside the block (a library's
    chatter that is not for this command's reader); its own level is restored after it."""
    import logging

    log = logging.getLogger(name)
    previous = log.level
    log.setLevel(level)
    try:
        yield
    finally:
        log.setLevel(previous)


@contextlib.contextmanager
def atomic_dir(out: str | Path, *, overwrite: bool = False, inputs: Sequence[str | Path] = ()) -> Iterator[Path]:
    """Yield a temporary directory beside ``out``; when the block succeeds it replaces ``out``
    (:func:`check_out_dir`: which must not exist unless ``overwrite``, nor hold one of the
    ``inputs``), when it fails it is removed. Readers never see a half-written ``out``."""
    out = check_out_dir(out, overwrite=overwrite, inputs=inputs)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    os.chmod(tmp, 0o755)
    try:
        yield tmp
        if out.exists():
            if not overwrite:
                raise OLMoConfigurationError(f"{out} appeared while it was being written")
            shutil.rmtree(out)
        os.replace(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def json_safe(obj: Any) -> Any:
    """Non-finite floats become ``None`` (strict JSON has no NaN/Infinity)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, Mapping):
        return {str(k): json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    return obj


def json_text(payload: Any, *, keep_nan: bool = False, sort_keys: bool = False) -> str:
    """JSON, indented, with a trailing newline. Strict by default (non-finite floats as ``null``);
    ``keep_nan`` writes them as ``NaN``/``Infinity`` (Python's reader takes them back: a diverged
    run's loss stays NaN)."""
    if keep_nan:
        return json.dumps(payload, indent=2, sort_keys=sort_keys) + "\n"
    return json.dumps(json_safe(payload), indent=2, allow_nan=False, sort_keys=sort_keys) + "\n"


def write_json(path: str | Path, payload: Any, *, keep_nan: bool = False, sort_keys: bool = False) -> Path:
    """:func:`json_text` of ``payload``, written atomically."""
    return atomic_write_text(path, json_text(payload, keep_nan=keep_nan, sort_keys=sort_keys))


def json_digest(obj: Any, length: int = 16) -> str:
    """A short SHA-256 of ``obj``'s canonical JSON (cache keys, run ids)."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:length]


def plain(obj: Any) -> Any:
    """``obj`` as it reads back from JSON (tuples as lists; what JSON cannot hold as its ``str``):
    the form recorded settings are compared in."""
    return json.loads(json.dumps(obj, default=str))


def differences(
    old: Any, new: Any, prefix: str = "", same: Callable[[Any, Any], bool] = operator.eq
) -> List[Tuple[str, Any, Any]]:
    """``(dotted path, old value, new value)`` wherever two plain (JSON) values differ: mappings
    key by key (``probes.quantize.quant``), lists of mappings of one length entry by entry
    (``arms[1].rho``), anything else whole, by ``same``; a key on one side only is a difference
    (``None`` on the other). Recorded settings against new ones: a study's, a sweep's, a run's."""
    if isinstance(old, dict) and isinstance(new, dict):
        out: List[Tuple[str, Any, Any]] = []
        for k in sorted(set(old) | set(new), key=str):
            path = f"{prefix}.{k}" if prefix else str(k)
            if k not in old or k not in new:
                out.append((path, old.get(k), new.get(k)))
            else:
                out += differences(old[k], new[k], path, same)
        return out
    if (
        isinstance(old, list)
        and isinstance(new, list)
        and len(old) == len(new)
        and all(isinstance(x, dict) for x in old + new)
    ):
        return [d for i, (a, b) in enumerate(zip(old, new)) for d in differences(a, b, f"{prefix}[{i}]", same)]
    return [] if same(old, new) else [(prefix, old, new)]


def read_json_or_none(path: str | Path) -> Any:
    """The JSON in ``path``, or ``None`` if it is missing or unreadable (a torn write): for
    results this package wrote itself and may recompute (inputs: :func:`olmo_sam.files.read_json`)."""
    p = Path(path)
    if not p.exists():
        return None
    try:
        return json.loads(p.read_text())
    except json.JSONDecodeError:
        return None


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.4g}" if (value != 0 and abs(value) < 1e-3) else f"{value:.4f}"
    return str(value)


def markdown_table(columns: Sequence[str], rows: Sequence[Mapping[str, Any]]) -> str:
    """A GitHub-flavoured Markdown table; floats to 4 decimals, ``None`` as an empty cell."""
    lines = ["| " + " | ".join(columns) + " |", "|" + "|".join("---" for _ in columns) + "|"]
    for row in rows:
        cells = [_cell(row.get(c)).replace("|", "\\|") for c in columns]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def csv_text(columns: Sequence[str], rows: Sequence[Mapping[str, Any]]) -> str:
    """CSV with full-precision floats (``repr``) and ``None`` as an empty field."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(columns)
    for row in rows:
        w.writerow(["" if row.get(c) is None else row.get(c) for c in columns])
    return buf.getvalue()


def write_table(
    out_dir: str | Path, stem: str, columns: Sequence[str], rows: Sequence[Mapping[str, Any]]
) -> List[Path]:
    """``{stem}.md`` and ``{stem}.csv`` in ``out_dir``."""
    out_dir = Path(out_dir)
    return [
        atomic_write_text(out_dir / f"{stem}.md", markdown_table(columns, rows)),
        atomic_write_text(out_dir / f"{stem}.csv", csv_text(columns, rows)),
    ]


def save_figure(fig, path: str | Path, **kwargs: Dict[str, Any]) -> Path:
    """``fig.savefig`` atomically; the format comes from ``path``'s suffix."""
    path = Path(path)
    fmt = path.suffix.lstrip(".") or "png"
    return atomic_write(path, lambda tmp: fig.savefig(tmp, format=fmt, **kwargs))
