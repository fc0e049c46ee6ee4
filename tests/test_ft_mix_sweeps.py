"""CFS/CS mixes as sweep methods: trained for the task's steps, recorded on the task's set."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from olmo_core.exceptions import OLMoConfigurationError

from olmo_sam.finetune.sweep import SweepSpec, mix_sweeps


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
