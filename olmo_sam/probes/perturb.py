"""Gaussian weight noise ([SAM-PT] Sec 3.4, App C.3, Eq. 7).

Each selected weight tensor ``W`` is replaced by

    W~ = W + gamma * ||W||_F * Z / ||Z||_F,    Z ~ N(0, I) of W's shape,

so the perturbation of every tensor has Frobenius norm exactly ``gamma * ||W||_F`` (a relative
perturbation of size ``gamma`` per tensor), in a uniformly random direction.

**Which tensors** (default): every parameter with at least two dimensions, i.e. every weight
matrix of the model: the token embedding, the attention projections (``w_q, w_k, w_v, w_out``),
the MLP projections (``w1, w2, w3``) and the LM head (``lm_head.w_out``). One-dimensional
parameters (RMSNorm/QK-norm gains, biases) are left untouched; the paper perturbs "the weight
tensor of each layer", and a gain vector is not a layer's weight matrix. ``include``/``exclude``
take glob patterns over parameter names (e.g. ``exclude=("embeddings.*", "lm_head.*")``) and
``min_ndim=1`` also perturbs the vectors. A pattern that matches nothing is an error.

The noise of a tensor depends only on ``(seed, parameter name)``, not on which other tensors are
selected or on their order.
"""

from __future__ import annotations

import contextlib
import fnmatch
import zlib
from typing import Dict, Iterator, List, Sequence, Tuple

import torch
import torch.nn as nn
from olmo_core.exceptions import OLMoConfigurationError

__all__ = ["select_weights", "gaussian_noise_", "perturbed", "DEFAULT_INCLUDE"]

DEFAULT_INCLUDE: Tuple[str, ...] = ("*",)


def select_weights(
    model: nn.Module,
    include: Sequence[str] = DEFAULT_INCLUDE,
    exclude: Sequence[str] = (),
    min_ndim: int = 2,
) -> List[Tuple[str, nn.Parameter]]:
    """The ``(name, parameter)`` pairs Eq. 7 perturbs (see the module docstring)."""
    named = list(model.named_parameters())
    names = [n for n, _ in named]
    for kind, pats in (("include", include), ("exclude", exclude)):
        dead = [p for p in pats if not any(fnmatch.fnmatchcase(n, p) for n in names)]
        if dead:
            raise OLMoConfigurationError(
                f"noise '{kind}' pattern(s) {dead} match no parameter; names look like {names[:4]}"
            )
    out = [
        (n, p)
        for n, p in named
        if p.ndim >= min_ndim
        and any(fnmatch.fnmatchcase(n, pat) for pat in include)
        and not any(fnmatch.fnmatchcase(n, pat) for pat in exclude)
    ]
    if not out:
        vectors = " (1-D parameters such as norm gains and biases need --perturb-vectors)" if min_ndim > 1 else ""
        raise OLMoConfigurationError(
            f"noise selection is empty (--include {list(include)}, --exclude {list(exclude)}, parameters of "
            f"{min_ndim}+ dimensions){vectors}"
        )
    return out


def _tensor_seed(seed: int, name: str) -> int:
    return (int(seed) * 0x9E3779B1 + zlib.crc32(name.encode())) % (2**63)


@torch.no_grad()
def gaussian_noise_(selection: Sequence[Tuple[str, nn.Parameter]], gamma: float, seed: int) -> Dict[str, float]:
    """Apply Eq. 7 in place to each selected tensor. Returns ``name -> ||W||_F`` (before noise).

    ``Z`` is drawn in float32 on the CPU from a generator seeded by ``(seed, name)``, so results
    do not depend on the device; the update is computed in float32 (or float64 for float64
    weights) and written back in the parameter's dtype.
    """
    if gamma < 0:
        raise OLMoConfigurationError(f"noise magnitude gamma must be >= 0, got {gamma}")
    norms: Dict[str, float] = {}
    for name, p in selection:
        work = torch.float64 if p.dtype == torch.float64 else torch.float32
        w = p.detach().to(work)
        gen = torch.Generator().manual_seed(_tensor_seed(seed, name))
        z = torch.randn(p.shape, generator=gen, dtype=torch.float32).to(device=p.device, dtype=work)
        w_norm = torch.linalg.vector_norm(w)
        z_norm = torch.linalg.vector_norm(z)
        p.copy_((w + (gamma * w_norm / z_norm) * z).to(p.dtype))
        norms[name] = float(w_norm)
    return norms


@contextlib.contextmanager
def perturbed(
    model: nn.Module,
    gamma: float,
    seed: int,
    *,
    include: Sequence[str] = DEFAULT_INCLUDE,
    exclude: Sequence[str] = (),
    min_ndim: int = 2,
) -> Iterator[List[str]]:
    """Perturb ``model`` by Eq. 7 inside the ``with`` block; the original weights are copied back
    (bit-identical) on exit. Yields the names of the perturbed tensors."""
    selection = select_weights(model, include, exclude, min_ndim)
    saved = [p.detach().clone() for _, p in selection]
    try:
        gaussian_noise_(selection, gamma, seed)
        yield [n for n, _ in selection]
    finally:
        with torch.no_grad():
            for (_, p), s in zip(selection, saved):
                p.copy_(s)
