"""A real tiny pretraining through ``torchrun --nproc-per-node 2`` (gloo) with each optimizer of
the pretrain recipe (AdamW/DDP, SAM/FSDP, AdamW->SAM annealing/DDP), one launch for all three,
then the FSDP-sharded checkpoint exported to Hugging Face."""

from __future__ import annotations

import math
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from olmo_sam.checkpoints import load_transformer, resolve_checkpoint
from olmo_sam.hf import export_hf
from olmo_sam.train import read_metrics

pytestmark = pytest.mark.slow

WORKER = Path(__file__).parent / "workers" / "recipe_worker.py"
REPO = Path(__file__).resolve().parents[1]
STEPS, SEQ = 4, 64
RUNS = {
    "adamw": ["--optimizer", "adamw", "--dp", "ddp"],
    "sam": ["--optimizer", "sam", "--dp", "fsdp"],
    "sam-anneal": ["--optimizer", "sam-anneal", "--dp", "ddp", "--schedule", "wsd", "--decay-fraction", "0.5"],
}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def runs(tmp_path_factory, demo_data_small):
    root = tmp_path_factory.mktemp("torchrun")
    common = [
        "--size",
        "tiny",
        "--steps",
        str(STEPS),
        "--lr",
        "3e-3",
        "--batch-size",
        "4",
        "--micro-batch-size",
        "1",
        "--seq-len",
        str(SEQ),
        "--data",
        str(demo_data_small.root / "tokens"),
        "--eval-interval",
        str(STEPS),
    ]
    argv = []
    for name, extra in RUNS.items():
        argv += ["pretrain", *common, *extra, "--out", str(root / name), "--next"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc-per-node",
        "2",
        "--master-port",
        str(_free_port()),
        str(WORKER),
        *argv[:-1],
    ]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    return root


def test_each_optimizer_trains_under_torchrun(runs):
    m = {name: read_metrics(runs / name) for name in RUNS}
    for name, metrics in m.items():
        assert resolve_checkpoint(runs / name).name == f"step{STEPS}", name
        losses = [metrics[s]["train/CE loss"] for s in range(1, STEPS + 1)]
        assert all(math.isfinite(x) and x < math.log(512) + 0.5 for x in losses), (name, losses)
        assert math.isfinite(metrics[STEPS]["eval/lm/pt-val/CE loss"]), name
    # same init seed, same data order: the first step's loss (at the initial weights) agrees
    first = [m[name][1]["train/CE loss"] for name in RUNS]
    assert max(first) - min(first) < 1e-4, first
    assert all(m["adamw"][s].get("sam/ascent", 0.0) == 0.0 for s in range(1, STEPS + 1))
    assert all(m["sam"][s]["sam/ascent"] == 1.0 for s in range(1, STEPS + 1))
    # WSD decay over the last half: decay starts after step 2, SAM from step 3
    assert [m["sam-anneal"][s]["sam/active"] for s in range(1, STEPS + 1)] == [0.0, 0.0, 1.0, 1.0]
    assert m["sam-anneal"][STEPS]["sam/switch step"] == 3.0


def test_fsdp_checkpoint_exports_to_hf(runs, demo_data_small, tmp_path):
    step = resolve_checkpoint(runs / "sam")
    shards = sorted(p.name for p in (step / "model_and_optim").glob("*.distcp"))
    assert any(s.startswith("__1_") for s in shards), f"expected rank-1 shards, got {shards}"
    out = tmp_path / "hf"
    report = export_hf(runs / "sam", out)
    assert report["step"] == STEPS
    from transformers import AutoModelForCausalLM

    ids = torch.from_numpy(
        np.fromfile(demo_data_small.val_paths[0], dtype=np.uint16)[: 2 * SEQ].astype(np.int64).reshape(2, SEQ)
    )
    olmo, _ = load_transformer(runs / "sam")
    hf = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    with torch.no_grad():
        diff = (olmo(ids) - hf(input_ids=ids).logits).abs().max().item()
    assert diff < 1e-5
