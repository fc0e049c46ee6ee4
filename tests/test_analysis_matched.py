"""Matched comparison at a common fine-tuning loss ([SAM-PT] App C.4), "% less forgetting",
curve grouping and the Fig 5 view, against hand-computed numbers."""

from __future__ import annotations

import math

import pytest
from analysis_synth import record
from hypothesis import given, settings
from hypothesis import strategies as st

from olmo_sam import paper
from olmo_sam.analysis.forgetting import (
    AnalysisError,
    TauNotReached,
    compare,
    group_curves,
    less_forgetting,
    match_at_tau,
    matched_pt_view,
    matched_threshold,
    min_ft_loss,
    retained_pt_loss,
)

approx = pytest.approx


# three checkpoints on one dataset; (L_PT, L_FT) per run
HAND = {
    # base label: (base_l_pt, runs)
    "a": (3.00, [(3.1, 2.0), (3.3, 1.5), (3.6, 1.2), (4.0, 1.0), (3.7, 1.5)]),
    "b": (3.05, [(3.1, 2.0), (3.2, 1.4), (3.25, 1.2), (3.4, 1.1)]),
    "c": (3.02, [(3.05, 1.8), (3.3, 1.3), (3.5, 1.25)]),
}


def hand_records(hand=HAND, dataset="d", method="ft"):
    return [
        record(
            f"{lab}-{i}",
            pt,
            ft,
            base=f"/ck/{lab}",
            label=lab,
            dataset=dataset,
            method=method,
            lr=1e-5 * (i + 1),
            base_l_pt=base_pt,
        )
        for lab, (base_pt, runs) in hand.items()
        for i, (pt, ft) in enumerate(runs)
    ]


@pytest.fixture
def curves():
    return group_curves(hand_records())["d"]


# ---- "% less forgetting" -------------------------------------------------------------------


def test_less_forgetting_hand_numbers():
    assert less_forgetting(0.5, 0.1) == approx(0.8)
    assert less_forgetting(0.5, 0.5) == 0.0
    assert less_forgetting(0.4, 0.6) == approx(-0.5)  # forgot more than the reference
    assert less_forgetting(0.4, -0.1) == approx(1.25)  # improved on the reference task
    with pytest.raises(AnalysisError, match="reference did not forget"):
        less_forgetting(0.0, 0.1)
    with pytest.raises(AnalysisError, match="finite"):
        less_forgetting(math.nan, 0.1)


def test_less_forgetting_reproduces_the_paper_claims():
    # Sec 3.2: StarCoder, +0.1 instead of +0.5 -> 80% less forgetting
    f = paper.STARCODER_60M_192B_FORGETTING
    assert less_forgetting(f["adamw"], f["sam"]) == approx(paper.STARCODER_60M_192B_LESS_FORGETTING)
    # Sec 3.5.1 / Table 8: 4-bit NF4 drop of the benchmark average, relative to 43.2 -> "40%"
    ref = paper.BENCH_REFERENCE_AVG
    q = paper.BENCH_AVG_4BIT
    got = less_forgetting(ref - q["adamw"], ref - q["sam"])
    assert got == approx(1 - (43.2 - 40.60) / (43.2 - 38.89))
    assert round(got, 2) == paper.HEADLINE_LESS_FORGETTING["quant4"]


# ---- tau and the matched comparison (App C.4) ----------------------------------------------


def test_tau_is_max_of_per_checkpoint_minima(curves):
    assert [c.label for c in curves] == ["a", "b", "c"]
    assert [min_ft_loss(c) for c in curves] == [1.0, 1.1, 1.25]
    assert matched_threshold(curves) == 1.25


def test_matched_comparison_by_hand(curves):
    comp = compare(curves, reference="a")
    m = comp.matched
    assert m.tau == 1.25 and m.tau_source == "eq10" and not m.strict
    got = {r.curve.label: (r.retained.l_pt, r.retained.l_ft, r.forgetting) for r in m.rows}
    # a: runs with L_FT <= 1.25 are (3.6, 1.2), (4.0, 1.0) -> 3.6
    # b: (3.25, 1.2), (3.4, 1.1) -> 3.25;  c: only (3.5, 1.25), exactly at tau (<= includes it)
    assert got["a"] == approx((3.6, 1.2, 0.6))
    assert got["b"] == approx((3.25, 1.2, 0.2))
    assert got["c"] == approx((3.5, 1.25, 0.48))
    assert comp.less["a"] == approx(0.0)
    assert comp.less["b"] == approx(1 - 0.2 / 0.6)
    assert comp.less["c"] == approx(1 - 0.48 / 0.6)
    assert comp.notes == ()
    assert [p.run_ids for p in m.row("a").retained.points] == [["a-2"]]


