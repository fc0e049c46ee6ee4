"""Hessian geometry of the pretraining loss: HVPs, tr(H), lambda_max, directional sharpness.

Everything here needs only Hessian-vector products ``H v`` of a scalar loss closure with respect
to a list of parameters (:class:`HessianVectorProduct`), computed either

* by **double backward** (Pearlmutter): ``H v = d/dtheta (grad L(theta) . v)``. Every op in the
  graph needs a twice-differentiable backward. PyTorch's fused SDPA kernels (the CPU flash kernel,
  the CUDA flash/memory-efficient kernels) and flash-attn have none, so the model must use
  OLMo-core's ``torch`` attention backend (:data:`AttentionBackendName.torch`, see
  :func:`hvp_model_config`), and the products run inside :func:`double_backward_attention`, which
  pins SDPA to its ``MATH`` kernel: plain matmul + softmax, differentiable to any order.
* by **finite differences** of gradients, ``H v ~ (g(theta + h v) - g(theta - h v)) / 2h``
  (central, O(h^2) error), for models whose kernels have no double backward (fused attention,
  fused losses) or whose parameters are FSDP shards (the gradient then comes from an ordinary
  ``backward()``, which performs FSDP's reduce-scatter, and inner products are all-reduced).

On top of the product: Hutchinson's trace estimator (:func:`hutchinson_trace`), power iteration
for the top eigenvalue (:func:`top_eigenvalue`), the directional curvature of [SAM-PT] Eq. 1
(:func:`directional_sharpness`) and the second-order prediction of [SAM-PT] Eqs. 2-4, 6
(:func:`quadratic_prediction`).
"""

from __future__ import annotations

import contextlib
import copy
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F
from olmo_core.exceptions import OLMoConfigurationError
from torch.distributed.tensor import DTensor

from .. import paper

__all__ = [
    "HessianVectorProduct",
    "TraceEstimate",
    "EigenEstimate",
    "QuadraticPrediction",
    "double_backward_attention",
    "attention_backend_names",
    "hvp_model_config",
    "to_hvp_model",
    "lm_batch_loss",
    "hutchinson_trace",
    "top_eigenvalue",
    "edge_of_stability",
    "directional_sharpness",
    "quadratic_prediction",
    "parameter_delta",
]

Vector = List[torch.Tensor]
HVP_METHODS = ("double_backward", "finite_difference")


# -------------------------------------------------------------------------------------------------
# Attention backends
# -------------------------------------------------------------------------------------------------


