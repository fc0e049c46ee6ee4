"""Fine-tuning result records and their append-only store (shared by sweeps and analysis).

One :class:`FTRecord` per finished fine-tuning run: the learning-forgetting point
(L_FT, L_PT) of [SAM-PT] App C.2 with everything needed to reproduce and group it. The store is a
JSONL file; each record is appended with one ``write`` + ``fsync``, and readers skip a torn last
line (with a warning naming the count and line; a sweep then runs that run again) and de-duplicate
by ``run_id`` (first wins), so a killed writer never loses or duplicates a finished run.
"""

from __future__ import annotations

import json
import logging
import math
import os
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Tuple

from ..output import json_safe

log = logging.getLogger(__name__)

__all__ = ["FTRecord", "ResultStore"]


@dataclass
class FTRecord:
    run_id: str
    #: base checkpoint path and a short label for plots/tables (e.g. the arm name "sam")
    base: str
    base_label: str
    dataset: str
    #: "ft", "ewc", "l2init", "lora", "wiseft", "replay", "cfs", ...
    method: str
    lr: float
    #: fine-tuning validation loss L_FT(theta_FT) ("learning")
    l_ft: float
    #: pretraining validation loss of the fine-tuned weights L_PT(theta_FT) ("forgetting")
    l_pt: float
    #: the base model's own L_PT(theta_PT)
    base_l_pt: float
    steps: int = 0
    tokens: int = 0
    wall_time_s: float = 0.0
    hparams: Dict[str, Any] = field(default_factory=dict)
    extra: Dict[str, Any] = field(default_factory=dict)
    #: the fine-tuning data as prepared (:func:`olmo_sam.finetune.data.data_digest` of ``data``
    #: and, for a mix, its task's ``epoch_data``)
    data_digest: str = ""

    @property
    def forgetting(self) -> float:
        """PT-loss increase L_PT(theta_FT) - L_PT(theta_PT)."""
        return self.l_pt - self.base_l_pt

    def to_dict(self) -> Dict[str, Any]:
        """The record as strict JSON holds it: a loss that is not finite (a diverged run) is
        ``None`` (``null``), which :meth:`from_dict` reads back as NaN."""
        return json_safe(asdict(self))

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True, allow_nan=False)

    @classmethod
    def from_dict(cls, d: Dict[str, Any]) -> "FTRecord":
        if not isinstance(d, dict):
            raise ValueError(f"expected a record (a JSON object), got {type(d).__name__} {d!r:.60}")
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown FTRecord field(s) {sorted(unknown)}")
        d = dict(d)
        for f in fields(cls):
            v = d.get(f.name, 0)
            if f.type == "float" and v is None:  # a loss that was not finite (a diverged run; see to_dict)
                d[f.name] = math.nan
            elif f.type in ("float", "int") and (isinstance(v, bool) or not isinstance(v, (int, float))):
                raise ValueError(f"'{f.name}' must be a number, got {v!r}")
        return cls(**d)


class ResultStore:
    """Append-only JSONL of :class:`FTRecord` (see module docstring)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        #: (line number, start of the text) of each unreadable line of the last :meth:`records`
        self.torn: List[Tuple[int, str]] = []

    def append(self, record: FTRecord) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        line = (record.to_json() + "\n").encode()
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        try:
            # a torn previous line (killed writer) would glue onto this one: start clean
            if os.fstat(fd).st_size > 0:
                with open(self.path, "rb") as f:
                    f.seek(-1, os.SEEK_END)
                    if f.read(1) != b"\n":
                        os.write(fd, b"\n")
            os.write(fd, line)
            os.fsync(fd)
        finally:
            os.close(fd)

    def records(self) -> List[FTRecord]:
        if not self.path.exists():
            return []
        seen: Dict[str, FTRecord] = {}
        torn: List[Tuple[int, str]] = []
        for lineno, line in enumerate(self.path.read_text().splitlines(), 1):
            line = line.strip()
            if not line:
                continue
            try:
                d = json.loads(line)
            except json.JSONDecodeError:
                torn.append((lineno, line[:80]))  # cut off by a killed writer: that run is not finished
                continue
            try:
                rec = FTRecord.from_dict(d)
            except (ValueError, TypeError) as e:
                # a whole JSON line that is not a record is the wrong file, not a torn write
                raise ValueError(f"{self.path} line {lineno}: not a fine-tuning result record ({e})") from None
            seen.setdefault(rec.run_id, rec)
        if torn and torn != self.torn:
            log.warning(
                f"{self.path}: skipped {len(torn)} unreadable line(s) (first: line {torn[0][0]}: {torn[0][1]!r}); "
                "(a crash mid-write cuts the last line); the run(s) on those lines count as not finished, "
                "and running the sweep (or study) again redoes them"
            )
        self.torn = torn
        return list(seen.values())

    def keep_only(self, run_ids: Iterable[str]) -> int:
        """Rewrite the store (atomically) with only the records of ``run_ids``; returns how many
        were dropped (those of runs no longer planned: a study stage re-run with other settings)."""
        keep = set(run_ids)
        records = self.records()
        kept = [r for r in records if r.run_id in keep]
        if len(kept) != len(records):
            from ..output import atomic_write_text

            atomic_write_text(self.path, "".join(r.to_json() + "\n" for r in kept))
        return len(records) - len(kept)

    def done_ids(self) -> set:
        return {r.run_id for r in self.records()}

    def extend(self, records: Iterable[FTRecord]) -> None:
        for r in records:
            self.append(r)

    def get(self, run_id: str) -> Optional[FTRecord]:
        for r in self.records():
            if r.run_id == run_id:
                return r
        return None
