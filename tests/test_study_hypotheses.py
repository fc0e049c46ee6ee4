"""Pre-registered hypotheses (olmo_sam/study/hypotheses.py): the ``hypotheses:`` section is checked
with errors naming the entry, references to arms/budgets/datasets are checked at planning, the
outcome on a synthetic study matches a hand computation (paired t, interaction, Holm), and an
edited hypothesis on an output directory with results is refused."""

from __future__ import annotations

import copy
import json
import statistics
from pathlib import Path

import pytest
import study_synth
import yaml
from scipy import stats as sps

from olmo_sam.study.hypotheses import holm
from olmo_sam.study.spec import parse_study
from olmo_sam.study.stages import write_report
from olmo_sam.study.stages.analysis import analyse_study

FORGETS_LESS = {
    "name": "sam-forgets-less",
    "quantity": "matched_forgetting",
    "arm": "sam",
    "reference": "adamw",
    "budget": 100,
    "dataset": "code",
    "direction": "less",
    "test": "paired_t",
}
GROWS = {
    "name": "benefit-grows",
    "quantity": "matched_forgetting",
    "arm": "sam",
    "reference": "adamw",
    "budgets": [10, 100],
    "dataset": "code",
    "direction": "less",
    "test": "interaction",
}
#: sam's base loss is 0.04 above adamw's at every seed: identical paired differences
IDENTICAL = {
    "name": "sam-base-higher",
    "quantity": "l_pt",
    "arm": "sam",
    "reference": "adamw",
    "budget": 10,
    "direction": "greater",
    "test": "paired_t",
}
#: sam forgets less at 10 tokens/param too: registered the other way
WRONG_WAY = {
    "name": "sam-forgets-more",
    "quantity": "matched_forgetting",
    "arm": "sam",
    "reference": "adamw",
    "budget": 10,
    "dataset": "code",
    "direction": "greater",
    "test": "paired_t",
}

BASE = {
    "name": "h",
    "data": {"demo": {}},
    "pretrain": {"size": "micro", "lr": 3e-3, "seeds": [0, 1, 2], "budgets_tpp": [10, 100]},
    "arms": [{"name": "adamw", "optimizer": "adamw"}, {"name": "sam", "optimizer": "sam", "rho": 0.01}],
    "probes": {"hessian": {}},
    "finetune": {"datasets": ["demo-code"], "lrs": [1e-3, 1e-2]},
}


def _study(*hyps, **top):
    d = copy.deepcopy(BASE)
    d.update(top)
    d["hypotheses"] = [dict(h) for h in hyps]
    return d


def _ok(**over):
    h = dict(FORGETS_LESS, dataset="demo-code")
    h.update(over)
    return {k: v for k, v in h.items() if v is not None}


@pytest.mark.parametrize(
    "hyps, match",
    [
        ([_ok(), _ok(name="b", arm="lion")], r"hypotheses\[1\]\.arm: no arm 'lion' in the study"),
        ([_ok(reference="adamw-wsd")], r"hypotheses\[0\]\.reference: no arm 'adamw-wsd'"),
        (
            [_ok(direction="lower")],
            r"hypotheses\[0\]\.direction: must be one of \['less', 'greater'\], got 'lower' \(arm minus reference",
        ),
        (
            [_ok(test="wilcoxon")],
            r"hypotheses\[0\]\.test: must be one of \['paired_t', 'interaction'\], got 'wilcoxon'",
        ),
        ([_ok(quantity="forgetting")], r"hypotheses\[0\]\.quantity: must be one of .*got 'forgetting'"),
        ([_ok(budget=None)], r"hypotheses\[0\]\.budget: required for test paired_t"),
        ([_ok(budget=800)], r"hypotheses\[0\]\.budget: arm 'sam' has no base at 800 tokens/param"),
        ([_ok(test="interaction")], r"hypotheses\[0\]\.budget: an interaction compares two budgets"),
        (
            [_ok(test="interaction", budget=None, budgets=[100, 10])],
            r"hypotheses\[0\]\.budgets: give \[shortest, longest\]",
        ),
        ([_ok(dataset=None)], r"hypotheses\[0\]\.dataset: quantity matched_forgetting is measured per dataset"),
        ([_ok(dataset="demo-music")], r"hypotheses\[0\]\.dataset: 'demo-music' is not in finetune.datasets"),
        ([_ok(quantity="trace")], r"hypotheses\[0\]\.dataset: quantity trace has no dataset; drop it"),
        (
            [_ok(quantity="quant_degradation", dataset=None, setting="nf4")],
            r"hypotheses\[0\]\.quantity: quant_degradation is measured by the 'quantize' stage",
        ),
        ([_ok(reference="sam")], r"hypotheses\[0\]\.reference: the same arm as 'arm'"),
        ([_ok(), _ok()], r"hypotheses: duplicate hypothesis name\(s\) \['sam-forgets-less'\]"),
        ([_ok(tail="one")], r"hypotheses\[0\]\.tail: unknown setting; allowed: \['arm', 'budget'"),
        ([_ok(name=None)], r"hypotheses\[0\]\.name: required"),
    ],
)
def test_bad_hypotheses_name_the_entry_and_field(hyps, match):
    from olmo_core.exceptions import OLMoConfigurationError

    with pytest.raises(OLMoConfigurationError, match=match):
        parse_study(_study(*hyps))


