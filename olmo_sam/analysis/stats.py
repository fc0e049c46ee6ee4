"""Intervals for arm-vs-reference comparisons over pretraining seeds (one module for all of them).

A study pretrains every arm with the same seeds (the seed fixes the initialization and the data
order), so a comparison of arm A with the reference arm R at one budget has, per seed s, one value
``a_s`` and one value ``r_s`` of a quantity (pretraining loss, forgetting at matched fine-tuning
loss, quantization or noise degradation, tr(H), lambda_max). :func:`compare_seeds` estimates the
difference of the arms' means, ``mean(a) - mean(r)``, with an interval:

* **paired** when the arms share at least two seeds: the interval is over the per-seed differences
  ``d_s = a_s - r_s`` (seeds only one arm has are left out of the comparison). Seed-to-seed spread
  moves both arms together, so pairing removes most of it (``shared/reference/cpu-pilot.md``: two
  AdamW seeds differed by 0.19 nats of forgetting, their paired SAM differences by 0.002);
* **unpaired** otherwise (each arm with at least two seeds): Welch's interval, or a bootstrap that
  resamples each arm's seeds independently;
* **none** with fewer seeds: one seed gives an estimate but no interval, and never a claim.

Two interval methods (:class:`IntervalSpec`):

``t``
    Student-t interval of the mean paired difference, ``mean(d) +- t_{n-1} sd(d) / sqrt(n)``, or
    Welch's interval unpaired. Exact under normal seed-to-seed noise; **the default**, because at the
    few seeds a CPU study affords the percentile bootstrap is too narrow: with 3 seeds its 95%
    interval is close to the range of the three differences, which excludes zero whenever they
    share a sign -- under no true difference, 2 times in 8 (tested in ``tests/test_stats.py``).
``bootstrap``
    Percentile bootstrap over seeds (resampling seed pairs with replacement; ``n_boot`` resamples
    from a fixed ``seed``, so the interval is deterministic), for quantities far from normal. It is
    **refused below** :data:`MIN_BOOTSTRAP_SEEDS` **seeds**: the comparison falls back to the
    t-interval and says so (``Difference.method`` is ``t``, ``Difference.note`` explains).

Every comparison with an interval also carries a two-sided ``p_value`` (paired t-test on the
shared seeds, Welch's test otherwise, whatever the interval method) and its minimum detectable
effect ``mde`` at 80% power (:func:`min_detectable_effect`). Differences that are equal on every
seed (zero variance) are ``identical``: the t-statistic is undefined, so there is no p-value, no
minimum detectable effect and never a claim ("identical across seeds"), whatever the zero-width
interval says. :func:`bh_qvalues` adjusts a family of p-values for multiplicity
(Benjamini-Hochberg).

Forgetting at matched fine-tuning loss ([SAM-PT] App C.4) is one number per base checkpoint once
the threshold tau is fixed: the study's analysis fixes tau at Eq. 10's value over every base of a
dataset and resamples seeds only, so the interval is conditional on that tau. Fine-tuning runs are
not resampled: they are the points of a learning-rate grid (a design, not a random sample), and
their own randomness varies with the base's seed, so the seed-to-seed spread already holds it.

Percentages ("5% less forgetting") are the difference and its interval divided by the reference
arm's mean (:func:`relative`); the denominator's own uncertainty is not propagated, so a
percentage is only given when that mean is positive and at least :data:`MIN_DENOMINATOR_SE`
standard errors above zero -- a percentage of a denominator that is mostly noise says nothing.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import asdict, dataclass
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

from ..config import Checked, setting

__all__ = [
    "METHODS",
    "DEFAULT_CONFIDENCE",
    "MIN_DENOMINATOR_SE",
    "IntervalSpec",
    "Difference",
    "MIN_BOOTSTRAP_SEEDS",
    "POWER",
    "compare_seeds",
    "mean_interval",
    "interval_method",
    "t_quantile",
    "relative",
    "min_detectable_effect",
    "mde_paired",
    "bh_qvalues",
    "ratio_interval",
]

METHODS = ("t", "bootstrap")
DEFAULT_CONFIDENCE = 0.95
#: a percentage is printed only when its denominator is at least this many standard errors from 0
MIN_DENOMINATOR_SE = 3.0
#: the percentile bootstrap needs at least this many seeds (pairs when paired, else the smaller
#: arm); below it the interval is the t-interval. At 2-3 seeds the percentile interval is the range
#: of the differences, which excludes zero 1 time in 2 (n = 2) or 4 (n = 3) under no effect.
MIN_BOOTSTRAP_SEEDS = 10
#: the power at which a minimum detectable effect is stated
POWER = 0.8
#: differences whose standard deviation is below this fraction of the values' scale are equal
#: (float rounding of ``a_s - r_s`` is ~1e-16 of the values)
_IDENTICAL_RTOL = 1e-12


@dataclass(frozen=True)
class IntervalSpec(Checked):
    """How intervals are computed: ``method`` (``t`` or ``bootstrap``), two-sided ``confidence``,
    and for the bootstrap the number of resamples and the RNG seed (deterministic). A study's
    ``analysis`` section is checked by building one (its ``interval`` is ``method`` here)."""

    method: str = setting("t", choices=METHODS, hint=" (the interval method)")
    confidence: float = setting(DEFAULT_CONFIDENCE, ge=0.5, lt=1, hint=" (two-sided, e.g. 0.95)")
    n_boot: int = setting(10_000, ge=100, hint=" (bootstrap resamples)")
    seed: int = 0

    def describe(self) -> str:
        pct = f"{100 * self.confidence:g}%"
        tests = (
            f"; two-sided p-values from the paired t-test (Welch's test unpaired); minimum detectable "
            f"effect at {100 * POWER:g}% power from the noncentral t"
        )
        if self.method == "t":
            return (
                f"{pct} Student-t interval over pretraining seeds: of the mean per-seed difference when "
                f"the arms share seeds (paired), Welch's otherwise; one seed gives no interval" + tests
            )
        return (
            f"{pct} percentile bootstrap over pretraining seeds ({self.n_boot} resamples, seed "
            f"{self.seed}): seed pairs resampled together when the arms share seeds (paired), each "
            f"arm's seeds independently otherwise; refused below {MIN_BOOTSTRAP_SEEDS} seeds (Student-t "
            f"interval instead); one seed gives no interval" + tests
        )

    def to_dict(self) -> Dict[str, object]:
        return {**asdict(self), "description": self.describe()}


@dataclass(frozen=True)
class Difference:
    """``mean(arm) - mean(reference)`` over seeds with its interval (``None`` bounds: no interval)."""

    estimate: float
    ci_low: Optional[float]
    ci_high: Optional[float]
    #: seeds in the comparison: pairs when paired, else the smaller arm's count
    n_seeds: int
    paired: bool
    arm_mean: float
    reference_mean: float
    #: standard error of the reference arm's mean over its seeds (None with one seed)
    reference_se: Optional[float]
    #: the interval method actually used (``t`` when the bootstrap was refused, see ``note``)
    method: str
    confidence: float
    #: two-sided p-value of "no difference": paired t-test, Welch's test unpaired (None without an
    #: interval, or when ``identical``)
    p_value: Optional[float] = None
    #: minimum detectable effect at :data:`POWER` for a test at alpha = 1 - confidence, from the
    #: observed SD and n (:func:`min_detectable_effect`; None without an interval or when identical)
    mde: Optional[float] = None
    #: every paired difference is equal (unpaired: each arm is constant): zero variance, no test
    identical: bool = False
    #: why the method differs from the one asked for (bootstrap refused below 10 seeds), else None
    note: Optional[str] = None

    @property
    def has_interval(self) -> bool:
        return self.ci_low is not None and self.ci_high is not None

    @property
    def significant(self) -> bool:
        """The interval excludes zero and the seeds vary (only then may a finding use a
        comparative word); never when ``identical``."""
        return self.has_interval and not self.identical and (self.ci_low > 0 or self.ci_high < 0)  # type: ignore[operator]

    def to_dict(self) -> Dict[str, object]:
        return {**asdict(self), "significant": self.significant}


def t_quantile(p: float, df: float) -> float:
    """The ``p`` quantile of Student's t with ``df`` degrees of freedom."""
    from scipy.stats import t

    return float(t.ppf(p, df))


