"""``olmo-sam bench``: cost of SAM relative to AdamW, measured in one run.

``sam-overhead`` times the real train module (OLMo-core's ``TransformerTrainModule`` subclass)
on a synthetic token stream:

* SAM step time / AdamW step time (two forward-backward passes: the floor is 2.0),
* an annealing-switch run (AdamW, then SAM for the last ``decay_fraction`` of the steps) / an
  AdamW run of the same length -- the real ``Trainer.fit()`` with the switch callback,
* ``interval=k`` step cost for a few k,
* SAM's extra peak memory in units of (this rank's) parameter copies: SAM's own state (peak of a
  SAM step minus that of a plain step running the same two passes) and the whole difference to an
  AdamW step (CUDA allocator statistics on GPU; the profiler's CPU allocation events on CPU).

Runs as one process or under ``torchrun`` (``--dp ddp|fsdp``); rank 0 prints the report.
"""

from __future__ import annotations

import json
import os
import statistics
import tempfile
import time
from functools import partial
from pathlib import Path
from typing import Dict, List, Optional

import click
import numpy as np
import torch

from olmo_sam.output import atomic_write_text
from olmo_sam.preflight import POSITIVE_INT, out_file_callback

__all__ = ["sam_overhead", "sam_overhead_command"]

TARGETS = {"sam_step_ratio": 2.05, "switch_run_ratio": 1.12, "sam_extra_param_copies": 1.1}


def _make_data(folder: Path, vocab: int, n_tokens: int) -> Path:
    path = folder / "bench_tokens.npy"
    rng = np.random.default_rng(0)
    rng.integers(2, vocab, size=n_tokens, dtype=np.int64).astype(np.uint16).tofile(path)
    return path


def _experiment(
    folder,
    data,
    *,
    optim,
    d_model,
    n_layers,
    n_heads,
    vocab,
    seq,
    batch,
    micro,
    steps,
    dp,
    callbacks=None,
    scheduler=None,
):  # noqa: E501
    from olmo_core.data import TokenizerConfig
    from olmo_core.nn.transformer import TransformerBlockType, TransformerConfig

    from olmo_sam.train import build_experiment

    model = TransformerConfig.llama_like(
        d_model=d_model,
        n_layers=n_layers,
        n_heads=n_heads,
        vocab_size=vocab,
        block_name=TransformerBlockType.reordered_norm,
        qk_norm=True,
        hidden_size_multiplier=1.5,
    )
    cfg = build_experiment(
        model=model,
        tokenizer=TokenizerConfig(vocab_size=vocab, eos_token_id=0, pad_token_id=1),
        train_paths=[str(data)],
        save_folder=str(folder),
        optim=optim,
        sequence_length=seq,
        global_batch_size=batch,
        micro_batch_size=micro,
        max_steps=steps,
        dp=dp,
        callbacks=callbacks,
    )
    cfg.train_module.scheduler = scheduler
    cfg.train_module.max_grad_norm = 1.0
    cfg.trainer.metrics_collect_interval = 10**6
    return cfg


def _one_step(trainer, ids: torch.Tensor) -> float:
    tm = trainer.train_module
    trainer.global_step += 1
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    tm.train_batch({"input_ids": ids.clone()})
    tm.optim_step()
    tm.zero_grads()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    trainer._metrics.clear()
    return time.perf_counter() - t0


def _peak_bytes(step) -> int:
    """Peak bytes allocated while ``step()`` runs, above what was live before it.

    CUDA: the caching allocator's peak statistic. CPU: the profiler's per-op allocation events
    (``profile_memory``), accumulated in time order; the running maximum is the peak.
    """
    if torch.cuda.is_available():
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        step()
        return torch.cuda.max_memory_allocated() - base
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        step()
    running = peak = 0
    for ev in sorted(prof.events(), key=lambda e: e.time_range.start):
        running += ev.self_cpu_memory_usage
        peak = max(peak, running)
    return peak


def _two_pass_step(trainer, ids: torch.Tensor) -> None:
    """A plain step that runs forward/backward twice (no ascent): what a second pass costs alone."""
    tm = trainer.train_module
    trainer.global_step += 1
    tm.train_batch({"input_ids": ids.clone()})
    tm.zero_grads()
    tm.train_batch({"input_ids": ids.clone()})
    tm.optim_step()
    tm.zero_grads()
    trainer._metrics.clear()


