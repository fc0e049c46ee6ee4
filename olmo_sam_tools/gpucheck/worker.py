"""Runs sections of the GPU check in this process: ``python -m olmo_sam_tools.gpucheck.worker``.

Started by :mod:`olmo_sam_tools.gpucheck.runner` (one worker per section on a GPU, one for all of them
on a CPU dry run); each section gets ``--section NAME=SECONDS`` and no more than the global
``--deadline``.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path
from typing import Callable, Dict

from olmo_sam.output import write_json

from .common import Mode, Section, peak_bf16_flops

__all__ = ["SECTIONS", "IMPORTS_PREFIX", "main", "imported_distributions"]


def run_environment(sec: Section, work: Path) -> None:
    """What the check ran on: versions, device, where olmo-sam was imported from."""
    del work
    import torch

    import olmo_sam

    env: Dict[str, object] = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "cuda_available": torch.cuda.is_available(),
        "olmo_sam_from": str(Path(olmo_sam.__file__).parent),
        "hostname": platform.node(),
    }
    for dist in ("ai2-olmo-core", "bitsandbytes", "transformers", "accelerate"):
        try:
            from importlib.metadata import version

            env[dist] = version(dist)
        except Exception:  # noqa: BLE001 - not installed
            env[dist] = None
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        env["device_name"] = props.name
        env["device_memory_gib"] = round(props.total_memory / 2**30, 1)
        env["device_count"] = torch.cuda.device_count()
        env["peak_bf16_flops"], env["peak_flops_source"] = peak_bf16_flops(props.name)
    else:
        env["device_name"] = "cpu"
        env["cpu_threads"] = torch.get_num_threads()
    sec.record("environment", env)
    if not sec.mode.dry_run:
        sec.check("CUDA device present", torch.cuda.is_available(), str(env.get("device_name")))


def _sections() -> Dict[str, Callable[[Section, Path], None]]:
    from . import correctness, cost, finetune, quant

    return {
        "environment": run_environment,
        "sam_cuda": correctness.run_sam_cuda,
        "fsdp_bf16": correctness.run_fsdp_bf16,
        "bnb": quant.run_bnb,
        "cost": cost.run_cost,
        "finetune_batched": finetune.run_finetune_batched,
    }


#: section names in the order they run
SECTIONS = ("environment", "sam_cuda", "fsdp_bf16", "bnb", "cost", "finetune_batched")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m olmo_sam_tools.gpucheck.worker")
    p.add_argument("--out", required=True)
    p.add_argument("--work", required=True, help="scratch folder (token files, trainer work dirs)")
    p.add_argument("--cpu-dry-run", action="store_true")
    p.add_argument("--deadline", type=float, required=True, help="global deadline (time.time())")
    p.add_argument("--section", action="append", default=[], metavar="NAME=SECONDS")
    args = p.parse_args(argv)
    mode = Mode(dry_run=args.cpu_dry_run)
    if mode.dry_run:
        os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")  # a dry run uses the CPU even next to a GPU
    funcs = _sections()
    for item in args.section:
        name, _, seconds = item.partition("=")
        if name not in funcs:
            print(f"unknown section {name!r}; choose from {list(funcs)}", file=sys.stderr)
            return 2
        deadline = min(time.time() + float(seconds), args.deadline)
        sec = Section(name, args.out, deadline, mode)
        sec.part(name, lambda: funcs[name](sec, Path(args.work) / name))
        sec.finish()
    write_json(Path(args.out) / "sections" / f"{IMPORTS_PREFIX}{os.getpid()}.json", imported_distributions())
    return 0


#: file name prefix of the lists of imported distributions (one per worker)
IMPORTS_PREFIX = "_imports-"


def imported_distributions() -> list:
    """The installed distributions this process imported from (what the wheels must provide)."""
    import importlib.metadata as md

    top = {m.split(".")[0] for m in list(sys.modules)}
    owners = md.packages_distributions()
    return sorted({d for m in top for d in owners.get(m, [])})


if __name__ == "__main__":
    sys.exit(main())
