"""The GPU check (scripts/gpu-check.sh) in its CPU dry run, and the wheel plan of gpu-wheels.sh.

The dry run exercises every section's code path on CPU (the real train module, OLMo-core's
Trainer with FSDP over gloo, bitsandbytes' CPU kernels) and the runner's budgets and report; the
GPU run itself has to happen on a GPU machine (docs/gpu-check.md).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from olmo_sam.output import _cell
from olmo_sam_tools.gpucheck import runner, wheels

REPO = Path(__file__).resolve().parents[1]
STDLIB = set(sys.stdlib_module_names)


def _env():
    return {**os.environ, "PYTHON": sys.executable, "OMP_NUM_THREADS": "1"}


def _probe_wheel(folder: Path) -> Path:
    """A minimal valid pure-Python wheel of a distribution nobody has installed."""
    name = "gpucheck_probe_pkg"
    whl = folder / f"{name}-1.0-py3-none-any.whl"
    info = f"{name}-1.0.dist-info"
    files = {
        f"{name}/__init__.py": "VALUE = 42\n",
        f"{info}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\n",
        f"{info}/WHEEL": "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    record = "".join(f"{n},,\n" for n in files) + f"{info}/RECORD,,\n"
    with zipfile.ZipFile(whl, "w") as z:
        for n, text in files.items():
            z.writestr(n, text)
        z.writestr(f"{info}/RECORD", record)
    return whl


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("gpu_check")
    wheel_dir = tmp_path_factory.mktemp("wheels")
    _probe_wheel(wheel_dir)
    (wheel_dir / "olmo_sam-0.1.0-py3-none-any.whl").write_bytes(b"not a zip: never installed, the checkout runs")
    (wheel_dir / "numpy-1.0-py3-none-any.whl").write_bytes(b"not a zip: numpy is installed already")
    # about 30 s on an idle 2-core machine; the budget leaves room for a loaded CI machine
    cmd = [
        "bash",
        "scripts/gpu-check.sh",
        "--cpu-dry-run",
        "--out",
        str(out),
        "--budget",
        "400",
        "--wheels",
        str(wheel_dir),
    ]
    site = tmp_path_factory.mktemp("site")
    proc = subprocess.run(
        cmd, cwd=REPO, env={**_env(), "GPU_CHECK_SITE": str(site)}, capture_output=True, text=True, timeout=450
    )
    return out, proc, site


def test_dry_run_passes_every_section(dry_run):
    out, proc, site = dry_run
    report = json.loads((out / "gpu-check.json").read_text())
    assert proc.returncode == 0, (proc.stdout[-2000:], proc.stderr[-3000:])
    assert report["dry_run"] is True and report["ok"] is True
    secs = report["sections"]
    assert list(secs) == ["environment", "sam_cuda", "fsdp_bf16", "bnb", "cost", "finetune_batched"]
    for name, sec in secs.items():
        assert sec["status"] == "ok", (name, sec["errors"])
        assert all(c["passed"] for c in sec["checks"]), (name, sec["checks"])
    assert report["elapsed_s"] < report["budget_s"]
    # the output folder holds results only (scratch token files and trainer dirs went elsewhere)
    assert sum(f.stat().st_size for f in out.rglob("*") if f.is_file()) < 2 * 2**20

    # SAM and ASAM steps of the real train module agree with the independent reference
    for label in ("sam", "asam"):
        r = secs["sam_cuda"]["results"][label]
        assert r["device"] == "cpu"
        assert max(r["max_loss_error"], r["max_perturbed_loss_error"], r["max_weight_error"]) < 1e-5
    fsdp = secs["fsdp_bf16"]["results"]["fsdp_bf16"]
    assert (fsdp["backend"], fsdp["param_dtype"]) == ("gloo", "bfloat16")
    assert len(fsdp["losses"]) == fsdp["steps"] and fsdp["losses"][-1] < fsdp["losses"][0]

    q = secs["bnb"]["results"]
    assert q["nf4"]["loss_increase"] > 0 and q["nf4"]["mismatched_4bit_weights"] == 0
    assert q["nf4"]["blocksize"] == 32  # the CPU kernels' limit on the 32-wide dry-run model
    assert q["int8"]["max_error_ratio"] <= 1.0 + 1e-3
    assert q["int8"]["quantized_loss"] != q["int8"]["base_loss"]

    cost = secs["cost"]["results"]
    micro = cost["micro"]
    assert micro["sam_step_ratio"] > 1.0  # two forward-backward passes
    assert micro["flops_per_token"] > 6 * (micro["params"] - 256 * 64)  # 6N (no embedding) + attention
    assert micro["switch_sam_steps"] == 2 and micro["switch_run_ratio"] > 0
    assert micro["adamw_peak_gib"] is None and "adamw_mfu" not in micro

    # the LR grid batched vs one run at a time (the GPU's K = 8 x 20M, here 2 LRs of micro on CPU)
    from olmo_sam_tools.gpucheck.finetune import DRY_RUN_SIZES

    ft = secs["finetune_batched"]["results"]
    assert (ft["settings"]["size"], ft["settings"]["device"], ft["settings"]["k"]) == (
        "micro",
        "cpu",
        len(DRY_RUN_SIZES.lrs),
    )
    assert ft["batched"]["runs"] == ft["in_memory"]["runs"] == len(DRY_RUN_SIZES.lrs)
    assert (
        ft["batched"]["tokens"]
        == ft["in_memory"]["tokens"]
        == len(DRY_RUN_SIZES.lrs) * DRY_RUN_SIZES.steps * DRY_RUN_SIZES.batch * DRY_RUN_SIZES.seq
    )
    assert ft["speedup_batched_vs_sequential"] == pytest.approx(ft["in_memory"]["wall_s"] / ft["batched"]["wall_s"])
    assert ft["pure_training"]["tokens_per_s"] > 0 and 0 < ft["batched"]["fraction_of_pure_training"]
    # the same runs: every slice's L_FT is its sequential run's (fp32 CPU), and the LRs do differ
    assert len(ft["l_ft"]) == len(DRY_RUN_SIZES.lrs)
    assert ft["max_abs_l_ft_diff"] <= 1e-5 and ft["min_l_ft_gap_between_lrs"] > 1e-3
    assert [c["passed"] for c in secs["finetune_batched"]["checks"]] == [True, True]
    skipped = {name: {s["what"] for s in sec["skipped"]} for name, sec in secs.items()}
    assert skipped == {
        "environment": set(),
        "sam_cuda": {"CUDA"},
        "fsdp_bf16": {"NCCL"},
        "bnb": {"CUDA kernels"},
        "cost": {"MFU", "peak memory"},
        "finetune_batched": set(),
    }


def test_markdown_matches_json(dry_run):
    out, _, _ = dry_run
    report = json.loads((out / "gpu-check.json").read_text())
    md = (out / "gpu-check.md").read_text()
    assert md.startswith("# GPU check: CPU dry run")
    n_checks = sum(len(s["checks"]) for s in report["sections"].values())
    check_rows = [
        ln for ln in md.split("## Checks")[1].split("##")[0].splitlines() if ln.startswith("| ") and "---" not in ln
    ]
    assert len(check_rows) == n_checks + 1  # + the header
    micro = report["sections"]["cost"]["results"]["micro"]
    row = next(ln for ln in md.splitlines() if ln.startswith("| micro |"))
    assert f"| {_cell(micro['sam_step_ratio'])} |" in row and f"| {_cell(micro['switch_run_ratio'])} |" in row
    nf4 = report["sections"]["bnb"]["results"]["nf4"]
    assert f"| {_cell(nf4['loss_increase'])} |" in next(ln for ln in md.splitlines() if ln.startswith("| nf4 |"))
    assert "- cost: MFU: CPU dry run" in md
    ft = report["sections"]["finetune_batched"]["results"]
    assert "## Fine-tuning: batched LR grid vs one run at a time" in md
    row = next(ln for ln in md.splitlines() if ln.startswith("| sequential (in memory) |"))
    assert f"| {_cell(ft['in_memory']['wall_s'])} |" in row
    assert f"Speed-up batched over sequential: {ft['speedup_batched_vs_sequential']:.2f}x" in md


def test_dry_run_imports_are_covered_by_the_wheels(dry_run):
    """Every distribution the check imports is on the device already or in the wheel plan."""
    out, _, _ = dry_run
    imported = set(json.loads((out / "gpu-check.json").read_text())["imported_distributions"])
    from packaging.utils import canonicalize_name

    planned = {it.name for it in wheels.plan() if it.included is not False}
    covered = planned | wheels.device_provided() | set(wheels.OPTIONAL_IMPORTS)
    missing = {canonicalize_name(d) for d in imported} - covered - STDLIB
    assert "ai2-olmo-core" in {canonicalize_name(d) for d in imported}
    assert not missing, f"imported by the check but neither on the device nor in the wheels: {missing}"


def test_killed_worker_still_gives_a_report(tmp_path, monkeypatch):
    # a worker that hangs (a stuck CUDA call, a deadlocked collective) is killed at the 6 s deadline
    # and the report still says what happened; the hang is a stand-in process, so the outcome does
    # not depend on how fast this machine runs the real cost section
    monkeypatch.setattr(
        runner, "_worker_command", lambda *a, **k: [sys.executable, "-c", "import time; time.sleep(120)"]
    )
    report = runner.run_check(tmp_path, dry_run=True, budget=runner.REPORT_MARGIN_S + 6, sections=["cost"])
    assert report["budgets"] == {"cost": round(runner.DRY_RUN_BUDGETS["cost"] * 11 / 120, 1)}  # scaled
    assert report["ok"] is False
    assert report["workers"][0]["timed_out"] is True and report["workers"][0]["wall_s"] < 15
    sec = report["sections"]["cost"]
    assert sec["status"] in ("not run", "timeout")
    assert "killed at its time limit" in sec["errors"][-1]["error"]
    assert "## Errors" in (tmp_path / "gpu-check.md").read_text()


def test_gpu_budgets_cover_every_section_within_the_total():
    # every section runs in exactly one GPU worker, and the budgets leave start-up and report time
    assert [n for g in runner.GPU_GROUPS for n in g] == list(runner.SECTIONS)
    assert set(runner.GPU_BUDGETS) == set(runner.DRY_RUN_BUDGETS) == set(runner.SECTIONS)
    assert sum(runner.GPU_BUDGETS.values()) <= runner.DEFAULT_BUDGET_S["gpu"] - 30


def test_peak_flops_by_device_name():
    from olmo_sam_tools.gpucheck.common import peak_bf16_flops

    assert peak_bf16_flops("NVIDIA H200")[0] == 989e12
    assert peak_bf16_flops("NVIDIA H100 80GB HBM3")[0] == 989e12
    assert peak_bf16_flops("NVIDIA H100 PCIe")[0] == 756e12
    peak, why = peak_bf16_flops("NVIDIA A100-SXM4-80GB")
    assert peak is None and "MFU not computed" in why


def test_bad_arguments():
    with pytest.raises(SystemExit) as e:
        runner.main(["--out", "x", "--cpu-dry-run", "--budget", "3"])
    assert e.value.code == 2
    with pytest.raises(SystemExit):
        runner.main(["--out", "x", "--cpu-dry-run", "--sections", "cost,nope"])
    proc = subprocess.run(
        ["bash", "scripts/gpu-check.sh", "--cpu-dry-run", "--bogus"],
        cwd=REPO,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert proc.returncode == 2 and "unknown argument '--bogus'" in proc.stderr


def test_wheels_list_plans_without_downloading(tmp_path, capsys, monkeypatch):
    # what `bash scripts/gpu-wheels.sh --list` runs (in this process: no second OLMo-core import)
    assert "-m olmo_sam_tools.gpucheck.wheels" in (REPO / "scripts/gpu-wheels.sh").read_text()
    monkeypatch.setattr(subprocess, "run", None)  # --list must not call pip
    assert wheels.main(["--list", "--dest", str(tmp_path / "w")]) == 0
    text = capsys.readouterr().out
    assert "budget 60 MiB" in text and "CPython 3.12" in text
    assert "required ai2-olmo-core==3.0.0" in text and "optional bitsandbytes==0.50.2" in text
    assert "left out: declared by ai2-olmo-core" in text  # pandas
    for provided in ("torch==", "transformers==", "numpy==", "accelerate=="):
        assert provided not in text
    assert not (tmp_path / "w").exists()


def test_budget_keeps_required_wheels_first():
    mib = 2**20
    items = [
        wheels.WheelItem("olmo-sam", None, True, "", size=1 * mib),
        wheels.WheelItem("ai2-olmo-core", "3.0.0", True, "", size=2 * mib),
        wheels.WheelItem("bitsandbytes", "0.50.2", False, "", size=20 * mib),
        wheels.WheelItem("botocore", "1", True, "", size=16 * mib),
        wheels.WheelItem("tiny-optional", "1", False, "", size=1 * mib),
    ]
    wheels.fit_budget(items, 30 * mib)
    got = {it.name: it.included for it in items}
    # required ones take 19 MiB; bitsandbytes (20) does not fit the remaining 11, the small one does
    assert got == {
        "olmo-sam": True,
        "ai2-olmo-core": True,
        "botocore": True,
        "bitsandbytes": False,
        "tiny-optional": True,
    }
    assert "does not fit the 30 MiB budget (19.0 MiB used)" in items[2].note


def test_slim_wheel_drops_files_and_record_lines(tmp_path):
    whl = tmp_path / "pkg-1.0-py3-none-any.whl"
    files = {"pkg/__init__.py": b"x = 1\n", "pkg/libpkg_cuda118.so": b"\0" * 100, "pkg/libpkg_cuda128.so": b"\1" * 100}
    record = "".join(f"{n},sha256=abc,{len(b)}\n" for n, b in files.items()) + "pkg-1.0.dist-info/RECORD,,\n"
    with zipfile.ZipFile(whl, "w") as z:
        for n, b in files.items():
            z.writestr(n, b)
        z.writestr("pkg-1.0.dist-info/RECORD", record)
    dropped = wheels.slim_wheel(whl, ["pkg/libpkg_cuda118.so"])
    assert dropped == ["pkg/libpkg_cuda118.so"]
    with zipfile.ZipFile(whl) as z:
        names = set(z.namelist())
        rec = z.read("pkg-1.0.dist-info/RECORD").decode()
    assert names == {"pkg/__init__.py", "pkg/libpkg_cuda128.so", "pkg-1.0.dist-info/RECORD"}
    assert "cuda118" not in rec and "pkg/libpkg_cuda128.so" in rec


def test_missing_wheels_are_installed_beside_not_over_the_environment(dry_run):
    out, proc, site = dry_run
    assert "installing 1 wheels" in proc.stdout  # the probe; not numpy (installed), not olmo-sam (the checkout)
    assert (site / "gpucheck_probe_pkg" / "__init__.py").read_text() == "VALUE = 42\n"
    assert not (site / "numpy").exists()
    env = json.loads((out / "gpu-check.json").read_text())["sections"]["environment"]["results"]["environment"]
    assert env["olmo_sam_from"] == str(REPO / "olmo_sam")