def sam_overhead(
    *,
    steps: int = 30,
    run_steps: int = 60,
    d_model: int = 256,
    n_layers: int = 4,
    n_heads: int = 4,
    vocab: int = 4096,
    seq: int = 256,
    batch: int = 8,
    micro: int = 4,
    intervals=(2, 5, 10),
    decay_fraction: float = 0.1,
    dp: Optional[str] = None,
    workdir: Optional[str] = None,
) -> Dict:
    from olmo_core.distributed.utils import get_rank, get_world_size
    from olmo_core.optim import AdamWConfig

    from olmo_sam.optim import SAMConfig, WSDAlpha
    from olmo_sam.train import SAMSwitchCallback, build_trainer, setup_environment

    setup_environment()
    world = get_world_size()
    rank = get_rank()
    # one working directory for all ranks: rank 0 creates it and tells the others
    holder = [workdir or (tempfile.mkdtemp(prefix="olmo-sam-bench-") if rank == 0 else None)]
    if world > 1:
        torch.distributed.broadcast_object_list(holder, src=0)
    tmp = Path(holder[0])
    data = tmp / "bench_tokens.npy"
    if rank == 0 and not data.exists():
        _make_data(tmp, vocab, (steps + run_steps + 10) * batch * (seq + 1) * 2)
    if world > 1:
        torch.distributed.barrier()
    base = AdamWConfig(lr=1e-3, betas=(0.9, 0.95), weight_decay=0.1)
    shape = dict(
        d_model=d_model, n_layers=n_layers, n_heads=n_heads, vocab=vocab, seq=seq, batch=batch, micro=micro, dp=dp
    )
    local_batch = batch // world
    rng = np.random.default_rng(rank)
    batches = [torch.from_numpy(rng.integers(2, vocab, size=(local_batch, seq), dtype=np.int64)) for _ in range(steps)]
    import olmo_core.distributed.parallel as parallel

    def fresh(name, optim, **kw):
        parallel._WORLD_MESH = None  # one world mesh per process in OLMo-core; rebuild per trainer
        return build_trainer(_experiment(tmp / name, data, optim=optim, steps=run_steps, **shape, **kw), setup=False)

    result: Dict = {
        "world_size": world,
        "dp": dp,
        "device": "cuda" if torch.cuda.is_available() else "cpu",
        "threads": torch.get_num_threads(),
        "model": shape,
    }
    # --- step times, interleaved (one step of each optimizer per round) so that load from
    # other processes hits all of them alike
    trainers = {"adamw": fresh("adamw", base), "sam": fresh("sam", SAMConfig(base=base))}
    for k in intervals:
        trainers[f"k{k}"] = fresh(f"sam_k{k}", SAMConfig(base=base, interval=k))
    model = trainers["adamw"].train_module.model
    # sizes of this rank's parameters (FSDP: its shard), what SAM's copy is measured against
    local = [p.to_local() if hasattr(p, "to_local") else p for p in model.parameters()]
    param_bytes = sum(p.numel() * p.element_size() for p in local)
    result["params"] = sum(p.numel() for p in model.parameters())
    result["rank_param_bytes"] = param_bytes
    times: Dict[str, List[float]] = {name: [] for name in trainers}
    warmup = 3
    for i, ids in enumerate(batches):
        for name, tr in trainers.items():
            t = _one_step(tr, ids)
            if i >= warmup:
                times[name].append(t)
    t_adamw = statistics.median(times["adamw"])
    result["adamw_step_s"] = t_adamw
    result["sam_step_s"] = statistics.median(times["sam"])
    result["sam_step_ratio"] = result["sam_step_s"] / t_adamw
    for k in intervals:  # a periodic cost: the mean over the timed steps
        result[f"interval_{k}_step_ratio"] = statistics.fmean(times[f"k{k}"]) / statistics.fmean(times["adamw"])
    ids, adamw_tr, sam_tr = batches[0], trainers["adamw"], trainers["sam"]
    peak_adamw = _peak_bytes(partial(_one_step, adamw_tr, ids))
    peak_two_pass = _peak_bytes(partial(_two_pass_step, adamw_tr, ids))
    peak_sam = _peak_bytes(partial(_one_step, sam_tr, ids))
    # SAM's own state: the parameter copy it restores from (vs a step that also runs two passes)
    result["sam_extra_param_copies"] = max(peak_sam - peak_two_pass, 0) / param_bytes
    # everything a SAM step holds beyond an AdamW step (includes what the second pass costs)
    result["sam_vs_adamw_param_copies"] = max(peak_sam - peak_adamw, 0) / param_bytes
    result["memory_source"] = (
        "cuda max_memory_allocated" if torch.cuda.is_available() else "torch.profiler CPU allocations"
    )
    del trainers, model, adamw_tr, sam_tr
    # --- whole runs through Trainer.fit(): AdamW vs the annealing switch
    sched = WSDAlpha(warmup=max(run_steps // 10, 1), decay_fraction=decay_fraction)
    runs: Dict[str, float] = {}
    for rep in range(2):  # alternate, keep the faster of two: less sensitive to outside load
        for name, optim, cbs in [
            ("run_adamw", base, None),
            ("run_switch", SAMConfig(base=base), {"sam_switch": SAMSwitchCallback()}),
        ]:
            tr = fresh(f"{name}_{rep}", optim, callbacks=cbs, scheduler=sched)
            t0 = time.perf_counter()
            tr.fit()
            runs[name] = min(runs.get(name, float("inf")), time.perf_counter() - t0)
            del tr
    result["run_steps"] = run_steps
    result["decay_fraction"] = decay_fraction
    result["adamw_run_s"] = runs["run_adamw"]
    result["switch_run_s"] = runs["run_switch"]
    result["switch_run_ratio"] = runs["run_switch"] / runs["run_adamw"]
    result["targets"] = TARGETS
    result["meets_targets"] = {k: result[k] <= v for k, v in TARGETS.items()}
    return result


@click.command("sam-overhead")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@click.option("--steps", type=POSITIVE_INT, default=30, show_default=True, help="Timed steps per optimizer.")
@click.option("--run-steps", type=POSITIVE_INT, default=60, show_default=True, help="Steps of the AdamW/switch runs.")
@click.option("--d-model", type=POSITIVE_INT, default=256, show_default=True, help="Model width.")
@click.option("--n-layers", type=POSITIVE_INT, default=4, show_default=True, help="Transformer blocks.")
@click.option("--seq-len", "seq", type=POSITIVE_INT, default=256, show_default=True, help="Sequence length (tokens).")
@click.option(
    "--batch-size", "batch", type=POSITIVE_INT, default=8, show_default=True, help="Global batch (sequences)."
)
@click.option(
    "--micro-batch-size",
    "micro",
    type=POSITIVE_INT,
    default=4,
    show_default=True,
    help="Micro-batch per rank (sequences).",
)
@click.option("--dp", type=click.Choice(["ddp", "fsdp"]), default=None, help="Under torchrun.")
@click.option("--threads", type=POSITIVE_INT, default=None, help="CPU threads per process (default 1).")
@click.option(
    "--out",
    callback=out_file_callback,
    type=click.Path(dir_okay=False),
    default=None,
    help="Also write the JSON report here.",
)
def sam_overhead_command(as_json, steps, run_steps, d_model, n_layers, seq, batch, micro, dp, threads, out):  # noqa: E501
    """SAM vs AdamW step time, annealing-switch run time, interval cost, extra memory."""
    if threads is not None:
        os.environ["OMP_NUM_THREADS"] = str(threads)
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    from olmo_core.distributed.utils import get_rank

    r = sam_overhead(
        steps=steps,
        run_steps=run_steps,
        d_model=d_model,
        n_layers=n_layers,
        n_heads=max(d_model // 64, 1),
        seq=seq,
        batch=batch,
        micro=micro,
        dp=dp,
    )
    if get_rank() != 0:
        return
    if out:
        atomic_write_text(out, json.dumps(r, indent=2))
    if as_json:
        click.echo(json.dumps(r, indent=2))
        return
    click.echo(f"params: {r['params']:,}  device: {r['device']}  world: {r['world_size']}  dp: {r['dp']}")
    click.echo(f"SAM step / AdamW step:           {r['sam_step_ratio']:.3f}  (target <= {TARGETS['sam_step_ratio']})")
    for k in (2, 5, 10):
        if f"interval_{k}_step_ratio" in r:
            click.echo(f"SAM interval={k:<2} step / AdamW:   {r[f'interval_{k}_step_ratio']:.3f}")
    click.echo(
        f"switch run ({r['decay_fraction']:.0%} SAM) / AdamW run: {r['switch_run_ratio']:.3f}"
        f"  (target <= {TARGETS['switch_run_ratio']})"
    )
    click.echo(
        f"SAM's own memory:                {r['sam_extra_param_copies']:.2f} parameter copies"
        f"  (target <= {TARGETS['sam_extra_param_copies']}; {r['memory_source']})"
    )
    click.echo(f"SAM step peak - AdamW step peak: {r['sam_vs_adamw_param_copies']:.2f} parameter copies")