@contextlib.contextmanager
def double_backward_attention() -> Iterator[None]:
    """Pin ``F.scaled_dot_product_attention`` to the ``MATH`` kernel (differentiable twice)."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    with sdpa_kernel([SDPBackend.MATH]):
        yield


def attention_backend_names(model: nn.Module) -> Dict[str, str]:
    """Attention module name -> class name of its OLMo-core attention backend."""
    from olmo_core.nn.attention.backend import AttentionBackend

    return {
        name: type(mod.backend).__name__
        for name, mod in model.named_modules()
        if isinstance(getattr(mod, "backend", None), AttentionBackend)
    }


def hvp_model_config(model_config):
    """A copy of an OLMo-core ``TransformerConfig`` whose attention uses the ``torch`` backend
    (SDPA; with :func:`double_backward_attention` it supports double backward)."""
    from olmo_core.nn.attention import AttentionBackendName

    cfg = copy.deepcopy(model_config)
    mixer = getattr(cfg.block, "sequence_mixer", None) or getattr(cfg.block, "attention", None)
    if mixer is None or not hasattr(mixer, "backend"):
        raise OLMoConfigurationError("hvp_model_config: the block has no attention config with a 'backend' field")
    mixer.backend = AttentionBackendName.torch
    if getattr(mixer, "use_flash", None):
        mixer.use_flash = None
    if getattr(cfg, "block_overrides", None):
        for block in cfg.block_overrides.values():
            m = getattr(block, "sequence_mixer", None)
            if m is not None and hasattr(m, "backend"):
                m.backend = AttentionBackendName.torch
    return cfg


def to_hvp_model(model: nn.Module, model_config) -> nn.Module:
    """``model`` itself when all its attention runs on the torch backend, else a rebuild of it from
    :func:`hvp_model_config` with the same weights (e.g. flash-attn was picked on a GPU)."""
    names = set(attention_backend_names(model).values())
    if names <= {"TorchAttentionBackend"}:
        return model
    p = next(model.parameters())
    new = hvp_model_config(model_config).build(init_device="cpu")
    new.load_state_dict({k: v.detach().cpu() for k, v in model.state_dict().items()}, strict=False)
    return new.to(p.device).eval()


def check_double_backward(model: nn.Module) -> None:
    bad = {n: b for n, b in attention_backend_names(model).items() if b != "TorchAttentionBackend"}
    if bad:
        example = next(iter(bad.items()))
        raise OLMoConfigurationError(
            f"double-backward HVPs need OLMo-core's 'torch' attention backend, but {len(bad)} "
            f"attention module(s) use another (e.g. {example[0]}: {example[1]}); rebuild the model "
            "with olmo_sam.probes.hessian.hvp_model_config / to_hvp_model, or use "
            "method='finite_difference'"
        )


# -------------------------------------------------------------------------------------------------
# The loss
# -------------------------------------------------------------------------------------------------


def lm_batch_loss(model: nn.Module, tokens: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross-entropy of ``model`` on ``tokens`` (B, T+1): the per-batch version of
    :func:`olmo_sam.evals.lm_loss` (same windows, same reduction)."""
    from ..evals.lm_loss import logits_of

    inputs, labels = tokens[:, :-1], tokens[:, 1:]
    logits = logits_of(model(inputs)).float()
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1))


def fixed_batch(
    paths: Sequence[str | Path], seq_len: int, vocab_size: int, n_sequences: int, device=None
) -> torch.Tensor:
    """The first ``n_sequences`` validation windows (``seq_len + 1`` tokens each), as a tensor."""
    from ..data.tokens import token_dtype_for_vocab
    from ..evals.lm_loss import iter_windows

    windows = list(iter_windows(paths, seq_len, token_dtype_for_vocab(vocab_size), n_sequences))
    if len(windows) < n_sequences:
        raise OLMoConfigurationError(
            f"the validation files {list(map(str, paths))} hold {len(windows)} windows of "
            f"{seq_len + 1} tokens; {n_sequences} are needed for the Hessian batch"
        )
    return torch.from_numpy(np.stack(windows)).to(device or "cpu")


# -------------------------------------------------------------------------------------------------
# Vector helpers (lists of tensors; DTensor shards are reduced over their mesh)
# -------------------------------------------------------------------------------------------------


def _local(t: torch.Tensor) -> torch.Tensor:
    return t.to_local() if isinstance(t, DTensor) else t


def _shard_group(params: Sequence[torch.Tensor]):
    for p in params:
        if isinstance(p, DTensor):
            mesh = p.device_mesh
            if mesh.ndim != 1:
                raise OLMoConfigurationError(
                    f"Hessian probes support 1-D (FSDP) device meshes only, got a {mesh.ndim}-D mesh (HSDP/TP)"
                )
            return mesh.get_group()
    return None


def dot(a: Vector, b: Vector, group=None) -> float:
    """Inner product of two parameter-shaped vectors (float64 accumulation)."""
    local = torch.zeros((), dtype=torch.float64, device=_local(a[0]).device)
    with torch.no_grad():
        for x, y in zip(a, b):
            # per-tensor dot in the tensors' dtype (BLAS accumulation), summed in float64
            local += torch.dot(_local(x).reshape(-1), _local(y).reshape(-1)).double()
    if group is not None:
        dist.all_reduce(local, group=group)
    return float(local)