def test_hypotheses_round_trip_through_the_recorded_study():
    spec = parse_study(_study(_ok(), _ok(name="grows", test="interaction", budget=None, budgets=[10, 100])))
    assert [h.name for h in spec.hypotheses] == ["sam-forgets-less", "grows"]
    assert spec.hypotheses[0].budget == 100.0 and spec.hypotheses[1].budgets == [10.0, 100.0]
    again = parse_study(json.loads(json.dumps(spec.plain())))
    assert again.hypotheses == spec.hypotheses


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    out = tmp_path_factory.mktemp("hyp") / "study"
    res = analyse_study(study_synth.build(out, hypotheses=[FORGETS_LESS, GROWS, IDENTICAL]))
    rep = write_report(out, res)
    return json.loads(Path(res["summary"]).read_text()), rep


def _forgetting(summary):
    return {(r["arm"], r["budget_tpp"], r["seed"]): r["forgetting"] for r in summary["finetune"]["matched_rows"]}


def test_hypotheses_open_the_summary_and_match_a_hand_computation(synth):
    s, _ = synth
    assert list(s)[0] == "hypotheses"
    h = {r["name"]: r for r in s["hypotheses"]}
    assert list(h) == ["sam-forgets-less", "benefit-grows", "sam-base-higher"]
    f = _forgetting(s)
    seeds = study_synth.SEEDS
    # paired t at 100 tokens/param, by hand (scipy's paired t-test and the t quantile)
    d = [f[("sam", 100.0, x)] - f[("adamw", 100.0, x)] for x in seeds]
    half = sps.t.ppf(0.975, len(d) - 1) * statistics.stdev(d) / len(d) ** 0.5
    r = h["sam-forgets-less"]
    assert r["primary"] is True and r["n_seeds"] == 3 and r["seeds"] == [0, 1, 2]
    assert r["estimate"] == pytest.approx(statistics.fmean(d), rel=1e-12)
    assert (r["ci_low"], r["ci_high"]) == pytest.approx(
        (statistics.fmean(d) - half, statistics.fmean(d) + half), rel=1e-9
    )
    assert r["p_value"] == pytest.approx(
        sps.ttest_rel([f[("sam", 100.0, x)] for x in seeds], [f[("adamw", 100.0, x)] for x in seeds]).pvalue, rel=1e-9
    )
    assert r["mde"] is not None and r["mde"] > 0
    # interaction: (sam - adamw at 100) - (sam - adamw at 10), paired by seed
    dd = [
        (f[("sam", 100.0, x)] - f[("adamw", 100.0, x)]) - (f[("sam", 10.0, x)] - f[("adamw", 10.0, x)]) for x in seeds
    ]
    g = h["benefit-grows"]
    assert g["test"] == "interaction" and g["budgets_tpp"] == [10.0, 100.0]
    assert g["estimate"] == pytest.approx(statistics.fmean(dd), rel=1e-9) and g["estimate"] < 0
    assert g["p_value"] == pytest.approx(sps.ttest_1samp(dd, 0.0).pvalue, rel=1e-9)
    # zero variance: an estimate, no test, never resolved
    z = h["sam-base-higher"]
    assert z["identical"] and z["estimate"] == pytest.approx(0.04) and z["p_value"] is None
    assert not z["resolved"] and z["outcome"] == "not resolved" and "identical across seeds" in z["text"]
    # Holm over the two tested hypotheses, by hand: sorted p * (m - rank), running maximum
    names = ["sam-forgets-less", "benefit-grows"]
    ps = sorted((h[n]["p_value"], n) for n in names)
    running, want = 0.0, {}
    for rank, (p, n) in enumerate(ps):
        running = max(running, min(1.0, (2 - rank) * p))
        want[n] = running
    for n in names:
        assert h[n]["p_holm"] == pytest.approx(want[n], rel=1e-12)
        rec = h[n]
        expected_sign = rec["estimate"] < 0 if rec["direction"] == "less" else rec["estimate"] > 0
        assert rec["resolved"] == (rec["p_holm"] < 0.05 and expected_sign)
        assert rec["opposite"] == (rec["p_holm"] < 0.05 and not expected_sign)
    assert h["sam-forgets-less"]["resolved"] and "Resolved as expected" in h["sam-forgets-less"]["text"]
    assert "over the 2 tested primary hypotheses" in h["sam-forgets-less"]["text"]
    # the paired fine-tuning primary is also shown at the two other thresholds; at the study's own
    # tau it is the primary result itself
    sens = {x["tau_name"]: x for x in r["tau_sensitivity"]}
    assert sorted(sens) == ["compared", "looser", "study"]
    assert sens["study"]["estimate"] == pytest.approx(r["estimate"], rel=1e-12)
    assert sens["study"]["p_value"] == pytest.approx(r["p_value"], rel=1e-12)
    assert "tau_sensitivity" not in g and "tau_sensitivity" not in z


