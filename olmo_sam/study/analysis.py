"""The study's analysis stage: every measured number of every base checkpoint, gathered into
tables, figures and findings computed from those numbers (never from the paper).

A *base* is one pretrained checkpoint (a study unit): an arm at one pretraining budget and seed.
Its metadata -- ``arm``, ``seed`` (initialization and data order), ``budget_tpp`` (training tokens
per parameter), ``tokens``, ``params_total``, ``params_non_embedding`` -- is the pretraining job's
:class:`~olmo_sam.study.bases.BaseRecord`, read as it was written (``budget_tpp_non_embedding`` in
``summary.json`` is its ``tpp_non_embedding``).

The study's pre-registered hypotheses (:mod:`olmo_sam.study.hypotheses`) open ``summary.json``
(``hypotheses``, each ``primary: true``); a finding that is one of them is reported there only.
Every other comparison is secondary: an arm against its reference arm (the arm's ``reference``,
by default the study's first arm) at one budget, over seeds, with an interval
(:mod:`olmo_sam.analysis.stats`) and ``contrast``, what the two arms' settings differ in
(optimizer, schedule, ...); findings are worded from the interval
(:mod:`olmo_sam.analysis.findings`). Writes ``{out}/analysis/``: ``summary.json`` (everything the
report shows, findings included), Markdown/CSV tables per section and PNG figures: pretraining
loss curves, learning-forgetting frontiers (Fig 2), forgetting at matched fine-tuning loss and the
Fig 5 view against the pretraining budget (the overtraining figure), quantization and noise
degradation (Fig 8a, Fig 6d), sharpness (Fig 12).
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

from ..analysis.findings import adjust_findings, make_finding, unmeasurable_finding
from ..analysis.plots import Panel, plot_bands, plot_bars
from ..analysis.stats import IntervalSpec, compare_seeds, interval_method, mean_interval
from ..output import save_figure, write_json, write_table
from .bases import BaseRecord
from .context import JobContext
from .spec import ANALYSIS_MATCHINGS, StudyError

__all__ = [
    "analyse_study",
    "Base",
    "BaseSet",
    "base_of",
    "FT_QUANTITIES",
    "matching_rule",
    "finetune_curves",
    "matched_rows",
    "seed_values",
    "sensitivity_taus",
]


def _result(ctx: JobContext, job_id: str) -> Optional[Dict[str, Any]]:
    job = ctx.plan.by_id().get(job_id)
    if job is None or not job.is_done(ctx.out):
        return None
    return job.result(ctx.out)


def _load(path: Optional[str]) -> Any:
    if not path or not Path(path).exists():
        return None
    return json.loads(Path(path).read_text())


# -- bases: arm, seed, budget -------------------------------------------------------------------


@dataclass
class Base:
    unit: str
    arm: str
    seed: int
    budget_tpp: Optional[float]
    budget_tpp_non_embedding: Optional[float]
    tokens: Optional[int]
    params_total: Optional[int]
    params_non_embedding: Optional[int]

    @property
    def budget_key(self) -> Optional[float]:
        return _budget_key(self.budget_tpp)


def _budget_key(tpp: Optional[float]) -> Optional[float]:
    """Bases whose budgets agree to 3 significant digits are compared with each other."""
    return None if tpp is None else float(f"{tpp:.3g}")


#: fields of a pretraining record copied into ``summary["bases"]`` as they are
RECORD_FIELDS = ("steps", "tpp_total", "tpp_non_embedding", "data_epochs", "data_source")


def base_of(unit: str, record: BaseRecord) -> Base:
    """The analysis's view of the base ``unit`` (its pretraining job's :class:`BaseRecord`)."""
    return Base(
        unit=unit,
        arm=str(record.arm),
        seed=int(record.seed),
        budget_tpp=None if record.budget_tpp is None else float(record.budget_tpp),
        budget_tpp_non_embedding=None if record.tpp_non_embedding is None else float(record.tpp_non_embedding),
        tokens=None if record.tokens is None else int(record.tokens),
        params_total=None if record.params_total is None else int(record.params_total),
        params_non_embedding=None if record.params_non_embedding is None else int(record.params_non_embedding),
    )


class BaseSet:
    """The study's bases, their arms (the first is the reference), budgets and the comparisons."""

    def __init__(
        self,
        bases: List[Base],
        spec: IntervalSpec,
        references: Optional[Dict[str, str]] = None,
        contrasts: Optional[Dict[str, str]] = None,
    ):
        self.by_unit = {b.unit: b for b in bases}
        self.arms = list(dict.fromkeys(b.arm for b in bases))
        self.reference = self.arms[0] if self.arms else None
        #: arm -> the arm it is compared with (default: the first arm), and what they differ in
        self.references = {a: r for a, r in (references or {}).items() if a in self.arms and r in self.arms}
        self.contrasts = dict(contrasts or {})
        self.budgets = sorted({b.budget_key for b in bases}, key=lambda k: (k is None, k or 0.0))
        self.spec = spec
        seen: Dict[Tuple, str] = {}
        for b in bases:
            key = (b.arm, b.budget_key, b.seed)
            if key in seen:
                raise StudyError(
                    f"units '{seen[key]}' and '{b.unit}' are both arm '{b.arm}', seed {b.seed} at "
                    f"{b.budget_tpp} tokens/param: give each base of an arm and budget its own seed"
                )
            seen[key] = b.unit

    def cell(self, arm: str, key: Optional[float], values: Dict[str, float]) -> Dict[int, float]:
        """seed -> value for the bases of one arm and budget that have a value."""
        return {
            b.seed: values[b.unit]
            for b in self.by_unit.values()
            if b.arm == arm and b.budget_key == key and values.get(b.unit) is not None and math.isfinite(values[b.unit])
        }

    def budget(self, key: Optional[float]) -> Dict[str, Any]:
        bs = [b for b in self.by_unit.values() if b.budget_key == key]
        ref = [b for b in bs if b.arm == self.reference] or bs
        b = ref[0]
        return {"budget_tpp": b.budget_tpp, "budget_tpp_non_embedding": b.budget_tpp_non_embedding, "tokens": b.tokens}

    def budget_label(self, key: Optional[float]) -> str:
        return "budget n/a" if key is None else f"{key:g} tok/param"

    @property
    def xlog(self) -> bool:
        return all(k is not None and k > 0 for k in self.budgets)

    def x(self, key: Optional[float]) -> float:
        return key if self.xlog else float(self.budgets.index(key))  # type: ignore[return-value]

    @property
    def max_seeds(self) -> int:
        counts: Dict[Tuple, int] = {}
        for b in self.by_unit.values():
            counts[(b.arm, b.budget_key)] = counts.get((b.arm, b.budget_key), 0) + 1
        return max(counts.values(), default=0)

    def reference_of(self, arm: str) -> Optional[str]:
        """The arm ``arm`` is compared with (None for the study's first arm without a reference)."""
        ref = self.references.get(arm, self.reference)
        return None if ref == arm else ref

    def compare(self, values: Dict[str, float], **kw) -> List[Dict[str, Any]]:
        """One finding per arm with a reference and budget with values for both arms."""
        out: List[Dict[str, Any]] = []
        extra = dict(kw.pop("extra", None) or {})
        for key in self.budgets:
            for arm in self.arms:
                ref_arm = self.reference_of(arm)
                ref = self.cell(ref_arm, key, values) if ref_arm else {}
                vals = self.cell(arm, key, values)
                if vals and ref:
                    diff = compare_seeds(vals, ref, self.spec)
                    note = {"note": self.contrast_note(arm)} if arm in self.contrasts else {}
                    out.append(
                        make_finding(
                            arm=arm,
                            reference=ref_arm,
                            diff=diff,
                            budget=self.budget(key),
                            extra={**extra, **self.contrast(arm), **note},
                            **kw,
                        )
                    )
        return out

    def contrast(self, arm: str) -> Dict[str, str]:
        """``{"contrast": what arm and its reference differ in}`` (empty when unknown)."""
        return {"contrast": self.contrasts[arm]} if arm in self.contrasts else {}

    def contrast_note(self, arm: str) -> Optional[str]:
        if arm not in self.contrasts:
            return None
        return f"({arm} and {self.reference_of(arm)} differ in: {self.contrasts[arm]}.)"

    def band(self, arm: str, key: Optional[float], values: Dict[str, float], x: Optional[float] = None):
        """(x, mean, low, high) over the seeds of one arm and budget, or None without values."""
        vals = list(self.cell(arm, key, values).values())
        if not vals:
            return None
        m, lo, hi = mean_interval(vals, self.spec)
        return (self.x(key) if x is None else x, m, lo, hi)

    def seed_lines(self, arm: str, values: Dict[str, float]) -> List[List[Tuple[float, float]]]:
        """One (x, value) line per seed of ``arm`` across the budgets (the figures' thin lines)."""
        seeds = sorted({b.seed for b in self.by_unit.values() if b.arm == arm})
        lines = []
        for s in seeds:
            pts = [(self.x(k), self.cell(arm, k, values)[s]) for k in self.budgets if s in self.cell(arm, k, values)]
            if pts:
                lines.append(pts)
        return lines

    def colors(self) -> Dict[str, Any]:
        """One colour per arm, the same in every figure."""
        from ..analysis.plots import arm_colors

        return arm_colors(self.arms)

    def bars(self, values: Dict[str, float]) -> Dict[str, List[Any]]:
        return {arm: [self.band(arm, k, values) for k in self.budgets] for arm in self.arms}

    def band_label(self) -> str:
        if self.max_seeds < 2:
            return ""
        method, note = interval_method(self.spec, self.max_seeds)
        return f"{100 * self.spec.confidence:g}% interval of the mean over seeds ({method}{'; bootstrap refused below 10 seeds' if note else ''})"

    def row(self, unit: str) -> Dict[str, Any]:
        b = self.by_unit.get(unit)
        return {} if b is None else {"arm": b.arm, "seed": b.seed, "budget_tpp": b.budget_tpp}


