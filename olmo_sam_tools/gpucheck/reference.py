"""An independent SAM/ASAM + AdamW step, written from the papers' equations.

Used by ``tests/test_sam_step.py`` (CPU) and by the GPU check (:mod:`olmo_sam_tools.gpucheck.correctness`)
to check the real train module's step. It deliberately shares no code with :mod:`olmo_sam.optim`:
the ascent is [SAM-PT] App A.1.1-A.1.2 / Foret et al. 2021 Eq. 2 (SAM) and Kwon et al. 2021
(ASAM, element-wise |w| scaling), the base step a hand-written AdamW with decoupled weight decay,
the gradient from ``torch.func`` on a CPU copy of the model, accumulated in float64.
"""

from __future__ import annotations

import copy
import math
from typing import Dict, List, Sequence, Tuple

import torch
import torch.nn.functional as F

__all__ = ["reference_steps", "next_token_ce"]


def next_token_ce(model: torch.nn.Module, params: Dict[str, torch.Tensor], ids: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross-entropy of ``model`` with ``params`` on ``ids`` (shape B x T)."""
    logits = torch.func.functional_call(model, params, (ids,))
    return F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1))


def reference_steps(
    model: torch.nn.Module,
    batches: Sequence[torch.Tensor],
    *,
    lr: float,
    betas: Tuple[float, float],
    wd: float,
    eps_adam: float,
    rho: float,
    adaptive: bool,
    clip: float | None,
) -> Tuple[Dict[str, torch.Tensor], List[float], List[float]]:
    """SAM (``adaptive=False``) or ASAM + AdamW on a CPU copy of ``model``, one step per batch.

    Returns the final parameters (float64, by name), the loss at ``w`` of every step and the loss
    at ``w + eps`` of every step. ``rho=0`` is plain AdamW. ``clip`` is the global-norm clipping of
    the (second-pass) gradient before the base step.
    """
    with torch.device("cpu"):
        model = copy.deepcopy(model).cpu().eval()
        names = [n for n, _ in model.named_parameters()]
        w = {n: p.detach().clone().double() for n, p in model.named_parameters()}
        m = {n: torch.zeros_like(v) for n, v in w.items()}
        v = {n: torch.zeros_like(x) for n, x in w.items()}
        b1, b2 = betas
        out_losses: List[float] = []
        pert_losses: List[float] = []

        def grads_at(params64, ids):
            params = {n: params64[n].float().requires_grad_(True) for n in names}
            loss = next_token_ce(model, params, ids)
            g = torch.autograd.grad(loss, [params[n] for n in names])
            return float(loss), {n: gi.double() for n, gi in zip(names, g)}

        for t, ids in enumerate(batches, start=1):
            ids = ids.cpu()
            loss, g = grads_at(w, ids)
            out_losses.append(loss)
            if rho > 0:
                if adaptive:  # ASAM: eps = rho * T_w^2 g / ||T_w g||, T_w = |w|
                    norm = math.sqrt(sum(float(((w[n].abs() * g[n]) ** 2).sum()) for n in names))
                    e = {n: rho * w[n] ** 2 * g[n] / (norm + 1e-12) for n in names}
                else:  # SAM: eps = rho * g / ||g||
                    norm = math.sqrt(sum(float((g[n] ** 2).sum()) for n in names))
                    e = {n: rho * g[n] / (norm + 1e-12) for n in names}
                ploss, g = grads_at({n: w[n] + e[n] for n in names}, ids)
                pert_losses.append(ploss)
            if clip is not None:
                total = math.sqrt(sum(float((g[n] ** 2).sum()) for n in names))
                coef = min(1.0, clip / (total + 1e-6))
                g = {n: g[n] * coef for n in names}
            for n in names:
                w[n] = w[n] * (1 - lr * wd)
                m[n] = b1 * m[n] + (1 - b1) * g[n]
                v[n] = b2 * v[n] + (1 - b2) * g[n] ** 2
                mhat = m[n] / (1 - b1**t)
                vhat = v[n] / (1 - b2**t)
                w[n] = w[n] - lr * mhat / (vhat.sqrt() + eps_adam)
    return w, out_losses, pert_losses
