"""Section ``cost``: what SAM costs on the device, for the paper's 20M/60M/150M presets.

For each preset (:func:`olmo_sam.models.model_config`, dolma2's 100352-row embedding) at the
paper's sequence length 1024, with FSDP over one rank and bfloat16 parameters (float32 master
weights), the real train module runs a few warm-up and timed steps of AdamW and then of SAM, one
optimizer at a time so that each one's peak memory is its own:

* step time (median), SAM/AdamW ratio, tokens/s,
* model-FLOPs utilisation: ``num_flops_per_token`` (OLMo-core's count of one forward+backward:
  6 x parameters of the blocks and LM head + the causal attention term) x tokens/s / the device's
  dense bf16 peak (:func:`~olmo_sam_tools.gpucheck.common.peak_bf16_flops`); for SAM both the
  "useful" MFU (one pass counted, comparable with AdamW's) and the hardware MFU (two passes),
* peak memory of a step (``torch.cuda.max_memory_allocated`` over building the trainer and its
  steps, so parameters, gradients, optimizer state and activations all count), SAM over AdamW,
* the annealing-switch run: ``Trainer.fit()`` with a WSD schedule and
  :class:`~olmo_sam.train.SAMSwitchCallback` (SAM for the decay phase) vs the same run with AdamW,
  timed per step by a callback (checkpointing off), first steps left out.

Micro-batches start at 16 sequences and halve on CUDA out-of-memory.
"""

from __future__ import annotations

import gc
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional

import numpy as np
from olmo_core.train.callbacks import Callback

from .common import Section, init_one_rank_group, peak_bf16_flops, reset_world_mesh, write_random_tokens

__all__ = ["run_cost", "CostSizes", "GPU_SIZES", "DRY_RUN_SIZES", "StepTimer"]


@dataclass(frozen=True)
class CostSizes:
    presets: tuple
    seq: int
    batch: int  # sequences per step
    micro: int  # sequences per micro-batch (halved on OOM)
    warmup: int
    timed: int
    run_steps: int
    decay_fraction: float
    vocab: Optional[int] = None  # None: the preset's own (dolma2)


GPU_SIZES = CostSizes(
    ("20M", "60M", "150M"), seq=1024, batch=64, micro=16, warmup=3, timed=8, run_steps=40, decay_fraction=0.1
)
#: CPU dry run: the 'micro' preset, short sequences, a few steps (the same code paths)
DRY_RUN_SIZES = CostSizes(
    ("micro",), seq=64, batch=4, micro=2, warmup=1, timed=3, run_steps=6, decay_fraction=0.34, vocab=256
)


@dataclass
class StepTimer(Callback):
    """Wall time of every training step (device synchronised at both ends)."""

    times: List[float] = field(default_factory=list)
    _t0: float = 0.0

    def _sync(self) -> None:
        import torch

        if torch.cuda.is_available():
            torch.cuda.synchronize()

    def pre_step(self, batch: Dict[str, Any]):
        del batch
        self._sync()
        self._t0 = time.perf_counter()

    def post_step(self):
        self._sync()
        self.times.append(time.perf_counter() - self._t0)


def _base_optim():
    from olmo_core.optim import AdamWConfig

    from olmo_sam import paper

    return AdamWConfig(lr=1e-3, betas=paper.PRETRAIN_BETAS, weight_decay=paper.PRETRAIN_WEIGHT_DECAY)


def _trainer(
    work: Path, data: Path, model_cfg, vocab: int, sz: CostSizes, micro: int, optim, *, scheduler=None, callbacks=None
):
    from olmo_core.data import TokenizerConfig

    from olmo_sam.train import build_experiment, build_trainer

    cfg = build_experiment(
        model=model_cfg,
        tokenizer=TokenizerConfig(vocab_size=vocab, eos_token_id=0, pad_token_id=1),
        train_paths=[str(data)],
        save_folder=str(work),
        optim=optim,
        sequence_length=sz.seq,
        global_batch_size=sz.batch,
        micro_batch_size=micro,
        max_steps=sz.run_steps,
        dp="fsdp",
        param_dtype="bfloat16",
        callbacks=callbacks,
    )
    cfg.train_module.scheduler = scheduler
    cfg.train_module.max_grad_norm = 1.0
    cfg.trainer.metrics_collect_interval = 10**6
    cfg.trainer.callbacks["checkpointer"].enabled = False
    cfg.trainer.callbacks.pop("config_saver", None)
    reset_world_mesh()
    return build_trainer(cfg, setup=False)


