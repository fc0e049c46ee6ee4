"""Findings: one record per arm-vs-reference comparison, and the sentence that states it.

A finding is a :class:`~olmo_sam.analysis.stats.Difference` (estimate and interval over seeds) of
one quantity, for one arm against the reference arm at one pretraining budget (and dataset or
setting where the quantity has one). Its sentence uses a comparative word ("less", "flatter",
"lower") only when the comparison is *resolved*: the interval excludes zero, the seeds vary (not
``identical``), and -- once :func:`adjust_findings` has run over the study's secondary findings --
its Benjamini-Hochberg q-value is below 1 - confidence (0.05). Otherwise it says "no difference
resolved" with the interval. Every finding states its p-value, q-value and minimum detectable effect
at 80% power. Percentages follow :func:`~olmo_sam.analysis.stats.relative`. The study report
renders findings from these records (``summary.json``); nothing here reads files.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Dict, List, Mapping, Optional

from .stats import POWER, Difference, bh_qvalues, relative

__all__ = [
    "Quantity",
    "QUANTITIES",
    "make_finding",
    "unmeasurable_finding",
    "finding_text",
    "adjust_findings",
    "budget_text",
    "num",
    "FINDING_FIELDS",
]


@dataclass(frozen=True)
class Quantity:
    """A compared quantity; lower is better for every quantity here."""

    key: str
    #: what is measured, as a noun phrase
    label: str
    #: the verb phrase for arm < reference / arm > reference
    less: str
    more: str
    unit: str = "nats"
    #: noun after "X% less" (None: no percentage is stated)
    percent_noun: Optional[str] = None


QUANTITIES: Dict[str, Quantity] = {
    q.key: q
    for q in (
        Quantity(
            "l_pt", "pretraining validation loss", "reaches a lower (better) loss", "reaches a higher (worse) loss"
        ),
        Quantity(
            "matched_forgetting",
            "PT-loss increase at matched fine-tuning loss ([SAM-PT] App C.4)",
            "forgets less",
            "forgets more",
            percent_noun="forgetting",
        ),
        Quantity(
            "fig5_pt_loss",
            "PT loss after fine-tuning to L_FT <= tau ([SAM-PT] Sec 3.2 fn 1, Fig 5)",
            "ends fine-tuning at a lower PT loss",
            "ends fine-tuning at a higher PT loss",
        ),
        Quantity(
            "quant_degradation",
            "PT-loss increase from quantization ([SAM-PT] Fig 8a)",
            "degrades less",
            "degrades more",
            percent_noun="degradation",
        ),
        Quantity(
            "noise_increase",
            "PT-loss increase under Gaussian weight noise ([SAM-PT] Eq. 7, Fig 6d)",
            "degrades less",
            "degrades more",
            percent_noun="degradation",
        ),
        Quantity("trace", "Hessian trace tr(H) (Hutchinson, [SAM-PT] Fig 12)", "is flatter", "is sharper", unit=""),
        Quantity(
            "lambda_max", "top Hessian eigenvalue lambda_max (power iteration)", "is flatter", "is sharper", unit=""
        ),
        Quantity(
            "directional_sharpness",
            "directional sharpness along the fine-tuning update ([SAM-PT] Sec 4, Eq. 1)",
            "is flatter along the update",
            "is sharper along the update",
            unit="",
        ),
    )
}

#: the fields of every finding record in ``summary.json`` (tests check them)
FINDING_FIELDS = (
    "id",
    "section",
    "quantity",
    "quantity_label",
    "arms",
    "arm",
    "reference",
    "dataset",
    "setting",
    "budget_tpp",
    "tpp_non_embedding",
    "tokens",
    "estimate",
    "ci_low",
    "ci_high",
    "n_seeds",
    "paired",
    "significant",
    "arm_mean",
    "reference_mean",
    "percent",
    "percent_ci_low",
    "percent_ci_high",
    "method",
    "confidence",
    "unit",
    "context",
    "text",
    "p_value",
    "q_value",
    "mde",
    "identical",
    "resolved",
    "measurable",
    "note",
)


def num(x: Optional[float]) -> str:
    """A number at a precision that shows 1e-4-sized loss changes and 3-digit traces alike."""
    if x is None or not math.isfinite(x):
        return "n/a"
    a = abs(x)
    if a < 1e-12:  # float noise of an exact zero
        return "0"
    if a >= 100:
        return f"{x:.1f}"
    if a >= 0.01:
        return f"{x:.4f}"
    return f"{x:.2e}"


def _signed(x: Optional[float]) -> str:
    s = num(x)
    return s if s.startswith("-") or s in ("n/a", "0") else "+" + s


def budget_text(budget: Optional[Mapping[str, Any]]) -> str:
    """``"100 tokens/param (127 per non-embedding param)"`` or ``""`` when unknown."""
    if not budget or budget.get("budget_tpp") is None:
        return ""
    s = f"{budget['budget_tpp']:.3g} tokens/param"
    ne = budget.get("tpp_non_embedding")
    if ne is not None:
        s += f" ({ne:.3g} per non-embedding param)"
    return s


def _seeds(f: Mapping[str, Any]) -> str:
    n = f["n_seeds"]
    return f"{n} seed{'s' if n != 1 else ''}{', paired' if f['paired'] else ''}"


def _resolved(f: Mapping[str, Any]) -> bool:
    """The comparison may be worded with a comparative word (see the module docstring)."""
    if not f.get("significant") or f.get("identical"):
        return False
    q = f.get("q_value")
    return q is None or q < 1.0 - f["confidence"]


def _tests(f: Mapping[str, Any]) -> str:
    """``"; p = 0.003, q = 0.02 (Benjamini-Hochberg over the 24 tested comparisons); minimum
    detectable effect 0.051 at 80% power"``. The count is the BH family's m: the comparisons with a
    p-value (``bh_tested``), not every comparison made (one without a test has no q)."""
    out = ""
    if f.get("p_value") is not None:
        out += f"; p = {f['p_value']:.2g}"
        if f.get("q_value") is not None:
            m = f.get("bh_tested")
            out += f", q = {f['q_value']:.2g}" + (f" (Benjamini-Hochberg over the {m} tested comparisons)" if m else "")
    if f.get("mde") is not None:
        unit = f" {f['unit']}" if f.get("unit") else ""
        out += f"; minimum detectable effect {num(f['mde'])}{unit} at {100 * POWER:g}% power"
    return out


def finding_text(f: Mapping[str, Any]) -> str:
    """The sentence of one finding record (see the module docstring for the rules)."""
    q = QUANTITIES[f["quantity"]]
    head = " at ".join(w for w in (f.get("context") or q.label, budget_text(f)) if w)
    arm, ref = f["arm"], f["reference"]
    if f.get("measurable") is False:
        return (
            f"{head}: no difference resolved at this scale between {arm} and {ref}: not measurable on this "
            f"grid ({f.get('unmeasurable_reason') or 'no seed left'})."
        )
    unit = f" {q.unit}" if q.unit else ""
    means = f"{arm} {num(f['arm_mean'])} vs {ref} {num(f['reference_mean'])}{unit}"
    conf = f"{100 * f['confidence']:g}% CI"
    if f["ci_low"] is None:
        return (
            f"{head}: no difference resolved at this scale between {arm} and {ref} ({_seeds(f)}: no {conf}; {means})."
        )
    if f.get("identical"):
        return (
            f"{head}: {arm} minus {ref} is {_signed(f['estimate'])}{unit} on every seed, identical across "
            f"seeds: zero variance, no interval and no test; no difference resolved at this scale ({means}); "
            f"{_seeds(f)}."
        )
    ci = f"{conf} {_signed(f['ci_low'])} to {_signed(f['ci_high'])}"
    resolved = _resolved(f)
    pct = ""
    if f.get("percent") is not None and q.percent_noun:
        lo, hi = f["percent_ci_low"], f["percent_ci_high"]
        if resolved:
            a, b = sorted((abs(lo), abs(hi)))
            word = "less" if f["estimate"] < 0 else "more"
            pct = f"; {abs(f['percent']):.1f}% {word} {q.percent_noun} ({conf} {a:.1f}% to {b:.1f}%)"
        else:
            pct = f"; relative difference {f['percent']:+.1f}% ({conf} {lo:+.1f}% to {hi:+.1f}%)"
    tests = _tests(f)
    if resolved:
        word = q.less if f["estimate"] < 0 else q.more
        return (
            f"{head}: {arm} {word} than {ref}: {means}, difference {_signed(f['estimate'])} "
            f"({ci}){pct}; {_seeds(f)}{tests}."
        )
    if f["significant"]:  # the interval excludes zero, but not after the multiplicity correction
        return (
            f"{head}: no difference resolved between {arm} and {ref} after the correction for multiple "
            f"comparisons ({ci} excludes zero before it; difference {_signed(f['estimate'])}; {means}){pct}; "
            f"{_seeds(f)}{tests}."
        )
    return (
        f"{head}: no difference resolved at this scale between {arm} and {ref} ({ci}; difference "
        f"{_signed(f['estimate'])}; {means}){pct}; {_seeds(f)}{tests}."
    )


def _render(f: Dict[str, Any]) -> None:
    f["resolved"] = _resolved(f) if f.get("measurable", True) and f.get("ci_low") is not None else False
    f["text"] = finding_text(f) + (" " + str(f["note"]) if f.get("note") else "")


def adjust_findings(findings: List[Dict[str, Any]]) -> Dict[str, Any]:
    """Benjamini-Hochberg q-values across every *secondary* finding of a study (all findings
    without ``primary: true``), in one family (:func:`~olmo_sam.analysis.stats.bh_qvalues`); each
    finding's ``q_value``, ``comparisons``, ``resolved`` and ``text`` are set here. Call it once,
    after every finding is collected. Returns the family's summary for ``summary.json``:
    ``comparisons`` (secondary findings), ``tested`` (with a p-value: the m of the BH correction,
    also each finding's ``bh_tested``), ``resolved``."""
    secondary = [f for f in findings if not f.get("primary")]
    qs = bh_qvalues([f.get("p_value") for f in secondary])
    tested = sum(q is not None for q in qs)
    for f, q in zip(secondary, qs):
        f["q_value"] = q
        f["comparisons"] = len(secondary)
        #: m of the BH step-up: the comparisons with a p-value (bh_qvalues leaves the others out)
        f["bh_tested"] = tested
        _render(f)
    return {
        "method": "Benjamini-Hochberg (scipy.stats.false_discovery_control) across the secondary findings",
        "comparisons": len(secondary),
        "tested": tested,
        "resolved": sum(bool(f["resolved"]) for f in secondary),
        "rule": "a secondary finding uses a comparative word only when its interval excludes zero, its seeds "
        "vary and q < 1 - confidence",
    }


def make_finding(
    *,
    section: str,
    quantity: str,
    arm: str,
    reference: str,
    diff: Difference,
    budget: Optional[Mapping[str, Any]] = None,
    dataset: Optional[str] = None,
    setting: Optional[str] = None,
    context: Optional[str] = None,
    extra: Optional[Mapping[str, Any]] = None,
) -> Dict[str, Any]:
    """The ``summary.json`` record of one comparison, its ``text`` included.

    ``context`` opens the sentence (e.g. "Fine-tuning on demo-code (L_FT <= tau = 2.79)");
    ``budget`` holds ``budget_tpp``, ``tpp_non_embedding`` and ``tokens`` of the compared
    checkpoints."""
    q = QUANTITIES[quantity]
    budget = dict(budget or {})
    rel = relative(diff) if q.percent_noun else None
    parts = [quantity, dataset, setting, f"{arm}-vs-{reference}"]
    if budget.get("budget_tpp") is not None:
        parts.append(f"{budget['budget_tpp']:.4g}tpp")
    f: Dict[str, Any] = {
        "id": "/".join(p for p in parts if p),
        "section": section,
        "quantity": quantity,
        "quantity_label": q.label,
        "arms": [arm, reference],
        "arm": arm,
        "reference": reference,
        "dataset": dataset,
        "setting": setting,
        "budget_tpp": budget.get("budget_tpp"),
        "tpp_non_embedding": budget.get("tpp_non_embedding"),
        "tokens": budget.get("tokens"),
        "estimate": diff.estimate,
        "ci_low": diff.ci_low,
        "ci_high": diff.ci_high,
        "n_seeds": diff.n_seeds,
        "paired": diff.paired,
        "significant": diff.significant,
        "arm_mean": diff.arm_mean,
        "reference_mean": diff.reference_mean,
        "percent": rel[0] if rel else None,
        "percent_ci_low": rel[1] if rel else None,
        "percent_ci_high": rel[2] if rel else None,
        "method": diff.method,
        "confidence": diff.confidence,
        "unit": q.unit,
        "context": context,
        "p_value": diff.p_value,
        "q_value": None,
        "mde": diff.mde,
        "identical": diff.identical,
        "resolved": False,
        "measurable": True,
        "note": diff.note,
    }
    extra = dict(extra or {})
    if extra.get("note") and diff.note:
        extra["note"] = f"{extra['note']} {diff.note}"
    f.update(extra)
    _render(f)
    return f


def unmeasurable_finding(
    *,
    section: str,
    quantity: str,
    arm: str,
    reference: str,
    reason: str,
    budget: Optional[Mapping[str, Any]] = None,
    dataset: Optional[str] = None,
    context: Optional[str] = None,
    confidence: float = 0.95,
    extra: Optional[Mapping[str, Any]] = None,
) -> Dict[str, Any]:
    """The record of a comparison the measurements cannot make (e.g. every base matched at the
    fine-tuning grid's edge): no estimate, ``measurable`` false, "not measurable on this grid"."""
    q = QUANTITIES[quantity]
    budget = dict(budget or {})
    parts = [quantity, dataset, f"{arm}-vs-{reference}"]
    if budget.get("budget_tpp") is not None:
        parts.append(f"{budget['budget_tpp']:.4g}tpp")
    f: Dict[str, Any] = {k: None for k in FINDING_FIELDS}
    f.update(
        {
            "id": "/".join(p for p in parts if p),
            "section": section,
            "quantity": quantity,
            "quantity_label": q.label,
            "arms": [arm, reference],
            "arm": arm,
            "reference": reference,
            "dataset": dataset,
            "budget_tpp": budget.get("budget_tpp"),
            "tpp_non_embedding": budget.get("tpp_non_embedding"),
            "tokens": budget.get("tokens"),
            "n_seeds": 0,
            "paired": False,
            "significant": False,
            "identical": False,
            "confidence": confidence,
            "unit": q.unit,
            "context": context,
            "measurable": False,
            "resolved": False,
            "unmeasurable_reason": reason,
        }
    )
    f.update(extra or {})
    _render(f)
    return f
