"""Runs the GPU check's sections under their time budgets and writes the report.

``python -m olmo_sam_tools.gpucheck --out DIR [--cpu-dry-run] [--budget SECONDS]``

On a GPU each group of sections runs in its own worker process (:mod:`.worker`) with a hard time
limit, so a hung kernel, an NCCL stall or an out-of-memory crash costs one section, not the run;
a section writes its results as it goes, so what it measured before being killed is kept. A CPU
dry run puts all sections in one worker (one import of torch and OLMo-core: under a minute).
The global deadline (``--budget``, default 480 s on a GPU) bounds everything.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Dict, List, Optional, Sequence

from olmo_sam.output import read_json_or_none

from .common import Section
from .report import JSON_NAME, MD_NAME, write_report
from .worker import IMPORTS_PREFIX, SECTIONS

__all__ = ["main", "run_check", "GPU_BUDGETS", "DRY_RUN_BUDGETS", "DEFAULT_BUDGET_S", "GPU_GROUPS"]

#: seconds per section on the GPU (sum 450 of the 480 s total: the rest is start-up and report)
GPU_BUDGETS = {"environment": 15, "sam_cuda": 50, "fsdp_bf16": 50, "bnb": 65, "cost": 195, "finetune_batched": 75}
#: caps on the CPU dry run (it needs about 30 s on an idle 2-core machine)
DRY_RUN_BUDGETS = {"environment": 10, "sam_cuda": 30, "fsdp_bf16": 30, "bnb": 40, "cost": 50, "finetune_batched": 30}
#: default global budgets; ``--budget`` scales every section's budget by budget / default
DEFAULT_BUDGET_S = {"gpu": 480.0, "dry_run": 120.0}
#: worker processes on the GPU: the environment probe shares the first one
GPU_GROUPS = (("environment", "sam_cuda"), ("fsdp_bf16",), ("bnb",), ("cost",), ("finetune_batched",))
#: a worker's start-up (imports, CUDA context) on top of its sections' budgets
STARTUP_S = 30.0
#: what the runner keeps back from the global deadline to write the report
REPORT_MARGIN_S = 5.0


def _worker_command(
    out: Path, work: Path, group: Sequence[str], budgets: Dict[str, float], deadline: float, dry_run: bool
) -> List[str]:
    """The command line of the worker that runs ``group``'s sections."""
    cmd = [
        sys.executable,
        "-m",
        "olmo_sam_tools.gpucheck.worker",
        "--out",
        str(out),
        "--work",
        str(work),
        "--deadline",
        str(deadline),
    ]
    cmd += ["--cpu-dry-run"] if dry_run else []
    for name in group:
        cmd += ["--section", f"{name}={budgets[name]}"]
    return cmd


def _run_group(
    out: Path, work: Path, group: Sequence[str], budgets: Dict[str, float], deadline: float, dry_run: bool, log: Path
) -> Dict[str, object]:
    """One worker for ``group``; returns how it ended (``rc``, ``timed_out``, ``wall_s``)."""
    limit = min(sum(budgets[n] for n in group) + STARTUP_S, deadline - time.time())
    cmd = _worker_command(out, work, group, budgets, deadline, dry_run)
    t0 = time.time()
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "w") as f:
        proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            rc = proc.wait(timeout=max(limit, 1.0))
            timed_out = False
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)  # the worker's own process group, nothing else
            rc = proc.wait()
            timed_out = True
    return {"rc": rc, "timed_out": timed_out, "wall_s": round(time.time() - t0, 1), "limit_s": round(limit, 1)}


def _log_tail(log: Path, n: int = 20) -> List[str]:
    try:
        return log.read_text(errors="replace").splitlines()[-n:]
    except OSError:
        return []


def run_check(
    out: str | Path,
    *,
    dry_run: bool,
    budget: float,
    sections: Sequence[str] = SECTIONS,
    command: str = "",
    work: Optional[str | Path] = None,
) -> Dict[str, object]:
    """Run ``sections``; results in ``out``. Scratch files (token files, trainer work dirs: tens
    of MB) go to ``work``, by default a temporary folder removed at the end, so that ``out`` stays
    small enough to bring back from a device machine."""
    out = Path(out)
    scratch = Path(work) if work is not None else Path(tempfile.mkdtemp(prefix="olmo-sam-gpu-check-"))
    try:
        return _run_check(out, scratch, dry_run=dry_run, budget=budget, sections=sections, command=command)
    finally:
        if work is None:
            shutil.rmtree(scratch, ignore_errors=True)


