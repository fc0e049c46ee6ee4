"""The Gaussian-noise stage: PT-loss increase of every base under relative weight noise
(:func:`olmo_sam.probes.runners.noise_probe`; [SAM-PT] Eq. 7, Fig 6d)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List

from ...analysis.plots import Panel, plot_bands
from ...output import write_table
from .base import ReportSection
from .probe import ProbeStage

__all__ = ["NoiseStage"]


def _noise(stage, ctx, bases, out: Path) -> Dict[str, Any]:
    rows = []
    for u, payload in stage.payloads(ctx, bases):
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


class NoiseStage(ProbeStage):
    name = "noise"
    runner = "noise_probe"
    report = ReportSection(
        "noise", "Gaussian weight noise", {"rows": "one row per base checkpoint and noise magnitude"}, rank=3
    )

    def analyse(self, ctx, bases, out: Path) -> Dict[str, Any]:
        return _noise(self, ctx, bases, out)
