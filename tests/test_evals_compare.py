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
    assert "39.7% less" in md and "| adamw_4bit |" in md
    rows = list(csv.DictReader(io.StringIO(written["csv"].read_text())))
    assert [r["model"] for r in rows] == ["adamw", "sam", "adamw_4bit", "sam_4bit"]
    assert float(rows[2]["drop_from_reference"]) == pytest.approx(4.31, abs=1e-4)
    js = json.loads(written["json"].read_text())
    assert js["pairs"][0]["less_forgetting_pct"] == pytest.approx(39.675, abs=1e-3)
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
    assert "**q_sam** forgets **39.7% less** than **q_adamw**" in res.output
    assert (out / "compare.png").is_file() and (out / "compare.csv").is_file()
    bad = CliRunner().invoke(main, ["eval", "compare", str(paths["adamw"]), "--pair", "adamw"])
    assert bad.exit_code != 0 and "BASELINE,ARM" in bad.output
