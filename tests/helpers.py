"""Small builders shared by the core tests (not fixtures: plain functions)."""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path
from typing import Dict, Iterator, List, Optional

import numpy as np
import torch

SEQ = 32


def tiny_experiment(
    corpus,
    save_folder: Path,
    optim,
    *,
    max_steps: int = 4,
    global_batch_size: int = 4,
    micro_batch_size: int = 2,
    max_grad_norm: Optional[float] = None,
    scheduler=None,
    callbacks: Optional[Dict] = None,
    **kw,
):
    from olmo_sam.models import model_config
    from olmo_sam.train import build_experiment

    cfg = build_experiment(
        model=model_config("tiny", vocab_size=corpus.vocab_size),
        tokenizer=corpus.tokenizer(),
        train_paths=[str(corpus.train)],
        save_folder=str(save_folder),
        optim=optim,
        sequence_length=SEQ,
        global_batch_size=global_batch_size,
        micro_batch_size=micro_batch_size,
        max_steps=max_steps,
        callbacks=callbacks,
        **kw,
    )
    cfg.train_module.scheduler = scheduler
    cfg.train_module.max_grad_norm = max_grad_norm
    return cfg


def token_batch(corpus, n: int, offset: int = 0, seq: int = SEQ) -> torch.Tensor:
    arr = np.fromfile(corpus.train, dtype=np.uint16)
    start = offset * n * seq
    x = arr[start : start + n * seq].astype(np.int64).reshape(n, seq)
    return torch.from_numpy(x)


def adamw(lr=2e-3, wd=0.1):
    from olmo_core.optim import AdamWConfig

    return AdamWConfig(lr=lr, betas=(0.9, 0.95), weight_decay=wd, eps=1e-8)


def losses(save_folder) -> Dict[int, float]:
    from olmo_sam.train import read_metrics

    return {s: m["train/CE loss"] for s, m in read_metrics(save_folder).items() if "train/CE loss" in m}


@contextlib.contextmanager
def logged_warnings(logger_name: str) -> Iterator[List[str]]:
    """The warning messages ``logger_name`` emits inside the block (a handler on the logger itself:
    OLMo-core's log set-up replaces pytest's caplog handler, and under xdist its stream is stale)."""
    records: List[str] = []
    handler = logging.Handler(logging.WARNING)
    handler.emit = lambda r: records.append(r.getMessage())  # type: ignore[method-assign]
    logger = logging.getLogger(logger_name)
    # (a library configured with logging.config.dictConfig earlier in this worker disables the
    # loggers that existed then; level and switch are restored after the block)
    disabled, level = logger.disabled, logger.level
    logger.disabled = False
    logger.setLevel(logging.WARNING)
    logger.addHandler(handler)
    try:
        yield records
    finally:
        logger.removeHandler(handler)
        logger.disabled, logger.level = disabled, level
