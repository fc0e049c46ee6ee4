"""The benchmark stage: offline lm-eval tasks and/or OLMES on every base (bf16 and quantized), and
optionally on the fine-tuned model of each base and dataset that learned most."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List

from ...config import ConfigError
from ...output import write_table
from ..job import Job
from .base import PlanBuilder, ReportSection, Stage, data_of

__all__ = ["BenchmarksStage"]


def _benchmark(ctx, hf_dir: str, label: str) -> Dict[str, Any]:
    from dataclasses import asdict

    from ...evals.offline import run_offline_suite

    p = ctx.job.params
    out: Dict[str, Any] = {"unit": label}
    if p.get("offline") is not None:
        opts = dict(p["offline"])
        quants = opts.pop("quant", [None])
        for q in quants if isinstance(quants, list) else [quants]:
            tag = "bf16" if q in (None, "none") else q
            recs = run_offline_suite(hf_dir, out_dir=ctx.dir / tag, model_label=f"{label}:{tag}", quant=q, **opts)
            out[tag] = [asdict(r) for r in recs]
    if p.get("olmes") is not None:
        from ...evals.olmes import run_olmes_suite

        out.update(run_olmes_suite(hf_dir, out_dir=ctx.dir / "olmes", label=label, **p["olmes"]))
    return out


def job_benchmarks(ctx) -> Dict[str, Any]:
    """The benchmark suite on a base model (offline lm-eval and/or OLMES; bf16 and 4-bit)."""
    unit = ctx.job.params["unit"]
    return _benchmark(ctx, ctx.dep(f"export/{unit}")["hf_dir"], unit)


def job_benchmarks_ft(ctx) -> Dict[str, Any]:
    """The benchmark suite on the fine-tuned model of one base and dataset that learned most
    (lowest L_FT), exported to Hugging Face format first."""
    from ...finetune.records import ResultStore
    from ...hf import export_hf

    p = ctx.job.params
    unit, ds = p["unit"], p["dataset"]
    recs = [r for r in ResultStore(ctx.dep(f"finetune/{unit}:{ds}")["results"]).records() if r.extra.get("checkpoint")]
    if not recs:
        raise ConfigError(f"{ctx.job.id}: the sweep kept no fine-tuned checkpoint to benchmark")
    best = min(recs, key=lambda r: r.l_ft)
    hf_dir = ctx.dir / "hf"
    export_hf(best.extra["checkpoint"], hf_dir, tokenizer=data_of(ctx).get("tokenizer_dir"), overwrite=True)
    out = _benchmark(ctx, str(hf_dir), f"{unit}:{ds}")
    out.update(base=unit, dataset=ds, run_id=best.run_id, lr=best.lr, method=best.method, l_ft=best.l_ft)
    return out


def _benchmarks(ctx, bases, out: Path) -> Dict[str, Any]:
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


class BenchmarksStage(Stage):
    name = "benchmarks"
    kinds = {"benchmarks": job_benchmarks, "benchmarks_ft": job_benchmarks_ft}
    report = ReportSection(
        "benchmarks",
        "Benchmarks",
        {"averages": "one row per model and precision", "rows": "one row per model, precision and task"},
        rank=6,
    )

    def configured(self, study) -> bool:
        return study.benchmarks.offline is not None or study.benchmarks.olmes is not None

    def plan(self, study, plan: PlanBuilder) -> None:
        b = study.benchmarks
        suites = b.options()
        for u in plan.unit_names:
            plan.add(
                Job(
                    f"benchmarks/{u}",
                    "benchmarks",
                    "benchmarks",
                    params={"unit": u, **suites},
                    deps=[f"export/{u}"],
                )
            )
            if b.finetuned:
                if study.finetune is None:
                    raise ConfigError("benchmarks.finetuned: there is no 'finetune' section to take models from")
                for ds in study.finetune.datasets:
                    plan.add(
                        Job(
                            f"benchmarks/{u}:{ds}",
                            "benchmarks",
                            "benchmarks_ft",
                            params={"unit": u, "dataset": ds, **suites},
                            deps=[f"finetune/{u}:{ds}", "data"],
                        )
                    )

    def analyse(self, ctx, bases, out: Path) -> Dict[str, Any]:
        return _benchmarks(ctx, bases, out)
