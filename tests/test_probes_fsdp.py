"""The sharpness monitor's finite-difference path on FSDP2 shards: torchrun x2 (gloo)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from olmo_sam.checkpoints import load_transformer
from olmo_sam.probes.hessian import (
    HessianVectorProduct,
    fixed_batch,
    hutchinson_trace,
    lm_batch_loss,
)
from olmo_sam.train import read_metrics

REPO = Path(__file__).resolve().parents[1]
PROBES, STEPS = 16, 4

WORKER = textwrap.dedent(
    """
    import sys
    from olmo_core.data import TokenizerConfig
    from olmo_core.optim import AdamWConfig
    from olmo_sam.models import model_config
    from olmo_sam.optim import CosineAlpha
    from olmo_sam.probes.monitor import SharpnessMonitorCallback
    from olmo_sam.train import build_experiment, run_experiment

    train, val, save, monitored = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4] == "1"
    cb = SharpnessMonitorCallback(val_paths=[val], every_steps={steps}, probes={probes}, n_sequences=2, seed=5)
    cfg = build_experiment(
        model=model_config("tiny", vocab_size=256),
        tokenizer=TokenizerConfig(vocab_size=256, eos_token_id=0, pad_token_id=1, bos_token_id=0),
        train_paths=[train], save_folder=save,
        optim=AdamWConfig(lr=3e-3, betas=(0.9, 0.95), weight_decay=0.1),
        sequence_length=64, global_batch_size=8, micro_batch_size=4, max_steps={steps},
        dp="fsdp", callbacks={{"sharpness": cb}} if monitored else None,
    )
    cfg.train_module.scheduler = CosineAlpha(warmup=2)
    cfg.train_module.max_grad_norm = 1.0
    run_experiment(cfg)
    """
).format(steps=STEPS, probes=PROBES)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_monitor_under_fsdp(tiny_corpus, tmp_path):
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    for name, flag in (("plain", "0"), ("monitored", "1")):
        cmd = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc-per-node",
            "2",
            "--master-port",
            str(_free_port()),
            str(script),
            str(tiny_corpus.train),
            str(tiny_corpus.val),
            str(tmp_path / name),
            flag,
        ]
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

    plain, mon = read_metrics(tmp_path / "plain"), read_metrics(tmp_path / "monitored")
    for step in range(1, STEPS + 1):
        assert mon[step]["train/CE loss"] == plain[step]["train/CE loss"], step
    a, _ = load_transformer(tmp_path / "plain")
    b, _ = load_transformer(tmp_path / "monitored")
    for (n, p), (_, q) in zip(a.named_parameters(), b.named_parameters()):
        assert torch.equal(p, q), n

    # the sharded finite-difference estimate agrees with a single-process double-backward one on
    # the saved final weights (different probe vectors: agreement within the standard errors)
    rec = mon[STEPS]
    batch = fixed_batch([tiny_corpus.val], 64, 256, 2)
    ref = hutchinson_trace(
        HessianVectorProduct(lambda: lm_batch_loss(b, batch), list(b.parameters()), model=b), n_probes=64, seed=1
    )
    se = (rec["sharpness/PT trace stderr"] ** 2 + ref.stderr**2) ** 0.5
    assert rec["sharpness/PT probes"] == PROBES
    assert se < 0.25 * abs(ref.trace)  # the comparison below has teeth
    assert abs(rec["sharpness/PT trace"] - ref.trace) < 4 * se
