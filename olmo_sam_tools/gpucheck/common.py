"""What every section of the GPU check shares: the result recorder with its time budget, the
device and sizes of a real run vs a CPU dry run, synthetic data, and the one-rank process group.
"""

from __future__ import annotations

import os
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, Optional

import numpy as np

from olmo_sam.output import read_json_or_none, write_json

__all__ = [
    "Section",
    "Mode",
    "peak_bf16_flops",
    "write_markov_corpus",
    "write_random_tokens",
    "init_one_rank_group",
    "leave_process_group",
    "reset_world_mesh",
]

#: Dense bf16 peak of the GPUs this check targets (NVIDIA data sheets, SXM boards; sparse figures
#: are twice these). H200 has the H100's compute; the PCIe H100 is lower.
PEAK_BF16_FLOPS = {"H100 PCIe": 756e12, "H100 NVL": 835e12, "H100": 989e12, "H200": 989e12}


def peak_bf16_flops(device_name: str) -> tuple[Optional[float], str]:
    """``(peak FLOP/s, where the figure comes from)`` for ``device_name``; ``(None, why)`` if unknown."""
    for key in sorted(PEAK_BF16_FLOPS, key=len, reverse=True):  # 'H100 PCIe' before 'H100'
        parts = key.split()
        if all(p.lower() in device_name.lower() for p in parts):
            return PEAK_BF16_FLOPS[key], (
                f"assumed {key} dense bf16 peak {PEAK_BF16_FLOPS[key] / 1e12:.0f} TFLOP/s "
                f"(data sheet, matched from device name {device_name!r})"
            )
    return None, f"no peak FLOP/s known for {device_name!r}: MFU not computed"


@dataclass(frozen=True)
class Mode:
    """A real GPU run, or a CPU dry run with tiny sizes that exercises the same code paths."""

    dry_run: bool

    @property
    def device(self) -> str:
        return "cpu" if self.dry_run else "cuda"

    @property
    def fsdp_backend(self) -> str:
        return "gloo" if self.dry_run else "cpu:gloo,cuda:nccl"


class Section:
    """Results of one section, rewritten atomically to ``{out}/sections/{name}.json`` after every
    change, so that a section killed at its time limit still leaves what it measured.

    ``deadline`` is the wall-clock time (``time.time()``) by which the section must be done.
    """

    def __init__(self, name: str, out: str | Path, deadline: float, mode: Mode):
        self.name = name
        self.path = Path(out) / "sections" / f"{name}.json"
        self.deadline = deadline
        self.mode = mode
        self.t0 = time.time()
        self.data: Dict[str, Any] = {
            "section": name,
            "status": "running",
            "dry_run": mode.dry_run,
            "results": {},
            "checks": [],
            "skipped": [],
            "errors": [],
        }
        self._save()

    @classmethod
    def load(cls, out: str | Path, name: str) -> Optional[Dict[str, Any]]:
        return read_json_or_none(Path(out) / "sections" / f"{name}.json")

    def remaining(self) -> float:
        return self.deadline - time.time()

    def _save(self) -> None:
        self.data["elapsed_s"] = round(time.time() - self.t0, 2)
        write_json(self.path, self.data)

    def record(self, key: str, value: Any) -> None:
        self.data["results"][key] = value
        self._save()

    def check(self, name: str, passed: bool, detail: str = "") -> bool:
        """A pass/fail proof; recorded, not raised, so that the other checks still run."""
        self.data["checks"].append({"check": name, "passed": bool(passed), "detail": detail})
        self._save()
        return bool(passed)

    def skip(self, what: str, why: str) -> None:
        self.data["skipped"].append({"what": what, "why": why})
        self._save()

    def part(self, what: str, fn: Callable[[], Any], need_s: float = 0.0) -> Any:
        """Run ``fn()`` if at least ``need_s`` seconds are left; an exception is recorded as an
        error of this part (with the traceback's tail) and the section goes on."""
        left = self.remaining()
        if left < need_s:
            self.skip(what, f"time budget: {left:.0f} s left, needs about {need_s:.0f} s")
            return None
        try:
            return fn()
        except Exception as e:  # noqa: BLE001 - recorded; the other parts still run
            tb = traceback.format_exc().strip().splitlines()
            self.data["errors"].append(
                {"what": what, "error": f"{type(e).__name__}: {e}"[:2000], "traceback": tb[-15:]}
            )
            self._save()
            return None

    def finish(self) -> None:
        failed = any(not c["passed"] for c in self.data["checks"])
        self.data["status"] = "error" if self.data["errors"] else ("failed" if failed else "ok")
        self._save()


def write_markov_corpus(folder: Path, vocab: int, n_train: int, n_val: int) -> tuple[Path, Path]:
    """Train/validation token files of the learnable Markov stream (raw uint16)."""
    from olmo_sam.data.synthetic import markov_tokens

    folder.mkdir(parents=True, exist_ok=True)
    train, val = folder / "markov_train.npy", folder / "markov_val.npy"
    markov_tokens(n_train, seed=1, vocab=vocab).tofile(train)
    markov_tokens(n_val, seed=2, vocab=vocab).tofile(val)
    return train, val


def write_random_tokens(path: Path, vocab: int, n_tokens: int) -> Path:
    """Uniform random token ids (costs do not depend on what the tokens are); raw uint16/uint32
    as :func:`olmo_sam.data.tokens.token_dtype_for_vocab` says for ``vocab``."""
    from olmo_sam.data.tokens import token_dtype_for_vocab

    path.parent.mkdir(parents=True, exist_ok=True)
    dtype = token_dtype_for_vocab(vocab)
    rng = np.random.default_rng(0)
    rng.integers(2, vocab, size=n_tokens, dtype=np.int64).astype(dtype).tofile(path)
    return path


def init_one_rank_group(mode: Mode) -> None:
    """A process group of one rank (NCCL on the GPU, gloo on a CPU dry run), for FSDP in one process."""
    import torch.distributed as dist
    from olmo_core.train import prepare_training_environment

    if dist.is_initialized():
        return
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    if "MASTER_PORT" not in os.environ:
        import socket

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            os.environ["MASTER_PORT"] = str(s.getsockname()[1])
    for var, value in (("RANK", "0"), ("LOCAL_RANK", "0"), ("WORLD_SIZE", "1"), ("LOCAL_WORLD_SIZE", "1")):
        os.environ.setdefault(var, value)
    prepare_training_environment(backend=mode.fsdp_backend, shared_filesystem=True)


def leave_process_group() -> None:
    """Back to a process without a process group (a section that needs one left it; the next runs
    OLMo-core's trainer the way one fresh process does)."""
    import torch.distributed as dist

    if dist.is_initialized():
        dist.destroy_process_group()
    reset_world_mesh()


def reset_world_mesh() -> None:
    """OLMo-core keeps one world device mesh per process; rebuild it for the next trainer."""
    import olmo_core.distributed.parallel as parallel

    parallel._WORLD_MESH = None
