"""Sharpness-Aware Minimization (SAM) and two cheaper variants as one OLMo-core optimizer wrapper.

The math lives here and nowhere else (one place per equation).

SAM (Foret et al., 2021, Eq. 2; seed paper [SAM-PT] Sec 2.3.1 Eq. 5 and App A.1.2)::

    eps   = rho * g / ||g||_2            g = grad L(w)
    g_sam = grad L(w + eps)              the base optimizer (AdamW) steps with g_sam at w

Adaptive SAM, ASAM (Kwon et al., 2021, Eq. 9), with the element-wise operator T_w = |w|::

    eps = rho * T_w^2 g / ||T_w g||_2

Momentum-SAM, ``variant: msam`` (Becker, Altrock & Risse, "Momentum-SAM: Sharpness Aware
Minimization without Computational Overhead", arXiv:2401.12033, 2024, Algorithm 1 and its AdamW
variant)::

    w~_t  = w_t - rho * m_t / ||m_t||_2   m_t = the base optimizer's momentum (AdamW: its first
                                          moment ``exp_avg``, not bias-corrected; SGD: its buffer)
    g_t   = grad L(w~_t)                  the only forward/backward of the step
    w_t+1 = BaseStep(w_t, g_t)            the step is taken from the un-perturbed w_t

  The paper stores ``w~`` between steps and moves back by ``+rho m/||m||`` before each update and
  once more at the end of training, so the weights it *returns* (and evaluates) are the
  un-perturbed ``w_T``. Here the train module perturbs right before the pass and restores ``w``
  exactly right after it: the same gradients at the same points and the same updates, while
  checkpoints, in-loop evaluation and the final weights hold ``w`` -- the paper's end-of-training
  weights -- at every step boundary. (Memory: one parameter copy, as for SAM.) On the first step
  ``m = 0`` and there is no perturbation. ``BaseStep`` is the base optimizer's own update
  unchanged (torch's AdamW applies its decoupled weight decay before the moment step).

LookSAM, ``variant: looksam`` (Liu, Mai, Chen, Hsieh & You, "Towards Efficient and Scalable
Sharpness-Aware Minimization", CVPR 2022, Algorithm 2): every ``interval``-th step is a full SAM
step, which also keeps the component of g_sam orthogonal to g::

    g_v = g_sam - (<g, g_sam> / ||g||^2) g                         (full SAM steps)
    g_s = g + alpha * (||g|| / ||g_v||) * g_v   g = grad L(w)      (the steps in between)

  so the in-between steps cost one forward/backward; ``g_v`` is state (saved in checkpoints).

The wrapper owns only these perturbations, their exact restore and the LookSAM gradient edit; the
forward/backward passes belong to the train module (:mod:`olmo_sam.train.train_module`), which
is where OLMo-core runs micro-batches and gradient synchronisation. ``SAM.step()`` is the base
optimizer's step, so OLMo-core's clipping, LR scheduler and checkpointing see an ordinary optimizer
whose ``state`` and ``param_groups`` are the base optimizer's own. Stepping a SAM optimizer that
no SAM train module drives is an error (:data:`NOT_DRIVEN_HELP`): it would silently be AdamW.

Norm scope (every norm and inner product above is over the *global* tensor):

* ``global``: one direction from the all-reduced gradient (or the momentum, identical on every
  rank). Under DDP the gradients are already averaged; under FSDP2 they are ``DTensor`` shards and
  norms/inner products are reduced over the mesh. The only valid choice under FSDP, and the only
  one for ``msam``/``looksam``.
* ``local``: every data-parallel rank ascends along its own (un-synchronised) gradient, as the
  paper's public code did under DDP (``variant: sam`` only).
"""

from __future__ import annotations

import inspect
import math
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Type, Union

import torch
import torch.nn as nn
from olmo_core.config import StrEnum
from olmo_core.exceptions import OLMoConfigurationError
from olmo_core.optim import OptimConfig, SkipStepOptimizer
from olmo_core.optim.adamw import AdamWConfig
from torch.distributed.tensor import DTensor

from .. import paper
from ..config import Checked, ConfigError, setting

__all__ = [
    "SAM",
    "SAMConfig",
    "SAMScope",
    "SAMVariant",
    "AscentResult",
    "sam_ascent_direction",
    "NOT_DRIVEN_HELP",
]