def _timed_step(trainer, ids) -> float:
    import torch

    tm = trainer.train_module
    trainer.global_step += 1
    cuda = torch.cuda.is_available()
    if cuda:
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    tm.train_batch({"input_ids": ids.clone()})
    tm.optim_step()
    tm.zero_grads()
    if cuda:
        torch.cuda.synchronize()
    trainer._metrics.clear()
    return time.perf_counter() - t0


def _free() -> None:
    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def _steps(work: Path, data: Path, model_cfg, vocab: int, sz: CostSizes, micro: int, optim, batches):
    """(timed step seconds, peak bytes, micro-batch used, bytes allocated before) of one optimizer;
    halves the micro-batch on CUDA out-of-memory. ``before`` should be about 0: a previous
    trainer still alive would inflate the peak."""
    import torch

    while True:
        _free()
        before = torch.cuda.memory_allocated() if torch.cuda.is_available() else None
        trainer = None
        try:
            trainer = _trainer(work, data, model_cfg, vocab, sz, micro, optim)
            times = [_timed_step(trainer, ids) for ids in batches][sz.warmup :]
            peak = torch.cuda.max_memory_allocated() if torch.cuda.is_available() else None
            return times, peak, micro, before
        except torch.cuda.OutOfMemoryError:
            if micro == 1:
                raise
            micro //= 2
        finally:
            del trainer
            _free()


def _preset(sec: Section, work: Path, size: str, sz: CostSizes, peak_flops: Optional[float]) -> None:
    import torch

    from olmo_sam.models import model_config
    from olmo_sam.optim import SAMConfig

    model_cfg = model_config(size, vocab_size=sz.vocab)
    vocab = model_cfg.vocab_size
    meta = model_cfg.build(init_device="meta")
    flops_per_token = int(meta.num_flops_per_token(sz.seq))
    params = sum(p.numel() for p in meta.parameters())
    del meta
    data = write_random_tokens(work / "data" / f"tokens_{vocab}.npy", vocab, (sz.run_steps + 4) * sz.batch * sz.seq)
    rng = np.random.default_rng(0)
    batches = [
        torch.from_numpy(rng.integers(2, vocab, size=(sz.batch, sz.seq), dtype=np.int64))
        for _ in range(sz.warmup + sz.timed)
    ]
    res: Dict[str, Any] = {
        "params": params,
        "vocab": vocab,
        "sequence_length": sz.seq,
        "batch": sz.batch,
        "tokens_per_step": sz.batch * sz.seq,
        "flops_per_token": flops_per_token,
        "flops_source": "OLMo-core Transformer.num_flops_per_token (forward+backward, one pass)",
        "timed_steps": sz.timed,
    }
    micro = sz.micro
    for name, optim in (("adamw", _base_optim()), ("sam", SAMConfig(base=_base_optim()))):
        times, peak, micro, before = _steps(work / size / name, data, model_cfg, vocab, sz, micro, optim, batches)
        res[f"{name}_allocated_before_gib"] = before / 2**30 if before is not None else None
        step = statistics.median(times)
        res[f"{name}_step_s"] = step
        res[f"{name}_tokens_per_s"] = sz.batch * sz.seq / step
        res[f"{name}_peak_gib"] = peak / 2**30 if peak is not None else None
        res["micro_batch"] = micro
        sec.record(size, res)
    res["sam_step_ratio"] = res["sam_step_s"] / res["adamw_step_s"]
    if peak_flops:
        res["adamw_mfu"] = flops_per_token * res["adamw_tokens_per_s"] / peak_flops
        res["sam_mfu_useful"] = flops_per_token * res["sam_tokens_per_s"] / peak_flops
        res["sam_mfu_hardware"] = 2 * res["sam_mfu_useful"]
    if res["adamw_peak_gib"] is not None:
        res["sam_peak_memory_ratio"] = res["sam_peak_gib"] / res["adamw_peak_gib"]
        # in units of one float32 copy of the parameters (SAM's own state is about one)
        res["sam_extra_param_copies"] = (res["sam_peak_gib"] - res["adamw_peak_gib"]) * 2**30 / (4 * params)
    sec.record(size, res)
    sec.check(
        f"{size}: SAM step slower than AdamW, finite",
        1.0 < res["sam_step_ratio"] < 10.0,
        f"ratio {res['sam_step_ratio']:.3f}",
    )


