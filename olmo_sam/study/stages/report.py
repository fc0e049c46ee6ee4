r"""The report stage (and ``olmo-sam report OUTDIR``): a self-contained HTML (figures inlined) and a
Markdown report of a study, both rendered from its analysis summary (``analysis/summary.json``),
manifest and configs, by :func:`render_report` with the stages' :class:`~.base.ReportSection`\ s.

The report opens with the study's pre-registered hypotheses and their outcomes
(:mod:`olmo_sam.study.hypotheses`), then states how the intervals were computed, the pretraining
budgets in tokens per total and per non-embedding parameter and the seeds; every finding is a
record of ``summary.json`` (arms, quantity, estimate, ``ci_low``/``ci_high``, ``n_seeds``,
``significant``, budget) and its sentence. Every table has a caption that defines its columns.
``report.md`` links the figures relative to itself.
"""

from __future__ import annotations

import base64
import html
import json
import os
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

from ...config import ConfigError
from ...files import read_json
from ...output import atomic_write_text, markdown_table
from ..job import Job
from .base import PlanBuilder, ReportSection, Stage, report_sections

__all__ = ["ReportStage", "render_report", "regime_lines", "COLUMNS"]

#: (table, what one row is) of the report's own tables (the stages' are in their ReportSection)
_OWN_TABLES = {
    ("findings", "rows"): "one row per finding: an arm against the reference arm at one budget",
    ("hypotheses", "rows"): "one row per pre-registered (primary) hypothesis, in the study file's order",
}

#: column -> definition (every column a report table can show)
COLUMNS = {
    "unit": "the study unit (one pretrained base checkpoint)",
    "arm": "optimizer/schedule arm from the study file",
    "seed": "pretraining seed (initialization and data order)",
    "budget_tpp": "pretraining tokens per total parameter",
    "tpp_non_embedding": "pretraining tokens per non-embedding parameter",
    "tokens": "pretraining tokens",
    "params_total": "parameters, total",
    "params_non_embedding": "parameters without the embedding matrix",
    "optimizer": "pretraining optimizer",
    "schedule": "learning-rate schedule",
    "final_train_loss": "training CE loss at the last step",
    "l_pt": "pretraining validation loss (nats; in matched rows: of the fine-tuned weights at the matched point)",
    "sam_steps": "steps with the SAM ascent active",
    "steps": "logged training steps",
    "dataset": "fine-tuning dataset",
    "tau": "matched fine-tuning loss threshold tau = max_i L_min(i) over the dataset's bases ([SAM-PT] Eq. 10)",
    "curve": "base checkpoint (and method) of a tradeoff set",
    "method": "fine-tuning method",
    "base_l_pt": "the base model's own pretraining validation loss L_PT(theta_PT)",
    "l_min": "smallest fine-tuning validation loss of the base's runs, L_min ([SAM-PT] Eq. 9)",
    "l_ft": "fine-tuning validation loss L_FT of the reported run",
    "forgetting": "PT-loss increase L_PT(theta_FT) - L_PT(theta_PT) (nats)",
    "less_forgetting_pct": "100 x (1 - forgetting / forgetting of the reference arm's base of the same seed and budget)",
    "lr": "fine-tuning learning rate(s) of the reported point",
    "quant": "quantization setting",
    "loss": "pretraining validation loss of the quantized model",
    "degradation": "PT-loss increase from quantization over full precision (nats)",
    "quantized_modules": "linear layers replaced by quantized ones",
    "gamma": "relative noise magnitude ([SAM-PT] Eq. 7)",
    "mean_loss": "mean PT loss over noise draws",
    "std": "standard deviation of the PT loss over noise draws",
    "noise_draws": "noise draws per magnitude",
    "increase": "mean PT-loss increase over the clean model (nats)",
    "trace": "Hessian trace tr(H), Hutchinson estimate",
    "trace_stderr": "standard error of the Hutchinson estimate",
    "probes": "Hutchinson probes",
    "lambda_max": "top Hessian eigenvalue (power iteration)",
    "lambda_max_converged": "whether power iteration met its tolerance (otherwise lambda_max is a lower estimate)",
    "power_iters": "power-iteration steps taken",
    "power_residual": "||H v - lambda v|| / |lambda| at the last iterate",
    "edge_of_stability_2_over_lr": "2 / peak LR, the edge of stability of gradient descent; under AdamW the edge concerns "
    "the preconditioned Hessian, not the raw H of lambda_max",
    "batch_loss": "loss on the probe batch",
    "directional_sharpness": "Delta^T H Delta / ||Delta||^2 at the base, Delta = theta_FT - theta_PT ([SAM-PT] Sec 4, Eq. 1)",
    "delta_norm": "||Delta||, the length of the fine-tuning update",
    "forgetting_predicted": "second-order prediction of the forgetting, 1/2 Delta^T H Delta on the probe batch "
    "([SAM-PT] Eqs. 3-4)",
    "model": "evaluated model",
    "precision": "bf16 or quantized",
    "average": "mean benchmark score",
    "drop_from_base": "base model's bf16 average minus this average",
    "task": "benchmark task",
    "score": "task score",
    "metric": "task metric",
    "instances": "evaluated instances",
    "base": "base checkpoint",
    "quantity": "compared quantity (lower is better for each)",
    "where": "dataset or setting",
    "reference": "reference arm",
    "estimate": "mean(arm) - mean(reference) over seeds (paired by seed when they share seeds)",
    "ci_low": "lower end of the interval of the estimate",
    "ci_high": "upper end of the interval of the estimate",
    "n_seeds": "seeds in the comparison (pairs when paired)",
    "paired": "whether the interval is over per-seed differences",
    "significant": "whether the interval excludes zero (never when the seeds gave identical differences)",
    "p_value": "two-sided p-value (paired t-test; Welch's test unpaired)",
    "q_value": "Benjamini-Hochberg adjusted p-value across all secondary findings",
    "mde": "minimum detectable effect at 80% power from the observed SD and n (noncentral t)",
    "resolved": "interval excludes zero and q < 0.05: only then a comparative word",
    "percent": "estimate in % of the reference's mean (only when that mean is >= 3 standard errors from 0)",
    "name": "the hypothesis's name in the study file",
    "test": "paired_t: arm minus reference at one budget; interaction: that difference at the longest budget minus at the shortest",
    "budgets_tpp": "compared budget(s), tokens per parameter",
    "direction": "the registered sign of the estimate (less: below zero; greater: above)",
    "p_holm": "p-value Holm-adjusted across the study's primary hypotheses",
    "outcome": "resolved (Holm-adjusted p below 1 - confidence, expected sign), opposite (same, other sign), "
    "not resolved, or not measured",
}


