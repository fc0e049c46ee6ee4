"""State and concurrency of a study's output directory, and the progress a person watches: jobs
run the planning package's code (not a checkout in the current directory), one study per output
directory (the second names the holder's pid), Ctrl-C leaves an "interrupted" manifest and says
how to resume, plain progress lines when stdout is not a terminal, failed jobs marked failed, and
a study file edited under finished jobs is refused with the changed keys and what to do."""

from __future__ import annotations

import io
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

import olmo_sam
from olmo_sam.study.progress import StudyProgress
from olmo_sam.study.spec import ConfigError
from olmo_sam.study.state import LOCK_FILE, out_dir_lock

PKG_ROOT = str(Path(olmo_sam.__file__).resolve().parents[1])

STUDY = {
    "name": "state",
    "data": {"demo": {"vocab_size": 512, "books": ["carroll-alice"]}},
    "pretrain": {"size": "tiny", "steps": 2000, "lr": 3e-3, "batch_size": 4, "seq_len": 64, "warmup": 2},
    "arms": [{"name": "adamw", "optimizer": "adamw", "schedule": "cosine"}],
    "executor": {"kind": "local", "jobs": 1},
    "stages": ["data", "pretrain"],
}


def _env():
    # no '' / relative entries: the current directory must not come in through PYTHONPATH
    path = [p for p in sys.path if p and os.path.isabs(p)]
    return {**os.environ, "PYTHONPATH": os.pathsep.join(path), "OMP_NUM_THREADS": "1"}


def _cli(*args):
    # -P: like the installed 'olmo-sam' script, the command itself does not import from the CWD
    return [sys.executable, "-P", "-m", "olmo_sam.cli", *map(str, args)]


def _decoy(cwd: Path) -> None:
    """Another 'olmo_sam' in the current directory that breaks whatever imports it."""
    (cwd / "olmo_sam").mkdir(parents=True)
    (cwd / "olmo_sam" / "__init__.py").write_text("raise ImportError('the decoy olmo_sam in the CWD was imported')\n")


