"""The AdamW -> SAM annealing switch in real tiny OLMo-core runs."""

from __future__ import annotations

import pytest
import torch
from helpers import adamw, losses, tiny_experiment
from olmo_core.exceptions import OLMoConfigurationError

from olmo_sam.optim import WSO, SAMConfig, WSDAlpha
from olmo_sam.train import (
    SAMSwitchCallback,
    build_trainer,
    read_metrics,
    run_experiment,
)


def _switch_run(corpus, folder, switch, scheduler=None, steps=8, optim=None):
    return tiny_experiment(
        corpus,
        folder,
        optim or SAMConfig(base=adamw()),
        max_steps=steps,
        max_grad_norm=1.0,
        scheduler=scheduler or WSDAlpha(warmup=2, decay_fraction=0.25),
        callbacks={"sam_switch": switch},
    )


def test_switch_at_decay_phase_keeps_adamw_before_and_state_after(tmp_path, tiny_corpus):
    sched = WSDAlpha(warmup=2, decay_fraction=0.25)  # 8 steps: decay over the last 2
    trainer = run_experiment(_switch_run(tiny_corpus, tmp_path / "sw", SAMSwitchCallback(), sched))
    plain = tiny_experiment(tiny_corpus, tmp_path / "adamw", adamw(), max_steps=8, max_grad_norm=1.0, scheduler=sched)
    run_experiment(plain)

    m = read_metrics(tmp_path / "sw")
    assert [m[s]["sam/active"] for s in range(1, 9)] == [0.0] * 6 + [1.0] * 2
    assert [m[s]["sam/ascent"] for s in range(1, 9)] == [0.0] * 6 + [1.0] * 2
    assert m[8]["sam/switch step"] == 7.0
    # the LR really is below the peak exactly on the SAM steps
    lrs = [m[s]["optim/LR (group 0)"] for s in range(1, 9)]
    assert all(lr < 2e-3 for lr in lrs[6:]) and lrs[5] == pytest.approx(2e-3)

    sw, ad = losses(tmp_path / "sw"), losses(tmp_path / "adamw")
    assert [sw[s] for s in range(1, 8)] == [ad[s] for s in range(1, 8)]  # AdamW until the switch
    assert sw[8] != ad[8]  # step 7 used the SAM gradient
    # one optimizer object throughout: AdamW's state counted every step, none were reset
    state = trainer.train_module.optim.state
    steps = {float(st["step"]) for st in state.values()}
    assert steps == {8.0}


@pytest.mark.parametrize(
    "switch, expected",
    [
        (SAMSwitchCallback(start_step=5), 5),
        (SAMSwitchCallback(start_fraction=0.75), 7),
        (SAMSwitchCallback(start_tokens=4 * 4 * 32), 5),  # 4 steps of 4 x 32 tokens
    ],
)
def test_explicit_switch_points(tmp_path, tiny_corpus, switch, expected):
    run_experiment(_switch_run(tiny_corpus, tmp_path / "run", switch))
    m = read_metrics(tmp_path / "run")
    first = min(s for s in range(1, 9) if m[s]["sam/active"] == 1.0)
    assert first == expected
    assert all(m[s]["sam/active"] == 1.0 for s in range(first, 9))


@pytest.mark.parametrize(
    "switch, scheduler, match",
    [
        (SAMSwitchCallback(start_step=20), None, "outside the run"),
        (SAMSwitchCallback(start_tokens=10**9), None, "outside the run"),
        (SAMSwitchCallback(), WSO(warmup=2), "no decay"),
        # alpha_f = 1 never decays: an explicit start is needed, and the message says how
        (
            SAMSwitchCallback(),
            WSDAlpha(warmup=2, decay_fraction=0.25, alpha_f=1.0),
            "WSDAlpha has no decay phase.*set 'start_step', 'start_fraction' or 'start_tokens'",
        ),
    ],
)
def test_bad_switch_points_fail_before_training(tmp_path, tiny_corpus, switch, scheduler, match):
    trainer = build_trainer(_switch_run(tiny_corpus, tmp_path / "run", switch, scheduler=scheduler))
    with pytest.raises(OLMoConfigurationError, match=match):
        trainer.fit()
    assert trainer.global_step == 0


