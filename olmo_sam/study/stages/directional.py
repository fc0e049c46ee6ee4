"""The directional-sharpness stage: how curved the pretraining loss is along the step fine-tuning
took ([SAM-PT] Sec 4).

For every base and fine-tuning dataset, the plain fine-tuning run (method ``ft``) at the grid's
learning rate nearest ``lr`` (the paper measured at 4e-4, :data:`olmo_sam.paper.HESSIAN_FT_LR`)
gives ``Delta = theta_FT - theta_PT``; the job measures, at the base, the directional sharpness
``Delta^T H Delta / ||Delta||^2`` ([SAM-PT] Eq. 1) and the second-order prediction
``L_PT(theta_PT) + 1/2 Delta^T H Delta`` of the fine-tuned model's PT loss ([SAM-PT] Eqs. 3-4, 6),
next to the measured one (:func:`olmo_sam.probes.runners.hessian_probe`, its pairs). The
analysis compares each arm with its reference per dataset, paired by seed, in the study's pooled
(BH-corrected) family of exploratory findings.

The study file asks for it with a ``directional:`` section (``{}``: the paper's LR); the
fine-tuning stage then keeps its runs' checkpoints.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Optional

from ... import paper
from ...config import Checked, ConfigError, given, setting
from ...output import write_table
from ..job import Job
from .base import PlanBuilder, ReportSection, Stage, data_of, unit_checkpoint

__all__ = ["DirectionalOptions", "DirectionalStage"]


@dataclass
class DirectionalOptions(Checked):
    """``directional:``: which fine-tuning run gives the direction, and the Hessian probe's
    options for it (``None``: :func:`~olmo_sam.probes.runners.hessian_probe`'s default). The
    probe's options are checked by the probe's own options config
    (:class:`~olmo_sam.probes.runners.HessianOptions`), once."""

    #: the fine-tuning LR whose run gives Delta: the grid's nearest (log scale)
    lr: float = setting(paper.HESSIAN_FT_LR, gt=0, hint=" (a learning rate of the fine-tuning grid)")
    #: sequences of the fixed validation batch the Hessian is taken on
    n_sequences: Optional[int] = None
    method: Optional[str] = None
    fd_step: Optional[float] = None
    seq_len: Optional[int] = None
    batch_size: Optional[int] = None
    #: validation sequences of the measured PT losses (default: ``pt_eval.max_sequences``)
    val_max_sequences: Optional[int] = None
    device: Optional[str] = None

    def __post_init__(self):
        super().__post_init__()
        from ...probes.runners import check_probe_options

        check_probe_options("hessian", self.probe_options())

    def probe_options(self) -> Dict[str, Any]:
        """What the job passes to the probe: the options given, ``lr`` left out."""
        return {k: v for k, v in given(self).items() if k != "lr"}


def nearest_lr(lrs, lr: float) -> float:
    """The learning rate of ``lrs`` nearest ``lr`` on a log scale (the lower one on a tie)."""
    return min(sorted(lrs), key=lambda x: abs(math.log(x / lr)))


def job_directional(ctx) -> Dict[str, Any]:
    """Directional sharpness along the fine-tuning step of one base and dataset."""
    from ...finetune.records import ResultStore
    from ...probes.runners import hessian_probe

    p = ctx.job.params
    unit, ds = p["unit"], p["dataset"]
    runs = [
        r
        for r in ResultStore(ctx.dep(f"finetune/{unit}:{ds}")["results"]).records()
        if r.method == "ft" and r.extra.get("checkpoint")
    ]
    if not runs:
        raise ConfigError(f"{ctx.job.id}: the sweep kept no checkpoint of a plain ('ft') fine-tuning run")
    lr = nearest_lr({r.lr for r in runs}, p["lr"])
    run = next(r for r in runs if r.lr == lr)
    out = ctx.dir / "result.json"
    res = hessian_probe(
        [],
        data_of(ctx)["val"],
        pairs=[(unit_checkpoint(ctx, unit), run.extra["checkpoint"])],
        out=out,
        overwrite=True,  # (the job's own file: kept records of the same settings are reused)
        progress=False,
        **p["options"],
    )
    rec = res["records"][0]
    return {
        "file": str(out),
        "unit": unit,
        "dataset": ds,
        "lr_asked": p["lr"],
        "lr": lr,
        "run_id": run.run_id,
        "l_ft": run.l_ft,
        "directional_sharpness": rec["directional_sharpness"],
        "delta_norm": rec["delta_norm"],
        "val_loss_base": rec["val_loss_base"],
        "val_loss_finetuned": rec["val_loss_finetuned"],
        "val_predicted": rec["val_predicted"],
    }


def _directional(ctx, bases, out: Path) -> Dict[str, Any]:
    from ...analysis.plots import Panel, plot_bars

    rows = []
    for job in ctx.plan.jobs:
        res = ctx.finished(job.id) if job.kind == "directional" else None
        if res is None or res["unit"] not in bases.by_unit:
            continue
        forgetting = res["val_loss_finetuned"] - res["val_loss_base"]
        predicted = res["val_predicted"] - res["val_loss_base"]
        rows.append(
            {
                "unit": res["unit"],
                **bases.row(res["unit"]),
                "dataset": res["dataset"],
                "lr": res["lr"],
                "directional_sharpness": res["directional_sharpness"],
                "delta_norm": res["delta_norm"],
                "forgetting": forgetting,
                "forgetting_predicted": predicted,
                "l_ft": res["l_ft"],
            }
        )
    if not rows:
        return {}
    write_table(out, "directional", list(rows[0]), rows)
    findings, panels = [], []
    groups = [bases.budget_label(k) for k in bases.budgets]
    for ds in sorted({r["dataset"] for r in rows}):
        values = {r["unit"]: r["directional_sharpness"] for r in rows if r["dataset"] == ds}
        lrs = sorted({r["lr"] for r in rows if r["dataset"] == ds})
        at = ", ".join(f"{x:g}" for x in lrs)
        findings += bases.compare(
            values,
            section="directional",
            quantity="directional_sharpness",
            dataset=ds,
            context=f"Fine-tuning on {ds} (LR {at})",
        )
        panels.append(
            Panel(
                title=f"{ds} (LR {at})",
                ylabel="Delta^T H Delta / ||Delta||^2",
                xlabel="pretraining budget",
                groups=groups,
                series=bases.bars(values),
            )
        )
    fig = plot_bars(
        panels,
        out / "directional.png",
        band_label=bases.band_label(),
        title="Directional sharpness along the fine-tuning update ([SAM-PT] Sec 4)",
    )
    return {"rows": rows, "figures": {"directional": str(fig)}, "findings": findings}


class DirectionalStage(Stage):
    name = section = "directional"
    config = DirectionalOptions
    kinds = {"directional": job_directional}
    report = ReportSection(
        "directional",
        "Directional sharpness along the fine-tuning update ([SAM-PT] Sec 4)",
        {"rows": "one row per base checkpoint and fine-tuning dataset"},
        rank=5,
    )

    def plan(self, study, plan: PlanBuilder) -> None:
        o: DirectionalOptions = study.sections[self.section]
        ft = study.finetune
        if ft is None or "ft" not in ft.methods:
            raise ConfigError(
                "directional: the stage measures along a plain fine-tuning run: add a 'finetune' section "
                "whose methods include 'ft'"
            )
        options = o.probe_options()
        if study.pt_eval.max_sequences is not None:  # (the study's one validation subset)
            options.setdefault("val_max_sequences", study.pt_eval.max_sequences)
        for u in plan.unit_names:
            for ds in ft.datasets:
                plan.add(
                    Job(
                        f"{self.name}/{u}:{ds}",
                        self.name,
                        "directional",
                        params={"unit": u, "dataset": ds, "lr": o.lr, "options": options},
                        deps=[f"pretrain/{u}", f"finetune/{u}:{ds}", "data"],
                    )
                )

    def analyse(self, ctx, bases, out: Path) -> Dict[str, Any]:
        return _directional(ctx, bases, out)
