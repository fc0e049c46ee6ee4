"""Pre-registered hypotheses: the study's primary questions, fixed before anything runs.

A study file may declare ``hypotheses:``, each a comparison of one quantity between two arms,
named with its expected direction and its test before any base is trained::

    hypotheses:
      - name: switch-forgets-less-music
        quantity: matched_forgetting      # see QUANTITIES
        arm: sam-anneal
        reference: adamw-wsd
        budget: 800                       # tokens per parameter (a budget of both arms)
        dataset: demo-music               # fine-tuning quantities only
        direction: less                   # less | greater: arm minus reference expected < 0 | > 0
        test: paired_t
      - name: switch-benefit-grows
        quantity: matched_forgetting
        arm: sam-anneal
        reference: adamw-wsd
        budgets: [10, 800]                # interaction: [shortest, longest]
        dataset: demo-music
        direction: less
        test: interaction

The tests, over pretraining seeds (``s``; the arms share seeds, so every test is paired):

``paired_t``
    ``d_s = a_s - r_s`` at one budget (``a`` the arm's value, ``r`` the reference's): the mean of
    ``d`` with its Student-t interval and two-sided p-value (:func:`~olmo_sam.analysis.stats.compare_seeds`).
``interaction``
    does the arm's difference grow with overtraining? ``d_s = (a_s(L) - r_s(L)) - (a_s(S) - r_s(S))``
    with ``L`` the longest budget and ``S`` the shortest, tested like ``paired_t`` on the seeds
    every one of the four cells has.

A hypothesis is **resolved** when its estimate lies in the expected direction and its p-value,
Holm-adjusted across the study's primary hypotheses (Holm, "A simple sequentially rejective
multiple test procedure", Scand. J. Statist. 6:65-70, 1979), is below ``1 - confidence``; with one
primary hypothesis that is exactly "the interval excludes zero in the expected direction". A
result that is significant the other way is ``opposite``. Holm controls the family-wise error of
the primary family at ``1 - confidence``; the primaries are not part of the Benjamini-Hochberg
family of the study's secondary comparisons (:mod:`olmo_sam.study.stages.analysis`). Intervals are
unadjusted (the study's ``analysis.confidence``); the adjustment enters through ``p_holm``.

Hypotheses are part of the study's record (``study.json``): a hypothesis edited, added or removed
after any job of an output directory has finished is refused (:func:`check_registered`), even
with ``--rerun`` -- a pre-registered question is not changed after results exist.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Dict, List, Mapping, Optional, Sequence

from olmo_core.exceptions import OLMoConfigurationError

from ..config import Checked, decode, setting

if TYPE_CHECKING:  # pragma: no cover
    from ..analysis.stats import IntervalSpec

__all__ = [
    "QUANTITIES",
    "TESTS",
    "DIRECTIONS",
    "Hypothesis",
    "parse_hypotheses",
    "check_references",
    "check_registered",
    "holm",
    "evaluate_hypotheses",
    "hypothesis_text",
]

#: quantity -> (what selects its cell besides arm and budget: ``dataset``, ``setting`` or None;
#: the study stage that measures it). One value per base checkpoint (and dataset or setting).
QUANTITIES: Dict[str, tuple] = {
    "l_pt": (None, "pt_eval"),  # the base's pretraining validation loss
    "matched_forgetting": ("dataset", "finetune"),  # PT-loss increase at L_FT <= tau ([SAM-PT] App C.4)
    "fig5_pt_loss": ("dataset", "finetune"),  # PT loss after fine-tuning to L_FT <= tau ([SAM-PT] Fig 5)
    "quant_degradation": ("setting", "quantize"),  # setting: a probes.quantize.quant entry
    "noise_increase": ("setting", "noise"),  # setting: a probes.noise.gammas entry
    "trace": (None, "hessian"),
    "lambda_max": (None, "hessian"),
}
TESTS = ("paired_t", "interaction")
DIRECTIONS = ("less", "greater")


class HypothesisError(OLMoConfigurationError):
    pass


@dataclass(frozen=True)
class Hypothesis(Checked):
    """One pre-registered comparison (see the module docstring for the fields' meaning)."""

    name: str
    quantity: str = setting(choices=sorted(QUANTITIES))
    arm: str = setting()
    reference: str = setting()
    direction: str = setting(choices=DIRECTIONS, hint=" (arm minus reference expected below / above zero)")
    test: str = setting(choices=TESTS)
    #: paired_t: the budget (tokens per parameter)
    budget: Optional[float] = setting(None, gt=0, hint=" (tokens per parameter)")
    #: interaction: [shortest, longest] (tokens per parameter)
    budgets: Optional[List[float]] = setting(None, gt=0, hint=" (tokens per parameter)")
    dataset: Optional[str] = None
    setting: Optional[str] = None

    @property
    def compared_budgets(self) -> List[float]:
        return [self.budget] if self.test == "paired_t" else list(self.budgets or [])


_REQUIRED = ("name", "quantity", "arm", "reference", "direction", "test")


def _parse_one(data: Any, where: str) -> Hypothesis:
    if not isinstance(data, dict):
        raise HypothesisError(
            f"{where}: a hypothesis is a mapping (name, quantity, arm, reference, budget, "
            f"direction, test), got {data!r}"
        )
    for key in _REQUIRED:
        if data.get(key) in (None, ""):
            raise HypothesisError(f"{where}.{key}: required (a hypothesis names it before the study runs)")
    if data.get("setting") is not None:  # a quantization setting or a noise gamma: a name
        data = {**data, "setting": str(data["setting"])}
    h = decode(Hypothesis, data, where)
    q, test = h.quantity, h.test
    if h.arm == h.reference:
        raise HypothesisError(f"{where}.reference: the same arm as 'arm' ({h.arm!r}); compare two arms")
    budget, budgets = h.budget, h.budgets
    if test == "paired_t":
        if budgets is not None:
            raise HypothesisError(
                f"{where}.budgets: a paired_t hypothesis is at one budget: give 'budget: N' "
                "(tokens per parameter); 'budgets' is for test: interaction"
            )
        if budget is None:
            raise HypothesisError(f"{where}.budget: required for test paired_t (tokens per parameter, e.g. 800)")
    else:
        if budget is not None:
            raise HypothesisError(
                f"{where}.budget: an interaction compares two budgets: give 'budgets: [shortest, longest]' instead"
            )
        if budgets is None or len(budgets) != 2:
            raise HypothesisError(
                f"{where}.budgets: test interaction needs 'budgets: [shortest, longest]' "
                f"(tokens per parameter), got {budgets!r}"
            )
        if not budgets[0] < budgets[1]:
            raise HypothesisError(f"{where}.budgets: give [shortest, longest] with shortest < longest, got {budgets}")
    selector = QUANTITIES[q][0]
    for key in ("dataset", "setting"):
        v = data.get(key)
        if key == selector and v in (None, ""):
            raise HypothesisError(f"{where}.{key}: quantity {q} is measured per {key}; name one")
        if key != selector and v is not None:
            raise HypothesisError(f"{where}.{key}: quantity {q} has no {key}; drop it")
    return h


def parse_hypotheses(data: Any, where: str = "hypotheses") -> List[Hypothesis]:
    """The ``hypotheses:`` section, each entry checked by name and type (errors name the entry:
    ``hypotheses[1].arm: ...``). Cross-references to the study are :func:`check_references`."""
    if data is None:
        return []
    if not isinstance(data, list):
        raise HypothesisError(f"{where}: expected a list of hypotheses, got {type(data).__name__}")
    out = [_parse_one(h, f"{where}[{i}]") for i, h in enumerate(data)]
    names = [h.name for h in out]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise HypothesisError(f"{where}: duplicate hypothesis name(s) {dup}")
    return out


def _same_budget(a: float, b: float) -> bool:
    return abs(a - b) <= 1e-6 * max(abs(a), abs(b))


def check_references(hypotheses: Sequence[Hypothesis], study: Any, where: str = "hypotheses") -> None:
    """Every hypothesis names arms, budgets, datasets and settings the study has, and a quantity
    a configured stage measures. ``study`` is the :class:`~olmo_sam.study.spec.StudySpec`."""
    arms = {a.name: a for a in study.arms}
    stages = set(study.configured_stages())
    for i, h in enumerate(hypotheses):
        w = f"{where}[{i}]"
        for key in ("arm", "reference"):
            name = getattr(h, key)
            if name not in arms:
                raise HypothesisError(f"{w}.{key}: no arm {name!r} in the study; arms: {sorted(arms)}")
        stage = QUANTITIES[h.quantity][1]
        if stage not in stages:
            raise HypothesisError(
                f"{w}.quantity: {h.quantity} is measured by the '{stage}' stage, which this "
                "study does not run; configure it or choose another quantity"
            )
        for key in ("arm", "reference"):
            arm = arms[getattr(h, key)]
            have = study.arm_budgets_tpp(arm)
            for b in h.compared_budgets:
                if not any(x is not None and _same_budget(float(x), b) for x in have):
                    field = "budget" if h.test == "paired_t" else "budgets"
                    raise HypothesisError(
                        f"{w}.{field}: arm {arm.name!r} has no base at {b:g} tokens/param; its budgets_tpp: {have}"
                    )
        if h.dataset is not None and h.dataset not in (study.finetune.datasets if study.finetune else []):
            raise HypothesisError(
                f"{w}.dataset: {h.dataset!r} is not in finetune.datasets "
                f"{study.finetune.datasets if study.finetune else []}"
            )
        if h.setting is not None:
            _check_setting(h, study, w)


def _check_setting(h: Hypothesis, study: Any, w: str) -> None:
    if h.quantity == "quant_degradation":
        quants = getattr(study.probes.quantize, "quant", None) or []
        quants = quants if isinstance(quants, list) else [quants]
        if h.setting not in [str(q) for q in quants]:
            raise HypothesisError(f"{w}.setting: {h.setting!r} is not in probes.quantize.quant {quants}")
    elif h.quantity == "noise_increase":
        gammas = getattr(study.probes.noise, "gammas", None) or []
        try:
            g = float(h.setting)  # type: ignore[arg-type]
        except ValueError:
            raise HypothesisError(f"{w}.setting: a noise magnitude gamma (number), got {h.setting!r}") from None
        if not any(_same_budget(float(x), g) for x in gammas):
            raise HypothesisError(f"{w}.setting: gamma {h.setting} is not in probes.noise.gammas {gammas}")


def check_registered(recorded: Optional[Sequence[Mapping[str, Any]]], current: Sequence[Hypothesis], out: Any) -> None:
    """Refuse hypotheses that differ from those recorded when the study in ``out`` first ran
    (``recorded``: the ``hypotheses`` of its ``study.json``; called once a job there has finished)."""
    now = [dataclasses.asdict(h) for h in current]
    before = [dict(h) for h in (recorded or [])]
    if now == before:
        return
    old = {h.get("name"): h for h in before}
    new = {h["name"]: h for h in now}
    changes = [f"added {n!r}" for n in new if n not in old] + [f"removed {n!r}" for n in old if n not in new]
    for n in new:
        if n in old and new[n] != old[n]:
            keys = sorted(k for k in set(new[n]) | set(old[n]) if new[n].get(k) != old[n].get(k))
            changes.append(f"{n!r} ({', '.join(keys)})")
    if not changes:
        changes = ["their order"]
    raise HypothesisError(
        f"hypotheses: pre-registered when the study in {out} first ran, and results exist there; they "
        f"changed: {'; '.join(changes)}. Restore them, or run the changed hypotheses as a new study in a "
        "new output directory (--out or out_dir)"
    )


# -- evaluation ---------------------------------------------------------------------------------


def holm(p_values: Sequence[Optional[float]]) -> List[Optional[float]]:
    """Holm's step-down adjusted p-values (Holm 1979): with the m available p-values sorted
    ascending, ``p_(i) -> max_{j <= i} min(1, (m - j + 1) p_(j))``. ``None`` (no test) stays None
    and does not count in m."""
    idx = sorted((i for i, p in enumerate(p_values) if p is not None), key=lambda i: p_values[i])  # type: ignore[arg-type,return-value]
    m = len(idx)
    out: List[Optional[float]] = [None] * len(p_values)
    running = 0.0
    for rank, i in enumerate(idx):
        running = max(running, min(1.0, (m - rank) * float(p_values[i])))  # type: ignore[arg-type]
        out[i] = running
    return out


#: (quantity, arm, budget, dataset or setting) -> {seed: value}
Cells = Callable[[str, str, float, Optional[str]], Dict[int, float]]


def _shared(*cells: Dict[int, float]) -> List[int]:
    seeds = set(cells[0])
    for c in cells[1:]:
        seeds &= set(c)
    return sorted(seeds)


def _difference(h: Hypothesis, cells: Cells, spec: "IntervalSpec") -> tuple:
    """(Difference or None, seeds used) of one hypothesis from the study's cells."""
    from ..analysis.stats import compare_seeds

    where = h.dataset if h.dataset is not None else h.setting
    if h.test == "paired_t":
        a, r = cells(h.quantity, h.arm, h.budget, where), cells(h.quantity, h.reference, h.budget, where)  # type: ignore[arg-type]
        seeds = _shared(a, r)
        arm = {s: a[s] for s in seeds}
        ref = {s: r[s] for s in seeds}
    else:
        short, long = h.budgets  # type: ignore[misc]
        aS, aL = cells(h.quantity, h.arm, short, where), cells(h.quantity, h.arm, long, where)
        rS, rL = cells(h.quantity, h.reference, short, where), cells(h.quantity, h.reference, long, where)
        seeds = _shared(aS, aL, rS, rL)
        # compare_seeds pairs these by seed: d_s = (aL - aS) - (rL - rS) = (aL - rL) - (aS - rS)
        arm = {s: aL[s] - aS[s] for s in seeds}
        ref = {s: rL[s] - rS[s] for s in seeds}
    if not seeds:
        return None, seeds
    return compare_seeds(arm, ref, spec), seeds


def evaluate_hypotheses(
    hypotheses: Sequence[Hypothesis], cells: Cells, spec: "IntervalSpec", all_cells: Optional[Cells] = None
) -> List[Dict[str, Any]]:
    """One ``summary.json`` record per hypothesis, in the study file's order (see the module
    docstring for the tests, Holm's adjustment and ``resolved``). ``all_cells``: the same cells
    with the bases ``cells`` leaves out (fine-tuning bases matched at the grid's edge); the seeds
    only they have are the record's ``grid_edge_seeds``."""
    from ..analysis.findings import QUANTITIES as LABELS

    alpha = 1.0 - float(spec.confidence)
    diffs = [_difference(h, cells, spec) for h in hypotheses]
    every = [_difference(h, all_cells, spec)[1] if all_cells else seeds for h, (_, seeds) in zip(hypotheses, diffs)]
    p_holm = holm([d.p_value if d is not None else None for d, _ in diffs])
    out = []
    for h, (d, seeds), ph, full in zip(hypotheses, diffs, p_holm, every):
        label = LABELS[h.quantity].label if h.quantity in LABELS else h.quantity
        rec: Dict[str, Any] = {
            "name": h.name,
            "primary": True,
            "quantity": h.quantity,
            "quantity_label": label,
            "test": h.test,
            "arm": h.arm,
            "reference": h.reference,
            "direction": h.direction,
            "budgets_tpp": h.compared_budgets,
            "dataset": h.dataset,
            "setting": h.setting,
            "n_seeds": len(seeds),
            "seeds": seeds,
            "grid_edge_seeds": sorted(set(full) - set(seeds)),
            "estimate": None,
            "ci_low": None,
            "ci_high": None,
            "p_value": None,
            "p_holm": ph,
            "mde": None,
            "identical": False,
            "resolved": False,
            "opposite": False,
            "n_primary": len(hypotheses),
            "n_tested": sum(p is not None for p in p_holm),
            "method": spec.method,
            "confidence": float(spec.confidence),
        }
        if d is not None:
            rec.update(
                estimate=d.estimate,
                ci_low=d.ci_low,
                ci_high=d.ci_high,
                p_value=d.p_value,
                mde=d.mde,
                identical=d.identical,
                arm_mean=d.arm_mean,
                reference_mean=d.reference_mean,
            )
            if ph is not None and ph < alpha and not d.identical:
                expected = d.estimate < 0 if h.direction == "less" else d.estimate > 0
                rec["resolved"], rec["opposite"] = expected, not expected
        rec["outcome"] = _outcome(rec)
        rec["text"] = hypothesis_text(rec)
        out.append(rec)
    return out


def _outcome(rec: Mapping[str, Any]) -> str:
    if rec["resolved"]:
        return "resolved"
    if rec["opposite"]:
        return "opposite"
    if rec["estimate"] is None:
        return "not measured"
    return "not resolved"


def _n(x: Optional[float]) -> str:
    from ..analysis.findings import num

    s = num(x)
    return s if s.startswith("-") or s in ("n/a", "0") else "+" + s


def hypothesis_text(rec: Mapping[str, Any]) -> str:
    """The sentence of one hypothesis record: what was registered, then what was found."""
    b = rec["budgets_tpp"]
    at = f"at {b[0]:g} tokens/param" if rec["test"] == "paired_t" else f"from {b[0]:g} to {b[1]:g} tokens/param"
    where = f" on {rec['dataset']}" if rec.get("dataset") else (f" ({rec['setting']})" if rec.get("setting") else "")
    what = (
        f"{rec['arm']} minus {rec['reference']}"
        if rec["test"] == "paired_t"
        else f"the change of ({rec['arm']} minus {rec['reference']})"
    )
    head = (
        f"Primary hypothesis '{rec['name']}' ({rec['test']}): {what} in {rec['quantity']}{where} {at} "
        f"is expected {'below' if rec['direction'] == 'less' else 'above'} zero."
    )
    n = rec["n_seeds"]
    edge = rec.get("grid_edge_seeds") or []
    if edge:
        head += (
            f" Seed{'s' if len(edge) != 1 else ''} {', '.join(map(str, edge))} left out: matched at the "
            "fine-tuning grid's lowest learning rate past tau (not measurable on this grid)."
        )
    if rec["estimate"] is None:
        return f"{head} Not measured: no seed has a value in every compared cell."
    conf = f"{100 * rec['confidence']:g}% CI"
    if rec["ci_low"] is None:
        gives = "1 seed gives" if n == 1 else f"{n} seeds give"
        return f"{head} Not resolved: {gives} an estimate ({_n(rec['estimate'])}) but no interval."
    if rec["identical"]:
        return (
            f"{head} Not resolved: the paired differences are identical across seeds (estimate "
            f"{_n(rec['estimate'])}, {n} seeds): no test is possible."
        )
    stats = (
        f"estimate {_n(rec['estimate'])} ({conf} {_n(rec['ci_low'])} to {_n(rec['ci_high'])}), p = "
        f"{rec['p_value']:.3g}, Holm-adjusted over the {rec['n_tested']} tested primary hypotheses p = {rec['p_holm']:.3g}; "
        f"{n} seeds, paired; minimum detectable effect at 80% power {_n(rec['mde']).lstrip('+')}"
    )
    if rec["resolved"]:
        return f"{head} Resolved as expected: {stats}."
    if rec["opposite"]:
        return f"{head} Resolved the other way (against the hypothesis): {stats}."
    return f"{head} Not resolved: {stats}."
