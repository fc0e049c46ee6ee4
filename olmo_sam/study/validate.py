"""Validate before compute: build every job's own configuration, without running it.

:func:`validate_plan` checks the data section (:func:`~olmo_sam.study.stages.data.validate_data`)
and asks each planned job's stage to build what the job would build (:meth:`Stage.validate`:
the pretraining experiment through the recipe's builder, the probe options through the probes'
own checks, the fine-tuning sweep through :func:`olmo_sam.finetune.sweep.expand`), with stand-ins
for what earlier stages will produce (token files, checkpoints). A bad value therefore fails at
``olmo-sam study run --dry-run``, and every message starts with the field's path in the study
file (``arms[1].schedule: ...``, ``probes.quantize.quant[0]: ...``).
"""

from __future__ import annotations

import functools
from typing import List, Optional

from ..config import ConfigError
from .plan import Plan
from .spec import StudySpec
from .stages import get_stage
from .stages.data import placeholder_data, validate_data

__all__ = ["validate_plan", "validate_executor"]


def validate_executor(
    study: StudySpec, *, kind: Optional[str] = None, jobs: Optional[int] = None, nproc_per_node: Optional[int] = None
) -> None:
    """``executor`` settings and their command-line overrides (``--jobs``, ``--nproc-per-node``)."""
    ex = study.executor
    kind = kind or ex.kind
    for name, flag in (("jobs", jobs), ("nproc_per_node", nproc_per_node)):  # (the file's: ExecutorSpec.validate)
        if flag is not None and (isinstance(flag, bool) or flag < 1):
            raise ConfigError(f"--{name.replace('_', '-')}: must be >= 1, got {flag}")
    nproc = nproc_per_node if nproc_per_node is not None else ex.nproc_per_node
    where = "--nproc-per-node" if nproc_per_node is not None else "executor.nproc_per_node"
    if nproc > 1 and kind == "local":
        raise ConfigError(
            f"{where}: the local executor runs every job in one process and would ignore it; use the "
            "torchrun executor (--executor torchrun / executor.kind: torchrun)"
        )
    tasks = (ex.slurm or {}).get("tasks_per_node", 1)
    if nproc > 1 and kind == "slurm" and nproc != tasks:
        raise ConfigError(
            f"{where}: under the slurm executor the processes of a job are executor.slurm.tasks_per_node "
            f"({tasks}), and {nproc} would be ignored; make them equal or drop it"
        )


def validate_plan(plan: Plan, missing_data_ok: bool = False) -> List[str]:
    """Build every planned job's configuration (no compute, no files written); raises
    :class:`ConfigError` naming the study-file field of the first bad value. Returns warnings
    (missing data files, with ``missing_data_ok``)."""
    study = plan.study
    warnings = validate_data(study, missing_data_ok)
    data = functools.cache(lambda: placeholder_data(study))
    for job in plan.jobs:
        get_stage(job.stage).validate(study, job, data)
    return warnings
