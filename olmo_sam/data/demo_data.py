"""One call that prepares the CPU demo's pretraining data: corpus, tokenizer, token files.

:func:`prepare_demo_data` fetches the demo corpus (:mod:`olmo_sam.data.corpus`), trains a small
byte-level BPE on its *training* documents, tokenizes everything into OLMo-core token files with a
by-document train/validation split, and records what it did in ``demo.json``. A second call with
the same settings returns the cached result without recomputing.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional, Sequence

from olmo_core.data import TokenizerConfig

from ..output import atomic_write_text
from .corpus import DEMO_CORPUS, DOC_CHARS, iter_demo_documents
from .tokenize import is_validation, tokenize_documents
from .tokenizer import check_bpe_vocab, load_tokenizer, tokenizer_config, train_bpe
from .tokens import split_files

__all__ = ["DemoData", "prepare_demo_data", "DEMO_VOCAB_SIZE", "DEMO_VAL_FRACTION"]

#: BPE size for the tiny CPU model: small enough that the embedding stays cheap and a 2-layer
#: model learns quickly, large enough that a token is about 3 characters of English.
DEMO_VOCAB_SIZE = 2048
DEMO_VAL_FRACTION = 0.05
DEMO_SEED = 0
_RECORD = "demo.json"


@dataclass
class DemoData:
    root: Path
    tokenizer_dir: Path
    train_paths: List[Path]
    val_paths: List[Path]
    vocab_size: int
    eos_token_id: int
    pad_token_id: int
    bos_token_id: Optional[int]
    tokenizer: TokenizerConfig
    train_tokens: int
    val_tokens: int

    @property
    def model_vocab_size(self) -> int:
        """Embedding rows for a model on this data (the vocabulary padded to a multiple of 128)."""
        return self.tokenizer.padded_vocab_size()


def _settings(vocab_size: int, books: Optional[Sequence[str]], val_fraction: float, seed: int) -> dict:
    return {
        "corpus": f"{DEMO_CORPUS.spec} sha256:{DEMO_CORPUS.sha256}",
        "books": sorted(books) if books is not None else None,
        "doc_chars": DOC_CHARS,
        "vocab_size": vocab_size,
        "val_fraction": val_fraction,
        "seed": seed,
    }


def _load(root: Path, record: dict) -> DemoData:
    tok_dir = root / "tokenizer"
    tok = load_tokenizer(tok_dir)
    cfg = tokenizer_config(tok, identifier=str(tok_dir.resolve()))
    tokens = root / "tokens"
    return DemoData(
        root=root,
        tokenizer_dir=tok_dir,
        train_paths=split_files(tokens, "train"),
        val_paths=split_files(tokens, "val"),
        vocab_size=cfg.vocab_size,
        eos_token_id=cfg.eos_token_id,
        pad_token_id=cfg.pad_token_id,
        bos_token_id=cfg.bos_token_id,
        tokenizer=cfg,
        train_tokens=record["train_tokens"],
        val_tokens=record["val_tokens"],
    )


def prepare_demo_data(
    out_dir: str | Path,
    vocab_size: int = DEMO_VOCAB_SIZE,
    *,
    books: Optional[Sequence[str]] = None,
    val_fraction: float = DEMO_VAL_FRACTION,
    seed: int = DEMO_SEED,
    cache_dir: Optional[Path] = None,
    show_progress: Optional[bool] = None,
) -> DemoData:
    """Prepare (or reuse) the demo's tokenizer and token files under ``out_dir``.

    :param books: only these books of the corpus (default: all 18).
    """
    root = Path(out_dir)
    settings = _settings(vocab_size, books, val_fraction, seed)
    record_path = root / _RECORD
    if record_path.exists():
        record = json.loads(record_path.read_text())
        if record.get("settings") == settings:
            try:
                return _load(root, record)
            except Exception:  # incomplete or edited: rebuild below
                pass
    check_bpe_vocab(vocab_size)
    docs = list(iter_demo_documents(books, cache_dir=cache_dir))  # (a bad book is refused here)
    root.mkdir(parents=True, exist_ok=True)  # (after the checks: a refusal leaves no empty folder)
    if record_path.exists():
        record_path.unlink()
    # The tokenizer sees the training documents only.
    train_docs = (d for i, d in enumerate(docs) if not is_validation(seed, i, val_fraction))
    tok = train_bpe(train_docs, vocab_size, root / "tokenizer")
    meta = tokenize_documents(
        docs,
        tok,
        root / "tokens",
        val_fraction=val_fraction,
        seed=seed,
        source={
            "description": f"demo corpus {DEMO_CORPUS.spec}",
            "registry": DEMO_CORPUS.registry,
            "package": DEMO_CORPUS.spec,
            "sha256": DEMO_CORPUS.sha256,
            "license": DEMO_CORPUS.license,
            "books": settings["books"],
        },
        overwrite=True,
        show_progress=show_progress,
    )
    record = {
        "settings": settings,
        "train_tokens": meta.splits["train"]["tokens"],
        "val_tokens": meta.splits["val"]["tokens"],
        "documents": {s: meta.splits[s]["documents"] for s in meta.splits},
    }
    atomic_write_text(record_path, json.dumps(record, indent=2))
    return _load(root, record)
