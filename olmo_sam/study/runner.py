"""Run one study job in this process: ``python -m olmo_sam.study.runner OUT_DIR JOB_ID``.

Every executor ends up here (a local subprocess, a ``torchrun`` launch, a Slurm task through
submitit). The job reads its dependencies' results from their ``done.json`` and writes its own
when it succeeds (rank 0 only under torchrun), so a killed job simply runs again.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any, Dict

from ..files import read_json
from .context import JobContext
from .plan import Plan, build_plan
from .spec import ConfigError, parse_study
from .stages import job_kinds

__all__ = ["load_plan", "run_job", "save_study", "STUDY_FILE"]

STUDY_FILE = "study.json"


def save_study(plan: Plan) -> Path:
    from ..output import atomic_write_text

    path = plan.out / STUDY_FILE
    payload = plan.study.plain()
    payload["out_dir"] = str(plan.out.resolve())
    atomic_write_text(path, json.dumps(payload, indent=2, default=str) + "\n")
    return path


def load_plan(out_dir: str | Path) -> Plan:
    path = Path(out_dir) / STUDY_FILE
    if not path.exists():
        raise ConfigError(f"{out_dir} holds no study ({STUDY_FILE} missing); start it with 'olmo-sam study run'")
    return build_plan(parse_study(read_json(path, what="study record"), str(path)))


def run_job(out_dir: str | Path, job_id: str) -> Dict[str, Any]:
    plan = load_plan(out_dir)
    index = plan.by_id()
    if job_id not in index:
        raise ConfigError(f"no job {job_id!r} in the study at {out_dir}")
    job = index[job_id]
    deps = {d: index[d].result(plan.out) for d in job.deps}
    fn = job_kinds()[job.kind]
    t0, c0 = time.time(), _cpu_seconds()
    result = fn(JobContext(job, plan, deps))
    rank = int(os.environ.get("RANK", "0"))
    if rank == 0:
        job.mark_done(plan.out, result, time.time() - t0, cpu_seconds=_cpu_seconds() - c0)
    return result


def _cpu_seconds() -> float:
    """CPU time (user + system) of this process and its finished children: a job's cost on a
    shared machine, where wall time also measures the other tenants."""
    import resource

    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if len(argv) != 2:
        print("usage: python -m olmo_sam.study.runner OUT_DIR JOB_ID", file=sys.stderr)
        return 2
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    run_job(argv[0], argv[1])
    if "torch.distributed" in sys.modules:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
