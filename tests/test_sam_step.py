"""One SAM step of the real train module against an independent computation.

The reference (:func:`olmo_sam_tools.gpucheck.reference.reference_steps`, also used by the GPU check) is
written from the paper's equations ([SAM-PT] App A.1.1-A.1.2; Foret et al. 2021 Eq. 2; Kwon et al.
2021 for ASAM) with torch.func and a hand-written AdamW; it shares no code with olmo_sam.optim.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from helpers import adamw, losses, tiny_experiment, token_batch

from olmo_sam.optim import SAM, SAMConfig
from olmo_sam.train import build_trainer, run_experiment
from olmo_sam_tools.gpucheck.reference import reference_steps


@pytest.mark.parametrize("adaptive", [False, True], ids=["sam", "asam"])
def test_sam_steps_match_independent_computation(tmp_path, tiny_corpus, adaptive):
    rho = 0.05 if not adaptive else 0.5  # ASAM's radius is relative to |w|; the paper's ASAM uses larger rho
    # Adam's eps bounds how much float32 round-off in a tiny gradient element can move the update
    # (lr/eps per unit); 1e-8 would make this comparison a test of summation order, not of SAM.
    base = adamw(lr=2e-3, wd=0.1)
    base.eps = 1e-4
    optim = SAMConfig(base=base, rho=rho, adaptive=adaptive)
    cfg = tiny_experiment(tiny_corpus, tmp_path / "run", optim, max_grad_norm=0.5)
    trainer = build_trainer(cfg)
    tm = trainer.train_module
    assert isinstance(tm.optim, SAM)
    batches = [token_batch(tiny_corpus, 4, offset=i) for i in range(2)]
    ref_w, ref_losses, ref_pert = reference_steps(
        tm.model,
        batches,
        lr=2e-3,
        betas=(0.9, 0.95),
        wd=0.1,
        rho=rho,
        adaptive=adaptive,
        clip=0.5,
        eps_adam=1e-4,
    )

    for step, ids in enumerate(batches, start=1):
        trainer.global_step = step
        tm.train_batch({"input_ids": ids.clone()})  # 2 micro-batches of 2 sequences
        tm.optim_step()
        tm.zero_grads()
        metrics = trainer._metrics[step]
        assert float(metrics["train/CE loss"]) == pytest.approx(ref_losses[step - 1], abs=1e-5)
        assert float(metrics["sam/perturbed CE loss"]) == pytest.approx(ref_pert[step - 1], abs=1e-5)
        assert float(metrics["sam/ascent"]) == 1.0

    worst = max(float((p.detach().double() - ref_w[n]).abs().max()) for n, p in tm.model.named_parameters())
    assert worst < 1e-6, f"max |w - w_ref| = {worst}"
    # the perturbation was really undone: the base optimizer stepped from w, not w + eps
    assert not tm.optim.is_perturbed


def test_rho_zero_is_adamw_bit_for_bit(tmp_path, tiny_corpus):
    a = tiny_experiment(tiny_corpus, tmp_path / "adamw", adamw(), max_steps=5, max_grad_norm=1.0)
    s = tiny_experiment(
        tiny_corpus, tmp_path / "sam0", SAMConfig(base=adamw(), rho=0.0), max_steps=5, max_grad_norm=1.0
    )
    ta, ts = run_experiment(a), run_experiment(s)
    for (na, pa), (ns, ps) in zip(ta.train_module.model.named_parameters(), ts.train_module.model.named_parameters()):
        assert na == ns
        assert torch.equal(pa, ps), na
    assert losses(tmp_path / "adamw") == losses(tmp_path / "sam0")


def test_interval_does_one_ascent_every_k_steps(tmp_path, tiny_corpus):
    cfg = tiny_experiment(tiny_corpus, tmp_path / "run", SAMConfig(base=adamw(), interval=3), max_steps=7)
    trainer = build_trainer(cfg)
    forwards = {}

    def count(module, args):
        forwards[trainer.global_step] = forwards.get(trainer.global_step, 0) + 1

    trainer.train_module.model.register_forward_pre_hook(count)
    trainer.fit()
    from olmo_sam.train import read_metrics

    m = read_metrics(tmp_path / "run")
    ascent_steps = [s for s in range(1, 8) if m[s]["sam/ascent"] == 1.0]
    assert ascent_steps == [3, 6]
    # 2 micro-batches per step; ascent steps run both passes (the dry-run batch counts at step 0)
    assert {s: forwards[s] for s in range(1, 8)} == {s: (4 if s in (3, 6) else 2) for s in range(1, 8)}
    assert trainer.train_module.sam_ascents == 2


def test_zero_and_nonfinite_gradient_norm_skip_the_ascent():
    torch.manual_seed(0)
    lin = torch.nn.Linear(4, 3)
    base = torch.optim.AdamW(lin.parameters(), lr=1e-2)
    sam = SAM(base, rho=0.05)
    w0 = [p.detach().clone() for p in lin.parameters()]
    for p in lin.parameters():
        p.grad = torch.zeros_like(p)
    r = sam.perturb()
    assert (r.perturbed, r.skip_reason) == (False, "zero")
    assert all(torch.equal(p, q) for p, q in zip(lin.parameters(), w0))
    for p in lin.parameters():
        p.grad = torch.full_like(p, float("nan"))
    r = sam.perturb()
    assert (r.perturbed, r.skip_reason) == (False, "nonfinite")
    assert all(torch.equal(p, q) for p, q in zip(lin.parameters(), w0))
    sam.restore()  # no-op
    assert all(torch.equal(p, q) for p, q in zip(lin.parameters(), w0))


def test_nonfinite_gradient_skips_the_update_and_keeps_weights_finite(tmp_path, tiny_corpus):
    cfg = tiny_experiment(tiny_corpus, tmp_path / "run", SAMConfig(base=adamw()), max_steps=2)
    trainer = build_trainer(cfg)
    tm = trainer.train_module
    before = {n: p.detach().clone() for n, p in tm.model.named_parameters()}
    handle = tm.model.embeddings.weight.register_hook(lambda g: g * float("nan"))
    trainer.global_step = 1
    tm.train_batch({"input_ids": token_batch(tiny_corpus, 4)})
    tm.optim_step()
    tm.zero_grads()
    handle.remove()
    for n, p in tm.model.named_parameters():
        assert torch.isfinite(p).all(), n
        assert torch.equal(p, before[n]), n  # the update was skipped, not applied with NaNs
    assert tm.sam_skipped_ascents == 1
    assert float(trainer._metrics[1]["sam/skipped ascents"]) == 1.0


def test_bf16_parameters_perturb_in_fp32_and_restore_exactly():
    torch.manual_seed(0)
    lin = torch.nn.Linear(16, 8).to(torch.bfloat16)
    sam = SAM(torch.optim.AdamW(lin.parameters(), lr=1e-3), rho=0.05)
    w0 = [p.detach().clone() for p in lin.parameters()]
    grads = [torch.randn_like(p, dtype=torch.float32).to(torch.bfloat16) for p in lin.parameters()]
    for p, g in zip(lin.parameters(), grads):
        p.grad = g
    norm = math.sqrt(sum(float((g.float() ** 2).sum()) for g in grads))
    r = sam.perturb()
    assert r.perturbed and r.grad_norm == pytest.approx(norm, rel=1e-6)
    for p, p0, g in zip(lin.parameters(), w0, grads):
        expected = (p0.float() + (0.05 / (norm + 1e-12)) * g.float()).to(torch.bfloat16)
        assert torch.equal(p, expected)
    sam.restore()
    assert all(torch.equal(p, q) for p, q in zip(lin.parameters(), w0))


def test_float64_parameters_take_a_sam_step():
    """A float64 model (a numerical check) crashed in the ascent: the fp32 norm cannot downcast."""
    torch.manual_seed(0)
    lin = torch.nn.Linear(4, 3).double()
    sam = SAM(torch.optim.AdamW(lin.parameters(), lr=1e-3), rho=0.05)
    w0 = [p.detach().clone() for p in lin.parameters()]
    for p in lin.parameters():
        p.grad = torch.randn_like(p)
    norm = math.sqrt(sum(float((p.grad**2).sum()) for p in lin.parameters()))
    r = sam.perturb()
    assert r.perturbed and r.grad_norm == pytest.approx(norm, rel=1e-6)  # (the ascent is computed in fp32)
    for p, p0 in zip(lin.parameters(), w0):
        torch.testing.assert_close(p - p0, 0.05 * p.grad / norm, rtol=1e-5, atol=1e-8)
    sam.restore()
    assert all(torch.equal(p, q) for p, q in zip(lin.parameters(), w0))


def test_per_group_rho_from_group_overrides(tmp_path, tiny_corpus):
    from olmo_core.optim import OptimGroupOverride

    base = adamw()
    base.group_overrides = [OptimGroupOverride(params=["embeddings.weight"], opts={"rho": 0.0})]
    cfg = tiny_experiment(tiny_corpus, tmp_path / "run", SAMConfig(base=base, rho=0.05))
    trainer = build_trainer(cfg)
    tm = trainer.train_module
    ids = token_batch(tiny_corpus, 4)
    trainer.global_step = 1
    w0 = {n: p.detach().clone() for n, p in tm.model.named_parameters()}
    loss = tm.model(ids, labels=None)
    F.cross_entropy(loss[:, :-1].reshape(-1, loss.shape[-1]), ids[:, 1:].reshape(-1)).backward()
    tm.optim.perturb()
    moved = {n for n, p in tm.model.named_parameters() if not torch.equal(p, w0[n])}
    tm.optim.restore()
    assert "embeddings.weight" not in moved
    assert "lm_head.w_out.weight" in moved
