"""Seed intervals (olmo_sam.analysis.stats) against hand computations on synthetic seeds."""

from __future__ import annotations

import math
import statistics

import numpy as np
import pytest
from olmo_core.exceptions import OLMoConfigurationError

from olmo_sam.analysis.stats import IntervalSpec, compare_seeds, mean_interval, relative

#: Student-t 0.975 quantiles from a printed table (df -> t)
T975 = {2: 4.303, 4: 2.776, 9: 2.262}
BOOT = IntervalSpec(method="bootstrap", n_boot=4000, seed=3)

#: three seeds with a large seed-to-seed spread (0.3 nats), as in the pilot
REF = {0: 2.606, 1: 2.709, 2: 2.905}


def test_paired_t_interval_matches_the_hand_computation():
    arm = {0: 2.550, 1: 2.655, 2: 2.846}  # REF - (0.056, 0.054, 0.059)
    d = [arm[s] - REF[s] for s in (0, 1, 2)]
    mean = sum(d) / 3
    sd = math.sqrt(sum((x - mean) ** 2 for x in d) / 2)
    half = T975[2] * sd / math.sqrt(3)
    r = compare_seeds(arm, REF)
    assert r.paired and r.n_seeds == 3 and r.method == "t"
    assert r.estimate == pytest.approx(mean, abs=1e-12)
    assert r.ci_low == pytest.approx(mean - half, abs=1e-4) and r.ci_high == pytest.approx(mean + half, abs=1e-4)
    assert r.significant and r.ci_high < 0  # a large difference relative to the paired noise
    assert r.arm_mean == pytest.approx(statistics.fmean(arm.values()))
    assert r.reference_mean == pytest.approx(statistics.fmean(REF.values()))


def test_zero_true_difference_is_not_significant():
    arm = {0: 2.606 + 0.004, 1: 2.709 - 0.001, 2: 2.905 - 0.003}  # offsets sum to zero
    for spec in (IntervalSpec(), BOOT):
        r = compare_seeds(arm, REF, spec)
        assert r.estimate == pytest.approx(0.0, abs=1e-12)
        assert r.ci_low < 0 < r.ci_high and not r.significant


def test_pairing_resolves_what_unpaired_seeds_cannot():
    arm = {s: v - 0.05 + e for (s, v), e in zip(REF.items(), (0.001, -0.001, 0.0))}
    paired = compare_seeds(arm, REF)
    assert paired.paired and paired.significant
    # the same numbers under seeds the reference does not have: Welch's interval by hand
    shifted = {s + 10: v for s, v in arm.items()}
    unpaired = compare_seeds(shifted, REF)
    a, b = list(shifted.values()), list(REF.values())
    va, vb = statistics.variance(a) / 3, statistics.variance(b) / 3
    df = (va + vb) ** 2 / (va**2 / 2 + vb**2 / 2)
    from scipy.stats import t

    half = t.ppf(0.975, df) * math.sqrt(va + vb)
    assert not unpaired.paired and unpaired.n_seeds == 3
    assert unpaired.estimate == pytest.approx(paired.estimate)
    assert unpaired.ci_low == pytest.approx(unpaired.estimate - half) and unpaired.ci_high == pytest.approx(unpaired.estimate + half)
    assert not unpaired.significant  # the seed spread swamps the 0.05 difference
    assert paired.ci_high - paired.ci_low < (unpaired.ci_high - unpaired.ci_low) / 20


def test_paired_bootstrap_at_three_seeds_is_the_range_of_the_differences():
    """By hand: a resample of 3 seeds is all-min with probability 1/27 > 2.5%, so the percentile
    interval's ends are the smallest and largest paired difference."""
    arm = {0: 2.550, 1: 2.655, 2: 2.846}
    d = [arm[s] - REF[s] for s in (0, 1, 2)]
    r = compare_seeds(arm, REF, BOOT)
    assert r.paired and r.method == "bootstrap"
    assert r.ci_low == pytest.approx(min(d)) and r.ci_high == pytest.approx(max(d))
    assert compare_seeds(arm, REF, BOOT) == r  # deterministic given the seed