#: Added to the norm before dividing, as in Foret et al.'s reference implementation.
NORM_EPS = 1e-12
#: LookSAM's default reuse weight alpha (Liu et al. 2022 search alpha in [0.1, 1]; ours, not tuned)
LOOKSAM_ALPHA = 0.7
#: The train module config that runs the SAM step, and its YAML line.
SAM_TRAIN_MODULE = "olmo_sam.train.train_module.SAMTrainModuleConfig"
NOT_DRIVEN_HELP = (
    f"use SAMTrainModuleConfig ({SAM_TRAIN_MODULE}) as the train module (same fields as "
    "OLMo-core's TransformerTrainModuleConfig); in YAML put "
    f"'_CLASS_: {SAM_TRAIN_MODULE}' under 'train_module'"
)
#: Keys a SAM config reads from a parameter group (set through the base's group_overrides).
GROUP_KEYS = ("rho", "adaptive")

# Field types for values OLMo-core's decoder must hand to ``__post_init__`` unchanged when they
# are wrong: its own type errors on a nested optimizer name only 'optim', ours name the field.
# (Valid numbers, including numeric strings, are coerced the same way from YAML and Python.)
Number = Union[float, Any]
Integer = Union[int, Any]
Flag = Union[bool, Any]
Text = Union[str, Any]


class SAMScope(StrEnum):
    """Where the ascent direction's norm comes from (see module docstring)."""

    global_ = "global"
    local = "local"


class SAMVariant(StrEnum):
    """Which sharpness-aware update (see module docstring)."""

    sam = "sam"
    msam = "msam"
    looksam = "looksam"


@dataclass
class SAMOptions(Checked):
    """The wrapper's options, declared and checked here only (:class:`SAM` and
    :class:`SAMConfig` both build one); every error names its field and the fix."""

    rho: float = setting(paper.SAM_RHO, ge=0, hint=f" (the paper uses {paper.SAM_RHO})")
    adaptive: bool = False
    scope: str = setting("global", choices=[m.value for m in SAMScope])
    interval: int = setting(1, ge=1, hint=" (1 = every step, k = one ascent every k steps)")
    variant: str = setting("sam", choices=[m.value for m in SAMVariant])
    looksam_alpha: float = setting(LOOKSAM_ALPHA, ge=0)

    def __post_init__(self):
        super().__post_init__()
        self.scope, self.variant = SAMScope(self.scope), SAMVariant(self.variant)
        if self.variant != SAMVariant.sam and self.scope != SAMScope.global_:
            raise ConfigError.at(
                "scope",
                f"'local' is defined for variant 'sam' only; variant '{self.variant.value}' uses the "
                "global gradient/momentum: set scope: global",
            )
        if self.variant != SAMVariant.looksam and self.looksam_alpha != LOOKSAM_ALPHA:
            raise ConfigError.at(
                "looksam_alpha",
                f"applies to variant 'looksam' only, not '{self.variant.value}'; set variant: looksam or drop it",
            )
        if self.variant != SAMVariant.sam and self.adaptive:
            raise ConfigError.at(
                "adaptive",
                f"true (ASAM) is defined for variant 'sam' only, not '{self.variant.value}'; set adaptive: false",
            )


def _local(t: torch.Tensor) -> torch.Tensor:
    return t.to_local() if isinstance(t, DTensor) else t


def _global_scalar(t: torch.Tensor) -> torch.Tensor:
    """A reduction of (possibly sharded) tensors as a plain fp32 scalar of the global tensor."""
    if isinstance(t, DTensor):
        t = t.full_tensor()
    return t.reshape(()).float()


def _norm(t: torch.Tensor) -> torch.Tensor:
    """||t||_2 accumulated in fp32 at least (float64 tensors in float64: vector_norm cannot downcast)."""
    return torch.linalg.vector_norm(t, 2, dtype=None if t.dtype == torch.float64 else torch.float32)


def global_norm(tensors: List[torch.Tensor]) -> torch.Tensor:
    """||[t_1, ..., t_n]||_2 of whole (global) tensors; FSDP2 shards are reduced over the mesh."""
    norms = [_global_scalar(_norm(t)) for t in tensors]
    if not norms:
        return torch.zeros((), dtype=torch.float32)
    return torch.linalg.vector_norm(torch.stack(norms), 2)