@pytest.mark.slow
def test_lock_interrupt_progress_and_edited_study(tmp_path):
    cwd = tmp_path / "elsewhere"
    _decoy(cwd)
    spec, out = tmp_path / "study.yaml", tmp_path / "out"
    spec.write_text(yaml.safe_dump(STUDY))
    proc = subprocess.Popen(
        _cli("study", "run", spec, "--out", out),
        cwd=cwd,
        env=_env(),
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        _interrupt_checks(proc, spec, out, cwd)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def _interrupt_checks(proc, spec, out, cwd):
    progress = out / "pretrain" / "adamw" / "progress.json"
    deadline = time.time() + 600
    while not (progress.exists() and json.loads(progress.read_text())["done"] >= 1):
        assert proc.poll() is None, proc.communicate()
        assert time.time() < deadline
        time.sleep(0.5)
    # the data job ran the planning package's code, not the decoy in its current directory
    assert (out / "data" / "data" / "done.json").exists()

    second = subprocess.run(
        _cli("study", "run", spec, "--out", out), cwd=cwd, env=_env(), capture_output=True, text=True, timeout=300
    )
    assert second.returncode == 1, second.stderr
    assert f"is in use by another 'olmo-sam study run' (pid {proc.pid})" in second.stderr
    assert "Traceback" not in second.stderr

    time.sleep(3)  # let the progress line through
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr[-3000:]
    assert f"Resume with:\n  olmo-sam study run {spec} --out {out}" in stderr
    assert "Traceback" not in stderr
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["state"] == "interrupted"
    assert manifest["interrupted_jobs"] == ["pretrain/adamw"]
    assert manifest["resume"] == f"olmo-sam study run {spec} --out {out}"
    assert manifest["jobs"]["pretrain/adamw"]["status"] == "interrupted"
    assert manifest["environment"]["job_code"]["package_path"] == PKG_ROOT
    assert not (out / "pretrain" / "adamw" / "done.json").exists()
    # not a terminal: one plain, timestamped line per event, with the job's own progress and ETA
    lines = stdout.splitlines()
    assert any(re.fullmatch(r"\[\d\d:\d\d:\d\d\] start  data  \(0/2 jobs\)", x) for x in lines), stdout
    assert any(re.fullmatch(r"\[\d\d:\d\d:\d\d\] done   data  \d+:\d\d  \(1/2 jobs\)", x) for x in lines), stdout
    assert any(re.search(r"pretrain/adamw: \d+/2000 steps ETA \d+:\d\d", x) for x in lines), stdout
    assert any(x.endswith("interrupted pretrain/adamw") for x in lines), stdout

    # the file is edited under the finished data job: refused, nothing rewritten
    edited = dict(STUDY, data={"demo": {"vocab_size": 640, "books": ["carroll-alice"]}})
    spec.write_text(yaml.safe_dump(edited))
    before = (out / "study.json").read_text(), (out / "manifest.json").read_text()
    again = subprocess.run(
        _cli("study", "run", spec, "--out", out), cwd=cwd, env=_env(), capture_output=True, text=True, timeout=300
    )
    assert again.returncode == 1, again.stderr
    msg = " ".join(again.stderr.split())
    assert "changed: data.demo.vocab_size" in msg and "finished jobs made with the old values: data" in msg
    assert f"--out {out} --rerun --stages data" in msg and "or use a new output directory" in msg
    assert ((out / "study.json").read_text(), (out / "manifest.json").read_text()) == before


def test_failed_job_is_marked_failed_and_a_stale_lock_is_taken_over(tmp_path):
    """A job that fails is shown and recorded as failed (exit 1, no 'done'); a lock file left
    by a dead process does not block the next run."""
    (tmp_path / "train.npy").write_bytes(b"\0" * 64)
    (tmp_path / "tok").mkdir()  # exists (so the plan accepts it) but holds no tokenizer
    spec = {
        "name": "fails",
        "data": {
            "train": [str(tmp_path / "train.npy")],
            "val": [str(tmp_path / "train.npy")],
            "tokenizer": str(tmp_path / "tok"),
        },
        "arms": [{"name": "a", "optimizer": "adamw", "size": "tiny", "steps": 4, "lr": 1e-3}],
        "stages": ["data"],
        "executor": {"kind": "local", "jobs": 1},
    }
    path, out = tmp_path / "s.yaml", tmp_path / "out"
    path.write_text(yaml.safe_dump(spec))
    out.mkdir()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (out / LOCK_FILE).write_text(f"{dead.pid}\n")
    proc = subprocess.run(
        _cli("study", "run", path, "--out", out), env=_env(), capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert re.search(
        r"^\[\d\d:\d\d:\d\d\] FAILED data  \d+:\d\d  exit 1, log .*log\.txt  \(1/1 jobs, 1 failed\)$", proc.stdout, re.M
    ), proc.stdout
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["jobs"]["data"]["status"] == "failed (exit 1)" and manifest["state"] == "failed"
    assert not (out / "data" / "done.json").exists()
    # the message ends with how to go on (it ended in the job's log tail)
    assert "1 job(s) failed: ['data']" in proc.stderr, proc.stderr
    assert proc.stderr.rstrip().endswith(
        f"Once the failure is fixed, go on with:\n  olmo-sam study run {path} --out {out}"
    )


def test_lock_names_the_holder(tmp_path):
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time\nfrom pathlib import Path\n"
            "from olmo_sam.study.state import out_dir_lock\n"
            "with out_dir_lock(Path(sys.argv[1])):\n    print('held', flush=True)\n"
            "    time.sleep(60)\n",
            str(tmp_path),
        ],
        env=_env(),
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(
            ConfigError, match=rf"in use by another 'olmo-sam demo' \(pid {holder.pid}\); .*kill {holder.pid}"
        ):
            with out_dir_lock(tmp_path, "demo"):
                pass
    finally:
        holder.kill()
        holder.wait()
    with out_dir_lock(tmp_path):  # the holder died: its lock went with it
        assert (tmp_path / LOCK_FILE).read_text().strip() == str(os.getpid())


def test_terminal_counter_stays_on_an_80_column_screen():
    """Long running-job names are cut, never the jobs-done counter or the failure count."""
    buf = io.StringIO()
    bar = StudyProgress(21, stream=buf, plain=False, width=80, force_terminal=True)
    with bar:
        for j in ("finetune/sam-anneal@192B:starcoder", "finetune/adamw@192B:musicpile", "pretrain/sam@24B"):
            bar.started(j)
        bar.finished("pretrain/sam@24B", 3.0, ok=False, why="exit 1")
        bar.poll(lambda j: {"done": 3, "total": 43, "unit": "runs", "time": time.time(), "started": time.time() - 30})
        bar._bar.refresh()
    text = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", buf.getvalue())
    rows = [r for r in re.split(r"[\r\n]", text) if "study" in r]
    assert rows and all(len(r) <= 80 for r in rows)
    assert "1/21 jobs, 1 failed" in rows[-1]
    assert "FAILED pretrain/sam@24B" in text


def test_a_damaged_done_file_is_not_a_finished_job(tmp_path):
    """A truncated done.json counted as done; the next job reading it failed with a traceback."""
    from olmo_sam.study.job import Job

    job = Job(id="pretrain/adamw", stage="pretrain", kind="pretrain", params={}, deps=[])
    job.mark_done(tmp_path, {"checkpoint": "x"}, seconds=1.0)
    assert job.is_done(tmp_path) and job.result(tmp_path) == {"checkpoint": "x"}
    path = job.done_path(tmp_path)
    path.write_text(path.read_text()[:20])
    assert not job.is_done(tmp_path)
    with pytest.raises(ConfigError, match=r"has not finished \(no readable .*done.json\)"):
        job.result(tmp_path)