def _switch_run(sec: Section, work: Path, size: str, sz: CostSizes) -> None:
    from olmo_sam.models import model_config
    from olmo_sam.optim import SAMConfig, WSDAlpha
    from olmo_sam.train import SAMSwitchCallback

    model_cfg = model_config(size, vocab_size=sz.vocab)
    vocab = model_cfg.vocab_size
    data = work / "data" / f"tokens_{vocab}.npy"
    res = dict(sec.data["results"].get(size, {}))
    micro = res.get("micro_batch", sz.micro)
    skip = min(2, sz.run_steps // 3)
    runs = {}
    for name, optim, cbs in (
        ("adamw", _base_optim(), {}),
        ("switch", SAMConfig(base=_base_optim()), {"sam_switch": SAMSwitchCallback()}),
    ):
        _free()
        timer = StepTimer()
        sched = WSDAlpha(warmup=max(sz.run_steps // 10, 1), decay_fraction=sz.decay_fraction)
        trainer = _trainer(
            work / size / f"run_{name}",
            data,
            model_cfg,
            vocab,
            sz,
            micro,
            optim,
            scheduler=sched,
            callbacks={**cbs, "step_timer": timer},
        )
        trainer.fit()
        runs[name] = (timer.times, trainer.train_module.sam_ascents if name == "switch" else 0)
        del trainer
        _free()
    (t_a, _), (t_s, ascents) = runs["adamw"], runs["switch"]
    res["switch_run_steps"] = sz.run_steps
    res["switch_decay_fraction"] = sz.decay_fraction
    res["switch_sam_steps"] = ascents
    res["adamw_run_s"] = sum(t_a[skip:])
    res["switch_run_s"] = sum(t_s[skip:])
    res["switch_run_ratio"] = res["switch_run_s"] / res["adamw_run_s"]
    res["adamw_run_step_times_s"] = t_a
    res["switch_run_step_times_s"] = t_s
    sec.record(size, res)
    expected = round(sz.run_steps * sz.decay_fraction)
    sec.check(
        f"{size}: switch run did SAM for the decay phase only",
        ascents == expected and len(t_s) == sz.run_steps,
        f"{ascents} SAM steps of {len(t_s)} (expected {expected})",
    )


def run_cost(sec: Section, work: Path) -> None:
    import torch

    sz = DRY_RUN_SIZES if sec.mode.dry_run else GPU_SIZES
    init_one_rank_group(sec.mode)
    if torch.cuda.is_available():
        peak, source = peak_bf16_flops(torch.cuda.get_device_name(0))
    else:
        peak, source = None, "CPU dry run: no peak FLOP/s, MFU not computed"
        sec.skip("MFU", source)
        sec.skip("peak memory", "CPU dry run: no CUDA allocator statistics")
    sec.record(
        "settings",
        {
            **sz.__dict__,
            "presets": list(sz.presets),
            "peak_flops": peak,
            "peak_flops_source": source,
            "dp": "fsdp (1 rank)",
            "param_dtype": "bfloat16",
            "optimizer": "AdamW lr 1e-3 / SAM rho 0.05",
        },
    )
    # step costs of every preset first (the headline numbers), then the switch runs if time is left
    for size in sz.presets:
        sec.part(
            f"{size} step cost", lambda: _preset(sec, work, size, sz, peak), need_s=20 if not sec.mode.dry_run else 2
        )
    for size in sz.presets:
        if size in sec.data["results"]:
            sec.part(
                f"{size} switch run", lambda: _switch_run(sec, work, size, sz), need_s=30 if not sec.mode.dry_run else 2
            )
