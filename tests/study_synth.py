"""A synthetic finished study (no training): every job's ``done.json`` and result file written from
closed-form numbers, for the analysis stage and the report.

Two arms (adamw = reference, sam) x two budgets (10 and 100 tokens/param) x three seeds. Each seed
shifts every quantity of both arms alike (a large seed effect that pairing removes); by
construction:

* pretraining loss: sam is 0.04 nats higher at every seed (a real difference);
* forgetting at matched fine-tuning loss: sam's forgetting sensitivity is 0.8x adamw's (a real
  difference, about 20% less forgetting);
* noise increase: sam's is 0.7x adamw's (a real difference);
* quantization degradation and tr(H): the same for both arms up to per-seed offsets that sum to
  zero (no difference);
* lambda_max: power iteration "did not converge" for sam seed 2 at 100 tokens/param.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any, Dict, List

from olmo_sam.finetune.records import FTRecord, ResultStore
from olmo_sam.output import write_json
from olmo_sam.study.bases import BaseRecord
from olmo_sam.study.context import JobContext
from olmo_sam.study.job import Job
from olmo_sam.study.plan import Plan
from olmo_sam.study.spec import parse_study

ARMS = ("adamw", "sam")
SEEDS = (0, 1, 2)
BUDGETS = (10, 100)  # tokens per total parameter
PARAMS_TOTAL, PARAMS_NON_EMBEDDING = 40_000, 15_000
SEED_EFFECT = {0: 0.0, 1: 1.0, 2: -0.7}
#: per-seed offsets of the no-difference quantities for sam (they sum to zero)
ZERO_SUM = {0: 1.0, 1: -0.6, 2: -0.4}
LRS = (1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2)
DATASETS = ("code",)


def unit(arm: str, budget: int, seed: int) -> str:
    return f"{arm}@{budget}tpp-s{seed}"


def l_pt(arm: str, budget: int, seed: int) -> float:
    return 3.0 - 0.2 * math.log10(budget) + 0.1 * SEED_EFFECT[seed] + (0.04 if arm == "sam" else 0.0)


def _ft_records(arm: str, budget: int, seed: int, ds: str) -> List[FTRecord]:
    u = unit(arm, budget, seed)
    base = l_pt(arm, budget, seed)
    sens = (1.0 if arm == "adamw" else 0.8) * (1 + 0.3 * SEED_EFFECT[seed]) * (1 + 0.5 * math.log10(budget))
    out = []
    for lr in LRS:
        x = math.log10(lr) + 4  # 0 .. 2.5
        out.append(
            FTRecord(
                run_id=f"{u}-{ds}-{lr:g}",
                base=f"/ckpt/{u}",
                base_label=u,
                dataset=ds,
                method="ft",
                lr=lr,
                l_ft=2.0 + 1.5 * math.exp(-x) + 0.01 * SEED_EFFECT[seed],
                l_pt=base + 0.1 * sens * math.exp(x),
                base_l_pt=base,
            )
        )
    return out


def build(
    out: Path,
    *,
    with_budget_fields: bool = True,
    interval: Dict[str, Any] | None = None,
    hypotheses: List[Dict[str, Any]] | None = None,
    diverged: bool = False,
):
    """Write the study under ``out``; return the analysis job's context. ``hypotheses``: the study
    file's ``hypotheses:`` (the file then also names its seeds, budgets, probes and fine-tuning).
    ``diverged``: the first base's first sweep also holds a run that diverged (NaN losses)."""
    sections: Dict[str, Any] = {}
    if hypotheses is not None:
        sections = {
            "hypotheses": hypotheses,
            "pretrain": {"seeds": list(SEEDS), "budgets_tpp": list(BUDGETS)},
            "probes": {"quantize": {"quant": ["nf4"]}, "noise": {"gammas": [0.01, 0.02]}, "hessian": {}},
            "finetune": {"datasets": list(DATASETS), "lrs": list(LRS)},
        }
    study = parse_study(
        {
            "name": "synth",
            "out_dir": str(out),
            "seed": 0,
            "data": {"demo": {}},
            "arms": [{"name": a, "optimizer": a} for a in ARMS],
            **({"analysis": interval} if interval else {}),
            **sections,
        }
    )
    jobs: List[Job] = []
    units = []

    def done(job: Job, result: Dict[str, Any]) -> None:
        jobs.append(job)
        job.mark_done(out, result, 0.0)

    for arm in ARMS:
        for b in BUDGETS:
            for s in SEEDS:
                u = unit(arm, b, s)
                units.append(u)
                tokens = b * PARAMS_TOTAL
                curve = out / "curves" / f"{u}.json"
                write_json(
                    curve,
                    {
                        "train": [
                            {"step": i, "train_loss": 6 - i * 0.1, "lr": 1e-3, "sam_active": arm == "sam"}
                            for i in range(10)
                        ]
                    },
                )
                rec: Dict[str, Any] = {
                    "checkpoint": str(out / "none" / u),
                    "curve": str(curve),
                    "optimizer": arm,
                    "schedule": "cosine",
                    "final_train_loss": 5.1,
                }
                run = {
                    "tokens": tokens,
                    "params_total": PARAMS_TOTAL,
                    "params_non_embedding": PARAMS_NON_EMBEDDING,
                    "tpp_total": tokens / PARAMS_TOTAL,
                    "tpp_non_embedding": tokens / PARAMS_NON_EMBEDDING,
                }
                # without budget fields: a base whose size and budget are unknown (no tokens, no counts)
                params = {"arm": arm, "seed": s, "budget_tpp": None}
                rec.update(BaseRecord.measure(params, run if with_budget_fields else {}, {}).to_dict())
                done(Job(f"pretrain/{u}", "pretrain", "pretrain", params={"arm": arm, "unit": u, "seed": 0}), rec)
                done(Job(f"pt_eval/{u}", "pt_eval", "pt_eval", params={"unit": u}), {"l_pt": l_pt(arm, b, s)})
                # quantization: no difference between arms
                deg = 0.002 + 0.001 * SEED_EFFECT[s] + (0.0001 * ZERO_SUM[s] if arm == "sam" else 0.0)
                qfile = out / "probes" / f"{u}-quant.json"
                write_json(
                    qfile,
                    {
                        "records": [
                            {"quant": "none", "loss": l_pt(arm, b, s), "degradation": 0.0},
                            {
                                "quant": "nf4",
                                "loss": l_pt(arm, b, s) + deg,
                                "degradation": deg,
                                "proof": {"n_quantized": 7},
                            },
                        ]
                    },
                )
                done(Job(f"quantize/{u}", "quantize", "quantize", params={"unit": u}), {"file": str(qfile)})
                # noise: sam 0.7x
                summ = []
                for g in (0.0, 0.01, 0.02):
                    inc = (0.7 if arm == "sam" else 1.0) * (1 + 0.2 * SEED_EFFECT[s]) * 5 * g
                    summ.append(
                        {
                            "label": u,
                            "gamma": g,
                            "mean": l_pt(arm, b, s) + inc,
                            "std": 0.001,
                            "n_seeds": 2,
                            "increase": inc,
                        }
                    )
                nfile = out / "probes" / f"{u}-noise.json"
                write_json(nfile, {"summary": summ})
                done(Job(f"noise/{u}", "noise", "noise", params={"unit": u}), {"file": str(nfile)})
                # Hessian: trace with no difference; lambda_max unconverged for one checkpoint
                trace = 300 + 50 * SEED_EFFECT[s] + (3.0 * ZERO_SUM[s] if arm == "sam" else 0.0)
                conv = not (arm == "sam" and b == 100 and s == 2)
                hfile = out / "probes" / f"{u}-hess.json"
                write_json(
                    hfile,
                    {
                        "records": [
                            {
                                "trace": {"trace": trace, "stderr": 5.0, "n_probes": 10},
                                "top_eigenvalue": {
                                    "value": 20 + 2 * SEED_EFFECT[s],
                                    "converged": conv,
                                    "iterations": 10,
                                    "residual": 0.01 if conv else 0.3,
                                },
                                "batch_loss": 3.0,
                            }
                        ]
                    },
                )
                done(Job(f"hessian/{u}", "hessian", "hessian", params={"unit": u}), {"file": str(hfile)})
                for ds in DATASETS:
                    res = out / "finetune" / f"{u}_{ds}" / "results.jsonl"
                    ResultStore(res).extend(_ft_records(arm, b, s, ds))
                    if diverged and len(units) == 1 and ds == DATASETS[0]:
                        bad = dataclasses.replace(_ft_records(arm, b, s, ds)[-1], run_id=f"{u}-{ds}-10", lr=10.0)
                        bad.l_ft = bad.l_pt = math.nan
                        bad.extra = {"diverged": "nan loss encountered at step 2"}
                        ResultStore(res).append(bad)
                    done(
                        Job(f"finetune/{u}:{ds}", "finetune", "ft_sweep", params={"unit": u, "dataset": ds}),
                        {"results": str(res), "runs": len(LRS)},
                    )
    job = Job("analysis", "analysis", "analysis", params={"units": units})
    jobs.append(job)
    plan = Plan(study, jobs)
    return JobContext(job, plan, {})
