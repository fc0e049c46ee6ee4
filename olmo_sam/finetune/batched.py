"""Batched LR grids: the K learning rates of one (base, dataset, method) trained together in one
process, each slice equal to its own OLMo-core trainer run (:func:`.engine.run_finetune`).

Why and how
-----------
A sweep is many short runs that share the base, the data and the batch order; only the learning
rate differs. Run one at a time, each pays the trainer's fixed costs (building it, loading the base
through distributed checkpointing, its shutdown) and every grid point reads the same batches again.
Here one process builds the experiment once (:func:`.engine.build_ft_experiment`: the same dataset,
data loader, optimizer, scheduler and clipping configs as the trainer run), holds K copies of the
base, and for every batch of the one data stream steps every slice exactly as OLMo-core's
``TransformerTrainModule`` and ``Trainer`` do:

* labels from ``get_labels`` (the label mask; ``-100`` elsewhere), the loss of each micro-batch the
  sum of token CEs divided by the batch's count of label tokens (``loss_reduction="sum"``,
  ``loss_div_factor``), gradients accumulated over the micro-batches,
* clipping by the total L2 norm (``get_total_norm`` + ``clip_grads_with_norm_``, the trainer's own
  calls) per slice, so clipping is active on the slices whose norm exceeds ``max_grad_norm`` only,
* the LR set per slice by the run's scheduler (:class:`~olmo_sam.optim.CosineAlpha`: warmup then
  cosine) through OLMo-core's ``Scheduler.set_lr`` at the same 1-based step and horizon,
* ``torch.optim.AdamW`` built per slice by the run's own ``AdamWConfig`` (betas, eps, weight
  decay), stepped, then ``zero_grad(set_to_none=True)``,
* epochs as the trainer runs them: ``reshuffle(epoch)`` then the loader's batches, until the run's
  step count.

Every slice is the OLMo-core ``Transformer`` itself, so its numbers are the trainer run's (the
tests compare losses and weights to 1e-5, ``tests/test_ft_batched.py``). Each slice is then
evaluated in memory and recorded as its own run: the same run ids, records and run directories
(``spec.json``, ``records.json``, ``train/metrics.jsonl``) as the one-at-a-time path, so the
sweep's harvest, resume and the analysis do not change.

The layout was chosen by measurement (``docs/finetune-batched.md``): K models stepped in turn in one
process beat ``vmap`` over stacked parameters (``torch.func``), whether attention falls back to a
loop (CPU scaled-dot-product attention has no batching rule) or is written with batched matmuls
(the K slices folded into the batch dimension).

Methods: ``ft`` (CFS/CS mixes are ``ft`` on a mix) and ``replay`` (``ft`` on a replay mix).
EWC, L2-init (penalty callbacks), LoRA (its own train module), data parallelism and resume points
(``checkpoint_interval``) train through the trainer (:func:`batched_support` says why).

Memory: a slice holds its weights, gradients and AdamW's two moments (:func:`slice_bytes`); only
one slice's activations live at a time. :func:`slices_per_chunk` fits K to a memory budget, and a
larger grid runs in chunks (:func:`grid_units`). A chunk killed mid-training restarts as a whole
(its finished slices' records are kept, as a trainer run's are).
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import json
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Dict, List, Optional, Sequence, Tuple

import torch
from olmo_core.data.utils import get_labels, split_batch
from olmo_core.exceptions import OLMoConfigurationError
from olmo_core.utils import move_to_device, seed_all

from ..checkpoints import load_checkpoint_config, load_transformer, save_transformer
from ..locks import file_lock
from ..optim.schedules import check_fits
from ..output import atomic_write_text, json_digest, write_json
from .engine import FTConfig, FTPlan, _device, _prepare_dir, build_ft_experiment, evaluate_run, plan_run, run_spec
from .records import FTRecord

log = logging.getLogger(__name__)

__all__ = [
    "ENGINES",
    "BATCHED_METHODS",
    "DEFAULT_MEMORY_BUDGET_GB",
    "default_memory_budget_gb",
    "batched_support",
    "grid_key",
    "slice_bytes",
    "slices_per_chunk",
    "grid_units",
    "SliceResult",
    "train_grid",
    "run_grid",
]

#: ``batched``: LR grids through this module where the method allows it; ``trainer``: every run
#: through OLMo-core's trainer, one at a time
ENGINES = ("batched", "trainer")
BATCHED_METHODS = ("ft", "replay")
#: memory for one chunk's slices (weights, gradients, AdamW moments) on CPU, in GiB; on a GPU the
#: default is half the device's memory (:func:`default_memory_budget_gb`)
DEFAULT_MEMORY_BUDGET_GB = 4.0
#: bytes per parameter of a slice: fp32 weight, gradient and AdamW's two moments
_STATE_BYTES_PER_PARAM = 4 * 4


def batched_support(cfg: FTConfig) -> Optional[str]:
    """``None`` if ``cfg`` can train in a batched grid, else why it trains through the trainer."""
    if cfg.method not in BATCHED_METHODS:
        return f"method {cfg.method!r} has no batched engine (it has: {', '.join(BATCHED_METHODS)})"
    if cfg.dp is not None:
        return f"data parallelism (dp={cfg.dp!r}) runs under torchrun"
    if cfg.checkpoint_interval is not None:
        return "resume points (checkpoint_interval) are the trainer's checkpoints"
    return None


def grid_key(cfg: FTConfig) -> str:
    """Runs with equal keys differ only in their learning rate: one grid."""
    d = cfg.to_dict()
    d.pop("lr")
    return json_digest(d, 16)


def default_memory_budget_gb() -> float:
    """The budget of a chunk's training state: half the GPU's memory, or 4 GiB on CPU."""
    if torch.cuda.is_available():
        return torch.cuda.get_device_properties(0).total_memory / 2**30 / 2
    return DEFAULT_MEMORY_BUDGET_GB


def slice_bytes(plan: FTPlan) -> int:
    """Memory of one slice's training state (weights, gradients, AdamW moments in fp32)."""
    n_params = plan.info.model_config.num_params
    return int(n_params) * _STATE_BYTES_PER_PARAM


