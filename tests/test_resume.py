"""Kill (SIGKILL) and resume: the resumed run reproduces the uninterrupted one exactly."""

from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import SEQ, adamw, logged_warnings, losses, tiny_experiment

from olmo_sam.files import to_yaml
from olmo_sam.optim import SAMConfig, WSDAlpha
from olmo_sam.train import SAMSwitchCallback, read_metrics, run_experiment

WORKER = Path(__file__).parent / "workers" / "train_worker.py"
STEPS = 12  # WSD decays over the last 3 steps: AdamW for steps 1-9, SAM for 10-12


def _config(corpus, folder, variant="sam"):
    # LookSAM with interval 2 after the switch: full SAM at steps 10 and 12, g_v (saved in the
    # step-10 checkpoint) reused at step 11; MSAM ascends along AdamW's first moment from step 10
    interval = 2 if variant == "looksam" else 1
    return tiny_experiment(
        corpus,
        folder,
        SAMConfig(base=adamw(), variant=variant, interval=interval),
        max_steps=STEPS,
        max_grad_norm=1.0,
        scheduler=WSDAlpha(warmup=2, decay_fraction=0.25),
        callbacks={"sam_switch": SAMSwitchCallback()},
        checkpoint_interval=1,
    )


def _run_worker(cfg_path, *extra):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    return subprocess.run([sys.executable, str(WORKER), str(cfg_path), *extra], env=env, capture_output=True, text=True)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, tiny_corpus):
    cache = {}

    def get(variant):
        if variant not in cache:
            folder = tmp_path_factory.mktemp("resume") / f"full_{variant}"
            trainer = run_experiment(_config(tiny_corpus, folder, variant))
            tm = trainer.train_module
            weights = {n: p.detach().clone() for n, p in tm.model.named_parameters()}
            cache[variant] = losses(folder), read_metrics(folder), weights
        return cache[variant]

    return get


