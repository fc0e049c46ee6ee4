"""CFS/CS mixes as sweep methods: trained for the task's steps, recorded on the task's set."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
from click.testing import CliRunner
from olmo_core.exceptions import OLMoConfigurationError

from olmo_sam.finetune.data import read_meta, write_meta
from olmo_sam.finetune.sweep import SweepSpec, expand, mix_sweeps


def test_mix_sweeps_train_the_mix_for_the_task_steps():
    spec = SweepSpec(
        bases=["b1", "b2"],
        datasets=["task"],
        lrs=[1e-4, 1e-3],
        methods=["ft", "ewc"],
        base_labels=["x", "y"],
        common={"max_steps": 5},
    )
    (cfs,) = mix_sweeps(spec, {"cfs": "mixdir"})
    assert cfs.datasets == ["mixdir"] and cfs.methods == ["ft"]
    assert cfs.bases == ["b1", "b2"] and cfs.lrs == [1e-4, 1e-3] and cfs.base_labels == ["x", "y"]
    assert cfs.common == {"max_steps": 5, "epoch_data": "task", "record_method": "cfs"}


@pytest.mark.parametrize(
    "spec, mixes, match",
    [
        (SweepSpec(bases=["b"], datasets=["t"], lrs=[1e-3]), {"lora": "m"}, "one of the methods"),
        (SweepSpec(bases=["b"], datasets=["t1", "t2"], lrs=[1e-3]), {"cfs": "m"}, "exactly one --data"),
    ],
)
def test_mix_sweeps_bad_input(spec, mixes, match):
    with pytest.raises(OLMoConfigurationError, match=match):
        mix_sweeps(spec, mixes)


def test_sweep_cli_mix_option_is_checked():
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "olmo_sam.cli",
            "sweep",
            "--base",
            "b",
            "--data",
            "t",
            "--lrs",
            "1e-3",
            "--out",
            "o",
            "--mix",
            "cfs",
            "--dry-run",
        ],
        capture_output=True,
        text=True,
        env=env,
    )
    assert proc.returncode == 2 and "METHOD=DIR" in proc.stderr


def _cfs_samples(path, n: int):
    """Context-free samples in the generator's layout (tests/conftest.py's vocabulary and EOS)."""
    from conftest import EOS, VOCAB

    rng = np.random.default_rng(0)
    with open(path, "w") as f:
        for i in range(n):
            toks = rng.integers(2, VOCAB, size=int(rng.integers(4, 40))).tolist() + [EOS]
            rec = dict(index=i, seed=i, prompt_token_ids=[EOS], token_ids=toks, text="", finish_reason="stop")
            rec.update(kind="context_free", eos_token_id=EOS, model_sha256="x" * 64)
            f.write(json.dumps(rec) + "\n")
    return path


@pytest.fixture(scope="module")
def two_tasks_and_a_mix(tmp_path_factory):
    """Two prepared tasks and a real CFS mix built (by the project's builder) from the first."""
    from ft_helpers import write_task

    from olmo_sam.cfs.mix import build_cfs_mix

    root = tmp_path_factory.mktemp("mix_task_check")
    code = write_task(root / "code", n_train=120, n_val=16, name="demo-code")
    math_ = write_task(root / "math", n_train=120, n_val=16, name="demo-math")
    samples = _cfs_samples(root / "cfs.jsonl", 60)
    mix = root / "mix"
    build_cfs_mix(code, samples, 0.2, mix, epochs=1, seq_len=64, global_batch_size=8)
    return code, math_, mix


def _mix_spec(base, task, tiny_corpus):
    common = dict(batch_size=8, max_steps=2, pt_val=[str(tiny_corpus.val)], pt_val_max_sequences=8)
    return SweepSpec(bases=[str(base)], datasets=[str(task)], lrs=[1e-3], common=common)


def test_a_mix_of_another_task_is_refused(tiny_checkpoint, tiny_corpus, two_tasks_and_a_mix):
    """User probe 4, finding 1: a sweep for task math with --mix cfs=M, M built from task code,
    trained and scored on the code mix and recorded a 'demo-math / cfs' result. The config that
    owns the mix and its task (FTConfig, which the CLI sweep and the study both resolve) refuses
    it now, naming both tasks and the fix; the mix of the --data task still resolves."""
    code, math_, mix = two_tasks_and_a_mix
    (wrong,) = mix_sweeps(_mix_spec(tiny_checkpoint, math_, tiny_corpus), {"cfs": str(mix)})
    with pytest.raises(OLMoConfigurationError) as e:
        expand(wrong)
    msg = str(e.value)
    assert "\n" not in msg and "'demo-code'" in msg and "'demo-math'" in msg, msg
    assert f"build the mix from {math_}" in msg and f"give --data {code}" in msg, msg
    (right,) = mix_sweeps(_mix_spec(tiny_checkpoint, code, tiny_corpus), {"cfs": str(mix)})
    (cfg,) = expand(right)
    assert cfg.record_method == "cfs" and read_meta(cfg.epoch_data).name == "demo-code"
    # a cfs mix given as the cs method would be recorded under the wrong method
    (as_cs,) = mix_sweeps(_mix_spec(tiny_checkpoint, code, tiny_corpus), {"cs": str(mix)})
    with pytest.raises(OLMoConfigurationError, match=r"is a 'cfs' mix, but its runs would be recorded as 'cs'"):
        expand(as_cs)


def test_a_mix_built_before_the_task_digest_was_recorded_is_still_checked(
    tiny_checkpoint, tiny_corpus, two_tasks_and_a_mix, tmp_path
):
    """Mixes built before ``task_digest``/``task_name`` were recorded: the task's name (the mix's
    name before '+') and its recorded source identify it."""
    code, math_, mix = two_tasks_and_a_mix
    old = tmp_path / "old_mix"
    shutil.copytree(mix, old)
    meta = read_meta(old)
    for k in ("task_digest", "task_name"):
        meta.source.pop(k, None)
    write_meta(old, meta)
    (wrong,) = mix_sweeps(_mix_spec(tiny_checkpoint, math_, tiny_corpus), {"cfs": str(old)})
    with pytest.raises(OLMoConfigurationError, match=r"built from task 'demo-code' .* is 'demo-math'"):
        expand(wrong)
    (right,) = mix_sweeps(_mix_spec(tiny_checkpoint, code, tiny_corpus), {"cfs": str(old)})
    assert len(expand(right)) == 1


def test_sweep_cli_refuses_a_mix_of_another_task_and_dry_run_shows_what_is_recorded(
    tiny_checkpoint, tiny_corpus, two_tasks_and_a_mix, tmp_path
):
    from olmo_sam.cli import main

    code, math_, mix = two_tasks_and_a_mix
    args = ["sweep", "--base", str(tiny_checkpoint), "--base-label", "adamw", "--lrs", "1e-3", "--batch-size", "8"]
    args += ["--max-steps", "2", "--pt-val", str(tiny_corpus.val), "--out", str(tmp_path / "sw"), "--dry-run"]
    res = CliRunner().invoke(main, args + ["--data", str(math_), "--mix", f"cfs={mix}"])
    assert res.exit_code == 1 and "'demo-code'" in res.output and "'demo-math'" in res.output, res.output
    res = CliRunner().invoke(main, args + ["--data", str(code), "--mix", f"cfs={mix}"])
    assert res.exit_code == 0, res.output
    rows = [line.split() for line in res.output.splitlines() if line.startswith("pending")]
    # the ft run on the task, then the mix run: listed as the records will carry them
    assert [(r[3], r[4]) for r in rows] == [("demo-code", "ft"), ("demo-code", "cfs")], res.output
