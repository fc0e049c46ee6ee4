"""One vocabulary on the command line (docs/cli.md): old spellings still work as hidden aliases,
every option has help text, every group an example, and no import-time noise."""

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


# (root command, sub-command path, arguments with the new names, the same with old names, old spellings)
CASES = [
    (main, ["probe", "noise"],
     ["CKPT", "--val", "FILE", "--out", "OUT", "--gammas", "0.01,0.02", "--seeds", "0,1"],
     ["CKPT", "--val", "FILE", "--out-dir", "OUT", "--gamma", "0.01", "--gamma", "0.02", "--seed", "0", "--seed", "1"],
     ["--out-dir", "--gamma", "--seed"]),
    (main, ["probe", "perturb"],
     ["CKPT", "--val", "FILE", "--out", "OUT"], ["CKPT", "--val", "FILE", "--out", "OUT"], ["probe perturb"]),
    (main, ["probe", "hessian"],
     ["CKPT", "--val", "FILE", "--out", "OUT", "--n-sequences", "3"],
     ["CKPT", "--val", "FILE", "--out-dir", "OUT", "--sequences", "3"], ["--out-dir", "--sequences"]),
    (main, ["sweep"],
     ["--base", "b", "--data", "d", "--out", "OUT", "--executor", "torchrun", "--methods", "ft,ewc",
      "--ewc-lambdas", "10", "--lora-ranks", "4", "--micro-batch-size", "2", "--wise-alphas", "0.5"],
     ["--base", "b", "--data", "d", "--out", "OUT", "--launcher", "torchrun", "--method", "ft", "--method", "ewc",
      "--ewc-lambda", "10", "--lora-rank", "4", "--microbatch-size", "2", "--wise-alpha", "0.5"],
     ["--launcher", "--method", "--ewc-lambda", "--lora-rank", "--microbatch-size", "--wise-alpha"]),
    (main, ["finetune", "run"],
     ["--base", "b", "--data", "d", "--lr", "1e-3", "--out", "OUT", "--micro-batch-size", "2"],
     ["--base", "b", "--data", "d", "--lr", "1e-3", "--out", "OUT", "--microbatch-size", "2"], ["--microbatch-size"]),
    (main, ["eval", "offline"], ["DIR", "--out", "OUT"], ["DIR", "--output-dir", "OUT"], ["--output-dir"]),
    (main, ["eval", "olmes"], ["DIR", "--out", "OUT"], ["DIR", "--output-dir", "OUT"], ["--output-dir"]),
    (main, ["cfs", "generate"], ["DIR", "--out", "OUT", "-n", "4"], ["DIR", "OUT", "-n", "4"], ["OUT as a positional"]),
    (main, ["cfs", "mix"], ["DIR", "FILE", "--out", "OUT", "--batch-size", "4"],
     ["DIR", "FILE", "OUT", "--global-batch-size", "4"], ["OUT_DIR as a positional", "--global-batch-size"]),
    (main, ["data", "demo"], ["--out", "OUT"], ["OUT"], ["OUT_DIR as a positional"]),
    (main, ["data", "tokenize"], ["--out", "OUT", "--demo"], ["OUT", "--demo"], ["OUT_DIR as a positional"]),
    (main, ["data", "train-tokenizer"], ["--out", "OUT", "--vocab-size", "300"], ["OUT", "--vocab-size", "300"],
     ["OUT_DIR as a positional"]),
    (main, ["export-hf"], ["DIR", "--out", "OUT"], ["DIR", "OUT"], ["OUT_DIR as a positional"]),
    (main, ["import-hf"], ["hub/id", "--out", "OUT"], ["hub/id", "OUT"], ["OUT_DIR as a positional"]),
    (pretrain_main, [], ["--size", "tiny", "--out", "OUT", "--micro-batch-size", "2"],
     ["--size", "tiny", "--save-folder", "OUT", "--microbatch", "2"], ["--save-folder", "--microbatch"]),
    (midtrain_main, [], ["--out", "OUT", "--micro-batch-size", "2"], ["--save-folder", "OUT", "--microbatch", "2"],
     ["--save-folder", "--microbatch"]),
]  # fmt: skip


