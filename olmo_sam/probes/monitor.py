"""Sharpness during training: tr(H) every K steps on a fixed validation batch ([WSO] Sec 6, Fig 3;
cadence and probe count from App H).

[WSO] measures the Hessian trace with Hutchinson's estimator (50 Rademacher probes, App H) every
4,000 steps on held-out pretraining and SFT validation data, averaging over up to 4,096 batches of
one 1,024-token sequence (Table 23). This callback uses the same estimator, probe count and cadence
inside an OLMo-core run, but on one fixed batch of validation windows (cheap enough to run inside
training; its standard error is over probes only, not over batches), and records the estimate like
any other metric (``sharpness/{name} trace``, its
standard error, the number of probes, and the loss on the batch). Add one callback per
validation set (distinct ``name``).

The measurement leaves training untouched: it differentiates with ``torch.autograd.grad`` (no
``.grad`` is written; the parameters' ``.grad`` are restored anyway), draws its probes from its
own generator (the global RNG state is not consumed), runs in eval mode and restores the mode,
and the finite-difference path copies the original parameters back bit for bit.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import List, Optional

import torch
import torch.nn as nn
from olmo_core.config import Config
from olmo_core.exceptions import OLMoConfigurationError
from olmo_core.train.callbacks import Callback
from torch.distributed.tensor import DTensor

from .. import paper
from ..config import check_fields, setting
from .hessian import HessianVectorProduct, fixed_batch, hutchinson_trace, lm_batch_loss

log = logging.getLogger(__name__)

__all__ = ["SharpnessMonitorCallback", "SHARPNESS_METRIC_NAMESPACE"]

SHARPNESS_METRIC_NAMESPACE = "sharpness"


@dataclass
class SharpnessMonitorCallback(Callback, Config):
    """Estimate tr(H) of the loss on a fixed validation batch every ``every_steps`` steps.

    :param val_paths: token files of the validation set (same format as the training data).
    :param name: label of the set in the metric names (e.g. ``"PT"``, ``"SFT"``).
    :param every_steps: measurement interval ([WSO] App H: every 4,000 steps).
    :param probes: Rademacher probes per estimate ([WSO] App H: 50).
    :param rtol: stop early once the standard error is at most ``rtol * |trace|``.
    :param n_sequences: sequences in the fixed batch (the first windows of ``val_paths``).
    :param sequence_length: defaults to the train module's ``max_sequence_length``.
    :param method: ``"auto"`` (double backward, or finite differences for FSDP-sharded models),
        ``"double_backward"`` or ``"finite_difference"``.
    :param fd_step: relative finite-difference step (see :class:`HessianVectorProduct`).
    :param seed: seed of the probe vectors (the same probes at every measurement).
    """

    val_paths: List[str] = field(default_factory=list)
    name: str = "PT"
    every_steps: int = setting(paper.SHARPNESS_EVERY_STEPS, ge=1)
    probes: int = setting(paper.HUTCHINSON_PROBES, ge=1)
    rtol: Optional[float] = setting(None, gt=0)
    n_sequences: int = setting(4, ge=1)
    sequence_length: Optional[int] = setting(None, ge=1)
    method: str = setting("auto", choices=("auto", "double_backward", "finite_difference"))
    fd_step: float = 1e-3
    seed: int = 0
    enabled: bool = True

    # the fixed batch, loaded in pre_train (a plain attribute, not a config field)
    _batch = None

    def __post_init__(self, *args):
        del args
        check_fields(self)
        if self.enabled and not self.val_paths:
            raise OLMoConfigurationError("SharpnessMonitorCallback.val_paths is empty: give the validation token files")

    # -- wiring ------------------------------------------------------------------------------------

    def _model(self) -> nn.Module:
        model = self.trainer.train_module.model  # type: ignore[attr-defined]
        return getattr(model, "module", model)  # DDP wrapper -> the module (no reducer hooks)

    def _token_dtype_vocab(self) -> int:
        ds = getattr(self.trainer.data_loader, "dataset", None)
        tok = getattr(ds, "tokenizer", None) if ds is not None else None
        if tok is not None:
            return int(tok.vocab_size)
        return int(self._model().vocab_size)  # type: ignore[attr-defined]

    def pre_train(self):
        if not self.enabled:
            return
        seq = self.sequence_length or getattr(self.trainer.train_module, "max_sequence_length", None)
        if not seq:
            raise OLMoConfigurationError("SharpnessMonitorCallback: set 'sequence_length'")
        device = next(self._model().parameters()).device
        self._batch = fixed_batch(self.val_paths, int(seq), self._token_dtype_vocab(), self.n_sequences, device)

    def _method(self, params) -> str:
        if self.method != "auto":
            return self.method
        return "finite_difference" if any(isinstance(p, DTensor) for p in params) else "double_backward"

    # -- measurement -------------------------------------------------------------------------------

    def measure(self):
        """tr(H) at the current parameters (see the module docstring for what is preserved)."""
        model = self._model()
        params = [p for p in model.parameters() if p.requires_grad]
        method = self._method(params)
        batch = self._batch
        assert batch is not None
        saved_grads = [p.grad for p in params]
        was_training = model.training
        model.eval()
        try:
            op = HessianVectorProduct(
                lambda: lm_batch_loss(model, batch),
                params,
                method=method,
                fd_step=self.fd_step,
                model=model if method == "double_backward" else None,
            )
            with torch.no_grad():
                loss = float(lm_batch_loss(model, batch))
            return loss, hutchinson_trace(op, n_probes=self.probes, rtol=self.rtol, seed=self.seed)
        finally:
            model.train(was_training)
            for p, g in zip(params, saved_grads):
                p.grad = g

    def post_step(self):
        if not self.enabled or self.step % self.every_steps != 0:
            return
        t0 = time.perf_counter()
        loss, est = self.measure()
        ns = SHARPNESS_METRIC_NAMESPACE
        self.trainer.record_metric(f"{self.name} trace", est.trace, namespace=ns)
        self.trainer.record_metric(f"{self.name} trace stderr", est.stderr, namespace=ns)
        self.trainer.record_metric(f"{self.name} probes", float(est.n_probes), namespace=ns)
        self.trainer.record_metric(f"{self.name} batch loss", loss, namespace=ns)
        self.trainer.record_metric(f"{self.name} seconds", time.perf_counter() - t0, namespace=ns)
        log.info(
            f"step {self.step}: tr(H) on {self.name} = {est.trace:.4g} +- {est.stderr:.2g} "
            f"({est.n_probes} probes, {time.perf_counter() - t0:.1f}s)"
        )