def test_switch_needs_the_sam_optimizer(tmp_path, tiny_corpus):
    with pytest.raises(OLMoConfigurationError, match="SAM optimizer"):
        build_trainer(_switch_run(tiny_corpus, tmp_path / "run", SAMSwitchCallback(), optim=adamw()))


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"start_step": 0}, "start_step"),
        ({"start_fraction": 1.0}, "start_fraction"),
        ({"start_fraction": -0.1}, "start_fraction"),
        ({"start_step": 3, "start_fraction": 0.5}, "at most one"),
    ],
)
def test_switch_config_validation(kwargs, match):
    with pytest.raises(OLMoConfigurationError, match=match):
        SAMSwitchCallback(**kwargs)


def test_without_switch_sam_is_on_from_step_one(tmp_path, tiny_corpus):
    run_experiment(tiny_experiment(tiny_corpus, tmp_path / "run", SAMConfig(base=adamw()), max_steps=2))
    m = read_metrics(tmp_path / "run")
    assert m[1]["sam/active"] == 1.0 and m[1]["sam/ascent"] == 1.0
    assert torch.isfinite(torch.tensor(m[2]["sam/perturbed CE loss"]))


def _active(folder, steps):
    m = read_metrics(folder)
    return [int(m[s]["sam/active"]) for s in range(1, steps + 1)], m[steps]["sam/switch step"]


def test_a_run_extended_before_its_switch_switches_at_its_new_decay_start(tmp_path, tiny_corpus):
    """An 8-step WSD run stopped at step 4 and resumed as a 16-step run decays from step 13, so
    SAM starts there too (the checkpoint's step 7 belonged to the 8-step run); a run stopped after
    its switch keeps the step it switched at."""
    from olmo_core.train import Duration

    first = _switch_run(tiny_corpus, tmp_path / "ext", SAMSwitchCallback())
    first.trainer.hard_stop = Duration.steps(4)
    run_experiment(first)
    run_experiment(_switch_run(tiny_corpus, tmp_path / "ext", SAMSwitchCallback(), steps=16))
    assert _active(tmp_path / "ext", 16) == ([0] * 12 + [1] * 4, 13.0)

    late = _switch_run(tiny_corpus, tmp_path / "late", SAMSwitchCallback())
    late.trainer.hard_stop = Duration.steps(7)  # step 7 was a SAM step
    run_experiment(late)
    run_experiment(_switch_run(tiny_corpus, tmp_path / "late", SAMSwitchCallback(), steps=16))
    assert _active(tmp_path / "late", 16) == ([0] * 6 + [1] * 10, 7.0)


def test_a_config_reused_for_another_run_resolves_its_own_switch(tmp_path, tiny_corpus):
    """The trainer uses the callback object of the config itself; a second, longer run built from
    the same object switches at its own decay start, not at the first run's step."""
    switch = SAMSwitchCallback()
    run_experiment(_switch_run(tiny_corpus, tmp_path / "a", switch))
    run_experiment(_switch_run(tiny_corpus, tmp_path / "b", switch, steps=16))
    assert _active(tmp_path / "a", 8)[1] == 7.0 and _active(tmp_path / "b", 16)[1] == 13.0
    with pytest.raises(TypeError):
        SAMSwitchCallback(_switch_step=3)  # run state, not a setting


def test_two_switches_are_refused(tmp_path, tiny_corpus):
    cfg = _switch_run(tiny_corpus, tmp_path / "run", SAMSwitchCallback())
    cfg.trainer.callbacks["sam_switch2"] = SAMSwitchCallback(start_step=3)
    with pytest.raises(OLMoConfigurationError, match=r"several AdamW -> SAM switches \(\['sam_switch2?'\]"):
        build_trainer(cfg)
