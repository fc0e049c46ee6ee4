"""The study pipeline: planning, bad study files, and kill-and-resume of a real (small) study."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from olmo_sam import paper
from olmo_sam.study.plan import build_plan
from olmo_sam.study.spec import ConfigError, load_study, parse_study

ROOT = Path(__file__).resolve().parents[1]


def test_paper_scale_dry_run_lists_the_right_jobs(tmp_path):
    """60M, five budgets, five datasets, 43 LRs: planned, not run."""
    study = load_study(ROOT / "recipes" / "studies" / "paper-60m.yaml")
    study.out_dir = str(tmp_path / "never")
    plan = build_plan(study)
    budgets = paper.PRETRAIN_SHAPES["60M"].token_budgets_b
    units = 3 * len(budgets) + 1  # three arms over all budgets, sam-anneal at 192B only
    datasets = paper.FT_DATASETS_SMALL
    summary = plan.stage_summary()
    assert summary["pretrain"]["jobs"] == units
    for stage in ("export", "pt_eval", "quantize", "noise", "hessian"):
        assert summary[stage]["jobs"] == units
    sweeps = [j for j in plan.jobs if j.kind == "ft_sweep"]
    assert len(sweeps) == units * len(datasets)
    assert sum(j.runs for j in sweeps) == units * len(datasets) * len(paper.FT_LR_GRID_SMALL) == 16 * 5 * 43
    assert summary["finetune"]["runs"] == 16 * 5 * 43
    # every pretraining job carries its Table 5 budget, and the budget set is exactly Table 5's
    tokens = {j.params["settings"]["tokens"] for j in plan.jobs if j.stage == "pretrain"}
    assert tokens == {f"{int(b)}B" for b in budgets}
    assert not (tmp_path / "never").exists()


def test_dry_run_cli_runs_nothing(tmp_path):
    out = tmp_path / "dry"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "olmo_sam.cli",
            "study",
            "run",
            str(ROOT / "recipes/studies/olmo2-1b.yaml"),
            "--dry-run",
            "--allow-missing-data",
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
    )
    assert proc.returncode == 0, proc.stderr
    assert "finetune      12 jobs, 160 runs" in proc.stdout  # 2 arms x 4 datasets x 20 LRs (Table 3)
    assert "torch.distributed.run --nproc-per-node 8" in proc.stdout
    assert not out.exists()


def test_a_shipped_study_runs_by_name_without_the_repository(tmp_path, monkeypatch):
    """A pip install has no recipes/studies/ (which links to the shipped files): `study run
    paper-60m` finds the shipped file; the repository's path gives the same study; an unknown name
    lists the shipped ones."""
    from click.testing import CliRunner

    from olmo_sam.cli import main
    from olmo_sam.study.spec import ConfigError, load_study

    monkeypatch.chdir(tmp_path)  # no recipes/ here
    by_name = load_study("paper-60m")
    assert by_name == load_study("paper-60m.yaml")
    repo = load_study(ROOT / "recipes/studies/paper-60m.yaml")
    assert (by_name.name, by_name.arms, by_name.pretrain) == (repo.name, repo.arms, repo.pretrain)
    res = CliRunner().invoke(main, ["study", "run", "paper-60m", "--dry-run", "--allow-missing-data"])
    assert res.exit_code == 0, res.output
    with pytest.raises(
        ConfigError, match=r"study file not found: paper-61m \(nor a shipped study; shipped: \[.*'paper-60m'"
    ):
        load_study("paper-61m")


BASE = {
    "name": "t",
    "data": {"demo": {"vocab_size": 512}},
    "pretrain": {"size": "tiny", "steps": 10, "lr": 1e-3},
    "arms": [{"name": "a", "optimizer": "adamw", "schedule": "cosine"}],
    "finetune": {"datasets": ["code"], "lrs": [1e-3]},
}


@pytest.mark.parametrize(
    "change, match",
    [
        ({"stages": ["pretrain", "distill"]}, "unknown stage"),
        ({"arms": [{"name": "a", "schedule": "wso"}]}, "no 'optimizer'"),
        ({"finetune": {"datasets": [""], "lrs": [1e-3]}}, "dataset id is missing"),
        ({"finetune": {"datasets": [], "lrs": [1e-3]}}, "at least one dataset"),
        ({"finetune": {"datasets": ["code"], "lrs": []}}, "finetune.lrs: the list is empty"),
        (
            {"finetune": {"datasets": ["code"], "lrs": [1e-3], "methods": ["sam"]}},
            r"finetune.methods\[0\]: must be one of",
        ),
        ({"finetune": {"datasets": ["code"]}}, "'lrs'.*'preset'"),
        ({"learning_rate": 3}, "unknown key"),
        ({"probes": {"quantise": {}}}, "probes.quantise: unknown setting; did you mean .quantize."),
        ({"arms": [{"name": "a", "optimizer": "adamw"}, {"name": "a", "optimizer": "sam"}]}, "duplicate arm"),
        ({"data": {}}, "no pretraining data"),
        ({"executor": {"kind": "kubernetes"}}, "executor.kind"),
        ({"cfs": {"ratio": 0.5}, "finetune": None}, "add a 'finetune' section"),
        ({"cfs": {"ratio": 0.5}}, "add one of them to finetune.methods"),
    ],
)
def test_bad_study_files_fail_before_compute(tmp_path, change, match):
    data = {**BASE, **change, "out_dir": str(tmp_path / "out")}
    if data.get("finetune") is None:
        data.pop("finetune")
    with pytest.raises(ConfigError, match=match):
        build_plan(parse_study(data))
    assert not (tmp_path / "out").exists()


def test_bad_study_file_cli_error_names_the_problem(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({**BASE, "stages": ["pretrain", "distill"]}))
    proc = subprocess.run(
        [sys.executable, "-m", "olmo_sam.cli", "study", "run", str(bad)],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
    )
    assert proc.returncode == 1
    assert "unknown stage(s) ['distill']" in proc.stderr


SMALL = {
    "name": "resume",
    "data": {"demo": {"vocab_size": 512, "books": ["carroll-alice", "shakespeare-macbeth"]}},
    "pretrain": {
        "size": "tiny",
        "steps": 16,
        "lr": 3e-3,
        "batch_size": 4,
        "seq_len": 64,
        "warmup": 2,
        "checkpoint_interval": 4,
    },
    "arms": [
        {"name": "adamw", "optimizer": "adamw", "schedule": "cosine"},
        {"name": "sam-anneal", "optimizer": "sam-anneal", "schedule": "wsd", "decay_fraction": 0.25},
    ],
    "pt_eval": {"max_sequences": 16},
    "executor": {"kind": "local", "jobs": 1},
    "stages": ["data", "pretrain", "pt_eval", "analysis", "report"],
}


def _study_cmd(path, out):
    return [sys.executable, "-m", "olmo_sam.cli", "study", "run", str(path), "--out", str(out)]


def _env():
    return {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path), "OMP_NUM_THREADS": "1"}


@pytest.mark.slow
def test_killed_study_resumes_to_the_same_results(tmp_path):
    # the uninterrupted study runs each job in its own process; the killed one in the long-lived
    # worker processes of `reuse_processes` (as the demo does): the results must not depend on it
    spec, reused = tmp_path / "study.yaml", tmp_path / "reused.yaml"
    spec.write_text(yaml.safe_dump(SMALL))
    reused.write_text(yaml.safe_dump({**SMALL, "executor": {**SMALL["executor"], "reuse_processes": True}}))
    full, killed = tmp_path / "full", tmp_path / "killed"
    ok = subprocess.run(_study_cmd(spec, full), capture_output=True, text=True, env=_env())
    assert ok.returncode == 0, ok.stdout[-3000:] + ok.stderr[-3000:]

    # kill the whole study (executor and its workers) while the second pretraining run is in progress
    proc = subprocess.Popen(
        _study_cmd(reused, killed),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=_env(),
        start_new_session=True,
    )
    target = killed / "pretrain" / "sam-anneal" / "run" / "step4"
    deadline = time.time() + 600
    while not (target / "model_and_optim" / ".metadata").exists():
        assert proc.poll() is None, "the study ended before it could be killed"
        assert time.time() < deadline
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert (killed / "pretrain" / "adamw" / "done.json").exists()
    assert not (killed / "pretrain" / "sam-anneal" / "done.json").exists()

    again = subprocess.run(_study_cmd(reused, killed), capture_output=True, text=True, env=_env())
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    manifest = json.loads((killed / "manifest.json").read_text())
    assert manifest["jobs"]["pretrain/adamw"]["status"] == "skipped (done)"
    assert len(manifest["invocations"]) == 2

    def result(root, job):
        return json.loads((root / job / "done.json").read_text())["result"]

    for unit in ("adamw", "sam-anneal"):
        a, b = result(full, f"pt_eval/{unit}"), result(killed, f"pt_eval/{unit}")
        assert b["l_pt"] == pytest.approx(a["l_pt"], abs=1e-6)
        ca = json.loads(Path(result(full, f"pretrain/{unit}")["curve"]).read_text())["train"]
        cb = json.loads(Path(result(killed, f"pretrain/{unit}")["curve"]).read_text())["train"]
        assert [p["train_loss"] for p in cb] == pytest.approx([p["train_loss"] for p in ca], abs=1e-6)
    assert (killed / "report" / "report.html").exists()