def rademacher_like(params: Sequence[torch.Tensor], gen: torch.Generator) -> Vector:
    """Independent +-1 entries, shaped like (the local shards of) ``params``."""
    out = []
    for p in params:
        t = _local(p)
        r = torch.randint(0, 2, t.shape, generator=gen, device="cpu", dtype=t.dtype)
        out.append(r.mul_(2).sub_(1).to(t.device))
    return out


def _generator(seed: int, group=None) -> torch.Generator:
    # shards of one global vector must differ across ranks; replicas (DDP) must agree
    rank = dist.get_rank(group) if group is not None else 0
    return torch.Generator().manual_seed(int(seed) * 1_000_003 + rank)


# -------------------------------------------------------------------------------------------------
# Hessian-vector products
# -------------------------------------------------------------------------------------------------


#: the finite-difference products' default relative step (``h = FD_STEP * max(||theta||, 1) / ||v||``)
FD_STEP = 1e-3


class HessianVectorProduct:
    """``v -> H v`` for the Hessian of ``loss_fn()`` with respect to ``params`` at their current
    values.

    :param loss_fn: recomputes the scalar loss from the current parameter values.
    :param params: the parameters (plain tensors with ``requires_grad``, or FSDP ``DTensor``
        shards; for shards only ``finite_difference`` applies).
    :param method: ``"double_backward"`` (exact up to float rounding) or
        ``"finite_difference"`` (central difference of gradients).
    :param fd_step: finite-difference step, relative: ``h = fd_step * max(||theta||, 1) / ||v||``.
    :param reuse_graph: double backward only: build the gradient graph (``create_graph=True``)
        once and keep it across products, so each further product is a single double-backward
        pass. The peak memory is that of one product either way; the graph is rebuilt when a
        parameter is modified in place and dropped by :meth:`release` (the estimators call it).
    :param model: for ``double_backward``, the module whose attention backends are checked; the
        products run inside :func:`double_backward_attention`.
    """

    def __init__(
        self,
        loss_fn: Callable[[], torch.Tensor],
        params: Sequence[torch.Tensor],
        *,
        method: str = "double_backward",
        fd_step: float = FD_STEP,
        reuse_graph: bool = True,
        model: Optional[nn.Module] = None,
    ):
        if method not in HVP_METHODS:
            raise OLMoConfigurationError(f"HVP 'method' must be one of {HVP_METHODS}, got {method!r}")
        self.params = [p for p in params]
        if not self.params:
            raise OLMoConfigurationError("HessianVectorProduct: no parameters given")
        self.group = _shard_group(self.params)
        self.sharded = self.group is not None
        if method == "double_backward":
            if self.sharded:
                raise OLMoConfigurationError(
                    "double-backward HVPs cannot differentiate through FSDP's all-gather; use "
                    "method='finite_difference' for sharded parameters"
                )
            if model is not None:
                check_double_backward(model)
        self.loss_fn = loss_fn
        self.method = method
        self.fd_step = fd_step
        self.reuse_graph = reuse_graph
        self.n_products = 0
        self._graph: Optional[Tuple[Tuple[int, ...], Vector]] = None
        self._theta_norm: Optional[float] = None

    # -- gradients ---------------------------------------------------------------------------------

    def loss_and_grad(self) -> Tuple[float, Vector]:
        """``L(theta)`` and ``grad L(theta)`` (local shards for FSDP parameters)."""
        with torch.enable_grad():
            if not self.sharded:
                loss = self.loss_fn()
                grads = torch.autograd.grad(loss, self.params)
                return float(loss.detach()), [g.detach() for g in grads]
            # FSDP: the sharded parameters are not in the autograd graph of the forward; an
            # ordinary backward reduce-scatters into their .grad. Keep the caller's .grad intact.
            saved = [p.grad for p in self.params]
            for p in self.params:
                p.grad = None
            try:
                loss = self.loss_fn()
                loss.backward()
                grads = [
                    _local(p.grad).detach().clone() if p.grad is not None else torch.zeros_like(_local(p))
                    for p in self.params
                ]
            finally:
                for p, g in zip(self.params, saved):
                    p.grad = g
            return float(loss.detach()), grads

    # -- products ----------------------------------------------------------------------------------

    def __call__(self, v: Vector) -> Vector:
        self.n_products += 1
        if self.method == "double_backward":
            return self._double_backward(v)
        return self._finite_difference(v)

    def _double_backward(self, v: Vector) -> Vector:
        versions = tuple(p._version for p in self.params)
        with torch.enable_grad(), double_backward_attention():
            if self._graph is not None and self._graph[0] == versions:
                grads = self._graph[1]
            else:
                self._graph = None
                loss = self.loss_fn()
                grads = list(torch.autograd.grad(loss, self.params, create_graph=True))
                if self.reuse_graph:
                    self._graph = (versions, grads)
            gv = sum((g * x).sum() for g, x in zip(grads, v))
            hv = torch.autograd.grad(gv, self.params, retain_graph=self.reuse_graph)
        return [h.detach() for h in hv]

    def release(self) -> None:
        """Drop a retained gradient graph (``reuse_graph=True``)."""
        self._graph = None

    def step_size(self, v: Vector) -> float:
        if self._theta_norm is None:
            self._theta_norm = math.sqrt(dot(self.params, self.params, self.group))
        vn = math.sqrt(dot(v, v, self.group))
        if vn == 0:
            raise ValueError("finite-difference HVP of a zero vector")
        return self.fd_step * max(self._theta_norm, 1.0) / vn

    @torch.no_grad()
    def _shift(self, originals: Vector, v: Vector, h: float) -> None:
        for p, o, x in zip(self.params, originals, v):
            _local(p).copy_(o + h * x)

    def _finite_difference(self, v: Vector, step_scale: float = 1.0) -> Vector:
        h = self.step_size(v) * step_scale
        originals = [_local(p).detach().clone() for p in self.params]
        try:
            self._shift(originals, v, h)
            _, g_plus = self.loss_and_grad()
            self._shift(originals, v, -h)
            _, g_minus = self.loss_and_grad()
        finally:
            with torch.no_grad():  # exact restore: copy, not add/subtract
                for p, o in zip(self.params, originals):
                    _local(p).copy_(o)
        return [(a - b) / (2 * h) for a, b in zip(g_plus, g_minus)]

    def quadratic_form(self, v: Vector) -> float:
        """``v^T H v``."""
        return dot(v, self(v), self.group)

    def fd_quadratic_form(self, v: Vector, step_scale: float) -> float:
        """``v^T H v`` by finite differences at ``step_scale`` times the usual step (one product)."""
        self.n_products += 1
        return dot(v, self._finite_difference(v, step_scale), self.group)