def test_a_hypothesis_resolved_the_other_way_says_so(tmp_path):
    res = analyse_study(study_synth.build(tmp_path / "s", hypotheses=[WRONG_WAY]))
    (w,) = json.loads(Path(res["summary"]).read_text())["hypotheses"]
    assert w["estimate"] < 0 and w["ci_high"] < 0 and w["p_holm"] == w["p_value"] < 0.05  # one primary: no adjustment
    assert w["opposite"] and not w["resolved"] and w["outcome"] == "opposite"
    assert "Resolved the other way (against the hypothesis)" in w["text"]


def test_primary_comparisons_leave_the_secondary_findings(synth):
    s, _ = synth
    ids = {f["id"] for f in s["findings"]}
    assert sorted(s["primary_findings"]) == ["l_pt/sam-vs-adamw/10tpp", "matched_forgetting/code/sam-vs-adamw/100tpp"]
    assert not ids & set(s["primary_findings"])
    assert "l_pt/sam-vs-adamw/10tpp" not in ids and "l_pt/sam-vs-adamw/100tpp" in ids
    assert all(f["contrast"] == "optimizer" for f in s["findings"])


def test_report_opens_with_the_hypotheses(synth):
    _, rep = synth
    md = Path(rep["markdown"]).read_text()
    first = md.index("## Pre-registered hypotheses")
    assert first < md.index("## Findings") and first < md.index("Arms:")
    assert "Primary hypothesis 'sam-forgets-less' (paired_t)" in md and "Holm" in md


def test_holm_by_hand():
    # sorted 0.01, 0.03, 0.04 -> 3 x 0.01, 2 x 0.03, max(0.06, 1 x 0.04); None is no test (m = 3)
    got = holm([0.01, 0.04, 0.03, None])
    assert got[:3] == pytest.approx([0.03, 0.06, 0.06]) and got[3] is None
    assert holm([0.5, 0.001]) == [0.5, 0.002]


