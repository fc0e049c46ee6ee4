"""Pretraining (or fine-tuning) validation loss of a model on token files.

The loss every forgetting measurement is built on: L_PT(theta) is the mean next-token
cross-entropy over a fixed held-out token file ([SAM-PT] Sec 2.1, App C.2). Windows are the
file's consecutive ``seq_len + 1``-token chunks in order, so the number is deterministic and
comparable across models. Works for an OLMo-core ``Transformer`` (returns logits) and a
Hugging Face causal LM (returns ``.logits``), quantized or not.

With ``mask_paths`` (bool files parallel to the token files, the label masks of a prepared
fine-tuning dataset, :mod:`olmo_sam.finetune.data`) only target tokens count: a token is a label
iff its mask entry is True, the rule of OLMo-core's ``get_labels``. That is the fine-tuning
validation loss L_FT with response-only loss ([SAM-PT] App C.2).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, List, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from olmo_core.exceptions import OLMoConfigurationError

from ..data.tokens import WIDER_IDS_HEAD, check_token_file, token_dtype_for_vocab

__all__ = ["LossResult", "check_eval_token_files", "iter_windows", "lm_loss", "logits_of"]


@dataclass
class LossResult:
    loss: float
    tokens: int
    sequences: int

    @property
    def ppl(self) -> float:
        return math.exp(self.loss)


def check_eval_token_files(
    paths: Sequence[str | Path], dtype: np.dtype, vocab_size: Optional[int], what: str = "validation"
) -> None:
    """One clear error per unreadable evaluation token file: missing, empty, not a whole number of
    ``dtype`` ids, ids beyond the vocabulary, or ids of a wider dtype (a loose uint32 file read as
    uint16) (:func:`olmo_sam.data.tokens.check_token_file`). Remote paths are left alone."""
    from olmo_core.io import is_url

    vocab = "the model's vocabulary" + (f" (vocab_size {vocab_size})" if vocab_size else "")
    for raw in paths:
        if not is_url(str(raw)):
            check_token_file(
                Path(raw),
                dtype,
                what=f"{what} token",
                vocab=vocab,
                bound=None if vocab_size is None else (vocab_size, f"the model's vocab_size {vocab_size}"),
                fix="give token files written by 'olmo-sam data tokenize' for this model's tokenizer",
                head_tokens=WIDER_IDS_HEAD,
            )


def iter_windows(
    paths: Sequence[str | Path],
    seq_len: int,
    dtype: np.dtype,
    max_sequences: Optional[int] = None,
) -> Iterator[np.ndarray]:
    """Consecutive non-overlapping ``seq_len + 1`` windows over the files, in order."""
    n = 0
    for path in paths:
        arr = np.memmap(path, dtype=dtype, mode="r")
        for start in range(0, len(arr) - seq_len, seq_len):
            if max_sequences is not None and n >= max_sequences:
                return
            yield np.asarray(arr[start : start + seq_len + 1], dtype=np.int64)
            n += 1


def logits_of(output) -> torch.Tensor:
    if isinstance(output, torch.Tensor):
        return output
    if hasattr(output, "logits"):
        return output.logits
    raise TypeError(f"cannot find logits in model output of type {type(output).__name__}")


@torch.no_grad()
def lm_loss(
    model: torch.nn.Module | Callable[[torch.Tensor], object],
    paths: Sequence[str | Path],
    *,
    seq_len: int,
    vocab_size: Optional[int] = None,
    dtype: Optional[np.dtype] = None,
    batch_size: int = 8,
    max_sequences: Optional[int] = None,
    device: Optional[torch.device] = None,
    ignore_ids: Sequence[int] = (),
    mask_paths: Optional[Sequence[str | Path]] = None,
) -> LossResult:
    """Mean next-token CE (nats/token) of ``model`` over ``paths``.

    :param ignore_ids: label ids excluded from the mean (e.g. padding).
    :param mask_paths: optional bool label-mask files, one per token file and of the same
        length; tokens whose mask entry is False are not counted as labels.
    """
    if not paths:
        raise OLMoConfigurationError("lm_loss: no validation token files given")
    if mask_paths is not None:
        _check_masks(paths, mask_paths, dtype, vocab_size)
    if dtype is None:
        if vocab_size is None:
            raise OLMoConfigurationError("lm_loss: give 'dtype' or 'vocab_size' of the token files")
        dtype = token_dtype_for_vocab(vocab_size)
    check_eval_token_files(paths, dtype, vocab_size)
    if device is None:
        try:
            device = next(model.parameters()).device  # type: ignore[union-attr]
        except (AttributeError, StopIteration):
            device = torch.device("cpu")
    was_training = getattr(model, "training", False)
    if hasattr(model, "eval"):
        model.eval()  # type: ignore[union-attr]
    total, count, seqs = 0.0, 0, 0
    batch: List[np.ndarray] = []

    masks: List[np.ndarray] = []

    def flush():
        nonlocal total, count, seqs
        x = torch.from_numpy(np.stack(batch)).to(device)
        inputs, labels = x[:, :-1], x[:, 1:].clone()
        for i in ignore_ids:
            labels[labels == i] = -100
        if masks:
            keep = torch.from_numpy(np.stack(masks)[:, 1:].astype(bool)).to(device)
            labels[~keep] = -100
            masks.clear()
        logits = logits_of(model(inputs)).float()
        loss = F.cross_entropy(
            logits.reshape(-1, logits.shape[-1]), labels.reshape(-1), reduction="sum", ignore_index=-100
        )
        total += float(loss)
        count += int((labels != -100).sum())
        seqs += len(batch)
        batch.clear()

    windows = iter_windows(paths, seq_len, dtype, max_sequences)
    mask_windows = (
        iter_windows(mask_paths, seq_len, np.dtype(np.bool_), max_sequences) if mask_paths is not None else None
    )
    for w in windows:
        batch.append(w)
        if mask_windows is not None:
            masks.append(next(mask_windows))
        if len(batch) == batch_size:
            flush()
    if batch:
        flush()
    if was_training and hasattr(model, "train"):
        model.train()  # type: ignore[union-attr]
    if count == 0:
        if seqs and mask_paths is not None:
            raise OLMoConfigurationError(
                f"lm_loss: the label masks {list(map(str, mask_paths))} mark no target token in "
                "the evaluated windows; nothing to evaluate"
            )
        raise OLMoConfigurationError(
            f"lm_loss: the validation files {list(map(str, paths))} hold fewer than "
            f"{seq_len + 1} tokens; nothing to evaluate"
        )
    return LossResult(loss=total / count, tokens=count, sequences=seqs)


def _check_masks(
    paths: Sequence[str | Path],
    mask_paths: Sequence[str | Path],
    dtype: Optional[np.dtype],
    vocab_size: Optional[int],
) -> None:
    if len(mask_paths) != len(paths):
        raise OLMoConfigurationError(
            f"lm_loss: {len(mask_paths)} mask file(s) for {len(paths)} token file(s); give one "
            "label-mask file per token file"
        )
    if dtype is None and vocab_size is not None:
        dtype = token_dtype_for_vocab(vocab_size)
    itemsize = np.dtype(dtype).itemsize if dtype is not None else None
    for tp, mp in zip(paths, mask_paths):
        n_mask = Path(mp).stat().st_size
        if itemsize is not None and Path(tp).stat().st_size != n_mask * itemsize:
            raise OLMoConfigurationError(
                f"lm_loss: mask file {mp} holds {n_mask} entries but {tp} holds "
                f"{Path(tp).stat().st_size // itemsize} tokens; they must be parallel"
            )