# -------------------------------------------------------------------------------------------------
# Trace, top eigenvalue
# -------------------------------------------------------------------------------------------------


@dataclass
class TraceEstimate:
    """Hutchinson estimate of tr(H): the mean of ``n_probes`` samples ``v^T H v`` and its standard
    error ``std / sqrt(n)`` (sample std, ddof=1)."""

    trace: float
    stderr: float
    n_probes: int
    converged: bool
    samples: List[float] = field(default_factory=list)
    seconds: float = 0.0

    def to_dict(self) -> Dict[str, object]:
        return asdict(self)


def hutchinson_trace(
    hvp: HessianVectorProduct,
    *,
    n_probes: int = paper.HUTCHINSON_PROBES,
    rtol: Optional[float] = None,
    min_probes: int = 10,
    seed: int = 0,
    progress: bool = False,
) -> TraceEstimate:
    """Hutchinson's estimator ([WSO] Sec 6, Def 6.1 and App H Eq. 12; Hutchinson 1989):
    ``tr(H) = E_v[v^T H v]`` for Rademacher ``v`` (i.i.d. +-1 entries), averaged over probes.

    Stops after ``n_probes`` probes ([WSO] App H uses 50), or earlier, once at least
    ``min_probes`` were drawn and the standard error is at most ``rtol * |mean|``.
    """
    if n_probes < 1:
        raise OLMoConfigurationError(f"'n_probes' must be >= 1, got {n_probes}")
    gen = _generator(seed, hvp.group)
    t0 = time.perf_counter()
    samples: List[float] = []
    mean = m2 = 0.0
    stderr = float("inf")
    converged = False
    bar = _progress(n_probes, "Hutchinson probes") if progress else None
    for i in range(1, n_probes + 1):
        v = rademacher_like(hvp.params, gen)
        s = hvp.quadratic_form(v)
        samples.append(s)
        delta = s - mean  # Welford's running mean / variance
        mean += delta / i
        m2 += delta * (s - mean)
        stderr = math.sqrt(m2 / (i - 1) / i) if i > 1 else float("inf")
        if bar is not None:
            bar.update(1)
            bar.set_postfix(trace=f"{mean:.4g}", se=f"{stderr:.2g}")
        if rtol is not None and i >= min_probes and stderr <= rtol * abs(mean):
            converged = True
            break
    if bar is not None:
        bar.close()
    hvp.release()
    return TraceEstimate(
        trace=mean,
        stderr=stderr if math.isfinite(stderr) else float("nan"),
        n_probes=len(samples),
        converged=converged or rtol is None,
        samples=samples,
        seconds=time.perf_counter() - t0,
    )