def _se(xs: Sequence[float]) -> Optional[float]:
    return statistics.stdev(xs) / math.sqrt(len(xs)) if len(xs) > 1 else None


def _percentile_interval(samples, confidence: float) -> Tuple[float, float]:
    import numpy as np

    alpha = 1.0 - confidence
    lo, hi = np.quantile(samples, [alpha / 2, 1 - alpha / 2])
    return float(lo), float(hi)


def _rng(spec: IntervalSpec):
    import numpy as np

    return np.random.Generator(np.random.PCG64(spec.seed))


def mean_interval(
    values: Sequence[float], spec: IntervalSpec = IntervalSpec()
) -> Tuple[float, Optional[float], Optional[float]]:
    """(mean, low, high) of one arm's values over seeds -- the band of one line in a figure (the
    bootstrap is refused below :data:`MIN_BOOTSTRAP_SEEDS` values: t-interval)."""
    xs = [float(v) for v in values]
    if not xs:
        raise ValueError("mean_interval needs at least one value")
    m = statistics.fmean(xs)
    if len(xs) < 2:
        return m, None, None
    if interval_method(spec, len(xs))[0] == "t":  # the bootstrap is refused below 10 seeds
        h = t_quantile(0.5 + spec.confidence / 2, len(xs) - 1) * _se(xs)  # type: ignore[operator]
        return m, m - h, m + h
    lo, hi = _bootstrap_paired(xs, spec)
    return m, lo, hi


