"""Learning-rate schedules of the seed papers, registered in OLMo-core's ``Scheduler`` registry.

All schedules follow the [WSO] paper's parameterisation (Sec 2.4, App B, Eqs. 4-11) by a
*minimum-LR factor* alpha, the field ``alpha_f`` (OLMo-core's own name for it): the LR ends at
``alpha_f * peak``. ``alpha_f = 0`` decays to zero, ``0.1`` to 10% of the peak (the [SAM-PT]
paper's WSD and cosine, Sec 3.3 and its public code), and ``1`` never decays
(Warmup-Stable-Only): ``wsd_alpha``, ``linear_alpha`` and ``cosine_alpha`` with ``alpha_f = 1``
have no decay phase (:func:`decay_start` is ``None``), exactly like ``wso``.

=====================  ==============================================================
registered name        schedule
=====================  ==============================================================
``wso``                linear warmup, then constant to the end ([WSO] Eq. 5/8)
``wsd_alpha``          warmup, stable, linear decay to ``alpha_f*peak`` over the last
                       ``decay`` steps or ``decay_fraction`` of the run ([WSO] Eq. 4)
``linear_alpha``       warmup, then linear decay to ``alpha_f*peak`` ([WSO] Eq. 10)
``cosine_alpha``       warmup, then cosine decay to ``alpha_f*peak`` ([WSO] Eq. 9;
                       [SAM-PT] App A.2.1)
``midtrain``           mid-training from a checkpoint's LR: no warmup, linear from the
                       starting LR to ``alpha_f*start`` (``alpha_f=0``: decay to zero, the
                       OLMo-2 anneal; ``alpha_f=1``: constant) ([WSO] Eq. 11)
=====================  ==============================================================

They reuse OLMo-core's implementations (``constant_with_warmup``, ``wsd``,
``linear_with_warmup``, ``cos_with_warmup``) wherever those compute the same thing, adding
validation and :meth:`decay_start`, the point (in the scheduler's units) after which the LR
falls below the peak. :func:`decay_start` answers the same question for OLMo-core's own
schedules, so the annealing switch works with either. A negative ``warmup`` is refused when a
schedule is built; :func:`check_fits` refuses a warmup (plus decay) longer than the run once the
run length is known (the train module calls it before the first step).

Units follow OLMo-core: ``current`` is the 1-based step (or tokens seen) at which the optimizer
is about to step. LR at ``current <= decay_start`` is the peak; from ``decay_start + 1`` it
decays.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Union

import torch
from olmo_core.exceptions import OLMoConfigurationError
from olmo_core.optim.scheduler import (
    WSD,
    ConstantScheduler,
    ConstantWithWarmup,
    CosWithWarmup,
    LinearWithWarmup,
    Scheduler,
)

from .. import paper

__all__ = [
    "WSO",
    "WSDAlpha",
    "LinearAlpha",
    "CosineAlpha",
    "Midtrain",
    "decay_start",
    "has_decay_phase",
    "check_fits",
]

Number = Union[float, torch.Tensor]


def _check_alpha(alpha: float, name: str = "alpha_f") -> None:
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not (0.0 <= alpha <= 1.0):
        raise OLMoConfigurationError(
            f"'{name}' (the minimum-LR factor: final LR = {name} * peak) must be in [0, 1], "
            f"got {alpha!r}; use 0 to decay to zero, 0.1 for 10% of peak, 1 for no decay"
        )


def _warmup_of(s: Scheduler, t_max: int) -> int:
    warmup = getattr(s, "warmup", None)
    if warmup is None:
        frac = getattr(s, "warmup_fraction", None)
        return round(t_max * frac) if frac is not None else 0
    return int(warmup)


def _check_warmup(s: Scheduler) -> None:
    """Refuse a negative ``warmup`` (or a ``warmup_fraction`` outside [0, 1], nan included) when the
    schedule is built (the run length is not known yet)."""
    warmup = getattr(s, "warmup", None)
    if warmup is not None and (not isinstance(warmup, int) or isinstance(warmup, bool) or warmup < 0):
        raise OLMoConfigurationError(
            f"'warmup' ({s.units} of linear warmup) must be an integer >= 0, got {warmup!r}; "
            "use 0 for no warmup or set 'warmup_fraction' instead"
        )
    frac = getattr(s, "warmup_fraction", None)
    if frac is not None and (isinstance(frac, bool) or not isinstance(frac, (int, float)) or not 0 <= frac <= 1):
        raise OLMoConfigurationError(f"'warmup_fraction' must be a number in [0, 1], got {frac!r}")


def _decay_of(s: Scheduler, t_max: int) -> int:
    """Length of ``s``'s final decay phase in its units (WSD-style schedules), else 0."""
    if not isinstance(s, WSD):
        return 0
    if s.decay is not None:
        return int(s.decay)
    return round(t_max * (s.decay_fraction or 0.0))