def _run_check(
    out: Path, work: Path, *, dry_run: bool, budget: float, sections: Sequence[str], command: str
) -> Dict[str, object]:
    out.mkdir(parents=True, exist_ok=True)
    for stale in (out / JSON_NAME, out / MD_NAME, *(out / "sections").glob("*.json")):  # a previous run's
        stale.unlink(missing_ok=True)
    t_start = time.time()
    deadline = t_start + budget - REPORT_MARGIN_S
    base = DRY_RUN_BUDGETS if dry_run else GPU_BUDGETS
    scale = budget / DEFAULT_BUDGET_S["dry_run" if dry_run else "gpu"]
    budgets = {n: round(b * scale, 1) for n, b in base.items()}
    groups = [tuple(sections)] if dry_run else [tuple(n for n in g if n in sections) for g in GPU_GROUPS]
    groups = [g for g in groups if g]
    results: Dict[str, Dict[str, object]] = {}
    workers = []
    for i, group in enumerate(groups):
        log = out / "logs" / f"worker-{i}-{'-'.join(group)}.log"
        if deadline - time.time() < 5:
            for name in group:
                results[name] = {
                    "section": name,
                    "status": "not run",
                    "checks": [],
                    "skipped": [],
                    "errors": [{"what": name, "error": "global deadline reached before it started"}],
                }
            continue
        ended = _run_group(out, work, group, budgets, deadline, dry_run, log)
        workers.append({"sections": list(group), "log": str(log.relative_to(out)), **ended})
        for name in group:
            data = Section.load(out, name)
            if data is None:
                if ended["timed_out"]:
                    how = f"killed at its time limit ({ended['limit_s']} s)"
                else:
                    how = f"ended (rc {ended['rc']})"
                data = {
                    "section": name,
                    "status": "not run",
                    "results": {},
                    "checks": [],
                    "skipped": [],
                    "errors": [
                        {
                            "what": name,
                            "error": f"worker {how} before this section started",
                            "traceback": _log_tail(log),
                        }
                    ],
                }
            elif data["status"] == "running":
                why = "killed at its time limit" if ended["timed_out"] else f"worker crashed (rc {ended['rc']})"
                data["status"] = "timeout" if ended["timed_out"] else "crashed"
                data["errors"].append({"what": name, "error": why, "traceback": _log_tail(log)})
            results[name] = data
    imported = set()
    for f in (out / "sections").glob(f"{IMPORTS_PREFIX}*.json"):
        imported |= set(read_json_or_none(f) or [])
    ok = all(results.get(n, {}).get("status") == "ok" for n in sections)
    report = {
        "dry_run": dry_run,
        "ok": ok,
        "command": command,
        "started_utc": datetime.fromtimestamp(t_start, timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC"),
        "elapsed_s": round(time.time() - t_start, 1),
        "budget_s": budget,
        "budgets": {n: budgets[n] for n in sections},
        "workers": workers,
        "sections": {n: results[n] for n in sections if n in results},
        "imported_distributions": sorted(imported),
    }
    write_report(out, report)
    return report


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m olmo_sam_tools.gpucheck", description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True, help="output folder (gpu-check.json, gpu-check.md)")
    p.add_argument("--cpu-dry-run", action="store_true", help="tiny sizes on CPU; GPU-only parts skipped")
    p.add_argument(
        "--budget",
        type=float,
        default=None,
        help="global time limit in seconds (GPU 480, dry run 120); section budgets scale with it",
    )
    p.add_argument("--work", default=None, help="scratch folder to keep (default: a temporary one, removed)")
    p.add_argument("--sections", default=",".join(SECTIONS), help=f"comma-separated subset of {','.join(SECTIONS)}")
    args = p.parse_args(argv)
    sections = [s.strip() for s in args.sections.split(",") if s.strip()]
    unknown = [s for s in sections if s not in SECTIONS]
    if unknown:
        p.error(f"--sections: unknown {unknown}; choose from {','.join(SECTIONS)}")
    if not args.cpu_dry_run:
        import torch

        if not torch.cuda.is_available():
            p.error("no CUDA device: run on the GPU machine, or pass --cpu-dry-run")
    budget = args.budget if args.budget is not None else DEFAULT_BUDGET_S["dry_run" if args.cpu_dry_run else "gpu"]
    if budget <= REPORT_MARGIN_S + 5:
        p.error(f"--budget {budget:g} is too small: give more than {REPORT_MARGIN_S + 5:g} seconds")
    report = run_check(
        args.out,
        dry_run=args.cpu_dry_run,
        budget=budget,
        sections=sections,
        work=args.work,
        command=" ".join(["python -m olmo_sam_tools.gpucheck", *(argv if argv is not None else sys.argv[1:])]),
    )
    print(Path(args.out) / MD_NAME)
    print(f"GPU check {'ok' if report['ok'] else 'NOT ok'} in {report['elapsed_s']} s: {Path(args.out) / JSON_NAME}")
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