# -- sections -----------------------------------------------------------------------------------


def _pretraining(ctx, bases: BaseSet, out: Path) -> Dict[str, Any]:
    rows, curves = [], {}
    for u, b in bases.by_unit.items():
        pre = _result(ctx, f"pretrain/{u}")
        ev = _result(ctx, f"pt_eval/{u}")
        if pre is None:
            continue
        curve = _load(pre.get("curve")) or {}
        curves[u] = curve.get("train", [])
        rows.append(
            {
                "unit": u,
                "arm": b.arm,
                "seed": b.seed,
                "budget_tpp": b.budget_tpp,
                "budget_tpp_non_embedding": b.budget_tpp_non_embedding,
                "tokens": b.tokens,
                "params_total": b.params_total,
                "params_non_embedding": b.params_non_embedding,
                "optimizer": pre.get("optimizer"),
                "schedule": pre.get("schedule"),
                "final_train_loss": pre.get("final_train_loss"),
                "l_pt": ev and ev.get("l_pt"),
                "sam_steps": sum(1 for p in curves[u] if p.get("sam_active")),
                "steps": len(curves[u]),
            }
        )
    if not rows:
        return {}
    write_table(out, "pretraining", list(rows[0]), rows)
    values = {r["unit"]: r["l_pt"] for r in rows if r["l_pt"] is not None}
    findings = bases.compare(values, section="pretraining", quantity="l_pt", context="Base model")
    figs = {}
    if any(curves.values()):
        from ..analysis.plots import _colors, _figure

        color = _colors(bases.arms)
        fig, (ax1, ax2) = _figure(2, panel_w=5.0, panel_h=3.4)
        seen = set()
        for u, pts in curves.items():
            b = bases.by_unit[u]
            steps = [p["step"] for p in pts]
            label = None if b.arm in seen else b.arm
            seen.add(b.arm)
            ax1.plot(steps, [p["train_loss"] for p in pts], lw=0.8, alpha=0.8, color=color[b.arm], label=label)
            ax2.plot(steps, [p["lr"] for p in pts], lw=0.8, alpha=0.8, color=color[b.arm])
        ax1.set(xlabel="step", ylabel="train CE loss", title="Pretraining loss (every seed and budget)")
        ax2.set(xlabel="step", ylabel="learning rate", title="Schedules")
        ax1.legend(fontsize=7)
        figs["loss_curves"] = str(save_figure(fig, out / "pretraining_curves.png", dpi=110, bbox_inches="tight"))
    return {"rows": rows, "figures": figs, "findings": findings}