def check_fits(scheduler: Scheduler, t_max: int) -> None:
    """Refuse a schedule whose warmup (plus decay, for WSD) is longer than the run of ``t_max``.

    ``t_max`` is the run length in the scheduler's units (steps, or tokens when
    ``units='tokens'``). Called by the SAM train module before the first step and by
    :func:`decay_start`, so recipes' dry runs catch it too.
    """
    _check_warmup(scheduler)
    units = getattr(scheduler, "units", "steps")
    if t_max < 1:
        raise OLMoConfigurationError(
            f"the run is {t_max:,d} {units} long; give 'trainer.max_duration' a length of at least 1 "
            "(--steps/--tokens in the recipes)"
        )
    own_t_max = getattr(scheduler, "t_max", None)  # linear/cosine may fix their own horizon
    horizon = int(own_t_max) if own_t_max is not None else int(t_max)
    where = f"'t_max' = {horizon:,d}" if own_t_max is not None else f"the run ({horizon:,d} {units})"
    warmup = _warmup_of(scheduler, horizon)
    if warmup > horizon:
        raise OLMoConfigurationError(
            f"'warmup' = {warmup:,d} {units} is longer than {where}; "
            "shorten 'warmup' (or 'warmup_fraction') or lengthen the run"
        )
    decay = _decay_of(scheduler, horizon)
    if isinstance(scheduler, WSDAlpha) and scheduler.alpha_f == 1.0:
        decay = 0  # never decays: the decay length is moot
    if decay and warmup + decay > horizon:
        raise OLMoConfigurationError(
            f"'warmup' + 'decay' = {warmup:,d} + {decay:,d} {units} is longer than {where}; "
            "shorten 'warmup' or 'decay'/'decay_fraction', or lengthen the run"
        )


@Scheduler.register("wso")
@dataclass
class WSO(ConstantWithWarmup):
    """Warmup-Stable-Only ([WSO] Eq. 5): linear warmup, then the peak LR to the end."""

    def __post_init__(self, *args):
        super().__post_init__(*args)
        _check_warmup(self)

    def decay_start(self, t_max: int) -> Optional[int]:
        del t_max
        return None


@Scheduler.register("wsd_alpha")
@dataclass
class WSDAlpha(WSD):
    """WSD with a minimum-LR factor ([WSO] Eq. 4): warmup, stable, linear decay to ``alpha_f*peak``.

    ``decay`` (steps/tokens) or ``decay_fraction`` (of the run, in (0, 1]) sets the decay length.
    ``alpha_f`` defaults to 0.1, the [SAM-PT] WSD (Sec 3.3); ``alpha_f = 1`` is WSO.
    """

    alpha_f: float = paper.WSD_FINAL_LR_FRACTION

    def __post_init__(self, *args):
        super().__post_init__(*args)
        _check_alpha(self.alpha_f)
        _check_warmup(self)
        if self.decay_fraction is not None and not (0.0 < self.decay_fraction <= 1.0):
            raise OLMoConfigurationError(
                f"'decay_fraction' must be in (0, 1], got {self.decay_fraction!r} "
                "(the paper sweeps 0.05-0.20; 0.1 is its default)"
            )
        if self.decay is not None and self.decay < 1:
            raise OLMoConfigurationError(f"'decay' must be >= 1 step/token, got {self.decay!r}")
        if self.decay_min_lr != 0.0:
            raise OLMoConfigurationError(
                "'decay_min_lr' is not used by 'wsd_alpha'; set 'alpha_f' (final LR = alpha_f * peak)"
            )
        if (
            self.warmup_fraction is not None
            and self.decay_fraction is not None
            and self.warmup_fraction + self.decay_fraction > 1.0
        ):
            raise OLMoConfigurationError(
                f"'warmup_fraction' + 'decay_fraction' = {self.warmup_fraction} + "
                f"{self.decay_fraction} is more than the whole run; make their sum <= 1"
            )

    def _decay_len(self, t_max: int) -> int:
        if self.decay is not None:
            return int(self.decay)
        assert self.decay_fraction is not None
        return round(t_max * self.decay_fraction)

    def decay_start(self, t_max: int) -> Optional[int]:
        # alpha_f = 1: the "decay" ends where it starts, at the peak; this is WSO ([WSO] Eq. 5)
        return None if self.alpha_f == 1.0 else t_max - self._decay_len(t_max)

    def get_lr(self, initial_lr: Number, current: int, t_max: int) -> Number:
        warmup = _warmup_of(self, t_max)
        if current <= warmup:
            return super().get_lr(initial_lr, current, t_max)
        decay = self._decay_len(t_max)
        if decay > 0 and current >= t_max - decay:
            # linear from the peak at t_max - decay to alpha_f * peak at t_max ([WSO] Eq. 4), and
            # alpha_f * peak after it (a token-unit run's last step can pass t_max; OLMo-core's
            # own WSD goes on falling there, below zero)
            final = self.alpha_f * initial_lr
            return final + (initial_lr - final) * min(max(t_max - current, 0), decay) / decay
        return initial_lr


