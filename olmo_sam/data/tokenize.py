"""Tokenize a stream of documents into OLMo-core token files, split into train/validation.

Each document becomes its token ids followed by EOS (OLMo-2's convention: no BOS). Whether a
document goes to validation is a function of ``(seed, document index)`` only
(:func:`is_validation`), so the split is reproducible and independent of batching or sharding.
The whole output directory is built next to its destination and renamed into place, so a crash
never leaves a half-written dataset under the final name.
"""

from __future__ import annotations

import hashlib
import itertools
from pathlib import Path
from typing import Any, Dict, Iterable, Iterator, List, Optional, Sequence

import numpy as np
from olmo_core.exceptions import OLMoConfigurationError
from tqdm import tqdm

from ..output import atomic_dir
from .tokenizer import tokenizer_config, tokenizer_fingerprint
from .tokens import TokenDataMeta, TokenFileWriter, write_meta

__all__ = ["is_validation", "tokenize_documents", "DEFAULT_VAL_FRACTION", "DEFAULT_SPLIT_SEED"]

DEFAULT_VAL_FRACTION = 0.02
DEFAULT_SPLIT_SEED = 0
#: tokens per shard file (about 2 GiB of uint16 / 4 GiB of uint32)
DEFAULT_SHARD_TOKENS = 1 << 30


def is_validation(seed: int, index: int, val_fraction: float) -> bool:
    """Deterministic per-document split: a hash of ``(seed, index)`` compared to the fraction."""
    h = hashlib.blake2b(f"{seed}:{index}".encode(), digest_size=8).digest()
    return int.from_bytes(h, "big") / 2.0**64 < val_fraction


def _batches(docs: Iterable[str], size: int) -> Iterator[List[str]]:
    it = iter(docs)
    while batch := list(itertools.islice(it, size)):
        yield batch


def tokenize_documents(
    docs: Iterable[str],
    tokenizer,
    out_dir: str | Path,
    *,
    val_fraction: float = DEFAULT_VAL_FRACTION,
    seed: int = DEFAULT_SPLIT_SEED,
    source: Optional[Dict[str, Any]] = None,
    max_documents: Optional[int] = None,
    shard_tokens: int = DEFAULT_SHARD_TOKENS,
    batch_size: int = 256,
    overwrite: bool = False,
    inputs: Sequence[str | Path] = (),
    show_progress: Optional[bool] = None,
) -> TokenDataMeta:
    """Tokenize ``docs`` with the Hugging Face ``tokenizer`` into a prepared dataset at ``out_dir``.

    :param val_fraction: expected fraction of documents held out for validation, in [0, 1).
    :param max_documents: stop after this many documents (empty ones included).
    :param inputs: the paths the documents and the tokenizer come from: ``out_dir`` may neither be
        nor hold one of them (``overwrite`` would delete them).
    :returns: the written :class:`~olmo_sam.data.tokens.TokenDataMeta`.
    """
    if not (0.0 <= val_fraction < 1.0):
        raise OLMoConfigurationError(f"'val_fraction' must be in [0, 1), got {val_fraction}")
    out = Path(out_dir)
    tok_cfg = tokenizer_config(tokenizer)
    eos = tok_cfg.eos_token_id
    with atomic_dir(out, overwrite=overwrite, inputs=inputs) as tmp:
        writers = {
            split: TokenFileWriter(tmp, split, tok_cfg.vocab_size, eos, shard_tokens) for split in ("train", "val")
        }
        if max_documents is not None:
            docs = itertools.islice(docs, max_documents)
        index = 0
        empty = 0
        bar = tqdm(
            desc=f"tokenizing -> {out.name}", unit="doc", disable=None if show_progress is None else not show_progress
        )
        for batch in _batches(docs, batch_size):
            keep = [(index + i, d) for i, d in enumerate(batch) if d.strip()]
            empty += len(batch) - len(keep)
            encodings = tokenizer.backend_tokenizer.encode_batch([d for _, d in keep], add_special_tokens=False)
            for (i, _), enc in zip(keep, encodings):
                ids = np.fromiter(itertools.chain(enc.ids, (eos,)), dtype=np.int64, count=len(enc.ids) + 1)
                split = "val" if is_validation(seed, i, val_fraction) else "train"
                writers[split].add(ids)
            index += len(batch)
            bar.update(len(batch))
            bar.set_postfix(tokens=writers["train"].tokens + writers["val"].tokens)
        bar.close()
        splits = {split: w.close() for split, w in writers.items()}
        what = (source or {}).get("description", "the input")
        if index == 0 or splits["train"]["documents"] + splits["val"]["documents"] == 0:
            raise OLMoConfigurationError(
                f"{what} has no documents" + (f" ({empty} empty ones skipped)" if empty else "")
            )
        if splits["train"]["documents"] == 0:
            raise OLMoConfigurationError(f"{what}: no document went to the train split; lower --val-fraction")
        if val_fraction > 0 and splits["val"]["documents"] == 0:
            raise OLMoConfigurationError(
                f"{what}: none of its {splits['train']['documents']} documents went to the "
                f"validation split at val_fraction={val_fraction}; raise --val-fraction or give "
                "more documents"
            )
        if val_fraction == 0:
            del splits["val"]
        local = Path(tokenizer.name_or_path).exists()
        tokenizer.save_pretrained(tmp / "tokenizer")
        meta = TokenDataMeta(
            tokenizer={
                "identifier": str(Path(tokenizer.name_or_path).resolve()) if local else tokenizer.name_or_path,
                "hub": not local,
                "fingerprint": tokenizer_fingerprint(tokenizer),
                "vocab_size": tok_cfg.vocab_size,
                "eos_token_id": tok_cfg.eos_token_id,
                "pad_token_id": tok_cfg.pad_token_id,
                "bos_token_id": tok_cfg.bos_token_id,
            },
            dtype=writers["train"].dtype.name,
            splits=splits,
            source={**(source or {}), "documents_read": index, "empty_documents_skipped": empty},
            val_fraction=val_fraction,
            seed=seed,
        )
        write_meta(tmp, meta)
    return meta
