"""``olmo-sam report OUTDIR``: a self-contained HTML (figures inlined) and a Markdown report of a
study, from its analysis summary, manifest and configs."""

from __future__ import annotations

import base64
import html
import json
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

from ..output import atomic_write_text, markdown_table

__all__ = ["write_report", "REPORT_SECTIONS"]

#: (summary key, title) in report order
REPORT_SECTIONS = (
    ("pretraining", "Pretraining"),
    ("finetune", "Learning-forgetting trade-off (fine-tuning)"),
    ("quantize", "Quantization"),
    ("noise", "Gaussian weight noise"),
    ("hessian", "Sharpness"),
    ("benchmarks", "Benchmarks"),
)

_TABLES = {
    "pretraining": ["rows"],
    "finetune": ["matched_rows", "frontier_rows"],
    "quantize": ["rows"],
    "noise": ["rows"],
    "hessian": ["rows"],
    "benchmarks": ["averages", "rows"],
}


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


def _img(path: str) -> str:
    data = base64.b64encode(Path(path).read_bytes()).decode()
    return f'<img alt="{html.escape(Path(path).stem)}" src="data:image/png;base64,{data}"/>'


def regime_lines(s: Dict[str, Any]) -> List[str]:
    """The quick-version warning and the regime of the bases (parameters, tokens per parameter
    both ways, seeds, data source and epochs), from the summary's ``quick`` and ``bases``."""
    out: List[str] = []
    if s.get("quick"):
        out.append("QUICK VERSION: a smoke test sized to finish in minutes. Its numbers are not evidence "
                   "for or against any claim; run the full study for results.")  # fmt: skip
    bases = [b for b in (s.get("bases") or {}).values() if b.get("params_total")]
    if bases:
        params = sorted({(b["params_total"], b["params_non_embedding"]) for b in bases})
        budgets = sorted({(b.get("budget_tpp"), round(b["tpp_non_embedding"])) for b in bases if b.get("budget_tpp")})
        seeds = sorted({b.get("seed") for b in bases if b.get("seed") is not None})
        epochs = [b["data_epochs"] for b in bases if b.get("data_epochs")]
        out.append(
            "Regime: " + "; ".join(f"{t:,} parameters ({n:,} non-embedding)" for t, n in params)
            + (f"; pretraining budgets {', '.join(f'{t:g}' for t, _ in budgets)} tokens per parameter "
               f"({', '.join(f'{n:,}' for _, n in budgets)} per non-embedding parameter)" if budgets else "")
            + (f"; pretraining seeds {seeds}" if seeds else "")
            + (f"; data: {bases[0].get('data_source')}" if bases[0].get("data_source") else "")
            + (f", {min(epochs):.2g}-{max(epochs):.2g} epochs" if epochs else "")
            + "."
        )  # fmt: skip
    return out


def write_report(out_dir: str | Path, analysis: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
    out = Path(out_dir)
    summary_path = Path(analysis["summary"]) if analysis else out / "analysis" / "summary.json"
    if not summary_path.exists():
        raise FileNotFoundError(f"{summary_path} not found: run the study's analysis stage first")
    s = json.loads(summary_path.read_text())
    manifest = json.loads((out / "manifest.json").read_text()) if (out / "manifest.json").exists() else {}
    study = json.loads((out / "study.json").read_text()) if (out / "study.json").exists() else {}
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
    for line in regime_lines(s):
        md += [line, ""]
        h.append(f"<p>{html.escape(line)}</p>")
    units = s.get("units", [])
    md += [f"Arms (units): {', '.join(units)}. Reference for comparisons: **{s.get('reference_unit')}**.", ""]
    h.append(f"<p>Arms (units): {html.escape(', '.join(units))}. Reference for comparisons: <b>{html.escape(str(s.get('reference_unit')))}</b>.</p>")

    findings = s.get("findings") or ["No comparative numbers were produced."]
    md += ["## Findings (computed from this study's measurements)", ""] + [f"- {f}" for f in findings] + [""]
    h.append("<h2>Findings (computed from this study's measurements)</h2><ul>" + "".join(f"<li>{html.escape(f)}</li>" for f in findings) + "</ul>")

    present = []
    for key, name in REPORT_SECTIONS:
        sec = s.get(key)
        if not sec:
            continue
        present.append(key)
        md += [f"## {name}", ""]
        h.append(f"<h2>{html.escape(name)}</h2>")
        for note in sec.get("notes", []):
            md.append(f"> {note}")
            h.append(f"<p><i>{html.escape(note)}</i></p>")
        for tkey in _TABLES.get(key, []):
            rows = sec.get(tkey)
            if rows:
                md += [markdown_table(_cols(rows), rows), ""]
                h.append(_html_table(rows))
        for fig in (sec.get("figures") or {}).values():
            if fig and Path(fig).exists():
                md += [f"![{Path(fig).stem}]({Path(fig).resolve()})", ""]
                h.append(_img(fig))
    cfg_text = json.dumps(study, indent=2)
    env = manifest.get("environment", {})
    md += ["## Configuration", "", "```json", cfg_text, "```", "", "## Environment", "", "```json", json.dumps(env, indent=2), "```", ""]
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
