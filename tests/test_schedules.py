"""The WSO-paper schedule family against formulas written out here, and decay-start detection."""

from __future__ import annotations

import math

import pytest
from olmo_core.exceptions import OLMoConfigurationError
from olmo_core.optim.scheduler import (
    WSD,
    ConstantWithWarmup,
    CosWithWarmup,
    LinearWithWarmup,
    Scheduler,
)

import olmo_sam  # noqa: F401
from olmo_sam.optim import (
    WSO,
    CosineAlpha,
    LinearAlpha,
    Midtrain,
    WSDAlpha,
    check_fits,
    decay_start,
)

PEAK, T, W = 1e-3, 100, 10


def warm(t):
    return PEAK * t / W


@pytest.mark.parametrize("alpha", [0.0, 0.1, 0.5, 1.0])
def test_wsd_alpha(alpha):
    s = WSDAlpha(warmup=W, decay_fraction=0.2, alpha_f=alpha)
    for t in range(0, T + 1):
        if t <= W:
            want = warm(t)
        elif t < T - 20:
            want = PEAK
        else:  # linear from PEAK at t = T-20 to alpha*PEAK at t = T
            want = alpha * PEAK + (PEAK - alpha * PEAK) * (T - t) / 20
        assert s.get_lr(PEAK, t, T) == pytest.approx(want, rel=1e-12, abs=1e-15), t
    # alpha_f = 1 never decays: like WSO there is no decay phase to switch SAM on at
    assert decay_start(s, T) == (None if alpha == 1.0 else 80)
    assert s.get_lr(PEAK, 80, T) == PEAK
    assert s.get_lr(PEAK, 81, T) < PEAK or alpha == 1.0


@pytest.mark.parametrize("alpha", [0.0, 0.1])
def test_wsd_alpha_stays_at_its_floor_past_the_end(alpha):
    """A token-unit run's last step can pass t_max (a budget that is not a whole number of
    batches); the LR stays at alpha_f * peak there, where a continued line goes below zero."""
    s = WSDAlpha(warmup=W, decay_fraction=0.2, alpha_f=alpha)
    for t in (T, T + 1, T + 10, 2 * T):
        assert s.get_lr(PEAK, t, T) == pytest.approx(alpha * PEAK, abs=1e-18), t


def test_wsd_alpha_one_is_wso():
    s, wso = WSDAlpha(warmup=W, decay_fraction=0.2, alpha_f=1.0), WSO(warmup=W)
    assert [s.get_lr(PEAK, t, T) for t in range(T + 1)] == [wso.get_lr(PEAK, t, T) for t in range(T + 1)]
    assert decay_start(s, T) is None and decay_start(wso, T) is None


@pytest.mark.parametrize("alpha", [0.0, 0.1])
def test_cosine_and_linear_alpha(alpha):
    c = CosineAlpha(warmup=W, alpha_f=alpha)
    lin = LinearAlpha(warmup=W, alpha_f=alpha)
    for t in range(W, T + 1):
        frac = (t - W) / (T - W)
        cos_want = alpha * PEAK + (PEAK - alpha * PEAK) * 0.5 * (1 + math.cos(math.pi * frac))
        lin_want = PEAK - (PEAK - alpha * PEAK) * frac
        assert c.get_lr(PEAK, t, T) == pytest.approx(cos_want, rel=1e-12), t
        assert lin.get_lr(PEAK, t, T) == pytest.approx(lin_want, rel=1e-12, abs=1e-15), t
    assert decay_start(c, T) == W and decay_start(lin, T) == W
    assert c.get_lr(PEAK, W + 1, T) < PEAK


def test_wso_never_decays():
    s = WSO(warmup=W)
    assert [s.get_lr(PEAK, t, T) for t in range(W, T + 1)] == [PEAK] * (T - W + 1)
    assert s.get_lr(PEAK, 5, T) == pytest.approx(warm(5))
    assert decay_start(s, T) is None


@pytest.mark.parametrize("alpha", [0.0, 1.0])
def test_midtrain_from_checkpoint_lr(alpha):
    s = Midtrain(alpha_f=alpha)
    start = 7.4487e-5
    assert s.get_lr(start, 0, T) == start
    assert s.get_lr(start, T, T) == pytest.approx(alpha * start)
    assert s.get_lr(start, 25, T) == pytest.approx(start * (1 - (1 - alpha) * 0.25))
    assert decay_start(s, T) == (None if alpha == 1.0 else 0)


def test_registered_names_build_the_schedules():
    for name, cls in [
        ("wso", WSO),
        ("wsd_alpha", WSDAlpha),
        ("linear_alpha", LinearAlpha),
        ("cosine_alpha", CosineAlpha),
        ("midtrain", Midtrain),
    ]:
        assert Scheduler.get_registered_class(name) is cls


def test_decay_start_of_olmo_core_builtins():
    assert decay_start(WSD(warmup=W, decay_fraction=0.1), T) == 90
    assert decay_start(CosWithWarmup(warmup=W), T) == W
    assert decay_start(LinearWithWarmup(warmup=W, alpha_f=0.0), T) == W
    assert decay_start(ConstantWithWarmup(warmup=W), T) is None


