"""Quadratic weight penalties towards the base model: EWC and L2-to-initialisation.

Both are one objective ([SAM-PT] App E.1.5, Eq. 11, after Kirkpatrick et al. 2017):

    L(theta) = L_new(theta) + lambda * sum_i F_i (theta_i - theta*_i)^2

with theta* the base (pretrained) weights and F the diagonal empirical Fisher information,
estimated by :func:`diagonal_fisher` as the mean of squared mini-batch gradients of the
pretraining loss at theta* over N batches (Table 10: N = 100 batches of 64 x 1024 tokens).
L2-to-initialisation ([CFS] Sec 3, penalty 1e-3) is the same with F_i = 1.

:class:`WeightPenaltyCallback` adds the exact gradient of the penalty,
``2 * lambda * F_i (theta_i - theta*_i)``, to each parameter's gradient in the trainer's
``pre_optim_step`` hook, i.e. after OLMo-core's backward passes and before clipping and the
optimizer step, so clipping and AdamW see the gradient of the full objective. Under DDP every
rank adds the same term to its (already averaged) gradient; under FSDP each rank works on its
own shards of theta, theta* and F. The penalty value is logged as ``{name}/penalty``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from olmo_core.config import Config
from olmo_core.distributed.utils import get_local_tensor
from olmo_core.exceptions import OLMoConfigurationError
from olmo_core.train.callbacks import Callback
from olmo_core.train.common import ReduceType
from tqdm import tqdm

from ..checkpoints import load_transformer
from ..config import check_fields, setting
from ..evals.lm_loss import logits_of
from ..output import atomic_write
from .sharding import is_sharded, local_like

log = logging.getLogger(__name__)

__all__ = [
    "penalty_and_grad",
    "diagonal_fisher",
    "sample_windows",
    "save_tensors",
    "load_tensors",
    "WeightPenaltyCallback",
]


def penalty_and_grad(
    theta: torch.Tensor, anchor: torch.Tensor, lam: float, fisher: Optional[torch.Tensor] = None
) -> Tuple[torch.Tensor, torch.Tensor]:
    """``lambda * sum F (theta - anchor)^2`` and its gradient w.r.t. ``theta`` (module docstring).

    ``fisher=None`` means F = 1 (L2-to-initialisation)."""
    diff = theta.detach().float() - anchor.float()
    weighted = diff if fisher is None else fisher.float() * diff
    value = lam * (weighted * diff).sum()
    return value, (2.0 * lam) * weighted


# ---------------------------------------------------------------------------------------------
# Fisher information
# ---------------------------------------------------------------------------------------------


def sample_windows(
    paths: Sequence[str | Path], seq_len: int, dtype: np.dtype, count: int, seed: int
) -> Iterator[np.ndarray]:
    """``count`` random ``seq_len + 1``-token windows over the files (uniform over positions)."""
    arrays = [np.memmap(p, dtype=dtype, mode="r") for p in paths]
    starts_per_file = np.array([max(len(a) - seq_len, 0) for a in arrays], dtype=np.int64)
    total = int(starts_per_file.sum())
    if total == 0:
        raise OLMoConfigurationError(f"the Fisher data {list(map(str, paths))} holds no window of {seq_len + 1} tokens")
    rng = np.random.default_rng(seed)
    cum = np.cumsum(starts_per_file)
    for g in rng.integers(0, total, size=count):
        f = int(np.searchsorted(cum, g, side="right"))
        start = int(g - (cum[f - 1] if f else 0))
        yield np.asarray(arrays[f][start : start + seq_len + 1], dtype=np.int64)


def diagonal_fisher(
    model: torch.nn.Module,
    paths: Sequence[str | Path],
    *,
    seq_len: int,
    dtype: np.dtype,
    n_batches: int,
    batch_size: int,
    micro_batch_size: Optional[int] = None,
    seed: int = 0,
    progress: bool = True,
) -> Dict[str, torch.Tensor]:
    """Diagonal empirical Fisher ``F_i = 1/N sum_n (d L_n / d theta_i)^2`` where ``L_n`` is the
    mean next-token loss of batch ``n`` (``batch_size`` random pretraining windows)."""
    if n_batches < 1 or batch_size < 1:
        raise OLMoConfigurationError(f"Fisher needs n_batches >= 1 and batch_size >= 1, got {n_batches}, {batch_size}")
    mbs = micro_batch_size or batch_size
    device = next(model.parameters()).device
    params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    fisher = {n: torch.zeros_like(p, dtype=torch.float32) for n, p in params}
    windows = sample_windows(paths, seq_len, dtype, n_batches * batch_size, seed)
    was_training = model.training
    model.eval()  # no dropout in the estimate
    for _ in tqdm(range(n_batches), desc="Fisher", disable=not progress):
        batch = torch.from_numpy(np.stack([next(windows) for _ in range(batch_size)])).to(device)
        model.zero_grad(set_to_none=True)
        n_tokens = batch[:, 1:].numel()
        for mb in batch.split(mbs):
            logits = logits_of(model(mb[:, :-1])).float()
            loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), mb[:, 1:].reshape(-1), reduction="sum")
            (loss / n_tokens).backward()
        for n, p in params:
            if p.grad is not None:
                fisher[n].add_(p.grad.float().square())
    model.zero_grad(set_to_none=True)
    model.train(was_training)
    for f in fisher.values():
        f.div_(n_batches)
    return fisher


def save_tensors(tensors: Dict[str, torch.Tensor], path: str | Path) -> Path:
    cpu = {k: v.detach().cpu() for k, v in tensors.items()}
    return atomic_write(path, lambda tmp: torch.save(cpu, tmp))


def load_tensors(path: str | Path) -> Dict[str, torch.Tensor]:
    return torch.load(path, map_location="cpu", weights_only=True)


# ---------------------------------------------------------------------------------------------
# The trainer callback
# ---------------------------------------------------------------------------------------------


def _clean_name(name: str) -> str:
    return name.replace("_orig_mod.", "").replace("_checkpoint_wrapped_module.", "")


@dataclass
class WeightPenaltyCallback(Callback, Config):
    """Adds the EWC / L2-to-init penalty gradient before every optimizer step (module docstring).

    :param anchor_path: checkpoint of theta* (the base model; a step or run directory).
    :param lam: lambda.
    :param fisher_path: file of the diagonal Fisher (:func:`save_tensors`); ``None``: F = 1.
    :param name: metric namespace ("ewc" or "l2init").
    """

    anchor_path: str = ""
    #: lambda
    lam: float = setting(0.0, ge=0)
    fisher_path: Optional[str] = None
    name: str = "ewc"
    enabled: bool = True

    def __post_init__(self):
        check_fields(self)

    def pre_train(self):
        if not self.enabled:
            return
        if not self.anchor_path:
            raise OLMoConfigurationError(f"{self.name}: 'anchor_path' (the base checkpoint) is not set")
        base, _ = load_transformer(self.anchor_path)
        anchor_sd = base.state_dict()
        fisher_sd = load_tensors(self.fisher_path) if self.fisher_path else None
        self._terms: List[Tuple[torch.Tensor, torch.Tensor, Optional[torch.Tensor]]] = []
        sharded = False
        for raw_name, p in self.trainer.train_module.model.named_parameters():
            if not p.requires_grad:
                continue
            name = _clean_name(raw_name)
            if name not in anchor_sd:
                raise OLMoConfigurationError(
                    f"{self.name}: parameter '{name}' is not in the anchor checkpoint {self.anchor_path}"
                )
            fisher = None
            if fisher_sd is not None:
                if name not in fisher_sd:
                    raise OLMoConfigurationError(
                        f"{self.name}: no Fisher entry for parameter '{name}' in {self.fisher_path}"
                    )
                fisher = local_like(fisher_sd[name], p)
            self._terms.append((p, local_like(anchor_sd[name], p), fisher))
            sharded = sharded or is_sharded(p)
        self._reduce = (
            ReduceType.sum if sharded else (ReduceType.mean if self.trainer.dp_process_group is not None else None)
        )
        del base, anchor_sd, fisher_sd
        log.info(
            f"{self.name}: lambda={self.lam:g}, {len(self._terms)} parameter tensors anchored to {self.anchor_path}"
        )

    @torch.no_grad()
    def pre_optim_step(self):
        if not self.enabled:
            return
        total = None
        for p, anchor, fisher in self._terms:
            value, grad = penalty_and_grad(get_local_tensor(p.detach()), anchor, self.lam, fisher)
            if p.grad is None:
                p.grad = torch.zeros_like(p)
            local_grad = get_local_tensor(p.grad)
            local_grad.add_(grad.to(local_grad.dtype))
            total = value if total is None else total + value
        if total is not None:
            self.trainer.record_metric("penalty", total, self._reduce, namespace=self.name)