def test_default_reference_is_first_label_and_noted(curves):
    comp = compare(curves)
    assert comp.reference == "a"
    assert "--reference" in comp.notes[0]


def test_unknown_reference_names_the_choices(curves):
    with pytest.raises(AnalysisError, match="'sam' on dataset 'd' names no checkpoint; available: a, b, c"):
        compare(curves, reference="sam")
    # a curve is also found by its base path or label@dirname
    assert compare(curves, reference="/ck/b").reference == "b"
    assert compare(curves, reference="b@b").matched.row("b@b").curve.label == "b"


def test_comparison_needs_two_checkpoints(curves):
    with pytest.raises(AnalysisError, match="at least two checkpoints on dataset 'd'.*'b'"):
        compare([curves[1]])


def test_reference_that_did_not_forget_gives_undefined_ratio():
    hand = {"a": (3.5, [(3.4, 1.0)]), "b": (3.0, [(3.2, 1.0)])}  # a improved its PT loss
    comp = compare(group_curves(hand_records(hand))["d"], reference="a")
    assert comp.less == {"a": None, "b": None}
    assert "reference did not forget" in comp.notes[0]


def test_user_tau_never_reached_names_each_checkpoint(curves):
    with pytest.raises(TauNotReached) as e:
        match_at_tau(curves, tau=1.05)
    msg = str(e.value)
    assert "'b' (best L_FT 1.1)" in msg and "'c' (best L_FT 1.25)" in msg and "'a'" not in msg
    assert "dataset 'd'" in msg and ">= 1.25" in msg
    assert e.value.missing == [("b", 1.1), ("c", 1.25)]
    with pytest.raises(TauNotReached, match="checkpoint 'a' .*never reaches L_FT <= tau = 0.5"):
        retained_pt_loss(curves[0], 0.5)


def test_user_tau_reached_by_all(curves):
    m = match_at_tau(curves, tau=1.4)
    assert m.tau_source == "given"
    assert {r.curve.label: r.retained.l_pt for r in m.rows} == {"a": 3.6, "b": 3.2, "c": 3.3}


def test_strict_threshold_excludes_runs_at_tau(curves):
    # Sec 3.2 footnote 1 writes L_FT < tau: c's only run at 1.25 no longer counts
    with pytest.raises(TauNotReached, match="'c' .*L_FT < tau = 1.25. Use tau > 1.25"):
        match_at_tau(curves, tau=1.25, strict=True)
    m = match_at_tau(curves, tau=1.3, strict=True)
    assert {r.curve.label: r.retained.l_pt for r in m.rows} == {"a": 3.6, "b": 3.25, "c": 3.5}
    with pytest.raises(AnalysisError, match="strict threshold .* needs an explicit tau"):
        match_at_tau(curves, strict=True)


def test_interpolation_along_the_frontier(curves):
    m = match_at_tau(curves, interpolate=True)
    got = {r.curve.label: r.retained for r in m.rows}
    # a: between (3.6, 1.2) and (3.3, 1.5) at 1.25 -> 3.6 - 0.3 * (0.05 / 0.3)
    assert got["a"].l_pt == approx(3.55) and got["a"].interpolated and got["a"].l_ft == 1.25
    assert [p.run_ids for p in got["a"].points] == [["a-2"], ["a-1"]]
    # b: between (3.25, 1.2) and (3.2, 1.4) -> 3.25 - 0.05 * 0.25
    assert got["b"].l_pt == approx(3.2375)
    # c: a frontier point sits exactly at tau: no interpolation
    assert got["c"].l_pt == 3.5 and not got["c"].interpolated
    # beyond the last frontier point the last point is reported
    far = retained_pt_loss(curves[0], 2.5, interpolate=True)
    assert far.l_pt == 3.1 and not far.interpolated
    with pytest.raises(AnalysisError, match="strict"):
        retained_pt_loss(curves[0], 1.3, strict=True, interpolate=True)


