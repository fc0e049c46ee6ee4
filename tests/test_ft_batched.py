"""The batched LR-grid engine against OLMo-core's trainer, run by run: for plain fine-tuning,
replay and a CFS-style mix, every slice of a batched grid ends with the losses (every step) and
the weights of the one-at-a-time trainer run at its LR (1e-5, fp32, CPU), with micro-batching,
warmup + cosine per slice, and gradient clipping active on some slices and not on others. The
records a batched sweep writes equal the trainer sweep's (same run ids and fields), and a batched
sweep killed mid-grid resumes without losing or duplicating a record."""

from __future__ import annotations

import copy
import json
import math
import os
import re
import subprocess
import sys
from dataclasses import asdict, replace

import pytest
import torch
from conftest import REPO
from ft_helpers import kill_sweep_mid_run, write_task

from olmo_sam.checkpoints import load_transformer
from olmo_sam.finetune.batched import grid_units, slices_per_chunk, train_grid
from olmo_sam.finetune.engine import FTConfig, plan_run, run_finetune
from olmo_sam.finetune.records import ResultStore
from olmo_sam.finetune.sweep import SweepSpec, expand, run_sweep
from olmo_sam.train import read_metrics

#: the clip threshold lies inside the grad norms of these runs (each test checks that clipping is
#: active on some slices and steps and not on others)
LRS = [1e-4, 2e-3, 1e-2]
CLIP = 2.4
STEPS = 6


@pytest.fixture(scope="module")
def task(tmp_path_factory):
    return write_task(tmp_path_factory.mktemp("batched_task") / "task", n_train=200, n_val=20)


@pytest.fixture(scope="module")
def mix(tmp_path_factory):
    # a CFS-style mix: another prepared dataset trained for the task's steps, recorded as 'cfs'
    return write_task(tmp_path_factory.mktemp("batched_mix") / "mix", n_train=300, n_val=20, name="mix")


def _cfg(method, lr, base, task, mix, corpus, **kw):
    common = dict(
        base=str(base),
        lr=lr,
        batch_size=8,
        micro_batch_size=4,
        max_steps=STEPS,
        warmup_fraction=0.34,
        max_grad_norm=CLIP,
        pt_val=[str(corpus.val)],
        pt_val_max_sequences=8,
        ft_val_max_sequences=8,
    )
    if method == "cfs":
        return FTConfig(data=str(mix), epoch_data=str(task), record_method="cfs", **common, **kw)
    if method == "replay":
        return FTConfig(
            data=str(task), method="replay", replay_ratio=0.5, replay_data=[str(corpus.train)], **common, **kw
        )
    return FTConfig(data=str(task), **common, **kw)


@pytest.mark.parametrize("method", ["ft", "replay", "cfs"])
def test_each_slice_equals_its_trainer_run(method, tiny_checkpoint, tiny_corpus, task, mix, tmp_path):
    cfgs = [_cfg(method, lr, tiny_checkpoint, task, mix, tiny_corpus).resolved() for lr in LRS]
    cache = tmp_path / "cache"
    slices = train_grid([plan_run(c) for c in cfgs], tmp_path / "grid" / "train", cache)
    clipped = []
    for cfg, got in zip(cfgs, slices):
        run = tmp_path / cfg.run_id
        run_finetune(cfg, run, cache_dir=cache, keep_checkpoint=True)
        ref = read_metrics(run / "train")
        want_model, _ = load_transformer(run / "train" / f"step{STEPS}")
        assert sorted(got.metrics) == [s for s in sorted(ref) if s >= 1] == list(range(1, STEPS + 1))
        for step in range(1, STEPS + 1):
            for key in ("train/CE loss", "optim/total grad norm", "optim/LR (group 0)"):
                assert got.metrics[step][key] == pytest.approx(ref[step][key], rel=1e-5, abs=1e-5), (cfg.lr, step, key)
        want, have = want_model.state_dict(), got.model.state_dict()
        assert want.keys() == have.keys()
        for k in want:
            torch.testing.assert_close(have[k], want[k], rtol=0, atol=1e-5, msg=f"{cfg.lr} {k}")
        # warmup then cosine per slice: the slice's own peak at the end of warmup
        lrs = [ref[s]["optim/LR (group 0)"] for s in range(1, STEPS + 1)]
        assert max(lrs) == pytest.approx(cfg.lr) and lrs[0] < cfg.lr and lrs[-1] < cfg.lr
        clipped.append([ref[s]["optim/total grad norm"] > CLIP for s in range(1, STEPS + 1)])
    # clipping active on some slices and steps, not on others
    flat = [c for row in clipped for c in row]
    assert any(flat) and not all(flat), clipped
    assert len({tuple(row) for row in clipped}) > 1, clipped


