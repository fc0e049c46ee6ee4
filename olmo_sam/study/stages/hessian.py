"""The sharpness stage: Hutchinson tr(H) and power-iteration lambda_max of every base
(:func:`olmo_sam.probes.runners.hessian_probe`; [SAM-PT] Fig 12)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict

from ...analysis.plots import Panel, plot_bars
from ...output import write_table
from ..bases import budget_key
from .base import ReportSection
from .probe import ProbeStage

__all__ = ["HessianStage"]


def _hessian(stage, ctx, bases, out: Path) -> Dict[str, Any]:
    rows = []
    for u, payload in stage.payloads(ctx, bases):
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
    findings = bases.compare(traces, section="hessian", quantity="trace", context="Sharpness, tr(H)")
    for f in bases.compare(lams, section="hessian", quantity="lambda_max", context="Top Hessian eigenvalue"):
        key = budget_key(f["budget_tpp"])
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
    fig = plot_bars(
        panels, out / "hessian.png", band_label=label, title="Sharpness: Hessian trace tr(H) (cf. [SAM-PT] Fig 12)"
    )
    return {"rows": rows, "figures": {"hessian": str(fig)}, "findings": findings}


class HessianStage(ProbeStage):
    name = "hessian"
    runner = "hessian_probe"
    shares_validation_subset = False
    report = ReportSection(
        "hessian", "Sharpness: Hessian trace tr(H) and lambda_max", {"rows": "one row per base checkpoint"}, rank=4
    )

    def analyse(self, ctx, bases, out: Path) -> Dict[str, Any]:
        return _hessian(self, ctx, bases, out)
