"""The recipes after ``pip install``: the wheel built from this repository, installed into a fresh
virtual environment, runs ``olmo-sam pretrain`` (dry run and a tiny real run under
``torchrun -m olmo_sam.recipes.pretrain``) from the installed copy; ``--help`` through
``python -m``; ``--dp fsdp --dry-run --world-size N`` without torchrun; the old flag names.

The fresh environment reuses this one's heavy dependencies (torch, OLMo-core, ...) through a
``.pth`` line naming their site-packages directory: a plain path entry, so the editable install
of olmo-sam in that directory (a ``.pth`` import hook there) is not activated and the import must
come from the wheel.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest
from click.testing import CliRunner
from conftest import REPO

from olmo_sam.cli import main as cli


def _clean_env(**extra: str):
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")}
    env.update(OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false", **extra)
    return env


@pytest.fixture(scope="module")
def fresh_venv(tmp_path_factory):
    """A new venv holding only the olmo-sam wheel (dependencies: this environment's)."""
    tmp = tmp_path_factory.mktemp("wheel")
    src = tmp / "src"  # build from a copy: building in place would leave build/ in the repository
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, src / name)
    shutil.copytree(REPO / "olmo_sam", src / "olmo_sam", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    dist = tmp / "dist"
    # this environment's setuptools when it has one (fast, offline); else pip's isolated build
    isolation = ["--no-build-isolation"] if importlib.util.find_spec("setuptools") else []
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", *isolation, "-q", str(src), "-w", str(dist)],
        capture_output=True,
        text=True,
        env=_clean_env(),
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    (wheel,) = dist.glob("olmo_sam-*.whl")
    venv = tmp / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    py = venv / "bin" / "python"
    purelib = subprocess.run(
        [str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    Path(purelib, "_olmo_sam_test_deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(py), "install", "--no-deps", "-q", str(wheel)],
        capture_output=True,
        text=True,
        env=_clean_env(),
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    where = subprocess.run(
        [str(py), "-c", "import olmo_sam; print(olmo_sam.__file__)"],
        capture_output=True,
        text=True,
        env=_clean_env(),
        cwd=tmp,
    )
    assert where.returncode == 0, where.stderr[-2000:]
    assert Path(where.stdout.strip()).is_relative_to(venv), f"imported {where.stdout.strip()}, not the wheel's copy"
    return venv


@pytest.mark.slow
def test_installed_wheel_runs_the_pretrain_recipe(fresh_venv, demo_data_small, tmp_path):
    bin_ = fresh_venv / "bin"
    env = _clean_env()
    # dry run of a paper size (Table 6 LR at 200 tokens/param), from the console script
    proc = subprocess.run(
        [str(bin_ / "olmo-sam"), "pretrain", "--size", "20M", "--tokens-per-param", "200", "--dry-run", "--json"],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout)
    assert out["lr_source"] == "Table 6: OLMo-20M at 200 tokens/param"
    assert out["summary"]["tokens"] == 200 * 20_000_000
    # the shipped study files run by name from the wheel (no repository checkout here)
    proc = subprocess.run(
        [str(bin_ / "olmo-sam"), "study", "run", "paper-60m", "--dry-run", "--allow-missing-data"],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
    )
    assert proc.returncode == 0 and "finetune" in proc.stdout, proc.stdout[-2000:] + proc.stderr[-2000:]
    # a tiny real run: torchrun -m olmo_sam.recipes.pretrain, two processes, DDP
    run = tmp_path / "run"
    proc = subprocess.run(
        [
            str(bin_ / "python"),
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc-per-node",
            "2",
            "-m",
            "olmo_sam.recipes.pretrain",
            "--size",
            "tiny",
            "--steps",
            "2",
            "--lr",
            "1e-3",
            "--batch-size",
            "2",
            "--seq-len",
            "32",
            "--data",
            str(demo_data_small.root / "tokens"),
            "--dp",
            "ddp",
            "--out",
            str(run),
        ],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    assert (run / "step2" / "model_and_optim" / ".metadata").exists()
    config = json.loads((run / "step2" / "config.json").read_text())
    assert config["train_module"]["dp_config"]["name"] == "ddp"
    # --help through python -m prints the recipe's flags
    proc = subprocess.run(
        [str(bin_ / "python"), "-m", "olmo_sam.recipes.midtrain", "--help"],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
    )
    assert proc.returncode == 0 and "--init-from-hf" in proc.stdout and "--out" in proc.stdout, proc.stderr[-2000:]


def _dry(args):
    r = CliRunner().invoke(cli, args)
    return r


def test_fsdp_dry_run_for_a_stated_world_size():
    r = _dry(
        [
            "pretrain",
            "--size",
            "60M",
            "--tokens-per-param",
            "200",
            "--dp",
            "fsdp",
            "--world-size",
            "8",
            "--dry-run",
            "--json",
        ]
    )
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    cfg = out["config"]
    assert (out["summary"]["world_size"], out["summary"]["data_parallel"]) == (8, "fsdp")
    assert cfg["train_module"]["dp_config"]["name"] == "fsdp"
    assert cfg["train_module"]["rank_microbatch_size"] == 16 * 1024  # min(256 / 8, 16) sequences of 1024
    r = _dry(["midtrain", "--dry-run", "--json", "--dp", "fsdp", "--world-size", "64"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["config"]["train_module"]["rank_microbatch_size"] == 4 * 2048
    # a world size that does not divide the batch, fsdp without processes, --world-size for training
    r = _dry(["pretrain", "--size", "20M", "--tokens", "4B", "--dry-run", "--world-size", "3"])
    assert r.exit_code != 0 and "not divisible by the 3 processes" in r.output
    r = _dry(["pretrain", "--size", "20M", "--tokens", "4B", "--dry-run", "--dp", "fsdp"])
    assert r.exit_code != 0 and "--dry-run --world-size N" in r.output
    r = _dry(["pretrain", "--size", "20M", "--tokens", "4B", "--world-size", "8", "--out", "x", "--data", "x.npy"])
    assert r.exit_code != 0 and "--world-size 8 without --dry-run" in r.output


def test_one_spelling_per_flag():
    base = ["pretrain", "--size", "20M", "--tokens", "4B", "--dry-run", "--json"]
    cfg = json.loads(_dry([*base, "--out", "r/a", "--micro-batch-size", "8"]).stdout)["config"]
    assert cfg["trainer"]["save_folder"] == "r/a" and cfg["train_module"]["rank_microbatch_size"] == 8 * 1024
    for removed in ("--save-folder", "--microbatch"):
        r = _dry([*base, removed, "8"])
        assert r.exit_code == 2 and f"No such option '{removed}'" in r.output


def test_keeping_checkpoints_is_one_flag_for_one_run_and_a_sweep():
    """`finetune run` spelled it --keep-checkpoint, `sweep` --keep-checkpoints (the README used the
    plural for both)."""
    from olmo_sam.finetune.cli import run_command, sweep

    for cmd in (run_command, sweep):
        opts = {o for p in cmd.params for o in p.opts}
        assert "--keep-checkpoints" in opts and "--keep-checkpoint" not in opts, cmd.name