def interval_method(spec: IntervalSpec, n: int) -> Tuple[str, Optional[str]]:
    """(method used, note) for a comparison of ``n`` seeds: the bootstrap is refused below
    :data:`MIN_BOOTSTRAP_SEEDS` and the t-interval used instead, with a note that says so."""
    if spec.method == "bootstrap" and n < MIN_BOOTSTRAP_SEEDS:
        return "t", (f"Percentile bootstrap refused at {n} seeds (it needs {MIN_BOOTSTRAP_SEEDS}): Student-t interval.")
    return spec.method, None


def _bootstrap_paired(d: Sequence[float], spec: IntervalSpec) -> Tuple[float, float]:
    """Percentile interval of the mean of ``d`` over ``spec.n_boot`` resamples with replacement."""
    import numpy as np

    x = np.asarray(d, dtype=float)
    idx = _rng(spec).integers(0, len(x), size=(spec.n_boot, len(x)))
    return _percentile_interval(x[idx].mean(axis=1), spec.confidence)


def _bootstrap_unpaired(av: Sequence[float], rv: Sequence[float], spec: IntervalSpec) -> Tuple[float, float]:
    import numpy as np

    rng = _rng(spec)
    xa, xr = np.asarray(av, dtype=float), np.asarray(rv, dtype=float)
    ba = xa[rng.integers(0, len(av), size=(spec.n_boot, len(av)))].mean(axis=1)
    br = xr[rng.integers(0, len(rv), size=(spec.n_boot, len(rv)))].mean(axis=1)
    return _percentile_interval(ba - br, spec.confidence)


def _p_value(est: float, se: float, df: float) -> float:
    """Two-sided p-value of a t-statistic ``est / se`` with ``df`` degrees of freedom."""
    from scipy.stats import t

    return float(min(1.0, 2.0 * t.sf(abs(est) / se, df)))


def _constant(xs: Sequence[float], scale: float) -> bool:
    return len(xs) < 2 or statistics.pstdev(xs) <= _IDENTICAL_RTOL * max(1.0, scale)


