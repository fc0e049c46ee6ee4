"""Learning-forgetting analysis of fine-tuning sweeps ([SAM-PT] Sec 2.1, Sec 3.2, App C.4).

A fine-tuning run of base checkpoint theta_PT gives one point (L_PT(theta_FT), L_FT(theta_FT)):
L_FT is the fine-tuning validation loss ("learning"), L_PT the pretraining validation loss of the
fine-tuned weights ("forgetting"); both are lower-is-better. Each formula of the paper is
implemented once, here:

============================================  ===========================================
quantity                                      function
============================================  ===========================================
tradeoff set and its Pareto frontier          :func:`pareto_frontier` (Sec 2.1; Eq. 8)
L_min(i) and the common threshold tau         :func:`min_ft_loss`, :func:`matched_threshold`
                                              (App C.4, Eqs. 9-10)
retained PT loss at tau                       :func:`retained_pt_loss` (App C.4 after Eq. 10;
                                              Sec 3.2 footnote 1 / Fig 5)
"X% less forgetting"                          :func:`less_forgetting` (Sec 3.2; Sec 3.5.1)
============================================  ===========================================

Records are grouped into :class:`Curve` s, one per (dataset, base checkpoint, method), which is
one tradeoff set T(theta_PT) of Eq. 8; :func:`group_curves` builds them from a
:class:`~olmo_sam.finetune.records.ResultStore`. :func:`match_at_tau` evaluates every curve of a
dataset at one threshold, :func:`compare` adds "% less forgetting" against a reference curve
(Fig 2's claims), and :func:`matched_pt_view` arranges the same numbers against the base models'
own PT loss (Fig 5). Plots and tables live in :mod:`olmo_sam.analysis.plots` and
:mod:`olmo_sam.analysis.cli`.

Exactness: losses are compared exactly as recorded (no tolerance: a tolerance would make Pareto
dominance intransitive). Runs with a non-finite loss (diverged fine-tuning) are never on a
frontier; they are listed in :attr:`Frontier.non_finite` so the caller can report them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import PurePath
from typing import Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

from olmo_core.exceptions import OLMoConfigurationError

from ..finetune.records import FTRecord

__all__ = [
    "AnalysisError",
    "TauNotReached",
    "less_forgetting",
    "dominates",
    "FrontierPoint",
    "Frontier",
    "pareto_frontier",
    "CurveKey",
    "Curve",
    "base_names",
    "group_curves",
    "min_ft_loss",
    "matched_threshold",
    "Retained",
    "retained_pt_loss",
    "MatchedRow",
    "MatchedSet",
    "match_at_tau",
    "Comparison",
    "compare",
    "MatchedPTView",
    "matched_pt_view",
    "BASE_L_PT_RTOL",
]

#: Relative tolerance within which the ``base_l_pt`` of one base checkpoint may differ between its
#: records (the same model evaluated on the same PT validation set; only kernel nondeterminism).
BASE_L_PT_RTOL: float = 1e-4


class AnalysisError(OLMoConfigurationError):
    """The records cannot answer the question asked (names the curve/dataset and the fix)."""


class TauNotReached(AnalysisError):
    """Checkpoints with no run at L_FT <= tau (or < tau when strict); names each with its L_min."""

    def __init__(self, tau: float, missing: Sequence[Tuple[str, float]], strict: bool = False, dataset: str = ""):
        self.tau, self.missing, self.strict, self.dataset = tau, list(missing), strict, dataset
        op = "<" if strict else "<="
        where = f" on dataset '{dataset}'" if dataset else ""
        names = ", ".join(f"'{lab}' (best L_FT {l_min:.6g})" for lab, l_min in self.missing)
        need = max(l_min for _, l_min in self.missing)
        one = len(self.missing) == 1
        super().__init__(
            f"checkpoint{'' if one else 's'} {names}{where} never reach{'es' if one else ''} "
            f"L_FT {op} tau = {tau:.6g}. Use tau {'>' if strict else '>='} {need:.6g}, leave "
            f"these checkpoints out (--base), or leave tau unset for tau = max_i L_min(i) "
            f"([SAM-PT] App C.4, Eq. 10)."
        )


# ---------------------------------------------------------------------------------------------
# "X% less forgetting"
# ---------------------------------------------------------------------------------------------


def less_forgetting(reference: float, candidate: float) -> float:
    """Fraction of the reference's forgetting that the candidate avoids: ``1 - candidate/reference``.

    ``reference`` and ``candidate`` are degradations measured the same way, positive = forgot:

    * fine-tuning ([SAM-PT] Sec 3.2): the PT-loss increase L_PT(theta_FT) - L_PT(theta_PT) of each
      base checkpoint at a matched fine-tuning loss (App C.4); "SAM reduces StarCoder forgetting
      by 80% ... with degradation of +0.1 instead of +0.5" is ``less_forgetting(0.5, 0.1) = 0.8``;
    * benchmarks ([SAM-PT] Sec 3.5.1, Table 8): the drop of the benchmark-suite average from a
      common reference score (43.2); 4-bit NF4 gives ``less_forgetting(43.2 - 38.89, 43.2 - 40.60)
      = 0.397`` ("40% less forgetting").

    The result is > 1 when the candidate improved (negative degradation) and < 0 when it forgot
    more than the reference. It is undefined unless the reference forgot (``reference > 0``):
    :class:`AnalysisError` (an ``OLMoConfigurationError``). Multiply by 100 for percent.
    """
    reference, candidate = float(reference), float(candidate)
    if not (math.isfinite(reference) and math.isfinite(candidate)):
        raise AnalysisError(f"less_forgetting needs finite degradations, got {reference!r}, {candidate!r}")
    if reference <= 0:
        raise AnalysisError(
            f"less_forgetting is undefined: the reference did not forget (degradation "
            f"{reference:.6g} <= 0); pick a reference that degrades"
        )
    return 1.0 - candidate / reference


# ---------------------------------------------------------------------------------------------
# Pareto frontier of a tradeoff set ([SAM-PT] Sec 2.1, App C.4 Eq. 8)
# ---------------------------------------------------------------------------------------------


def dominates(a: Tuple[float, float], b: Tuple[float, float]) -> bool:
    """Pareto dominance of (L_PT, L_FT) points, both minimised: ``a`` is no worse in both
    coordinates and strictly better in at least one. Identical points do not dominate each other."""
    return a[0] <= b[0] and a[1] <= b[1] and (a[0] < b[0] or a[1] < b[1])


def _finite(r: FTRecord) -> bool:
    return math.isfinite(r.l_pt) and math.isfinite(r.l_ft)


def _order(r: FTRecord) -> Tuple:
    """Total order of runs: finite ones by (L_FT, L_PT, run_id), then non-finite by run_id."""
    return (0, r.l_ft, r.l_pt, r.run_id) if _finite(r) else (1, 0.0, 0.0, r.run_id)


@dataclass(frozen=True)
class FrontierPoint:
    """One non-dominated (L_PT, L_FT) point and every run that landed exactly on it."""

    l_pt: float
    l_ft: float
    #: runs with exactly these coordinates (duplicates collapse into one point), by ``run_id``
    runs: Tuple[FTRecord, ...]

    @property
    def run_ids(self) -> List[str]:
        return [r.run_id for r in self.runs]

    @property
    def lrs(self) -> List[float]:
        return [r.lr for r in self.runs]


@dataclass(frozen=True)
class Frontier:
    """The Pareto frontier of one tradeoff set."""

    #: non-dominated points by L_FT ascending, hence L_PT strictly descending
    points: Tuple[FrontierPoint, ...]
    #: finite runs strictly dominated by some frontier point, by (L_FT, L_PT, run_id)
    dominated: Tuple[FTRecord, ...]
    #: runs with a NaN/inf loss (diverged); never on the frontier, by run_id
    non_finite: Tuple[FTRecord, ...]

    @property
    def l_min(self) -> float:
        """Smallest L_FT of the set (Eq. 9): the first frontier point's, since the point with
        the smallest L_FT (and among those the smallest L_PT) is never dominated."""
        if not self.points:
            raise AnalysisError("the tradeoff set has no run with finite losses")
        return self.points[0].l_ft


def pareto_frontier(records: Iterable[FTRecord]) -> Frontier:
    """Pareto frontier of the tradeoff set {(L_PT(theta_FT), L_FT(theta_FT))} ([SAM-PT] Sec 2.1,
    App C.4 Eq. 8): the runs that no other run beats in both losses (:func:`dominates`).

    Ties: runs with identical coordinates share one :class:`FrontierPoint` (or are all dominated);
    a run that ties another in one loss and is worse in the other is dominated. Order is fully
    deterministic: points by L_FT ascending; runs inside a point by ``run_id``.
    """
    records = list(records)
    finite = sorted((r for r in records if _finite(r)), key=_order)
    non_finite = tuple(sorted((r for r in records if not _finite(r)), key=lambda r: r.run_id))

    points: List[FrontierPoint] = []
    dominated: List[FTRecord] = []
    best_pt = math.inf  # smallest L_PT among points with smaller (or equal, lower-PT) L_FT
    i = 0
    while i < len(finite):
        j = i
        while j < len(finite) and (finite[j].l_ft, finite[j].l_pt) == (finite[i].l_ft, finite[i].l_pt):
            j += 1
        group = finite[i:j]  # identical coordinates, already by run_id
        # every earlier group has L_FT <= this one and differs in a coordinate, so it dominates
        # this group iff its L_PT is <= ours
        if group[0].l_pt < best_pt:
            points.append(FrontierPoint(group[0].l_pt, group[0].l_ft, tuple(group)))
            best_pt = group[0].l_pt
        else:
            dominated.extend(group)
        i = j
    return Frontier(tuple(points), tuple(dominated), non_finite)


# ---------------------------------------------------------------------------------------------
# Curves: one tradeoff set per (dataset, base checkpoint, method[, hparam split])
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CurveKey:
    dataset: str
    base: str
    #: ``None`` when all methods of the base are pooled into one set
    method: Optional[str]
    #: hyper-parameter values that split a set further (e.g. EWC lambda), as sorted (key, value)
    split: Tuple[Tuple[str, str], ...] = ()


@dataclass
class Curve:
    """One tradeoff set T(theta_PT) of [SAM-PT] Eq. 8 (one line of Fig 2)."""

    key: CurveKey
    #: unique display name (base label, disambiguated, + "/method" when methods differ)
    label: str
    #: checkpoints of one arm (same base label, method, split) form one line in Fig 5
    arm: str
    base_label: str
    #: the base model's own PT loss L_PT(theta_PT)
    base_l_pt: float
    records: Tuple[FTRecord, ...]
    #: other names that select this curve (base path, ``label@dirname``, each + the suffix)
    aliases: Tuple[str, ...] = ()
    _frontier: Optional[Frontier] = field(default=None, repr=False, compare=False)

    @property
    def dataset(self) -> str:
        return self.key.dataset

    @property
    def frontier(self) -> Frontier:
        if self._frontier is None:
            self._frontier = pareto_frontier(self.records)
        return self._frontier


def _check_selection(name: str, wanted: Optional[Sequence[str]], available: Iterable[str]) -> None:
    if not wanted:
        return
    available = sorted(set(available))
    missing = [w for w in wanted if w not in available]
    if missing:
        raise AnalysisError(f"{name} {missing} not in the results; available: {', '.join(available) or '(none)'}")


def base_label(r: FTRecord) -> str:
    """The record's ``base_label``, or the checkpoint folder's name when none was recorded."""
    return r.base_label or PurePath(r.base).name or r.base


def base_names(r: FTRecord) -> Tuple[str, ...]:
    """Names that select a record's base checkpoint: its label, its path, and ``label@dirname`` /
    ``label@path`` (the forms curve labels take when several checkpoints share a label)."""
    lab = base_label(r)
    return (lab, r.base, f"{lab}@{PurePath(r.base).name}", f"{lab}@{r.base}")


def _split_value(r: FTRecord, key: str) -> str:
    if key in r.hparams:
        return str(r.hparams[key])
    raise AnalysisError(
        f"run '{r.run_id}' has no hyper-parameter '{key}' to split by (its hparams: "
        f"{sorted(r.hparams)}); drop the split or filter to runs that record it"
    )


def _base_l_pt(base: str, recs: Sequence[FTRecord]) -> float:
    values = sorted({r.base_l_pt for r in recs})
    if not all(math.isfinite(v) for v in values):
        raise AnalysisError(f"base checkpoint '{base}' has a non-finite base_l_pt {values}")
    lo, hi = values[0], values[-1]
    if hi - lo > BASE_L_PT_RTOL * max(abs(lo), abs(hi)):
        raise AnalysisError(
            f"base checkpoint '{base}' has inconsistent base_l_pt across its runs ({lo:.6g} .. "
            f"{hi:.6g}); were different PT validation sets used? Forgetting is only comparable on "
            f"one set: re-evaluate or filter the runs"
        )
    return min(recs, key=lambda r: r.run_id).base_l_pt


def group_curves(
    records: Sequence[FTRecord],
    *,
    datasets: Optional[Sequence[str]] = None,
    methods: Optional[Sequence[str]] = None,
    bases: Optional[Sequence[str]] = None,
    by_method: bool = True,
    split_by: Sequence[str] = (),
) -> Dict[str, List[Curve]]:
    """Group records into tradeoff sets: dataset -> curves, both in a deterministic order.

    ``datasets``/``methods`` filter by exact name; ``bases`` by any of :func:`base_names`. A name
    that matches nothing is an error (never silently an empty analysis). ``by_method=False``
    pools all methods of a base into one set; ``split_by`` names ``hparams`` keys whose values
    split a set further (e.g. ``["ewc_lambda"]`` for Fig 41's per-lambda frontiers).
    """
    if not records:
        raise AnalysisError("the results contain no fine-tuning runs")
    _check_selection("dataset(s)", datasets, (r.dataset for r in records))
    _check_selection("method(s)", methods, (r.method for r in records))
    _check_selection("base(s)", bases, (n for r in records for n in base_names(r)))
    sel = [
        r
        for r in records
        if (not datasets or r.dataset in datasets)
        and (not methods or r.method in methods)
        and (not bases or any(n in bases for n in base_names(r)))
    ]
    if not sel:
        raise AnalysisError(
            "no run matches the selection (datasets={}, methods={}, bases={})".format(
                list(datasets or []), list(methods or []), list(bases or [])
            )
        )

    # one label per base; one base per label unless disambiguated
    labels_of: Dict[str, set] = {}
    for r in sel:
        labels_of.setdefault(r.base, set()).add(base_label(r))
    for base, labels in labels_of.items():
        if len(labels) > 1:
            raise AnalysisError(
                f"base checkpoint '{base}' is recorded under several labels {sorted(labels)}; "
                f"one checkpoint needs one base_label"
            )
    label_of = {b: next(iter(ls)) for b, ls in labels_of.items()}
    bases_of: Dict[str, List[str]] = {}
    for b, lab in sorted(label_of.items()):
        bases_of.setdefault(lab, []).append(b)
    name_of: Dict[str, str] = {}
    for lab, bs in bases_of.items():
        if len(bs) == 1:
            name_of[bs[0]] = lab
            continue
        short = {b: PurePath(b).name or b for b in bs}
        unique = len(set(short.values())) == len(bs)
        for b in bs:
            name_of[b] = f"{lab}@{short[b] if unique else b}"
    several_methods = by_method and len({r.method for r in sel}) > 1

    def suffix(method: Optional[str], split: Tuple[Tuple[str, str], ...]) -> str:
        s = f"/{method}" if several_methods and method is not None else ""
        if split:
            s += "[" + ",".join(f"{k}={v}" for k, v in split) + "]"
        return s

    groups: Dict[CurveKey, List[FTRecord]] = {}
    for r in sel:
        split = tuple(sorted((k, _split_value(r, k)) for k in split_by))
        key = CurveKey(r.dataset, r.base, r.method if by_method else None, split)
        groups.setdefault(key, []).append(r)

    base_l_pt = {b: _base_l_pt(b, [r for r in sel if r.base == b]) for b in label_of}
    out: Dict[str, List[Curve]] = {}
    for key, recs in groups.items():
        sfx = suffix(key.method, key.split)
        out.setdefault(key.dataset, []).append(
            Curve(
                key=key,
                label=name_of[key.base] + sfx,
                arm=label_of[key.base] + sfx,
                base_label=label_of[key.base],
                base_l_pt=base_l_pt[key.base],
                records=tuple(sorted(recs, key=_order)),
                aliases=tuple(n + sfx for n in base_names(recs[0])),
            )
        )
    return {
        ds: sorted(cs, key=lambda c: (c.label, c.key.base, c.key.method or "", c.key.split))
        for ds, cs in sorted(out.items())
    }


# ---------------------------------------------------------------------------------------------
# Matched comparison at a common fine-tuning loss ([SAM-PT] App C.4)
# ---------------------------------------------------------------------------------------------


def min_ft_loss(curve: Curve) -> float:
    """L_min(i): the smallest fine-tuning loss in the curve's tradeoff set ([SAM-PT] App C.4, Eq. 9)."""
    if not curve.frontier.points:
        raise AnalysisError(
            f"checkpoint '{curve.label}' on dataset '{curve.dataset}' has no run with finite "
            f"losses ({len(curve.frontier.non_finite)} diverged); it has no tradeoff set"
        )
    return curve.frontier.l_min


def matched_threshold(curves: Sequence[Curve]) -> float:
    """tau = max_i L_min(i) ([SAM-PT] App C.4, Eq. 10): the smallest fine-tuning loss every
    checkpoint reaches, so each has at least one run with L_FT <= tau."""
    if not curves:
        raise AnalysisError("no checkpoint to compute tau from")
    return max(min_ft_loss(c) for c in curves)


@dataclass(frozen=True)
class Retained:
    """The retained PT loss of one curve at a fine-tuning-loss threshold."""

    tau: float
    l_pt: float
    #: L_FT of the reported point (``tau`` itself when interpolated between two points)
    l_ft: float
    #: the frontier point reported, or the two interpolated between
    points: Tuple[FrontierPoint, ...]
    interpolated: bool = False
    #: the learning rate of the reported point (its lowest when several runs share the point);
    #: when interpolated, the log-LR interpolation between the two bracketing runs' LRs
    lr: Optional[float] = None
    #: the reported run is the lowest learning rate of the curve's grid, and it overshoots tau
    #: (L_FT < tau), or every run of the grid does: tau may lie below the grid, so the retained PT
    #: loss is an upper bound (a lower LR might reach tau forgetting less). Not measurable on this
    #: grid; extend it downward.
    grid_edge: bool = False


def retained_pt_loss(curve: Curve, tau: float, *, strict: bool = False, interpolate: bool = False) -> Retained:
    """Smallest L_PT over the curve's runs with L_FT <= tau ([SAM-PT] App C.4, after Eq. 10).

    The argmin is a frontier point (any run dominating it would also satisfy the constraint): the
    frontier point with the largest L_FT <= tau. ``strict=True`` uses L_FT < tau, the wording of
    Sec 3.2 footnote 1 (Fig 5); it needs a user-given tau, since with Eq. 10's tau the checkpoint
    attaining the max has no run strictly below it.

    ``interpolate=True`` (not the paper's definition; off by default) instead estimates L_PT at
    L_FT = tau exactly by interpolating in log learning rate between the two frontier runs that
    bracket tau: the weight w puts log LR where the line through the two runs' L_FT reaches tau,
    and L_PT is taken at the same w (so the point lies on the straight frontier segment between the
    two runs; ``lr`` is the interpolated LR). Rationale: the paper's value is the PT loss of
    whichever run the LR grid happened to put below tau, so with a coarse grid a checkpoint can be
    charged for a run that learned much more than tau requires, while the checkpoint defining tau is
    evaluated exactly at tau. The interpolated value is never above the paper's value and equals it
    when a frontier point sits at tau or tau lies beyond the last frontier point (which is then
    reported). It assumes both losses are linear in log LR between measured runs, so it describes
    no trained run.

    ``grid_edge`` (:class:`Retained`) says when neither rule can place tau inside the grid: the
    reported run overshoots tau and is the grid's lowest learning rate, or no run of the grid is
    above tau at all.
    """
    if strict and interpolate:
        raise AnalysisError(
            "interpolation estimates L_PT at L_FT = tau exactly, which a strict (L_FT < tau) "
            "threshold excludes; use one or the other"
        )
    if not math.isfinite(tau):
        raise AnalysisError(f"tau must be a finite loss, got {tau!r}")
    pts = curve.frontier.points
    l_min = min_ft_loss(curve)
    feasible = [p for p in pts if (p.l_ft < tau if strict else p.l_ft <= tau)]
    if not feasible:
        raise TauNotReached(tau, [(curve.label, l_min)], strict, curve.dataset)
    best = feasible[-1]  # largest feasible L_FT on the frontier = smallest feasible L_PT
    k = len(feasible)
    if interpolate and best.l_ft < tau and k < len(pts):
        nxt = pts[k]  # first frontier point above tau
        w = (tau - best.l_ft) / (nxt.l_ft - best.l_ft)
        l_pt = best.l_pt + w * (nxt.l_pt - best.l_pt)
        lo_lr, hi_lr = min(best.lrs), min(nxt.lrs)
        lr = math.exp(math.log(lo_lr) + w * (math.log(hi_lr) - math.log(lo_lr))) if lo_lr > 0 and hi_lr > 0 else None
        return Retained(tau, l_pt, tau, (best, nxt), interpolated=True, lr=lr)
    grid_low = min((r.lr for r in curve.records if _finite(r)), default=None)
    overshoot = best.l_ft < tau
    edge = overshoot and (min(best.lrs) == grid_low or k == len(pts))
    return Retained(tau, best.l_pt, best.l_ft, (best,), lr=min(best.lrs), grid_edge=edge)


@dataclass(frozen=True)
class MatchedRow:
    curve: Curve
    l_min: float
    retained: Retained

    @property
    def forgetting(self) -> float:
        """PT-loss increase L_PT(theta_FT) - L_PT(theta_PT) at the matched fine-tuning loss."""
        return self.retained.l_pt - self.curve.base_l_pt

    @property
    def grid_edge(self) -> bool:
        """Matched at the grid's lowest learning rate past tau: an upper bound (:class:`Retained`)."""
        return self.retained.grid_edge


@dataclass(frozen=True)
class MatchedSet:
    """Every curve of one dataset evaluated at one threshold."""

    dataset: str
    tau: float
    #: "eq10" (tau = max_i L_min(i)) or "given"
    tau_source: str
    strict: bool
    interpolate: bool
    rows: Tuple[MatchedRow, ...]

    def row(self, name: str) -> MatchedRow:
        """The row of the curve labelled ``name`` (or, failing that, with ``name`` as an alias)."""
        found = [r for r in self.rows if r.curve.label == name] or [r for r in self.rows if name in r.curve.aliases]
        if len(found) == 1:
            return found[0]
        labels = ", ".join(r.curve.label for r in (found or self.rows))
        what = "is ambiguous; it names" if found else "names no checkpoint; available:"
        raise AnalysisError(f"'{name}' on dataset '{self.dataset}' {what} {labels}")


def _same_dataset(curves: Sequence[Curve]) -> str:
    if not curves:
        raise AnalysisError("no checkpoint to evaluate")
    names = sorted({c.dataset for c in curves})
    if len(names) > 1:
        raise AnalysisError(f"a matched comparison is per dataset; got curves from {names}")
    return names[0]


def match_at_tau(
    curves: Sequence[Curve],
    tau: Optional[float] = None,
    *,
    strict: bool = False,
    interpolate: bool = False,
) -> MatchedSet:
    """Retained PT loss of every curve of one dataset at a common tau (default: Eq. 10's)."""
    dataset = _same_dataset(curves)
    if tau is None:
        if strict:
            raise AnalysisError(
                "a strict threshold (L_FT < tau) needs an explicit tau: with tau = max_i L_min(i) "
                "(Eq. 10) the checkpoint attaining the max has no run strictly below it"
            )
        tau_value, source = matched_threshold(curves), "eq10"
    else:
        tau_value, source = float(tau), "given"
    rows, missing = [], []
    for c in curves:
        try:
            kept = retained_pt_loss(c, tau_value, strict=strict, interpolate=interpolate)
        except TauNotReached as e:
            missing += e.missing
            continue
        rows.append(MatchedRow(c, min_ft_loss(c), kept))
    if missing:
        raise TauNotReached(tau_value, missing, strict, dataset)
    return MatchedSet(dataset, tau_value, source, strict, interpolate, tuple(rows))


@dataclass(frozen=True)
class Comparison:
    """A :class:`MatchedSet` with "% less forgetting" of each curve against a reference."""

    matched: MatchedSet
    reference: str
    #: label -> fraction less forgetting than the reference (None: undefined, see ``notes``)
    less: Mapping[str, Optional[float]]
    notes: Tuple[str, ...] = ()


def compare(
    curves: Sequence[Curve],
    *,
    reference: Optional[str] = None,
    tau: Optional[float] = None,
    strict: bool = False,
    interpolate: bool = False,
) -> Comparison:
    """[SAM-PT] App C.4 matched comparison of two or more base checkpoints on one dataset:
    forgetting L_PT(theta_FT) - L_PT(theta_PT) at a common tau, and :func:`less_forgetting` of
    each against ``reference`` (a curve label; default: the first label in sorted order)."""
    dataset = _same_dataset(curves)
    if len(curves) < 2:
        raise AnalysisError(
            f"a comparison needs at least two checkpoints on dataset '{dataset}'; found only "
            f"'{curves[0].label}'. Add runs of another base checkpoint, or widen --base/--method"
        )
    matched = match_at_tau(curves, tau, strict=strict, interpolate=interpolate)
    notes: List[str] = []
    if reference is None:
        reference = matched.rows[0].curve.label
        notes.append(f"reference '{reference}' (first by label; choose one with --reference)")
    ref = matched.row(reference)
    reference = ref.curve.label
    try:
        less = {r.curve.label: less_forgetting(ref.forgetting, r.forgetting) for r in matched.rows}
    except AnalysisError as e:  # the reference did not forget: no ratio is defined
        less = {r.curve.label: None for r in matched.rows}
        notes.append(f"'{reference}' on '{dataset}': {e}")
    return Comparison(matched, reference, less, tuple(notes))


@dataclass(frozen=True)
class MatchedPTView:
    """[SAM-PT] Fig 5 for one dataset: per arm, one point per checkpoint."""

    matched: MatchedSet
    #: arm -> rows ordered by the base model's PT loss, descending (the order in which
    #: pretraining produces the checkpoints)
    arms: Mapping[str, Tuple[MatchedRow, ...]]


def matched_pt_view(
    curves: Sequence[Curve],
    tau: Optional[float] = None,
    *,
    strict: bool = False,
    interpolate: bool = False,
) -> MatchedPTView:
    """Fig 5 of [SAM-PT] (Sec 3.2 footnote 1, App E.1.4): the minimum achievable L_PT subject to
    the fine-tuning-loss threshold (:func:`retained_pt_loss`), plotted against each checkpoint's
    own PT loss L_PT(theta_PT), one line per arm (e.g. AdamW, SAM) through its checkpoints."""
    matched = match_at_tau(curves, tau, strict=strict, interpolate=interpolate)
    arms: Dict[str, List[MatchedRow]] = {}
    for row in matched.rows:
        arms.setdefault(row.curve.arm, []).append(row)
    ordered = {
        arm: tuple(sorted(rows, key=lambda r: (-r.curve.base_l_pt, r.curve.label)))
        for arm, rows in sorted(arms.items())
    }
    return MatchedPTView(matched, ordered)
