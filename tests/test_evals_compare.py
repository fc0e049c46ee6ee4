"""Forgetting tables on the paper's own Table 8 numbers ([SAM-PT] App D.1, Sec 3.5.1)."""

from __future__ import annotations

import csv
import io
import json

import pytest
from click.testing import CliRunner
from olmo_core.exceptions import OLMoConfigurationError

from olmo_sam import paper
from olmo_sam.cli import main
from olmo_sam.evals.compare import (
    compare,
    paper_table8_records,
    percent_less_forgetting,
)
from olmo_sam.evals.records import BenchRecord, write_records
from olmo_sam.evals.results import read_records


def _table8():
    return compare(
        paper_table8_records(),
        "adamw",
        base_of={"sam_4bit": "sam"},
        reference=paper.BENCH_REFERENCE_AVG,
        pairs=[("adamw_4bit", "sam_4bit")],
    )


def test_table8_gives_about_40_percent_less_forgetting_under_4bit():
    comp = _table8()
    # averages of the per-task rows reproduce the paper's reported averages (base rows rounded to 0.1 in the paper)
    for arm, avg in paper.BENCH_AVG_BASE.items():
        assert comp.row(arm).average == pytest.approx(avg, abs=0.05)
    for arm, avg in paper.BENCH_AVG_4BIT.items():
        assert comp.row(f"{arm}_4bit").average == pytest.approx(avg, abs=0.005)
    (pair,) = comp.pairs
    # independent arithmetic: drops from 43.2 are 43.2-38.89 and 43.2-40.60
    d_adamw, d_sam = 43.2 - 38.89, 43.2 - 40.60
    assert pair.drop_baseline == pytest.approx(d_adamw, abs=1e-9)
    assert pair.drop_arm == pytest.approx(d_sam, abs=1e-9)
    assert pair.less_forgetting_pct == pytest.approx(100 * (d_adamw - d_sam) / d_adamw, abs=1e-9)
    assert round(pair.less_forgetting_pct) == round(100 * paper.HEADLINE_LESS_FORGETTING["quant4"])


def test_drops_from_own_base_per_task():
    comp = _table8()
    row = comp.row("sam_4bit")
    assert row.base == "sam"
    for t in paper.BENCH_TABLE_COLUMNS:
        assert row.drop_from_base[t] == pytest.approx(paper.BENCH_TABLE8["sam"][t] - paper.BENCH_TABLE8["sam_4bit"][t])
    # GSM8K is where 4-bit AdamW collapses (44.0 -> 21.6)
    assert comp.row("adamw_4bit").drop_from_base["gsm8k"] == pytest.approx(22.4)
    assert comp.row("adamw").base is None and comp.row("adamw").drop_from_base is None
    assert comp.tasks == list(paper.BENCH_TABLE_COLUMNS)


def test_percent_less_forgetting_needs_a_forgetting_baseline():
    assert percent_less_forgetting(2.0, 1.0) == 50.0
    assert percent_less_forgetting(2.0, 3.0) == -50.0
    with pytest.raises(OLMoConfigurationError, match="did not forget"):
        percent_less_forgetting(0.0, 1.0)


def test_outputs_markdown_csv_json_png(tmp_path):
    comp = _table8()
    written = comp.write(tmp_path)
    md = written["md"].read_text()
    # the paper's 39.7% is a point estimate: over 10 tasks its interval includes zero, so no "less"
    assert "point estimate +39.7% (95% CI of the % unbounded" in md and "not resolved" in md and "| adamw_4bit |" in md
    assert "% less**" not in md and "Interval: 95% Student-t" in md
    rows = list(csv.DictReader(io.StringIO(written["csv"].read_text())))
    assert [r["model"] for r in rows] == ["adamw", "sam", "adamw_4bit", "sam_4bit"]
    assert float(rows[2]["drop_from_reference"]) == pytest.approx(4.31, abs=1e-4)
    js = json.loads(written["json"].read_text())
    assert js["pairs"][0]["less_forgetting_pct"] == pytest.approx(39.675, abs=1e-3)
    assert js["pairs"][0]["n_tasks"] == 10 and js["pairs"][0]["resolved"] is False
    assert js["pairs"][0]["ci_low"] < 0 < js["pairs"][0]["ci_high"] and js["pairs"][0]["p_value"] > 0.05
    png = written["png"].read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000


