"""OLMo-core token files: the on-disk format of prepared pretraining data, and its checks.

A prepared dataset is a directory::

    meta.json                 TokenDataMeta: tokenizer identity, vocab size, dtype, splits, source
    tokenizer/                a copy of the Hugging Face tokenizer that produced the ids
    train-00000.npy, ...      token ids, raw arrays (no .npy header), every document ends in EOS
    val-00000.npy, ...

which is what OLMo-core's ``NumpyFSLDatasetConfig`` reads (``paths=...``, ``dtype=...``). The dtype
is :func:`token_dtype_for_vocab` (uint16 up to 65536 ids, else uint32), and
:func:`check_token_files` proves, before any compute, that token files match an experiment's
tokenizer.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
from olmo_core.data import TokenizerConfig
from olmo_core.exceptions import OLMoConfigurationError
from olmo_core.io import is_url

from ..output import atomic_write_text

__all__ = [
    "token_dtype_for_vocab",
    "looks_like_wider_ids",
    "META_FILE",
    "FORMAT",
    "SPLITS",
    "TokenDataMeta",
    "TokenFileWriter",
    "write_meta",
    "read_meta",
    "find_meta",
    "split_files",
    "check_token_files",
    "check_token_file",
]


def token_dtype_for_vocab(vocab_size: int) -> np.dtype:
    """The token-file dtype of this project: uint16 up to 65536 ids, else uint32.

    (OLMo-core alone would infer uint8 for <= 256 ids; :func:`olmo_sam.train.build_experiment`
    passes this dtype to its datasets explicitly.)"""
    return np.dtype(np.uint16) if vocab_size - 1 <= np.iinfo(np.uint16).max else np.dtype(np.uint32)


#: uint16 values read from a file's head to recognise token ids of another dtype
WIDER_IDS_HEAD = 1 << 16


def looks_like_wider_ids(head: np.ndarray) -> bool:
    """True when uint16 values are really little-endian uint32 ids (every second one, the high
    half, is 0 while the low halves are not all 0): a uint32 file read as uint16."""
    head = np.asarray(head)[: len(head) // 2 * 2]
    if head.dtype != np.uint16 or len(head) < 64:
        return False
    return bool((head[1::2] == 0).all() and (head[0::2] != 0).any())


META_FILE = "meta.json"
FORMAT = "olmo-sam-tokens/1"
SPLITS = ("train", "val")
#: tokens read from the head of a file to check ids against the vocabulary, and how many files
#: (the first ones) are read: the check must stay cheap for mixes of thousands of files
CHECK_HEAD_TOKENS = 1 << 18
CHECK_HEAD_FILES = 32


@dataclass
class TokenDataMeta:
    #: tokenizer identity: identifier, fingerprint, vocab_size, eos/pad/bos ids
    tokenizer: Dict[str, Any]
    dtype: str
    #: split -> {"files": [names], "documents": n, "tokens": n}
    splits: Dict[str, Dict[str, Any]] = field(default_factory=dict)
    #: where the text came from, and how it was split
    source: Dict[str, Any] = field(default_factory=dict)
    val_fraction: float = 0.0
    seed: int = 0
    format: str = FORMAT

    @property
    def vocab_size(self) -> int:
        return int(self.tokenizer["vocab_size"])

    def tokenizer_config(self, root: Optional[Path] = None) -> TokenizerConfig:
        """OLMo-core's ``TokenizerConfig`` of the data (identifier: the saved copy when local)."""
        ident = self.tokenizer.get("identifier")
        if root is not None and (root / "tokenizer" / "tokenizer.json").exists() and not self.tokenizer.get("hub"):
            ident = str((root / "tokenizer").resolve())
        return TokenizerConfig(
            vocab_size=self.vocab_size,
            eos_token_id=int(self.tokenizer["eos_token_id"]),
            pad_token_id=int(self.tokenizer["pad_token_id"]),
            bos_token_id=self.tokenizer.get("bos_token_id"),
            identifier=ident,
        )


def write_meta(root: str | Path, meta: TokenDataMeta) -> Path:
    return atomic_write_text(Path(root) / META_FILE, json.dumps(asdict(meta), indent=2))


