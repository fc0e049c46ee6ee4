"""Every command, walked from the click group (a new command is covered without editing this file),
is given each bad input it can take -- a missing file, a corrupt checkpoint (config.json), a
corrupt token-dataset meta.json, a truncated safetensors file, a YAML file with a duplicated key,
an output path it cannot write and a bad --device -- and must refuse it with a non-zero exit and one ``Error:`` line that names what
was given, never a traceback (issue 19).

Tests run as root here, which ignores file permissions, so "cannot write" is an output path whose
parent is a regular file, and an existing file where a directory goes (or the reverse): the same
check (:func:`olmo_sam.preflight.check_out`) refuses a read-only directory through ``os.access``
and a read-only file system through ``statvfs``, which root cannot fake in a test.
"""

from __future__ import annotations

import shutil
import signal
import time
from dataclasses import dataclass
from typing import Dict, List

import click
import pytest
from click.testing import CliRunner

from olmo_sam.cli import main

#: role of each input parameter, by its name (the same name means the same kind of input)
ROLES = {
    "checkpoints": "checkpoint",
    "checkpoint": "checkpoint",
    "base": "checkpoint",
    "bases": "checkpoint",
    "ft": "checkpoint",
    "model_dir": "hf_model",
    "source": "hf_model",
    "val_paths": "token_file",
    "data_dir": "token_dir",
    "datasets": "token_dir",
    "data": "token_dir",
    "task_dir": "input",
    "samples": "input",
    "results": "input",
    "study_file": "study_file",
    "tokenizer": "input",
    "inputs": "input",
}
#: parameters named like an input that are not one (a name filter, not a path)
NOT_INPUTS = {("forgetting", "datasets"), ("forgetting", "bases")}
#: what a command needs besides its click-required parameters to reach the input under test
BASE_ARGS = {
    "pretrain": ["--size", "20M", "--tokens", "4B"],
    "probe hessian": ["checkpoint"],
    "midtrain": ["--steps", "2"],
}
#: a valid value for a required option whose range the default filler ("4") is outside of (the
#: command would refuse that value before it reads the input under test)
VALID = {"alpha": "0.5"}
#: commands that forward their arguments to another parser (nothing to walk)
PASS_THROUGH = {"bench cfs-generation", "bench hessian-probe"}
MISSING = "no-such-input"


@dataclass
class Case:
    command: str
    kind: str
    args: List[str]
    #: the message must contain this (what the user gave)
    names: str


def _leaves(cmd: click.Command, path: List[str]):
    if isinstance(cmd, click.Group):
        ctx = click.Context(cmd)
        for name in cmd.list_commands(ctx):
            yield from _leaves(cmd.get_command(ctx, name), [*path, name])
    else:
        yield " ".join(path), cmd


def _is_out(p: click.Parameter) -> bool:
    return isinstance(p, click.Option) and p.opts[0] == "--out"


def _out_kind(p: click.Parameter) -> str:
    return "file" if isinstance(p.type, click.Path) and not p.type.dir_okay else "dir"


