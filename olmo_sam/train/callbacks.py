"""The AdamW -> SAM annealing switch ([SAM-PT] Sec 3.5, "Annealing with SAM").

AdamW runs through warmup and the stable phase; from the first step of the LR decay phase on,
every step is a SAM step. The optimizer object (and so AdamW's moment estimates) carries over:
SAM only changes which gradient the base optimizer sees.

The switch point is the schedule's decay start (:func:`olmo_sam.optim.decay_start`) by default,
or an explicit step, fraction of the run, or token count. Whether SAM is on is a function of the
step and the switch point, and the switch point is saved in the trainer checkpoint, so a run
resumed inside (or exactly at) the decay phase continues with SAM. A run resumed before its switch
with another length or start (an extended WSD run) switches where its own settings say; one
resumed after its switch keeps the step it switched at (warning if its settings now say otherwise).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import Any, Dict, Optional

from olmo_core.config import Config
from olmo_core.exceptions import OLMoConfigurationError
from olmo_core.optim.scheduler import Scheduler, SchedulerUnits
from olmo_core.train.callbacks import Callback

from ..config import check_fields, setting
from ..optim.sam import NOT_DRIVEN_HELP
from ..optim.schedules import decay_start
from .train_module import SAM_METRIC_NAMESPACE, SAMTransformerTrainModule

log = logging.getLogger(__name__)

__all__ = ["SAMSwitchCallback"]


@dataclass
class SAMSwitchCallback(Callback, Config):
    """Turn SAM on at the LR decay phase (default) or at an explicit point.

    Give at most one of ``start_step`` (the first SAM step, 1-based), ``start_fraction``
    (in [0, 1): SAM for the last ``1 - start_fraction`` of the steps) or ``start_tokens`` (SAM
    once more than this many tokens were trained on). With none of them, SAM starts at the first
    step whose LR is below the peak: ``decay_start + 1`` of the train module's scheduler.
    """

    start_step: Optional[int] = setting(None, ge=1, hint=" (the first SAM step, 1-based)")
    start_fraction: Optional[float] = setting(None, ge=0, lt=1, hint=" (0.9 = SAM for the last 10% of steps)")
    start_tokens: Optional[int] = setting(None, ge=0)
    enabled: bool = True

    # run state, not settings (init=False: neither a constructor argument nor an override can set
    # it): the first SAM step of this run, resolved at pre_train; the one a checkpoint ran with
    _switch_step: Optional[int] = field(default=None, init=False, repr=False)
    _restored_step: Optional[int] = field(default=None, init=False, repr=False)

    def __post_init__(self, *args):
        del args
        check_fields(self)
        given = [n for n in ("start_step", "start_fraction", "start_tokens") if getattr(self, n) is not None]
        if len(given) > 1:
            raise OLMoConfigurationError(
                f"SAMSwitchCallback: give at most one of start_step/start_fraction/start_tokens, got {given}"
            )

    # -- wiring --------------------------------------------------------------------------------

    @property
    def sam_train_module(self) -> SAMTransformerTrainModule:
        tm = self.trainer.train_module
        if not isinstance(tm, SAMTransformerTrainModule):
            raise OLMoConfigurationError(
                f"SAMSwitchCallback is attached to {type(tm).__name__}, which never runs a SAM "
                f"step, so the switch would do nothing: {NOT_DRIVEN_HELP}, with optim type 'sam'"
            )
        if tm.sam is None:
            raise OLMoConfigurationError(
                "SAMSwitchCallback needs the SAM optimizer: set the train module's optim to "
                f"type 'sam' (got optimizer {type(tm.optim).__name__})"
            )
        return tm

    def post_attach(self):
        # (the trainer uses this object itself: one reused for another run starts afresh)
        self._switch_step = self._restored_step = None
        if not self.enabled:
            return
        others = [
            name
            for name, cb in self.trainer.callbacks.items()
            if isinstance(cb, SAMSwitchCallback) and cb is not self and cb.enabled
        ]
        if others:
            raise OLMoConfigurationError(
                f"trainer.callbacks: several AdamW -> SAM switches ({others} besides this one) would each set "
                "whether SAM is on, and the last would win; keep one (or set 'enabled: false' on the others)"
            )
        self.sam_train_module.sam_active = False

    def resolve_switch_step(self) -> int:
        """The first SAM step (1-based) for the trainer's run; validated against its length."""
        trainer = self.trainer
        if trainer.max_steps is None:
            raise OLMoConfigurationError(
                "SAMSwitchCallback needs a run length in steps or tokens (trainer.max_duration)"
            )
        return self.switch_step(
            trainer.max_steps, trainer.global_batch_size, self.sam_train_module.scheduler, trainer.max_tokens
        )

    def switch_step(
        self, max_steps: int, tokens_per_step: int, scheduler: Optional[Scheduler], max_tokens: Optional[int] = None
    ) -> int:
        """The first SAM step (1-based) of a run of ``max_steps`` steps of ``tokens_per_step``
        tokens under ``scheduler`` (``max_tokens``: the run's length in tokens, for a schedule in
        token units); an error when the switch point lies outside the run. A pure function of its
        arguments: the training run (:meth:`resolve_switch_step`) and the recipes' dry run both
        call it."""
        if self.start_step is not None:
            step = self.start_step
            what = f"start_step={self.start_step}"
        elif self.start_fraction is not None:
            step = round(self.start_fraction * max_steps) + 1
            what = f"start_fraction={self.start_fraction}"
        elif self.start_tokens is not None:
            step = self.start_tokens // tokens_per_step + 1
            what = f"start_tokens={self.start_tokens}"
        else:
            if scheduler is None:
                raise OLMoConfigurationError(
                    "SAMSwitchCallback switches at the decay phase by default but the train "
                    "module has no scheduler; set 'start_step', 'start_fraction' or 'start_tokens'"
                )
            if scheduler.units == SchedulerUnits.tokens:
                start = decay_start(scheduler, max_tokens if max_tokens is not None else max_steps * tokens_per_step)
                step = None if start is None else start // tokens_per_step + 1
            else:
                start = decay_start(scheduler, max_steps)
                step = None if start is None else start + 1
            if start is None:
                raise OLMoConfigurationError(
                    f"SAMSwitchCallback: the scheduler {type(scheduler).__name__} has no decay "
                    "phase (it never decays: WSO, or alpha_f = 1), so there is nothing to switch at; set "
                    "'start_step', 'start_fraction' or 'start_tokens' (a recipe's --sam-start-fraction)"
                )
            what = f"the decay start of {type(scheduler).__name__} ({start} {scheduler.units})"
        if not (1 <= step <= max_steps):
            raise OLMoConfigurationError(
                f"SAMSwitchCallback: switch point {what} gives step {step}, outside the run (steps 1..{max_steps})"
            )
        return int(step)

    def pre_train(self):
        if not self.enabled:
            return
        step, restored, done = self.resolve_switch_step(), self._restored_step, self.trainer.global_step
        if restored is not None and restored != step:
            if done >= restored:  # SAM has run since `restored`: the run's past stays as it was
                log.warning(
                    f"This run's settings put the AdamW -> SAM switch at step {step:,d}, but the checkpoint "
                    f"(step {done:,d}) switched at step {restored:,d}; SAM stays on from step {restored:,d}"
                )
                step = restored
            else:
                log.info(f"The AdamW -> SAM switch moves from step {restored:,d} to {step:,d} (no SAM step ran yet)")
        self._switch_step = step
        tm = self.sam_train_module
        total = self.trainer.max_steps or 0
        sam_steps = max(total - self._switch_step + 1, 0)
        log.info(
            f"AdamW -> SAM switch at step {self._switch_step:,d} of {total:,d} "
            f"({sam_steps:,d} SAM steps, {100 * sam_steps / max(total, 1):.1f}% of the run)"
        )
        tm.sam_active = self.trainer.global_step + 1 >= self._switch_step

    def pre_step(self, batch: Dict[str, Any]):
        del batch
        if not self.enabled or self._switch_step is None:
            return
        tm = self.sam_train_module
        active = self.step >= self._switch_step
        if active and not tm.sam_active:
            log.info(f"Step {self.step:,d}: switching AdamW -> SAM")
        tm.sam_active = active

    def post_step(self):
        if self.enabled and self._switch_step is not None:
            self.trainer.record_metric("switch step", float(self._switch_step), namespace=SAM_METRIC_NAMESPACE)

    # -- checkpoint state ------------------------------------------------------------------------

    def state_dict(self) -> Dict[str, Any]:
        return {"switch_step": self._switch_step}

    def load_state_dict(self, state_dict: Dict[str, Any]):
        saved = state_dict.get("switch_step")
        if saved is not None and not math.isnan(float(saved)):
            self._restored_step = int(saved)