def read_meta(root: str | Path) -> TokenDataMeta:
    path = Path(root) / META_FILE
    if not path.exists():
        if Path(root).name == META_FILE and Path(root).is_file():  # (the file itself was given)
            inside = [str(Path(root).parent)]
        else:  # ('data demo --out D' -> D/tokens)
            inside = sorted(str(p.parent) for p in Path(root).glob(f"*/{META_FILE}"))
        fix = f"did you mean {inside[0]}?" if inside else "prepare one with 'olmo-sam data tokenize'"
        raise OLMoConfigurationError(f"{root} is not a prepared token dataset (no {META_FILE}); {fix}")
    from ..files import read_json

    data = read_json(path, what="token dataset meta.json")
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        fmt = data.get("format") if isinstance(data, dict) else None
        raise OLMoConfigurationError(f"{path}: not an olmo-sam token dataset (format {fmt!r})")
    try:
        return TokenDataMeta(**data)
    except TypeError as e:
        raise OLMoConfigurationError(f"{path}: not an olmo-sam token dataset meta.json ({e})") from None


def find_meta(path: str | Path) -> Optional[TokenDataMeta]:
    """The metadata of the prepared dataset that lists token file ``path``, if any."""
    p = Path(path)
    meta_path = p.parent / META_FILE
    if not meta_path.exists():
        return None
    from ..files import read_json

    read_json(meta_path, what="token dataset meta.json")  # a corrupt file is an error, not "no metadata"
    try:
        meta = read_meta(p.parent)
    except OLMoConfigurationError:  # another tool's meta.json
        return None
    listed = {f for s in meta.splits.values() for f in s.get("files", [])}
    return meta if p.name in listed else None


def split_files(root: str | Path, split: str) -> List[Path]:
    """The token files of ``split`` ('train' or 'val') of a prepared dataset."""
    if split not in SPLITS:
        raise OLMoConfigurationError(f"split must be one of {SPLITS}, got {split!r}")
    meta = read_meta(root)
    if split not in meta.splits:
        raise OLMoConfigurationError(f"{root} has no '{split}' split")
    return [Path(root) / f for f in meta.splits[split]["files"]]


class TokenFileWriter:
    """Streams EOS-terminated documents of one split into ``{split}-NNNNN.npy`` shards.

    A shard is closed at the first document boundary after ``shard_tokens`` tokens. Files are
    written under their final names inside a directory that the caller publishes atomically.
    """

    def __init__(self, root: Path, split: str, vocab_size: int, eos_token_id: int, shard_tokens: int):
        if shard_tokens < 1:
            raise OLMoConfigurationError(f"'shard_tokens' must be >= 1, got {shard_tokens}")
        self.root, self.split = root, split
        self.dtype = token_dtype_for_vocab(vocab_size)
        self.vocab_size, self.eos, self.shard_tokens = vocab_size, eos_token_id, shard_tokens
        self.files: List[str] = []
        self.documents = 0
        self.tokens = 0
        self._f = None
        self._in_shard = 0

    def add(self, ids: np.ndarray) -> None:
        if len(ids) == 0 or ids[-1] != self.eos:
            raise ValueError("every document must end in EOS")
        if self._f is None:
            name = f"{self.split}-{len(self.files):05d}.npy"
            self.files.append(name)
            self._f = open(self.root / name, "wb")
            self._in_shard = 0
        ids.astype(self.dtype, copy=False).tofile(self._f)
        self.documents += 1
        self.tokens += len(ids)
        self._in_shard += len(ids)
        if self._in_shard >= self.shard_tokens:
            self._f.close()
            self._f = None

    def close(self) -> Dict[str, Any]:
        if self._f is not None:
            self._f.close()
            self._f = None
        return {"files": list(self.files), "documents": self.documents, "tokens": self.tokens}


def _tok_desc(tok: TokenizerConfig) -> str:
    return f"{tok.identifier or 'unnamed tokenizer'} (vocab_size={tok.vocab_size}, eos={tok.eos_token_id})"


def check_not_npy(path: Path, what: str) -> None:
    """A token file is a raw array of ids; one written by ``np.save`` starts with a NumPy header,
    which would be read as token ids."""
    with open(path, "rb") as f:
        if f.read(6) == b"\x93NUMPY":
            raise OLMoConfigurationError(
                f"{what} file {path} was written by np.save (it starts with a NumPy header): token files are "
                "raw arrays of ids; write them with array.tofile(path) or 'olmo-sam data tokenize'"
            )


