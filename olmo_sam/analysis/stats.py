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
    from a fixed ``seed``, so the interval is deterministic). Use it from about 10 seeds on, or
    for quantities far from normal.

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
from typing import Dict, Mapping, Optional, Sequence, Tuple

from olmo_core.exceptions import OLMoConfigurationError

__all__ = [
    "METHODS",
    "DEFAULT_CONFIDENCE",
    "MIN_DENOMINATOR_SE",
    "IntervalSpec",
    "Difference",
    "compare_seeds",
    "mean_interval",
    "t_quantile",
    "relative",
]

METHODS = ("t", "bootstrap")
DEFAULT_CONFIDENCE = 0.95
#: a percentage is printed only when its denominator is at least this many standard errors from 0
MIN_DENOMINATOR_SE = 3.0


@dataclass(frozen=True)
class IntervalSpec:
    """How intervals are computed: ``method`` (``t`` or ``bootstrap``), two-sided ``confidence``,
    and for the bootstrap the number of resamples and the RNG seed (deterministic)."""

    method: str = "t"
    confidence: float = DEFAULT_CONFIDENCE
    n_boot: int = 10_000
    seed: int = 0

    def __post_init__(self):
        for name, kind in (("confidence", float), ("n_boot", int), ("seed", int)):
            try:
                object.__setattr__(self, name, kind(getattr(self, name)))
            except (TypeError, ValueError):
                raise OLMoConfigurationError(
                    f"analysis.{name} must be a number, got {getattr(self, name)!r}"
                ) from None
        if self.method not in METHODS:
            raise OLMoConfigurationError(
                f"analysis.interval: unknown interval method {self.method!r}; choose one of {list(METHODS)}"
            )
        if not 0.5 <= float(self.confidence) < 1.0:
            raise OLMoConfigurationError(
                f"analysis.confidence must be in [0.5, 1), e.g. 0.95; got {self.confidence!r}"
            )
        if int(self.n_boot) < 100:
            raise OLMoConfigurationError(f"analysis.n_boot must be >= 100, got {self.n_boot!r}")

    def describe(self) -> str:
        pct = f"{100 * self.confidence:g}%"
        if self.method == "t":
            return (
                f"{pct} Student-t interval over pretraining seeds: of the mean per-seed difference when "
                f"the arms share seeds (paired), Welch's otherwise; one seed gives no interval"
            )
        return (
            f"{pct} percentile bootstrap over pretraining seeds ({self.n_boot} resamples, seed "
            f"{self.seed}): seed pairs resampled together when the arms share seeds (paired), each "
            f"arm's seeds independently otherwise; one seed gives no interval"
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
    method: str
    confidence: float

    @property
    def has_interval(self) -> bool:
        return self.ci_low is not None and self.ci_high is not None

    @property
    def significant(self) -> bool:
        """The interval excludes zero (only then may a finding use a comparative word)."""
        return self.has_interval and (self.ci_low > 0 or self.ci_high < 0)  # type: ignore[operator]

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


def mean_interval(values: Sequence[float], spec: IntervalSpec = IntervalSpec()) -> Tuple[float, Optional[float], Optional[float]]:
    """(mean, low, high) of one arm's values over seeds -- the band of one line in a figure."""
    xs = [float(v) for v in values]
    if not xs:
        raise ValueError("mean_interval needs at least one value")
    m = statistics.fmean(xs)
    if len(xs) < 2:
        return m, None, None
    if spec.method == "t":
        h = t_quantile(0.5 + spec.confidence / 2, len(xs) - 1) * _se(xs)  # type: ignore[operator]
        return m, m - h, m + h
    import numpy as np

    x = np.asarray(xs)
    idx = _rng(spec).integers(0, len(xs), size=(spec.n_boot, len(xs)))
    lo, hi = _percentile_interval(x[idx].mean(axis=1), spec.confidence)
    return m, lo, hi


def compare_seeds(
    arm: Mapping[int, float],
    reference: Mapping[int, float],
    spec: IntervalSpec = IntervalSpec(),
) -> Difference:
    """``mean(arm) - mean(reference)`` with an interval over seeds (see the module docstring).

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
    conf, method = float(spec.confidence), spec.method
    q = 0.5 + conf / 2
    shared = sorted(set(a) & set(r))
    if len(shared) >= 2:
        d = [a[s] - r[s] for s in shared]
        rs = [r[s] for s in shared]
        est = statistics.fmean(d)
        if method == "t":
            h = t_quantile(q, len(d) - 1) * _se(d)  # type: ignore[operator]
            lo, hi = est - h, est + h
        else:
            import numpy as np

            x = np.asarray(d)
            idx = _rng(spec).integers(0, len(d), size=(spec.n_boot, len(d)))
            lo, hi = _percentile_interval(x[idx].mean(axis=1), conf)
        return Difference(est, lo, hi, len(d), True, statistics.fmean(a[s] for s in shared),
                          statistics.fmean(rs), _se(rs), method, conf)  # fmt: skip
    av, rv = list(a.values()), list(r.values())
    ma, mr = statistics.fmean(av), statistics.fmean(rv)
    est = ma - mr
    n = min(len(av), len(rv))
    if n < 2:
        return Difference(est, None, None, n, False, ma, mr, _se(rv), method, conf)
    if method == "t":
        va, vr = statistics.variance(av) / len(av), statistics.variance(rv) / len(rv)
        se = math.sqrt(va + vr)
        if se == 0.0:
            lo = hi = est
        else:  # Welch-Satterthwaite degrees of freedom
            df = (va + vr) ** 2 / (va**2 / (len(av) - 1) + vr**2 / (len(rv) - 1))
            h = t_quantile(q, df) * se
            lo, hi = est - h, est + h
    else:
        import numpy as np

        rng = _rng(spec)
        xa, xr = np.asarray(av), np.asarray(rv)
        ba = xa[rng.integers(0, len(av), size=(spec.n_boot, len(av)))].mean(axis=1)
        br = xr[rng.integers(0, len(rv), size=(spec.n_boot, len(rv)))].mean(axis=1)
        lo, hi = _percentile_interval(ba - br, conf)
    return Difference(est, lo, hi, n, False, ma, mr, _se(rv), method, conf)


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