_HYPOTHESIS_COLUMNS = [
    "name",
    "quantity",
    "where",
    "arm",
    "reference",
    "test",
    "budgets_tpp",
    "direction",
    "estimate",
    "ci_low",
    "ci_high",
    "p_value",
    "p_holm",
    "mde",
    "n_seeds",
    "outcome",
]


_FINDING_COLUMNS = [
    "quantity",
    "where",
    "arm",
    "reference",
    "budget_tpp",
    "tpp_non_embedding",
    "estimate",
    "ci_low",
    "ci_high",
    "n_seeds",
    "paired",
    "significant",
    "p_value",
    "q_value",
    "mde",
    "resolved",
    "percent",
]


def _cols(rows: Sequence[Dict[str, Any]]) -> List[str]:
    cols: List[str] = []
    for r in rows:
        for k in r:
            if k not in cols and k != "run_ids":
                cols.append(k)
    return cols


def _html_table(rows: Sequence[Dict[str, Any]]) -> str:
    cols = _cols(rows)

    def cell(v):
        if isinstance(v, float):
            return f"{v:.4g}"
        return html.escape("" if v is None else str(v))

    head = "".join(f"<th>{html.escape(c)}</th>" for c in cols)
    body = "".join("<tr>" + "".join(f"<td>{cell(r.get(c))}</td>" for c in cols) + "</tr>" for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _caption(what: str, cols: Sequence[str]) -> str:
    defs = "; ".join(f"{c}: {COLUMNS[c]}" for c in cols if c in COLUMNS)
    return f"{what[:1].upper()}{what[1:]}. Columns: {defs}." if what else f"Columns: {defs}."


def _finding_rows(findings: Sequence[Dict[str, Any]]) -> List[Dict[str, Any]]:
    rows = []
    for f in findings:
        row = {c: f.get(c) for c in _FINDING_COLUMNS}
        row["where"] = f.get("dataset") or f.get("setting") or ""
        n = f.get("n_seeds") or 0  # (below two seeds there is no interval to pair)
        row["paired"] = "yes" if f.get("paired") else "no" if n > 1 else f"n/a ({n} seed{'s' if n != 1 else ''})"
        row["significant"] = "yes" if f.get("significant") else "no"
        row["resolved"] = "yes" if f.get("resolved") else "no"
        rows.append(row)
    return rows


def _hypothesis_lines(hyps: Sequence[Dict[str, Any]]) -> List[str]:
    m = len(hyps)
    conf = hyps[0].get("confidence", 0.95)
    resolved = sum(bool(h.get("resolved")) for h in hyps)
    return [
        f"{m} primary hypothes{'is' if m == 1 else 'es'}, fixed in the study file before anything ran (recorded in "
        f"study.json; an edit on this output directory is refused): {resolved} of {m} resolved as registered. "
        f"Each is a paired t-test over pretraining seeds; the family is Holm-adjusted (family-wise error "
        f"{1 - conf:.2g}), and it is not part of the Benjamini-Hochberg family of the secondary findings below.",
    ] + [h["text"] + _sensitivity_text(h) for h in hyps]


def _sensitivity_text(h: Dict[str, Any]) -> str:
    """`` Sensitivity to tau: ...`` for a fine-tuning hypothesis (the same paired test at the other
    thresholds of olmo_sam.study.stages.finetune.sensitivity_taus), else ``""``."""
    rows = [r for r in h.get("tau_sensitivity") or [] if r.get("tau_name") != "study"]
    if not rows:
        return ""
    parts = []
    for r in rows:
        if r.get("estimate") is None:  # say why: a reader sees a threshold with no number
            est = (
                "not measurable: an arm has no seed matched inside the fine-tuning grid at this tau "
                "(not reached, or matched at the grid's lowest learning rate)"
            )
        elif r.get("ci_low") is None:
            est = f"{r['estimate']:+.4g}, no interval (fewer than two seeds measurable there)"
        else:
            est = f"{r['estimate']:+.4g} [{r['ci_low']:+.4g}, {r['ci_high']:+.4g}]"
        parts.append(f"{r['tau_name']} tau {r['tau']:.4g}: {est} ({r['n_seeds']} seeds)")
    return " Sensitivity to tau (the same test at other thresholds): " + "; ".join(parts) + "."


def _img(path: str) -> str:
    data = base64.b64encode(Path(path).read_bytes()).decode()
    return f'<img alt="{html.escape(Path(path).stem)}" src="data:image/png;base64,{data}"/>'


def regime_lines(s: Dict[str, Any]) -> List[str]:
    """The quick-version warning and the regime of the bases (parameters, seeds, pretraining data
    source and epochs over it), from the summary's ``quick`` and ``bases``; the budgets follow in
    the report's introduction."""
    out: List[str] = []
    if s.get("quick"):
        out.append(
            "QUICK VERSION: a smoke test sized to finish in minutes. Its numbers are not evidence "
            "for or against any claim; run the full study for results."
        )
    bases = [b for b in (s.get("bases") or {}).values() if b.get("params_total")]
    if bases:
        params = sorted({(b["params_total"], b["params_non_embedding"]) for b in bases})
        seeds = sorted({b.get("seed") for b in bases if b.get("seed") is not None})
        epochs = [b["data_epochs"] for b in bases if b.get("data_epochs")]
        out.append(
            "Regime: "
            + "; ".join(f"{t:,} parameters ({n:,} non-embedding)" for t, n in params)
            + (f"; pretraining seeds {seeds}" if seeds else "")
            + (f"; data: {bases[0].get('data_source')}" if bases[0].get("data_source") else "")
            + (f", {min(epochs):.2g}-{max(epochs):.2g} epochs" if epochs else "")
            + "."
        )
    return out


def render_report(
    out_dir: str | Path, analysis: Optional[Dict[str, Any]], sections: Sequence[ReportSection]
) -> Dict[str, Any]:
    """Write ``report/report.html`` and ``report/report.md`` of the study at ``out_dir`` (``sections``:
    the stages' report sections, in report order)."""
    out = Path(out_dir)
    summary_path = Path(analysis["summary"]) if analysis else out / "analysis" / "summary.json"
    if not summary_path.exists():
        raise FileNotFoundError(f"{summary_path} not found: run the study's analysis stage first")
    s = read_json(summary_path, what="analysis summary")
    if not isinstance(s, dict) or "arms" not in s:
        raise ConfigError(
            f"{summary_path} holds no analysis summary (no 'arms'); run the analysis again: "
            "olmo-sam study run STUDY_FILE --stages analysis --rerun"
        )
    manifest = read_json(out / "manifest.json", what="study manifest") if (out / "manifest.json").exists() else {}
    study = read_json(out / "study.json", what="study record") if (out / "study.json").exists() else {}
    rdir = out / "report"
    rdir.mkdir(parents=True, exist_ok=True)

    title = f"olmo-sam study report: {s.get('study', out.name)}"
    md: List[str] = [f"# {title}", ""]
    h: List[str] = [
        "<!doctype html><html><head><meta charset='utf-8'>",
        f"<title>{html.escape(title)}</title>",
        "<style>body{font-family:sans-serif;max-width:1100px;margin:2em auto;padding:0 1em}"
        "table{border-collapse:collapse;font-size:13px;margin:.5em 0}td,th{border:1px solid #ccc;padding:2px 6px}"
        "th{background:#f3f3f3}img{max-width:100%}pre{background:#f7f7f7;padding:.5em;overflow:auto;font-size:12px}</style>",
        f"</head><body><h1>{html.escape(title)}</h1>",
    ]
    hyps = [x for x in s.get("hypotheses") or [] if isinstance(x, dict)]
    if s.get("quick"):
        line = regime_lines(s)[0]
        md += [line, ""]
        h.append(f"<p>{html.escape(line)}</p>")
    if hyps:
        lines = _hypothesis_lines(hyps)
        md += ["## Pre-registered hypotheses (primary)", "", lines[0], ""] + [f"- {x}" for x in lines[1:]] + [""]
        h.append(
            "<h2>Pre-registered hypotheses (primary)</h2>"
            + f"<p>{html.escape(lines[0])}</p><ul>"
            + "".join(f"<li>{html.escape(x)}</li>" for x in lines[1:])
            + "</ul>"
        )
        rows = [
            {**{c: x.get(c) for c in _HYPOTHESIS_COLUMNS}, "where": x.get("dataset") or x.get("setting") or ""}
            for x in hyps
        ]
        cap = _caption(_OWN_TABLES[("hypotheses", "rows")], _HYPOTHESIS_COLUMNS)
        md += [markdown_table(_HYPOTHESIS_COLUMNS, rows), "", f"*{cap}*", ""]
        h.append(f"<p><i>{html.escape(cap)}</i></p>" + _html_table(rows))
    arms = s.get("arms") or s.get("units", [])
    ref = s.get("reference_arm") or s.get("reference_unit")
    refs = (s.get("finetune") or {}).get("references") or {}
    own = [f"{a} vs {r}" for a, r in refs.items() if r != ref]
    intro = regime_lines(s)[1 if s.get("quick") else 0 :] + [
        f"Arms: {', '.join(arms)}. Reference arm for comparisons: {ref}"
        + (f" (except: {', '.join(own)})" if own else "")
        + "."
    ]
    budgets = [b for b in s.get("budgets", []) if b.get("budget_tpp") is not None]
    if budgets:
        intro.append(
            "Pretraining budgets: "
            + "; ".join(
                f"{b['budget_tpp']:.3g} tokens per parameter ({b['tpp_non_embedding']:.3g} per non-embedding "
                f"parameter, {b['tokens']:,} tokens)"
                if b.get("tpp_non_embedding") and b.get("tokens")
                else f"{b['budget_tpp']:.3g} tokens per parameter"
                for b in budgets
            )
            + "."
        )
    if s.get("seeds_per_arm_and_budget") is not None:
        intro.append(f"Pretraining seeds per arm and budget: {s['seeds_per_arm_and_budget']}.")
    if s.get("interval"):
        intro.append(
            f"Intervals: {s['interval']['description']}. A finding says 'less', 'more', 'flatter' "
            "or 'lower' only when its interval excludes zero and its Benjamini-Hochberg q-value is "
            "below 0.05."
        )
    mult = s.get("multiplicity")
    if mult:
        intro.append(
            f"Secondary comparisons made: {mult['comparisons']} ({mult['tested']} with a test); "
            f"{mult['resolved']} resolved after the Benjamini-Hochberg correction over the {mult['tested']} "
            "with a test."
        )
    for line in intro:
        md += [line, ""]
        h.append(f"<p>{html.escape(line)}</p>")

    records = [f for f in s.get("findings") or [] if isinstance(f, dict)]
    findings = [f["text"] if isinstance(f, dict) else str(f) for f in s.get("findings") or []]
    findings = findings or ["No comparative numbers were produced."]
    md += ["## Findings (computed from this study's measurements)", ""] + [f"- {f}" for f in findings] + [""]
    h.append(
        "<h2>Findings (computed from this study's measurements)</h2><ul>"
        + "".join(f"<li>{html.escape(f)}</li>" for f in findings)
        + "</ul>"
    )
    if records:
        rows = _finding_rows(records)
        cap = _caption(_OWN_TABLES[("findings", "rows")], _FINDING_COLUMNS)
        md += [markdown_table(_FINDING_COLUMNS, rows), "", f"*{cap}*", ""]
        h.append(f"<p><i>{html.escape(cap)}</i></p>" + _html_table(rows))

    present = []
    for section in sections:
        key, name = section.key, section.title
        sec = s.get(key)
        if not sec:
            continue
        present.append(key)
        md += [f"## {name}", ""]
        h.append(f"<h2>{html.escape(name)}</h2>")
        for note in sec.get("notes", []):
            md.append(f"> {note}")
            h.append(f"<p><i>{html.escape(note)}</i></p>")
        for tkey, what in section.tables.items():
            rows = sec.get(tkey)
            if rows:
                cols = _cols(rows)
                cap = _caption(what, cols)
                md += [markdown_table(cols, rows), "", f"*{cap}*", ""]
                h.append(f"<p><i>{html.escape(cap)}</i></p>" + _html_table(rows))
        for fig in (sec.get("figures") or {}).values():
            if fig and Path(fig).exists():
                rel = Path(os.path.relpath(Path(fig).resolve(), rdir.resolve())).as_posix()
                md += [f"![{Path(fig).stem}]({rel})", ""]
                h.append(_img(fig))
    cfg_text = json.dumps(study, indent=2)
    env = manifest.get("environment", {})
    md += [
        "## Configuration",
        "",
        "```json",
        cfg_text,
        "```",
        "",
        "## Environment",
        "",
        "```json",
        json.dumps(env, indent=2),
        "```",
        "",
    ]
    h.append(f"<h2>Configuration</h2><pre>{html.escape(cfg_text)}</pre>")
    h.append(f"<h2>Environment</h2><pre>{html.escape(json.dumps(env, indent=2))}</pre>")
    timings = {k: v.get("seconds") for k, v in manifest.get("jobs", {}).items()}
    if timings:
        rows = [{"job": k, "seconds": v} for k, v in timings.items()]
        md += ["## Job timings", "", markdown_table(["job", "seconds"], rows), ""]
        h.append("<h2>Job timings</h2>" + _html_table(rows))
    h.append("</body></html>")
    html_path = atomic_write_text(rdir / "report.html", "\n".join(h))
    md_path = atomic_write_text(rdir / "report.md", "\n".join(md))
    return {"html": str(html_path), "markdown": str(md_path), "sections": present, "findings": findings}


def job_report(ctx) -> Dict[str, Any]:
    return render_report(ctx.out, ctx.dep("analysis"), report_sections(ctx.stages))


class ReportStage(Stage):
    name = "report"
    kinds = {"report": job_report}

    def configured(self, study) -> bool:
        return True

    def plan(self, study, plan: PlanBuilder) -> None:
        plan.add(Job("report", "report", "report", params={"units": plan.unit_names}, deps=["analysis"]))
