"""MSAM and LookSAM steps of the real train module against an independent computation here.

The reference is written from the papers' algorithms (Becker et al. 2024, Algorithm 1 with AdamW's
first moment as the momentum; Liu et al. CVPR 2022, Algorithm 2) in float64 with torch.func and a
hand-written AdamW; it shares no code with olmo_sam.optim.
"""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from helpers import adamw, tiny_experiment, token_batch
from olmo_core.exceptions import OLMoConfigurationError
from olmo_core.optim.noop import NoOpConfig

from olmo_sam.optim import SAMConfig
from olmo_sam.train import build_trainer

LR, WD, ADAM_EPS, CLIP = 2e-3, 0.1, 1e-4, 0.5


def _ce(model, params, ids):
    logits = torch.func.functional_call(model, params, (ids,))
    return F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1))


def reference(model, batches, *, variant, rho, interval=1, alpha=0.7):
    """Independent MSAM/LookSAM + AdamW (betas 0.9/0.95) with clipping at CLIP.

    Returns the final (un-perturbed) weights, the recorded losses, and for MSAM the last
    perturbed point w~_T = w_T - rho m_T/||m_T|| the paper's training would hold before moving back.
    """
    model = copy.deepcopy(model).eval()
    names = [n for n, _ in model.named_parameters()]
    w = {n: p.detach().clone().double() for n, p in model.named_parameters()}
    m = {n: torch.zeros_like(x) for n, x in w.items()}
    v = {n: torch.zeros_like(x) for n, x in w.items()}
    gv = None
    out_losses = []

    def grads_at(params64, ids):
        params = {n: params64[n].float().requires_grad_(True) for n in names}
        loss = _ce(model, params, ids)
        g = torch.autograd.grad(loss, [params[n] for n in names])
        return float(loss), {n: gi.double() for n, gi in zip(names, g)}

    def norm(d):
        return math.sqrt(sum(float((d[n] ** 2).sum()) for n in names))

    def dot(a, b):
        return sum(float((a[n] * b[n]).sum()) for n in names)

    for t, ids in enumerate(batches, start=1):
        if variant == "msam":
            mn = norm(m)
            at = w if mn == 0 else {n: w[n] - rho * m[n] / (mn + 1e-12) for n in names}
            loss, g = grads_at(at, ids)  # the only pass, at w~_t
        else:  # looksam
            loss, g = grads_at(w, ids)
            if t % interval == 0:
                e = {n: rho * g[n] / (norm(g) + 1e-12) for n in names}
                _, gs = grads_at({n: w[n] + e[n] for n in names}, ids)
                c = dot(g, gs) / norm(g) ** 2
                gv = {n: gs[n] - c * g[n] for n in names}
                g = gs
            elif gv is not None:
                s = alpha * norm(g) / norm(gv)
                g = {n: g[n] + s * gv[n] for n in names}
        out_losses.append(loss)
        coef = min(1.0, CLIP / (norm(g) + 1e-6))
        for n in names:
            gn = g[n] * coef
            w[n] = w[n] * (1 - LR * WD)
            m[n] = 0.9 * m[n] + 0.1 * gn
            v[n] = 0.95 * v[n] + 0.05 * gn**2
            w[n] = w[n] - LR * (m[n] / (1 - 0.9**t)) / ((v[n] / (1 - 0.95**t)).sqrt() + ADAM_EPS)
    mn = norm(m)
    w_tilde = {n: w[n] - rho * m[n] / (mn + 1e-12) for n in names}
    return w, out_losses, w_tilde


