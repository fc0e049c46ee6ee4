"""Context-free data and benchmarks join the study chain: a CFS method in the fine-tuning sweep
(trained for the task's steps, recorded on the task's learning-forgetting set) and the offline
benchmark suite on the base model in full precision and 4-bit NF4, and on the fine-tuned model."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import yaml

pytestmark = pytest.mark.slow

STUDY = {
    "name": "chain",
    "data": {"demo": {"vocab_size": 512, "books": ["carroll-alice", "shakespeare-macbeth"]}},
    "pretrain": {"size": "tiny", "steps": 12, "lr": 3e-3, "batch_size": 4, "seq_len": 64, "warmup": 2},
    "arms": [{"name": "sam-anneal", "optimizer": "sam-anneal", "schedule": "wsd", "decay_fraction": 0.25}],
    "pt_eval": {"max_sequences": 16},
    "cfs": {"ratio": 0.5, "engine": "hf", "gen_seed": 1},
    "finetune": {
        "datasets": ["demo-music"],
        "lrs": [3e-3],
        "methods": ["ft", "cfs"],
        "common": {"max_steps": 6, "batch_size": 4, "ft_val_max_sequences": 16},
        "prepare": {"max_documents": 120},
    },
    "benchmarks": {
        "offline": {"tasks": ["arc_challenge", "winogrande"], "limit": 8, "quant": [None, "nf4"]},
        "finetuned": True,
    },
    "executor": {"kind": "local", "jobs": 2},
}


def test_cfs_and_benchmarks_join_the_chain(tmp_path):
    spec = tmp_path / "chain.yaml"
    spec.write_text(yaml.safe_dump(STUDY))
    out = tmp_path / "out"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "olmo_sam.cli", "study", "run", str(spec), "--out", str(out)],
        capture_output=True,
        text=True,
        env=env,
        timeout=1500,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]

    from olmo_sam.finetune.data import read_meta
    from olmo_sam.finetune.records import ResultStore

    recs = ResultStore(out / "finetune" / "sam-anneal_demo-music" / "results.jsonl").records()
    by_method = {r.method: r for r in recs}
    assert set(by_method) == {"ft", "cfs"}
    ft, cfs = by_method["ft"], by_method["cfs"]
    assert ft.dataset == cfs.dataset == "demo-music"  # the same task's learning-forgetting set
    assert ft.steps == cfs.steps == 6  # gradient steps held equal ([CFS] Sec 3)
    assert ft.base_l_pt == cfs.base_l_pt
    assert ft.l_ft != cfs.l_ft  # really trained on different data
    mix = json.loads((out / "cfs" / "sam-anneal_demo-music_cfs" / "done.json").read_text())["result"]["mix_dir"]
    meta = read_meta(mix)
    task = read_meta(json.loads((out / "finetune" / "data_demo-music" / "done.json").read_text())["result"]["dir"])
    assert meta.splits["val"] == task.splits["val"]  # L_FT is measured on the task's validation split
    assert meta.splits["train"]["documents"] > task.splits["train"]["documents"]  # samples mixed in

    bench = json.loads((out / "benchmarks" / "sam-anneal" / "done.json").read_text())["result"]
    for tag in ("bf16", "nf4"):
        tasks = {r["task"]: r for r in bench[tag]}
        assert set(tasks) == {"arc_challenge", "winogrande"}
        for r in tasks.values():
            assert 0.0 <= r["score"] <= 100.0 and r["num_instances"] > 0
    tuned = json.loads((out / "benchmarks" / "sam-anneal_demo-music" / "done.json").read_text())["result"]
    assert tuned["run_id"] in {ft.run_id, cfs.run_id} and tuned["l_ft"] == min(ft.l_ft, cfs.l_ft)
    assert {r["task"] for r in tuned["bf16"]} == {"arc_challenge", "winogrande"}
    summary = json.loads((out / "analysis" / "summary.json").read_text())
    assert summary["benchmarks"]["rows"] and summary["finetune"]["runs"] == 2
    averages = {(a["model"], a["precision"]): a for a in summary["benchmarks"]["averages"]}
    assert set(averages) == {(m, p) for m in ("sam-anneal", "sam-anneal:demo-music") for p in ("bf16", "nf4")}
    assert averages[("sam-anneal", "bf16")]["drop_from_base"] == 0.0
    assert "## Benchmarks" in (out / "report" / "report.md").read_text()

    # a fine-tuning job re-run (--rerun) keeps no record of runs it no longer plans (they were
    # pooled with the new ones into the analysis); its finished runs are recovered, not redone
    store = out / "finetune" / "sam-anneal_demo-music" / "results.jsonl"
    stale = json.loads(store.read_text().splitlines()[0])
    store.write_text(store.read_text() + json.dumps({**stale, "run_id": "a-run-of-other-settings"}) + "\n")
    # ... and redoes a run made on its data as they were prepared before (a re-run after the data
    # were prepared again with other settings: its record and its run directory carry the old
    # data digest), where a sweep's --out would refuse it
    records = [json.loads(line) for line in store.read_text().splitlines()]
    store.write_text(
        "".join(json.dumps({**r, "data_digest": "0ld"} if r["run_id"] == ft.run_id else r) + "\n" for r in records)
    )
    run_spec_file = store.parent / "runs" / ft.run_id / "spec.json"
    run_spec_file.write_text(json.dumps({**json.loads(run_spec_file.read_text()), "data_digest": "0ld"}))
    proc = subprocess.run(
        [sys.executable, "-m", "olmo_sam.cli", "study", "run", str(spec), "--out", str(out), "--rerun",
         "--stages", "finetune"],
        capture_output=True, text=True, env=env, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    assert {r.run_id for r in ResultStore(store).records()} == {ft.run_id, cfs.run_id}
    redone = {r.run_id: r for r in ResultStore(store).records()}[ft.run_id]
    assert redone.data_digest not in ("", "0ld") and redone.l_ft == pytest.approx(ft.l_ft, rel=1e-5)
    assert json.loads((out / "analysis" / "summary.json").read_text())["finetune"]["runs"] == 2