@pytest.mark.slow
def test_an_edited_hypothesis_is_refused_once_results_exist(tmp_path):
    """A real data job finishes; then any change to the hypotheses is refused, --rerun or not, and
    the recorded study is left as it was. Other edits follow the usual rule."""
    from olmo_core.exceptions import OLMoConfigurationError

    from olmo_sam.study.cli import start_study

    d = _study(_ok(), data={"demo": {"vocab_size": 300, "books": ["carroll-alice"]}})
    path, out = tmp_path / "study.yaml", tmp_path / "out"
    path.write_text(yaml.safe_dump(d))
    start_study(str(path), out=str(out), stages=["data"], progress=False, echo=lambda *a, **k: None)
    assert (out / "data" / "data" / "done.json").exists()
    recorded = (out / "study.json").read_text()
    assert json.loads(recorded)["hypotheses"][0]["name"] == "sam-forgets-less"
    edits = {
        "direction": [_ok(direction="greater")],
        "added": [_ok(), _ok(name="more", budget=10)],
        "removed": None,  # the key dropped from the study file
    }
    for what, hyps in edits.items():
        edited = {k: v for k, v in d.items() if k != "hypotheses"}
        path.write_text(yaml.safe_dump(edited if hyps is None else dict(edited, hypotheses=hyps)))
        for rerun in (False, True):
            with pytest.raises(
                OLMoConfigurationError,
                match=r"hypotheses: pre-registered when the study in .* first "
                r"ran, and results exist there; they changed: .*new output directory",
            ):
                start_study(
                    str(path), out=str(out), stages=["data"], rerun=rerun, progress=False, echo=lambda *a, **k: None
                )
            assert (out / "study.json").read_text() == recorded, what
    with pytest.raises(OLMoConfigurationError, match=r"'sam-forgets-less' \(direction\)"):
        path.write_text(yaml.safe_dump(dict(d, hypotheses=[_ok(direction="greater")])))
        start_study(str(path), out=str(out), stages=["data"], progress=False, echo=lambda *a, **k: None)
    # unchanged hypotheses: the finished data job is simply skipped
    path.write_text(yaml.safe_dump(d))
    start_study(str(path), out=str(out), stages=["data"], progress=False, echo=lambda *a, **k: None)
    # a fresh output directory takes new hypotheses
    path.write_text(yaml.safe_dump(dict(d, hypotheses=[_ok(direction="greater")])))
    start_study(str(path), out=str(tmp_path / "out2"), stages=["data"], dry_run=True, echo=lambda *a, **k: None)


# -- arms: AdamW on the switch's schedule, per-arm references, SAM variants ----------------------

ROOT = Path(__file__).resolve().parents[1]


def test_cpu_study_plans_adamw_wsd_and_its_primary_hypotheses(tmp_path):
    from olmo_sam.study.plan import build_plan
    from olmo_sam.study.spec import load_study
    from olmo_sam.study.validate import validate_plan

    study = load_study(ROOT / "recipes" / "studies" / "cpu-overtraining.yaml")
    study.out_dir = str(tmp_path / "never")
    plan = build_plan(study)
    validate_plan(plan)  # every pretraining config built (adamw-wsd on WSD included)
    arms = {a.name: a for a in study.arms}
    assert arms["sam-anneal"].reference == "adamw-wsd" and arms["sam"].reference is None
    wsd = [j for j in plan.jobs if j.stage == "pretrain" and j.params["arm"] == "adamw-wsd"]
    assert len(wsd) == 2 * 5 and all(
        j.params["settings"]["schedule"] == "wsd"
        and j.params["settings"]["optimizer"] == "adamw"
        and j.params["settings"]["decay_fraction"] == 0.1
        for j in wsd
    )
    assert {j.params["budget_tpp"] for j in wsd} == {10, 800}
    # the repetition control: the switch and its reference at 800 tokens/param on a quarter of the corpus
    quarter = [j for j in plan.jobs if j.stage == "pretrain" and j.params.get("data_fraction") == 0.25]
    assert {j.params["arm"] for j in quarter} == {"adamw-wsd-quarter", "sam-anneal-quarter"}
    assert len(quarter) == 2 * 5 and {j.params["budget_tpp"] for j in quarter} == {800}
    assert arms["sam-anneal-quarter"].reference == "adamw-wsd-quarter"
    hyps = study.hypotheses
    assert len(hyps) == 9 and {h.test for h in hyps} == {"paired_t", "interaction"}
    assert {(h.arm, h.reference) for h in hyps} == {("sam-anneal", "adamw-wsd"), ("sam", "adamw")}
    assert {h.quantity for h in hyps} == {"fig5_pt_loss", "matched_forgetting"}
    assert {h.dataset for h in hyps} == {"demo-code", "demo-music"}
    assert all(h.budget == 800 for h in hyps if h.test == "paired_t")
    assert not (tmp_path / "never").exists()


def test_every_study_with_a_switch_arm_has_adamw_on_its_schedule():
    from olmo_sam.study.spec import load_study

    files = sorted((ROOT / "recipes" / "studies").glob("*.yaml")) + sorted(
        (ROOT / "olmo_sam" / "study" / "files").glob("*.yaml")
    )
    for path in files:
        study = load_study(path)
        for arm in study.arms:
            if arm.settings.get("optimizer") == "sam-anneal":
                ref = {a.name: a for a in study.arms}[arm.reference or study.arms[0].name]
                assert ref.settings.get("optimizer") == "adamw", path
                for key in ("schedule", "decay_fraction"):
                    assert ref.settings.get(key) == arm.settings.get(key), (path, key)


