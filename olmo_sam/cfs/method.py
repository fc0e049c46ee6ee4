"""The CFS and CS fine-tuning methods as a sweep calls them: base model + task set -> mixed data.

``prepare_method("cfs", base_hf_dir, task_dir, work_dir, ratio=0.5)`` samples the base model
(once: the samples file is resumable and reused by later calls with the same settings) and writes
the mixed fine-tuning set; the sweep then fine-tunes on it for one epoch of
``meta.source["train_steps"]`` steps (see :mod:`olmo_sam.cfs.mix`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from olmo_core.exceptions import OLMoConfigurationError

from .. import paper
from ..finetune.data import read_meta
from .generate import SamplingSettings, context_free_job, contextual_job, run_generation
from .mix import build_mix

__all__ = ["prepare_method", "METHODS"]

METHODS = ("cfs", "cs")


def prepare_method(
    method: str,
    base_model_dir: str | Path,
    task_dir: str | Path,
    work_dir: str | Path,
    *,
    ratio: float = paper.CFS_DEFAULT_RATIO,
    lam: Optional[float] = None,
    num_samples: Optional[int] = None,
    temperature: Optional[float] = None,
    top_p: Optional[float] = None,
    max_tokens: int = paper.CFS_FT_SEQ_LEN,
    gen_seed: int = 0,
    engine: str = "auto",
    epochs: int = paper.CFS_FT_EPOCHS,
    seq_len: int = paper.CFS_FT_SEQ_LEN,
    global_batch_size: int = paper.CFS_FT_BATCH_SIZE,
    mix_seed: int = 0,
    **engine_kwargs,
) -> Path:
    """Generate (or reuse) the samples for ``method`` and write the mix; returns the mix directory.

    ``num_samples`` (default: what ``ratio`` needs) lets a sweep over several ratios generate once,
    with the largest ratio's count: every mix uses the file's first ``round(ratio * N)`` samples.
    """
    if method not in METHODS:
        raise OLMoConfigurationError(f"method must be one of {METHODS}, got {method!r}")
    work_dir = Path(work_dir)
    n_task = read_meta(task_dir).splits["train"]["documents"]
    need = num_samples if num_samples is not None else max(round(ratio * n_task), 1)
    settings = SamplingSettings.for_kind(
        method == "cs", temperature=temperature, top_p=top_p, max_tokens=max_tokens, seed=gen_seed
    )
    name = f"{method}-T{settings.temperature:g}-n{need}.jsonl"
    if method == "cfs":
        job = context_free_job(base_model_dir, work_dir / name, need, settings)
    else:
        job = contextual_job(base_model_dir, work_dir / name, task_dir, need, settings)
    work_dir.mkdir(parents=True, exist_ok=True)
    run_generation(base_model_dir, [job], engine=engine, **engine_kwargs)
    lam_tag = "" if lam is None else f"-lam{lam:g}"
    out = work_dir / f"{method}-r{ratio:g}{lam_tag}"
    build_mix(
        task_dir,
        job.out,
        ratio,
        out,
        method=method,
        lam=lam,
        epochs=epochs,
        seq_len=seq_len,
        global_batch_size=global_batch_size,
        seed=mix_seed,
    )
    return out
