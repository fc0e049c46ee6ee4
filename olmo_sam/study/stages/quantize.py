"""The quantization stage: PT-loss degradation of every base under bitsandbytes 4-/8-bit
(:func:`olmo_sam.probes.runners.quantize_probe`; [SAM-PT] Sec 4.3, Fig 8a)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict

from ...analysis.plots import Panel, plot_bars
from ...output import write_table
from .base import ReportSection
from .probe import ProbeStage

__all__ = ["QuantizeStage"]


def _quantize(stage, ctx, bases, out: Path) -> Dict[str, Any]:
    rows = []
    for u, payload in stage.payloads(ctx, bases):
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


class QuantizeStage(ProbeStage):
    name = "quantize"
    runner = "quantize_probe"
    report = ReportSection(
        "quantize", "Quantization", {"rows": "one row per base checkpoint and quantization setting"}, rank=2
    )

    def analyse(self, ctx, bases, out: Path) -> Dict[str, Any]:
        return _quantize(self, ctx, bases, out)