@dataclass
class EigenEstimate:
    """Power-iteration estimate of the largest (algebraic) Hessian eigenvalue ``lambda_max``."""

    value: float
    iterations: int
    converged: bool
    #: ||H v - lambda v|| / |lambda| at the last iterate
    residual: float
    #: the eigenvalue of largest magnitude (the first power iteration); equals ``value`` unless
    #: a negative eigenvalue dominates, in which case ``value`` comes from a shifted iteration
    largest_magnitude: float = float("nan")
    seconds: float = 0.0
    #: finite differences only: the final eigenvector's Rayleigh quotient recomputed at a smaller
    #: step, ``{"step", "value", "rel_diff", "ok"}`` (``step`` relative, as ``fd_step``); when the
    #: two steps disagree by more than ``rtol`` the estimate is not trusted (``converged`` False)
    fd_check: Optional[Dict[str, object]] = None

    def to_dict(self) -> Dict[str, object]:
        return asdict(self)


#: the finite-difference check of lambda_max recomputes the Rayleigh quotient at this fraction of
#: the step: the central difference's O(h^2) error shrinks 64-fold, so the difference between the
#: two values is (63/64 of) the error of the first, while float32 round-off is still small
FD_CHECK_STEP_SCALE = 1.0 / 8


def _power_iteration(
    hvp, shift: float, iters: int, rtol: float, residual_tol: float, gen, bar
) -> Tuple[float, int, bool, float, Vector]:
    """Power iteration on ``H - shift * I``: (eigenvalue of largest magnitude of H - shift I,
    iterations, converged, residual ||H v - (lam + shift) v|| / |lam + shift|, the unit vector
    whose Rayleigh quotient that eigenvalue is)."""
    v = [torch.randn(_local(p).shape, generator=gen).to(_local(p)) for p in hvp.params]
    n = math.sqrt(dot(v, v, hvp.group))
    v = [x / n for x in v]
    lam = prev = residual = float("nan")
    converged = False
    it = 0
    v_lam = v
    for it in range(1, iters + 1):
        v_lam = v
        hv = hvp(v)
        if shift:
            hv = [h - shift * x for h, x in zip(hv, v)]
        lam = dot(v, hv, hvp.group)
        hn = math.sqrt(dot(hv, hv, hvp.group))
        # convergence is judged on H's eigenvalue lam + shift, not on the shifted one: near-null
        # directions of H are exact eigenvectors of H - shift*I (eigenvalue -shift), so a start
        # vector that lies mostly in them looks converged to the shifted operator
        h_lam = abs(lam + shift)
        residual = math.sqrt(max(hn**2 - lam**2, 0.0)) / max(h_lam, 1e-30)
        if bar is not None:
            bar.update(1)
            bar.set_postfix(lam=f"{lam + shift:.4g}")
        if it > 1 and abs(lam - prev) <= rtol * h_lam and residual <= residual_tol:
            converged = True
            break
        prev = lam
        if hn == 0:
            break
        v = [x / hn for x in hv]
    return lam, it, converged, residual, v_lam