def test_mismatched_task_sets_and_duplicates_are_errors():
    recs = paper_table8_records()
    recs["adamw_4bit"] = recs["adamw_4bit"][:-1]
    with pytest.raises(OLMoConfigurationError, match="triviaqa"):
        compare(recs, "adamw")
    comp = compare(recs, "adamw", tasks=["mmlu", "gsm8k"])
    assert comp.row("adamw").average == pytest.approx((44.3 + 44.0) / 2)
    dup = {"a": [BenchRecord("a", "mmlu", 1, "m", 1, "", "x")] * 2}
    with pytest.raises(OLMoConfigurationError, match="two results"):
        compare(dup, "a")
    with pytest.raises(OLMoConfigurationError, match="unknown model"):
        compare(paper_table8_records(), "adamw", pairs=[("adamw", "nope")])


def test_cli_compare_on_results_files(tmp_path):
    paths = {}
    for label, recs in paper_table8_records().items():
        paths[label] = write_records(tmp_path / f"{label}.json", recs)
    assert read_records(paths["sam"])[0].model == "sam"
    out = tmp_path / "cmp"
    res = CliRunner().invoke(
        main,
        [
            "eval",
            "compare",
            str(paths["adamw"]),
            str(paths["sam"]),
            f"q_adamw={paths['adamw_4bit']}",
            f"q_sam={paths['sam_4bit']}",
            "--base-of",
            "q_sam=sam",
            "--paper-reference",
            "--pair",
            "q_adamw,q_sam",
            "--out",
            str(out),
        ],
    )
    assert res.exit_code == 0, res.output
    assert "q_sam vs q_adamw: no difference in forgetting resolved" in res.output
    assert "forgets **39.7% less**" not in res.output and "point estimate +39.7%" in res.output
    assert (out / "compare.png").is_file() and (out / "compare.csv").is_file()
    written_md = (out / "compare.md").read_text()
    assert "paired over 10 tasks, p = 0.24" in written_md and "% less**" not in written_md
    js = json.loads((out / "compare.json").read_text())["pairs"][0]
    assert js["text"] in res.output and js["text"] in written_md
    bad = CliRunner().invoke(main, ["eval", "compare", str(paths["adamw"]), "--pair", "adamw"])
    assert bad.exit_code != 0 and "BASELINE,ARM" in bad.output


def _ttest(arm_drops, base_drops):
    """Paired t-test and 95% interval of mean(arm - base) by scipy, independently of olmo_sam."""
    from scipy.stats import ttest_rel

    res = ttest_rel(arm_drops, base_drops)
    ci = res.confidence_interval(0.95)
    return res.pvalue, ci.low, ci.high


def test_pair_carries_a_paired_interval_over_tasks():
    t8 = paper.BENCH_TABLE8
    tasks = paper.BENCH_TABLE_COLUMNS
    # drops from the common 43.2 reference (the paper's basis): per task 43.2 - score
    (pair,) = _table8().pairs
    a = [43.2 - t8["sam_4bit"][t] for t in tasks]
    b = [43.2 - t8["adamw_4bit"][t] for t in tasks]
    p, lo, hi = _ttest(a, b)
    assert pair.n_tasks == 10 and pair.difference == pytest.approx(pair.drop_arm - pair.drop_baseline)
    assert (pair.ci_low, pair.ci_high, pair.p_value) == pytest.approx((lo, hi, p), rel=1e-9)
    assert pair.ci_low < 0 < pair.ci_high and not pair.resolved
    assert "no difference in forgetting resolved" in pair.text and "point estimate +39.7%" in pair.text
    assert "less**" not in pair.text
    # drops from each model's own base: the user probe's -1.98 points, 95% CI [-5.35, +1.39], p = 0.22
    (own,) = compare(
        paper_table8_records(),
        "adamw",
        base_of={"sam_4bit": "sam", "adamw_4bit": "adamw"},
        pairs=[("adamw_4bit", "sam_4bit")],
    ).pairs
    a = [t8["sam"][t] - t8["sam_4bit"][t] for t in tasks]
    b = [t8["adamw"][t] - t8["adamw_4bit"][t] for t in tasks]
    p, lo, hi = _ttest(a, b)
    assert (own.difference, own.ci_low, own.ci_high, own.p_value) == pytest.approx(
        (sum(a) / 10 - sum(b) / 10, lo, hi, p), rel=1e-9
    )
    assert round(own.difference, 2) == -1.98 and (round(lo, 2), round(hi, 2), round(p, 2)) == (-5.35, 1.39, 0.22)
    assert not own.resolved and "paired over 10 tasks" in own.text


def _recs(label, scores):
    return [BenchRecord(label, t, s, "acc", 100, "", "test") for t, s in scores.items()]


