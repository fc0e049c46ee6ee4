"""Progress a person can watch: inside jobs, and of the study as a whole.

A job reports how far it is in ``OUT/<stage>/<job>/progress.json`` (``done``/``total`` and the
unit: pretraining steps, fine-tuning runs), written atomically every few seconds; the executor
reads it for the running jobs. :class:`StudyProgress` shows the study:

* on a terminal: one rich line -- jobs done/total, failed count, the running jobs with their own
  progress and an ETA -- whose counter stays on screen at 80 columns (the job list is cut first);
* otherwise (Slurm logs, ``nohup``, a pipe): one plain, timestamped line per event (job started,
  its progress at the first report, every 10% and at least every minute, finished, failed,
  interrupted).
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, TextIO

from olmo_core.config import Config
from olmo_core.train.callbacks import Callback

from ..output import atomic_write_text

__all__ = ["PROGRESS_FILE", "write_progress", "read_progress", "ProgressFileCallback", "StudyProgress", "format_eta"]

PROGRESS_FILE = "progress.json"


def write_progress(path: str | Path, done: int, total: int, unit: str, started: Optional[float] = None) -> None:
    payload = {"done": int(done), "total": int(total), "unit": unit, "time": time.time()}
    if started is not None:
        payload["started"] = started
    atomic_write_text(Path(path), json.dumps(payload) + "\n")


def read_progress(path: str | Path) -> Optional[Dict[str, Any]]:
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None


def format_eta(seconds: Optional[float]) -> str:
    if seconds is None or seconds != seconds or seconds < 0:
        return "?"
    s = int(round(seconds))
    h, rem = divmod(s, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


def eta(done: float, total: float, elapsed: float) -> Optional[float]:
    """Remaining seconds at the rate so far (None before the first unit is done)."""
    if done <= 0 or total <= 0 or elapsed <= 0:
        return None
    return max(0.0, elapsed * (total - done) / done)


@dataclass
class ProgressFileCallback(Callback, Config):
    """Writes the trainer's step / max steps to ``path`` (rank 0, at most every ``interval_s``
    seconds and at the last step), for the study's progress display."""

    path: str = PROGRESS_FILE
    interval_s: float = 2.0

    def __post_init__(self):
        self._last = 0.0
        self._started: Optional[float] = None

    def _write(self, force: bool = False) -> None:
        from olmo_core.distributed.utils import get_rank

        if get_rank() != 0:
            return
        now = time.time()
        if self._started is None:
            self._started = now
        total = self.trainer.max_steps or 0
        if force or now - self._last >= self.interval_s or self.step >= total:
            self._last = now
            write_progress(self.path, self.step, total, "steps", started=self._started)

    def pre_train(self):
        self._write(force=True)

    def post_step(self):
        self._write()


class StudyProgress:
    """The study's progress display (see module docstring). ``plain=None``: plain lines unless
    ``stream`` is a terminal."""

    #: plain mode: a running job's progress line at least this often (and at every 10%)
    PLAIN_EVERY_S = 60.0

    def __init__(
        self,
        total: int,
        *,
        stream: Optional[TextIO] = None,
        plain: Optional[bool] = None,
        enabled: bool = True,
        width: Optional[int] = None,
        force_terminal: Optional[bool] = None,
    ):
        self.stream = stream or sys.stdout
        self.total, self.done, self.failed = total, 0, 0
        self.enabled = enabled and total > 0
        self.plain = (not self.stream.isatty()) if plain is None else plain
        self.t0 = time.time()
        self._bar = None
        self._task = None
        self._width = width
        self._force_terminal = force_terminal
        self._reported: Dict[str, int] = {}  # job -> last progress decile printed (plain mode)
        self._printed: Dict[str, float] = {}  # job -> when its progress was last printed
        self._running: Dict[str, float] = {}
        self._last_line = 0.0

    # -- plain lines ----------------------------------------------------------------------------

    def line(self, text: str) -> None:
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.console.print(text, markup=False, highlight=False)
            return
        print(f"[{time.strftime('%H:%M:%S')}] {text}", file=self.stream, flush=True)

    def _counter(self) -> str:
        failed = f", {self.failed} failed" if self.failed else ""
        return f"{self.done}/{self.total} jobs{failed}"

    # -- events ---------------------------------------------------------------------------------

    def __enter__(self) -> "StudyProgress":
        if self.enabled and not self.plain:
            from rich.console import Console
            from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
            from rich.table import Column

            console = Console(file=self.stream, width=self._width, force_terminal=self._force_terminal)
            self._bar = Progress(
                TextColumn("[bold]study[/]"),
                BarColumn(bar_width=12),
                TextColumn("{task.fields[counter]}"),
                TimeElapsedColumn(),
                TextColumn("{task.description}", table_column=Column(no_wrap=True, overflow="ellipsis", ratio=1)),
                console=console,
                expand=True,
            )
            self._bar.__enter__()
            self._task = self._bar.add_task("", total=self.total, counter=self._counter())
        return self

    def __exit__(self, *exc) -> bool:
        if self._bar is not None:
            self._bar.__exit__(*exc)
            self._bar = None
        return False

    def started(self, job_id: str) -> None:
        self._running[job_id] = time.time()
        self._reported[job_id] = -1
        self._printed[job_id] = 0.0
        if self.plain:
            self.line(f"start  {job_id}  ({self._counter()})")
        self._refresh({})

    def finished(self, job_id: str, seconds: float, ok: bool, why: str = "") -> None:
        self._running.pop(job_id, None)
        self.done += 1
        if not ok:
            self.failed += 1
        if self.plain or not ok:
            word = "done  " if ok else "FAILED"
            tail = f"  {why}" if why else ""
            self.line(f"{word} {job_id}  {format_eta(seconds)}{tail}  ({self._counter()})")
        self._refresh({})

    def interrupted(self, job_ids: List[str]) -> None:
        for j in job_ids:
            self._running.pop(j, None)
            self.line(f"interrupted {j}")

    def poll(self, progress_of: Callable[[str], Optional[Dict[str, Any]]]) -> None:
        """Read the running jobs' progress files; update the bar or print plain lines."""
        info = {j: progress_of(j) for j in self._running}
        if self.plain:
            for j, p in info.items():
                if not p or not p.get("total"):
                    continue
                # the first report, then every 10% or every PLAIN_EVERY_S seconds
                decile = int(10 * p["done"] / p["total"])
                last = self._reported.get(j, -1)
                due = time.time() - self._printed.get(j, 0.0) >= self.PLAIN_EVERY_S
                if p["done"] < p["total"] and (decile > last or due):
                    self._reported[j] = decile
                    self._printed[j] = time.time()
                    self.line(f"       {j}: {self._job_text(j, p)}")
        self._refresh(info)

    def _job_text(self, job_id: str, p: Dict[str, Any]) -> str:
        started = p.get("started") or self._running.get(job_id, time.time())
        left = eta(p["done"], p["total"], max(p.get("time", time.time()) - started, 0.0))
        return f"{p['done']}/{p['total']} {p.get('unit', '')} ETA {format_eta(left)}"

    def _refresh(self, info: Dict[str, Optional[Dict[str, Any]]]) -> None:
        if self._bar is None or self._task is None:
            return
        parts = []
        for j in self._running:
            p = info.get(j)
            parts.append(f"{j} {self._job_text(j, p)}" if p and p.get("total") else j)
        self._bar.update(self._task, completed=self.done, counter=self._counter(), description=", ".join(parts))
