"""The study manifest: config, versions, git commit, where the jobs import olmo_sam from, seeds,
per-job timings and the study's state (running, finished, failed, interrupted), in one JSON file
under the output directory, rewritten atomically after every change."""

from __future__ import annotations

import json
import platform
import subprocess
import time
from importlib import metadata
from pathlib import Path
from typing import Any, Dict, Optional

from ..output import atomic_write_text

__all__ = ["Manifest", "environment_info"]

PACKAGES = ("olmo-sam", "ai2-olmo-core", "torch", "transformers", "bitsandbytes", "lm-eval", "peft", "numpy")


def _git(cwd: Path) -> Dict[str, Any]:
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, timeout=10
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain"], cwd=cwd, capture_output=True, text=True, timeout=10
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return {}
    return {"commit": commit or None, "dirty": bool(dirty)} if commit else {}


def environment_info() -> Dict[str, Any]:
    import olmo_sam

    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    versions["olmo-sam"] = versions["olmo-sam"] or olmo_sam.__version__
    pkg_root = Path(olmo_sam.__file__).resolve().parents[1]
    return {
        "versions": versions,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "git": _git(pkg_root),
        "package_path": str(pkg_root),
    }


class Manifest:
    def __init__(self, out: Path):
        self.path = Path(out) / "manifest.json"

    def read(self) -> Dict[str, Any]:
        if self.path.exists():
            return json.loads(self.path.read_text())
        return {"jobs": {}}

    def _write(self, data: Dict[str, Any]) -> None:
        atomic_write_text(self.path, json.dumps(data, indent=2, default=str) + "\n")

    def start(self, study: Dict[str, Any], seeds: Dict[str, Any], job_code: Optional[Dict[str, Any]] = None) -> None:
        data = self.read()
        data["study"] = study
        data["seeds"] = seeds
        data["environment"] = environment_info()
        if job_code is not None:
            data["environment"]["job_code"] = job_code
        data["state"] = "running"
        data.pop("resume", None)
        data.setdefault("started", time.strftime("%Y-%m-%dT%H:%M:%S"))
        data.setdefault("invocations", []).append(time.strftime("%Y-%m-%dT%H:%M:%S"))
        self._write(data)

    def record(
        self, job_id: str, status: str, *, seconds: Optional[float] = None, started: Optional[float] = None
    ) -> None:
        data = self.read()
        entry = data.setdefault("jobs", {}).setdefault(job_id, {})
        entry["status"] = status
        if seconds is not None:
            entry["seconds"] = round(seconds, 3)
        if started is not None:
            entry["started"] = time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(started))
        self._write(data)

    def set_state(self, state: str, **extra: Any) -> None:
        """The study's state: running, finished, failed or interrupted (with how to resume)."""
        data = self.read()
        data["state"] = state
        data.update(extra)
        if state != "running":
            data["ended"] = time.strftime("%Y-%m-%dT%H:%M:%S")
        self._write(data)