def check_token_file(
    p: Path,
    dtype: Any,
    *,
    what: str,
    vocab: str,
    bound: Optional[Tuple[int, str]],
    fix: str,
    head_tokens: Optional[int] = CHECK_HEAD_TOKENS,
    wider_ids: bool = True,
) -> None:
    """One local token file of ``dtype`` ids, before any compute: it exists, is not empty, was
    not written by ``np.save``, holds a whole number of ids, and its first ``head_tokens`` ids
    (``None``: none read) are not uint32 ids read as uint16 (when ``wider_ids``) and lie below
    ``bound`` (``(vocab_size, how the message names it)``). ``what`` names the file's role,
    ``vocab`` the vocabulary its dtype comes from, ``fix`` ends each message. The one
    implementation behind :func:`check_token_files` (training data) and
    :func:`olmo_sam.evals.lm_loss.check_eval_token_files` (evaluation data)."""
    if not p.is_file():
        raise OLMoConfigurationError(f"{what} file not found: {p}; {fix}")
    size = p.stat().st_size
    if size == 0:
        raise OLMoConfigurationError(f"{what} file {p} is empty: no tokens; {fix}")
    check_not_npy(p, what)
    name = np.dtype(dtype).name
    if size % np.dtype(dtype).itemsize:
        raise OLMoConfigurationError(
            f"{what} file {p} has {size} bytes, not a whole number of {name} ids: it was not written for {vocab}; {fix}"
        )
    if head_tokens is None:
        return
    head = np.memmap(p, dtype=dtype, mode="r")[:head_tokens]
    if wider_ids and np.dtype(dtype) == np.uint16 and looks_like_wider_ids(head):
        raise OLMoConfigurationError(
            f"{what} file {p} holds uint32 ids (every second uint16 is 0) but {vocab} is read as uint16: re-write "
            f"it as uint16, or keep the meta.json of its prepared dataset next to it; {fix}"
        )
    if bound is not None and len(head) and int(head.max()) >= bound[0]:
        raise OLMoConfigurationError(
            f"{what} file {p} contains token id {int(head.max())} >= {bound[1]}: another tokenizer (or dtype) "
            f"wrote it (read as {name}); {fix}"
        )


def check_token_files(paths: Sequence[str | Path], tokenizer: TokenizerConfig, what: str = "data") -> None:
    """Errors (before any compute) if local token files do not fit ``tokenizer``.

    Checks: the files exist and are non-empty whole arrays of the experiment's dtype; files that a
    prepared dataset lists were tokenized with the same vocabulary size and EOS id (and dtype);
    the first :data:`CHECK_HEAD_TOKENS` ids (of the first :data:`CHECK_HEAD_FILES` files) are all
    below the vocabulary size (:func:`check_token_file`). Remote paths (``s3://``, ``gs://``,
    ``https://``) are left to OLMo-core.
    """
    dtype = token_dtype_for_vocab(tokenizer.vocab_size)
    fix = "re-tokenize the data with the model's tokenizer ('olmo-sam data tokenize') or train with the data's"
    for n, raw in enumerate(paths):
        if is_url(str(raw)):
            continue
        p = Path(raw)
        meta = find_meta(p) if p.is_file() else None
        if meta is not None:
            mt = meta.tokenizer
            if int(mt["vocab_size"]) != tokenizer.vocab_size or int(mt["eos_token_id"]) != tokenizer.eos_token_id:
                raise OLMoConfigurationError(
                    f"{what} file {p} was tokenized with {mt.get('identifier')} "
                    f"(vocab_size={mt['vocab_size']}, eos={mt['eos_token_id']}), but the experiment's "
                    f"tokenizer is {_tok_desc(tokenizer)}: re-tokenize the data with the model's "
                    "tokenizer or train with the data's tokenizer"
                )
            if np.dtype(meta.dtype) != dtype:
                raise OLMoConfigurationError(
                    f"{what} file {p} holds {meta.dtype} ids but a vocabulary of "
                    f"{tokenizer.vocab_size} is read as {dtype.name}"
                )
        check_token_file(
            p,
            dtype,
            what=what,
            vocab=f"a vocabulary of {tokenizer.vocab_size}",
            bound=(tokenizer.vocab_size, f"the tokenizer's vocab_size {tokenizer.vocab_size} ({_tok_desc(tokenizer)})"),
            fix=fix,
            head_tokens=CHECK_HEAD_TOKENS if n < CHECK_HEAD_FILES else None,
            wider_ids=meta is None,
        )