def compare_seeds(
    arm: Mapping[int, float],
    reference: Mapping[int, float],
    spec: IntervalSpec = IntervalSpec(),
) -> Difference:
    """``mean(arm) - mean(reference)`` with an interval, p-value and minimum detectable effect over
    seeds (see the module docstring).

    ``arm`` and ``reference`` map a pretraining seed to that seed's value. Paired on the shared
    seeds when there are at least two; unpaired when each arm has at least two seeds; otherwise an
    estimate without an interval.
    """
    a = {int(k): float(v) for k, v in arm.items()}
    r = {int(k): float(v) for k, v in reference.items()}
    if not a or not r:
        raise ValueError("compare_seeds needs at least one seed per arm")
    bad = [v for v in list(a.values()) + list(r.values()) if not math.isfinite(v)]
    if bad:
        raise ValueError(f"compare_seeds needs finite values, got {bad[:3]}")
    conf = float(spec.confidence)
    q = 0.5 + conf / 2
    alpha = 1.0 - conf
    scale = max(abs(v) for v in list(a.values()) + list(r.values()))
    shared = sorted(set(a) & set(r))
    if len(shared) >= 2:
        d = [a[s] - r[s] for s in shared]
        rs = [r[s] for s in shared]
        n = len(d)
        est = statistics.fmean(d)
        method, note = interval_method(spec, n)
        common = dict(
            n_seeds=n,
            paired=True,
            arm_mean=statistics.fmean(a[s] for s in shared),
            reference_mean=statistics.fmean(rs),
            reference_se=_se(rs),
            method=method,
            confidence=conf,
            note=note,
        )
        if _constant(d, scale):
            return Difference(est, est, est, identical=True, **common)
        se = _se(d)
        if method == "t":
            h = t_quantile(q, n - 1) * se  # type: ignore[operator]
            lo, hi = est - h, est + h
        else:
            lo, hi = _bootstrap_paired(d, spec)
        return Difference(
            est,
            lo,
            hi,
            p_value=_p_value(est, se, n - 1),  # type: ignore[arg-type]
            mde=min_detectable_effect(se, n - 1, alpha),
            **common,
        )  # type: ignore[arg-type]
    av, rv = list(a.values()), list(r.values())
    ma, mr = statistics.fmean(av), statistics.fmean(rv)
    est = ma - mr
    n = min(len(av), len(rv))
    method, note = interval_method(spec, n)
    common = dict(
        n_seeds=n, paired=False, arm_mean=ma, reference_mean=mr, reference_se=_se(rv), method=method, confidence=conf
    )
    if n < 2:
        return Difference(est, None, None, **common)
    common["note"] = note
    if _constant(av, scale) and _constant(rv, scale):
        return Difference(est, est, est, identical=True, **common)
    va, vr = statistics.variance(av) / len(av), statistics.variance(rv) / len(rv)
    se = math.sqrt(va + vr)
    df = (va + vr) ** 2 / (va**2 / (len(av) - 1) + vr**2 / (len(rv) - 1))  # Welch-Satterthwaite
    if method == "t":
        h = t_quantile(q, df) * se
        lo, hi = est - h, est + h
    else:
        lo, hi = _bootstrap_unpaired(av, rv, spec)
    return Difference(est, lo, hi, p_value=_p_value(est, se, df), mde=min_detectable_effect(se, df, alpha), **common)


def relative(diff: Difference) -> Optional[Tuple[float, Optional[float], Optional[float]]]:
    """The difference and its interval in percent of the reference arm's mean, or ``None`` unless
    that mean is positive (a degradation or forgetting that happened) and at least
    :data:`MIN_DENOMINATOR_SE` standard errors above zero (one seed: no standard error, no check,
    no percentage)."""
    m, se = diff.reference_mean, diff.reference_se
    if se is None or not math.isfinite(m) or m <= 0.0 or m < MIN_DENOMINATOR_SE * se:
        return None
    scale = 100.0 / m
    if not diff.has_interval:
        return diff.estimate * scale, None, None
    return diff.estimate * scale, diff.ci_low * scale, diff.ci_high * scale  # type: ignore[operator]


def min_detectable_effect(
    se: float, df: float, alpha: float = 1 - DEFAULT_CONFIDENCE, power: float = POWER
) -> Optional[float]:
    """The smallest true difference that a two-sided t-test at level ``alpha`` rejects with
    probability ``power``, for an estimate with standard error ``se`` and ``df`` degrees of freedom.

    Under a true difference delta the statistic T = estimate / se follows the noncentral t with
    ``df`` degrees of freedom and noncentrality delta / se, so the power is
    ``P(T > t_{1-alpha/2}) + P(T < -t_{1-alpha/2})`` (Cohen 1988, *Statistical Power Analysis for
    the Behavioral Sciences*, 2nd ed., Sec 2.5; the standard noncentral-t power of the one- and
    two-sample t-tests). The noncentrality that gives ``power`` is found by root finding and
    multiplied by ``se``. ``se`` is the observed one (the SD estimate is treated as the true SD,
    as usual for a post-hoc minimum detectable effect). None when ``df <= 0`` or ``se`` is not finite.
    """
    from scipy.optimize import brentq
    from scipy.stats import nct, t

    if not (math.isfinite(se) and se >= 0.0 and math.isfinite(df) and df > 0):
        return None
    if not (0.0 < alpha < 1.0 and alpha < power < 1.0):
        raise ValueError(f"min_detectable_effect needs 0 < alpha < power < 1, got alpha={alpha}, power={power}")
    if se == 0.0:
        return 0.0
    crit = float(t.ppf(1.0 - alpha / 2.0, df))

    def shortfall(nc: float) -> float:
        lower = float(nct.cdf(-crit, df, nc))  # below alpha/2; scipy returns nan where it is ~1e-20
        return float(nct.sf(crit, df, nc)) + (lower if math.isfinite(lower) else 0.0) - power

    hi = crit + 1.0
    while shortfall(hi) < 0.0:
        hi *= 2.0
    return float(brentq(shortfall, 0.0, hi, xtol=1e-10)) * se


