"""The analysis stage: every measured number of every base checkpoint, gathered into tables,
figures and findings computed from those numbers (never from the paper).

Each stage with a report section adds its own part of ``{out}/analysis/summary.json`` (its
``analyse``: tables, figures, findings); this stage gathers the bases
(:class:`~olmo_sam.study.bases.BaseSet`), runs those parts in report order, evaluates the
study's pre-registered hypotheses (:mod:`olmo_sam.study.hypotheses`), which open the summary
(``hypotheses``), and puts every other comparison in one secondary family: an arm against its
reference arm (the arm's ``reference``, by default the study's first arm) at one budget, over
seeds, with an interval (:mod:`olmo_sam.analysis.stats`), ``contrast`` (what the two arms'
settings differ in) and a Benjamini-Hochberg q-value across the family
(:mod:`olmo_sam.analysis.findings`).
"""

from __future__ import annotations

import math
from dataclasses import asdict
from typing import Any, Callable, Dict, List, Optional, Tuple

from ...analysis.findings import adjust_findings
from ...output import write_json
from ..bases import RECORD_FIELDS, BaseRecord, BaseSet, base_of, budget_key
from ..job import Job
from .base import PlanBuilder, Stage
from .finetune import FT_QUANTITIES, seed_values

__all__ = ["AnalysisStage", "analyse_study"]

#: ``analysis:`` key -> IntervalSpec field
#: arm settings that make two arms different treatments (what a comparison's ``contrast`` names)
CONTRAST_KEYS = (
    "optimizer",
    "schedule",
    "decay_fraction",
    "rho",
    "variant",
    "interval",
    "lr",
    "alpha",
    "sam_start_fraction",
    "data_fraction",
)


#: PretrainSpec defaults of the contrast keys an arm may leave out (data_fraction: the arm's own key)
_CONTRAST_DEFAULTS = {"optimizer": "adamw", "schedule": "cosine", "data_fraction": 1.0}


def _arm_contrasts(study, references: Dict[str, str], first: Optional[str]) -> Dict[str, str]:
    """arm -> the settings (:data:`CONTRAST_KEYS`) in which it differs from its reference arm; a
    setting that does not act on an arm's optimizer/schedule (rho of AdamW, decay_fraction of a
    cosine schedule) still counts as written -- the contrast states the file, not the physics."""
    arms = {a.name: a for a in getattr(study, "arms", [])}
    defaults = {k: v for k, v in (getattr(study, "pretrain", None) or {}).items() if k in CONTRAST_KEYS}

    def settings(name: str) -> Dict[str, Any]:
        own = {k: v for k, v in arms[name].settings.items() if k in CONTRAST_KEYS}
        if getattr(arms[name], "data_fraction", None) is not None:
            own["data_fraction"] = float(arms[name].data_fraction)
        return {**_CONTRAST_DEFAULTS, **defaults, **own}

    out = {}
    for name in arms:
        ref = references.get(name, first)
        if ref is None or ref == name or ref not in arms:
            continue
        a, r = settings(name), settings(ref)
        diff = [k for k in CONTRAST_KEYS if str(a.get(k)) != str(r.get(k))]
        out[name] = ", ".join(diff) if diff else "nothing in the optimizer or schedule (seeds only)"
    return out


def _budget_key_of(bases, planned: Dict[float, Optional[float]]) -> Callable[[float], Optional[float]]:
    """A study file's (planned) budget -> the compared bases' budget key: ``planned`` maps it to
    the measured budget (rounded up to whole steps); without a plan, the measured budget within 5%."""

    def key_of(budget: float) -> Optional[float]:
        for tpp, key in planned.items():
            if abs(tpp - budget) <= 1e-9 * budget:
                return key
        keys = [k for k in bases.budgets if k is not None and k > 0]
        best = min(keys, key=lambda k: abs(math.log(k / budget)), default=None)
        return best if best is not None and abs(math.log(best / budget)) <= math.log(1.05) else None

    return key_of


