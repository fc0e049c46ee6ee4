"""The analysis stage and report on a synthetic multi-seed, multi-budget study (no training):
``summary.json``'s finding records, their wording, the overtraining figure and the report."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import study_synth

from olmo_sam.analysis.findings import FINDING_FIELDS
from olmo_sam.study.bases import BaseRecord, base_of
from olmo_sam.study.spec import ConfigError, parse_study
from olmo_sam.study.stages import write_report
from olmo_sam.study.stages.analysis import analyse_study


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    out = tmp_path_factory.mktemp("synth") / "study"
    res = analyse_study(study_synth.build(out))
    rep = write_report(out, res)
    return out, json.loads(Path(res["summary"]).read_text()), rep


def _by(summary, quantity):
    return {f["budget_tpp"]: f for f in summary["findings"] if f["quantity"] == quantity}


def test_summary_findings_have_the_schema(study):
    _, s, _ = study
    assert s["arms"] == ["adamw", "sam"] and s["reference_arm"] == "adamw"
    assert s["interval"]["method"] == "t" and s["interval"]["confidence"] == 0.95
    assert s["seeds_per_arm_and_budget"] == 3
    assert sorted(b["budget_tpp"] for b in s["budgets"]) == [10.0, 100.0]
    assert len(s["bases"]) == 12 and all(
        {"arm", "seed", "budget_tpp", "tpp_non_embedding", "tokens", "params_total", "params_non_embedding"} <= set(b)
        for b in s["bases"].values()
    )
    assert s["bases"]["sam@100tpp-s2"]["seed"] == 2 and s["bases"]["sam@100tpp-s2"]["arm"] == "sam"
    quantities = {f["quantity"] for f in s["findings"]}
    assert quantities == {
        "l_pt",
        "matched_forgetting",
        "fig5_pt_loss",
        "quant_degradation",
        "noise_increase",
        "trace",
        "lambda_max",
    }
    for f in s["findings"]:
        assert set(FINDING_FIELDS) <= set(f), f["id"]
        assert f["arms"] == ["sam", "adamw"] and f["n_seeds"] == 3 and f["paired"]
        assert f["budget_tpp"] in (10.0, 100.0)
        assert f["tpp_non_embedding"] == pytest.approx(f["budget_tpp"] * 40_000 / 15_000)
        assert f["ci_low"] <= f["estimate"] <= f["ci_high"]
        assert f["significant"] == (not f["identical"] and (f["ci_low"] > 0 or f["ci_high"] < 0))
        assert f["resolved"] == (f["significant"] and f["q_value"] < 0.05)
        assert f["comparisons"] == len(s["findings"])
        assert (f["p_value"] is None and f["mde"] is None and f["q_value"] is None) == f["identical"]
        if f["resolved"]:
            assert "no difference resolved" not in f["text"]
        else:
            assert "no difference resolved" in f["text"]
    assert len({f["id"] for f in s["findings"]}) == len(s["findings"])


def test_findings_recover_the_constructed_differences(study):
    _, s, _ = study
    for tpp in (10.0, 100.0):
        lpt = _by(s, "l_pt")[tpp]  # constructed +0.04 on every seed: zero variance, no claim
        assert lpt["identical"] and not lpt["significant"] and lpt["estimate"] == pytest.approx(0.04)
        assert "identical across seeds" in lpt["text"] and "higher" not in lpt["text"]
        fg = _by(s, "matched_forgetting")[tpp]
        assert fg["significant"] and fg["percent"] == pytest.approx(-20.0, abs=1e-6)  # sensitivity 0.8x
        assert "sam forgets less than adamw" in fg["text"] and "% less forgetting" in fg["text"]
        assert _by(s, "noise_increase")[tpp]["percent"] == pytest.approx(-30.0, abs=1e-6)
        for q in ("quant_degradation", "trace"):  # constructed with no difference
            f = _by(s, q)[tpp]
            assert not f["significant"] and f["estimate"] == pytest.approx(0.0, abs=1e-9)
    assert "converged for only 5 of 6" in _by(s, "lambda_max")[100.0]["text"]
    assert "converged for all 6" in _by(s, "lambda_max")[10.0]["text"]


def test_matched_rows_and_overtraining_figure(study):
    out, s, _ = study
    rows = s["finetune"]["matched_rows"]
    assert len(rows) == 12 and len({r["tau"] for r in rows}) == 1  # one tau over every base (Eq. 10)
    by = {(r["arm"], r["budget_tpp"], r["seed"]): r for r in rows}
    for (arm, tpp, seed), r in by.items():
        if arm == "sam":
            assert r["less_forgetting_pct"] == pytest.approx(20.0, abs=1e-6)
        else:
            assert r["less_forgetting_pct"] is None
    figs = s["finetune"]["figures"]
    assert set(figs) == {"frontiers", "frontiers_matched", "overtraining"}
    assert all(Path(p).stat().st_size > 10_000 for p in figs.values())


def test_report_renders_the_summary(study):
    out, s, rep = study
    md = (out / "report" / "report.md").read_text()
    assert s["interval"]["description"] in md
    assert "10 tokens per parameter (26.7 per non-embedding parameter" in md
    for f in s["findings"]:
        assert f["text"] in md
    links = re.findall(r"!\[[^]]*\]\(([^)]+)\)", md)
    assert len(links) >= 7 and all(not Path(p).is_absolute() for p in links)
    assert all((out / "report" / p).exists() for p in links)
    assert md.count("Columns: ") >= 7 and "less_forgetting_pct: 100 x (1 - forgetting" in md
    assert "lambda_max_converged" in md
    html = (out / "report" / "report.html").read_text()
    assert html.count("data:image/png;base64,") == len(links)


def test_a_base_record_is_read_as_it_was_written():
    """One record type for a base: the writer's fields are the reader's; an incomplete result is
    an error naming the job (no fallbacks)."""
    run = {
        "tokens": 1000,
        "steps": 10,
        "params_total": 100,
        "params_non_embedding": 40,
        "tpp_total": 10.0,
        "tpp_non_embedding": 25.0,
    }
    written = BaseRecord.measure({"arm": "wso", "seed": 2, "budget_tpp": 800}, run, {"train_tokens": 500})
    result = {"checkpoint": "x", **written.to_dict()}
    read = BaseRecord.from_result(json.loads(json.dumps(result)), "pretrain/wso")
    assert read == written and read.data_epochs == 2.0
    b = base_of("wso", read)
    assert (b.arm, b.seed, b.budget_tpp, b.tpp_non_embedding, b.tokens) == ("wso", 2, 800.0, 25.0, 1000)
    # no planned or recipe budget (a mid-training run): the measured tokens per total parameter
    assert BaseRecord.measure({"arm": "mid", "seed": 0, "budget_tpp": None}, run, {}).budget_tpp == 10.0
    del result["tpp_non_embedding"]
    with pytest.raises(ConfigError, match=r"pretrain/wso: its result has no \['tpp_non_embedding'\]"):
        BaseRecord.from_result(result, "pretrain/wso")


def test_one_seed_study_findings_claim_nothing(tmp_path):
    """Today's single-seed studies: findings without intervals, no comparative words."""
    ctx = study_synth.build(tmp_path / "one", with_budget_fields=False)
    # keep one seed per arm: drop every unit but seed 0 at 10 tokens/param
    keep = [u for u in ctx.job.params["units"] if u.endswith("@10tpp-s0")]
    ctx.job.params["units"] = keep
    s = json.loads(Path(analyse_study(ctx)["summary"]).read_text())
    assert s["findings"] and s["seeds_per_arm_and_budget"] == 1
    for f in s["findings"]:
        assert f["ci_low"] is None and not f["significant"] and f["n_seeds"] == 1
        assert "no difference resolved at this scale" in f["text"]


