"""Finding sentences: a comparative word only when the interval excludes zero."""

from __future__ import annotations

import re

import pytest

from olmo_sam.analysis.findings import make_finding
from olmo_sam.analysis.stats import compare_seeds

REF = {0: 0.955, 1: 1.149, 2: 1.050}
BUDGET = {"budget_tpp": 100.0, "tpp_non_embedding": 127.2, "tokens": 11_500_000}
COMPARATIVE = re.compile(r"\b(less|more|flatter|sharper|lower|higher|better|worse)\b")


def _forgetting(arm):
    return make_finding(
        section="finetune",
        quantity="matched_forgetting",
        arm="sam",
        reference="adamw",
        diff=compare_seeds(arm, REF),
        budget=BUDGET,
        dataset="demo-code",
        context="Fine-tuning on demo-code",
    )


def test_large_difference_is_worded_with_its_interval_and_percentage():
    f = _forgetting({s: v - 0.055 + e for (s, v), e in zip(REF.items(), (0.001, -0.001, 0.0))})
    assert f["significant"] and f["ci_high"] < 0
    t = f["text"]
    assert "sam forgets less than adamw" in t and "95% CI" in t and "3 seeds, paired" in t
    assert "100 tokens/param (127 per non-embedding param)" in t
    m = re.search(r"([\d.]+)% less forgetting \(95% CI ([\d.]+)% to ([\d.]+)%\)", t)
    assert m and float(m.group(2)) <= float(m.group(1)) <= float(m.group(3))
    assert abs(float(m.group(1)) - 100 * 0.055 / (sum(REF.values()) / 3)) < 0.05


def test_zero_difference_is_not_worded_as_a_difference():
    f = _forgetting({0: 0.965, 1: 1.139, 2: 1.050})
    assert not f["significant"] and f["ci_low"] < 0 < f["ci_high"]
    t = f["text"]
    assert "no difference resolved at this scale between sam and adamw (95% CI " in t
    assert not COMPARATIVE.search(t), t
    assert "relative difference" in t  # the percentage is still given, without a direction


def test_one_seed_gets_no_interval_and_no_claim():
    f = make_finding(
        section="hessian",
        quantity="trace",
        arm="sam",
        reference="adamw",
        diff=compare_seeds({0: 345.2}, {0: 346.3}),
        context="Sharpness",
    )
    assert f["ci_low"] is None and not f["significant"] and f["n_seeds"] == 1
    assert "no difference resolved at this scale" in f["text"] and "no 95% CI" in f["text"]
    assert not COMPARATIVE.search(f["text"]) and "%" not in f["text"].replace("95% CI", "")


def test_flatter_only_when_resolved_and_tiny_denominators_get_no_percentage():
    sharp = make_finding(
        section="hessian",
        quantity="trace",
        arm="sam",
        reference="adamw",
        diff=compare_seeds({0: 300.0, 1: 320.0, 2: 290.0}, {0: 340.0, 1: 361.0, 2: 331.0}),
    )
    assert sharp["significant"] and "sam is flatter than adamw" in sharp["text"]
    ref = {0: 0.0001, 1: 0.0003, 2: 0.00005}
    q = make_finding(
        section="quantize",
        quantity="quant_degradation",
        arm="sam",
        reference="adamw",
        diff=compare_seeds({s: v + 0.0002 for s, v in ref.items()}, ref),
        setting="nf4",
    )
    assert q["percent"] is None and "%" not in q["text"].replace("95% CI", "")


def _trace(arm, ref):
    return make_finding(
        section="hessian",
        quantity="trace",
        arm="sam",
        reference="adamw",
        diff=compare_seeds(arm, ref),
        context="Sharpness",
    )