def _attach_tau_sensitivity(summary: Dict[str, Any], bases, key_of: Callable[[float], Optional[float]]) -> None:
    """Each paired fine-tuning hypothesis gains ``tau_sensitivity``: its comparison at the three
    thresholds of :func:`sensitivity_taus` (rows of the summary's ``finetune.tau_sensitivity``),
    so a primary result is read beside the same test at a stricter and a looser tau."""
    rows = (summary.get("finetune") or {}).get("tau_sensitivity") or []
    for h in summary.get("hypotheses") or []:
        if h["quantity"] not in FT_QUANTITIES or h["test"] != "paired_t":
            continue
        key = key_of(h["budgets_tpp"][0])
        budget = bases.budget(key)["budget_tpp"] if key is not None else None
        h["tau_sensitivity"] = [
            {k: r[k] for k in ("tau_name", "tau", "estimate", "ci_low", "ci_high", "p_value", "n_seeds")}
            for r in rows
            if (r["dataset"], r["quantity"], r["arm"], r["reference"])
            == (h["dataset"], h["quantity"], h["arm"], h["reference"])
            and budget is not None
            and r["budget_tpp"] == budget
        ]


def _hypothesis_cells(
    bases,
    summary: Dict[str, Any],
    key_of: Callable[[float], Optional[float]],
    include_grid_edge: bool = False,
):
    """(quantity, arm, budget in tokens/param, dataset or setting) -> {seed: value}, read from the
    summary's per-base tables (the fine-tuning quantities through :func:`seed_values`: bases
    matched at the grid's edge are left out unless ``include_grid_edge``), for
    :func:`olmo_sam.study.hypotheses.evaluate_hypotheses`."""
    from ..hypotheses import QUANTITIES

    tables: Dict[Tuple[str, Optional[str]], Dict[str, float]] = {}

    def put(q: str, where: Optional[str], unit: str, v: Any) -> None:
        if v is not None:
            tables.setdefault((q, where), {})[unit] = float(v)

    for r in (summary.get("pretraining") or {}).get("rows", []):
        put("l_pt", None, r["unit"], r.get("l_pt"))
    matched = (summary.get("finetune") or {}).get("matched_rows", [])
    ft = {q: seed_values(matched, q, include_grid_edge=include_grid_edge) for q in FT_QUANTITIES}
    for r in (summary.get("quantize") or {}).get("rows", []):
        put("quant_degradation", str(r.get("quant")), r["unit"], r.get("degradation"))
    for r in (summary.get("noise") or {}).get("rows", []):
        if r.get("gamma") is not None:
            put("noise_increase", f"{float(r['gamma']):g}", r["unit"], r.get("increase"))
    for r in (summary.get("hessian") or {}).get("rows", []):
        put("trace", None, r["unit"], r.get("trace"))
        put("lambda_max", None, r["unit"], r.get("lambda_max"))

    def cells(quantity: str, arm: str, budget: float, where: Optional[str]) -> Dict[int, float]:
        if QUANTITIES[quantity][0] == "setting" and quantity == "noise_increase" and where is not None:
            where = f"{float(where):g}"
        key = key_of(budget)
        if quantity in ft:
            return {} if key is None else dict(ft[quantity].get((arm, key, where), {}))
        values = tables.get((quantity, where))
        return {} if key is None or not values else bases.cell(arm, key, values)

    return cells


def _split_primary(
    findings: List[Dict[str, Any]], hypotheses, key_of: Callable[[float], Optional[float]]
) -> Tuple[List[Dict[str, Any]], List[str]]:
    """(secondary findings, ids of the findings that are a paired_t primary hypothesis): a primary
    comparison is reported with its hypothesis only, outside the secondary family."""

    def setting(h) -> Optional[str]:  # the findings' spelling of a setting
        return f"gamma={float(h.setting):g}" if h.quantity == "noise_increase" else h.setting

    primary = {
        (h.quantity, h.arm, h.reference, h.dataset, setting(h), key_of(h.budget))
        for h in hypotheses
        if h.test == "paired_t"
    }
    keep, dropped = [], []
    for f in findings:
        key = budget_key(f["budget_tpp"]) if f.get("budget_tpp") is not None else None
        if (f["quantity"], f["arm"], f["reference"], f.get("dataset"), f.get("setting"), key) in primary:
            dropped.append(f["id"])
        else:
            keep.append(f)
    return keep, dropped