VARIANTS = {
    "name": "v",
    "data": {"demo": {}},
    "pretrain": {"size": "micro", "lr": 3e-3, "seeds": [0, 1], "budgets_tpp": [10]},
    "arms": [
        {"name": "adamw", "optimizer": "adamw"},
        {"name": "sam", "optimizer": "sam", "rho": 0.01},
        {"name": "msam", "optimizer": "sam", "variant": "msam", "rho": 0.01, "reference": "sam"},
        {"name": "looksam", "optimizer": "sam", "variant": "looksam", "interval": 5, "rho": 0.01},
    ],
}


def test_sam_variants_are_arms(tmp_path):
    from olmo_sam.study.plan import build_plan
    from olmo_sam.study.stages.data import placeholder_data
    from olmo_sam.study.stages.pretrain import build_run, run_spec
    from olmo_sam.study.validate import validate_plan

    study = parse_study(dict(VARIANTS, out_dir=str(tmp_path / "never")))
    plan = build_plan(study)
    validate_plan(plan)
    got = {}
    for j in plan.jobs:
        if j.stage == "pretrain" and j.params["seed"] == 0:
            cfg, _ = build_run(j, run_spec(j, placeholder_data(study), "<out>", check_paths=False))
            optim = cfg.train_module.optim
            got[j.params["arm"]] = (
                type(optim).__name__,
                getattr(optim, "variant", None),
                getattr(optim, "interval", None),
            )
    assert got == {
        "adamw": ("AdamWConfig", None, None),
        "sam": ("SAMConfig", "sam", 1),
        "msam": ("SAMConfig", "msam", 1),
        "looksam": ("SAMConfig", "looksam", 5),
    }
    assert study.arms[2].reference == "sam"


@pytest.mark.parametrize(
    "arm, match",
    [
        (
            {"name": "x", "optimizer": "adamw", "variant": "msam"},
            r"arms\[4\]\.variant: rho/variant/interval choose the SAM update",
        ),
        (  # a radius on an AdamW arm would be silently unused
            {"name": "x", "optimizer": "adamw", "rho": 0.05},
            r"arms\[4\]\.rho: rho/variant/interval choose the SAM update; they do not apply to arms\[4\]\.optimizer adamw",
        ),
        ({"name": "x", "optimizer": "sam", "variant": "lookahead"}, r"arms\[4\]\.variant: .*lookahead"),
        ({"name": "x", "optimizer": "sam", "variant": "looksam", "interval": 0}, r"arms\[4\]\.interval: "),
        ({"name": "x", "optimizer": "sam", "reference": "lion"}, r"arms\[4\]\.reference: no arm 'lion'"),
        ({"name": "x", "optimizer": "sam", "reference": "x"}, r"arms\[4\]\.reference: the name of another arm"),
    ],
)
def test_bad_variant_or_reference_names_the_arm_field(tmp_path, arm, match):
    from olmo_core.exceptions import OLMoConfigurationError

    from olmo_sam.study.plan import build_plan
    from olmo_sam.study.validate import validate_plan

    with pytest.raises(OLMoConfigurationError, match=match):
        validate_plan(build_plan(parse_study(dict(VARIANTS, arms=VARIANTS["arms"] + [arm], out_dir=str(tmp_path)))))


# -- data repetition control: an arm on a fraction of the corpus ---------------------------------