def slices_per_chunk(plan: FTPlan, memory_budget_gb: Optional[float] = None) -> int:
    """The most slices whose training state fits ``memory_budget_gb`` (default:
    :func:`default_memory_budget_gb`; at least one)."""
    if memory_budget_gb is None:
        memory_budget_gb = default_memory_budget_gb()
    if not memory_budget_gb > 0:
        raise OLMoConfigurationError(f"the batched engine's memory budget must be > 0 GiB, got {memory_budget_gb}")
    return max(1, int(memory_budget_gb * 2**30) // slice_bytes(plan))


def grid_units(
    cfgs: Sequence[FTConfig], *, jobs: int = 1, memory_budget_gb: Optional[float] = None
) -> List[Tuple[str, List[FTConfig]]]:
    """``cfgs`` (resolved) as units of work, each ``(engine, runs)``: ``batched`` grid chunks (runs
    differing only in LR, at most as many as fit the memory budget, and split so that ``jobs``
    workers share a grid) and ``trainer`` single runs (one log line per reason a run trains
    through the trainer)."""
    units: List[Tuple[str, List[FTConfig]]] = []
    grids: Dict[str, List[FTConfig]] = {}
    reasons: Dict[str, int] = {}
    for cfg in cfgs:
        why = batched_support(cfg)
        if why is None:
            grids.setdefault(grid_key(cfg), []).append(cfg)
        else:
            reasons[why] = reasons.get(why, 0) + 1
            units.append(("trainer", [cfg]))
    for why, n in reasons.items():
        log.info(f"{n} run(s) train one at a time through the OLMo-core trainer: {why}")
    for grid in grids.values():
        k_mem = slices_per_chunk(plan_run(grid[0]), memory_budget_gb)
        n_chunks = max(math.ceil(len(grid) / k_mem), min(jobs, len(grid)))
        k = math.ceil(len(grid) / n_chunks)
        units += [("batched", grid[i : i + k]) for i in range(0, len(grid), k)]
    return units


@dataclass
class SliceResult:
    """One trained slice: its model and per-step metrics (the trainer's metric names); a slice
    whose training loss stopped being finite stops there, as the trainer stops its run, with the
    trainer's message (``diverged``)."""

    model: torch.nn.Module
    metrics: Dict[int, Dict[str, float]]
    diverged: Optional[str] = None


#: OLMo-core's label ignore index (``TransformerTrainModule.label_ignore_index``)
_IGNORE = -100


def _train_step(model, optim, micro: List[Dict], n_label_tokens: torch.Tensor, tm, state) -> Dict[str, float]:
    """One optimizer step of one slice, as ``TransformerTrainModule.train_batch`` + ``optim_step``:
    per micro-batch the summed CE over the batch's label-token count, backward; total-norm clipping;
    the LR from the scheduler at ``state.global_step``; AdamW; gradients cleared. Returns the
    trainer's metrics of the step."""
    ce = torch.zeros((), device=n_label_tokens.device)
    for mb in micro:
        mb = dict(mb)
        input_ids, labels = mb.pop("input_ids"), mb.pop("labels")
        _, loss, ce_loss, _ = model(
            input_ids,
            labels=labels,
            ignore_index=_IGNORE,
            loss_reduction="sum",
            z_loss_multiplier=tm.z_loss_multiplier,
            loss_div_factor=n_label_tokens,
            return_logits=False,
            **mb,
        )
        ce += ce_loss.detach()
        loss.backward()
    metrics = {"train/CE loss": float(ce)}
    if tm.max_grad_norm is not None:
        params = list(model.parameters())
        norm = torch.nn.utils.get_total_norm([q.grad for q in params if q.grad is not None], error_if_nonfinite=False)
        torch.nn.utils.clip_grads_with_norm_(params, tm.max_grad_norm, norm)
        metrics["optim/total grad norm"] = float(norm)
    if tm.scheduler is not None:
        for i, group in enumerate(optim.param_groups):
            metrics[f"optim/LR (group {i})"] = float(tm.scheduler.set_lr(group, state))
    optim.step()
    optim.zero_grad(set_to_none=True)
    return metrics


def train_grid(plans: Sequence[FTPlan], work_folder: Path, cache: Path) -> List[SliceResult]:
    """Train the slices of one grid (plans differing only in LR) together; returns each slice's
    trained model and metrics (module docstring)."""
    if not plans:
        return []
    keys = {grid_key(p.cfg) for p in plans}
    if len(keys) != 1:
        raise OLMoConfigurationError("a batched grid's runs must differ only in their learning rate")
    for p in plans:
        why = batched_support(p.cfg)
        if why is not None:
            raise OLMoConfigurationError(f"run {p.cfg.run_id} cannot train in a batched grid: {why}")
    plan = plans[0]
    steps = plan.steps
    exp = build_ft_experiment(plan, work_folder, cache)
    tm = exp.train_module
    seq = int(plan.cfg.seq_len)  # type: ignore[arg-type]
    seed_all(exp.init_seed)
    device = _device()
    dataset = exp.dataset.build()
    data_loader = exp.data_loader.build(dataset, dp_process_group=None)
    if tm.scheduler is not None:
        check_fits(tm.scheduler, steps)
    # the base is read once (OLMo-core's checkpoint loader runs a full garbage collection per load)
    base, _ = load_transformer(plan.cfg.base, device=device)
    slices, optims = [], []
    for p in plans:
        model = copy.deepcopy(base)
        model.train()
        optims.append(dataclasses.replace(tm.optim, lr=p.cfg.lr).build(model))
        slices.append(SliceResult(model, {}))
    state = SimpleNamespace(global_step=0, max_steps=steps, global_train_tokens_seen=0, max_tokens=None)
    mb_seqs = tm.rank_microbatch_size // seq
    # progress as log lines, as the trainer's (a live bar would clash with the sweep's)
    every, t0, epoch = max(1, steps // 10), time.monotonic(), 1
    while state.global_step < steps:
        data_loader.reshuffle(epoch)
        for batch in data_loader:
            state.global_step += 1
            batch = move_to_device(batch, device)
            labels = get_labels(batch, label_ignore_index=_IGNORE)
            micro = split_batch(dict(batch, labels=labels), mb_seqs)
            n_label_tokens = (labels != _IGNORE).sum()
            for sl, optim in zip(slices, optims):
                if sl.diverged is not None:
                    continue
                metrics = _train_step(sl.model, optim, micro, n_label_tokens, tm, state)
                ce = metrics["train/CE loss"]
                if math.isfinite(ce):
                    sl.metrics[state.global_step] = metrics
                else:  # (the trainer's check, message and stop: Trainer._check_and_pass_on_metrics)
                    sl.diverged = f"{ce} loss encountered at step {state.global_step}"
            if state.global_step % every == 0 or state.global_step == steps:
                ces = " ".join(
                    f"{sl.metrics[state.global_step]['train/CE loss']:.3f}" if sl.diverged is None else "diverged"
                    for sl in slices
                )
                log.info(
                    f"batched fine-tuning of {len(slices)} LRs: step {state.global_step}/{steps} "
                    f"({time.monotonic() - t0:.0f} s), train CE per LR: {ces}"
                )
            if state.global_step >= steps:
                break
        epoch += 1
    for sl in slices:
        sl.model.eval()
    return slices


def run_grid(
    cfgs: Sequence[FTConfig],
    out_dirs: Sequence[str | Path],
    *,
    cache_dir: str | Path,
    keep_checkpoint: bool = False,
) -> List[List[FTRecord]]:
    """Train the runs ``cfgs`` (one grid) together and write each run's directory as
    :func:`.engine.run_finetune` does; returns each run's records. Runs whose directory already
    holds their records are not trained again."""
    if len(cfgs) != len(out_dirs):
        raise ValueError("one output directory per run")
    cfgs = [c.resolved() for c in cfgs]
    outs = [Path(d).resolve() for d in out_dirs]
    cache = Path(cache_dir).resolve()
    results: List[Optional[List[FTRecord]]] = [None] * len(cfgs)
    with contextlib.ExitStack() as stack:
        todo = []
        for i, (cfg, out) in enumerate(zip(cfgs, outs)):
            out.mkdir(parents=True, exist_ok=True)
            stack.enter_context(file_lock(out / ".lock", what=f"(run {cfg.run_id})"))
            stored = _prepare_dir(out, run_spec(cfg))
            if stored is not None:
                results[i] = stored
            else:
                todo.append(i)
        if todo:
            t0 = time.monotonic()
            plans = [plan_run(cfgs[i]) for i in todo]
            trained = train_grid(plans, outs[todo[0]] / "train", cache)
            share = (time.monotonic() - t0) / len(todo)
            for i, plan, res in zip(todo, plans, trained):
                train_folder = outs[i] / "train"
                train_folder.mkdir(parents=True, exist_ok=True)
                atomic_write_text(
                    train_folder / "metrics.jsonl",
                    "".join(json.dumps({"step": s, **m}) + "\n" for s, m in sorted(res.metrics.items())),
                )
                kept = None
                if keep_checkpoint and res.diverged is None:
                    kept = str(
                        save_transformer(
                            res.model, train_folder, load_checkpoint_config(plan.cfg.base), step=plan.steps
                        )
                    )
                model = res.model if res.diverged is None else None
                last = res.metrics.get(plan.steps, {})
                records = evaluate_run(plan, model, cache, share, last, checkpoint=kept, diverged=res.diverged)
                write_json(outs[i] / "records.json", [r.to_dict() for r in records], sort_keys=True)
                results[i] = records
    return [r or [] for r in results]
