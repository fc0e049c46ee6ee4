"""The on-disk format of a prepared fine-tuning dataset, shared by adapters, CFS mixing and the
fine-tuner.

A prepared dataset is a directory::

    meta.json            FTDataMeta: name, vocab_size, dtype, eos id, per-split counts, source
    train.npy            token ids, raw array (no .npy header), documents joined (each ends in EOS)
    train.mask.npy       bool, same length: True where the token is a training target
    val.npy / val.mask.npy

The label mask is what OLMo-core's ``NumpyFSLDatasetConfig(label_mask_paths=...)`` reads: a token
counts in the loss iff its mask entry is True. Prompt/response data masks the prompt (response-
only loss); plain text is all-token loss. Files are written atomically.
"""

from __future__ import annotations

import json
import os
from dataclasses import MISSING, asdict, dataclass, field, fields
from pathlib import Path
from typing import Dict, Iterable, Iterator, Optional, Sequence, Tuple

import numpy as np
from olmo_core.exceptions import OLMoConfigurationError

from ..data.tokens import token_dtype_for_vocab
from ..output import atomic_write_text, json_digest

__all__ = ["FTDataMeta", "FTSplitWriter", "write_split", "read_meta", "split_paths", "iter_documents"]

SPLITS = ("train", "val")


@dataclass
class FTDataMeta:
    name: str
    vocab_size: int
    eos_token_id: int
    dtype: str
    #: split -> {"documents": n, "tokens": n, "target_tokens": n}
    splits: Dict[str, Dict[str, int]] = field(default_factory=dict)
    #: where the data came from (HF id / registry asset / files) and how it was formatted
    source: Dict[str, object] = field(default_factory=dict)
    tokenizer: Optional[str] = None


def split_paths(root: str | Path, split: str) -> Tuple[Path, Path]:
    if split not in SPLITS:
        raise OLMoConfigurationError(f"split must be one of {SPLITS}, got {split!r}")
    root = Path(root)
    return root / f"{split}.npy", root / f"{split}.mask.npy"


class FTSplitWriter:
    """Streams (tokens, mask) documents into ``{split}.npy``/``{split}.mask.npy`` atomically."""

    def __init__(self, root: str | Path, split: str, vocab_size: int, eos_token_id: int):
        self.tokens_path, self.mask_path = split_paths(root, split)
        self.tokens_path.parent.mkdir(parents=True, exist_ok=True)
        self.dtype = token_dtype_for_vocab(vocab_size)
        self.vocab_size = vocab_size
        self.eos = eos_token_id
        self._tmp_t = self.tokens_path.with_name(self.tokens_path.name + ".tmp")
        self._tmp_m = self.mask_path.with_name(self.mask_path.name + ".tmp")
        self._ft = open(self._tmp_t, "wb")
        self._fm = open(self._tmp_m, "wb")
        self.documents = 0
        self.tokens = 0
        self.target_tokens = 0

    def add(self, tokens: Sequence[int] | np.ndarray, mask: Sequence[bool] | np.ndarray) -> None:
        t = np.asarray(tokens, dtype=np.int64)
        m = np.asarray(mask, dtype=bool)
        if t.shape != m.shape or t.ndim != 1:
            raise ValueError(f"tokens and mask must be 1-D of equal length, got {t.shape} vs {m.shape}")
        if len(t) == 0:
            return
        if t.min() < 0 or t.max() >= self.vocab_size:
            raise ValueError(f"token id out of range [0, {self.vocab_size}): {t.min()}..{t.max()}")
        if t[-1] != self.eos:
            t = np.append(t, self.eos)
            m = np.append(m, m[-1])  # the EOS closing a target span is itself a target
        t.astype(self.dtype).tofile(self._ft)
        m.tofile(self._fm)
        self.documents += 1
        self.tokens += len(t)
        self.target_tokens += int(m.sum())

    def abort(self) -> None:
        """Close and delete the temporary files (nothing is published)."""
        self._ft.close()
        self._fm.close()
        self._tmp_t.unlink(missing_ok=True)
        self._tmp_m.unlink(missing_ok=True)

    def close(self) -> Dict[str, int]:
        self._ft.close()
        self._fm.close()
        if self.documents == 0 or self.target_tokens == 0:
            os.unlink(self._tmp_t)
            os.unlink(self._tmp_m)
            raise OLMoConfigurationError(
                f"{self.tokens_path.parent}: the '{self.tokens_path.stem}' split has no "
                f"{'documents' if self.documents == 0 else 'target tokens'}; check the input "
                "data and its prompt/response fields"
            )
        os.replace(self._tmp_t, self.tokens_path)
        os.replace(self._tmp_m, self.mask_path)
        return {"documents": self.documents, "tokens": self.tokens, "target_tokens": self.target_tokens}


def write_split(
    root: str | Path,
    split: str,
    docs: Iterable[Tuple[Sequence[int], Sequence[bool]]],
    *,
    vocab_size: int,
    eos_token_id: int,
) -> Dict[str, int]:
    w = FTSplitWriter(root, split, vocab_size, eos_token_id)
    try:
        for tokens, mask in docs:
            w.add(tokens, mask)
    except BaseException:
        w.abort()
        raise
    return w.close()


def write_meta(root: str | Path, meta: FTDataMeta) -> Path:
    return atomic_write_text(Path(root) / "meta.json", json.dumps(asdict(meta), indent=2))


def read_meta(root: str | Path) -> FTDataMeta:
    path = Path(root) / "meta.json"
    if not path.exists():
        raise OLMoConfigurationError(
            f"{root} is not a prepared fine-tuning dataset (no meta.json); prepare one with 'olmo-sam finetune prepare'"
        )
    from ..files import read_json

    data = read_json(path, what="fine-tuning dataset meta.json")
    known = {f.name for f in fields(FTDataMeta)}
    required = {f.name for f in fields(FTDataMeta) if f.default is MISSING and f.default_factory is MISSING}
    if not isinstance(data, dict) or set(data) - known or not required <= set(data):
        keys = sorted(data) if isinstance(data, dict) else type(data).__name__
        raise OLMoConfigurationError(
            f"{root} is not a prepared fine-tuning dataset (its meta.json has {keys}; a pretraining token "
            "dataset's?); prepare one with 'olmo-sam finetune prepare'"
        )
    return FTDataMeta(**data)


def data_digest(*roots: Optional[str | Path]) -> str:
    """A digest of prepared datasets' ``meta.json`` (source, preparation settings, split sizes):
    what tells the results of one preparation of a dataset directory from those of another (a
    dataset re-prepared with other settings, a mix rebuilt) in the same place."""
    return json_digest([asdict(read_meta(r)) if r else None for r in roots], 12)


def iter_documents(root: str | Path, split: str) -> Iterator[Tuple[np.ndarray, np.ndarray]]:
    """Yield (tokens, mask) per document (EOS-terminated) of a prepared split."""
    meta = read_meta(root)
    tp, mp = split_paths(root, split)
    tokens = np.fromfile(tp, dtype=np.dtype(meta.dtype))
    mask = np.fromfile(mp, dtype=bool)
    ends = np.flatnonzero(tokens == meta.eos_token_id)
    start = 0
    for end in ends:
        yield tokens[start : end + 1], mask[start : end + 1]
        start = end + 1
