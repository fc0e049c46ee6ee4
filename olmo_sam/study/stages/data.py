"""The data stage: the pretraining tokens (the registry-fetched demo corpus, or prepared token
files) and their tokenizer, checked before anything runs (:func:`validate_data`)."""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional

from olmo_core.exceptions import OLMoConfigurationError

from ...config import Checked, ConfigError, setting
from ...data.tokenizer import MIN_BPE_VOCAB
from ...seeds import MAX_SEED
from ..job import Job
from .base import PLACEHOLDER_TOKENS, PlanBuilder, Stage

__all__ = ["DataStage", "validate_data", "placeholder_data", "tokenizer_of"]


def job_data(ctx) -> Dict[str, Any]:
    from ...data.tokenizer import load_tokenizer, tokenizer_config

    d = ctx.study.data
    if d.demo is not None:
        from ...data.corpus import DEMO_CORPUS
        from ...data.demo_data import prepare_demo_data

        dd = prepare_demo_data(ctx.out / "data", **d.demo)
        books = d.demo.get("books")
        return {
            "train": [str(p) for p in dd.train_paths],
            "val": [str(p) for p in dd.val_paths],
            "tokenizer_dir": str(dd.tokenizer_dir),
            "tokenizer": dd.tokenizer.as_config_dict(),
            "vocab_size": dd.vocab_size,
            "train_tokens": dd.train_tokens,
            "val_tokens": dd.val_tokens,
            "source": "demo corpus",
            "description": (
                f"the registry-fetched demo corpus ({DEMO_CORPUS.spec}, "
                f"{len(books) if books else 'all'} books), byte-level BPE of {dd.vocab_size} tokens, "
                f"{dd.train_tokens:,} training tokens"
            ),
        }
    train = list(d.train)
    if d.mix:
        from ...recipes.common import read_mix_file

        train += [str(p) for p in read_mix_file(d.mix)]
    missing = [p for p in train + list(d.val) if not Path(p).exists() and "://" not in p]
    if missing:
        raise ConfigError(f"data: token files not found: {missing[:5]}{' ...' if len(missing) > 5 else ''}")
    tok = load_tokenizer(d.tokenizer)
    cfg = tokenizer_config(tok, identifier=str(d.tokenizer))
    train_tokens = _local_token_count(train, cfg.vocab_size)
    return {
        "train": train,
        "val": list(d.val),
        "tokenizer_dir": None if d.tokenizer == "dolma2" else str(d.tokenizer),
        "tokenizer": cfg.as_config_dict(),
        "vocab_size": cfg.vocab_size,
        "train_tokens": train_tokens,
        "source": "token files",
        "description": f"{len(train)} token file(s)" + (f", {train_tokens:,} training tokens" if train_tokens else ""),
    }


def _local_token_count(paths, vocab_size: int):
    """Tokens in local token files (file size / token width); None if any file is remote."""
    from ...data.tokens import token_dtype_for_vocab

    if any("://" in str(p) for p in paths):
        return None
    width = token_dtype_for_vocab(vocab_size).itemsize
    return sum(Path(p).stat().st_size for p in paths) // width


def tokenizer_of(data: Dict[str, Any]):
    from olmo_core.data import TokenizerConfig

    return TokenizerConfig.from_dict(dict(data["tokenizer"]))


def _is_remote(path: str) -> bool:
    return "://" in str(path)


def _demo_books() -> List[str]:
    return sorted(_demo_book_names())


@dataclass
class DemoOptions(Checked):
    """``data.demo``: the options of :func:`olmo_sam.data.demo_data.prepare_demo_data` (``None``:
    its default; a test keeps the two equal)."""

    vocab_size: Optional[int] = setting(
        None, ge=MIN_BPE_VOCAB, hint=" (the byte-level BPE's 256 bytes and 2 special tokens)"
    )
    #: only these books of the corpus (default: all)
    books: Optional[List[str]] = setting(None, choices=_demo_books)
    val_fraction: Optional[float] = setting(None, gt=0, lt=1)
    seed: Optional[int] = setting(None, ge=0, le=MAX_SEED)
    cache_dir: Optional[str] = None


def validate_data(study, missing_ok: bool = False) -> List[str]:
    """Check the data section; missing files are errors, or (``missing_ok``: planning a study on
    a machine without its data) returned as warnings."""
    warnings: List[str] = []

    def missing(message: str) -> None:
        if not missing_ok:
            raise ConfigError(message)
        warnings.append(message)

    d = study.data
    if d.demo is not None:  # (its options are checked when the file is read: DataSpec.validate)
        return warnings
    for key in ("train", "val"):
        for i, path in enumerate(getattr(d, key)):  # (strings: DataSpec's declared type)
            if not _is_remote(path) and not Path(path).exists():
                missing(
                    f"data.{key}[{i}]: token file not found: {path}; fix the path or prepare it "
                    "with 'olmo-sam data tokenize'"
                )
    if d.mix and not Path(d.mix).exists():
        missing(f"data.mix: mix file not found: {d.mix}; fix the path")
    elif d.mix:
        from ...recipes.common import read_mix_file

        try:
            paths = read_mix_file(d.mix)
        except OLMoConfigurationError as e:
            raise ConfigError(f"data.mix: {e}") from None
        absent = [str(p) for p in paths if not _is_remote(str(p)) and not Path(p).exists()]
        if absent:
            missing(f"data.mix: token file(s) listed in {d.mix} not found: {absent[:3]}; fix the mix file")
    if d.tokenizer and d.tokenizer != "dolma2" and not Path(d.tokenizer).is_dir():
        missing(f"data.tokenizer: not 'dolma2' and not a tokenizer directory: {d.tokenizer}; fix the path")
    return warnings


@functools.lru_cache(maxsize=1)
def _demo_book_names() -> frozenset:
    """The demo corpus's book names (those of the pinned package: known without fetching it)."""
    from ...data.corpus import DEMO_BOOKS

    return DEMO_BOOKS


def placeholder_data(study) -> Dict[str, Any]:
    """What the data job will return, as far as building configs needs it."""
    from olmo_core.data import TokenizerConfig

    d = study.data
    if d.demo is not None:
        from ...data.demo_data import DEMO_VOCAB_SIZE

        v = int(d.demo.get("vocab_size", DEMO_VOCAB_SIZE))
        tok = TokenizerConfig(vocab_size=v, eos_token_id=v - 1, pad_token_id=v - 1)
    elif d.tokenizer == "dolma2" or not Path(str(d.tokenizer)).is_dir():
        tok = TokenizerConfig.dolma2()  # (a missing directory is reported by validate_data)
    else:
        from ...data.tokenizer import load_tokenizer, tokenizer_config

        tok = tokenizer_config(load_tokenizer(d.tokenizer), identifier=str(d.tokenizer))
    return {
        "train": list(d.train) or [PLACEHOLDER_TOKENS],
        "val": list(d.val) or [PLACEHOLDER_TOKENS],
        "tokenizer": tok.as_config_dict(),
        "tokenizer_dir": None,
    }


class DataStage(Stage):
    name = "data"
    measures = False
    kinds = {"data": job_data}

    def configured(self, study) -> bool:
        return True

    def plan(self, study, plan: PlanBuilder) -> None:
        from dataclasses import asdict

        plan.add(Job("data", "data", "data", params={"data": asdict(study.data)}))
