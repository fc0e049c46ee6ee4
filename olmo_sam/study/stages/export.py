"""The export stage: every base checkpoint in Hugging Face format (for context-free generation with
vLLM and for benchmarks), with the study's tokenizer."""

from __future__ import annotations

from typing import Any, Dict

from ..job import Job
from .base import PlanBuilder, Stage, data_of, unit_checkpoint

__all__ = ["ExportStage"]


def job_export(ctx) -> Dict[str, Any]:
    from ...hf import export_hf

    data = data_of(ctx)
    unit = ctx.job.params["unit"]
    report = export_hf(unit_checkpoint(ctx, unit), ctx.dir / "hf", tokenizer=data.get("tokenizer_dir"), overwrite=True)
    return {"hf_dir": str(ctx.dir / "hf"), "export": report}


class ExportStage(Stage):
    name = "export"
    measures = False
    kinds = {"export": job_export}

    def configured(self, study) -> bool:
        return bool(study.arms)

    def plan(self, study, plan: PlanBuilder) -> None:
        for u in plan.unit_names:
            plan.add(Job(f"export/{u}", "export", "export", params={"unit": u}, deps=[f"pretrain/{u}", "data"]))