def _probe_payloads(ctx, bases: BaseSet, stage: str):
    for u in bases.by_unit:
        res = _result(ctx, f"{stage}/{u}")
        if res is not None:
            yield u, _load(res.get("file")) or {}


def _quantize(ctx, bases: BaseSet, out: Path) -> Dict[str, Any]:
    rows = []
    for u, payload in _probe_payloads(ctx, bases, "quantize"):
        for rec in payload.get("records", []):
            rows.append(
                {
                    "unit": u,
                    **bases.row(u),
                    "quant": rec.get("quant"),
                    "loss": rec.get("loss"),
                    "degradation": rec.get("degradation"),
                    "quantized_modules": (rec.get("proof") or {}).get("n_quantized"),
                }
            )
    if not rows:
        return {}
    write_table(out, "quantize", list(rows[0]), rows)
    settings = sorted({r["quant"] for r in rows if r["quant"] not in (None, "none")}, key=str)
    findings, panels = [], []
    for q in settings:
        values = {r["unit"]: r["degradation"] for r in rows if r["quant"] == q and r["degradation"] is not None}
        findings += bases.compare(
            values, section="quantize", quantity="quant_degradation", setting=str(q), context=f"{q} quantization"
        )
        one = " (one seed: no interval)" if bases.max_seeds < 2 else ""
        panels.append(
            Panel(
                title=f"{q}{one}",
                ylabel="PT-loss increase over full precision (nats)",
                xlabel="pretraining budget",
                groups=[bases.budget_label(k) for k in bases.budgets],
                series=bases.bars(values),
                zero_line=True,
            )
        )
    figs = {}
    if panels:
        figs["quantize"] = str(
            plot_bars(
                panels,
                out / "quantize.png",
                band_label=bases.band_label(),
                title="Quantization degradation (cf. [SAM-PT] Fig 8a)",
            )
        )
    return {"rows": rows, "figures": figs, "findings": findings}


def _noise(ctx, bases: BaseSet, out: Path) -> Dict[str, Any]:
    rows = []
    for u, payload in _probe_payloads(ctx, bases, "noise"):
        for srow in payload.get("summary", []):
            rows.append(
                {
                    "unit": u,
                    **bases.row(u),
                    "gamma": srow.get("gamma"),
                    "mean_loss": srow.get("mean"),
                    "std": srow.get("std"),
                    "noise_draws": srow.get("n_seeds"),
                    "increase": srow.get("increase"),
                }
            )
    if not rows:
        return {}
    write_table(out, "noise", list(rows[0]), rows)
    gammas = sorted({r["gamma"] for r in rows if r["gamma"]})
    findings: List[Dict[str, Any]] = []
    if gammas:
        gmax = gammas[-1]
        values = {r["unit"]: r["increase"] for r in rows if r["gamma"] == gmax and r["increase"] is not None}
        findings = bases.compare(
            values,
            section="noise",
            quantity="noise_increase",
            setting=f"gamma={gmax:g}",
            context=f"Gaussian weight noise at gamma={gmax:g}",
        )
    multi = bases.max_seeds >= 2
    panels = []
    for key in bases.budgets:
        series: Dict[str, List[Any]] = {}
        for arm in bases.arms:
            pts = []
            for g in gammas:
                at = {r["unit"]: r for r in rows if r["gamma"] == g and r["increase"] is not None}
                if multi:
                    pts.append(bases.band(arm, key, {u: r["increase"] for u, r in at.items()}, x=g))
                else:  # one seed: the band is the spread over noise draws
                    for u, r in at.items():
                        b = bases.by_unit[u]
                        if b.arm == arm and b.budget_key == key:
                            sd = r.get("std") or 0.0
                            pts.append((g, r["increase"], r["increase"] - sd, r["increase"] + sd))
            pts = [p for p in pts if p is not None]
            if pts:
                series[arm] = [(0.0, 0.0, 0.0, 0.0)] + pts
        if series:
            panels.append(
                Panel(
                    title=bases.budget_label(key),
                    xlabel="gamma (relative noise, [SAM-PT] Eq. 7)",
                    ylabel="PT-loss increase over clean (nats)",
                    series=series,
                    zero_line=True,
                )
            )
    figs = {}
    if panels:
        label = bases.band_label() if multi else "one seed: +- std over noise draws"
        figs["noise"] = str(
            plot_bands(panels, out / "noise.png", band_label=label, title="Gaussian weight noise (cf. [SAM-PT] Fig 6d)")
        )
    return {"rows": rows, "figures": figs, "findings": findings}