def analyse_study(ctx) -> Dict[str, Any]:
    units = list(ctx.job.params["units"])
    out = ctx.out / "analysis"
    out.mkdir(parents=True, exist_ok=True)
    spec = ctx.study.analysis.interval_spec()
    metas, records = [], {}
    for u in units:
        rec = ctx.finished(f"pretrain/{u}")
        if rec is not None:
            record = BaseRecord.from_result(rec, f"pretrain/{u}")
            metas.append(base_of(u, record))
            records[u] = {k: getattr(record, k) for k in RECORD_FIELDS}
    references = {a.name: a.reference for a in getattr(ctx.study, "arms", []) if a.reference}
    first = next((a.name for a in getattr(ctx.study, "arms", [])), None)
    bases = BaseSet(metas, spec, references, _arm_contrasts(ctx.study, references, first))
    hypotheses = list(getattr(ctx.study, "hypotheses", None) or [])
    summary: Dict[str, Any] = {
        "hypotheses": [],
        "study": ctx.study.name,
        "quick": bool(getattr(ctx.study, "quick", False)),
        "units": units,
        "arms": bases.arms,
        "reference_arm": bases.reference,
        "interval": spec.to_dict(),
        # unit -> what the pretraining record says about the base
        "bases": {b.unit: {**records[b.unit], **asdict(b)} for b in metas},
        "budgets": [bases.budget(k) for k in bases.budgets],
        "seeds_per_arm_and_budget": bases.max_seeds,
    }
    findings: List[Dict[str, Any]] = []
    ordered = sorted((s for s in ctx.stages if s.report is not None), key=lambda s: s.report.rank)
    for stage in ordered:
        section = stage.analyse(ctx, bases, out)
        if section:
            findings += section.pop("findings", [])
            summary[stage.report.key] = section
    for ds, flags in (summary.get("finetune") or {}).get("grid_edge", {}).items():
        for u, edge in flags.items():  # per base: matched at its grid's lowest LR past tau, per dataset
            if u in summary["bases"]:
                summary["bases"][u].setdefault("grid_edge", {})[ds] = edge
    if hypotheses:
        from ..hypotheses import evaluate_hypotheses

        planned = {}
        for b in metas:  # the study file's budget of each base -> its measured budget
            job = ctx.plan.by_id().get(f"pretrain/{b.unit}")
            tpp = job.params.get("budget_tpp") if job else None
            if tpp is not None:
                planned[float(tpp)] = b.budget_key
        key_of = _budget_key_of(bases, planned)
        summary["hypotheses"] = evaluate_hypotheses(
            hypotheses,
            _hypothesis_cells(bases, summary, key_of),
            spec,
            _hypothesis_cells(bases, summary, key_of, include_grid_edge=True),
        )
        _attach_tau_sensitivity(summary, bases, key_of)
        findings, summary["primary_findings"] = _split_primary(findings, hypotheses, key_of)
    # one family of secondary comparisons (the primary hypotheses are not in it): BH q-values
    # across all of them, and the count
    summary["multiplicity"] = adjust_findings(findings)
    summary["findings"] = findings
    write_json(out / "summary.json", summary)
    return {
        "summary": str(out / "summary.json"),
        "dir": str(out),
        "sections": [s.report.key for s in ordered if s.report.key in summary],
    }


class AnalysisStage(Stage):
    name = "analysis"
    kinds = {"analysis": analyse_study}

    def configured(self, study) -> bool:
        return True

    def plan(self, study, plan: PlanBuilder) -> None:
        # what the stages measured comes first (not the data, export and mix preparation jobs)
        before = [j.id for j in plan.jobs if j.stage in plan.measuring]
        plan.add(Job("analysis", "analysis", "analysis", params={"units": plan.unit_names}, deps=before))
