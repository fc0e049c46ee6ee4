"""`olmo-sam demo --quick` end to end: real corpus, real training, every report section with numbers."""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow

SECTIONS = {
    "pretraining": "## Pretraining",
    "finetune": "## Learning-forgetting trade-off (fine-tuning)",
    "quantize": "## Quantization",
    "noise": "## Gaussian weight noise",
    "hessian": "## Sharpness",
}


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo") / "quick"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "olmo_sam.cli", "demo", "--quick", "--out", str(out)],
        capture_output=True,
        text=True,
        env=env,
        timeout=1500,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    return out, proc.stdout


def test_demo_prints_where_the_report_is(demo_run):
    out, stdout = demo_run
    m = re.search(r"^report: (.+report\.html)$", stdout, re.M)
    assert m and os.path.exists(m.group(1))
    assert "Findings of the quick demo (a smoke test: too small to be evidence" in stdout  # --quick says so
    assert "  * Primary hypothesis 'sam-forgets-less' (paired_t)" in stdout


def test_report_has_every_section_with_numbers(demo_run):
    out, _ = demo_run
    summary = json.loads((out / "analysis" / "summary.json").read_text())
    for key in SECTIONS:
        assert summary.get(key), f"analysis has no '{key}' section"
    md = (out / "report" / "report.md").read_text()
    for key, heading in SECTIONS.items():
        assert heading in md, heading
        body = md.split(heading, 1)[1].split("\n## ", 1)[0]
        numbers = [float(x) for x in re.findall(r"\|\s*(-?\d+\.\d+(?:e-?\d+)?)\s*(?=\|)", body)]
        assert numbers and all(math.isfinite(x) for x in numbers), f"{heading}: no numbers"
    html = (out / "report" / "report.html").read_text()
    assert html.count("data:image/png;base64,") >= 5  # self-contained: figures inlined
    # findings are statements about this run's numbers, one per comparison that was measured
    assert summary["findings"] and all("adamw" in f["text"] and f["reference"] == "adamw" for f in summary["findings"])
    for f in summary["findings"]:  # every finding carries its interval fields; claims need an interval
        assert {"estimate", "ci_low", "ci_high", "n_seeds", "significant", "budget_tpp"} <= set(f)
        assert not f["significant"] or (f["ci_low"] > 0 or f["ci_high"] < 0)
        if not f["significant"]:
            assert "no difference resolved at this scale" in f["text"]
    assert summary["interval"]["description"] in (out / "report" / "report.md").read_text()
    # the one pre-registered hypothesis opens the summary and the report
    assert list(summary)[0] == "hypotheses"
    (h,) = summary["hypotheses"]
    assert h["primary"] and h["name"] == "sam-forgets-less" and h["budgets_tpp"] == [16.0]
    assert {"estimate", "ci_low", "ci_high", "p_value", "resolved", "mde"} <= set(h)
    # two seeds, less those matched at the two-LR grid's edge (then no interval, never resolved)
    assert sorted(h["seeds"] + h["grid_edge_seeds"]) == [0, 1] and h["n_seeds"] == len(h["seeds"])
    assert (h["ci_low"] is None) == (h["n_seeds"] < 2) and (h["resolved"] is False or h["n_seeds"] == 2)
    assert md.index("## Pre-registered hypotheses (primary)") < md.index("## Findings")
    pre = {r["unit"]: r for r in summary["pretraining"]["rows"]}
    bases = summary["bases"]
    # the quick study's grid: adamw and sam x 2 budgets x 2 seeds, each base with its metadata
    assert {(b["arm"], b["budget_tpp"], b["seed"]) for b in bases.values()} == {
        (a, t, s) for a in ("adamw", "sam") for t in (4, 16) for s in (0, 1)
    }
    for unit, b in bases.items():
        assert b["tokens"] == b["steps"] * 64 * 128  # whole steps of the quick batch (64 x 128)
        assert b["tpp_non_embedding"] > b["tpp_total"] >= b["budget_tpp"]
        assert b["data_epochs"] > 0 and "demo corpus" in b["data_source"]
        assert (pre[unit]["sam_steps"] > 0) == (b["arm"] == "sam")
    assert summary["quick"] is True


def test_demo_finetuning_really_forgets(demo_run):
    out, _ = demo_run
    from olmo_sam.finetune.records import FTRecord

    recs = [FTRecord.from_dict(json.loads(line)) for line in (out / "analysis" / "finetune_results.jsonl").open()]
    summary = json.loads((out / "analysis" / "summary.json").read_text())
    assert {r.dataset for r in recs} == {"demo-code"}
    assert {r.base_label for r in recs} == set(summary["bases"])  # every base fine-tuned
    # at the largest LR every base forgets: its PT loss rises above the base model's
    top = max(r.lr for r in recs)
    assert all(r.l_pt > r.base_l_pt for r in recs if r.lr == top)


def test_demo_resume_is_a_no_op(demo_run):
    out, _ = demo_run
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    proc = subprocess.run(
        [sys.executable, "-m", "olmo_sam.cli", "demo", "--quick", "--out", str(out)],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    manifest = json.loads((out / "manifest.json").read_text())
    assert all(j["status"] in ("done", "skipped (done)") for j in manifest["jobs"].values())
    assert len(manifest["invocations"]) == 2