def global_dot(a: List[torch.Tensor], b: List[torch.Tensor]) -> torch.Tensor:
    """<a, b> summed over whole (global) tensors, in fp32."""
    terms = [_global_scalar((x.float() * y.float()).sum()) for x, y in zip(a, b)]
    if not terms:
        return torch.zeros((), dtype=torch.float32)
    return torch.stack(terms).sum()


def sam_ascent_direction(params: List[torch.Tensor], grads: List[torch.Tensor], adaptive: bool) -> List[torch.Tensor]:
    """The un-normalised ascent direction d with eps = rho * d / ||T_w g||.

    SAM: d = g. ASAM: d = |w|^2 * g (so that ||T_w g|| normalises it). Computed in fp32.
    """
    out = []
    for p, g in zip(params, grads):
        g32 = g.float()
        out.append(p.float().square() * g32 if adaptive else g32)
    return out


def _grad_norm_terms(p: torch.Tensor, g: torch.Tensor, adaptive: bool) -> torch.Tensor:
    """||T_w g||_2 of one tensor (DTensor-aware: the result is a partial/replicated DTensor)."""
    t = p.detach().abs() * g if adaptive else g
    return _norm(t)


@dataclass
class AscentResult:
    """What one ascent did; the train module logs it."""

    #: the norm the ascent divided by (SAM/LookSAM: ||T_w g||; MSAM: ||m||)
    grad_norm: float
    perturbed: bool
    #: "zero" or "nonfinite" when the ascent was skipped
    skip_reason: Optional[str] = None