@pytest.mark.parametrize("root,path,new,old,notes", CASES, ids=[" ".join(c[1]) or c[0].name for c in CASES])
def test_old_spellings_give_the_same_values(root, path, new, old, notes, paths, capsys):
    fill = lambda args: [paths.get(a, a) for a in args]  # noqa: E731
    want = _params(root, path if path != ["probe", "perturb"] else ["probe", "noise"], fill(new))
    assert capsys.readouterr().err == ""  # the new names print no note
    got = _params(root, path, fill(old))
    assert got == want
    err = capsys.readouterr().err
    for note in notes:
        assert f"{note}" in err and "deprecated" in err, err


def test_old_and_new_spelling_together_is_an_error(paths):
    res = CliRunner().invoke(main, ["sweep", "--base", "b", "--data", "d", "--out", "o", "--launcher", "local",
                                    "--executor", "torchrun", "--dry-run"])  # fmt: skip
    assert res.exit_code == 2
    assert "--launcher is the old spelling of --executor; give --executor only" in res.output
    res = CliRunner().invoke(main, ["data", "demo", paths["OUT"], "--out", paths["OUT"]])
    assert res.exit_code == 2 and "give --out OUT_DIR only" in res.output


def test_help_shows_only_the_new_names():
    for args, hidden in [
        (["probe", "--help"], "perturb"),
        (["probe", "noise", "--help"], "--gamma "),
        (["probe", "noise", "--help"], "--out-dir"),
        (["sweep", "--help"], "--launcher"),
        (["sweep", "--help"], "--microbatch-size"),
        (["cfs", "mix", "--help"], "OUT_DIR"),
        (["cfs", "mix", "--help"], "--global-batch-size"),
        (["eval", "offline", "--help"], "--output-dir"),
    ]:
        res = CliRunner().invoke(main, args)
        assert res.exit_code == 0, res.output
        assert hidden not in res.output, (args, hidden)
    assert "--save-folder" not in CliRunner().invoke(pretrain_main, ["--help"]).output


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
    """--micro-batch-size / --seq-len are also the study file's keys; the old keys still work."""
    from olmo_core.exceptions import OLMoConfigurationError

    from olmo_sam.finetune.engine import FTConfig
    from olmo_sam.recipes.common import rename_old_settings

    new = FTConfig.from_dict({"base": "b", "data": "d", "lr": 1e-3, "micro_batch_size": 2, "seq_len": 64})
    old = FTConfig.from_dict({"base": "b", "data": "d", "lr": 1e-3, "microbatch_size": 2, "sequence_length": 64})
    assert new == old and new.microbatch_size == 2 and new.sequence_length == 64
    # the study's typed check of finetune.common takes the flags' names too
    from olmo_sam.study.fields import typed_settings

    typed = typed_settings(FTConfig, FTConfig.field_names({"micro_batch_size": 2, "seq_len": 64}), "finetune.common")
    assert typed == {"microbatch_size": 2, "sequence_length": 64}
    assert rename_old_settings({"microbatch": 4, "lr": 1.0}, "arm a") == {"micro_batch_size": 4, "lr": 1.0}
    with pytest.raises(OLMoConfigurationError, match="arm a: 'microbatch' is the old spelling of 'micro_batch_size'"):
        rename_old_settings({"microbatch": 4, "micro_batch_size": 4}, "arm a")


def test_no_transformer_engine_line_on_help():
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.run([sys.executable, "-m", "olmo_sam.cli", "--help"], capture_output=True, text=True,
                          env=env, cwd=ROOT, timeout=120)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "Usage:" in proc.stdout
    assert "transformer_engine" not in proc.stdout + proc.stderr
