"""Bad files are one-line errors naming the path and the fix, never a traceback: a truncated
checkpoint shard (.distcp), a truncated safetensors file, empty / wrong-dtype / loose uint32
validation token files, and an output directory that cannot be written."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import numpy as np
import yaml

SCRIPT = """import sys
from olmo_sam.cli import main
for argv in sys.argv[1:]:
    try:
        main(argv.split('|'), standalone_mode=True)
    except SystemExit as e:
        print(f'EXIT {e.code}', file=sys.stderr, flush=True)
"""


def _run_all(cases, cwd):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT, *["|".join(map(str, c)) for c in cases]],
        capture_output=True,
        text=True,
        env=env,
        cwd=cwd,
        timeout=900,
    )
    assert "Traceback" not in proc.stderr, proc.stderr[:6000]
    blocks = proc.stderr.split("EXIT ")
    codes = [b.split("\n", 1)[0] for b in blocks[1:]]
    assert len(codes) == len(cases) and all(c in ("1", "2") for c in codes), proc.stderr[-4000:]
    # each error is one line ("Error: ..."), after click's usage lines for usage errors
    return [" ".join(b.split("Error: ", 1)[1].split("\n", 1)[0].split()) for b in blocks[:-1]]


def test_bad_files_are_one_line_errors(tiny_checkpoint, tiny_corpus, tiny_hf_model, tmp_path):
    # a checkpoint with a truncated shard
    ckpt = tmp_path / "ckpt" / tiny_checkpoint.name
    shutil.copytree(tiny_checkpoint, ckpt)
    shard = sorted((ckpt / "model_and_optim").glob("*.distcp"))[0]
    shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])
    # validation files: empty, an odd number of bytes, uint32 ids read as uint16
    empty, odd, wide = tmp_path / "empty.npy", tmp_path / "odd.npy", tmp_path / "wide.npy"
    empty.write_bytes(b"")
    odd.write_bytes(np.fromfile(tiny_corpus.val, dtype=np.uint16)[:1000].tobytes() + b"\x01")
    np.fromfile(tiny_corpus.val, dtype=np.uint16).astype(np.uint32).tofile(wide)
    # an HF model whose safetensors file is cut off
    hf = tmp_path / "hf"
    shutil.copytree(tiny_hf_model, hf)
    weights = hf / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 3])
    # an output directory that cannot be created (its parent is a file)
    (tmp_path / "a-file").write_text("")
    study = tmp_path / "s.yaml"
    study.write_text(
        yaml.safe_dump(
            {
                "name": "s",
                "data": {"demo": {"vocab_size": 512}},
                "arms": [{"name": "a", "optimizer": "adamw", "size": "tiny", "steps": 4, "lr": 1e-3}],
                "stages": ["data"],
            }
        )
    )

    def perturb(model, val):
        return [
            "probe",
            "noise",
            model,
            "--val",
            val,
            "--gammas",
            "0.01",
            "--seeds",
            "0",
            "--max-sequences",
            "2",
            "--out",
            tmp_path / "probe-out",
        ]

    msgs = _run_all(
        [
            perturb(ckpt, tiny_corpus.val),
            perturb(tiny_checkpoint, empty),
            perturb(tiny_checkpoint, odd),
            perturb(tiny_checkpoint, wide),
            ["import-hf", hf, "--out", tmp_path / "imported", "--no-validate"],
            ["study", "run", study, "--out", tmp_path / "a-file" / "out"],
        ],
        cwd=tmp_path,
    )
    assert f"{ckpt / 'model_and_optim'}: the checkpoint could not be read" in msgs[0]
    assert "truncated or corrupt" in msgs[0] and "use an earlier step directory" in msgs[0]
    assert f"validation token file {empty} is empty" in msgs[1] and "olmo-sam data tokenize" in msgs[1]
    assert f"validation token file {odd} has 2001 bytes, not a whole number of uint16 ids" in msgs[2]
    assert f"validation token file {wide} holds uint32 ids" in msgs[3] and "re-write it as uint16" in msgs[3]
    assert (
        f"{hf / 'model.safetensors'}: the model weights could not be read" in msgs[4]
        and "download or copy it again" in msgs[4]
    )
    assert f"{tmp_path / 'a-file' / 'out'}: the output directory is not writable" in msgs[5]
    assert "choose another with --out" in msgs[5]


def test_bad_study_files_samples_and_model_dirs_are_one_line_errors(tiny_hf_model, tmp_path):
    """User probe 6: a binary file given as cfs samples, a truncated or empty analysis summary, a
    corrupt study.json and an HF directory without weights ended in tracebacks, an empty report or
    a message blaming corruption; a local model directory with --revision ignored the revision."""
    import json

    from cfs_helpers import make_task_dir

    task = make_task_dir(tmp_path / "task", n_docs=8)
    binary = task / "train.npy"
    cut, empty, broken = tmp_path / "cut", tmp_path / "empty", tmp_path / "broken"
    for d in (cut, empty, broken):
        (d / "analysis").mkdir(parents=True)
    (cut / "analysis" / "summary.json").write_text('{"study": "s", "arms": ["a"')
    (empty / "analysis" / "summary.json").write_text("{}")
    (broken / "study.json").write_text('{"name": "s", "arms": [')
    weightless = tmp_path / "weightless"
    weightless.mkdir()
    shutil.copy(tiny_hf_model / "config.json", weightless / "config.json")
    msgs = _run_all(
        [
            ["cfs", "mix", task, binary, "--out", tmp_path / "mix", "--batch-size", "2", "--seq-len", "8"],
            ["report", cut],
            ["report", empty],
            ["study", "status", broken],
            ["import-hf", weightless, "--out", tmp_path / "imp", "--tokenizer", tiny_hf_model],
            ["import-hf", tiny_hf_model, "--out", tmp_path / "imp", "--revision", "main"],
        ],
        cwd=tmp_path,
    )
    assert f"{binary}:1: the" in msgs[0] and "is not text (a binary file?)" in msgs[0]
    assert f"{cut / 'analysis' / 'summary.json'}: the analysis summary is not valid JSON" in msgs[1]
    assert "holds no analysis summary (no 'arms')" in msgs[2] and "--stages analysis --rerun" in msgs[2]
    assert not (empty / "report").exists() or not any((empty / "report").iterdir())
    assert f"{broken / 'study.json'}: the study record is not valid JSON" in msgs[3]
    assert f"{weightless}: no model weights (*.safetensors or *.bin)" in msgs[4]
    assert "--revision main:" in msgs[5] and "is a local directory, which has no revisions" in msgs[5]
    assert json.loads((empty / "analysis" / "summary.json").read_text()) == {}