class SAM(torch.optim.Optimizer):
    """Wraps a built base optimizer; shares its ``param_groups`` and ``state``.

    Per-group ``rho``/``adaptive`` come from the group (set through the base config's
    ``group_overrides``) and default to the wrapper's values.
    """

    def __init__(
        self,
        base_optimizer: torch.optim.Optimizer,
        *,
        rho: float = paper.SAM_RHO,
        adaptive: bool = False,
        scope: SAMScope | str = SAMScope.global_,
        interval: int = 1,
        variant: SAMVariant | str = SAMVariant.sam,
        looksam_alpha: float = LOOKSAM_ALPHA,
    ):
        opts = SAMOptions(rho, adaptive, scope, interval, variant, looksam_alpha)
        self.base_optimizer = base_optimizer
        self.rho, self.adaptive, self.scope = opts.rho, opts.adaptive, opts.scope
        self.interval, self.variant, self.looksam_alpha = opts.interval, opts.variant, opts.looksam_alpha
        super().__init__(base_optimizer.param_groups, dict(base_optimizer.defaults))
        self._relink()
        for i, group in enumerate(self.param_groups):
            given = {k: group[k] for k in GROUP_KEYS if k in group}
            if given:
                try:
                    group.update({k: getattr(SAMOptions(**given, variant=opts.variant), k) for k in given})
                except ConfigError as e:
                    raise e.within(f"param_groups[{i}]") from None
        self._backup: Optional[List[torch.Tensor]] = None
        self._perturbed_locals: Optional[List[torch.Tensor]] = None
        #: set by the SAM train module (:meth:`bind`); ``step()`` refuses to run without it
        self.driver: Optional[str] = None
        self._manual_ascent = False
        #: LookSAM: the gradient at w of the current full step (pass 1), until g_v is formed
        self._looksam_g: Optional[Dict[torch.Tensor, torch.Tensor]] = None
        #: LookSAM: g_v of the last full SAM step, per parameter (checkpointed by the train module)
        self.looksam_gv: Optional[Dict[torch.Tensor, torch.Tensor]] = None

    # -- plumbing: the wrapper *is* the base optimizer for checkpoints and schedulers ----------

    def _relink(self) -> None:
        self.param_groups = self.base_optimizer.param_groups
        self.state = self.base_optimizer.state
        self.defaults = self.base_optimizer.defaults

    def state_dict(self) -> Dict[str, Any]:
        return self.base_optimizer.state_dict()

    def load_state_dict(self, state_dict: Dict[str, Any]) -> None:
        self.base_optimizer.load_state_dict(state_dict)
        self._relink()

    def bind(self, driver: str) -> None:
        """Declare that ``driver`` (the SAM train module) runs the ascents of this optimizer."""
        self.driver = driver

    @torch.no_grad()
    def step(self, closure=None):  # type: ignore[override]
        if self._backup is not None:
            raise RuntimeError("SAM.step() called while the parameters are perturbed; call restore() first")
        if self.driver is None and not self._manual_ascent:
            raise OLMoConfigurationError(
                f"optimizer type 'sam' (variant '{self.variant.value}') was stepped but no SAM "
                "train module did its ascent, so this run would be plain "
                f"{type(self.base_optimizer).__name__}: {NOT_DRIVEN_HELP}"
            )
        self._manual_ascent = False
        return self.base_optimizer.step(closure)

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.base_optimizer.zero_grad(set_to_none=set_to_none)

    # -- SAM / ASAM (and LookSAM's full steps) -------------------------------------------------

    def _groups_with_grads(self):
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if params:
                yield group, params

    @torch.no_grad()
    def ascent_grad_norm(self) -> torch.Tensor:
        """||T_w g||_2 over every parameter with a gradient, as an fp32 scalar.

        For FSDP2 ``DTensor`` shards the per-tensor norms are reduced over the device mesh
        (``full_tensor``), so every rank sees the norm of the *global* gradient. Plain tensors
        are used as they are (DDP gradients are already averaged; with ``scope='local'`` they
        are deliberately this rank's own).
        """
        norms = []
        for group, params in self._groups_with_grads():
            adaptive = bool(group.get("adaptive", self.adaptive))
            for p in params:
                norms.append(_global_scalar(_grad_norm_terms(p, p.grad, adaptive)))
        if not norms:
            return torch.zeros((), dtype=torch.float32)
        return torch.linalg.vector_norm(torch.stack(norms), 2)

    @torch.no_grad()
    def perturb(self) -> AscentResult:
        """SAM/ASAM: w <- w + eps (in place); keeps a copy of w so that :meth:`restore` is exact.

        A zero or non-finite norm skips the ascent and leaves the parameters untouched. Under
        ``variant='looksam'`` the gradient at w is kept for :meth:`looksam_form_gv`.
        """
        if self._backup is not None:
            raise RuntimeError("SAM.perturb() called twice without restore()")
        self._manual_ascent = True
        norm_t = self.ascent_grad_norm()
        norm = float(norm_t)
        if not math.isfinite(norm):
            return AscentResult(norm, False, "nonfinite")
        if norm == 0.0:
            return AscentResult(norm, False, "zero")
        if self.variant == SAMVariant.looksam:
            self._looksam_g = {p: p.grad.detach().clone() for _, ps in self._groups_with_grads() for p in ps}

        backup: List[torch.Tensor] = []
        locals_: List[torch.Tensor] = []
        for group, params in self._groups_with_grads():
            rho = float(group.get("rho", self.rho))
            adaptive = bool(group.get("adaptive", self.adaptive))
            scale = rho / (norm + NORM_EPS)
            p_loc = [_local(p) for p in params]
            g_loc = [_local(p.grad) for p in params]
            backup.extend(p.clone() for p in p_loc)
            locals_.extend(p_loc)
            if scale == 0.0:
                continue
            if not adaptive and all(p.dtype == torch.float32 for p in p_loc):
                # fast path: fp32 parameters, plain SAM
                torch._foreach_add_(p_loc, [g.float() for g in g_loc], alpha=scale)
            else:
                # fp32 arithmetic whatever the parameter dtype (bf16 parameters included)
                directions = sam_ascent_direction(p_loc, g_loc, adaptive)
                for p, d in zip(p_loc, directions):
                    p.copy_(p.float().add_(d, alpha=scale))
        self._backup = backup
        self._perturbed_locals = locals_
        return AscentResult(norm, True)

    @torch.no_grad()
    def restore(self) -> None:
        """Put back the exact pre-ascent parameters (a no-op if nothing was perturbed)."""
        if self._backup is None:
            return
        assert self._perturbed_locals is not None
        torch._foreach_copy_(self._perturbed_locals, self._backup)
        self._backup = None
        self._perturbed_locals = None

    @property
    def is_perturbed(self) -> bool:
        return self._backup is not None

    # -- MSAM ----------------------------------------------------------------------------------

    def _momentum(self, p: torch.Tensor) -> Optional[torch.Tensor]:
        state = self.base_optimizer.state.get(p, {})
        for key in ("exp_avg", "momentum_buffer"):
            if state.get(key) is not None:
                return state[key]
        return None

    @torch.no_grad()
    def perturb_momentum(self) -> AscentResult:
        """MSAM: w <- w - rho * m / ||m|| (in place, exact restore as for :meth:`perturb`).

        No momentum yet (the first step) or a zero/non-finite ||m|| leaves w untouched.
        """
        if self._backup is not None:
            raise RuntimeError("SAM.perturb_momentum() called twice without restore()")
        self._manual_ascent = True
        pairs = [
            (group, p, m)
            for group in self.param_groups
            for p in group["params"]
            if (m := self._momentum(p)) is not None
        ]
        norm = float(global_norm([m for _, _, m in pairs]))
        if not math.isfinite(norm):
            return AscentResult(norm, False, "nonfinite")
        if norm == 0.0:
            return AscentResult(norm, False, "zero")
        backup: List[torch.Tensor] = []
        locals_: List[torch.Tensor] = []
        for group, p, m in pairs:
            scale = float(group.get("rho", self.rho)) / (norm + NORM_EPS)
            p_loc = _local(p)
            backup.append(p_loc.clone())
            locals_.append(p_loc)
            if scale != 0.0:
                p_loc.copy_(p_loc.float().add_(_local(m).float(), alpha=-scale))
        self._backup = backup
        self._perturbed_locals = locals_
        return AscentResult(norm, True)

    # -- LookSAM -------------------------------------------------------------------------------

    @torch.no_grad()
    def looksam_form_gv(self) -> None:
        """After a full step's pass 2 (``p.grad`` = g_sam): g_v = g_sam - <g,g_sam>/||g||^2 g."""
        g_at_w, self._looksam_g = self._looksam_g, None
        if g_at_w is None:
            return
        params = [p for p in g_at_w if p.grad is not None]
        g = [g_at_w[p] for p in params]
        gs = [p.grad for p in params]
        coef = float(global_dot(g, gs)) / max(float(global_norm(g)) ** 2, NORM_EPS)
        gv = {p: (p.grad.float() - coef * g_at_w[p].float()).to(p.grad.dtype) for p in params}
        if math.isfinite(coef) and math.isfinite(float(global_norm(list(gv.values())))):
            self.looksam_gv = gv  # a non-finite step keeps the previous g_v

    @torch.no_grad()
    def looksam_reuse(self) -> Optional[float]:
        """In-between step (``p.grad`` = g at w): g <- g + alpha * ||g|| / ||g_v|| * g_v.

        Returns the scale applied, or ``None`` when there is nothing to reuse yet (no full step
        so far) or a norm is zero/non-finite (the plain gradient is used).
        """
        if self.looksam_gv is None:
            return None
        params = [p for p in self.looksam_gv if p.grad is not None]
        gnorm = float(global_norm([p.grad for p in params]))
        gvnorm = float(global_norm([self.looksam_gv[p] for p in params]))
        if not (math.isfinite(gnorm) and math.isfinite(gvnorm)) or gvnorm == 0.0:
            return None
        scale = self.looksam_alpha * gnorm / gvnorm
        for p in params:
            p.grad.add_(self.looksam_gv[p].to(p.grad.dtype), alpha=scale)
        return scale


