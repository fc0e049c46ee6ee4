"""One vocabulary on the command line (docs/cli.md): one spelling per option (no aliases), every
option has help text, every group an example, and no import-time noise."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from olmo_sam.cli import main
from olmo_sam.recipes.midtrain import main as midtrain_main
from olmo_sam.recipes.pretrain import main as pretrain_main

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture()
def paths(tmp_path):
    (tmp_path / "dir").mkdir()
    (tmp_path / "file").write_text("x")
    return {"DIR": str(tmp_path / "dir"), "FILE": str(tmp_path / "file"), "OUT": str(tmp_path / "out")}


def _command(root: click.Command, path):
    cmd = root
    for name in path:
        cmd = cmd.get_command(click.Context(cmd), name)
    return cmd


def _params(root, path, args):
    cmd = _command(root, path)
    with cmd.make_context(" ".join(path) or "cmd", list(args)) as ctx:
        return dict(ctx.params)


# (root command, sub-command path, valid arguments, a spelling that is not an option)
REMOVED = [
    (main, ["probe", "noise"], ["CKPT", "--val", "FILE", "--out", "OUT"], ["--out-dir", "OUT"]),
    (main, ["probe", "noise"], ["CKPT", "--val", "FILE", "--out", "OUT"], ["--gamma", "0.01"]),
    (main, ["probe", "hessian"], ["CKPT", "--val", "FILE", "--out", "OUT"], ["--sequences", "3"]),
    (main, ["sweep"], ["--base", "b", "--data", "d", "--out", "OUT"], ["--launcher", "torchrun"]),
    (main, ["sweep"], ["--base", "b", "--data", "d", "--out", "OUT"], ["--microbatch-size", "2"]),
    (main, ["eval", "offline"], ["DIR", "--out", "OUT"], ["--output-dir", "OUT"]),
    (main, ["cfs", "mix"], ["DIR", "FILE", "--out", "OUT"], ["--global-batch-size", "4"]),
    (main, ["data", "demo"], ["--out", "OUT"], ["OUT"]),
    (main, ["export-hf"], ["DIR", "--out", "OUT"], ["OUT"]),
    (pretrain_main, [], ["--size", "tiny", "--out", "OUT"], ["--save-folder", "OUT"]),
    (midtrain_main, [], ["--out", "OUT"], ["--microbatch", "2"]),
]


@pytest.mark.parametrize("root,path,args,extra", REMOVED, ids=[" ".join(c[1] + c[3][:1]) for c in REMOVED])
def test_one_spelling_per_option(root, path, args, extra, paths):
    """The documented spelling parses; any other is a usage error (no hidden aliases)."""
    fill = lambda a: [paths.get(x, x) for x in a]  # noqa: E731
    _params(root, path, fill(args))
    with pytest.raises(click.UsageError):
        _params(root, path, fill(args + extra))


def test_renamed_commands_are_gone():
    assert "perturb" not in _command(main, ["probe"]).list_commands(click.Context(main))
    res = CliRunner().invoke(main, ["probe", "perturb", "--help"])
    assert res.exit_code == 2 and "No such command 'perturb'" in res.output


def _walk(cmd: click.Command, path):
    yield path, cmd
    if isinstance(cmd, click.Group):
        ctx = click.Context(cmd)
        for name in cmd.list_commands(ctx):
            sub = cmd.get_command(ctx, name)
            if not sub.hidden:
                yield from _walk(sub, [*path, name])


#: every command is walked (the benchmarks included)
NOT_WALKED: set = set()


def test_every_option_has_help_and_every_group_an_example():
    missing, no_example = [], []
    for root, name in ((main, "olmo-sam"), (pretrain_main, "pretrain"), (midtrain_main, "midtrain")):
        for path, cmd in _walk(root, [name]):
            if tuple(path[:2]) in NOT_WALKED:
                continue
            for p in cmd.params:
                if isinstance(p, click.Option) and not p.hidden and not (p.help or "").strip():
                    missing.append(f"{' '.join(path)} {p.opts[0]}")
            if isinstance(cmd, click.Group) and "Example" not in (cmd.help or ""):
                no_example.append(" ".join(path))
    assert not missing, f"options without help text: {missing}"
    assert not no_example, f"command groups without an example: {no_example}"


def test_yaml_keys_follow_the_flags():
    """--micro-batch-size / --seq-len are FTConfig's field names and the study file's keys (one
    spelling: the old field names are unknown options)."""
    from olmo_core.exceptions import OLMoConfigurationError

    from olmo_sam.finetune.engine import FTConfig

    cfg = FTConfig.from_dict({"base": "b", "data": "d", "lr": 1e-3, "micro_batch_size": 2, "seq_len": 64})
    assert cfg.micro_batch_size == 2 and cfg.seq_len == 64
    with pytest.raises(OLMoConfigurationError, match="microbatch_size"):
        FTConfig.from_dict({"base": "b", "data": "d", "lr": 1e-3, "microbatch_size": 2})
    # the study's typed check of finetune.common takes the same names
    from olmo_sam.config import check_settings

    typed = check_settings(FTConfig, {"micro_batch_size": 2, "seq_len": 64}, "finetune.common")
    assert typed == {"micro_batch_size": 2, "seq_len": 64}


def test_run_ids_hash_the_settings_under_their_own_names():
    """A fine-tuning run id is the method, the LR and a hash of the settings that change a run's
    numbers, under FTConfig's field names (the flags' names): pinned here, since a change re-runs
    every finished sweep; labels, checkpoint interval and WiSE-FT weights leave it unchanged."""
    from dataclasses import replace

    from olmo_sam.finetune.engine import FTConfig

    ewc = FTConfig(base="/b/step3", data="/d", lr=1e-3, method="ewc", micro_batch_size=2, seq_len=64)
    assert ewc.run_id == "ewc-lr0.001-ec745e48d8b3"
    ft = FTConfig(base="/b/step3", data="/d", lr=3e-4, seq_len=128)
    assert ft.run_id == "ft-lr0.0003-e9c9920aaf55"
    same = replace(ft, base_label="other", checkpoint_interval=5, wise_alphas=(0.5,))
    assert same.run_id == ft.run_id and replace(ft, seq_len=64).run_id != ft.run_id


def test_no_transformer_engine_line_on_help():
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.run(
        [sys.executable, "-m", "olmo_sam.cli", "--help"], capture_output=True, text=True, env=env, cwd=ROOT, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    assert "Usage:" in proc.stdout
    assert "transformer_engine" not in proc.stdout + proc.stderr