def top_eigenvalue(
    hvp: HessianVectorProduct,
    *,
    iters: int = 100,
    rtol: float = 1e-3,
    residual_tol: float = 0.05,
    seed: int = 0,
    progress: bool = False,
) -> EigenEstimate:
    """``lambda_max(H)`` by power iteration ``v <- H v / ||H v||`` with Rayleigh quotient
    ``v^T H v``, converged when it changes by at most ``rtol`` (relative) and the residual
    ``||H v - lambda v|| / |lambda|`` is at most ``residual_tol``; at most ``iters`` products per
    run (check ``converged``). Power iteration finds the eigenvalue of largest magnitude; when that is negative
    (away from a minimum), a second run on ``H - lambda_1 I`` (all eigenvalues shifted to >= 0)
    finds ``lambda_max - lambda_1``.

    With finite-difference products, the final eigenvector's Rayleigh quotient is recomputed at
    :data:`FD_CHECK_STEP_SCALE` times the step (one more product, recorded in ``fd_check``): along
    the top eigendirection the loss can be far from quadratic at the step that is accurate for
    random directions, and power iteration then converges, stably, to a wrong value. When the two
    steps disagree by more than ``rtol`` (relative), ``converged`` is False."""
    gen = _generator(seed + 7919, hvp.group)
    t0 = time.perf_counter()
    bar = _progress(iters, "power iteration") if progress else None
    lam1, it, converged, residual, vec = _power_iteration(hvp, 0.0, iters, rtol, residual_tol, gen, bar)
    value = lam1
    if lam1 < 0:
        if bar is not None:
            bar.reset(total=iters)
        lam2, it2, converged, residual, vec = _power_iteration(hvp, lam1, iters, rtol, residual_tol, gen, bar)
        value, it = lam2 + lam1, it + it2
    if bar is not None:
        bar.close()
    fd_check = None
    if hvp.method == "finite_difference" and math.isfinite(value):
        # ``value`` is the Rayleigh quotient of ``vec`` (a unit vector) at the usual step
        small = hvp.fd_quadratic_form(vec, FD_CHECK_STEP_SCALE)
        rel_diff = abs(value - small) / max(abs(small), 1e-30)
        ok = rel_diff <= rtol
        fd_check = {
            "step": hvp.fd_step * FD_CHECK_STEP_SCALE,
            "value": small,
            "rel_diff": rel_diff,
            "ok": ok,
        }
        converged = converged and ok
    hvp.release()
    return EigenEstimate(
        value=value,
        iterations=it,
        converged=converged,
        residual=residual,
        largest_magnitude=lam1,
        seconds=time.perf_counter() - t0,
        fd_check=fd_check,
    )


def edge_of_stability(lr: float) -> float:
    """``2 / lr``: gradient descent at learning rate ``lr`` is stable only while
    ``lambda_max(H) < 2 / lr`` (Cohen et al. 2021; [SAM-PT] Sec 2.3)."""
    if lr <= 0:
        raise OLMoConfigurationError(f"learning rate must be > 0, got {lr}")
    return 2.0 / lr


# -------------------------------------------------------------------------------------------------
# Directional sharpness and the quadratic model of forgetting
# -------------------------------------------------------------------------------------------------


