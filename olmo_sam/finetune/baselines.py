"""Data- and weight-space baselines that need no trainer hook: WiSE-FT and replay mixes.

(EWC and L2-to-init live in :mod:`olmo_sam.finetune.penalty`, LoRA in
:mod:`olmo_sam.finetune.lora`.)

* **WiSE-FT** (Wortsman et al. 2022, Eq. 1; the "Wise-FT" baseline of [CFS] Sec 3): post-hoc
  interpolation of the weights, ``theta = (1 - alpha) * theta_base + alpha * theta_ft``.
  ``alpha = 0`` is the base model, ``alpha = 1`` the fine-tuned one. ([CFS] writes the same
  average with alpha on the *base* weights; see :data:`olmo_sam.paper.WISE_FT_ALPHA_GRID`.)
* **Replay** ("P" in [CFS] Sec 3; Rolnick et al. 2019): pretraining data mixed into the
  fine-tuning stream. ``ratio`` is the number of replayed pretraining tokens relative to the
  task's training tokens, all-token loss on them. 1.0 is a 1:1 mix *in tokens*; [CFS] Sec 3
  matches rows (400K Dolma rows for 400K MetaMathQA samples), which, pretraining documents being
  longer than task samples, replays several times more tokens: to reproduce it, give the ratio of
  the two datasets' token counts (mean replay document length / mean task sample length).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Dict, List, Sequence, Tuple

import numpy as np
import torch
from olmo_core.exceptions import OLMoConfigurationError

from ..checkpoints import load_checkpoint_config, load_transformer, save_transformer
from ..data.tokens import token_dtype_for_vocab
from ..output import atomic_dir, check_out_dir, json_digest
from .data import FTDataMeta, iter_documents, read_meta, write_meta, write_split

log = logging.getLogger(__name__)

__all__ = ["wise_ft_state", "wise_ft", "save_wise_ft", "replay_pieces", "build_replay_mix"]


def _check_alpha(alpha: float) -> None:
    if not (0.0 <= alpha <= 1.0):
        raise OLMoConfigurationError(f"WiSE-FT alpha must be in [0, 1] (0 = base, 1 = fine-tuned), got {alpha}")


@torch.no_grad()
def wise_ft_state(base: Dict[str, torch.Tensor], ft: Dict[str, torch.Tensor], alpha: float) -> Dict[str, torch.Tensor]:
    """``(1 - alpha) * base + alpha * ft`` per tensor (module docstring). ``torch.lerp`` returns
    its end points exactly at alpha = 0 and 1."""
    _check_alpha(alpha)
    if base.keys() != ft.keys():
        raise OLMoConfigurationError(
            f"WiSE-FT: base and fine-tuned models differ in parameters: {sorted(base.keys() ^ ft.keys())[:5]}"
        )
    out = {}
    for k, b in base.items():
        f = ft[k]
        if b.shape != f.shape:
            raise OLMoConfigurationError(f"WiSE-FT: '{k}' has shape {tuple(b.shape)} vs {tuple(f.shape)}")
        out[k] = torch.lerp(b, f.to(b.dtype), alpha) if b.is_floating_point() else f.clone()
    return out


def wise_ft(base_model: torch.nn.Module, ft_model: torch.nn.Module, alpha: float) -> torch.nn.Module:
    """Interpolate into ``base_model``'s structure (a deep copy; the inputs are untouched)."""
    import copy

    model = copy.deepcopy(base_model)
    model.load_state_dict(wise_ft_state(base_model.state_dict(), ft_model.state_dict(), alpha))
    return model


def save_wise_ft(
    base: str | Path, ft: str | Path, alpha: float, out_dir: str | Path, *, overwrite: bool = False
) -> Path:
    """Interpolate two checkpoints and save the result as ``{out_dir}/step0`` with
    :func:`save_transformer` (loadable by :func:`olmo_sam.checkpoints.load_transformer` and by the
    trainer's ``load_path``), atomically; ``out_dir`` must not exist unless ``overwrite``."""
    _check_alpha(alpha)  # (before two checkpoints are loaded)
    if Path(base).resolve() == Path(ft).resolve():
        raise OLMoConfigurationError(f"--base and --ft are the same checkpoint ({base}): the result would be a copy")
    check_out_dir(out_dir, overwrite=overwrite, inputs=[base, ft])
    base_model, _ = load_transformer(base)
    ft_model, _ = load_transformer(ft)
    model = wise_ft(base_model, ft_model, alpha)
    with atomic_dir(out_dir, overwrite=overwrite, inputs=[base, ft]) as tmp:
        save_transformer(model, tmp, load_checkpoint_config(base))
    return Path(out_dir) / "step0"


