"""EWC / L2-to-init: the penalty and its gradient against autograd, the Fisher against a direct
loop, and the callback inside OLMo-core's trainer against values recomputed from checkpoints."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from ft_helpers import write_task

from olmo_sam.checkpoints import load_transformer
from olmo_sam.finetune.engine import FTConfig, run_finetune
from olmo_sam.finetune.penalty import (
    diagonal_fisher,
    load_tensors,
    penalty_and_grad,
    sample_windows,
)
from olmo_sam.train import read_metrics


@pytest.mark.parametrize("with_fisher", [True, False])
def test_penalty_and_gradient_match_autograd(with_fisher):
    g = torch.Generator().manual_seed(0)
    theta = torch.randn(7, 5, generator=g, dtype=torch.float64, requires_grad=True)
    anchor = torch.randn(7, 5, generator=g, dtype=torch.float64)
    fisher = torch.rand(7, 5, generator=g, dtype=torch.float64) if with_fisher else None
    lam = 37.5
    direct = lam * ((fisher if with_fisher else 1.0) * (theta - anchor) ** 2).sum()
    (grad,) = torch.autograd.grad(direct, theta)
    value, got = penalty_and_grad(theta.detach(), anchor, lam, fisher)
    assert value.item() == pytest.approx(direct.item(), rel=1e-6)
    torch.testing.assert_close(got.double(), grad, rtol=1e-6, atol=1e-9)


def test_diagonal_fisher_equals_direct_squared_batch_gradients(tiny_checkpoint, tiny_corpus):
    model, _ = load_transformer(tiny_checkpoint)
    model.train()
    seq, n_batches, batch = 16, 3, 4
    got = diagonal_fisher(
        model,
        [tiny_corpus.train],
        seq_len=seq,
        dtype=np.dtype(np.uint16),
        n_batches=n_batches,
        batch_size=batch,
        micro_batch_size=1,
        seed=5,
        progress=False,
    )
    windows = list(sample_windows([tiny_corpus.train], seq, np.dtype(np.uint16), n_batches * batch, seed=5))
    expect = {n: torch.zeros_like(p) for n, p in model.named_parameters()}
    for b in range(n_batches):
        x = torch.from_numpy(np.stack(windows[b * batch : (b + 1) * batch]))
        model.zero_grad()
        logits = model(x[:, :-1])
        F.cross_entropy(logits.reshape(-1, logits.shape[-1]), x[:, 1:].reshape(-1)).backward()
        for n, p in model.named_parameters():
            expect[n] += p.grad**2 / n_batches
    assert got.keys() == expect.keys()
    for n in expect:
        torch.testing.assert_close(got[n], expect[n], rtol=1e-4, atol=1e-12)
    assert sum(float(v.sum()) for v in got.values()) > 0


@pytest.fixture(scope="module")
def penalty_runs(tiny_checkpoint, tiny_corpus, tmp_path_factory):
    """Three-step runs (the last at LR 0: cosine to zero) from the same base: plain (checkpoint after step 1 kept), EWC and L2-init."""
    root = tmp_path_factory.mktemp("penalty")
    data = write_task(root / "task", n_train=120, n_val=20)
    common = dict(
        base=str(tiny_checkpoint),
        data=str(data),
        lr=3e-3,
        batch_size=8,
        max_steps=3,
        pt_val=[str(tiny_corpus.val)],
        pt_val_max_sequences=16,
    )
    out = {}
    for name, extra in [
        ("ft", dict(checkpoint_interval=1)),
        ("ewc", dict(method="ewc", ewc_lambda=1e4, fisher_batches=2, fisher_batch_size=4)),
        ("l2init", dict(method="l2init", l2_lambda=10.0)),
    ]:
        cfg = FTConfig(**common, **extra)
        (rec,) = run_finetune(cfg, root / name, cache_dir=root / "cache", keep_checkpoint=True)
        out[name] = (rec, root / name / "train")
    return out, root


def _params(path):
    model, _ = load_transformer(path)
    return {n: p.detach().double() for n, p in model.named_parameters()}


def test_penalty_callback_logs_the_exact_penalty(penalty_runs, tiny_checkpoint):
    runs, root = penalty_runs
    base = _params(tiny_checkpoint)
    theta1 = _params(runs["ft"][1] / "step1")  # step 1 is penalty-free: theta = theta* there
    fisher = {n: t.double() for n, t in load_tensors(next((root / "cache" / "fisher").glob("*.pt"))).items()}
    expect_ewc = 1e4 * sum(float((fisher[n] * (theta1[n] - base[n]) ** 2).sum()) for n in base)
    expect_l2 = 10.0 * sum(float(((theta1[n] - base[n]) ** 2).sum()) for n in base)
    ewc_metrics = read_metrics(runs["ewc"][1])
    l2_metrics = read_metrics(runs["l2init"][1])
    assert ewc_metrics[1]["ewc/penalty"] == 0.0 and l2_metrics[1]["l2init/penalty"] == 0.0
    assert ewc_metrics[2]["ewc/penalty"] == pytest.approx(expect_ewc, rel=1e-4)
    assert l2_metrics[2]["l2init/penalty"] == pytest.approx(expect_l2, rel=1e-4)
    assert expect_ewc > 0 and runs["ewc"][0].extra["penalty"] == ewc_metrics[3]["ewc/penalty"]


def test_penalty_pulls_weights_back_to_the_base(penalty_runs, tiny_checkpoint):
    runs, _ = penalty_runs
    base = _params(tiny_checkpoint)

    def dist(name):
        theta = _params(runs[name][1] / "step3")
        return sum(float(((theta[n] - base[n]) ** 2).sum()) for n in base) ** 0.5

    # with lambda=10 the L2 gradient dominates at step 2 and Adam steps back towards theta*
    assert dist("l2init") < 0.85 * dist("ft")