@Scheduler.register("linear_alpha")
@dataclass
class LinearAlpha(LinearWithWarmup):
    """Warmup, then linear decay from the peak to ``alpha_f*peak`` at the end ([WSO] Eq. 10)."""

    def __post_init__(self, *args):
        super().__post_init__(*args)
        _check_alpha(self.alpha_f)
        _check_warmup(self)

    def decay_start(self, t_max: int) -> Optional[int]:
        return None if self.alpha_f == 1.0 else _warmup_of(self, self.t_max or t_max)


@Scheduler.register("cosine_alpha")
@dataclass
class CosineAlpha(CosWithWarmup):
    """Warmup, then cosine decay from the peak to ``alpha_f*peak`` ([WSO] Eq. 9, [SAM-PT] A.2.1)."""

    def __post_init__(self, *args):
        super().__post_init__(*args)
        _check_alpha(self.alpha_f)
        _check_warmup(self)

    def decay_start(self, t_max: int) -> Optional[int]:
        return None if self.alpha_f == 1.0 else _warmup_of(self, self.t_max or t_max)


@Scheduler.register("midtrain")
@dataclass
class Midtrain(Scheduler):
    """Mid-training from a checkpoint's LR ([WSO] Eq. 11; [SAM-PT] App B, Table 1).

    No warmup. The LR goes linearly from the starting LR (the optimizer's configured LR, e.g. the
    LR read from the pretraining checkpoint) to ``alpha_f * start`` at the end. ``alpha_f = 0`` is
    OLMo-2's linear anneal to zero; ``alpha_f = 1`` keeps the LR constant (WSO mid-training).
    """

    alpha_f: float = 0.0

    def __post_init__(self, *args):
        del args
        _check_alpha(self.alpha_f)

    def decay_start(self, t_max: int) -> Optional[int]:
        del t_max
        return None if self.alpha_f == 1.0 else 0

    def get_lr(self, initial_lr: Number, current: int, t_max: int) -> Number:
        if t_max <= 0:
            return initial_lr
        frac = min(max(current, 0), t_max) / t_max
        return initial_lr * (1.0 - (1.0 - self.alpha_f) * frac)


def decay_start(scheduler: Scheduler, t_max: int) -> Optional[int]:
    """Where ``scheduler``'s decay phase starts, in its units; ``None`` if it never decays.

    Works for this module's schedules and OLMo-core's ``wsd``, ``cos_with_warmup``,
    ``linear_with_warmup``, ``constant_with_warmup`` and ``constant``. For any other schedule it
    raises, naming the explicit alternatives. Refuses a schedule that does not fit in ``t_max``
    (:func:`check_fits`).
    """
    check_fits(scheduler, t_max)
    if hasattr(scheduler, "decay_start"):
        return scheduler.decay_start(t_max)  # type: ignore[no-any-return]
    if isinstance(scheduler, (ConstantWithWarmup, ConstantScheduler)):
        return None
    if isinstance(scheduler, WSD):
        decay = scheduler.decay if scheduler.decay is not None else round(t_max * (scheduler.decay_fraction or 0.0))
        return t_max - int(decay)
    if isinstance(scheduler, (LinearWithWarmup, CosWithWarmup)):
        if math.isclose(scheduler.alpha_f, 1.0):
            return None
        return _warmup_of(scheduler, scheduler.t_max or t_max)
    raise OLMoConfigurationError(
        f"cannot tell where the decay phase of scheduler {type(scheduler).__name__} starts; "
        "give the annealing switch an explicit 'start_step', 'start_fraction' or 'start_tokens'"
    )


def has_decay_phase(scheduler: Scheduler, t_max: int) -> bool:
    return decay_start(scheduler, t_max) is not None