def _hessian(ctx, bases: BaseSet, out: Path) -> Dict[str, Any]:
    rows = []
    for u, payload in _probe_payloads(ctx, bases, "hessian"):
        for rec in payload.get("records", []):
            tr = rec.get("trace") or {}
            ev = rec.get("top_eigenvalue") or {}
            rows.append(
                {
                    "unit": u,
                    **bases.row(u),
                    "trace": tr.get("trace"),
                    "trace_stderr": tr.get("stderr"),
                    "probes": tr.get("n_probes"),
                    "lambda_max": ev.get("value"),
                    "lambda_max_converged": ev.get("converged"),
                    "power_iters": ev.get("iterations"),
                    "power_residual": ev.get("residual"),
                    "edge_of_stability_2_over_lr": rec.get("edge_of_stability"),
                    "batch_loss": rec.get("batch_loss"),
                }
            )
    if not rows:
        return {}
    write_table(out, "hessian", list(rows[0]), rows)
    traces = {r["unit"]: r["trace"] for r in rows if r["trace"] is not None}
    lams = {r["unit"]: r["lambda_max"] for r in rows if r["lambda_max"] is not None}
    conv = {r["unit"]: bool(r["lambda_max_converged"]) for r in rows if r["lambda_max"] is not None}
    findings = bases.compare(traces, section="hessian", quantity="trace", context="Sharpness")
    for f in bases.compare(lams, section="hessian", quantity="lambda_max", context="Top Hessian eigenvalue"):
        key = _budget_key(f["budget_tpp"])
        units = [
            b.unit for b in bases.by_unit.values() if b.arm in f["arms"] and b.budget_key == key and b.unit in conv
        ]
        k = sum(conv[u] for u in units)
        f["power_iteration_converged"] = f"{k} of {len(units)}"
        if k == 0:
            conv_note = (
                f"Power iteration converged for none of the {len(units)} checkpoints: lambda_max is a lower estimate."
            )
        elif k < len(units):
            conv_note = (
                f"Power iteration converged for only {k} of {len(units)} checkpoints: lambda_max is a lower estimate."
            )
        else:
            conv_note = f"Power iteration converged for all {k} checkpoints."
        f["note"] = " ".join(n for n in (f.get("note"), conv_note) if n)
        f["text"] += " " + conv_note  # adjust_findings renders the text again from the note
        findings.append(f)
    multi = bases.max_seeds >= 2
    groups = [bases.budget_label(k) for k in bases.budgets]
    if multi:
        tr_series = bases.bars(traces)
    else:  # one seed: the Hutchinson standard error
        se = {r["unit"]: r["trace_stderr"] or 0.0 for r in rows}
        tr_series = {}
        for arm in bases.arms:
            pts = []
            for k in bases.budgets:
                cell = [u for u, b in bases.by_unit.items() if b.arm == arm and b.budget_key == k and u in traces]
                pts.append(
                    None
                    if not cell
                    else (0, traces[cell[0]], traces[cell[0]] - se[cell[0]], traces[cell[0]] + se[cell[0]])
                )
            tr_series[arm] = pts
    hatched = [
        (b.arm, bases.budgets.index(b.budget_key)) for u, b in bases.by_unit.items() if u in conv and not conv[u]
    ]
    panels = [
        Panel(
            title="Trace of the Hessian",
            ylabel="tr(H) (Hutchinson)",
            xlabel="pretraining budget",
            groups=groups,
            series=tr_series,
        ),
        Panel(
            title="Top eigenvalue",
            ylabel="lambda_max (power iteration)",
            xlabel="pretraining budget",
            groups=groups,
            series=bases.bars(lams),
            hatched=hatched,
            hatch_label="power iteration not converged",
        ),
    ]
    label = bases.band_label() if multi else "one seed: tr(H) +- Hutchinson standard error"
    fig = plot_bars(panels, out / "hessian.png", band_label=label, title="Sharpness (cf. [SAM-PT] Fig 12)")
    return {"rows": rows, "figures": {"hessian": str(fig)}, "findings": findings}


#: compared fine-tuning quantities -> the matched row's field holding a base's value
FT_QUANTITIES = {"matched_forgetting": "forgetting", "fig5_pt_loss": "l_pt"}


def matching_rule(study) -> str:
    """The study's ``analysis: matching`` (default ``nearest``)."""
    return str((getattr(study, "analysis", None) or {}).get("matching", "nearest"))


