"""What a study job function sees: its job, the plan, and its dependencies' results."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Optional

from ..config import ConfigError
from .job import Job
from .plan import Plan

__all__ = ["JobContext"]


@dataclass
class JobContext:
    job: Job
    plan: Plan
    deps: Dict[str, Dict[str, Any]]

    @property
    def out(self) -> Path:
        return self.plan.out

    @property
    def dir(self) -> Path:
        d = self.job.dir(self.out)
        d.mkdir(parents=True, exist_ok=True)
        return d

    @property
    def study(self):
        return self.plan.study

    def dep(self, job_id: str) -> Dict[str, Any]:
        if job_id in self.deps:
            return self.deps[job_id]
        job = self.plan.by_id().get(job_id)
        if job is None:
            raise ConfigError(f"{self.job.id}: no job {job_id} in this study")
        return job.result(self.out)

    def finished(self, job_id: str) -> Optional[Dict[str, Any]]:
        """The result of job ``job_id`` if it is in the plan and has finished, else None (what the
        analysis reads: a stage left out or not yet run is simply absent)."""
        job = self.plan.by_id().get(job_id)
        if job is None or not job.is_done(self.out):
            return None
        return job.result(self.out)

    @property
    def stages(self):
        """The registered stages, in pipeline order (:data:`olmo_sam.study.stages.PIPELINE`)."""
        from .stages import PIPELINE

        return PIPELINE