def _run_steps(corpus, tmp_path, optim, steps):
    base = adamw(lr=LR, wd=WD)
    base.eps = ADAM_EPS  # (see test_sam_step: keeps the comparison about the algorithm)
    optim.base = base
    trainer = build_trainer(tiny_experiment(corpus, tmp_path / "run", optim, max_grad_norm=CLIP))
    tm = trainer.train_module
    batches = [token_batch(corpus, 4, offset=i) for i in range(steps)]
    model0 = copy.deepcopy(tm.model)
    for step, ids in enumerate(batches, start=1):
        trainer.global_step = step
        tm.train_batch({"input_ids": ids.clone()})  # 2 micro-batches of 2 sequences
        tm.optim_step()
        tm.zero_grads()
    return trainer, model0, batches


def _worst(model, ref):
    return max(float((p.detach().double() - ref[n]).abs().max()) for n, p in model.named_parameters())


def test_msam_steps_match_the_paper_and_end_at_the_unperturbed_weights(tmp_path, tiny_corpus):
    rho = 0.3
    trainer, model0, batches = _run_steps(tiny_corpus, tmp_path, SAMConfig(rho=rho, variant="msam"), steps=4)
    tm = trainer.train_module
    ref_w, ref_losses, ref_w_tilde = reference(model0, batches, variant="msam", rho=rho)
    for step in range(1, 5):
        metrics = trainer._metrics[step]
        assert float(metrics["train/CE loss"]) == pytest.approx(ref_losses[step - 1], abs=1e-5)
        # step 1 has no momentum yet; every later step ascends along it
        assert float(metrics["sam/ascent"]) == (0.0 if step == 1 else 1.0)
    assert _worst(tm.model, ref_w) < 1e-6
    # the weights left after training are the paper's moved-back w_T, not the perturbed w~_T
    assert _worst(tm.model, ref_w_tilde) > 100 * 1e-6
    assert not tm.optim.is_perturbed
    assert tm.sam_ascents == 3


def test_looksam_steps_match_the_paper(tmp_path, tiny_corpus):
    rho, alpha = 0.05, 0.7
    optim = SAMConfig(rho=rho, variant="looksam", interval=2, looksam_alpha=alpha)
    trainer, model0, batches = _run_steps(tiny_corpus, tmp_path, optim, steps=5)
    tm = trainer.train_module
    ref_w, ref_losses, _ = reference(model0, batches, variant="looksam", rho=rho, interval=2, alpha=alpha)
    m = trainer._metrics
    assert [float(m[s]["sam/ascent"]) for s in range(1, 6)] == [0, 1, 0, 1, 0]
    assert [float(m[s]["sam/looksam reuse"]) for s in (1, 3, 5)] == [0.0, 1.0, 1.0]
    for step in range(1, 6):
        assert float(m[step]["train/CE loss"]) == pytest.approx(ref_losses[step - 1], abs=1e-5)
    assert _worst(tm.model, ref_w) < 1e-6
    # and the reuse really changed the update: plain SAM interval=2 ends elsewhere
    sam_w, _, _ = reference(model0, batches, variant="looksam", rho=rho, interval=2, alpha=0.0)
    assert _worst(tm.model, sam_w) > 100 * 1e-6


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"variant": "mlsam"}, "variant: must be one of"),
        ({"variant": "msam", "scope": "local"}, "scope"),
        ({"variant": "looksam", "adaptive": True}, "adaptive"),
        ({"variant": "looksam", "looksam_alpha": -1.0}, "looksam_alpha"),
        ({"variant": "looksam", "looksam_alpha": "x"}, "looksam_alpha"),
    ],
)
def test_variant_options_are_validated(kwargs, match):
    with pytest.raises(OLMoConfigurationError, match=match):
        SAMConfig(**kwargs)


def test_a_skip_step_base_is_refused_by_name():
    """OLMo-core's NoOp optimizer (a skip-step one, and the one without momentum) is refused as a
    base whatever the variant: its statistics would never receive a loss under the wrapper."""
    for variant in ("sam", "msam"):
        with pytest.raises(OLMoConfigurationError, match="'base': NoOpOptimizer cannot be wrapped by SAM"):
            SAMConfig(base=NoOpConfig(), variant=variant)