def finetune_curves(ctx: JobContext) -> Tuple[list, Dict[str, List[Any]]]:
    """(records, curves) of every finished fine-tuning sweep of the study: the curves grouped per
    dataset, and per ``dataset/method`` when the study fine-tunes with several methods."""
    from ..analysis.forgetting import group_curves
    from ..finetune.records import ResultStore

    records = []
    for job in ctx.plan.jobs:
        if job.kind == "ft_sweep" and job.is_done(ctx.out):
            records += ResultStore(job.result(ctx.out)["results"]).records()
    if not records:
        return [], {}
    curves = group_curves(records)
    methods = sorted({c.key.method or "" for cs in curves.values() for c in cs})
    out: Dict[str, List[Any]] = {}
    for ds, cs in curves.items():
        for m in methods:
            sel = [c for c in cs if (c.key.method or "") == m]
            if sel:
                out[f"{ds}/{m}" if len(methods) > 1 else ds] = sel
    return records, out


def sensitivity_taus(curves: List[Any], units: Optional[List[str]] = None) -> Dict[str, float]:
    """The thresholds at which a matched result is shown, by name:

    * ``study``: Eq. 10 over every base of the dataset in the study (the findings' tau; it depends
      on which bases the study holds: the weakest base sets it);
    * ``compared``: Eq. 10 over the compared bases only (``units``: e.g. both arms at one budget) --
      the tightest threshold every one of them reaches, at most ``study``;
    * ``looser``: ``study + (study - compared)``, or 2% above ``study`` when the two coincide -- a
      threshold that asks less learning, reached by every base.
    """
    from ..analysis.forgetting import matched_threshold

    tau = matched_threshold(curves)
    sel = [c for c in curves if units is None or c.base_label in units]
    tau_c = matched_threshold(sel) if sel else tau
    gap = tau - tau_c
    return {"study": tau, "compared": tau_c, "looser": tau + (gap if gap > 0 else 0.02 * abs(tau))}


def matched_rows(
    curves: Dict[str, List[Any]],
    bases: "BaseSet",
    *,
    matching: str = "nearest",
    taus: Optional[Dict[str, float]] = None,
) -> Tuple[List[Dict[str, Any]], Dict[str, Any], List[str]]:
    """(rows, matched sets, notes): one row per base and dataset with its retained PT loss at tau
    (``l_pt``, the Fig 5 quantity), its forgetting (``forgetting``), ``grid_edge`` (matched at the
    grid's lowest LR past tau: an upper bound), ``tau`` and how it was chosen. ``taus`` gives a
    dataset's tau (default: Eq. 10 over every base of the dataset)."""
    from ..analysis.forgetting import AnalysisError, match_at_tau

    if matching not in ANALYSIS_MATCHINGS:
        raise StudyError(f"analysis.matching: unknown {matching!r}; choose one of {list(ANALYSIS_MATCHINGS)}")
    rows: List[Dict[str, Any]] = []
    matched, notes = {}, []
    for ds, cs in curves.items():
        if len(cs) < 2:
            notes.append(f"{ds}: only one base checkpoint; no matched comparison")
            continue
        tau = (taus or {}).get(ds)
        try:  # default tau = max_i L_min(i) over every base of the dataset (Eq. 10)
            m = match_at_tau(cs, tau, interpolate=matching == "interpolate")
        except AnalysisError as e:
            notes.append(f"{ds}: {e}")
            continue
        matched[ds] = m
        forgetting = {r.curve.base_label: r.forgetting for r in m.rows}
        rule = ("Eq. 10: the largest best-L_FT over all " + f"{len(cs)} bases of {ds}") if tau is None else "given"
        for r in m.rows:
            u = r.curve.base_label
            b = bases.by_unit.get(u)
            ref_arm = bases.reference_of(b.arm) if b else None
            ref_u = next(
                (
                    v
                    for v, c in bases.by_unit.items()
                    if b and c.arm == ref_arm and c.seed == b.seed and c.budget_key == b.budget_key
                ),
                None,
            )
            ref_f = forgetting.get(ref_u) if ref_u else None
            rows.append(
                {
                    "dataset": ds,
                    "tau": m.tau,
                    "tau_rule": rule,
                    "matching": matching,
                    "unit": u,
                    **bases.row(u),
                    "base_l_pt": r.curve.base_l_pt,
                    "l_min": r.l_min,
                    "l_ft": r.retained.l_ft,
                    "l_pt": r.retained.l_pt,
                    "forgetting": r.forgetting,
                    "grid_edge": r.grid_edge,
                    "interpolated": r.retained.interpolated,
                    "matched_lr": r.retained.lr,
                    "less_forgetting_pct": (100.0 * (1 - r.forgetting / ref_f))
                    if ref_f and ref_f > 0 and u != ref_u
                    else None,
                    "lr": ";".join(f"{lr:g}" for p in r.retained.points for lr in p.lrs),
                }
            )
    return rows, matched, notes