def test_unpaired_bootstrap_is_deterministic_and_brackets_the_estimate():
    a = {10: 1.0, 11: 1.2, 12: 0.9, 13: 1.1}
    r1, r2 = compare_seeds(a, REF, BOOT), compare_seeds(a, REF, BOOT)
    assert r1 == r2 and not r1.paired
    assert r1.ci_low < r1.estimate < r1.ci_high
    # resampled means stay within the extremes of each arm
    assert min(a.values()) - max(REF.values()) <= r1.ci_low and r1.ci_high <= max(a.values()) - min(REF.values())


def test_coverage_at_three_seeds_t_holds_and_bootstrap_does_not():
    """Under no true difference (normal seed noise), the 95% t-interval excludes 0 about 5% of the
    time; the percentile bootstrap about 25% (its interval is the range: all three signs agree with
    probability 2/8). This is why ``t`` is the default."""
    rng = np.random.default_rng(0)
    spec_b = IntervalSpec(method="bootstrap", n_boot=400, seed=0)
    false_t = false_b = 0
    reps = 300
    for _ in range(reps):
        ref = {s: float(x) for s, x in enumerate(rng.normal(2.7, 0.1, 3))}
        arm = {s: ref[s] + float(rng.normal(0, 0.01)) for s in ref}
        false_t += compare_seeds(arm, ref).significant
        false_b += compare_seeds(arm, ref, spec_b).significant
    assert false_t / reps < 0.10
    assert false_b / reps > 0.15


def test_one_seed_gives_an_estimate_without_interval():
    r = compare_seeds({0: 2.5}, {0: 2.6})
    assert r.estimate == pytest.approx(-0.1) and r.ci_low is None and r.ci_high is None
    assert not r.significant and r.n_seeds == 1 and relative(r) is None


def test_relative_needs_a_denominator_three_standard_errors_from_zero():
    arm = {0: 0.9, 1: 1.0, 2: 1.1}
    ref = {0: 1.0, 1: 1.1, 2: 1.2}
    r = compare_seeds(arm, ref)
    pct, lo, hi = relative(r)
    assert pct == pytest.approx(-100 * 0.1 / 1.1)
    assert lo == pytest.approx(100 * r.ci_low / 1.1) and hi == pytest.approx(100 * r.ci_high / 1.1)
    # a tiny degradation measured with noise as large as itself: SE 0.0001 vs mean 0.0002
    tiny_ref = {0: 0.0001, 1: 0.0002, 2: 0.0003 + 0.00005}
    tiny = compare_seeds({s: 3 * v for s, v in tiny_ref.items()}, tiny_ref)
    se = statistics.stdev(tiny_ref.values()) / math.sqrt(3)
    assert statistics.fmean(tiny_ref.values()) < 3 * se
    assert relative(tiny) is None
    # a reference that "improved" under the perturbation (negative degradation): no percentage
    negative = compare_seeds({0: -0.002, 1: -0.003, 2: -0.0025}, {0: -0.001, 1: -0.0011, 2: -0.0012})
    assert negative.reference_mean < -3 * negative.reference_se and relative(negative) is None


def test_mean_interval_t_by_hand():
    xs = [1.0, 1.2, 0.9, 1.1, 1.05]
    m, lo, hi = mean_interval(xs)
    half = T975[4] * statistics.stdev(xs) / math.sqrt(5)
    assert m == pytest.approx(statistics.fmean(xs))
    assert lo == pytest.approx(m - half, abs=1e-3) and hi == pytest.approx(m + half, abs=1e-3)
    assert mean_interval([1.0]) == (1.0, None, None)


@pytest.mark.parametrize("kw, field", [({"method": "z"}, "unknown interval method"),
                                       ({"confidence": 1.5}, "analysis.confidence"),
                                       ({"n_boot": "many"}, "analysis.n_boot")])  # fmt: skip
def test_bad_interval_settings_name_the_field(kw, field):
    with pytest.raises(OLMoConfigurationError, match=field):
        IntervalSpec(**kw)