_v = st.integers(0, 8).map(lambda i: 1.0 + 0.125 * i)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(_v, _v), min_size=1, max_size=25), _v, st.booleans())
def test_retained_matches_brute_force(pts, tau, strict):
    recs = [record(f"r{i}", pt, ft) for i, (pt, ft) in enumerate(pts)]
    curve = group_curves(recs)["d"][0]
    feasible = [r.l_pt for r in recs if (r.l_ft < tau if strict else r.l_ft <= tau)]
    if not feasible:
        with pytest.raises(TauNotReached):
            retained_pt_loss(curve, tau, strict=strict)
        return
    kept = retained_pt_loss(curve, tau, strict=strict)
    assert kept.l_pt == min(feasible)
    if not strict:
        interp = retained_pt_loss(curve, tau, interpolate=True)
        assert min(r.l_pt for r in recs) <= interp.l_pt <= kept.l_pt


# ---- grouping ------------------------------------------------------------------------------


def test_grouping_labels_methods_and_splits():
    recs = [
        record("1", 3.1, 1.0, base="/ck/adamw/s1", label="adamw", method="ft"),
        record("2", 3.2, 0.9, base="/ck/adamw/s2", label="adamw", method="ft", base_l_pt=2.9),
        record("3", 3.0, 1.1, base="/ck/sam/s1", label="sam", method="ft"),
        record("4", 3.05, 1.2, base="/ck/sam/s1", label="sam", method="ewc", hparams={"lam": 1e4}),
        record("5", 3.02, 1.3, base="/ck/sam/s1", label="sam", method="ewc", hparams={"lam": 1e3}),
        record("6", 3.5, 1.0, base="/ck/sam/s1", label="sam", method="ft", dataset="other"),
    ]
    by = group_curves(recs)
    assert list(by) == ["d", "other"]
    assert [(c.label, c.arm) for c in by["d"]] == [
        ("adamw@s1/ft", "adamw/ft"),
        ("adamw@s2/ft", "adamw/ft"),
        ("sam/ewc", "sam/ewc"),
        ("sam/ft", "sam/ft"),
    ]
    assert by["d"][1].base_l_pt == 2.9
    pooled = group_curves(recs, by_method=False, datasets=["d"], bases=["sam"])
    assert [(c.label, len(c.records)) for c in pooled["d"]] == [("sam", 3)]
    split = group_curves(recs, methods=["ewc"], split_by=["lam"])
    assert [c.label for c in split["d"]] == ["sam[lam=1000.0]", "sam[lam=10000.0]"]
    # selecting by label@dirname; a shared label alone is an ambiguous reference
    sel = group_curves(recs, datasets=["d"], methods=["ft"], bases=["adamw@s2", "sam"])
    assert [c.label for c in sel["d"]] == ["adamw", "sam"]
    with pytest.raises(AnalysisError, match="'adamw/ft' .* is ambiguous; it names adamw@s1/ft, adamw@s2/ft"):
        compare(by["d"], reference="adamw/ft")
    assert compare(by["d"], reference="adamw@s2/ft").reference == "adamw@s2/ft"
    with pytest.raises(AnalysisError, match="run '1' has no hyper-parameter 'lam'"):
        group_curves(recs, split_by=["lam"])


def test_grouping_errors_name_the_problem():
    recs = hand_records()
    with pytest.raises(AnalysisError, match=r"dataset\(s\) \['gsm8k'\] not in the results; available: d"):
        group_curves(recs, datasets=["gsm8k"])
    with pytest.raises(AnalysisError, match=r"method\(s\) \['lora'\]"):
        group_curves(recs, methods=["lora"])
    with pytest.raises(AnalysisError, match="no fine-tuning runs"):
        group_curves([])
    bad = recs + [record("x", 3.3, 1.0, base="/ck/a", label="a", base_l_pt=3.2)]
    with pytest.raises(AnalysisError, match="'/ck/a' has inconsistent base_l_pt"):
        group_curves(bad)
    relabelled = recs + [record("y", 3.3, 1.0, base="/ck/a", label="A", base_l_pt=3.0)]
    with pytest.raises(AnalysisError, match=r"several labels \['A', 'a'\]"):
        group_curves(relabelled)
    unlabelled = group_curves([record("u", 3.0, 1.0, base="/ck/run7/step100", label="")])
    assert unlabelled["d"][0].label == "step100"
    diverged = [record("z", math.nan, 1.0, base="/ck/z", label="z")]
    with pytest.raises(AnalysisError, match="'z' .* no run with finite losses"):
        matched_threshold(group_curves(recs + diverged)["d"])


