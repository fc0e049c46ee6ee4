"""The context-free data stage ([CFS] Sec 2-3): per base, dataset and mix method (``cfs``:
samples the base generates from its BOS token alone; ``cs``: contextual samples), the samples and
their mix with the task set, which the fine-tuning stage trains on."""

from __future__ import annotations

from typing import Any, Dict

from ...config import ConfigError
from ...finetune.sweep import MIX_METHODS
from ..job import Job
from .base import PlanBuilder, Stage, unit_checkpoint

__all__ = ["CfsStage"]


def job_cfs(ctx) -> Dict[str, Any]:
    """Context-free samples of one base model and their mix with one task ([CFS] Sec 2-3)."""
    from ... import paper
    from ...cfs.method import prepare_method
    from ...checkpoints import checkpoint_info

    p = ctx.job.params
    opts = dict(p.get("options") or {})
    method = p["method"]
    ratio = float(opts.pop("ratio", paper.CFS_DEFAULT_RATIO))
    hf_dir = ctx.dep(f"export/{p['unit']}")["hf_dir"]
    ft_dir = ctx.dep(f"finetune/data:{p['dataset']}")["dir"]
    seq_len = int(checkpoint_info(unit_checkpoint(ctx, p["unit"])).sequence_length or paper.CFS_FT_SEQ_LEN)
    ft_common = (ctx.study.finetune.common if ctx.study.finetune else {}) or {}
    mix = prepare_method(
        method,
        hf_dir,
        ft_dir,
        ctx.dir,
        ratio=ratio,
        seq_len=seq_len,
        max_tokens=int(opts.pop("max_tokens", seq_len - 1)),  # the BOS prompt takes one position
        global_batch_size=int(ft_common.get("batch_size", paper.FT_BATCH_SIZE)),
        epochs=1,
        **opts,
    )
    return {"mix_dir": str(mix), "method": method, "ratio": ratio}


class CfsStage(Stage):
    name = "cfs"
    measures = False
    kinds = {"cfs": job_cfs}

    def configured(self, study) -> bool:
        return study.cfs is not None or (
            study.finetune is not None and any(m in MIX_METHODS for m in study.finetune.methods)
        )

    def plan(self, study, plan: PlanBuilder) -> None:
        ft = study.finetune
        if ft is None:
            raise ConfigError("cfs: context-free data is used by fine-tuning; add a 'finetune' section")
        mix_methods = [m for m in ft.methods if m in MIX_METHODS]
        if not mix_methods:
            raise ConfigError(
                "cfs: the section configures the mixes of the fine-tuning methods 'cfs'/'cs'; "
                "add one of them to finetune.methods"
            )
        for u in plan.unit_names:
            for ds in ft.datasets:
                for m in mix_methods:
                    plan.add(
                        Job(
                            f"cfs/{u}:{ds}:{m}",
                            "cfs",
                            "cfs",
                            params={"unit": u, "dataset": ds, "method": m, "options": study.cfs or {}},
                            deps=[f"export/{u}", f"finetune/data:{ds}"],
                        )
                    )
