"""The SAM train step (SAM, MSAM, LookSAM), as a subclass of OLMo-core's ``TransformerTrainModule``.

When the optimizer is :class:`~olmo_sam.optim.SAM`, SAM is active and the step is due
(``global_step % interval == 0``), :meth:`SAMTransformerTrainModule.train_batch` runs, for
``variant: sam`` (and LookSAM's full steps):

1. pass 1: OLMo-core's own ``train_batch`` over all micro-batches (loss at w, recorded as the
   training loss, gradient at w; under DDP with ``scope='local'`` without gradient all-reduce),
2. the ascent ``w <- w + eps`` (:meth:`SAM.perturb`, norm global or local),
3. pass 2: forward/backward at ``w + eps`` over the same micro-batches (gradient synchronised as
   usual), recording the perturbed loss,
4. the exact restore of ``w`` (LookSAM: and forms ``g_v`` from the two gradients),

for ``variant: msam``: the perturbation ``w <- w - rho m/||m||``, OLMo-core's ``train_batch``
there (the step's only pass; its loss is the recorded training loss), and the exact restore; for
LookSAM's steps in between full ones: OLMo-core's ``train_batch`` at w, then the reuse of ``g_v``
on the gradient. The trainer then calls the unchanged ``optim_step`` (clipping, scheduler, base
step). Otherwise the step is the stock one: no extra pass, no extra memory. The equations are in
:mod:`olmo_sam.optim.sam`.
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass
from typing import Any, Dict, Generator, Optional, cast

import torch
import torch.distributed.checkpoint.state_dict as dist_cp_sd
from olmo_core.config import DType
from olmo_core.data.utils import get_labels, split_batch
from olmo_core.distributed.parallel import DataParallelType
from olmo_core.distributed.utils import get_local_tensor
from olmo_core.exceptions import OLMoConfigurationError
from olmo_core.nn.transformer import Transformer
from olmo_core.train.common import ReduceType
from olmo_core.train.train_module import (
    TransformerTrainModule,
    TransformerTrainModuleConfig,
)
from olmo_core.utils import move_to_device
from torch.distributed._composable.replicate import DDP as ReplicateDDP
from torch.distributed.checkpoint.metadata import Metadata
from torch.nn.parallel import DistributedDataParallel as DDP

from ..config import check_value, setting
from ..optim.sam import SAM, SAMConfig, SAMScope, SAMVariant
from ..optim.schedules import check_fits

log = logging.getLogger(__name__)

__all__ = [
    "SAMTransformerTrainModule",
    "SAMTrainModuleConfig",
    "SAM_METRIC_NAMESPACE",
    "check_sam_parallelism",
]

SAM_METRIC_NAMESPACE = "sam"
_SAM_STATE_KEY = "sam"
_GV_KEY = "looksam_gv"


def check_sam_parallelism(scope: SAMScope | str, dp_name: Optional[str], *, other_parallelism: bool = False) -> None:
    """``scope='local'`` is only defined for plain data parallelism (DDP) or one process."""
    if scope != SAMScope.local:
        return
    if dp_name in (DataParallelType.fsdp, DataParallelType.hsdp):
        raise OLMoConfigurationError(
            "'train_module.optim.scope' is 'local', which is not defined under FSDP/HSDP "
            "(each rank only holds a shard of the gradient); use scope='global' or "
            "dp_config.name='ddp'"
        )
    if other_parallelism:
        raise OLMoConfigurationError(
            "'train_module.optim.scope'='local' is only defined for pure data parallelism (DDP)"
        )


class SAMTransformerTrainModule(TransformerTrainModule):
    """``TransformerTrainModule`` with the SAM two-pass step (see module docstring).

    :ivar sam_active: whether SAM steps happen at all; the annealing switch
        (:class:`~olmo_sam.train.callbacks.SAMSwitchCallback`) turns it on at the decay phase.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.sam_active: bool = True
        self.sam_skipped_ascents: int = 0
        self.sam_ascents: int = 0
        self._skip_optim_step = False
        if self.sam is not None:
            self._validate_sam_setup(self.sam)
            self.sam.bind(type(self).__name__)

    # -- configuration checks ------------------------------------------------------------------

    @property
    def sam(self) -> Optional[SAM]:
        return self.optim if isinstance(self.optim, SAM) else None

    def _validate_sam_setup(self, sam: SAM) -> None:
        check_sam_parallelism(
            sam.scope,
            self.dp_config.name if self.dp_config is not None else None,
            other_parallelism=self.tp_enabled or self.cp_enabled or self.ep_enabled,
        )

    def pre_train(self):
        super().pre_train()
        # a warmup (+ decay) longer than the run fails here, before the first step
        sched = self.scheduler
        if sched is not None:
            t_max = self.trainer.max_tokens if str(sched.units) == "tokens" else self.trainer.max_steps
            if t_max is not None:
                check_fits(sched, int(t_max))

    # -- the SAM step --------------------------------------------------------------------------

    def sam_step_due(self) -> bool:
        """Whether this step does the ascent: SAM optimizer, switched on, and on the interval."""
        sam = self.sam
        if sam is None or not self.sam_active:
            return False
        return self.trainer.global_step % sam.interval == 0

    def train_batch(self, batch: Dict[str, Any], dry_run: bool = False):
        self._skip_optim_step = False
        sam = self.sam
        if dry_run or sam is None or not self.sam_step_due():
            super().train_batch(batch, dry_run=dry_run)
            if not dry_run and sam is not None:
                reused = None
                if self.sam_active and sam.variant == SAMVariant.looksam:
                    reused = sam.looksam_reuse()  # g + alpha ||g||/||g_v|| g_v, then optim_step
                self._record_sam(active=self.sam_active, ascent=False, looksam_scale=reused)
            return
        if sam.variant == SAMVariant.msam:
            self._msam_batch(sam, batch)
            return

        # OLMo-core's train_batch pops 'input_ids'/'labels' from (micro-)batches: keep a copy.
        if "labels" not in batch:
            batch["labels"] = get_labels(batch, label_ignore_index=self.label_ignore_index)
        batch_pass2 = dict(batch)

        local = sam.scope == SAMScope.local and self._is_ddp()
        # pass 1 at w (records the train loss); scope='local' keeps each rank's own gradient
        with self._no_grad_sync() if local else contextlib.nullcontext():
            super().train_batch(batch, dry_run=False)

        result = sam.perturb()
        if local:
            # Ranks ascend independently, but pass 2 synchronises gradients, so every rank must
            # run it; a rank with a zero norm simply stays at w. A non-finite norm anywhere
            # skips the update everywhere.
            nonfinite = self._any_rank(result.skip_reason == "nonfinite")
        else:
            nonfinite = result.skip_reason == "nonfinite"
            if result.skip_reason == "zero":
                # Nothing to ascend along; the (synchronised) pass-1 gradient is the update.
                self.sam_skipped_ascents += 1
                self._record_sam(active=True, ascent=False, grad_norm=result.grad_norm)
                return
        if nonfinite:
            sam.restore()
            self.sam_skipped_ascents += 1
            # No ascent direction and no usable gradient: skip this update entirely so that
            # the weights stay finite.
            self._skip_optim_step = True
            self.zero_grads()
            self._record_sam(active=True, ascent=False, grad_norm=result.grad_norm)
            return
        if not result.perturbed:
            self.sam_skipped_ascents += 1

        self.zero_grads()
        try:
            perturbed_loss = self._forward_backward(batch_pass2)  # pass 2 at w + eps
        finally:
            sam.restore()
        if sam.variant == SAMVariant.looksam:
            sam.looksam_form_gv()
        self.sam_ascents += 1
        self._record_sam(
            active=True,
            ascent=result.perturbed,
            grad_norm=result.grad_norm,
            perturbed_loss=perturbed_loss,
        )

    def _msam_batch(self, sam: SAM, batch: Dict[str, Any]) -> None:
        """MSAM: one forward/backward at w - rho m/||m||, then w is restored for the update."""
        result = sam.perturb_momentum()
        if result.skip_reason == "nonfinite":
            # a non-finite momentum: nothing sensible to do but the plain step (the base
            # optimizer's own state is already broken; clipping/skip-step options still apply)
            self.sam_skipped_ascents += 1
        try:
            super().train_batch(batch, dry_run=False)
        finally:
            sam.restore()
        if result.perturbed:
            self.sam_ascents += 1
        elif result.skip_reason == "zero":
            self.sam_skipped_ascents += 1  # the first step: no momentum yet
        self._record_sam(active=True, ascent=result.perturbed, grad_norm=result.grad_norm)

    def optim_step(self):
        if self._skip_optim_step:
            self._skip_optim_step = False
            self.record_metric("skipped updates (non-finite ascent norm)", 1.0, namespace=SAM_METRIC_NAMESPACE)
            return
        super().optim_step()

    def _forward_backward(self, batch: Dict[str, Any]) -> torch.Tensor:
        """Forward/backward over the micro-batches of ``batch`` without recording metrics.

        Mirrors the loss normalisation of ``TransformerTrainModule.train_batch`` (sum reduction
        divided by this rank's count of label tokens) so the gradient has the same scale.
        Returns this rank's CE loss.
        """
        labels = batch["labels"]
        num_tokens_for_loss = move_to_device((labels != self.label_ignore_index).sum(), self.device)
        if (instance_mask := batch.get("instance_mask")) is not None:
            num_tokens_for_loss += (~instance_mask).sum() * labels.shape[1]
        ce_total = move_to_device(torch.tensor(0.0), self.device)
        micro_batches = split_batch(batch, self.rank_microbatch_size // batch["input_ids"].shape[1])
        for idx, micro_batch in enumerate(micro_batches):
            with self._train_microbatch_context(idx, len(micro_batches)):
                input_ids, mb_labels, model_kwargs = self._prepare_batch(micro_batch)
                _, loss, ce_loss, _ = self.model_forward(
                    input_ids,
                    labels=mb_labels,
                    ignore_index=self.label_ignore_index,
                    loss_reduction="sum",
                    z_loss_multiplier=self.z_loss_multiplier,
                    loss_div_factor=num_tokens_for_loss,
                    return_logits=False,
                    **model_kwargs,
                )
                ce_total += get_local_tensor(ce_loss.detach())
                del ce_loss
                loss.backward()
        self.model.post_batch(dry_run=True)
        self.model.reset_auxiliary_metrics()
        return ce_total

    def _is_ddp(self) -> bool:
        # OLMo-core applies DDP with torch's composable `replicate`; classic DDP is handled too
        return isinstance(self.model, (DDP, ReplicateDDP))

    @contextlib.contextmanager
    def _no_grad_sync(self) -> Generator[None, None, None]:
        """No gradient all-reduce inside: each DDP rank keeps its own gradient (scope='local')."""
        if isinstance(self.model, ReplicateDDP):
            self.model.set_requires_gradient_sync(False)
            try:
                yield
            finally:
                self.model.set_requires_gradient_sync(True)
        elif isinstance(self.model, DDP):
            with self.model.no_sync():
                yield
        else:
            yield

    def _any_rank(self, flag: bool) -> bool:
        import torch.distributed as dist

        t = move_to_device(torch.tensor(1.0 if flag else 0.0), self.device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX, group=self.dp_process_group)
        return bool(t.item() > 0)

    def _record_sam(
        self,
        *,
        active: bool,
        ascent: bool,
        grad_norm: Optional[float] = None,
        perturbed_loss: Optional[torch.Tensor] = None,
        looksam_scale: Optional[float] = None,
    ) -> None:
        ns = SAM_METRIC_NAMESPACE
        self.record_metric("active", float(active), namespace=ns)
        self.record_metric("ascent", float(ascent), namespace=ns)
        self.record_metric("skipped ascents", float(self.sam_skipped_ascents), namespace=ns)
        if grad_norm is not None:
            reduce = ReduceType.mean if self._sam_scope_local() else None
            self.record_metric("ascent grad norm", grad_norm, reduce, namespace=ns)
        if perturbed_loss is not None:
            self.record_metric("perturbed CE loss", perturbed_loss, ReduceType.mean, namespace=ns)
        sam = self.sam
        if sam is not None and sam.variant == SAMVariant.looksam and not ascent and active:
            self.record_metric("looksam reuse", float(looksam_scale is not None), namespace=ns)

    def _sam_scope_local(self) -> bool:
        sam = self.sam
        return sam is not None and sam.scope == SAMScope.local

    # -- checkpoint state: the skip/ascent counters --------------------------------------------

    def _sam_state(self) -> Dict[str, Any]:
        state: Dict[str, Any] = {
            "skipped_ascents": torch.tensor(self.sam_skipped_ascents, dtype=torch.int64),
            "ascents": torch.tensor(self.sam_ascents, dtype=torch.int64),
        }
        sam = self.sam
        if sam is not None and sam.looksam_gv is not None:
            # LookSAM's g_v, by parameter name (DTensor shards under FSDP, like the moments)
            state[_GV_KEY] = {n: sam.looksam_gv[p] for n, p in self.model.named_parameters() if p in sam.looksam_gv}
        return state

    def state_dict_to_save(self, *, optim: Optional[bool] = None) -> Dict[str, Any]:
        sd = super().state_dict_to_save(optim=optim)
        if self.sam is not None:
            sd[_SAM_STATE_KEY] = self._sam_state()
        return sd

    def state_dict_to_load(self, metadata: Metadata, *, optim: Optional[bool] = None):
        sd = super().state_dict_to_load(metadata, optim=optim)
        keys = metadata.state_dict_metadata
        if self.sam is not None and f"{_SAM_STATE_KEY}.ascents" in keys:
            state = self._sam_state()
            state.pop(_GV_KEY, None)
            gv = {
                n: torch.zeros_like(p.detach())
                for n, p in self.model.named_parameters()
                if f"{_SAM_STATE_KEY}.{_GV_KEY}.{n}" in keys
            }
            if gv:
                state[_GV_KEY] = gv
            sd[_SAM_STATE_KEY] = state
        return sd

    def load_state_dict(self, state_dict: Dict[str, Any]) -> None:
        sam_state = state_dict.pop(_SAM_STATE_KEY, None)
        if sam_state is not None:
            self.sam_skipped_ascents = int(sam_state["skipped_ascents"])
            self.sam_ascents = int(sam_state["ascents"])
            gv = sam_state.get(_GV_KEY)
            if gv and self.sam is not None:
                params = dict(self.model.named_parameters())
                self.sam.looksam_gv = {params[n]: t for n, t in gv.items()}
        super().load_state_dict(state_dict)


@dataclass
class SAMTrainModuleConfig(TransformerTrainModuleConfig):
    """Config for :class:`SAMTransformerTrainModule`; the same fields as OLMo-core's
    ``TransformerTrainModuleConfig`` (whose ``build()`` hard-codes the stock class), two of them
    with the bounds OLMo-core leaves unchecked: a clipping norm of 0 or less freezes or reverses
    every update, and a nan z-loss makes every SAM ascent norm nan, so every update is skipped."""

    max_grad_norm: Optional[float] = setting(None, gt=0, hint=" (null: no clipping)")
    z_loss_multiplier: Optional[float] = setting(None, ge=0, hint=" (null: no z-loss)")

    def __post_init__(self):
        for name in ("max_grad_norm", "z_loss_multiplier"):
            rule = self.__dataclass_fields__[name].metadata["rule"]
            setattr(self, name, check_value(getattr(self, name), Optional[float], name, rule))

    def build(
        self,
        model: Transformer,
        device: Optional[torch.device] = None,
        eval_only: bool = False,
    ) -> SAMTransformerTrainModule:
        if self.pp_config is not None:
            raise OLMoConfigurationError(
                "'train_module.pp_config' (pipeline parallelism) is not supported by the SAM "
                "train module; use data parallelism (ddp/fsdp/hsdp)"
            )
        if isinstance(self.optim, SAMConfig):
            check_sam_parallelism(
                self.optim.scope,
                self.dp_config.name if self.dp_config is not None else None,
                other_parallelism=any(c is not None for c in (self.tp_config, self.cp_config, self.ep_config)),
            )
        kwargs = self.as_dict(exclude_none=True, recurse=False)
        kwargs.pop("pp_config", None)
        if (autocast_precision := kwargs.pop("autocast_precision", None)) is not None:
            kwargs["autocast_precision"] = cast(DType, autocast_precision).as_pt()
        for key in ("state_dict_save_opts", "state_dict_load_opts"):
            if (opts := kwargs.pop(key, None)) is not None:
                kwargs[key] = dist_cp_sd.StateDictOptions(**opts)
        return SAMTransformerTrainModule(model=model, device=device, eval_only=eval_only, **kwargs)
