"""Benchmarks: one package, reachable as ``olmo-sam bench <name>``; flatness-cost's statistics
and a seconds-long smoke run of it (the full benchmark is not a test)."""

from __future__ import annotations

import json
import logging
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from olmo_sam_tools.bench import bench
from olmo_sam_tools.bench.flatness_cost import (
    FlatnessCostSettings,
    bench_gain_kept_interval,
    bench_seed_interval,
    flatness_cost,
)

ROOT = Path(__file__).resolve().parents[1]


def test_every_benchmark_is_a_bench_subcommand_and_a_launcher():
    assert set(bench.commands) == {
        "sam-overhead",
        "hessian-probe",
        "cfs-generation",
        "flatness-cost",
        "finetune-throughput",
    }
    for name in bench.commands:
        launcher = ROOT / "benchmarks" / f"{name.replace('-', '_')}.py"
        code = [ln for ln in launcher.read_text().splitlines() if ln.strip()]
        assert len(code) <= 4  # docstring, import, if __name__ == "__main__":, call
        assert "olmo_sam_tools.bench." in launcher.read_text(), launcher
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))  # this checkout's olmo_sam
    r = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "hessian_probe.py"), "--help"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
    )
    assert r.returncode == 0 and "--probes" in r.stdout
    assert "--probes" in CliRunner().invoke(bench, ["hessian-probe", "--help"]).output


def test_seed_interval_is_the_student_t_interval():
    x = [1.0, 2.0, 4.0]
    iv = bench_seed_interval(x)
    sd = float(np.std(x, ddof=1))
    assert iv["mean"] == pytest.approx(7 / 3)
    assert iv["hi"] - iv["mean"] == pytest.approx(4.302653 * sd / math.sqrt(3), rel=1e-5)  # t_{0.975,2}


def test_gain_kept_is_paired_by_seed():
    a, s = [10.0, 20.0, 30.0], [8.0, 18.0, 28.0]  # SAM lowers tr(H) by exactly 2 on every seed
    v = [9.0, 19.0, 29.0]  # the variant by exactly 1: half the gain, on every seed
    g = bench_gain_kept_interval(a, v, s, n_boot=500)
    # paired resampling keeps the per-seed structure: the ratio is exactly 0.5 in every resample,
    # although the seeds' tr(H) differ far more than the gains (an unpaired bootstrap would not)
    assert g["mean"] == pytest.approx(0.5) and g["lo"] == pytest.approx(0.5) and g["hi"] == pytest.approx(0.5)
    assert bench_gain_kept_interval(a, a, s)["mean"] == 0.0
    assert bench_gain_kept_interval(a, s, s)["mean"] == 1.0


def test_flatness_cost_smoke(tmp_path):
    s = FlatnessCostSettings(
        tokens_per_param=0.05,
        seeds=2,
        probes=2,
        power_iters=2,
        hessian_sequences=4,
        variants=("adamw", "sam", "msam"),
        bootstrap=100,
    )
    report = flatness_cost(s, tmp_path, jobs=1, progress=False, echo=lambda *_: None)
    rows = {r["variant"]: r for r in report["summary"]["rows"]}
    assert list(rows) == ["adamw", "sam", "msam"]
    assert rows["adamw"]["cost_ratio"]["mean"] == 1.0
    assert rows["sam"]["gain_kept"]["mean"] == pytest.approx(1.0)
    per_seed = rows["sam"]["per_seed"]
    assert [r["ascents"] for r in per_seed] == [per_seed[0]["steps"]] * 2  # SAM every step
    # counted passes: AdamW and MSAM one forward/backward per step, SAM two
    assert [rows[v]["passes_per_step"] for v in ("adamw", "sam", "msam")] == [1.0, 2.0, 1.0]
    # different seeds are different initialisations (shared by the variants)
    assert rows["adamw"]["per_seed"][0]["held_out_loss"] != rows["adamw"]["per_seed"][1]["held_out_loss"]
    saved = json.loads((tmp_path / "flatness_cost.json").read_text())
    assert saved["summary"]["rows"][2]["variant"] == "msam" and saved["runtime_s"] > 0
    assert (tmp_path / "flatness_cost.png").stat().st_size > 1000
    assert "| msam | 1 |" in (tmp_path / "flatness_cost.md").read_text()
    # a re-run with the same settings reuses every finished run
    again = flatness_cost(s, tmp_path, jobs=1, progress=False, echo=lambda *_: None)
    assert again["runtime_s"] < report["runtime_s"]
    assert again["summary"]["rows"][1]["per_seed"] == per_seed


def test_flatness_cost_refuses_bad_options(tmp_path):
    r = CliRunner().invoke(bench, ["flatness-cost", "--out", str(tmp_path), "--n-seeds", "1"])
    assert r.exit_code == 1 and "--n-seeds must be >= 2" in r.output
    r = CliRunner().invoke(bench, ["flatness-cost", "--out", str(tmp_path), "--variants", "adamw,msam"])
    assert r.exit_code == 1 and "must include 'sam'" in r.output
    # the command quiets OLMo-core's log for its runs only: run in-process, it left a process-wide
    # logging.disable behind, which hid every later warning (a later test's sam-anneal warning)
    assert logging.root.manager.disable == logging.NOTSET


def test_gain_kept_refuses_the_bootstrap_below_ten_seeds_fieller_by_hand():
    """3 seeds: Fieller's interval of mean(A - V) / mean(A - S), checked by inverting the paired
    t-test at its bounds (at R = lo or hi the t-statistic of (A - V) - R (A - S) is exactly t_crit)."""
    from scipy.stats import t

    a, s, v = [10.0, 20.0, 30.0], [8.0, 17.5, 28.3], [9.1, 18.6, 29.0]
    g = bench_gain_kept_interval(a, v, s)
    assert g["method"] == "fieller" and "bootstrap refused at 3 seeds" in g["note"]
    x, y = np.subtract(a, v), np.subtract(a, s)
    assert g["mean"] == pytest.approx(x.mean() / y.mean())
    crit = t.ppf(0.975, 2)
    for r in (g["lo"], g["hi"]):
        z = x - r * y
        assert abs(z.mean()) / (z.std(ddof=1) / math.sqrt(3)) == pytest.approx(crit, rel=1e-9)
    assert g["lo"] < g["mean"] < g["hi"]
    # SAM's gain not resolved from zero: unbounded, no interval
    u = bench_gain_kept_interval(a, v, [10.5, 19.0, 30.2])
    assert math.isnan(u["lo"]) and "unbounded" in u["note"]
    # from 10 seeds on, the paired bootstrap
    rng = np.random.default_rng(0)
    a10 = rng.normal(20, 5, 10)
    b = bench_gain_kept_interval(a10, a10 - 1 + rng.normal(0, 0.1, 10), a10 - 2 + rng.normal(0, 0.1, 10), n_boot=500)
    assert b["method"] == "bootstrap" and b["note"] is None and b["lo"] < 0.5 < b["hi"]
