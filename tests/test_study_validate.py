"""Validate before compute: every bad value of the study file fails at planning time
(``olmo-sam study run --dry-run``), before any job runs, and the message names the field's path
in the study file and the fix."""

from __future__ import annotations

import copy
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from olmo_sam.study.cli import start_study
from olmo_sam.study.spec import ConfigError, parse_study

BASE = {
    "name": "v",
    "data": {"demo": {"vocab_size": 512}},
    "pretrain": {"size": "tiny", "steps": 10, "lr": 1e-3},
    "arms": [
        {"name": "adamw", "optimizer": "adamw", "schedule": "cosine"},
        {"name": "sam-anneal", "optimizer": "sam-anneal", "schedule": "wsd", "decay_fraction": 0.2},
    ],
    "probes": {"quantize": {"quant": ["nf4"]}, "noise": {"gammas": [0.01], "seeds": [0]}, "hessian": {"probes": 2}},
    "finetune": {"datasets": ["demo-code"], "lrs": [1e-3], "methods": ["ft"], "common": {"max_steps": 4}},
}


def _set(data, path, value):
    """Set ``a.b[1].c`` in a nested dict/list (``None`` deletes)."""
    keys = [int(k) if k.isdigit() else k for k in path.replace("[", ".").replace("]", "").split(".")]
    node = data
    for k in keys[:-1]:
        node = node.setdefault(k, {}) if isinstance(node, dict) else node[k]
    if value is None:
        del node[keys[-1]]
    else:
        node[keys[-1]] = value


# (field path, value, what the message must say besides the path: the fix)
BAD = [
    ("arms[1].optimizer", "sma-anneal", "must be one of"),
    ("arms[1].rho", -0.05, ">= 0"),
    ("arms[0].rho", "abc", "expected a number"),
    ("arms[0].schedule", "cosin", "must be one of"),
    ("pretrain.steps", -60, ">= 1"),
    ("arms[1].schedule", "wso", "sam_start_fraction"),
    ("probes.quantize.quant[0]", "nf5", "presets"),
    ("probes.noise.gammas[0]", -0.013, "> 0"),
    ("probes.hessian.probes", 0, ">= 1"),
    ("finetune.datasets[0]", "demo-cod", "choose one of"),
    ("finetune.methods[0]", "fine-tune", "must be one of"),
    ("finetune.common.max_steps", "ten", "expected a whole number"),
    ("executor.jobs", 0, ">= 1"),
    ("pt_eval.max_sequences", 0, ">= 1"),
]


@pytest.mark.parametrize("path, value, fix", BAD, ids=[f"{p}={v}" for p, v, _ in BAD])
def test_bad_value_fails_at_dry_run_naming_the_field(tmp_path, path, value, fix):
    data = copy.deepcopy(BASE)
    data["out_dir"] = str(tmp_path / "out")
    _set(data, path, value)
    with pytest.raises(ConfigError) as e:
        start_study(parse_study(data), dry_run=True, echo=lambda *a: None)
    msg = str(e.value)
    assert msg.startswith(path.split("[")[0] if path.startswith("probes.noise") else path), msg
    assert fix in msg and "\n" not in msg, msg
    assert not (tmp_path / "out").exists()


# keys and values of the sections that configure other parts (a recipe, FTConfig, data
# preparation, the demo corpus): refused when the file is read, before any plan is made
READ_TIME = [
    ("pretrain.lrr", 1e-3, "did you mean 'lr'?"),
    ("pretrain.lr", -1, ">= 0"),
    ("pretrain.tokens", "12Q", "token count"),
    ("pretrain.save_folder", "x", "set by the study itself"),
    ("arms[0].lrr", 1, "did you mean 'lr'?"),
    ("arms[1].rho", "abc", "expected a number"),
    ("midtrain.zz", 1, "unknown setting"),
    ("finetune.common.max_stepz", 3, "did you mean 'max_steps'?"),
    ("finetune.per_dataset.demo-code.max_steps", -3, ">= 1"),
    ("finetune.prepare.max_docz", 3, "did you mean 'max_documents'?"),
    ("finetune.grids.zzz", [1], "unknown grid"),
    ("finetune.methods[0]", "fine-tune", "must be one of"),
    ("data.demo.vocab_sizee", 512, "did you mean 'vocab_size'?"),
]


