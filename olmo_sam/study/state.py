"""What a study's output directory holds, and who may change it.

* :func:`out_dir_lock`: one ``study run`` / ``demo`` per output directory at a time (an exclusive
  ``flock`` on ``OUT/.study.lock``, which records the holder's pid; the kernel drops it when the
  holder dies, so a lock file left by a dead process is simply taken over).
* :func:`check_unchanged`: a study file edited after some jobs finished is refused, with the keys
  that changed and the finished jobs they affect, unless those jobs are being re-run -- the
  recorded ``study.json`` / ``manifest.json`` never disagree with the results next to them. Its
  pre-registered ``hypotheses`` are refused once any job has finished, re-run or not
  (:func:`olmo_sam.study.hypotheses.check_registered`).
"""

from __future__ import annotations

import errno
import json
import os
import shlex
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Set

from ..config import ConfigError
from ..output import differences, plain
from .plan import Plan

__all__ = ["LOCK_FILE", "out_dir_lock", "check_writable", "stale_jobs", "check_unchanged"]

LOCK_FILE = ".study.lock"


def check_writable(out: Path) -> None:
    """Create ``out`` and make sure files can be written there (one clear line otherwise)."""
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / f".write-test-{os.getpid()}"
        probe.write_text("")
        probe.unlink()
    except OSError as e:
        raise ConfigError(
            f"{out}: the output directory is not writable ({e.strerror or e}); choose another with --out "
            "(or out_dir in the study file) or fix its permissions"
        ) from None


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _read_pid(path: Path) -> Optional[int]:
    try:
        return int(path.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


@contextmanager
def out_dir_lock(out: Path, what: str = "study run") -> Iterator[None]:
    """Hold the exclusive lock of ``out`` for the block (see module docstring)."""
    import fcntl

    path = Path(out) / LOCK_FILE
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
        if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            os.close(fd)
            pid = _read_pid(path)
            who = f"pid {pid}" if pid else "another process"
            raise ConfigError(
                f"{out} is in use by another 'olmo-sam {what}' ({who}); wait for it to finish, stop it "
                f"(kill {pid if pid else '<pid>'}), or use another output directory (--out)"
            ) from None
        # a filesystem without flock (some network mounts): fall back to the pid in the file
        pid = _read_pid(path)
        if pid and pid != os.getpid() and _pid_alive(pid):
            os.close(fd)
            raise ConfigError(
                f"{out} is in use by another 'olmo-sam {what}' (pid {pid}); wait for it to finish, stop it "
                f"(kill {pid}), or use another output directory (--out)"
            ) from None
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()}\n".encode())
    try:
        yield
    finally:
        try:
            os.ftruncate(fd, 0)
        finally:
            os.close(fd)  # closing drops the flock


# -- an edited study file -----------------------------------------------------------------------


def stale_jobs(plan: Plan) -> List[str]:
    """Finished jobs whose recorded parameters differ from the plan's (and the finished jobs
    downstream of them, which used their results)."""
    out = plan.out
    stale: Set[str] = set()
    for j in plan.jobs:
        if not j.is_done(out):
            continue
        try:
            recorded = json.loads(j.done_path(out).read_text()).get("job", {}).get("params")
        except (OSError, json.JSONDecodeError):
            continue
        if recorded is not None and recorded != plain(j.params):
            stale.add(j.id)
    changed = True
    while changed:
        changed = False
        for j in plan.jobs:
            if j.id not in stale and j.is_done(out) and any(d in stale for d in j.deps):
                stale.add(j.id)
                changed = True
    return [j.id for j in plan.jobs if j.id in stale]


def check_unchanged(plan: Plan, rerun: Set[str], study_file: str = "STUDY_FILE") -> None:
    """Refuse to continue a study whose file changed under finished jobs not being re-run."""
    from .hypotheses import check_registered
    from .runner import STUDY_FILE

    recorded = plan.out / STUDY_FILE
    if recorded.exists() and any(j.is_done(plan.out) for j in plan.jobs):
        try:
            registered = json.loads(recorded.read_text()).get("hypotheses")
        except (OSError, json.JSONDecodeError):
            registered = None
        check_registered(registered, plan.study.hypotheses, plan.out)
    stale = [j for j in stale_jobs(plan) if j not in rerun]
    if not stale:
        return
    keys: List[str] = []
    if recorded.exists():
        try:
            old: Dict[str, Any] = json.loads(recorded.read_text())
            new = plain(plan.study.plain())
            old.pop("out_dir", None)
            new.pop("out_dir", None)
            keys = [path or "<study>" for path, _, _ in differences(old, new)]
        except (OSError, json.JSONDecodeError):
            pass
    index = plan.by_id()
    stages = [s for s in dict.fromkeys(index[j].stage for j in stale)]
    shown = ", ".join(stale[:6]) + (f" and {len(stale) - 6} more" if len(stale) > 6 else "")
    raise ConfigError(
        f"the study changed since the results in {plan.out} were made "
        f"(changed: {', '.join(keys) if keys else 'job parameters'}); finished jobs made with the old values: "
        f"{shown}. Re-run them with 'olmo-sam study run {study_file} --out {shlex.quote(str(plan.out))} --rerun --stages "
        f"{','.join(stages)}' (later stages re-run too), or use a new output directory (--out or out_dir)"
    )
