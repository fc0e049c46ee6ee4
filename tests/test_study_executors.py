"""The torchrun and Slurm (submitit) executors run the same jobs as the local one, with the same
results: training jobs under ``torchrun --nproc-per-node 2`` (DDP, gloo), every job as a submitit
task (submitit's ``local`` cluster: the job-array path without a Slurm installation)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import yaml

pytestmark = pytest.mark.slow

STUDY = {
    "name": "executors",
    "data": {"demo": {"vocab_size": 512, "books": ["carroll-alice"]}},
    "pretrain": {
        "size": "tiny",
        "steps": 6,
        "lr": 3e-3,
        "batch_size": 4,
        "seq_len": 64,
        "warmup": 1,
        "micro_batch_size": 2,
    },
    "arms": [{"name": "sam", "optimizer": "sam", "schedule": "cosine"}],
    "pt_eval": {"max_sequences": 8},
    "stages": ["data", "pretrain", "pt_eval"],
}


def _run(tmp_path, name, executor, extra=()):
    spec = dict(STUDY, executor=executor)
    if executor["kind"] == "torchrun":
        spec["pretrain"] = dict(STUDY["pretrain"], dp="ddp")
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(spec))
    out = tmp_path / name
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "olmo_sam.cli", "study", "run", str(path), "--out", str(out), *extra],
        capture_output=True,
        text=True,
        env=env,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-4000:]
    return out


def _l_pt(out):
    return json.loads((out / "pt_eval" / "sam" / "done.json").read_text())["result"]["l_pt"]


def test_torchrun_and_submitit_executors_match_local(tmp_path):
    local = _run(tmp_path, "local", {"kind": "local", "jobs": 1})
    torchrun = _run(tmp_path, "torchrun", {"kind": "torchrun", "nproc_per_node": 2})
    slurm = _run(tmp_path, "slurm", {"kind": "slurm", "slurm": {"cluster": "local", "timeout_min": 20}})

    log = (torchrun / "pretrain" / "sam" / "log.txt").read_text()
    assert "torch.distributed.run --nproc-per-node 2" in log.splitlines()[0]
    assert (slurm / "_submitit").is_dir() and any((slurm / "_submitit").iterdir())
    # DDP over 2 ranks and one process see the same global batches: the same model
    assert _l_pt(torchrun) == pytest.approx(_l_pt(local), abs=1e-5)
    assert _l_pt(slurm) == pytest.approx(_l_pt(local), abs=1e-6)
    manifest = json.loads((slurm / "manifest.json").read_text())
    assert all(j["status"] == "done" for j in manifest["jobs"].values())
