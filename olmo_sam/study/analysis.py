"""The study's analysis stage: every measured number of every unit, gathered into tables,
plots and plain-language findings that are computed from those numbers (never from the paper).

Writes ``{out}/analysis/``: ``summary.json`` (everything the report shows), Markdown/CSV/JSON
tables per section and PNG figures: pretraining loss curves, learning-forgetting frontiers
(Fig 2), quantized and noisy PT loss per arm (Fig 8, Fig 6d), sharpness per arm (Fig 12).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Dict, List, Optional

from ..output import save_figure, write_json, write_table
from .context import JobContext

__all__ = ["analyse_study"]


def _result(ctx: JobContext, job_id: str) -> Optional[Dict[str, Any]]:
    job = ctx.plan.by_id().get(job_id)
    if job is None or not job.is_done(ctx.out):
        return None
    return job.result(ctx.out)


def _load(path: Optional[str]) -> Any:
    if not path or not Path(path).exists():
        return None
    return json.loads(Path(path).read_text())


def _fmt(x: Optional[float], nd: int = 4) -> str:
    return "n/a" if x is None or (isinstance(x, float) and not math.isfinite(x)) else f"{x:.{nd}f}"


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


# -- sections -----------------------------------------------------------------------------------


def _pretraining(ctx, units, out: Path) -> Dict[str, Any]:
    rows, curves = [], {}
    for u in units:
        pre = _result(ctx, f"pretrain/{u}")
        ev = _result(ctx, f"pt_eval/{u}")
        if pre is None:
            continue
        curve = _load(pre.get("curve")) or {}
        curves[u] = curve.get("train", [])
        rows.append({
            "unit": u, "optimizer": pre.get("optimizer"), "schedule": pre.get("schedule"),
            "final_train_loss": pre.get("final_train_loss"), "l_pt": ev and ev.get("l_pt"),
            "sam_steps": sum(1 for p in curves[u] if p.get("sam_active")),
            "steps": len(curves[u]),
        })  # fmt: skip
    if not rows:
        return {}
    write_table(out, "pretraining", list(rows[0]), rows)
    figs = {}
    if curves:
        plt = _plt()
        fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.6))
        for u, pts in curves.items():
            steps = [p["step"] for p in pts]
            ax1.plot(steps, [p["train_loss"] for p in pts], label=u, lw=1)
            ax2.plot(steps, [p["lr"] for p in pts], label=u, lw=1)
        ax1.set(xlabel="step", ylabel="train CE loss", title="Pretraining loss")
        ax2.set(xlabel="step", ylabel="learning rate", title="Schedules")
        ax1.legend(fontsize=7)
        figs["loss_curves"] = str(save_figure(fig, out / "pretraining_curves.png", dpi=110))
        plt.close(fig)
    return {"rows": rows, "figures": figs}


def _probe_payloads(ctx, units, stage: str):
    for u in units:
        res = _result(ctx, f"{stage}/{u}")
        if res is not None:
            yield u, _load(res.get("file")) or {}


def _quantize(ctx, units, out: Path) -> Dict[str, Any]:
    rows = []
    for u, payload in _probe_payloads(ctx, units, "quantize"):
        for rec in payload.get("records", []):
            rows.append({"unit": u, "quant": rec.get("quant"), "loss": rec.get("loss"),
                         "degradation": rec.get("degradation"),
                         "quantized_modules": (rec.get("proof") or {}).get("n_quantized")})  # fmt: skip
    if not rows:
        return {}
    write_table(out, "quantize", list(rows[0]), rows)
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 3.4))
    settings = sorted({r["quant"] for r in rows if r["quant"] not in (None, "none")}, key=str)
    width = 0.8 / max(len(settings), 1)
    for i, q in enumerate(settings):
        vals = {r["unit"]: r["degradation"] for r in rows if r["quant"] == q}
        ax.bar([j + i * width for j in range(len(units))], [vals.get(u) or 0 for u in units], width, label=str(q))
    ax.set_xticks([j + 0.4 - width / 2 for j in range(len(units))], units, rotation=20, fontsize=8)
    ax.axhline(0, color="k", lw=0.5)
    ax.set(ylabel="PT loss increase", title="Quantization degradation (cf. Fig 8a)")
    ax.legend(fontsize=7)
    fig_path = save_figure(fig, out / "quantize.png", dpi=110)
    plt.close(fig)
    return {"rows": rows, "figures": {"quantize": str(fig_path)}}


def _noise(ctx, units, out: Path) -> Dict[str, Any]:
    rows = []
    for u, payload in _probe_payloads(ctx, units, "noise"):
        for srow in payload.get("summary", []):
            rows.append({"unit": u, "gamma": srow.get("gamma"), "mean_loss": srow.get("mean"),
                         "std": srow.get("std"), "seeds": srow.get("n_seeds"), "increase": srow.get("increase")})  # fmt: skip
    if not rows:
        return {}
    write_table(out, "noise", list(rows[0]), rows)
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5, 3.4))
    for u in units:
        pts = sorted((r for r in rows if r["unit"] == u), key=lambda r: r["gamma"] or 0)
        if pts:
            ax.errorbar([p["gamma"] for p in pts], [p["mean_loss"] for p in pts],
                        yerr=[p["std"] or 0 for p in pts], label=u, capsize=2, marker="o", ms=3)  # fmt: skip
    ax.set(xlabel="gamma (relative noise, Eq. 7)", ylabel="perturbed PT loss", title="Gaussian weight noise (cf. Fig 6d)")
    ax.legend(fontsize=7)
    fig_path = save_figure(fig, out / "noise.png", dpi=110)
    plt.close(fig)
    return {"rows": rows, "figures": {"noise": str(fig_path)}}


def _hessian(ctx, units, out: Path) -> Dict[str, Any]:
    rows = []
    for u, payload in _probe_payloads(ctx, units, "hessian"):
        for rec in payload.get("records", []):
            tr = rec.get("trace") or {}
            ev = rec.get("top_eigenvalue") or {}
            rows.append({"unit": u, "trace": tr.get("trace"), "trace_stderr": tr.get("stderr"),
                         "probes": tr.get("n_probes"), "lambda_max": ev.get("value"),
                         "edge_of_stability_2_over_lr": rec.get("edge_of_stability"),
                         "batch_loss": rec.get("batch_loss")})  # fmt: skip
    if not rows:
        return {}
    write_table(out, "hessian", list(rows[0]), rows)
    plt = _plt()
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(8, 3.4))
    xs = range(len(rows))
    ax1.bar(xs, [r["trace"] or 0 for r in rows], yerr=[r["trace_stderr"] or 0 for r in rows], capsize=3)
    ax1.set_xticks(xs, [r["unit"] for r in rows], rotation=20, fontsize=8)
    ax1.set(ylabel="tr(H) (Hutchinson)", title="Trace of the Hessian (cf. Fig 12)")
    ax2.bar(xs, [r["lambda_max"] or 0 for r in rows])
    ax2.set_xticks(xs, [r["unit"] for r in rows], rotation=20, fontsize=8)
    ax2.set(ylabel="lambda_max (power iteration)", title="Top eigenvalue")
    fig.tight_layout()
    fig_path = save_figure(fig, out / "hessian.png", dpi=110)
    plt.close(fig)
    return {"rows": rows, "figures": {"hessian": str(fig_path)}}


def _finetune(ctx, units, out: Path) -> Dict[str, Any]:
    from ..analysis.forgetting import AnalysisError, compare, group_curves
    from ..analysis.plots import plot_frontiers
    from ..analysis.records import ResultStore
    from ..analysis.report import compare_report, frontier_report

    records = []
    for job in ctx.plan.jobs:
        if job.kind == "ft_sweep" and job.is_done(ctx.out):
            records += ResultStore(job.result(ctx.out)["results"]).records()
    if not records:
        return {}
    merged = out / "finetune_results.jsonl"
    merged.write_text("".join(r.to_json() + "\n" for r in records))
    curves = group_curves(records)
    frontier = frontier_report(curves)
    frontier.write(out)
    figs = {"frontiers": str(plot_frontiers(curves, out / "frontiers.png"))}
    section: Dict[str, Any] = {"runs": len(records), "frontier_rows": frontier.rows, "figures": figs}
    comparisons = {}
    notes = []
    reference = units[0] if units else None
    for ds, cs in curves.items():
        if len(cs) < 2:
            notes.append(f"{ds}: only one base checkpoint; no matched comparison")
            continue
        ref = next((c.label for c in cs if c.label == reference), None)
        try:
            comparisons[ds] = compare(cs, reference=ref)
        except AnalysisError as e:
            notes.append(f"{ds}: {e}")
    if comparisons:
        rep = compare_report(comparisons, curves)
        rep.write(out)
        section["matched_rows"] = rep.rows
        section["reference"] = reference
        figs["frontiers_matched"] = str(
            plot_frontiers(curves, out / "frontiers_matched.png", matched={d: c.matched for d, c in comparisons.items()})
        )
    section["notes"] = notes
    return section


def _benchmarks(ctx, units, out: Path) -> Dict[str, Any]:
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
                rows.append({"model": model, "base": base, "precision": tag, "task": r.get("task"),
                             "score": r.get("score"), "metric": r.get("metric"),
                             "instances": r.get("num_instances")})  # fmt: skip
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
        ref = avg.get((base, base, "bf16"))
        averages.append({"model": model, "precision": prec, "average": a, "tasks": len(groups[(model, base, prec)]),
                         "drop_from_base": None if ref is None else ref - a})  # fmt: skip
    write_table(out, "benchmark_averages", list(averages[0]), averages)
    return {"rows": rows, "averages": averages}


# -- findings -----------------------------------------------------------------------------------


def _findings(s: Dict[str, Any], units: List[str]) -> List[str]:
    """Plain statements computed from the measured numbers (signs decide the wording)."""
    out: List[str] = []
    ref = units[0] if units else None
    pre = {r["unit"]: r for r in s.get("pretraining", {}).get("rows", [])}
    if ref in pre and pre[ref].get("l_pt") is not None:
        for u in units[1:]:
            if u in pre and pre[u].get("l_pt") is not None:
                d = pre[u]["l_pt"] - pre[ref]["l_pt"]
                out.append(
                    f"Base model: {u} reaches a pretraining validation loss of {_fmt(pre[u]['l_pt'])}, "
                    f"{'lower' if d < 0 else 'higher'} than {ref} ({_fmt(pre[ref]['l_pt'])}) by {abs(d):.4f}."
                )
    ft_ref = s.get("finetune", {}).get("reference")
    tally: Dict[str, List[int]] = {}
    for row in s.get("finetune", {}).get("matched_rows", []):
        pct = row.get("less_forgetting_pct")
        if row.get("curve") != ft_ref and pct is not None:
            tally.setdefault(row["curve"], [0, 0])[0 if pct > 0 else 1] += 1
    for arm, (less, more) in tally.items():
        out.append(
            f"Overall, at matched fine-tuning loss {arm} forgot less than {ft_ref} on {less} of "
            f"{less + more} dataset(s) and more on {more}."
        )
    ref_forgetting = {
        row["dataset"]: row.get("forgetting")
        for row in s.get("finetune", {}).get("matched_rows", [])
        if row.get("curve") == ft_ref
    }
    for row in s.get("finetune", {}).get("matched_rows", []):
        pct = row.get("less_forgetting_pct")
        if row.get("curve") == ft_ref or pct is None:
            continue
        out.append(
            f"Fine-tuning on {row['dataset']}: at matched fine-tuning loss (tau = {_fmt(row.get('tau'))}), "
            f"{row['curve']} {'forgets less' if pct > 0 else 'forgets more'} than {ft_ref}: "
            f"{abs(pct):.1f}% {'less' if pct > 0 else 'more'} pretraining-loss increase "
            f"({_fmt(row.get('forgetting'))} vs {_fmt(ref_forgetting.get(row['dataset']))})."
        )
    q = s.get("quantize", {}).get("rows", [])
    for setting in sorted({r.get("quant") for r in q if r.get("quant") not in (None, "none")}, key=str):
        vals = {r["unit"]: r.get("degradation") for r in q if r.get("quant") == setting and r.get("degradation") is not None}
        if ref in vals:
            for u in units[1:]:
                if u in vals and vals[ref] > 0:
                    frac = 100 * (1 - vals[u] / vals[ref])
                    out.append(
                        f"{setting} quantization: {u} loses {_fmt(vals[u])} PT loss vs {_fmt(vals[ref])} for {ref} "
                        f"({abs(frac):.0f}% {'less' if frac > 0 else 'more'} degradation)."
                    )
    noise = s.get("noise", {}).get("rows", [])
    if noise:
        gmax = max(r["gamma"] for r in noise)
        inc = {r["unit"]: r["increase"] for r in noise if r["gamma"] == gmax and r["increase"] is not None}
        if ref in inc:
            for u in units[1:]:
                if u in inc:
                    out.append(
                        f"Gaussian noise at gamma={gmax:g}: PT loss rises by {_fmt(inc[u])} for {u} vs "
                        f"{_fmt(inc[ref])} for {ref}."
                    )
    hess = {r["unit"]: r for r in s.get("hessian", {}).get("rows", [])}
    if ref in hess and hess[ref].get("trace") is not None:
        for u in units[1:]:
            if u in hess and hess[u].get("trace") is not None:
                t0, t1 = hess[ref]["trace"], hess[u]["trace"]
                out.append(
                    f"Sharpness: tr(H) of {u} is {t1:.4g} (+-{hess[u]['trace_stderr'] or 0:.2g}) vs {t0:.4g} "
                    f"(+-{hess[ref]['trace_stderr'] or 0:.2g}) for {ref} ({'flatter' if t1 < t0 else 'sharper'})."
                )
    return out


def analyse_study(ctx: JobContext) -> Dict[str, Any]:
    units = list(ctx.job.params["units"])
    out = ctx.out / "analysis"
    out.mkdir(parents=True, exist_ok=True)
    summary: Dict[str, Any] = {"study": ctx.study.name, "units": units, "reference_unit": units[0] if units else None}
    for name, fn in (
        ("pretraining", _pretraining),
        ("quantize", _quantize),
        ("noise", _noise),
        ("hessian", _hessian),
        ("finetune", _finetune),
        ("benchmarks", _benchmarks),
    ):
        section = fn(ctx, units, out)
        if section:
            summary[name] = section
    summary["findings"] = _findings(summary, units)
    write_json(out / "summary.json", summary)
    return {"summary": str(out / "summary.json"), "dir": str(out), "sections": [k for k in summary if k not in ("study", "units")]}


