"""Pareto frontier of the learning-forgetting set ([SAM-PT] Sec 2.1): hand-built sets with ties,
duplicates and diverged runs, and property tests against a brute-force dominance check."""

from __future__ import annotations

import math
import random

import pytest
from analysis_synth import record
from hypothesis import given, settings
from hypothesis import strategies as st

from olmo_sam.analysis.forgetting import AnalysisError, dominates, pareto_frontier


def coords(points):
    return [(p.l_pt, p.l_ft) for p in points]


def test_dominates_by_hand():
    assert dominates((1.0, 1.0), (2.0, 2.0))
    assert dominates((1.0, 1.0), (1.0, 2.0))  # tie in L_PT, better L_FT
    assert dominates((1.0, 1.0), (2.0, 1.0))  # tie in L_FT, better L_PT
    assert not dominates((1.0, 1.0), (1.0, 1.0))  # identical points: neither dominates
    assert not dominates((1.0, 2.0), (2.0, 1.0))  # a trade-off
    assert not dominates((2.0, 2.0), (1.0, 1.0))


def test_frontier_hand_set_with_ties_and_duplicates():
    recs = [
        record("a", 3.0, 2.0),  # frontier (smallest L_PT)
        record("b", 3.5, 1.5),  # frontier
        record("c", 3.5, 1.7),  # same L_PT as b, worse L_FT -> dominated by b
        record("d", 4.0, 1.5),  # same L_FT as b, worse L_PT -> dominated by b
        record("e2", 4.5, 1.0),  # frontier, duplicated by e1 (identical coordinates)
        record("e1", 4.5, 1.0),
        record("f", 5.0, 1.0),  # same L_FT as e, worse -> dominated
        record("g", 6.0, 0.8),  # frontier
        record("h2", 6.5, 2.5),  # duplicated dominated points stay dominated, both listed
        record("h1", 6.5, 2.5),
    ]
    f = pareto_frontier(recs)
    # L_FT ascending, L_PT strictly descending
    assert coords(f.points) == [(6.0, 0.8), (4.5, 1.0), (3.5, 1.5), (3.0, 2.0)]
    assert [p.run_ids for p in f.points] == [["g"], ["e1", "e2"], ["b"], ["a"]]
    # dominated: by (L_FT, L_PT, run_id)
    assert [r.run_id for r in f.dominated] == ["f", "d", "c", "h1", "h2"]
    assert f.non_finite == ()
    assert f.l_min == 0.8


def test_frontier_lowest_ft_tie_keeps_lowest_pt_only():
    f = pareto_frontier([record("x", 4.0, 1.0), record("y", 3.9, 1.0), record("z", 3.0, 1.1)])
    assert coords(f.points) == [(3.9, 1.0), (3.0, 1.1)]
    assert [r.run_id for r in f.dominated] == ["x"]


def test_frontier_non_finite_runs_are_reported_not_used():
    recs = [
        record("ok1", 3.0, 2.0),
        record("ok2", 4.0, 1.0),
        record("nan_pt", math.nan, 0.1),
        record("inf_ft", 2.0, math.inf),
        record("neg_inf", -math.inf, 0.5),
    ]
    f = pareto_frontier(recs)
    assert coords(f.points) == [(4.0, 1.0), (3.0, 2.0)]
    assert [r.run_id for r in f.non_finite] == ["inf_ft", "nan_pt", "neg_inf"]
    assert f.dominated == ()


def test_empty_and_all_diverged_sets():
    f = pareto_frontier([])
    assert f.points == () and f.dominated == () and f.non_finite == ()
    with pytest.raises(AnalysisError, match="no run with finite losses"):
        _ = f.l_min
    f = pareto_frontier([record("x", math.nan, math.nan)])
    assert f.points == () and len(f.non_finite) == 1


# ---- properties ----------------------------------------------------------------------------

# coordinates on a coarse grid so that ties and exact duplicates are frequent
_val = st.integers(0, 6).map(lambda i: 3.0 + 0.25 * i)
_maybe_bad = st.one_of(_val, _val, _val, _val, st.sampled_from([math.nan, math.inf]))
_points = st.lists(st.tuples(_maybe_bad, _maybe_bad), max_size=30)


def _records(pts):
    return [record(f"r{i:02d}", pt, ft, lr=1e-5 * (i + 1)) for i, (pt, ft) in enumerate(pts)]


def _brute_force(recs):
    fin = [r for r in recs if math.isfinite(r.l_pt) and math.isfinite(r.l_ft)]
    return {r.run_id for r in fin if not any(dominates((o.l_pt, o.l_ft), (r.l_pt, r.l_ft)) for o in fin)}


@settings(max_examples=300, deadline=None)
@given(_points, st.randoms(use_true_random=False))
def test_frontier_properties(pts, rnd):
    recs = _records(pts)
    f = pareto_frontier(recs)
    front = [(p.l_pt, p.l_ft) for p in f.points]
    # frontier points are mutually non-dominated and distinct
    assert len(set(front)) == len(front)
    assert not any(dominates(a, b) for a in front for b in front)
    # every dominated run is dominated by some frontier point
    for r in f.dominated:
        assert any(dominates(p, (r.l_pt, r.l_ft)) for p in front), r
    # the runs partition: frontier members + dominated + non-finite = all, each exactly once
    on_front = [rid for p in f.points for rid in p.run_ids]
    all_ids = on_front + [r.run_id for r in f.dominated] + [r.run_id for r in f.non_finite]
    assert sorted(all_ids) == sorted(r.run_id for r in recs)
    # independent O(n^2) definition
    assert set(on_front) == _brute_force(recs)
    # every run on a point has exactly that point's coordinates
    for p in f.points:
        assert all((r.l_pt, r.l_ft) == (p.l_pt, p.l_ft) for r in p.runs)
        assert p.run_ids == sorted(p.run_ids)
    # deterministic order: L_FT strictly ascending, L_PT strictly descending
    assert all(a[1] < b[1] and a[0] > b[0] for a, b in zip(front, front[1:]))
    # input order does not matter
    shuffled = list(recs)
    rnd.shuffle(shuffled)
    assert pareto_frontier(shuffled) == f


def test_frontier_is_fast_on_a_large_set():
    rng = random.Random(0)
    recs = [record(f"r{i}", rng.random(), rng.random()) for i in range(20000)]
    f = pareto_frontier(recs)  # O(n log n): a few hundred ms at most even here
    assert len(f.points) + len(f.dominated) == len(recs)
