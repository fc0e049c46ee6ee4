"""Text sources for tokenization: a Hugging Face dataset (streamed), local text/JSONL files.

Every source is an iterator of document strings. Undecodable bytes, a missing text field or a
non-string value stop with an error naming the file (or dataset), the line and the field.
"""

from __future__ import annotations

import contextlib
import gzip
import json
from pathlib import Path
from typing import IO, Any, Iterator, List, Optional, Sequence

from olmo_core.exceptions import OLMoConfigurationError

__all__ = ["iter_hf_dataset", "iter_local_files", "expand_paths", "TEXT_SUFFIXES", "JSONL_SUFFIXES"]

TEXT_SUFFIXES = (".txt", ".md", ".rst")
JSONL_SUFFIXES = (".jsonl", ".jsonl.gz", ".json", ".json.gz", ".ndjson")


def _kind(path: Path) -> Optional[str]:
    name = path.name.lower()
    if name.endswith(JSONL_SUFFIXES):
        return "jsonl"
    if name.endswith(TEXT_SUFFIXES):
        return "text"
    return None


def expand_paths(paths: Sequence[str | Path]) -> List[Path]:
    """Files named in ``paths``; directories expand (recursively, sorted) to their text/JSONL files."""
    out: List[Path] = []
    for raw in paths:
        p = Path(raw)
        if p.is_dir():
            found = sorted(f for f in p.rglob("*") if f.is_file() and _kind(f))
            if not found:
                raise OLMoConfigurationError(
                    f"directory {p} holds no text ({', '.join(TEXT_SUFFIXES)}) or JSONL "
                    f"({', '.join(JSONL_SUFFIXES)}) files"
                )
            out.extend(found)
        elif p.is_file():
            if _kind(p) is None:
                raise OLMoConfigurationError(
                    f"{p}: unsupported file type; give text ({', '.join(TEXT_SUFFIXES)}) or JSONL "
                    f"({', '.join(JSONL_SUFFIXES)}) files"
                )
            out.append(p)
        else:
            raise OLMoConfigurationError(f"input file not found: {p}")
    if not out:
        raise OLMoConfigurationError("no input files given")
    return out


def _open(path: Path) -> IO[bytes]:
    return gzip.open(path, "rb") if path.name.lower().endswith(".gz") else open(path, "rb")


def _decode(raw: bytes, path: Path, encoding: str, where: str = "") -> str:
    try:
        return raw.decode(encoding)
    except UnicodeDecodeError as e:
        raise OLMoConfigurationError(
            f"{path}{where}: cannot decode as {encoding} (byte {e.start}: {raw[e.start : e.start + 4]!r}); "
            "convert the file to UTF-8 or pass the right --encoding"
        ) from None


def _iter_jsonl(path: Path, field: str, encoding: str) -> Iterator[str]:
    with _open(path) as f:
        for lineno, raw in enumerate(f, start=1):
            line = _decode(raw, path, encoding, f" line {lineno}").strip()
            if not line:
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as e:
                raise OLMoConfigurationError(f"{path} line {lineno}: not valid JSON ({e.msg})") from None
            yield _text_of(rec, field, f"{path} line {lineno}")


def _text_of(rec: Any, field: str, where: str) -> str:
    """The text of one record (a JSONL line or a dataset row): its ``field``, a string."""
    if not isinstance(rec, dict) or field not in rec:
        keys = sorted(rec) if isinstance(rec, dict) else type(rec).__name__
        raise OLMoConfigurationError(
            f"{where}: no text field '{field}' (found {keys}); pick the field with --text-field"
        )
    if not isinstance(rec[field], str):
        raise OLMoConfigurationError(f"{where}: field '{field}' is {type(rec[field]).__name__}, not a string")
    return rec[field]


def iter_local_files(
    paths: Sequence[str | Path],
    *,
    text_field: str = "text",
    encoding: str = "utf-8",
    text_docs: str = "file",
) -> Iterator[str]:
    """Documents from local files: JSONL (one record per line, ``text_field`` holds the text) and
    plain text (``text_docs='file'``: one document per file; ``'paragraphs'``: one per
    blank-line-separated paragraph)."""
    if text_docs not in ("file", "paragraphs"):
        raise OLMoConfigurationError(f"'text_docs' must be 'file' or 'paragraphs', got {text_docs!r}")
    for path in expand_paths(paths):
        if _kind(path) == "jsonl":
            yield from _iter_jsonl(path, text_field, encoding)
            continue
        with _open(path) as f:
            text = _decode(f.read(), path, encoding).replace("\r\n", "\n")
        if text_docs == "file":
            yield text
        else:
            for para in text.split("\n\n"):
                if para.strip():
                    yield para.strip("\n")


@contextlib.contextmanager
def hub_access(what: str) -> Iterator[None]:
    """A Hugging Face hub that cannot be reached (offline mode, no network) while reading ``what``
    is one :class:`~olmo_sam.preflight.CommandError` line naming it and the ways out, not the
    ``datasets`` traceback (it raises ``ConnectionError``, whose message names the cause)."""
    from ..preflight import CommandError

    try:
        yield
    except (ConnectionError, TimeoutError) as e:
        raise CommandError(
            f"{what}: the Hugging Face hub cannot be reached ({' '.join(str(e).split())}); connect to the "
            "network (and unset HF_HUB_OFFLINE), or give a local copy"
        ) from None


def iter_hf_dataset(
    dataset: str,
    *,
    name: Optional[str] = None,
    split: str = "train",
    text_field: str = "text",
    revision: Optional[str] = None,
    data_files: Optional[Sequence[str]] = None,
) -> Iterator[str]:
    """Documents of a Hugging Face dataset, streamed (nothing is downloaded up front).

    ``dataset`` is a hub id (e.g. ``mlfoundations/dclm-baseline-1.0``, ``bigcode/starcoderdata``,
    ``allenai/dolmino-mix-1124``), a local dataset directory, or a builder name (``json``,
    ``parquet``) with ``data_files``.
    """
    try:
        import datasets
    except ImportError as e:  # pragma: no cover - exercised only without the extra
        raise OLMoConfigurationError(
            "reading a Hugging Face dataset needs the 'datasets' package: pip install 'olmo-sam[hf]'"
        ) from e
    from ..preflight import looks_local

    if looks_local(dataset) and not Path(dataset).expanduser().exists():  # not looked up on the hub
        raise OLMoConfigurationError(f"--hf-dataset {dataset}: no such directory (and not a hub id such as org/name)")
    with hub_access(f"dataset {dataset!r}"):
        try:
            ds = datasets.load_dataset(
                dataset,
                name=name,
                split=split,
                streaming=True,
                revision=revision,
                data_files=list(data_files) if data_files else None,
            )
        except (FileNotFoundError, ValueError, datasets.exceptions.DatasetNotFoundError) as e:
            raise OLMoConfigurationError(f"cannot open dataset {dataset!r} (split {split!r}): {e}") from e
        columns = getattr(ds, "column_names", None)
        if columns is not None and text_field not in columns:
            raise OLMoConfigurationError(
                f"dataset {dataset!r} has no text field '{text_field}' (columns: {columns}); pick it with --text-field"
            )
        for i, rec in enumerate(ds):  # (streamed: the hub is read while iterating)
            yield _text_of(rec, text_field, f"dataset {dataset!r} record {i}")
