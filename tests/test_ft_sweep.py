"""Sweeps: a real tiny sweep where fine-tuning on another distribution learns and forgets; a
sweep SIGKILLed mid-run and re-run (complete, no duplicates, same numbers); bad input."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner
from conftest import REPO, VOCAB
from ft_helpers import kill_sweep_mid_run, write_task
from olmo_core.exceptions import OLMoConfigurationError

from olmo_sam.checkpoints import load_transformer
from olmo_sam.evals.lm_loss import lm_loss
from olmo_sam.finetune.data import split_paths
from olmo_sam.finetune.engine import FTConfig, plan_run
from olmo_sam.finetune.records import ResultStore
from olmo_sam.finetune.sweep import (
    SweepSpec,
    expand,
    parse_lrs,
    run_sweep,
    worker_command,
)

LRS = [1e-3, 3e-3]


@pytest.fixture(scope="module")
def task(tmp_path_factory):
    return write_task(tmp_path_factory.mktemp("sweep_task") / "task")


def _common(tiny_corpus):
    return dict(batch_size=8, pt_val=[str(tiny_corpus.val)], pt_val_max_sequences=16)


@pytest.fixture(scope="module")
def reference_sweep(tiny_checkpoint, tiny_corpus, task, tmp_path_factory):
    out = tmp_path_factory.mktemp("sweep_ref")
    spec = SweepSpec(
        bases=[str(tiny_checkpoint)],
        base_labels=["adamw"],
        datasets=[str(task)],
        lrs=LRS,
        methods=["ft", "wiseft"],
        wise_alphas=[0.5],
        common=_common(tiny_corpus),
    )
    return spec, out, run_sweep(spec, out, jobs=1, progress=False)


def test_sweep_learns_and_forgets(reference_sweep, tiny_checkpoint, tiny_corpus, task):
    spec, out, result = reference_sweep
    assert (result.total, result.ran, result.failed) == (2, 2, [])
    recs = {(r.method, r.lr): r for r in ResultStore(out / "results.jsonl").records()}
    assert set(recs) == {("ft", lr) for lr in LRS} | {("wiseft", lr) for lr in LRS}
    # the base model's own losses, computed here directly
    base, _ = load_transformer(tiny_checkpoint)
    tokens, mask = split_paths(task, "val")
    base_ft = lm_loss(base, [tokens], mask_paths=[mask], seq_len=64, vocab_size=VOCAB).loss
    base_pt = lm_loss(base, [tiny_corpus.val], seq_len=64, vocab_size=VOCAB, max_sequences=16).loss
    for lr in LRS:
        r = recs[("ft", lr)]
        assert r.base_l_pt == pytest.approx(base_pt, rel=1e-6)
        assert r.l_ft < base_ft - 1.0  # learning
        assert r.l_pt > base_pt + 0.5  # forgetting, observed
        assert (
            r.steps
            == plan_run(
                FTConfig(base=str(tiny_checkpoint), data=str(task), lr=lr, **_common(tiny_corpus)).resolved()
            ).steps
        )
        assert r.tokens == r.steps * 8 * 64 and r.base_label == "adamw" and r.hparams["lr"] == lr
        w = recs[("wiseft", lr)]
        assert r.l_ft < w.l_ft < base_ft and base_pt < w.l_pt < r.l_pt
    # a larger LR learns more and forgets more
    lo, hi = recs[("ft", LRS[0])], recs[("ft", LRS[1])]
    assert hi.l_ft < lo.l_ft and hi.l_pt > lo.l_pt
    # re-running is a no-op
    lines = (out / "results.jsonl").read_text()
    again = run_sweep(spec, out, jobs=1, progress=False)
    assert (again.already_done, again.ran) == (2, 0) and (out / "results.jsonl").read_text() == lines


def _children(pid: int):
    kids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            kids.append(int(stat.parent.name))
    return kids


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.slow
def test_sweep_sigkilled_mid_run_resumes_without_loss_or_duplicates(
    reference_sweep, tiny_checkpoint, tiny_corpus, task, tmp_path
):
    _, _, ref = reference_sweep
    out = tmp_path / "sweep"
    lrs = LRS + [2e-3, 5e-4]
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
        "--pt-val",
        str(tiny_corpus.val),
        "--pt-val-max-sequences",
        "16",
        "--out",
        str(out),
        "--jobs",
        "2",
        "--no-progress",
        "--engine",
        "trainer",  # one run per worker (the batched engine's resume: tests/test_ft_batched.py)
    ]
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    workers = kill_sweep_mid_run(cmd, out, tmp_path / "first.log", REPO, before_kill=_children)
    # the worker processes die with the sweep
    deadline = time.monotonic() + 30
    while any(_alive(p) for p in workers) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert workers and not any(_alive(p) for p in workers)
    done_before = {r.run_id for r in ResultStore(out / "results.jsonl").records()}
    assert 1 <= len(done_before) < len(lrs)

    second = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    lines = [ln for ln in (out / "results.jsonl").read_text().splitlines() if ln.strip()]
    ids = []
    for ln in lines:
        try:
            ids.append(json.loads(ln)["run_id"])
        except json.JSONDecodeError:
            pass  # a line torn by the kill; ResultStore skips it
    assert len(ids) == len(set(ids)) == len(lrs)
    recs = {r.lr: r for r in ResultStore(out / "results.jsonl").records()}
    assert set(recs) == set(lrs) and done_before <= {r.run_id for r in recs.values()}
    # same numbers as the uninterrupted in-process sweep (same configs, same run ids)
    for r in ref.records:
        if r.method == "ft":
            assert recs[r.lr].run_id == r.run_id
            assert recs[r.lr].l_ft == pytest.approx(r.l_ft, rel=1e-6) and recs[r.lr].l_pt == pytest.approx(
                r.l_pt, rel=1e-6
            )


def test_bad_input(tiny_checkpoint, tiny_corpus, task, tmp_path):
    common = _common(tiny_corpus)
    with pytest.raises(OLMoConfigurationError, match="LR grid is empty"):
        parse_lrs(" , ")
    with pytest.raises(OLMoConfigurationError, match="neither a preset"):
        parse_lrs("table9")
    assert parse_lrs("table7")[0] == 1e-6 and len(parse_lrs("table3")) == 20
    with pytest.raises(OLMoConfigurationError, match="LR grid is empty"):
        expand(SweepSpec(bases=[str(tiny_checkpoint)], datasets=[str(task)], lrs=[], common=common))
    with pytest.raises(OLMoConfigurationError, match="checkpoint not found: /no/such/ckpt"):
        FTConfig(base="/no/such/ckpt", data=str(task), lr=1e-3, **common).resolved()
    with pytest.raises(OLMoConfigurationError, match="not a prepared fine-tuning dataset"):
        FTConfig(base=str(tiny_checkpoint), data=str(tmp_path), lr=1e-3, **common).resolved()
    with pytest.raises(OLMoConfigurationError, match=r"method: must be one of \['ft', .*got 'sam' \(WiSE-FT"):
        FTConfig(base=str(tiny_checkpoint), data=str(task), lr=1e-3, method="sam", **common).resolved()
    with pytest.raises(OLMoConfigurationError, match="'ewc_lambda' is set but method is 'ft'"):
        FTConfig(base=str(tiny_checkpoint), data=str(task), lr=1e-3, ewc_lambda=1.0, **common).resolved()
    with pytest.raises(OLMoConfigurationError, match="learning_rate: unknown setting"):
        FTConfig.from_dict(dict(base="b", data="d", lr=1.0, learning_rate=2.0))
    small = write_task(tmp_path / "small", n_train=10, n_val=4)
    with pytest.raises(OLMoConfigurationError, match="not one batch"):
        plan_run(FTConfig(base=str(tiny_checkpoint), data=str(small), lr=1e-3, **common).resolved())
    # the CLI turns these into usage errors naming the problem
    res = CliRunner().invoke(
        __import__("olmo_sam.cli", fromlist=["main"]).main,
        ["sweep", "--base", "/no/such/ckpt", "--data", str(task), "--lrs", "1e-3", "--out", str(tmp_path / "s")],
    )
    assert res.exit_code == 1 and "checkpoint not found: /no/such/ckpt" in res.output
    res = CliRunner().invoke(
        __import__("olmo_sam.cli", fromlist=["main"]).main,
        ["sweep", "--base", str(tiny_checkpoint), "--data", str(task), "--lrs", "", "--out", str(tmp_path / "s")],
    )
    assert res.exit_code == 1 and "LR grid is empty" in res.output
    # torchrun launches
    cmd = worker_command("/r/worker.json", "torchrun", 8)
    assert cmd[1:] == [
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc-per-node=8",
        "-m",
        "olmo_sam.finetune.worker",
        "/r/worker.json",
    ]
    spec = SweepSpec(bases=[str(tiny_checkpoint)], datasets=[str(task)], lrs=[1e-3], common=common)
    with pytest.raises(OLMoConfigurationError, match="needs data parallelism"):
        run_sweep(spec, tmp_path / "t", launcher="torchrun", nproc_per_node=2)
    # options the local launcher would ignore, and no workers at all, are errors
    main = __import__("olmo_sam.cli", fromlist=["main"]).main
    base_args = [
        "sweep",
        "--base",
        str(tiny_checkpoint),
        "--data",
        str(task),
        "--lrs",
        "1e-3",
        "--out",
        str(tmp_path / "s"),
    ]
    for extra, message, code in [
        (
            ["--nproc-per-node", "2"],
            "--nproc-per-node 2: the local launcher runs each run in one process and would "
            "ignore it; add --executor torchrun",
            1,
        ),
        (["--dp", "ddp"], "--dp ddp (dp): data parallelism needs several processes", 1),
        (["--jobs", "0"], "Invalid value for '--jobs': 0 is not in the range x>=1", 2),
        (["--jobs", "-1"], "Invalid value for '--jobs': -1 is not in the range x>=1", 2),
    ]:
        res = CliRunner().invoke(main, base_args + extra)
        assert res.exit_code == code and message in " ".join(res.output.split()), res.output


def test_step_rule_one_epoch_or_budget(tiny_checkpoint, tiny_corpus, task, tmp_path):
    common = _common(tiny_corpus)
    tokens = 600 * 32  # write_task: 600 training documents of 32 tokens
    cfg = FTConfig(base=str(tiny_checkpoint), data=str(task), lr=1e-3, token_budget=None, **common).resolved()
    assert cfg.seq_len == 64  # from the checkpoint
    assert plan_run(cfg).steps == (tokens // 64) // 8
    budget = FTConfig(base=str(tiny_checkpoint), data=str(task), lr=1e-3, token_budget=10 * 8 * 64 + 5, **common)
    assert plan_run(budget.resolved()).steps == 10
    small = write_task(tmp_path / "small", n_train=100, n_val=4)
    epoch = FTConfig(base=str(tiny_checkpoint), data=str(task), lr=1e-3, epoch_data=str(small), **common).resolved()
    assert plan_run(epoch).steps == (100 * 32 // 64) // 8
    assert (
        FTConfig(base=str(tiny_checkpoint), data=str(task), lr=1e-3, max_steps=3, **common).resolved().run_id
        != cfg.run_id
    )
    # labels do not change the run id; the recipe does
    labelled = FTConfig(base=str(tiny_checkpoint), data=str(task), lr=1e-3, token_budget=None, base_label="x", **common)
    assert labelled.resolved().run_id == cfg.run_id


def test_torn_last_result_line_warns_and_the_run_is_redone(reference_sweep, tmp_path, caplog):
    """A results.jsonl whose last line was cut off mid-write: reading it warns with the count and
    the line, and the sweep runs that run again (its run directory is gone too), ending with the
    same records as before."""
    import logging

    spec, ref_out, ref = reference_sweep
    out = tmp_path / "sweep"
    shutil.copytree(ref_out, out)
    lines = (out / "results.jsonl").read_text().splitlines(keepends=True)
    last = json.loads(lines[-1])
    (out / "results.jsonl").write_text("".join(lines[:-1]) + lines[-1][: len(lines[-1]) // 2])
    victim = next(c for c in expand(spec) if last["run_id"] in c.expected_run_ids())
    shutil.rmtree(out / "runs" / victim.run_id)
    with caplog.at_level(logging.WARNING, logger="olmo_sam.finetune.records"):
        assert last["run_id"] not in ResultStore(out / "results.jsonl").done_ids()
    warning = " ".join(r.getMessage() for r in caplog.records)
    assert f"skipped 1 unreadable line(s) (first: line {len(lines)}:" in warning and "redoes them" in warning

    again = run_sweep(spec, out, jobs=1, progress=False)
    assert (again.ran, again.failed) == (1, [])
    recs = {r.run_id: r for r in ResultStore(out / "results.jsonl").records()}
    assert set(recs) == {r.run_id for r in ref.records}
    assert recs[last["run_id"]].l_ft == pytest.approx(last["l_ft"], rel=1e-6)
    assert recs[last["run_id"]].l_pt == pytest.approx(last["l_pt"], rel=1e-6)


def test_other_base_labels_for_a_finished_sweep_are_refused(
    reference_sweep, tiny_checkpoint, tiny_corpus, task, tmp_path
):
    """A finished sweep re-run with other --base-label values into the same --out: the runs count
    as done (the label is not part of a run's id), so the results kept the old labels while the
    dry run listed the new ones. Both are refused now; the same label still resumes."""
    from olmo_sam.cli import main

    _, ref_out, _ = reference_sweep
    out = tmp_path / "sweep"
    shutil.copytree(ref_out, out)
    args = ["sweep", "--base", str(tiny_checkpoint), "--data", str(task), "--lrs", ",".join(map(str, LRS))]
    args += ["--methods", "ft,wiseft", "--wise-alphas", "0.5", "--batch-size", "8", "--pt-val", str(tiny_corpus.val)]
    args += ["--pt-val-max-sequences", "16", "--out", str(out), "--jobs", "1", "--no-progress"]
    before = (out / "results.jsonl").read_text()
    for label, dry in [(["--base-label", "sam"], ["--dry-run"]), (["--base-label", "sam"], []), ([], ["--dry-run"])]:
        res = CliRunner().invoke(main, args + label + dry)
        named = label[1] if label else tiny_checkpoint.parent.name  # (no label: the run directory's name)
        assert res.exit_code == 1, res.output
        assert f"would be filed under the label '{named}', but" in res.output, res.output
        assert "files its results under 'adamw': give --base-label adamw for it" in res.output, res.output
    assert (out / "results.jsonl").read_text() == before
    res = CliRunner().invoke(main, args + ["--base-label", "adamw", "--dry-run"])
    assert res.exit_code == 0 and f"{len(LRS)} runs: {len(LRS)} done, 0 pending" in res.output, res.output


def test_results_of_a_dataset_prepared_again_differently_are_not_counted_as_done(
    tiny_checkpoint, tiny_corpus, tmp_path
):
    """A sweep, then its dataset prepared again in the same directory with other settings (here:
    fewer training documents), then the same sweep: its runs counted as done (the run id names
    the dataset's path, not its contents) and the new runs would be pooled with the old ones.
    Now the sweep (and its dry run) and ``finetune run --store`` refuse, naming the run and the
    dataset; the dataset prepared as it was resumes."""
    from olmo_sam.cli import main

    data = write_task(tmp_path / "task", n_train=120)
    out = tmp_path / "sweep"
    args = ["sweep", "--base", str(tiny_checkpoint), "--base-label", "adamw", "--data", str(data), "--lrs", "1e-3"]
    args += ["--batch-size", "8", "--max-steps", "2", "--pt-val", str(tiny_corpus.val), "--pt-val-max-sequences", "8"]
    args += ["--out", str(out), "--jobs", "1", "--no-progress"]
    res = CliRunner().invoke(main, args)
    assert res.exit_code == 0, res.output
    before = (out / "results.jsonl").read_text()
    (run_id,) = [json.loads(line)["run_id"] for line in before.splitlines()]
    write_task(tmp_path / "task", n_train=100)  # prepared again, with other settings
    single = ["finetune", "run", "--base", str(tiny_checkpoint), "--base-label", "adamw", "--data", str(data)]
    single += ["--lr", "1e-3", "--batch-size", "8", "--max-steps", "2", "--pt-val", str(tiny_corpus.val)]
    single += ["--pt-val-max-sequences", "8", "--out", str(tmp_path / "one"), "--store", str(out / "results.jsonl")]
    for cmd in (args + ["--dry-run"], args, single):
        res = CliRunner().invoke(main, cmd)
        assert res.exit_code == 1, res.output
        assert f"holds run {run_id} made on {data} as it was prepared before" in res.output, res.output
    assert (out / "results.jsonl").read_text() == before and not (tmp_path / "one").exists()
    write_task(tmp_path / "task", n_train=120)  # as it was: done
    res = CliRunner().invoke(main, args + ["--dry-run"])
    assert res.exit_code == 0 and "1 runs: 1 done, 0 pending" in res.output, res.output
    # a finished run directory whose record never reached results.jsonl is recovered only if it
    # was made on the data as they are now (its spec.json records the digest): otherwise redone
    write_task(tmp_path / "task", n_train=100)
    (out / "results.jsonl").unlink()
    res = CliRunner().invoke(main, args)
    assert res.exit_code == 0 and "0 recovered, 1 ran" in res.output, res.output
    (rec,) = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert rec["data_digest"] != json.loads(before)["data_digest"]