def test_pair_uses_less_or_more_only_when_the_interval_excludes_zero():
    base = {"t1": 50.0, "t2": 60.0, "t3": 40.0, "t4": 70.0}
    results = {
        "adamw": _recs("adamw", base),
        "sam": _recs("sam", base),
        # AdamW drops 4-6 points on every task, SAM 2-3: resolved
        "adamw_q": _recs("adamw_q", {"t1": 46.0, "t2": 55.0, "t3": 34.0, "t4": 65.0}),
        "sam_q": _recs("sam_q", {"t1": 48.0, "t2": 57.5, "t3": 37.0, "t4": 67.6}),
    }
    comp = compare(results, "adamw", base_of={"sam_q": "sam"}, pairs=[("adamw_q", "sam_q"), ("sam_q", "adamw_q")])
    less, more = comp.pairs
    p, lo, hi = _ttest([2.0, 2.5, 3.0, 2.4], [4.0, 5.0, 6.0, 5.0])
    assert (less.ci_low, less.ci_high, less.p_value) == pytest.approx((lo, hi, p), rel=1e-9)
    assert hi < 0 and less.resolved and more.resolved
    pct = 100 * (5.0 - 2.475) / 5.0
    assert less.text.startswith(f"**sam_q** forgets **{pct:.1f}% less** than **adamw_q**")
    assert "95% CI" in less.text and "paired over 4 tasks" in less.text
    assert more.text.startswith("**adamw_q** forgets **") and "% more** than **sam_q**" in more.text
    assert f"**sam_q** forgets **{pct:.1f}% less**" in comp.to_markdown()
    # one task: an estimate without an interval, never a claim
    (one,) = compare(results, "adamw", base_of={"sam_q": "sam"}, pairs=[("adamw_q", "sam_q")], tasks=["t1"]).pairs
    assert one.n_tasks == 1 and one.ci_low is None and not one.resolved
    assert "no difference resolved (1 task: no interval" in one.text and "not evidence" in one.text


def test_the_percentage_carries_its_own_interval():
    """'% less forgetting' = 100 (1 - da/db) gets Fieller's interval of the ratio over the same
    tasks. Checked by its definition with scipy: at each end, the paired t-test of
    drop_arm - r drop_baseline (r = 1 - pct/100) has p = 0.05; and it contains 0% exactly when the
    difference's interval contains 0 (the same test at r = 1)."""
    from scipy.stats import ttest_1samp

    # the paper's Table 8: AdamW-4bit's per-task drops from 43.2 vary far more than their mean, so
    # the ratio (and the 39.7%) is unbounded at 95%: the baseline's drop is not resolved from zero
    (t8,) = _table8().pairs
    assert t8.pct_ci_low is None and "of the % unbounded: baseline drop not resolved from zero" in t8.text
    assert "95% CI of the % unbounded" in t8.text and "point estimate +39.7%" in t8.text

    tasks = ["a", "b", "c", "d", "e", "f"]
    base = [50.0, 60.0, 40.0, 55.0, 45.0, 65.0]
    drop_b = [4.0, 5.5, 3.0, 4.5, 6.0, 5.0]

    def recs(label, drops):
        return [BenchRecord(label, t, s - d, "m", 1, "", "x") for t, s, d in zip(tasks, base, drops)]

    def pair(drop_a):
        results = {"adamw": recs("adamw", [0.0] * 6), "sam": recs("sam", [0.0] * 6)}
        results |= {"adamw_q": recs("adamw_q", drop_b), "sam_q": recs("sam_q", drop_a)}
        (p,) = compare(results, "adamw", base_of={"sam_q": "sam"}, pairs=[("adamw_q", "sam_q")]).pairs
        return p

    for drop_a, resolved in (([2.1, 2.5, 1.2, 2.6, 2.8, 2.4], True), ([4.5, 3.9, 3.8, 4.0, 5.1, 5.6], False)):
        p = pair(drop_a)
        assert p.resolved is resolved
        assert p.pct_ci_low < p.less_forgetting_pct < p.pct_ci_high
        for pct in (p.pct_ci_low, p.pct_ci_high):
            r = 1 - pct / 100
            assert ttest_1samp([x - r * y for x, y in zip(drop_a, drop_b)], 0).pvalue == pytest.approx(0.05, abs=1e-9)
        assert bool(p.pct_ci_low > 0) is resolved  # 0% lies inside exactly when the difference is unresolved
        assert f"95% CI of the % {p.pct_ci_low:+.1f}% to {p.pct_ci_high:+.1f}%" in p.text
    # one task: no interval of either kind
    (one,) = compare(
        paper_table8_records(), "adamw", reference=43.2, pairs=[("adamw_4bit", "sam_4bit")], tasks=["gsm8k"]
    ).pairs
    assert one.pct_ci_low is None and "of the % unbounded: one task" in one.text
