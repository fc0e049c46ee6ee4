"""Section ``finetune_batched``: a fine-tuning LR grid trained batched vs one run at a time (issue 21).

K = 8 learning rates of the 20M-shaped model (vocabulary 384), fine-tuned on the same task at the
same batch (16 x 128 tokens, 60 steps per run) two ways, each in a fresh sweep folder:

* ``batched``: the grid trained together in this process (``engine="batched"``,
  :mod:`olmo_sam.finetune.batched`),
* ``in_memory``: one run after another through OLMo-core's trainer, evaluated in memory
  (``engine="trainer"``, no checkpoints): the sequential path.

Reported: wall time per sweep, trained tokens per second, the speed-up (sequential wall time over
batched), both against pure training of one model at the same batch (the compute limit), and the
proof that the two ways ran the same runs: each batched slice's L_FT equals its sequential run's
within :data:`L_FT_TOLERANCE`.

Everything is measured by ``olmo-sam bench finetune-throughput``'s own functions
(:mod:`olmo_sam_tools.bench.finetune_throughput`: the base, the task, the sweep, the timing of a way,
pure training); this section only picks the sizes, runs the two ways under the time budget and
records them. The batched way runs first (it is the shorter); the sequential one is skipped,
saying so, when less time is left than it needs (about the batched wall time plus a per-run
start-up).
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from itertools import pairwise
from pathlib import Path
from typing import Dict

from .common import Section, leave_process_group

__all__ = ["run_finetune_batched", "FinetuneSizes", "GPU_SIZES", "DRY_RUN_SIZES", "L_FT_TOLERANCE"]


@dataclass(frozen=True)
class FinetuneSizes:
    size: str  # model preset (vocabulary 384)
    lrs: tuple  # the grid: K learning rates
    steps: int  # per run
    batch: int  # sequences per step
    seq: int
    pure_steps: int  # timed steps of pure training


#: issue 21's GPU comparison: K = 8 LRs of the 20M model, the benchmark's batch (16 x 128) and steps
GPU_SIZES = FinetuneSizes(
    "20M", (1e-4, 2e-4, 5e-4, 1e-3, 2e-3, 5e-3, 1e-2, 2e-2), steps=60, batch=16, seq=128, pure_steps=30
)
#: CPU dry run: the same code paths with the 'micro' preset, 2 LRs, a few short steps
DRY_RUN_SIZES = FinetuneSizes("micro", (1e-3, 1e-2), steps=3, batch=4, seq=64, pure_steps=3)

#: Largest |L_FT(batched slice) - L_FT(sequential run)| accepted. Both ways run the same float32
#: model, batches and kernels on one device, so they differ only by run-to-run nondeterminism:
#: none on CPU (tests/test_ft_batched.py: equal to 1e-5; the benchmark measured 0.0); on a GPU,
#: atomic-add reductions (attention and embedding backward) reorder float32 sums by ~1e-7
#: relative per step, and with TF32 matmuls on (PyTorch's default is off; the section records the
#: setting) both ways round alike. Such differences stay far below 1e-3 nats of a loss of order
#: 1-6 nats over 60 steps, while a slice with the wrong LR, schedule or clipping moves L_FT by
#: more than the gap between neighbouring grid LRs (recorded as ``min_l_ft_gap_between_lrs``).
L_FT_TOLERANCE = {"cpu": 1e-5, "cuda": 1e-3}


def _precision_settings() -> Dict[str, object]:
    import torch

    return {
        "float32_matmul_precision": torch.get_float32_matmul_precision(),
        "cuda_matmul_allow_tf32": torch.backends.cuda.matmul.allow_tf32,
        "cudnn_allow_tf32": torch.backends.cudnn.allow_tf32,
    }


def run_finetune_batched(sec: Section, work: Path) -> None:
    import torch

    from olmo_sam_tools.bench.finetune_throughput import measure_way, pure_training, setup_inputs, sweep_spec

    sizes = DRY_RUN_SIZES if sec.mode.dry_run else GPU_SIZES
    device = sec.mode.device
    tol = L_FT_TOLERANCE[device]
    settings = {
        **asdict(sizes),
        "k": len(sizes.lrs),
        "device": device,
        "l_ft_tolerance": tol,
        **(_precision_settings() if device == "cuda" else {"threads": torch.get_num_threads()}),
    }
    sec.record("settings", settings)
    work.mkdir(parents=True, exist_ok=True)
    # one process, as the sweep runs it (a CPU dry run's single worker has the other sections' group)
    leave_process_group()
    t0 = time.perf_counter()
    paths = sec.part(
        "inputs",
        lambda: setup_inputs(work, size=sizes.size, seq=sizes.seq, train_tokens=sizes.steps * sizes.batch * sizes.seq),
    )
    if paths is None:
        return
    sec.record("inputs_s", round(time.perf_counter() - t0, 2))
    spec = sweep_spec(paths, lrs=sizes.lrs, steps=sizes.steps, batch=sizes.batch, label=sizes.size)
    l_ft: Dict[str, Dict[str, float]] = {}

    def way(name: str) -> None:
        measured, l_ft[name] = measure_way(spec, work / name, name)
        sec.record(name, measured)

    sec.part("batched", lambda: way("batched"))
    if "batched" not in l_ft:
        return
    batched_wall = sec.data["results"]["batched"]["wall_s"]
    # sequential: at least the batched compute, plus each run's trainer start-up (~1-2 s)
    sec.part("in_memory", lambda: way("in_memory"), need_s=1.2 * batched_wall + 2.0 * len(sizes.lrs))
    pure = sec.part(
        "pure training",
        lambda: pure_training(
            paths["base"], steps=sizes.pure_steps, batch=sizes.batch, seq=sizes.seq, lr=min(sizes.lrs)
        ),
        need_s=5.0,
    )
    res = sec.data["results"]
    if pure is not None:
        sec.record("pure_training", pure)
        for name in l_ft:
            res[name]["fraction_of_pure_training"] = res[name]["tokens_per_s"] / pure["tokens_per_s"]
    if "in_memory" not in l_ft:
        return
    seq_w, bat_w = res["in_memory"], res["batched"]
    sec.record("speedup_batched_vs_sequential", seq_w["wall_s"] / bat_w["wall_s"])
    seq_ft, bat_ft = l_ft["in_memory"], l_ft["batched"]
    sec.check(
        "same runs batched and sequential",
        sorted(seq_ft) == sorted(bat_ft) and len(seq_ft) == len(sizes.lrs),
        f"{len(bat_ft)} batched slices, {len(seq_ft)} sequential runs, K = {len(sizes.lrs)}",
    )
    common = sorted(set(seq_ft) & set(bat_ft))
    if not common:
        return
    diff = max(abs(bat_ft[k] - seq_ft[k]) for k in common)
    values = sorted(seq_ft[k] for k in common)
    gap = min((b - a for a, b in pairwise(values)), default=None)
    sec.record("l_ft", {k: {"batched": bat_ft[k], "sequential": seq_ft[k]} for k in common})
    sec.record("max_abs_l_ft_diff", diff)
    sec.record("min_l_ft_gap_between_lrs", gap)
    sec.check(
        f"batched L_FT = sequential L_FT (tol {tol:g})",
        diff <= tol,
        f"max |diff| {diff:.2e} over {len(common)} LRs; smallest L_FT gap between two LRs "
        f"{'n/a' if gap is None else f'{gap:.2e}'}",
    )