def test_grid_units_chunk_by_memory_and_jobs(tiny_checkpoint, tiny_corpus, task, mix, caplog):
    lrs = [1e-4, 3e-4, 1e-3, 3e-3, 1e-2]
    cfgs = [_cfg("ft", lr, tiny_checkpoint, task, mix, tiny_corpus).resolved() for lr in lrs]
    l2 = replace(_cfg("ft", 1e-3, tiny_checkpoint, task, mix, tiny_corpus), method="l2init").resolved()
    caplog.set_level("INFO", logger="olmo_sam.finetune.batched")
    plan = plan_run(cfgs[0])
    per_slice_gb = plan.info.model_config.num_params * 16 / 2**30
    assert slices_per_chunk(plan, 2.5 * per_slice_gb) == 2
    units = grid_units(cfgs + [l2], jobs=1, memory_budget_gb=2.5 * per_slice_gb)
    # 5 LRs in chunks of 2 (the last of 1), l2init alone through the trainer
    assert sorted((e, len(u)) for e, u in units) == [("batched", 1), ("batched", 2), ("batched", 2), ("trainer", 1)]
    assert ("trainer", [l2]) in units
    falls_back = [r.getMessage() for r in caplog.records if "through the OLMo-core trainer" in r.getMessage()]
    assert falls_back == [
        "1 run(s) train one at a time through the OLMo-core trainer: method 'l2init' has no batched engine (it has: ft, replay)"
    ]
    assert sorted(len(u) for _, u in grid_units(cfgs, jobs=2)) == [2, 3]  # two workers share one grid
    assert [len(u) for _, u in grid_units(cfgs, jobs=1)] == [5]
    from olmo_sam.finetune.batched import DEFAULT_MEMORY_BUDGET_GB, default_memory_budget_gb

    assert default_memory_budget_gb() == DEFAULT_MEMORY_BUDGET_GB  # on CPU
    assert slices_per_chunk(plan) == int(DEFAULT_MEMORY_BUDGET_GB * 2**30) // (plan.info.model_config.num_params * 16)
    assert sorted(c.run_id for _, u in units for c in u) == sorted(c.run_id for c in cfgs + [l2])


def _spec(base, task, corpus, lrs):
    return SweepSpec(
        bases=[str(base)],
        base_labels=["adamw"],
        datasets=[str(task)],
        lrs=lrs,
        methods=["ft", "wiseft"],
        wise_alphas=[0.5],
        common=dict(batch_size=8, max_steps=4, pt_val=[str(corpus.val)], pt_val_max_sequences=8),
    )