def test_analysis_options_are_checked():
    base = {"name": "x", "data": {"demo": {}}, "arms": [{"name": "a", "optimizer": "adamw"}]}  # a study needs arms
    assert parse_study({**base, "analysis": {"interval": "bootstrap", "n_boot": 500}}).analysis.interval == "bootstrap"
    with pytest.raises(ConfigError, match=r"analysis\.method: unknown setting"):
        parse_study({**base, "analysis": {"method": "t"}})
    with pytest.raises(ConfigError, match=r"^analysis\.interval: must be one of \['t', 'bootstrap'\], got 'z'"):
        parse_study({**base, "analysis": {"interval": "z"}})
    with pytest.raises(ConfigError, match=r"^analysis\.confidence: must be a number in \[0.5, 1\)"):
        parse_study({**base, "analysis": {"confidence": 95}})


def _shift_ft(out: Path, unit: str, d_ft: float) -> None:
    """Rewrite one base's fine-tuning sweep with every L_FT lowered by ``d_ft``: its whole grid
    learns past the study's tau, so it is matched at its lowest learning rate (the grid's edge)."""
    from dataclasses import replace

    from olmo_sam.finetune.records import ResultStore

    res = out / "finetune" / f"{unit}_code" / "results.jsonl"
    recs = [replace(r, l_ft=r.l_ft - d_ft) for r in ResultStore(res).records()]
    res.unlink()
    ResultStore(res).extend(recs)