def directional_sharpness(hvp: HessianVectorProduct, delta: Vector) -> float:
    """Directional curvature ``kappa(Delta; H) = Delta^T H Delta / ||Delta||^2``
    ([SAM-PT] Sec 2.2, Eq. 1; Sec 4.2 along ``Delta_FT = theta_FT - theta_PT``)."""
    return quadratic_prediction(hvp, delta).directional_sharpness


@dataclass
class QuadraticPrediction:
    """The second-order model of the pretraining loss along ``Delta`` ([SAM-PT] Sec 2.2, 4.1)."""

    #: L(theta) at the base point
    loss_base: float
    #: grad L(theta)^T Delta (the first-order term of Eq. 2, dropped by Eqs. 3 and 6)
    first_order: float
    #: Delta^T H Delta
    curvature: float
    #: ||Delta||^2
    delta_sq_norm: float
    #: observed L(theta + Delta), when given
    loss_observed: Optional[float] = None

    @property
    def directional_sharpness(self) -> float:
        """Eq. 1: ``kappa = Delta^T H Delta / ||Delta||^2``."""
        return self.curvature / self.delta_sq_norm if self.delta_sq_norm else float("nan")

    @property
    def predicted_increase(self) -> float:
        """Eqs. 3-4: ``L(theta_FT) - L(theta_PT) ~ 1/2 Delta^T H Delta = 1/2 ||Delta||^2 kappa``."""
        return 0.5 * self.curvature

    @property
    def predicted(self) -> float:
        """Eq. 6: ``L_PT(theta_FT) ~ L_PT(theta_PT) + 1/2 Delta^T H Delta``."""
        return self.loss_base + self.predicted_increase

    @property
    def predicted_taylor2(self) -> float:
        """Eq. 2: ``L + grad L^T Delta + 1/2 Delta^T H Delta`` (with the gradient term)."""
        return self.loss_base + self.first_order + self.predicted_increase

    def to_dict(self) -> Dict[str, object]:
        d = asdict(self)
        d.update(
            directional_sharpness=self.directional_sharpness,
            predicted_increase=self.predicted_increase,
            predicted=self.predicted,
            predicted_taylor2=self.predicted_taylor2,
            observed_increase=(self.loss_observed - self.loss_base) if self.loss_observed is not None else None,
        )
        return d


def quadratic_prediction(
    hvp: HessianVectorProduct, delta: Vector, *, loss_observed: Optional[float] = None
) -> QuadraticPrediction:
    """Evaluate the quadratic model at the base point (the parameters' current values) along
    ``delta``; ``loss_observed`` is ``L(theta + delta)`` measured on the same data."""
    loss, grad = hvp.loss_and_grad()
    hd = hvp(delta)
    pred = QuadraticPrediction(
        loss_base=loss,
        first_order=dot(grad, delta, hvp.group),
        curvature=dot(delta, hd, hvp.group),
        delta_sq_norm=dot(delta, delta, hvp.group),
        loss_observed=loss_observed,
    )
    hvp.release()
    return pred


def parameter_delta(finetuned: nn.Module, base: nn.Module, names: Sequence[str]) -> Vector:
    """``theta_FT - theta_PT`` for the named parameters (same order as ``names``)."""
    ft = dict(finetuned.named_parameters())
    pt = dict(base.named_parameters())
    missing = [n for n in names if n not in ft or n not in pt]
    if missing:
        raise OLMoConfigurationError(
            f"the fine-tuned and base models do not share parameters {missing[:5]}: not the same architecture"
        )
    out = []
    for n in names:
        if ft[n].shape != pt[n].shape:
            raise OLMoConfigurationError(
                f"parameter {n!r} has shape {tuple(ft[n].shape)} in the fine-tuned model and "
                f"{tuple(pt[n].shape)} in the base model"
            )
        out.append((ft[n].detach().to(pt[n].device, torch.float32) - pt[n].detach().float()).to(pt[n].dtype))
    return out


def _progress(total: int, desc: str):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, leave=False, dynamic_ncols=True)