@pytest.fixture(scope="module")
def inputs(tmp_path_factory, tiny_checkpoint, tiny_corpus, tiny_hf_model):
    root = tmp_path_factory.mktemp("walk")
    a_file = root / "a-file"
    a_file.write_text("not a directory\n")
    (root / "a-dir").mkdir()
    # a checkpoint whose config.json is cut off (the copy has no config.json above it)
    ckpt = root / "bad-ckpt" / tiny_checkpoint.name
    shutil.copytree(tiny_checkpoint, ckpt)
    if not (ckpt / "config.json").exists():
        shutil.copy(tiny_checkpoint.parent / "config.json", ckpt / "config.json")
    (ckpt / "config.json").write_text((ckpt / "config.json").read_text()[:40])
    # an HF model whose config.json, another whose weights, are cut off
    hf_cfg = root / "hf-bad-config"
    shutil.copytree(tiny_hf_model, hf_cfg)
    (hf_cfg / "config.json").write_text('{"model_type": "olmo2", ')
    hf_w = root / "hf-bad-weights"
    shutil.copytree(tiny_hf_model, hf_w)
    w = hf_w / "model.safetensors"
    w.write_bytes(w.read_bytes()[: w.stat().st_size // 3])
    # a token dataset whose meta.json is corrupt
    tok_dir = root / "bad-meta"
    tok_dir.mkdir()
    shutil.copy(tiny_corpus.val, tok_dir / "val-000.npy")
    (tok_dir / "meta.json").write_text('{"format": ')
    bad_yaml = root / "duplicate-key.yaml"
    bad_yaml.write_text("name: s\nname: t\n")
    study = root / "study.yaml"
    study.write_text(
        "name: s\ndata: {demo: {vocab_size: 512}}\n"
        "arms: [{name: a, optimizer: adamw, size: tiny, steps: 4, lr: 0.001}]\nstages: [data]\n"
    )
    return {
        "root": root,
        "a_file": a_file,
        "a_dir": root / "a-dir",
        "bad_ckpt": ckpt,
        "hf_bad_config": hf_cfg,
        "hf_bad_weights": hf_w,
        "bad_meta_dir": tok_dir,
        "bad_yaml": bad_yaml,
        "fill": {
            "checkpoint": str(tiny_checkpoint),
            "hf_model": str(tiny_hf_model),
            "token_file": str(tiny_corpus.val),
            "token_dir": str(tiny_corpus.val.parent),
            "study_file": str(study),
        },
    }


def _role(command: str, p: click.Parameter):
    if (command.split()[0], p.name) in NOT_INPUTS:
        return None
    return ROLES.get(p.name)


def _filler(p: click.Parameter, inputs) -> List[str]:
    """A value for a required parameter that is not the one under test."""
    role = ROLES.get(p.name)
    if _is_out(p):
        value = str(inputs["root"] / "out" / p.name)
    elif role in inputs["fill"]:
        value = inputs["fill"][role]
    elif role == "input" or isinstance(p.type, click.Path):
        file_ok = not isinstance(p.type, click.Path) or p.type.file_okay
        value = str(inputs["a_file"] if file_ok else inputs["a_dir"])
    elif isinstance(p.type, click.Choice):
        value = str(p.type.choices[0])
    elif p.name in VALID:
        value = VALID[p.name]
    elif isinstance(p.type, (click.types.IntParamType, click.types.FloatParamType)):
        value = "4"
    else:
        value = "4"
    n = p.nargs if p.nargs > 0 else 1
    values = [value] * n
    return values if isinstance(p, click.Argument) else [p.opts[0], *values]


def _args(command: str, cmd: click.Command, inputs, given: Dict[str, List[str]]) -> List[str]:
    """``given`` (param name -> its argv values, placed first), then fillers for the other
    required parameters (and :data:`BASE_ARGS`); arguments in their declared order after all
    options."""
    opts, positional = [], []
    base = BASE_ARGS.get(command, [])
    for p in cmd.params:
        if p.name in given:
            vals = given[p.name]
            if isinstance(p, click.Argument):
                positional += vals
            else:
                opts = [p.opts[0], *vals] + opts
        elif p.required or ROLES.get(p.name) in base or (_is_out(p) and command in BASE_ARGS):
            vals = _filler(p, inputs)
            (positional if isinstance(p, click.Argument) else opts).extend(vals)
    return [*opts, *[a for a in base if a not in ROLES.values()], *positional]


def _cases(inputs) -> List[Case]:
    cases: List[Case] = []
    for name, cmd in _leaves(main, []):
        if name in PASS_THROUGH:
            continue
        for p in cmd.params:
            role = _role(name, p)
            n = p.nargs if p.nargs > 0 else 1
            if role is not None:
                missing = str(inputs["root"] / MISSING / p.name)
                cases.append(
                    Case(name, f"missing {p.name}", _args(name, cmd, inputs, {p.name: [missing] * n}), MISSING)
                )
            if role in ("checkpoint", "hf_model"):
                for kind, path, named in (
                    ("corrupt checkpoint config.json", inputs["bad_ckpt"], "config.json"),
                    # commands that take OLMo-core checkpoints only may refuse the directory itself
                    ("corrupt HF config.json", inputs["hf_bad_config"], str(inputs["hf_bad_config"])),
                    ("truncated safetensors", inputs["hf_bad_weights"], str(inputs["hf_bad_weights"])),
                ):
                    cases.append(
                        Case(name, f"{kind} as {p.name}", _args(name, cmd, inputs, {p.name: [str(path)] * n}), named)
                    )
            if role == "token_dir":
                bad = str(inputs["bad_meta_dir"])
                cases.append(
                    Case(
                        name,
                        f"corrupt meta.json as {p.name}",
                        _args(name, cmd, inputs, {p.name: [bad] * n}),
                        "meta.json",
                    )
                )
            if role == "study_file":
                bad = str(inputs["bad_yaml"])
                cases.append(
                    Case(name, f"duplicate YAML key in {p.name}", _args(name, cmd, inputs, {p.name: [bad]}), bad)
                )
            if _is_out(p):
                under_file = str(inputs["a_file"] / "out")
                wrong = inputs["a_file"] if _out_kind(p) == "dir" else inputs["a_dir"]
                cases.append(
                    Case(name, "--out under a file", _args(name, cmd, inputs, {p.name: [under_file]}), under_file)
                )
                cases.append(
                    Case(
                        name,
                        f"--out an existing {'file' if _out_kind(p) == 'dir' else 'directory'}",
                        _args(name, cmd, inputs, {p.name: [str(wrong)]}),
                        str(wrong),
                    )
                )
            if isinstance(p, click.Option) and p.opts[0] == "--device":
                for dev in ("cuda:63", "tpu-please"):
                    cases.append(Case(name, f"--device {dev}", _args(name, cmd, inputs, {p.name: [dev]}), dev))
    return cases


def _refusal(result) -> str:
    """The one error line, or a description of why the result is not a clean refusal."""
    if result.exit_code == 0:
        return "ACCEPTED (exit 0)"
    if not isinstance(result.exception, SystemExit) or "Traceback" in result.output:
        return f"TRACEBACK {type(result.exception).__name__}: {result.exception}"
    lines = [line for line in result.output.splitlines() if line.strip()]
    errors = [i for i, line in enumerate(lines) if line.startswith("Error: ")]
    if len(errors) != 1 or errors[0] != len(lines) - 1:
        return "NOT ONE LINE: " + " / ".join(lines[-4:])
    return lines[-1]


#: a refusal is immediate; a case still running after this many seconds is doing the work
CASE_SECONDS = 30


class _StillWorking(Exception):
    pass


def _alarm(signum, frame):
    raise _StillWorking(f"still running after {CASE_SECONDS} s: the bad input was not refused up front")


def test_every_command_refuses_bad_inputs_with_one_line(inputs, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # a command that does not refuse writes its default --out here, not in the checkout
    cases = _cases(inputs)
    runner = CliRunner()
    bad = []
    previous = signal.signal(signal.SIGALRM, _alarm)
    try:
        results = []
        for case in cases:
            start = time.monotonic()
            signal.alarm(CASE_SECONDS)
            try:
                result = runner.invoke(main, [*case.command.split(), *case.args], catch_exceptions=True)
            finally:
                signal.alarm(0)
            results.append((case, result, time.monotonic() - start))
    finally:
        signal.signal(signal.SIGALRM, previous)
    for case, result, seconds in results:
        line = _refusal(result)
        if not line.startswith("Error: "):
            bad.append(f"{case.command} [{case.kind}]: {line}")
        elif case.names not in line:
            bad.append(f"{case.command} [{case.kind}]: does not name {case.names!r}: {line}")
    commands = {c.command for c in cases}
    with capsys.disabled():
        print(
            f"\nCLI walk: {len(cases)} bad inputs over {len(commands)} commands, {len(cases) - len(bad)} refused cleanly"
        )
    assert not bad, "\n".join(bad)
    # every command with an input, an --out or a --device was walked
    walked = {
        name
        for name, cmd in _leaves(main, [])
        if name not in PASS_THROUGH and any(ROLES.get(p.name) or _is_out(p) for p in cmd.params)
    }
    assert walked <= commands