def seed_values(
    rows: List[Dict[str, Any]], quantity: str, *, include_grid_edge: bool = False
) -> Dict[Tuple[str, Optional[float], str], Dict[int, float]]:
    """Per (arm, budget key, dataset): seed -> a base's value of ``quantity`` from
    :func:`matched_rows`' rows (or ``summary["finetune"]["matched_rows"]``):

    * ``matched_forgetting``: PT-loss increase at matched fine-tuning loss (App C.4);
    * ``fig5_pt_loss``: PT loss after fine-tuning to L_FT <= tau, the minimum over the LR grid
      (Sec 3.2 footnote 1, Fig 5).

    The budget key is the budget in tokens/param to 3 significant digits (:class:`Base`). Bases
    matched at the grid's edge (``grid_edge``: their value is an upper bound) are left out unless
    ``include_grid_edge``. Pass two cells to :func:`olmo_sam.analysis.stats.compare_seeds`: it
    pairs them on their shared seeds."""
    if quantity not in FT_QUANTITIES:
        raise StudyError(f"quantity {quantity!r}: seed_values knows {sorted(FT_QUANTITIES)}")
    field = FT_QUANTITIES[quantity]
    out: Dict[Tuple[str, Optional[float], str], Dict[int, float]] = {}
    for r in rows:
        v = r.get(field)
        if r.get("arm") is None or v is None or not math.isfinite(v) or (r.get("grid_edge") and not include_grid_edge):
            continue  # a fine-tuned checkpoint that is no base of the study, or no value
        out.setdefault((r["arm"], _budget_key(r["budget_tpp"]), r["dataset"]), {})[int(r["seed"])] = float(v)
    return out


def _matched_findings(bases: "BaseSet", rows: List[Dict[str, Any]], ds: str) -> List[Dict[str, Any]]:
    """Findings for both fine-tuning quantities on one dataset: per non-reference arm and budget,
    paired by seed over the seeds where neither arm's base is at the grid's edge."""
    rs = [r for r in rows if r["dataset"] == ds]
    if not rs or bases.reference is None:
        return []
    tau, rule, matching = rs[0]["tau"], rs[0]["tau_rule"], rs[0]["matching"]
    edge = {(r["arm"], _budget_key(r["budget_tpp"]), r["seed"]) for r in rs if r["grid_edge"]}
    how = "nearest frontier run" if matching == "nearest" else "log-LR interpolation"
    out: List[Dict[str, Any]] = []
    for quantity, field in FT_QUANTITIES.items():
        values = {r["unit"]: r[field] for r in rs}
        what = "PT loss after fine-tuning" if quantity == "fig5_pt_loss" else "forgetting"
        context = f"Fine-tuning on {ds}, {what} at L_FT <= tau = {tau:.4g} ({rule}; {how})"
        extra = {"tau": tau, "tau_rule": rule, "matching": matching}
        for key in bases.budgets:
            for arm in bases.arms:
                ref_arm = bases.reference_of(arm)
                if ref_arm is None:
                    continue
                ref = bases.cell(ref_arm, key, values)
                vals = bases.cell(arm, key, values)
                if not vals or not ref:
                    continue
                drop = sorted({s for s in set(vals) | set(ref) if (arm, key, s) in edge or (ref_arm, key, s) in edge})
                a = {s: v for s, v in vals.items() if s not in drop}
                r = {s: v for s, v in ref.items() if s not in drop}
                kw = dict(
                    section="finetune",
                    quantity=quantity,
                    arm=arm,
                    reference=ref_arm,
                    budget=bases.budget(key),
                    dataset=ds,
                    context=context,
                )
                why = (
                    f"seed{'s' if len(drop) != 1 else ''} {', '.join(map(str, drop))} matched at the grid's "
                    f"lowest learning rate past tau (an upper bound)"
                )
                if not a or not r:
                    out.append(
                        unmeasurable_finding(
                            confidence=bases.spec.confidence,
                            reason=f"every seed left out: {why}; extend the learning-rate grid downward",
                            extra={**extra, "grid_edge_seeds": drop},
                            **kw,
                        )
                    )
                    continue
                note = (
                    " ".join(
                        n
                        for n in (
                            f"Left out: {why} -- not measurable on this grid." if drop else None,
                            bases.contrast_note(arm),
                        )
                        if n
                    )
                    or None
                )
                out.append(
                    make_finding(
                        diff=compare_seeds(a, r, bases.spec),
                        extra={**extra, "grid_edge_seeds": drop, "note": note, **bases.contrast(arm)},
                        **kw,
                    )
                )
    return out


def _tau_sensitivity(bases: "BaseSet", curves: Dict[str, List[Any]], matching: str) -> List[Dict[str, Any]]:
    """Every matched comparison (arm vs reference at one budget, both quantities) at the three
    thresholds of :func:`sensitivity_taus`: a table, not findings (they are the same comparisons)."""
    out: List[Dict[str, Any]] = []
    for ds, cs in curves.items():
        if len(cs) < 2 or bases.reference is None:
            continue
        for key in bases.budgets:
            for arm in bases.arms:
                ref_arm = bases.reference_of(arm)
                if ref_arm is None:
                    continue
                units = [u for u, b in bases.by_unit.items() if b.budget_key == key and b.arm in (arm, ref_arm)]
                if not any(c.base_label in units for c in cs):
                    continue
                compared = [c for c in cs if c.base_label in units]  # the other bases may not reach a lower tau
                for name, tau in sensitivity_taus(cs, units).items():
                    rows, _, _ = matched_rows({ds: compared}, bases, matching=matching, taus={ds: tau})
                    for quantity in FT_QUANTITIES:
                        vals = seed_values(rows, quantity)
                        a, r = vals.get((arm, key, ds)), vals.get((ref_arm, key, ds))
                        d = compare_seeds(a, r, bases.spec) if a and r else None
                        out.append(
                            {
                                "dataset": ds,
                                "quantity": quantity,
                                "arm": arm,
                                "reference": ref_arm,
                                "budget_tpp": bases.budget(key)["budget_tpp"],
                                "tau_name": name,
                                "tau": tau,
                                "estimate": d and d.estimate,
                                "ci_low": d and d.ci_low,
                                "ci_high": d and d.ci_high,
                                "p_value": d and d.p_value,
                                "n_seeds": d.n_seeds if d else 0,
                                "grid_edge_bases": sum(1 for x in rows if x["grid_edge"] and x["unit"] in units),
                            }
                        )
    return out