def mde_paired(sd: float, n: int, alpha: float = 0.05, power: float = POWER) -> Optional[float]:
    """Minimum detectable effect of the two-sided paired t-test on ``n`` seed pairs whose
    differences have standard deviation ``sd`` (:func:`min_detectable_effect` with se = sd/sqrt(n),
    n - 1 degrees of freedom; noncentral t, Cohen 1988 Sec 2.5). At 3 pairs, alpha 0.05 and 80%
    power it is about 3.3 sd; None below 2 pairs."""
    if n < 2:
        return None
    return min_detectable_effect(float(sd) / math.sqrt(n), n - 1, alpha, power)


def bh_qvalues(p_values: Sequence[Optional[float]]) -> List[Optional[float]]:
    """Benjamini-Hochberg adjusted p-values (q-values) of one family of comparisons, in the input
    order (Benjamini & Hochberg 1995, J. R. Stat. Soc. B 57:289, step-up procedure:
    q_(i) = min_{j >= i} m p_(j) / j over the p-values sorted ascending, capped at 1); computed by
    ``scipy.stats.false_discovery_control(method="bh")``. A ``None`` (a comparison without a test)
    stays ``None`` and is not counted in m."""
    from scipy.stats import false_discovery_control

    idx = [i for i, p in enumerate(p_values) if p is not None]
    out: List[Optional[float]] = [None] * len(p_values)
    if not idx:
        return out
    ps = [float(p_values[i]) for i in idx]  # type: ignore[arg-type]
    bad = [p for p in ps if not 0.0 <= p <= 1.0]
    if bad:
        raise ValueError(f"bh_qvalues needs p-values in [0, 1], got {bad[:3]}")
    for i, q in zip(idx, false_discovery_control(ps, method="bh")):
        out[i] = float(q)
    return out


def ratio_interval(
    num: Sequence[float], den: Sequence[float], confidence: float = DEFAULT_CONFIDENCE
) -> Tuple[float, Optional[float], Optional[float]]:
    """``mean(num) / mean(den)`` over paired seeds with Fieller's t-based interval (Fieller 1954,
    J. R. Stat. Soc. B 16:175): the ratios R whose ``mean(num) - R mean(den)`` a paired t-test does
    not reject, i.e. ``A R^2 - 2 B R + C <= 0`` with ``A = ybar^2 - g s_yy``, ``B = xbar ybar - g s_xy``,
    ``C = xbar^2 - g s_xx``, ``g = t_{n-1}^2 / n`` (sample (co)variances). Bounded only when the
    denominator's mean is resolved from zero (``A > 0``); otherwise the bounds are None (the ratio
    is unbounded at this confidence). The t-based counterpart of a percentile bootstrap of a ratio,
    for fewer than :data:`MIN_BOOTSTRAP_SEEDS` seeds."""
    import numpy as np

    x, y = np.asarray(num, dtype=float), np.asarray(den, dtype=float)
    if len(x) != len(y) or len(x) == 0:
        raise ValueError("ratio_interval needs paired values, one per seed in each sequence")
    xm, ym = float(x.mean()), float(y.mean())
    est = xm / ym if ym != 0 else float("nan")
    n = len(x)
    if n < 2:
        return est, None, None
    g = t_quantile(0.5 + confidence / 2, n - 1) ** 2 / n
    cov = np.cov(x, y, ddof=1)
    a = ym**2 - g * cov[1, 1]
    b = xm * ym - g * cov[0, 1]
    c = xm**2 - g * cov[0, 0]
    if a <= 0:
        return est, None, None
    root = math.sqrt(max(b * b - a * c, 0.0))
    return est, (b - root) / a, (b + root) / a