@pytest.mark.slow
@pytest.mark.parametrize(
    "variant, kill_before",
    [("sam", 10), ("sam", 12), ("msam", 11), ("looksam", 11)],
    ids=["killed-at-the-switch", "killed-inside-sam-phase", "msam", "looksam-reuses-saved-g_v"],
)
def test_killed_run_resumes_to_identical_losses(tmp_path, tiny_corpus, uninterrupted, variant, kill_before):
    full_losses, full_metrics, full_weights = uninterrupted(variant)
    folder = tmp_path / "run"
    cfg_path = tmp_path / "exp.yaml"
    cfg_path.write_text(to_yaml(_config(tiny_corpus, folder, variant)))

    killed = _run_worker(cfg_path, "--kill-before-step", str(kill_before))
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    assert max(losses(folder)) == kill_before - 1  # it really died mid-run

    resumed = _run_worker(cfg_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"Will resume training from step {kill_before - 1}" in resumed.stderr + resumed.stdout

    got = losses(folder)
    assert sorted(got) == list(range(1, STEPS + 1))
    for s in range(1, STEPS + 1):
        assert got[s] == pytest.approx(full_losses[s], abs=1e-6), s
    m = read_metrics(folder)
    assert [m[s]["sam/active"] for s in range(1, STEPS + 1)] == [
        full_metrics[s]["sam/active"] for s in range(1, STEPS + 1)
    ]
    assert m[STEPS]["sam/switch step"] == 10.0
    if variant == "looksam":
        assert m[11]["sam/looksam reuse"] == 1.0 and m[11]["sam/ascent"] == 0.0

    from olmo_sam.checkpoints import load_transformer

    model, info = load_transformer(folder)
    assert info.step == STEPS
    for n, p in model.named_parameters():
        assert torch.allclose(p, full_weights[n], atol=1e-6, rtol=0), n


def test_a_run_stopped_by_a_signal_is_not_a_finished_one(tmp_path, tiny_corpus, uninterrupted):
    """OLMo-core answers SIGINT/SIGTERM by saving a checkpoint and returning from fit() as if done;
    a fine-tuning run then evaluated and recorded the cut-short model, and a sweep went on. Now
    run_experiment raises RunCanceled (a KeyboardInterrupt: per-run `except Exception` handlers
    let it through), the command exits 130, and the same run resumes to the uninterrupted result."""
    from dataclasses import dataclass

    import click
    from click.testing import CliRunner
    from olmo_core.train.callbacks import Callback

    from olmo_sam.preflight import cli_errors
    from olmo_sam.train import RunCanceled

    @dataclass
    class SigintAt(Callback):
        at: int = 2

        def post_step(self):
            if self.step == self.at:
                os.kill(os.getpid(), signal.SIGINT)

    cfg = _config(tiny_corpus, tmp_path / "run")
    cfg.trainer.callbacks["sigint"] = SigintAt(at=3)
    cfg.trainer.cancel_check_interval = 1
    with pytest.raises(RunCanceled, match=rf"training stopped at step 3 of {STEPS} \(SIGINT received\)"):
        run_experiment(cfg)
    assert max(read_metrics(tmp_path / "run")) == 3
    run_experiment(_config(tiny_corpus, tmp_path / "run"))
    assert losses(tmp_path / "run") == uninterrupted("sam")[0]

    @click.command()
    @cli_errors
    def cmd():
        raise RunCanceled("training stopped at step 3 of 12 (SIGINT received)")

    res = CliRunner().invoke(cmd, [])
    assert res.exit_code == 130 and "Interrupted: training stopped at step 3" in res.output, res.output


def test_a_save_folder_of_another_run_is_not_resumed_under_new_settings(tmp_path, tiny_corpus):
    """OLMo-core loads the latest checkpoint of the save folder whatever the new config says: an
    AdamW run re-launched with SAM and another LR went on from it, recorded as the new settings."""
    from olmo_core.exceptions import OLMoConfigurationError

    from olmo_sam.train import build_trainer

    run_experiment(tiny_experiment(tiny_corpus, tmp_path / "run", adamw(lr=2e-3), max_steps=3))
    other = tiny_experiment(tiny_corpus, tmp_path / "run", SAMConfig(base=adamw(lr=1e-3)), max_steps=6)
    with pytest.raises(OLMoConfigurationError, match=r"holds a run with other settings \(train_module\.optim\."):
        build_trainer(other)
    longer = tiny_experiment(tiny_corpus, tmp_path / "run", adamw(lr=2e-3), max_steps=6)  # the length may change
    assert build_trainer(longer).global_step == 3


def test_in_loop_validation_too_small_for_a_batch_is_left_out_with_a_warning(tmp_path, tiny_corpus):
    """OLMo-core's LM evaluator reads one sequence per validation document in whole batches: a
    split of fewer documents than one eval batch logged ``eval/lm/pt-val/CE loss = nan`` at every
    evaluation. It is now left out, with a warning that names the sizes; a split of one batch or
    more is still evaluated."""
    from conftest import markov_tokens

    small = tmp_path / "val1.npy"
    markov_tokens(SEQ, seed=3, doc_len=SEQ).tofile(small)  # one document < a batch of 2 sequences
    metrics, output = {}, {}
    for name, val in (("small", small), ("enough", tiny_corpus.val)):
        with logged_warnings("olmo_sam.train.experiment") as records:
            run_experiment(tiny_experiment(tiny_corpus, tmp_path / name, adamw(), max_steps=2, val_paths=[str(val)]))
        metrics[name], output[name] = read_metrics(tmp_path / name)[2], "\n".join(records)
    assert "eval/lm/pt-val/CE loss" not in metrics["small"]
    assert "1 sequence(s) (one per document, truncated to 32 tokens), fewer than one eval batch of 2" in output["small"]
    assert math.isfinite(metrics["enough"]["eval/lm/pt-val/CE loss"])
    assert "in-loop validation is off" not in output["enough"]


def test_a_finished_run_run_again_does_not_duplicate_its_metrics(tmp_path, tiny_corpus):
    """Running a finished run again re-evaluates its last step (OLMo-core's post-train hooks) and
    appended that step's metrics a second time to metrics.jsonl; now they replace the earlier ones.
    Its final checkpoint, already on disk, is left as it is."""
    import json

    cfg = lambda: tiny_experiment(tiny_corpus, tmp_path / "run", adamw(), max_steps=2, val_paths=[str(tiny_corpus.val)])  # noqa: E731
    run_experiment(cfg())
    first = read_metrics(tmp_path / "run")
    final = tmp_path / "run" / "step2"
    stamps = {p: p.stat().st_mtime_ns for p in final.rglob("*") if p.is_file()}
    run_experiment(cfg())
    # the finished checkpoint is not saved again (OLMo-core rewrote it in place at every launch)
    assert {p: p.stat().st_mtime_ns for p in final.rglob("*") if p.is_file()} == stamps
    lines = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    keys = [(r["step"], k) for r in lines for k in r if k != "step"]
    assert len(keys) == len(set(keys)), sorted(k for k in keys if keys.count(k) > 1)
    again = read_metrics(tmp_path / "run")
    assert again[2]["eval/lm/pt-val/CE loss"] == first[2]["eval/lm/pt-val/CE loss"]
    assert again[1] == first[1] and again[2]["train/CE loss"] == first[2]["train/CE loss"]


def test_a_stop_step_behind_the_latest_checkpoint_is_refused(tmp_path, tiny_corpus):
    """--stop-at-step 1 on a folder whose latest checkpoint is step 2: OLMo-core loaded step 2, found
    the stop passed and logged 'Training complete', exit 0, training nothing."""
    from olmo_core.exceptions import OLMoConfigurationError
    from olmo_core.train import Duration

    def cfg(stop):
        c = tiny_experiment(tiny_corpus, tmp_path / "run", adamw(), max_steps=4)
        c.trainer.hard_stop = Duration.steps(stop)
        return c

    assert run_experiment(cfg(2)).global_step == 2
    with pytest.raises(OLMoConfigurationError, match=r"--stop-at-step 1 \(trainer.hard_stop\) is behind the run's latest checkpoint, step 2 in .*give a --stop-at-step after 2 \(or none\)"):  # fmt: skip
        run_experiment(cfg(1))
    assert run_experiment(cfg(3)).global_step == 3  # a later stop goes on
    behind = cfg(4)
    behind.trainer.hard_stop = Duration.tokens(2 * behind.data_loader.global_batch_size)  # step 2, in tokens
    with pytest.raises(OLMoConfigurationError, match=r"trainer.hard_stop = [\d,]+ tokens is behind the run's latest checkpoint, step 3 \("):  # fmt: skip
        run_experiment(behind)


def test_a_run_directory_moved_elsewhere_resumes_to_the_same_losses(tmp_path, tiny_corpus, uninterrupted):
    """A run stopped half-way, moved (another disk, another user's home) and launched again from
    its new place resumes to the uninterrupted run's losses: its data caches
    (``dataset.work_dir``) lived under the old path, which the same-settings check compared and
    refused."""
    import shutil

    from olmo_core.train import Duration

    cfg = _config(tiny_corpus, tmp_path / "here")
    cfg.trainer.hard_stop = Duration.steps(STEPS // 2)
    run_experiment(cfg)
    shutil.move(tmp_path / "here", tmp_path / "there")
    assert run_experiment(_config(tiny_corpus, tmp_path / "there")).global_step == STEPS
    assert losses(tmp_path / "there") == pytest.approx(uninterrupted("sam")[0], rel=1e-5)
