"""The probe stages' common shape: one probe job per base, run by
:mod:`olmo_sam.probes.runners` with the study section's options (``probes.<stage>``), checked
when the study file is read by the probes' own option configs (``QuantizeOptions``, ...)."""

from __future__ import annotations

from typing import Any, Callable, Dict

from ...config import given
from ..job import Job
from .base import PlanBuilder, Stage, data_of, load_json, unit_checkpoint

__all__ = ["ProbeStage"]


def run_probe(ctx, fn_name: str) -> Dict[str, Any]:
    from ...probes import runners

    data = data_of(ctx)
    unit = ctx.job.params["unit"]
    opts = dict(ctx.job.params.get("options") or {})
    fn: Callable = getattr(runners, fn_name)
    out = ctx.dir / "result.json"
    res = fn([unit_checkpoint(ctx, unit)], data["val"], labels=[unit], out=out, progress=False, **opts)
    return {"file": str(out), "unit": unit, "summary": res.get("summary") or res.get("records")}


class ProbeStage(Stage):
    """A probe of every base: ``runner`` names the function of :mod:`olmo_sam.probes.runners`;
    ``shares_validation_subset``: the probe reads L_PT on ``pt_eval.max_sequences`` unless its own
    options say otherwise (one validation subset for every PT loss of the study)."""

    runner: str = ""
    shares_validation_subset: bool = True

    @property
    def kinds(self):  # type: ignore[override]
        return {self.name: lambda ctx: run_probe(ctx, self.runner)}

    def options(self, study):
        """The options the study file gave this probe (``None``: the probe is not configured)."""
        o = getattr(study.probes, self.name)
        return None if o is None else given(o)

    def payloads(self, ctx, bases):
        """(unit, the probe's result file) for every base whose probe job has finished."""
        for u in bases.by_unit:
            res = ctx.finished(f"{self.name}/{u}")
            if res is not None:
                yield u, load_json(res.get("file")) or {}

    def configured(self, study) -> bool:
        return self.options(study) is not None

    def plan(self, study, plan: PlanBuilder) -> None:
        opts = self.options(study)
        if self.shares_validation_subset and study.pt_eval.max_sequences is not None:
            opts = {"max_sequences": study.pt_eval.max_sequences, **opts}
        for u in plan.unit_names:
            plan.add(
                Job(
                    f"{self.name}/{u}",
                    self.name,
                    self.name,
                    params={"unit": u, "options": opts},
                    deps=[f"pretrain/{u}", "data"],
                )
            )