# ---------------------------------------------------------------------------------------------
# Replay
# ---------------------------------------------------------------------------------------------


def replay_pieces(
    pt_paths: Sequence[str | Path], dtype: np.dtype, n_tokens: int, eos: int, seed: int
) -> List[np.ndarray]:
    """Exactly ``n_tokens`` contiguous pretraining tokens from a seeded random start (wrapping
    around the concatenated files), cut into EOS-terminated pieces; a trailing partial document
    is closed by turning its last token into EOS."""
    if n_tokens <= 0:
        return []
    arrays = [a for a in (np.memmap(p, dtype=dtype, mode="r") for p in pt_paths) if len(a)]
    total = sum(len(a) for a in arrays)
    if n_tokens > total:
        raise OLMoConfigurationError(
            f"replay needs {n_tokens:,d} pretraining tokens but {list(map(str, pt_paths))} hold "
            f"{total:,d}; lower the replay ratio or give more pretraining data"
        )
    start = int(np.random.default_rng(seed).integers(0, total))
    offsets = np.cumsum([0] + [len(a) for a in arrays])
    chunks, pos, remaining = [], start, n_tokens
    while remaining:
        f = int(np.searchsorted(offsets, pos, side="right")) - 1
        local = pos - int(offsets[f])
        take = min(remaining, len(arrays[f]) - local)
        chunks.append(np.asarray(arrays[f][local : local + take], dtype=np.int64))
        remaining -= take
        pos = (pos + take) % total
    span = np.concatenate(chunks)
    span[-1] = eos
    ends = np.flatnonzero(span == eos)
    pieces, prev = [], 0
    for e in ends:
        pieces.append(span[prev : e + 1])
        prev = e + 1
    return pieces


def build_replay_mix(
    task_dir: str | Path,
    pt_paths: Sequence[str | Path],
    ratio: float,
    out_dir: str | Path,
    *,
    seed: int = 0,
) -> Tuple[Path, FTDataMeta]:
    """A prepared dataset whose train split is the task's train documents plus replayed
    pretraining pieces (ratio x task train tokens, all-token targets), shuffled with ``seed``;
    the validation split is the task's own (L_FT stays the task loss)."""
    if ratio <= 0:
        raise OLMoConfigurationError(f"replay ratio must be > 0 (1.0 = 1:1 mix), got {ratio}")
    if not pt_paths:
        raise OLMoConfigurationError("replay needs pretraining token files ('replay_data')")
    task = read_meta(task_dir)
    out = Path(out_dir)
    if (out / "meta.json").exists():
        meta = read_meta(out)
        if meta.source.get("replay", {}).get("key") == _replay_key(task_dir, pt_paths, ratio, seed):
            return out, meta
    dtype = token_dtype_for_vocab(task.vocab_size)
    task_tokens = task.splits["train"]["tokens"]
    n_replay = int(round(ratio * task_tokens))
    pieces = replay_pieces(pt_paths, dtype, n_replay, task.eos_token_id, seed)
    docs: List[Tuple[np.ndarray, np.ndarray]] = [(t.copy(), m.copy()) for t, m in iter_documents(task_dir, "train")]
    docs += [(p, np.ones(len(p), dtype=bool)) for p in pieces]
    order = np.random.default_rng(seed + 1).permutation(len(docs))
    splits = {
        "train": write_split(
            out, "train", (docs[i] for i in order), vocab_size=task.vocab_size, eos_token_id=task.eos_token_id
        ),
        "val": write_split(
            out, "val", iter_documents(task_dir, "val"), vocab_size=task.vocab_size, eos_token_id=task.eos_token_id
        ),
    }
    meta = FTDataMeta(
        name=task.name,
        vocab_size=task.vocab_size,
        eos_token_id=task.eos_token_id,
        dtype=task.dtype,
        splits=splits,
        source={
            **task.source,
            "replay": {
                "key": _replay_key(task_dir, pt_paths, ratio, seed),
                "task": str(task_dir),
                "pt_paths": [str(p) for p in pt_paths],
                "ratio": ratio,
                "task_tokens": task_tokens,
                "replay_tokens": n_replay,
                "replay_pieces": len(pieces),
                "seed": seed,
            },
        },
        tokenizer=task.tokenizer,
    )
    write_meta(out, meta)
    log.info(f"Replay mix {out}: {task_tokens:,d} task + {n_replay:,d} pretraining tokens")
    return out, meta


def _replay_key(task_dir, pt_paths, ratio, seed) -> str:
    parts = [str(Path(task_dir).resolve()), (Path(task_dir) / "meta.json").read_text()]
    parts += [f"{Path(p).resolve()}:{Path(p).stat().st_size}" for p in pt_paths]
    return json_digest([parts, ratio, seed])