# ---- Fig 5 view ----------------------------------------------------------------------------


def test_matched_pt_view_orders_checkpoints_per_arm():
    hand = {
        "adamw": [(3.6, [(3.9, 1.0), (3.7, 1.3)]), (3.5, [(3.95, 1.0), (3.6, 1.3)])],
        "sam": [(3.62, [(3.7, 1.0)]), (3.52, [(3.6, 1.1), (3.55, 1.3)])],
    }
    recs = [
        record(f"{arm}{k}-{i}", pt, ft, base=f"/ck/{arm}/{k}", label=arm, base_l_pt=bpt)
        for arm, ckpts in hand.items()
        for k, (bpt, runs) in enumerate(ckpts)
        for i, (pt, ft) in enumerate(runs)
    ]
    view = matched_pt_view(group_curves(recs)["d"])
    assert view.matched.tau == 1.1  # max of minima 1.0, 1.0, 1.0, 1.1
    got = {arm: [(r.curve.base_l_pt, r.retained.l_pt) for r in rows] for arm, rows in view.arms.items()}
    assert got == {"adamw": [(3.6, 3.9), (3.5, 3.95)], "sam": [(3.62, 3.7), (3.52, 3.6)]}
    assert [r.curve.label for r in view.arms["adamw"]] == ["adamw@0", "adamw@1"]


# ---- grid edge and log-LR interpolation (issue 20) -----------------------------------------

#: one base, a 3-point LR grid: (lr, L_PT, L_FT); a higher LR learns more and forgets more
GRID = [(1e-4, 3.2, 1.5), (3e-4, 3.4, 1.3), (1e-3, 3.7, 1.1)]


def _grid_curve(grid=GRID):
    recs = [record(f"g{i}", pt, ft, lr=lr) for i, (lr, pt, ft) in enumerate(grid)]
    return group_curves(recs)["d"][0]


def test_grid_edge_flags_a_match_at_the_lowest_lr_past_tau():
    c = _grid_curve()
    edge = retained_pt_loss(c, 1.6)  # even the lowest LR (L_FT 1.5) learns past tau
    assert edge.grid_edge and edge.lr == 1e-4 and edge.l_pt == 3.2
    inside = retained_pt_loss(c, 1.4)  # matched at 3e-4, with 1e-4 above tau: bracketed
    assert not inside.grid_edge and inside.lr == 3e-4
    exact = retained_pt_loss(c, 1.5)  # the lowest LR sits exactly at tau: nothing lies beyond
    assert not exact.grid_edge
    # interpolation cannot bracket tau beyond the grid either
    far = retained_pt_loss(c, 1.6, interpolate=True)
    assert far.grid_edge and not far.interpolated
    # the flag reaches the matched rows
    other = [record(f"h{i}", pt + 0.1, ft + 0.2, base="o", lr=lr) for i, (lr, pt, ft) in enumerate(GRID)]
    m = match_at_tau(group_curves([*c.records, *other])["d"])  # tau = 1.3, o's best L_FT: inside both grids
    flags = {r.curve.label: r.grid_edge for r in m.rows}
    assert m.tau == approx(1.3) and flags == {"b": False, "o": False}
    m2 = match_at_tau(group_curves([*c.records, *other])["d"], tau=1.65)
    assert {r.curve.label: r.grid_edge for r in m2.rows} == {"b": True, "o": False}


def test_log_lr_interpolation_by_hand():
    """tau = 1.35 between the runs at 3e-4 (L_FT 1.3) and 1e-4 (L_FT 1.5): w = 0.05 / 0.2 = 0.25 of
    the way in log LR, so L_PT = 3.4 + 0.25 (3.2 - 3.4) = 3.35 and LR = 3e-4 (1e-4 / 3e-4)^0.25."""
    r = retained_pt_loss(_grid_curve(), 1.35, interpolate=True)
    assert r.interpolated and not r.grid_edge and r.l_ft == 1.35
    assert r.l_pt == approx(3.35) and r.lr == approx(3e-4 * (1 / 3) ** 0.25)
    assert 1e-4 < r.lr < 3e-4
    nearest = retained_pt_loss(_grid_curve(), 1.35)
    assert nearest.l_pt == 3.4 and nearest.lr == 3e-4  # the paper's rule: the run below tau