def test_batched_sweep_writes_the_trainer_sweeps_records(tiny_checkpoint, tiny_corpus, task, tmp_path):
    """Equal records, including a run that diverges (LR 1e37): OLMo-core's trainer stops it at its
    first non-finite training loss, and the batched slice stops there too; both record it with NaN
    losses and the trainer's message (it used to fail the trainer sweep, exit 1, while the batched
    one recorded a NaN result as an ordinary run)."""
    spec = _spec(tiny_checkpoint, task, tiny_corpus, [1e-3, 3e-3, 1e37])
    a = run_sweep(spec, tmp_path / "trainer", jobs=1, progress=False, engine="trainer")
    b = run_sweep(spec, tmp_path / "batched", jobs=2, progress=False, engine="batched")  # two chunks in two workers
    assert (a.ran, b.ran, a.failed, b.failed) == (3, 3, [], [])
    ra = {r.run_id: asdict(r) for r in ResultStore(tmp_path / "trainer" / "results.jsonl").records()}
    rb = {r.run_id: asdict(r) for r in ResultStore(tmp_path / "batched" / "results.jsonl").records()}
    assert ra.keys() == rb.keys() and len(ra) == 6
    for rid in ra:
        x, y = ra[rid], rb[rid]
        assert x.keys() == y.keys() and x["extra"].keys() == y["extra"].keys()
        for k in x:
            if k in ("wall_time_s", "extra"):
                continue
            if isinstance(x[k], float):
                assert y[k] == pytest.approx(x[k], rel=1e-5, nan_ok=True), (rid, k)
            else:
                assert y[k] == x[k], (rid, k)
        ce = x["extra"]["final_train_ce"]  # (None for a run that stopped before its last step)
        assert y["extra"]["final_train_ce"] == (ce if ce is None else pytest.approx(ce, rel=1e-5))
        assert y["extra"].get("diverged") == x["extra"].get("diverged")
    diverged = {rid: x["extra"]["diverged"] for rid, x in ra.items() if "diverged" in x["extra"]}
    assert len(diverged) == 2 and all(x["lr"] == 1e37 for rid, x in ra.items() if rid in diverged), diverged
    assert all(re.fullmatch(r"(nan|inf) loss encountered at step [12]", m) for m in diverged.values()), diverged
    assert all(math.isnan(ra[rid]["l_ft"]) and math.isnan(ra[rid]["l_pt"]) for rid in diverged)
    # the trained models were evaluated in memory: no checkpoint was written or kept
    assert not list((tmp_path / "trainer" / "runs").glob("*/train/step*"))
    assert not list((tmp_path / "batched" / "runs").glob("*/train/step*"))


@pytest.mark.slow
def test_batched_sweep_sigkilled_mid_grid_resumes_without_loss_or_duplicates(
    tiny_checkpoint, tiny_corpus, task, tmp_path
):
    lrs = [5e-4, 1e-3, 2e-3, 3e-3]
    out = tmp_path / "sweep"
    cmd = [
        sys.executable,
        "-m",
        "olmo_sam.cli",
        "sweep",
        "--base",
        str(tiny_checkpoint),
        "--base-label",
        "adamw",
        "--data",
        str(task),
        "--lrs",
        ",".join(map(str, lrs)),
        "--batch-size",
        "8",
        "--max-steps",
        "12",
        "--pt-val",
        str(tiny_corpus.val),
        "--pt-val-max-sequences",
        "8",
        "--out",
        str(out),
        "--jobs",
        "1",
        "--engine",
        "batched",
        "--batch-memory-gb",
        str(2.5 * _slice_gb(tiny_checkpoint, task, tiny_corpus)),
        "--no-progress",
    ]
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    kill_sweep_mid_run(cmd, out, tmp_path / "first.log", REPO)
    done_before = {r.run_id for r in ResultStore(out / "results.jsonl").records()}
    assert len(done_before) == 2  # the first chunk of two

    second = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    ids = [json.loads(ln)["run_id"] for ln in (out / "results.jsonl").read_text().splitlines() if ln.strip()]
    assert len(ids) == len(set(ids)) == len(lrs) and done_before <= set(ids)
    # the same numbers as the uninterrupted trainer runs
    spec = SweepSpec(
        bases=[str(tiny_checkpoint)],
        base_labels=["adamw"],
        datasets=[str(task)],
        lrs=lrs,
        common=dict(batch_size=8, max_steps=12, pt_val=[str(tiny_corpus.val)], pt_val_max_sequences=8),
    )
    recs = {r.run_id: r for r in ResultStore(out / "results.jsonl").records()}
    for cfg in expand(spec)[1::2]:
        (ref,) = run_finetune(cfg, tmp_path / "ref" / cfg.run_id, cache_dir=tmp_path / "ref_cache")
        assert recs[cfg.run_id].l_ft == pytest.approx(ref.l_ft, rel=1e-5) and recs[cfg.run_id].l_pt == pytest.approx(
            ref.l_pt, rel=1e-5
        )


def _slice_gb(base, task, corpus) -> float:
    cfg = FTConfig(base=str(base), data=str(task), lr=1e-3, batch_size=8, pt_val=[str(corpus.val)]).resolved()
    return plan_run(cfg).info.model_config.num_params * 16 / 2**30