def _finetune(ctx, bases: BaseSet, out: Path) -> Dict[str, Any]:
    from ..analysis.plots import plot_frontiers
    from ..analysis.report import frontier_report

    records, curves = finetune_curves(ctx)
    if not records:
        return {}
    merged = out / "finetune_results.jsonl"
    merged.write_text("".join(r.to_json() + "\n" for r in records))
    from ..analysis.forgetting import group_curves

    by_dataset = group_curves(records)
    frontier = frontier_report(by_dataset)
    frontier.write(out)
    arm_of = {u: (b.arm, bases.budget_label(b.budget_key)) for u, b in bases.by_unit.items()}
    figs = {
        "frontiers": str(
            plot_frontiers(
                by_dataset,
                out / "frontiers.png",
                arm_of=arm_of,
                title="Learning-forgetting frontiers: every fine-tuning run",
            )
        )
    }
    section: Dict[str, Any] = {"runs": len(records), "frontier_rows": frontier.rows, "figures": figs}
    matching = matching_rule(ctx.study)
    rows, matched, notes = matched_rows(curves, bases, matching=matching)
    findings: List[Dict[str, Any]] = []
    for ds in matched:
        findings += _matched_findings(bases, rows, ds)
    if matched:
        write_table(out, "matched", list(rows[0]), rows)
        section["matched_rows"] = rows
        section["reference"] = bases.reference
        section["references"] = {a: bases.reference_of(a) for a in bases.arms if bases.reference_of(a)}
        section["matching"] = matching
        section["grid_edge"] = {ds: {r["unit"]: r["grid_edge"] for r in rows if r["dataset"] == ds} for ds in matched}
        sens = _tau_sensitivity(bases, {ds: curves[ds] for ds in matched}, matching)
        if sens:
            write_table(out, "tau_sensitivity", list(sens[0]), sens)
            section["tau_sensitivity"] = sens
        figs["frontiers_matched"] = str(
            plot_frontiers(
                curves,
                out / "frontiers_matched.png",
                matched=matched,
                arm_of=arm_of,
                title="Learning-forgetting frontiers matched at tau ([SAM-PT] App C.4): stars are the matched points",
            )
        )
        figs["overtraining"] = str(_overtraining_figure(bases, rows, findings, out))
    section["notes"] = notes
    section["findings"] = findings
    return section


def _overtraining_figure(bases: BaseSet, rows, findings, out: Path) -> Path:
    """Per dataset: forgetting at matched L_FT, the Fig 5 view (minimum L_PT with L_FT <= tau), and
    the paired difference of each from the reference arm, against the pretraining budget; one line
    per arm with its interval band over seeds and each seed as a thin line of the arm's hue (the CPU
    analogue of [SAM-PT] Fig 5 / Fig 3a). Bases matched at the grid's edge are drawn hollow."""
    panels = []
    xlabel = "pretraining tokens per parameter" if bases.xlog else "pretraining budget (index)"
    for ds in dict.fromkeys(r["dataset"] for r in rows):
        rs = [r for r in rows if r["dataset"] == ds]
        tau = rs[0]["tau"]
        edge = [(bases.x(_budget_key(r["budget_tpp"])), r) for r in rs if r["grid_edge"]]
        for quantity, title, ylabel in (
            ("matched_forgetting", f"{ds}: forgetting at L_FT <= {tau:.3g}", "PT-loss increase (nats)"),
            ("fig5_pt_loss", f"{ds}: min L_PT with L_FT <= {tau:.3g} (Fig 5)", "PT loss after fine-tuning"),
        ):
            field = FT_QUANTITIES[quantity]
            vals = {r["unit"]: r[field] for r in rs if not r["grid_edge"]}
            series = {arm: [bases.band(arm, k, vals) for k in bases.budgets] for arm in bases.arms}
            seeds = {arm: bases.seed_lines(arm, vals) for arm in bases.arms}
            hollow = [(x, r[field], r["arm"]) for x, r in edge]
            panels.append(
                Panel(
                    title=title,
                    xlabel=xlabel,
                    ylabel=ylabel,
                    series=series,
                    xlog=bases.xlog,
                    seeds=seeds,
                    hollow=hollow,
                )
            )
        for quantity, what in (("matched_forgetting", "forgetting"), ("fig5_pt_loss", "Fig 5 PT loss")):
            diff: Dict[str, List[Any]] = {}
            for f in findings:
                if f["dataset"] == ds and f["quantity"] == quantity and f.get("measurable", True):
                    key = _budget_key(f["budget_tpp"])
                    diff.setdefault(f["arm"], []).append((bases.x(key), f["estimate"], f["ci_low"], f["ci_high"]))
            if diff:
                refs = sorted({f["reference"] for f in findings if f["dataset"] == ds and f["quantity"] == quantity})
                panels.append(
                    Panel(
                        title=f"{ds}: {what} minus {'/'.join(refs)}'s (paired)",
                        xlabel=xlabel,
                        ylabel="difference (nats)",
                        series=diff,
                        xlog=bases.xlog,
                        zero_line=True,
                    )
                )
    ncols = 4 if any("minus" in p.title for p in panels) else 2
    return plot_bands(
        panels,
        out / "overtraining.png",
        ncols=ncols,
        band_label=bases.band_label(),
        colors=bases.colors(),
        title="Fine-tuning at matched loss against the pretraining budget",
    )