def test_grid_edge_bases_are_flagged_left_out_and_q_values_counted(tmp_path):
    from olmo_sam.study.stages.finetune import seed_values

    ctx = study_synth.build(tmp_path / "edge")
    _shift_ft(ctx.out, "sam@100tpp-s1", 1.5)
    for s_ in (0, 1, 2):
        _shift_ft(ctx.out, f"sam@10tpp-s{s_}", 1.5)
    res = analyse_study(ctx)
    s = json.loads(Path(res["summary"]).read_text())
    edge = s["finetune"]["grid_edge"]["code"]
    assert {u for u, e in edge.items() if e} == {"sam@100tpp-s1", "sam@10tpp-s0", "sam@10tpp-s1", "sam@10tpp-s2"}
    assert {u: b["grid_edge"]["code"] for u, b in s["bases"].items()} == edge
    rows = {r["unit"]: r for r in s["finetune"]["matched_rows"]}
    assert (
        rows["sam@100tpp-s1"]["matched_lr"] == min(study_synth.LRS)
        and rows["sam@100tpp-s1"]["l_ft"] < rows["sam@100tpp-s1"]["tau"]
    )
    for q in ("matched_forgetting", "fig5_pt_loss"):
        f100 = [f for f in s["findings"] if f["quantity"] == q and f["budget_tpp"] == 100.0][0]
        assert f100["n_seeds"] == 2 and f100["grid_edge_seeds"] == [1] and "not measurable on this grid" in f100["text"]
        assert f"tau = {rows['sam@100tpp-s1']['tau']:.4g}" in f100["text"] and "Eq. 10" in f100["text"]
        f10 = [f for f in s["findings"] if f["quantity"] == q and f["budget_tpp"] == 10.0][0]
        assert not f10["measurable"] and f10["estimate"] is None and "not measurable on this grid" in f10["text"]
        vals = seed_values(s["finetune"]["matched_rows"], q)
        assert set(vals[("sam", 100.0, "code")]) == {0, 2} and ("sam", 10.0, "code") not in vals
        assert set(seed_values(s["finetune"]["matched_rows"], q, include_grid_edge=True)[("sam", 100.0, "code")]) == {
            0,
            1,
            2,
        }
        # the Fig 5 quantity is the matched row's retained PT loss; forgetting subtracts the base's own
        key = "l_pt" if q == "fig5_pt_loss" else "forgetting"
        assert vals[("adamw", 100.0, "code")] == {
            r["seed"]: r[key] for r in rows.values() if r["arm"] == "adamw" and r["budget_tpp"] == 100.0
        }
    # every finding is in one BH family, and the report says how many comparisons were made
    m = s["multiplicity"]
    assert m["comparisons"] == len(s["findings"]) and all(f["comparisons"] == m["comparisons"] for f in s["findings"])
    rep = write_report(ctx.out, res)
    md = (ctx.out / "report" / "report.md").read_text()
    assert f"Secondary comparisons made: {m['comparisons']}" in md
    # unmeasurable findings have no p-value: q-values are BH over the tested ones, and say so
    assert 0 < m["tested"] < m["comparisons"]
    assert m["tested"] == sum(f["p_value"] is not None for f in s["findings"])
    assert f"correction over the {m['tested']} with a test" in md
    for f in s["findings"]:
        if f["q_value"] is not None:
            assert f"(Benjamini-Hochberg over the {m['tested']} tested comparisons)" in f["text"]
    # sensitivity: each matched comparison at three thresholds, the compared bases' tau the lowest
    sens = s["finetune"]["tau_sensitivity"]
    cell = {r["tau_name"]: r["tau"] for r in sens if r["budget_tpp"] == 100.0 and r["quantity"] == "matched_forgetting"}
    assert set(cell) == {"study", "compared", "looser"} and cell["compared"] <= cell["study"] < cell["looser"]
    assert all(r["estimate"] is not None and r["n_seeds"] == 2 for r in sens if r["budget_tpp"] == 100.0)
    assert rep


