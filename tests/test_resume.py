"""Kill (SIGKILL) and resume: the resumed run reproduces the uninterrupted one exactly."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import adamw, losses, tiny_experiment

from olmo_sam.files import to_yaml
from olmo_sam.optim import SAMConfig, WSDAlpha
from olmo_sam.train import SAMSwitchCallback, read_metrics, run_experiment

WORKER = Path(__file__).parent / "workers" / "train_worker.py"
STEPS = 12  # WSD decays over the last 3 steps: AdamW for steps 1-9, SAM for 10-12


def _config(corpus, folder, variant="sam"):
    # LookSAM with interval 2 after the switch: full SAM at steps 10 and 12, g_v (saved in the
    # step-10 checkpoint) reused at step 11; MSAM ascends along AdamW's first moment from step 10
    interval = 2 if variant == "looksam" else 1
    return tiny_experiment(
        corpus,
        folder,
        SAMConfig(base=adamw(), variant=variant, interval=interval),
        max_steps=STEPS,
        max_grad_norm=1.0,
        scheduler=WSDAlpha(warmup=2, decay_fraction=0.25),
        callbacks={"sam_switch": SAMSwitchCallback()},
        checkpoint_interval=1,
    )


def _run_worker(cfg_path, *extra):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    return subprocess.run([sys.executable, str(WORKER), str(cfg_path), *extra], env=env, capture_output=True, text=True)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, tiny_corpus):
    cache = {}

    def get(variant):
        if variant not in cache:
            folder = tmp_path_factory.mktemp("resume") / f"full_{variant}"
            trainer = run_experiment(_config(tiny_corpus, folder, variant))
            tm = trainer.train_module
            weights = {n: p.detach().clone() for n, p in tm.model.named_parameters()}
            cache[variant] = losses(folder), read_metrics(folder), weights
        return cache[variant]

    return get


@pytest.mark.slow
@pytest.mark.parametrize(
    "variant, kill_before",
    [("sam", 10), ("sam", 12), ("msam", 11), ("looksam", 11)],
    ids=["killed-at-the-switch", "killed-inside-sam-phase", "msam", "looksam-reuses-saved-g_v"],
)
def test_killed_run_resumes_to_identical_losses(tmp_path, tiny_corpus, uninterrupted, variant, kill_before):
    full_losses, full_metrics, full_weights = uninterrupted(variant)
    folder = tmp_path / "run"
    cfg_path = tmp_path / "exp.yaml"
    cfg_path.write_text(to_yaml(_config(tiny_corpus, folder, variant)))

    killed = _run_worker(cfg_path, "--kill-before-step", str(kill_before))
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    assert max(losses(folder)) == kill_before - 1  # it really died mid-run

    resumed = _run_worker(cfg_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"Will resume training from step {kill_before - 1}" in resumed.stderr + resumed.stdout

    got = losses(folder)
    assert sorted(got) == list(range(1, STEPS + 1))
    for s in range(1, STEPS + 1):
        assert got[s] == pytest.approx(full_losses[s], abs=1e-6), s
    m = read_metrics(folder)
    assert [m[s]["sam/active"] for s in range(1, STEPS + 1)] == [
        full_metrics[s]["sam/active"] for s in range(1, STEPS + 1)
    ]
    assert m[STEPS]["sam/switch step"] == 10.0
    if variant == "looksam":
        assert m[11]["sam/looksam reuse"] == 1.0 and m[11]["sam/ascent"] == 0.0

    from olmo_sam.checkpoints import load_transformer

    model, info = load_transformer(folder)
    assert info.step == STEPS
    for n, p in model.named_parameters():
        assert torch.allclose(p, full_weights[n], atol=1e-6, rtol=0), n