@pytest.mark.parametrize("path, value, fix", READ_TIME, ids=[f"{p}={v}" for p, v, _ in READ_TIME])
def test_other_parts_settings_are_checked_when_the_file_is_read(path, value, fix):
    data = copy.deepcopy(BASE)
    _set(data, path, value)
    with pytest.raises(ConfigError) as e:
        parse_study(data)
    msg = str(e.value)
    assert msg.startswith(path), msg
    assert fix in msg and "\n" not in msg, msg


def test_missing_data_paths_and_arms(tmp_path):
    data = {
        **copy.deepcopy(BASE),
        "data": {"train": [str(tmp_path / "train.npy")], "val": [str(tmp_path / "val.npy")], "tokenizer": "dolma2"},
    }
    (tmp_path / "train.npy").write_bytes(b"")
    with pytest.raises(ConfigError, match=r"^data\.val\[0\]: token file not found: .*val\.npy; fix the path"):
        start_study(parse_study(data), dry_run=True, echo=lambda *a: None)
    # planning anyway (a cluster study on a laptop): the missing files are listed, not fatal
    lines = []
    start_study(parse_study(data), dry_run=True, echo=lines.append, allow_missing_data=True)
    assert any("warning: data.val[0]: token file not found" in x for x in lines)
    with pytest.raises(ConfigError, match=r"^arms: the study has no arms; add at least one"):
        parse_study({**BASE, "arms": []})
    no_arms = dict(BASE)
    no_arms.pop("arms")
    with pytest.raises(ConfigError, match=r"^arms: the study has no arms"):
        parse_study(no_arms)


def test_cli_dry_run_refuses_bad_values_and_launchers(tmp_path):
    """The command line: one line naming the field (no traceback); --jobs 0 and a
    --nproc-per-node the local executor would ignore are errors too."""
    good = tmp_path / "good.yaml"
    good.write_text(yaml.safe_dump(BASE))
    bad_data = copy.deepcopy(BASE)
    bad_data["arms"][1]["schedule"] = "wso"
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(bad_data))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    script = (
        "import sys\nfrom olmo_sam.cli import main\nfor argv in sys.argv[1:]:\n"
        "    try:\n        main(argv.split('|'), standalone_mode=True)\n    except SystemExit as e:\n"
        "        print(f'EXIT {e.code}', file=sys.stderr, flush=True)\n"
    )
    out = str(tmp_path / "o")
    cases = [
        f"study|run|{bad}|--dry-run|--out|{out}",
        f"study|run|{good}|--dry-run|--out|{out}|--jobs|0",
        f"study|run|{good}|--dry-run|--out|{out}|--nproc-per-node|2",
        f"study|run|{good}|--dry-run|--out|{out}|--executor|slurm|--nproc-per-node|2",
        f"study|status|{tmp_path}",
    ]
    proc = subprocess.run([sys.executable, "-c", script, *cases], capture_output=True, text=True, env=env, timeout=300)
    blocks = proc.stderr.split("EXIT ")
    assert "Traceback" not in proc.stderr, proc.stderr
    # what click parses wrongly is a usage error (exit 2); what the command refuses is exit 1
    assert [b.split("\n", 1)[0] for b in blocks[1:]] == ["1", "2", "1", "1", "1"], proc.stderr
    # the message is in the study file's words (its paths), not the command line's flags
    assert "arms[1].schedule: wso with arms[1].optimizer sam-anneal" in blocks[0]
    assert "--" not in blocks[0].split("Error:")[1].split("\n")[0], blocks[0]
    assert "'--jobs': 0 is not in the range x>=1" in blocks[1]
    assert "--nproc-per-node: the local executor runs every job in one process" in blocks[2]
    assert "torchrun executor" in blocks[2]
    assert "executor.slurm.tasks_per_node" in blocks[3]
    assert f"{tmp_path} holds no study (study.json missing); start it with 'olmo-sam study run'" in blocks[4]
    assert not Path(out).exists()