def _benchmarks(ctx, bases: BaseSet, out: Path) -> Dict[str, Any]:
    """Per-task scores, and per model and precision the suite average with its drop from the base
    model's full-precision average (the [SAM-PT] Table 2/8 view of forgetting)."""
    rows = []
    for job in ctx.plan.jobs:
        if job.kind not in ("benchmarks", "benchmarks_ft") or not job.is_done(ctx.out):
            continue
        res = job.result(ctx.out)
        base = job.params["unit"]
        model = res.get("unit", base)
        for tag, recs in res.items():
            if not isinstance(recs, list):
                continue
            for r in recs:
                rows.append(
                    {
                        "model": model,
                        "base": base,
                        "precision": tag,
                        "task": r.get("task"),
                        "score": r.get("score"),
                        "metric": r.get("metric"),
                        "instances": r.get("num_instances"),
                    }
                )
    if not rows:
        return {}
    write_table(out, "benchmarks", list(rows[0]), rows)
    groups: Dict[tuple, List[float]] = {}
    for r in rows:
        if r["score"] is not None:
            groups.setdefault((r["model"], r["base"], r["precision"]), []).append(r["score"])
    avg = {k: sum(v) / len(v) for k, v in groups.items()}
    averages = []
    for (model, base, prec), a in sorted(avg.items()):
        ref = avg.get((base, base, "olmes-bf16" if prec.startswith("olmes-") else "bf16"))
        averages.append(
            {
                "model": model,
                "precision": prec,
                "average": a,
                "tasks": len(groups[(model, base, prec)]),
                "drop_from_base": None if ref is None else ref - a,
            }
        )
    write_table(out, "benchmark_averages", list(averages[0]), averages)
    return {"rows": rows, "averages": averages}


#: (summary key, section function) in the order of the findings
SECTIONS: Tuple[Tuple[str, Callable], ...] = (
    ("pretraining", _pretraining),
    ("finetune", _finetune),
    ("quantize", _quantize),
    ("noise", _noise),
    ("hessian", _hessian),
    ("benchmarks", _benchmarks),
)


def interval_spec(study) -> IntervalSpec:
    """The study's ``analysis:`` options as an :class:`IntervalSpec` (default: 95% t-intervals)."""
    from .spec import ANALYSIS_KEYS

    opts = dict(getattr(study, "analysis", None) or {})
    return IntervalSpec(**{ANALYSIS_KEYS[k]: v for k, v in opts.items() if k in ANALYSIS_KEYS})


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


def _budget_key_of(bases: "BaseSet", planned: Dict[float, Optional[float]]) -> Callable[[float], Optional[float]]:
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


def _attach_tau_sensitivity(
    summary: Dict[str, Any], bases: "BaseSet", key_of: Callable[[float], Optional[float]]
) -> None:
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
    bases: "BaseSet",
    summary: Dict[str, Any],
    key_of: Callable[[float], Optional[float]],
    include_grid_edge: bool = False,
):
    """(quantity, arm, budget in tokens/param, dataset or setting) -> {seed: value}, read from the
    summary's per-base tables (the fine-tuning quantities through :func:`seed_values`: bases
    matched at the grid's edge are left out unless ``include_grid_edge``), for
    :func:`olmo_sam.study.hypotheses.evaluate_hypotheses`."""
    from .hypotheses import QUANTITIES

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
        key = _budget_key(f["budget_tpp"]) if f.get("budget_tpp") is not None else None
        if (f["quantity"], f["arm"], f["reference"], f.get("dataset"), f.get("setting"), key) in primary:
            dropped.append(f["id"])
        else:
            keep.append(f)
    return keep, dropped


def analyse_study(ctx: JobContext) -> Dict[str, Any]:
    units = list(ctx.job.params["units"])
    out = ctx.out / "analysis"
    out.mkdir(parents=True, exist_ok=True)
    spec = interval_spec(ctx.study)
    metas, records = [], {}
    for u in units:
        rec = _result(ctx, f"pretrain/{u}")
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
    for name, fn in SECTIONS:
        section = fn(ctx, bases, out)
        if section:
            findings += section.pop("findings", [])
            summary[name] = section
    for ds, flags in (summary.get("finetune") or {}).get("grid_edge", {}).items():
        for u, edge in flags.items():  # per base: matched at its grid's lowest LR past tau, per dataset
            if u in summary["bases"]:
                summary["bases"][u].setdefault("grid_edge", {})[ds] = edge
    if hypotheses:
        from .hypotheses import evaluate_hypotheses

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
    return {"summary": str(out / "summary.json"), "dir": str(out), "sections": [k for k, _ in SECTIONS if k in summary]}
