"""Benchmark records from wherever they are: an olmo-sam results file (:mod:`.records`), a
directory holding one, or an OLMES output directory (:mod:`.olmes`)."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

from olmo_core.exceptions import OLMoConfigurationError

from .olmes import is_olmes_output_dir, load_olmes_results
from .records import BenchRecord, read_results_file

__all__ = ["read_records"]


def read_records(path: str | Path, model: Optional[str] = None) -> List[BenchRecord]:
    """Records from a results file written by :func:`olmo_sam.evals.records.write_records` (or a
    directory holding its ``results.json``), or from an OLMES output directory (parsed with
    :func:`olmo_sam.evals.olmes.load_olmes_results`). ``model`` relabels all records (e.g.
    ``sam-4bit``)."""
    path = Path(path)
    if path.is_dir():
        ours = path / "results.json"
        if ours.is_file():
            recs = read_results_file(ours)
        elif is_olmes_output_dir(path):
            recs = load_olmes_results(path)
        else:
            raise OLMoConfigurationError(
                f"{path} is neither an OLMES output directory (metrics-all.jsonl or "
                f"task-NNN-*-metrics.json) nor holds an olmo-sam results.json"
            )
    elif path.is_file():
        recs = read_results_file(path)
    else:
        raise OLMoConfigurationError(f"results path {path} does not exist")
    if not recs:
        raise OLMoConfigurationError(f"{path} holds no benchmark records")
    if model is not None:
        for r in recs:
            r.model = model
    return recs
