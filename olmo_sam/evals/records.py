"""One normalized benchmark record per (model, task), and its results file.

OLMES runs (:mod:`olmo_sam.evals.olmes`) and the offline CPU suite (:mod:`olmo_sam.evals.offline`)
both produce :class:`BenchRecord` lists; the forgetting tables (:mod:`olmo_sam.evals.compare`) read
them. Scores are percentages (0-100), the unit of the paper's Tables 2 and 8.

A results file is JSON ``{"format": ..., "records": [...], "meta": {...}}`` written atomically
(temporary file + ``os.replace``), so a reader never sees half a file.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional

from olmo_core.exceptions import OLMoConfigurationError

from ..files import read_json
from ..output import atomic_write_text

__all__ = ["BenchRecord", "write_records", "read_results_file", "RESULTS_FORMAT"]

RESULTS_FORMAT = "olmo-sam-bench/1"


@dataclass
class BenchRecord:
    #: label of the evaluated model (a directory name or a user label such as "sam-4bit")
    model: str
    #: paper task key, one of :data:`olmo_sam.paper.OLMES_SUITE_1B` (or a free name for extras)
    task: str
    #: primary score in percent (0-100)
    score: float
    #: what the score is, e.g. "acc_raw", "f1", "macro(acc_raw)", "max(mc:acc_raw, rc:acc_per_char)"
    metric: str
    #: number of evaluated instances (summed over sub-tasks for suites)
    num_instances: int
    #: hash identifying the task configuration (OLMES task_hash, or our own for the offline suite)
    config_hash: str
    #: "olmes" or "offline-lm-eval"
    source: str
    #: the evaluator's own task name (e.g. "mmlu:mc::olmes")
    alias: str = ""
    details: Dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, d: Dict[str, Any]) -> "BenchRecord":
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise OLMoConfigurationError(f"unknown BenchRecord field(s) {sorted(unknown)}")
        missing = {f.name for f in fields(cls) if f.name not in ("alias", "details")} - set(d)
        if missing:
            raise OLMoConfigurationError(f"BenchRecord is missing field(s) {sorted(missing)}")
        return cls(**d)


def write_records(path: str | Path, records: Iterable[BenchRecord], meta: Optional[Dict[str, Any]] = None) -> Path:
    payload = {
        "format": RESULTS_FORMAT,
        "records": [asdict(r) for r in records],
        "meta": meta or {},
    }
    return atomic_write_text(path, json.dumps(payload, indent=2, sort_keys=True) + "\n")


def read_results_file(path: str | Path) -> List[BenchRecord]:
    """Records of a results file written by :func:`write_records` (any source of records, OLMES
    output directories included: :func:`olmo_sam.evals.results.read_records`)."""
    payload = read_json(path, what="results file")
    if not isinstance(payload, dict) or payload.get("format") != RESULTS_FORMAT:
        raise OLMoConfigurationError(
            f"{path} is not an olmo-sam results file (expected 'format': {RESULTS_FORMAT!r}); "
            f"pass an OLMES output directory or a file written by 'olmo-sam eval'"
        )
    return [BenchRecord.from_dict(r) for r in payload["records"]]