def test_finetune_throughput_benchmark_smoke(tmp_path):
    from olmo_sam_tools.bench.finetune_throughput import finetune_throughput

    r = finetune_throughput(lrs=[1e-3, 3e-3], steps=3, batch=8, seq=64, work_dir=str(tmp_path))
    for mode in ("checkpointed", "in_memory", "batched"):
        assert r[mode]["runs"] == 2 and r[mode]["tokens"] == 2 * 3 * 8 * 64 and r[mode]["wall_s"] > 0
    assert r["checkpointed"]["speedup_vs_checkpointed"] == 1.0
    assert r["max_abs_l_ft_diff_batched_vs_in_memory"] < 1e-5  # the same runs, two engines
    assert not list(tmp_path.iterdir())  # its work folder is removed


def test_study_file_chooses_the_engine():
    from olmo_sam.study.plan import build_plan
    from olmo_sam.study.spec import ConfigError, parse_study

    study = {
        "name": "e",
        "data": {"demo": {"vocab_size": 512}},
        "pretrain": {"size": "tiny", "steps": 10, "lr": 1e-3},
        "arms": [{"name": "adamw", "optimizer": "adamw", "schedule": "cosine"}],
        "finetune": {"datasets": ["demo-code"], "lrs": [1e-3], "methods": ["ft"], "common": {"max_steps": 4}},
    }

    def ft_jobs(engine):
        d = copy.deepcopy(study)
        if engine is not None:
            d["finetune"]["engine"] = engine
        jobs = build_plan(parse_study(d)).jobs
        return [j for j in jobs if j.kind == "ft_sweep"]

    assert all("engine" not in j.params for j in ft_jobs(None))  # the default: existing jobs unchanged
    assert all("engine" not in j.params for j in ft_jobs("batched"))
    assert [j.params["engine"] for j in ft_jobs("trainer")] == ["trainer"]
    with pytest.raises(ConfigError, match=r"^finetune\.engine: must be one of \['batched', 'trainer'\], got 'fast'$"):
        parse_study(dict(study, finetune=dict(study["finetune"], engine="fast")))


def test_kept_checkpoints_hold_the_evaluated_weights(tiny_checkpoint, tiny_corpus, task, mix, tmp_path):
    from olmo_sam.evals.lm_loss import lm_loss
    from olmo_sam.finetune.batched import run_grid
    from olmo_sam.finetune.data import split_paths

    cfgs = [
        replace(_cfg("ft", lr, tiny_checkpoint, task, mix, tiny_corpus), max_steps=2).resolved() for lr in (1e-3, 3e-3)
    ]
    outs = [tmp_path / c.run_id for c in cfgs]
    recs = run_grid(cfgs, outs, cache_dir=tmp_path / "cache", keep_checkpoint=True)
    tokens, mask = split_paths(task, "val")
    for cfg, out, (rec,) in zip(cfgs, outs, recs):
        assert rec.extra["checkpoint"] == str(out / "train" / "step2")
        model, _ = load_transformer(rec.extra["checkpoint"])
        l_ft = lm_loss(
            model,
            [tokens],
            mask_paths=[mask],
            seq_len=64,
            vocab_size=256,
            batch_size=cfg.eval_batch_size,
            max_sequences=cfg.ft_val_max_sequences,
        ).loss
        assert l_ft == pytest.approx(rec.l_ft, rel=1e-6)
        assert json.loads((out / "records.json").read_text())[0]["run_id"] == cfg.run_id
    # a second call finds every run's records and trains nothing
    stamps = [(o / "records.json").stat().st_mtime_ns for o in outs] + [
        (o / "train" / "metrics.jsonl").stat().st_mtime_ns for o in outs
    ]
    again = run_grid(cfgs, outs, cache_dir=tmp_path / "cache")
    assert [r[0].l_ft for r in again] == [r[0].l_ft for r in recs]
    assert stamps == [(o / "records.json").stat().st_mtime_ns for o in outs] + [
        (o / "train" / "metrics.jsonl").stat().st_mtime_ns for o in outs
    ]
