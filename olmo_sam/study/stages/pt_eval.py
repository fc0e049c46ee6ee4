"""The pretraining-loss stage: L_PT of every base on the study's validation tokens (the quantity
every forgetting measurement starts from, [SAM-PT] Sec 3)."""

from __future__ import annotations

from typing import Any, Dict

from ..job import Job
from .base import PlanBuilder, Stage, data_of, unit_checkpoint

__all__ = ["PtEvalStage"]


def job_pt_eval(ctx) -> Dict[str, Any]:
    from ...checkpoints import load_transformer
    from ...evals import lm_loss

    data = data_of(ctx)
    opts = ctx.job.params.get("options") or {}
    model, info = load_transformer(unit_checkpoint(ctx, ctx.job.params["unit"]))
    res = lm_loss(
        model,
        data["val"],
        seq_len=info.sequence_length or 128,
        vocab_size=data["vocab_size"],
        max_sequences=opts.get("max_sequences"),
        batch_size=opts.get("batch_size", 8),
    )
    return {"l_pt": res.loss, "ppl": res.ppl, "tokens": res.tokens}


class PtEvalStage(Stage):
    name = "pt_eval"
    kinds = {"pt_eval": job_pt_eval}

    def configured(self, study) -> bool:
        return bool(study.arms)

    def plan(self, study, plan: PlanBuilder) -> None:
        for u in plan.unit_names:
            plan.add(
                Job(
                    f"pt_eval/{u}",
                    "pt_eval",
                    "pt_eval",
                    params={"unit": u, "options": study.pt_eval.options()},
                    deps=[f"pretrain/{u}", "data"],
                )
            )