def test_interpolated_matching_is_a_study_option(tmp_path):
    ctx = study_synth.build(tmp_path / "interp", interval={"matching": "interpolate"})
    s = json.loads(Path(analyse_study(ctx)["summary"]).read_text())
    rows = s["finetune"]["matched_rows"]
    assert s["finetune"]["matching"] == "interpolate" and all(r["matching"] == "interpolate" for r in rows)
    tau = rows[0]["tau"]
    inter = [r for r in rows if r["interpolated"]]
    assert inter and all(r["l_ft"] == pytest.approx(tau) for r in inter)
    assert all("log-LR interpolation" in f["text"] for f in s["findings"] if f["section"] == "finetune")
    with pytest.raises(ConfigError, match="analysis.matching"):
        parse_study(
            {
                "name": "x",
                "data": {"demo": {}},
                "arms": [{"name": "a", "optimizer": "adamw"}],
                "analysis": {"matching": "closest"},
            }
        )


def test_sensitivity_taus_by_hand():
    from analysis_synth import record

    from olmo_sam.analysis.forgetting import group_curves
    from olmo_sam.study.stages.finetune import sensitivity_taus

    recs = [
        record(f"{b}{i}", 3.0 + i, ft, base=b)
        for b, fts in (("x", (1.5, 1.1)), ("y", (1.6, 1.3)))
        for i, ft in enumerate(fts)
    ]
    cs = group_curves(recs)["d"]
    assert sensitivity_taus(cs, ["x"]) == pytest.approx({"study": 1.3, "compared": 1.1, "looser": 1.5})
    assert sensitivity_taus(cs) == pytest.approx({"study": 1.3, "compared": 1.3, "looser": 1.3 * 1.02})


def test_a_mid_training_base_is_measured_from_its_checkpoint(tiny_checkpoint):
    """A mid-training job writes the same record, measured from its checkpoint: steps x global
    batch tokens, the model's parameter counts, and (no planned budget) tokens per parameter."""
    from olmo_sam.models import model_config, param_counts
    from olmo_sam.study.bases import checkpoint_budget

    run = checkpoint_budget(str(tiny_checkpoint))
    counts = param_counts(model_config("tiny", vocab_size=256))
    assert (run["steps"], run["tokens"]) == (40, 40 * 8 * 64)  # the fixture: 40 steps of 8 x 64 tokens
    assert (run["params_total"], run["params_non_embedding"]) == (counts.total, counts.non_embedding)
    rec = BaseRecord.measure({"arm": "mid", "seed": 42, "budget_tpp": None}, run, {"train_tokens": 40 * 8 * 64})
    assert rec.budget_tpp == rec.tpp_total == pytest.approx(40 * 8 * 64 / counts.total)
    assert rec.tpp_non_embedding == pytest.approx(40 * 8 * 64 / counts.non_embedding) and rec.data_epochs == 1.0


def test_the_report_names_diverged_fine_tuning_runs(tmp_path):
    """A fine-tuning run that diverged is left out of every frontier; the report says so in the
    fine-tuning section (it was named only in frontier.json)."""
    out = tmp_path / "study"
    res = analyse_study(study_synth.build(out, diverged=True))
    md = Path(write_report(out, res)["markdown"]).read_text()
    unit = study_synth.unit(study_synth.ARMS[0], study_synth.BUDGETS[0], study_synth.SEEDS[0])
    assert f"1 run(s) with non-finite loss left out (diverged): {unit}-{study_synth.DATASETS[0]}-10" in md
