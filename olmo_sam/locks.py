"""Inter-process locks: an exclusive ``flock`` on a file, and a file computed once under one
(sweep workers share caches of base losses and Fisher tensors)."""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
from pathlib import Path
from typing import Callable, Iterator

log = logging.getLogger(__name__)

__all__ = ["file_lock", "cached_file"]


@contextlib.contextmanager
def file_lock(path: str | Path, *, what: str = "") -> Iterator[None]:
    """Exclusive ``flock`` on ``path`` (created if needed); released when the holder exits or dies."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log.info(f"Waiting for another process holding {path} {what}".rstrip())
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing the descriptor releases the lock


def cached_file(path: str | Path, compute: Callable[[Path], None]) -> Path:
    """``path``, computing it once with ``compute(path)`` under a lock. ``compute`` must write
    ``path`` atomically (:mod:`olmo_sam.output`) so that a killed computation leaves nothing."""
    path = Path(path)
    if path.exists():
        return path
    with file_lock(path.with_name(path.name + ".lock"), what=f"(computing {path.name})"):
        if not path.exists():
            compute(path)
    return path