@pytest.mark.parametrize(
    "build, field",
    [
        (lambda: WSDAlpha(warmup=W, alpha_f=1.5), "alpha_f"),
        (lambda: WSDAlpha(warmup=W, alpha_f=-0.1), "alpha_f"),
        (lambda: CosineAlpha(warmup=W, alpha_f=2.0), "alpha_f"),
        (lambda: LinearAlpha(warmup=W, alpha_f=-1.0), "alpha_f"),
        (lambda: Midtrain(alpha_f=1.01), "alpha_f"),
        (lambda: WSDAlpha(warmup=W, decay_fraction=0.0), "decay_fraction"),
        (lambda: WSDAlpha(warmup=W, decay_fraction=1.5), "decay_fraction"),
        (lambda: WSDAlpha(warmup=W, alpha_f=True), "alpha_f"),
        (lambda: WSDAlpha(warmup_fraction=math.nan, decay_fraction=0.1), "warmup_fraction"),
        (lambda: WSO(warmup_fraction=math.nan), "warmup_fraction"),
        (lambda: CosineAlpha(warmup_fraction=math.nan), "warmup_fraction"),
    ],
)
def test_bad_schedule_parameters_name_the_field(build, field):
    with pytest.raises(OLMoConfigurationError, match=field):
        build()


_BUILDERS = {
    "wso": lambda **kw: WSO(**kw),
    "wsd_alpha": lambda **kw: WSDAlpha(decay_fraction=0.1, **kw),
    "linear_alpha": lambda **kw: LinearAlpha(**kw),
    "cosine_alpha": lambda **kw: CosineAlpha(**kw),
}


@pytest.mark.parametrize("name", sorted(_BUILDERS))
def test_negative_warmup_is_refused_naming_the_field(name):
    with pytest.raises(OLMoConfigurationError, match=r"'warmup'.*>= 0, got -5; use 0 for no warmup"):
        _BUILDERS[name](warmup=-5)


@pytest.mark.parametrize("name", sorted(_BUILDERS))
def test_warmup_longer_than_the_run_is_refused(name):
    s = _BUILDERS[name](warmup=T + 1)
    with pytest.raises(OLMoConfigurationError, match=r"'warmup' = 101 steps is longer than the run .*shorten 'warmup'"):
        check_fits(s, T)
    with pytest.raises(OLMoConfigurationError, match="'warmup'"):
        decay_start(s, T)  # what the switch and the recipes' dry runs ask first
    check_fits(_BUILDERS[name](warmup=T // 2), T)  # fits: no error


def test_wsd_warmup_plus_decay_longer_than_the_run_is_refused():
    with pytest.raises(OLMoConfigurationError, match=r"'warmup' \+ 'decay' = 60 \+ 50 steps is longer than the run"):
        check_fits(WSDAlpha(warmup=60, decay=50, decay_fraction=None), T)
    with pytest.raises(OLMoConfigurationError, match=r"'warmup' \+ 'decay' = 80 \+ 30"):
        check_fits(WSDAlpha(warmup=80, decay_fraction=0.3), T)
    with pytest.raises(OLMoConfigurationError, match=r"'warmup' \+ 'decay'"):
        check_fits(WSD(warmup=60, decay=50, decay_fraction=None), T)  # OLMo-core's own WSD too
    with pytest.raises(OLMoConfigurationError, match=r"'warmup_fraction' \+ 'decay_fraction'.*sum <= 1"):
        WSDAlpha(warmup_fraction=0.6, decay_fraction=0.5)
    check_fits(WSDAlpha(warmup=50, decay=50, decay_fraction=None), T)  # exactly the run: no stable phase, allowed
    check_fits(WSDAlpha(warmup=60, decay=50, decay_fraction=None, alpha_f=1.0), T)  # never decays: decay length moot


def test_builtin_and_token_schedules_are_checked_too():
    with pytest.raises(OLMoConfigurationError, match=r"'warmup' .*>= 0, got -1"):
        check_fits(CosWithWarmup(warmup=-1), T)
    tok = WSO(warmup=5000, units="tokens")
    with pytest.raises(OLMoConfigurationError, match=r"5,000 tokens is longer than the run \(4,096 tokens\)"):
        check_fits(tok, 4096)
    with pytest.raises(OLMoConfigurationError, match=r"longer than 't_max' = 50"):
        check_fits(LinearAlpha(warmup=60, t_max=50), T)


def test_a_too_long_warmup_fails_before_the_first_step(tmp_path, tiny_corpus):
    from helpers import adamw, tiny_experiment

    from olmo_sam.train import build_trainer

    trainer = build_trainer(
        tiny_experiment(tiny_corpus, tmp_path / "run", adamw(), max_steps=3, scheduler=WSO(warmup=5))
    )
    with pytest.raises(OLMoConfigurationError, match=r"'warmup' = 5 steps is longer than the run \(3 steps\)"):
        trainer.fit()
    assert trainer.global_step == 0