def _base_option_names(base: OptimConfig) -> Optional[set]:
    """The keyword options the base optimizer class accepts (group overrides may set these)."""
    try:
        params = inspect.signature(base.optimizer().__init__).parameters
    except (TypeError, ValueError, NotImplementedError):
        return None
    if any(p.kind == inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return None
    return {n for n in params if n not in ("self", "params")}


@OptimConfig.register("sam")
@dataclass
class SAMConfig(OptimConfig):
    """OLMo-core config for :class:`SAM`, registered as optimizer type ``sam``.

    ``base`` is any OLMo-core optimizer config (AdamW by default); its ``lr``, ``group_overrides``
    and other fields are used as they are. Put per-group SAM settings in the base's group
    overrides, e.g. ``OptimGroupOverride(params=["embeddings.weight"], opts={"rho": 0.0})``.

    ``variant`` picks SAM (two passes per SAM step), MSAM (one pass, ascent along the base's
    momentum) or LookSAM (a full SAM step every ``interval`` steps, its ``g_v`` reused with weight
    ``looksam_alpha`` in between); see the module docstring. Only a SAM train module
    (:data:`SAM_TRAIN_MODULE`) runs these steps; any other one fails on its first step.
    """

    base: OptimConfig = field(
        default_factory=lambda: AdamWConfig(
            lr=1e-3, betas=paper.PRETRAIN_BETAS, weight_decay=paper.PRETRAIN_WEIGHT_DECAY
        )
    )
    rho: Number = paper.SAM_RHO
    adaptive: Flag = False
    scope: Text = "global"
    interval: Integer = 1
    variant: Text = "sam"
    looksam_alpha: Number = LOOKSAM_ALPHA

    def __post_init__(self, *args):
        del args
        opts = SAMOptions(self.rho, self.adaptive, self.scope, self.interval, self.variant, self.looksam_alpha)
        self.rho, self.adaptive, self.interval = opts.rho, opts.adaptive, opts.interval
        self.looksam_alpha, self.scope, self.variant = opts.looksam_alpha, opts.scope.value, opts.variant.value
        if not isinstance(self.base, OptimConfig):
            raise OLMoConfigurationError(
                f"'base' must be an OLMo-core optimizer config (e.g. type 'adamw'), got "
                f"{type(self.base).__name__}: {self.base!r}"
            )
        if isinstance(self.base, SAMConfig):
            raise OLMoConfigurationError("'base' cannot itself be a SAM config")
        if issubclass(self.base.optimizer(), SkipStepOptimizer):
            # OLMo-core gives the loss and grad norm that decide a skip only to an optimizer that is
            # itself a skip-step one; under the wrapper no step would ever be skipped
            raise OLMoConfigurationError(
                f"'base': {self.base.optimizer().__name__} cannot be wrapped by SAM (its step-skipping would "
                "silently never run); use the plain optimizer (e.g. type 'adamw')"
            )
        if self.group_overrides:
            raise OLMoConfigurationError(
                "set 'group_overrides' on the base optimizer ('optim.base.group_overrides'), not "
                "on the SAM wrapper; per-group SAM radius goes in its opts as 'rho'"
            )
        if self.compile:
            raise OLMoConfigurationError(
                "'compile' is not supported on the SAM wrapper; set 'optim.base.compile' instead"
            )
        self._check_group_overrides()

    def _check_group_overrides(self) -> None:
        allowed = _base_option_names(self.base)
        for i, override in enumerate(self.base.group_overrides or []):
            opts = dict(getattr(override, "opts", None) or {})
            where = f"base.group_overrides[{i}].opts"
            if allowed is not None:
                unknown = sorted(k for k in opts if k not in allowed and k not in GROUP_KEYS)
                if unknown:
                    raise OLMoConfigurationError(
                        f"'{where}' has unknown key(s) {unknown}: a group override may set the "
                        f"SAM keys {list(GROUP_KEYS)} or an option of "
                        f"{self.base.optimizer().__name__} ({sorted(allowed)})"
                    )
            try:
                SAMOptions(**{k: opts[k] for k in GROUP_KEYS if k in opts}, variant=self.variant)
            except ConfigError as e:
                raise e.within(where) from None

    @property
    def lr(self) -> Any:
        """The base optimizer's learning rate (read by OLMo-core utilities and recipes)."""
        return getattr(self.base, "lr")

    @classmethod
    def optimizer(cls) -> Type[SAM]:
        return SAM

    def build(self, model: nn.Module, strict: bool = True) -> SAM:
        base = self.base.build(model, strict=strict)
        if self.variant == SAMVariant.msam.value and not _has_momentum(base):
            raise OLMoConfigurationError(
                f"variant 'msam' ascends along the base optimizer's momentum, but "
                f"{type(base).__name__} has none (use base type 'adamw', or SGD with momentum)"
            )
        return SAM(
            base,
            rho=self.rho,
            adaptive=self.adaptive,
            scope=self.scope,
            interval=self.interval,
            variant=self.variant,
            looksam_alpha=self.looksam_alpha,
        )


def _has_momentum(base: torch.optim.Optimizer) -> bool:
    if isinstance(base, torch.optim.SGD):
        return all(float(g.get("momentum", 0.0)) > 0 for g in base.param_groups)
    return "betas" in base.defaults
