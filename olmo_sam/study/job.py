"""One job of a study: its id, stage, kind, parameters and dependencies, and where its result goes.

A job is finished when its ``done.json`` exists; it holds the job's result, which dependent jobs
read (:class:`~olmo_sam.study.context.JobContext`).
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional

from ..config import ConfigError
from ..output import atomic_write_text

__all__ = ["Job"]


@dataclass
class Job:
    id: str
    stage: str
    kind: str
    params: Dict[str, Any] = field(default_factory=dict)
    deps: List[str] = field(default_factory=list)
    #: a training job: launched under torchrun by the torchrun/slurm executors
    distributed: bool = False
    #: inner runs (e.g. fine-tuning LRs x methods) -- for dry-run counts
    runs: int = 1

    def dir(self, out: Path) -> Path:
        return out / self.stage / re.sub(r"[^A-Za-z0-9_.@=+-]", "_", self.id.split("/", 1)[-1])

    def done_path(self, out: Path) -> Path:
        return self.dir(out) / "done.json"

    def is_done(self, out: Path) -> bool:
        """Finished: its ``done.json`` holds a result (one damaged by hand does not count: the job
        runs again, where its readers failed with a traceback)."""
        return self._done(out) is not None

    def _done(self, out: Path) -> Optional[Dict[str, Any]]:
        try:
            d = json.loads(self.done_path(out).read_text())
        except (OSError, ValueError):
            return None
        return d if isinstance(d, dict) and "result" in d else None

    def result(self, out: Path) -> Dict[str, Any]:
        d = self._done(out)
        if d is None:
            raise ConfigError(f"job {self.id} has not finished (no readable {self.done_path(out)})")
        return d["result"]

    def mark_done(self, out: Path, result: Dict[str, Any], seconds: float, cpu_seconds: Optional[float] = None) -> None:
        payload = {"job": asdict(self), "result": result, "seconds": seconds, "cpu_seconds": cpu_seconds}
        atomic_write_text(self.done_path(out), json.dumps(payload, indent=2, default=str) + "\n")
