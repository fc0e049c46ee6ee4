"""Findings: one record per arm-vs-reference comparison, and the sentence that states it.

A finding is a :class:`~olmo_sam.analysis.stats.Difference` (estimate and interval over seeds) of
one quantity, for one arm against the reference arm at one pretraining budget (and dataset or
setting where the quantity has one). Its sentence uses a comparative word ("less", "flatter",
"lower") only when the interval excludes zero; otherwise it says "no difference resolved at this
scale" with the interval. Percentages follow :func:`~olmo_sam.analysis.stats.relative`. The study
report renders findings from these records (``summary.json``); nothing here reads files.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Dict, Mapping, Optional

from .stats import Difference, relative

__all__ = ["Quantity", "QUANTITIES", "make_finding", "finding_text", "budget_text", "num", "FINDING_FIELDS"]


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
        Quantity("l_pt", "pretraining validation loss", "reaches a lower (better) loss", "reaches a higher (worse) loss"),
        Quantity("matched_forgetting", "PT-loss increase at matched fine-tuning loss ([SAM-PT] App C.4)",
                 "forgets less", "forgets more", percent_noun="forgetting"),
        Quantity("quant_degradation", "PT-loss increase from quantization ([SAM-PT] Fig 8a)",
                 "degrades less", "degrades more", percent_noun="degradation"),
        Quantity("noise_increase", "PT-loss increase under Gaussian weight noise ([SAM-PT] Eq. 7, Fig 6d)",
                 "degrades less", "degrades more", percent_noun="degradation"),
        Quantity("trace", "Hessian trace tr(H) (Hutchinson, [SAM-PT] Fig 12)", "is flatter", "is sharper", unit=""),
        Quantity("lambda_max", "top Hessian eigenvalue lambda_max (power iteration)", "is flatter", "is sharper",
                 unit=""),
    )
}  # fmt: skip

#: the fields of every finding record in ``summary.json`` (tests check them)
FINDING_FIELDS = (
    "id", "section", "quantity", "quantity_label", "arms", "arm", "reference", "dataset", "setting",
    "budget_tpp", "budget_tpp_non_embedding", "tokens", "estimate", "ci_low", "ci_high", "n_seeds",
    "paired", "significant", "arm_mean", "reference_mean", "percent", "percent_ci_low",
    "percent_ci_high", "method", "confidence", "unit", "context", "text",
)  # fmt: skip


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
    ne = budget.get("budget_tpp_non_embedding")
    if ne is not None:
        s += f" ({ne:.3g} per non-embedding param)"
    return s


def _seeds(f: Mapping[str, Any]) -> str:
    n = f["n_seeds"]
    return f"{n} seed{'s' if n != 1 else ''}{', paired' if f['paired'] else ''}"


def finding_text(f: Mapping[str, Any]) -> str:
    """The sentence of one finding record (see the module docstring for the rules)."""
    q = QUANTITIES[f["quantity"]]
    head = " at ".join(w for w in (f.get("context") or q.label, budget_text(f)) if w)
    arm, ref = f["arm"], f["reference"]
    unit = f" {q.unit}" if q.unit else ""
    means = f"{arm} {num(f['arm_mean'])} vs {ref} {num(f['reference_mean'])}{unit}"
    conf = f"{100 * f['confidence']:g}% CI"
    if f["ci_low"] is None:
        return (f"{head}: no difference resolved at this scale between {arm} and {ref} "
                f"({_seeds(f)}: no {conf}; {means}).")  # fmt: skip
    ci = f"{conf} {_signed(f['ci_low'])} to {_signed(f['ci_high'])}"
    pct = ""
    if f.get("percent") is not None and q.percent_noun:
        lo, hi = f["percent_ci_low"], f["percent_ci_high"]
        if f["significant"]:
            a, b = sorted((abs(lo), abs(hi)))
            word = "less" if f["estimate"] < 0 else "more"
            pct = f"; {abs(f['percent']):.1f}% {word} {q.percent_noun} ({conf} {a:.1f}% to {b:.1f}%)"
        else:
            pct = f"; relative difference {f['percent']:+.1f}% ({conf} {lo:+.1f}% to {hi:+.1f}%)"
    if f["significant"]:
        word = q.less if f["estimate"] < 0 else q.more
        return (f"{head}: {arm} {word} than {ref}: {means}, difference {_signed(f['estimate'])} "
                f"({ci}){pct}; {_seeds(f)}.")  # fmt: skip
    return (f"{head}: no difference resolved at this scale between {arm} and {ref} ({ci}; difference "
            f"{_signed(f['estimate'])}; {means}){pct}; {_seeds(f)}.")  # fmt: skip


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
    ``budget`` holds ``budget_tpp``, ``budget_tpp_non_embedding`` and ``tokens`` of the compared
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
        "budget_tpp_non_embedding": budget.get("budget_tpp_non_embedding"),
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
    }
    f.update(extra or {})
    f["text"] = finding_text(f)
    if f.get("note"):
        f["text"] += " " + str(f["note"])
    return f
