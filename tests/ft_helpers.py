"""Shared helpers of the fine-tuning tests: a synthetic task on a *different* distribution than
the tiny pretraining corpus (tests/conftest.py), in the prepared fine-tuning format."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Callable, List, Optional, Sequence

import numpy as np
from conftest import EOS, VOCAB

from olmo_sam.finetune.data import FTDataMeta, write_meta, write_split

PROMPT, RESPONSE = 8, 23


def task_documents(n: int, seed: int):
    """Prompt: 8 random tokens. Response: a fixed permutation walk from the prompt's last token,
    unrelated to the pretraining Markov chain; response-only mask."""
    rng = np.random.default_rng(seed)
    perm = np.random.default_rng(99).permutation(np.arange(2, VOCAB))
    for _ in range(n):
        p = rng.integers(2, VOCAB, size=PROMPT)
        r = [perm[(int(p[-1]) - 2 + k) % (VOCAB - 2)] for k in range(1, RESPONSE + 1)]
        tokens = np.concatenate([p, r, [EOS]])
        mask = np.concatenate([np.zeros(PROMPT, bool), np.ones(RESPONSE + 1, bool)])
        yield tokens, mask


def write_task(root: Path, n_train: int = 600, n_val: int = 60, name: str = "synth-task") -> Path:
    splits = {
        "train": write_split(root, "train", task_documents(n_train, 1), vocab_size=VOCAB, eos_token_id=EOS),
        "val": write_split(root, "val", task_documents(n_val, 2), vocab_size=VOCAB, eos_token_id=EOS),
    }
    write_meta(
        root,
        FTDataMeta(
            name=name,
            vocab_size=VOCAB,
            eos_token_id=EOS,
            dtype="uint16",
            splits=splits,
            source={"generator": "tests/ft_helpers.py"},
        ),
    )
    return root


def kill_sweep_mid_run(
    cmd: Sequence[str], out: Path, log_path: Path, cwd: Path, before_kill: Optional[Callable[[int], List[int]]] = None
) -> List[int]:
    """Start the sweep ``cmd`` (writing to ``out``), wait until one run has its record and another
    is in progress, and SIGKILL the sweep. ``before_kill(pid)`` (e.g. the sweep's worker pids) is
    taken just before the kill and returned."""
    from olmo_sam.finetune.records import ResultStore

    env = dict(os.environ, PYTHONPATH=str(cwd), OMP_NUM_THREADS="1")
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(list(cmd), cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 300
        store = ResultStore(out / "results.jsonl")
        while True:
            assert proc.poll() is None, "the sweep ended before it could be killed:\n" + log_path.read_text()[-3000:]
            assert time.monotonic() < deadline, "timed out waiting for a run in progress"
            in_progress = [
                d for d in (out / "runs").glob("*") if (d / "spec.json").exists() and not (d / "records.json").exists()
            ]
            if store.records() and in_progress:
                break
            time.sleep(0.05)
        taken = before_kill(proc.pid) if before_kill else []
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    return taken