def test_q_values_across_the_secondary_findings_gate_the_comparative_words():
    """Four findings whose intervals exclude zero before correction; BH over the six secondary ones
    keeps only the strong one (q by hand from the p-values: the weak ones' p ~ 0.035 become
    q ~ 0.059); the primary one is not in the family."""
    from olmo_sam.analysis.findings import adjust_findings

    ref = {0: 340.0, 1: 361.0, 2: 331.0}
    strong = _trace({0: 300.0, 1: 320.0, 2: 290.0}, ref)  # p ~ 3e-4
    weak = [_trace({0: 335.0, 1: 354.0 + e, 2: 327.5}, ref) for e in (0.0, 0.2, -0.2)]  # each p ~ 0.033-0.040
    nulls = [_trace({0: 341.0, 1: 360.0, 2: 331.5}, ref), _trace({0: 339.0, 1: 362.0, 2: 331.5}, ref)]
    primary = {**_trace({0: 335.0, 1: 354.0, 2: 327.5}, ref), "primary": True}
    secondary = [strong, *weak, *nulls]
    m = len(secondary)
    assert all(f["significant"] for f in [strong, *weak]) and not any(f["significant"] for f in nulls)
    assert all(COMPARATIVE.search(f["text"]) for f in [strong, *weak])  # unadjusted: worded
    fam = adjust_findings([primary, *secondary])
    assert fam["comparisons"] == m and fam["tested"] == m
    ps = [f["p_value"] for f in secondary]
    order = sorted(range(m), key=lambda i: ps[i])
    q_hand = [0.0] * m
    running = 1.0
    for rank in range(m, 0, -1):  # step-up: q_(i) = min_{j >= i} m p_(j) / j
        i = order[rank - 1]
        running = min(running, m * ps[i] / rank)
        q_hand[i] = running
    for f, q in zip(secondary, q_hand):
        assert f["q_value"] == pytest.approx(q) and f["comparisons"] == m
        assert f["resolved"] == (f["significant"] and q < 0.05)
        if f["resolved"]:
            assert "sam is flatter than adamw" in f["text"] and "q = " in f["text"]
        else:
            assert not COMPARATIVE.search(f["text"]), f["text"]
            assert "no difference resolved" in f["text"]
    assert strong["resolved"] and all(not f["resolved"] and f["significant"] for f in weak)
    assert all("after the correction for multiple comparisons" in f["text"] for f in weak)
    assert fam["resolved"] == sum(f["resolved"] for f in secondary)
    assert primary["q_value"] is None and "comparisons" not in primary  # primary: not in the family
    assert "minimum detectable effect" in strong["text"] and strong["mde"] > 0


def test_bh_count_in_the_text_is_the_number_of_tested_p_values():
    """User probe: 13 comparisons, 12 with a p-value; q = BH over the 12, so the text names 12."""
    from olmo_sam.analysis.findings import adjust_findings

    ref = {0: 340.0, 1: 361.0, 2: 331.0}
    tested = [_trace({0: 300.0 + e, 1: 320.0, 2: 290.0 - e}, ref) for e in (0.0, 5.0, 10.0)]
    untested = _forgetting({s: v + 0.05 for s, v in REF.items()})  # identical: no p-value
    fam = adjust_findings([*tested, untested])
    assert fam["comparisons"] == 4 and fam["tested"] == 3
    ps = [f["p_value"] for f in tested]
    order = sorted(range(3), key=lambda i: ps[i])
    running, q_hand = 1.0, [0.0] * 3
    for rank in range(3, 0, -1):  # BH step-up with m = 3, the tested ones
        i = order[rank - 1]
        running = min(running, 3 * ps[i] / rank)
        q_hand[i] = running
    for f, q in zip(tested, q_hand):
        assert f["q_value"] == pytest.approx(q) and f["bh_tested"] == 3
        assert "(Benjamini-Hochberg over the 3 tested comparisons)" in f["text"]
        assert "over 4 comparisons" not in f["text"]
    assert untested["q_value"] is None and "Benjamini-Hochberg" not in untested["text"]


def test_identical_and_unmeasurable_findings_claim_nothing():
    from olmo_sam.analysis.findings import adjust_findings, unmeasurable_finding

    f = _forgetting({s: v + 0.05 for s, v in REF.items()})  # +0.05 on every seed
    assert f["identical"] and not f["significant"] and not f["resolved"]
    assert "identical across seeds" in f["text"] and not COMPARATIVE.search(f["text"])
    u = unmeasurable_finding(
        section="finetune",
        quantity="fig5_pt_loss",
        arm="sam",
        reference="adamw",
        reason="every seed matched at the grid's lowest learning rate",
        budget=BUDGET,
        dataset="demo-code",
    )
    assert "not measurable on this grid" in u["text"] and u["estimate"] is None and not u["resolved"]
    fam = adjust_findings([f, u])
    assert fam["comparisons"] == 2 and fam["tested"] == 0 and fam["resolved"] == 0
    assert f["q_value"] is None and "identical across seeds" in f["text"]


def test_the_report_says_pairing_does_not_apply_below_two_seeds():
    """A one-seed comparison has no interval; its row says so instead of 'paired: no'."""
    from olmo_sam.study.stages.report import _finding_rows

    rows = _finding_rows(
        [{"n_seeds": 1, "paired": False}, {"n_seeds": 3, "paired": False}, {"n_seeds": 3, "paired": True}]
    )
    assert [r["paired"] for r in rows] == ["n/a (1 seed)", "no", "yes"]