def test_data_fraction_arm_is_planned_and_cuts_the_token_files(tmp_path):
    import numpy as np

    from olmo_sam.study.plan import build_plan
    from olmo_sam.study.stages.pretrain import data_fraction

    arms = [
        {"name": "adamw", "optimizer": "adamw"},
        {
            "name": "adamw-quarter",
            "optimizer": "adamw",
            "data_fraction": 0.25,
            "budgets_tpp": [100],
            "reference": "adamw",
        },
    ]
    plan = build_plan(parse_study(dict(VARIANTS, arms=arms, out_dir=str(tmp_path / "never"))))
    pre = {j.params["unit"]: j.params for j in plan.jobs if j.stage == "pretrain"}
    assert {u: p.get("data_fraction") for u, p in pre.items()} == {
        "adamw-s0": None,
        "adamw-s1": None,
        "adamw-quarter-s0": 0.25,
        "adamw-quarter-s1": 0.25,
    }
    assert all("data_fraction" not in p for u, p in pre.items() if u.startswith("adamw-s"))  # old plans unchanged
    # the cut: the first quarter of every training file, bytes equal to the source's head
    src = [tmp_path / "a.npy", tmp_path / "b.npy"]
    toks = [np.arange(1000, dtype=np.uint16) % 384, (np.arange(402, dtype=np.uint16) * 7) % 384]
    for p, t in zip(src, toks):
        t.tofile(p)
    data = {"train": [str(p) for p in src], "vocab_size": 384, "train_tokens": 1402, "description": "demo corpus"}
    cut = data_fraction(data, 0.25, tmp_path / "cut")
    assert cut["train_tokens"] == 250 + 100 and "first 0.25" in cut["description"]
    for p, t in zip(cut["train"], toks):
        got = np.fromfile(p, dtype=np.uint16)
        assert np.array_equal(got, t[: len(t) // 4])
    assert data_fraction(data, 0.25, tmp_path / "cut") == cut  # a resumed job cuts nothing again


@pytest.mark.parametrize("value", [0, 1.5, "half", True])
def test_bad_data_fraction_names_the_arm(tmp_path, value):
    from olmo_core.exceptions import OLMoConfigurationError

    arms = [{"name": "adamw", "optimizer": "adamw"}, {"name": "q", "optimizer": "adamw", "data_fraction": value}]
    with pytest.raises(
        OLMoConfigurationError,
        match=r"arms\[1\]\.data_fraction: (must be a number in \(0, 1\]|expected a number \(or null\)), got .* \(a fraction of the training tokens",
    ):
        parse_study(dict(VARIANTS, arms=arms))


@pytest.mark.slow
def test_quarter_corpus_arm_trains_on_a_quarter(tmp_path):
    """A real (tiny) pretraining job of a data_fraction arm: its base records a quarter of the
    corpus and four times the epochs of the full-corpus arm at the same budget."""
    from olmo_sam.study.cli import start_study

    study = {
        "name": "q",
        "out_dir": str(tmp_path / "out"),
        "data": {"demo": {"vocab_size": 300, "books": ["carroll-alice"]}},
        "pretrain": {
            "size": "micro",
            "lr": 3e-3,
            "batch_size": 16,
            "seq_len": 64,
            "eval_interval": 0,
            "budgets_tpp": [1],
        },
        "arms": [
            {"name": "adamw", "optimizer": "adamw"},
            {"name": "adamw-quarter", "optimizer": "adamw", "data_fraction": 0.25},
        ],
        "executor": {"kind": "local", "jobs": 1},
        "stages": ["data", "pretrain"],
    }
    path = tmp_path / "q.yaml"
    path.write_text(yaml.safe_dump(study))
    plan = start_study(str(path), progress=False, echo=lambda *a, **k: None)
    full, quarter = (plan.by_id()[f"pretrain/{u}"].result(plan.out) for u in ("adamw", "adamw-quarter"))
    data = plan.by_id()["data"].result(plan.out)
    assert full["tokens"] == quarter["tokens"]
    assert full["data_epochs"] == pytest.approx(full["tokens"] / data["train_tokens"])
    assert quarter["data_epochs"] == pytest.approx(4 * full["data_epochs"], rel=0.01)
    assert "cut to its first 0.25" in quarter["data_source"]


def test_grid_edge_seeds_are_left_out_and_named():
    from olmo_sam.analysis.stats import IntervalSpec
    from olmo_sam.study.hypotheses import evaluate_hypotheses, parse_hypotheses

    (h,) = parse_hypotheses([FORGETS_LESS])
    arm, ref = {0: 1.0, 1: 1.3, 2: 0.2}, {0: 1.5, 1: 1.6, 2: 0.9}

    def cells(q, a, b, where, edge=(2,)):
        return {s: v for s, v in (arm if a == "sam" else ref).items() if s not in edge}

    (r,) = evaluate_hypotheses([h], cells, IntervalSpec(), lambda *k: cells(*k, edge=()))
    assert r["seeds"] == [0, 1] and r["grid_edge_seeds"] == [2] and r["n_seeds"] == 2
    assert r["estimate"] == pytest.approx(((1.0 - 1.5) + (1.3 - 1.6)) / 2)
    assert "Seed 2 left out: matched at the fine-tuning grid's lowest learning rate" in r["text"]
