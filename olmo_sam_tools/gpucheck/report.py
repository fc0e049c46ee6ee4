"""The GPU check's two result files: ``gpu-check.json`` (everything) and ``gpu-check.md`` (tables)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List

from olmo_sam.output import atomic_write_text, markdown_table, write_json

__all__ = [
    "write_report",
    "markdown_report",
    "JSON_NAME",
    "MD_NAME",
    "COST_COLUMNS",
    "QUANT_COLUMNS",
    "FINETUNE_COLUMNS",
]

JSON_NAME = "gpu-check.json"
MD_NAME = "gpu-check.md"

COST_COLUMNS = [
    "preset",
    "params",
    "micro_batch",
    "adamw_step_s",
    "sam_step_s",
    "sam_step_ratio",
    "adamw_tokens_per_s",
    "sam_tokens_per_s",
    "adamw_mfu",
    "sam_mfu_useful",
    "sam_mfu_hardware",
    "adamw_peak_gib",
    "sam_peak_gib",
    "sam_peak_memory_ratio",
    "sam_extra_param_copies",
    "switch_run_ratio",
    "switch_sam_steps",
]
QUANT_COLUMNS = [
    "spec",
    "device",
    "blocksize",
    "base_loss",
    "quantized_loss",
    "loss_increase",
    "compression",
    "max_error_ratio",
    "mismatched_4bit_weights",
]
FINETUNE_COLUMNS = ["way", "wall_s", "runs", "tokens", "tokens_per_s", "fraction_of_pure_training"]


def _rows_cost(cost: Dict[str, Any]) -> List[Dict[str, Any]]:
    results = cost.get("results", {})
    presets = results.get("settings", {}).get("presets", [])
    return [{"preset": p, **results[p]} for p in presets if p in results]


def _rows_quant(bnb: Dict[str, Any]) -> List[Dict[str, Any]]:
    from .quant import SPECS

    results = bnb.get("results", {})
    return [{"spec": s, **results[s]} for s in SPECS if s in results]


def _rows_finetune(ft: Dict[str, Any]) -> List[Dict[str, Any]]:
    results = ft.get("results", {})
    rows = [{"way": w, **results[w]} for w in ("batched", "in_memory") if w in results]
    for row in rows:
        row["way"] = {"batched": "batched", "in_memory": "sequential (in memory)"}[row["way"]]
    return rows


def _finetune_lines(ft: Dict[str, Any]) -> List[str]:
    rows = _rows_finetune(ft)
    if not rows:
        return []
    r = ft["results"]
    st = r["settings"]
    pure = r.get("pure_training", {}).get("tokens_per_s")
    speedup, diff = r.get("speedup_batched_vs_sequential"), r.get("max_abs_l_ft_diff")
    return [
        "## Fine-tuning: batched LR grid vs one run at a time",
        "",
        f"{st['k']} LRs ({', '.join(f'{x:g}' for x in st['lrs'])}) of the {st['size']} model (vocabulary 384), "
        f"{st['steps']} steps x {st['batch']} x {st['seq']} tokens per run, on {st['device']}; wall time per sweep "
        "(evaluation of L_FT and L_PT included), trained tokens per second, that over pure training of one model "
        f"at the same batch ({'n/a' if pure is None else f'{pure:.0f}'} tokens/s). "
        f"Speed-up batched over sequential: {'n/a' if speedup is None else f'{speedup:.2f}x'}; "
        f"max |L_FT batched - sequential| = {'n/a' if diff is None else f'{diff:.2e}'} "
        f"(tolerance {st['l_ft_tolerance']:g}).",
        "",
        markdown_table(FINETUNE_COLUMNS, rows),
    ]


def markdown_report(report: Dict[str, Any]) -> str:
    sections: Dict[str, Dict[str, Any]] = report["sections"]
    env = sections.get("environment", {}).get("results", {}).get("environment", {})
    mode = "CPU dry run (tiny sizes; GPU-only parts skipped)" if report["dry_run"] else "GPU run"
    lines = [
        f"# GPU check: {mode}",
        "",
        f"- started {report['started_utc']}, {report['elapsed_s']:.0f} s of a {report['budget_s']:.0f} s budget",
        f"- command: `{report['command']}`",
        f"- device: {env.get('device_name', '?')}; torch {env.get('torch', '?')} (CUDA {env.get('torch_cuda')}), "
        f"ai2-olmo-core {env.get('ai2-olmo-core')}, bitsandbytes {env.get('bitsandbytes')}",
        f"- MFU peak: {sections.get('cost', {}).get('results', {}).get('settings', {}).get('peak_flops_source', 'n/a')}",
        f"- overall: **{'all sections ok' if report['ok'] else 'NOT all ok (see below)'}**",
        "",
        "## Sections",
        "",
        markdown_table(
            ["section", "status", "elapsed_s", "budget_s"],
            [
                {
                    "section": n,
                    "status": s.get("status"),
                    "elapsed_s": s.get("elapsed_s"),
                    "budget_s": report["budgets"].get(n),
                }
                for n, s in sections.items()
            ],
        ),
        "## Checks",
        "",
        markdown_table(
            ["section", "check", "passed", "detail"],
            [{"section": n, **c} for n, s in sections.items() for c in s.get("checks", [])],
        ),
    ]
    cost_rows = _rows_cost(sections.get("cost", {}))
    if cost_rows:
        st = sections["cost"]["results"]["settings"]
        lines += [
            "## Cost: SAM vs AdamW",
            "",
            f"Sequence length {st['seq']}, {st['batch']} sequences per step, {st['dp']}, "
            f"{st['param_dtype']} parameters; median of {st['timed']} timed steps after {st['warmup']} warm-up; "
            f"switch run: {st['run_steps']} steps, WSD decay fraction {st['decay_fraction']}, first steps left out. "
            "MFU: OLMo-core's FLOPs per token x tokens/s / peak; 'useful' counts one pass per SAM step, "
            "'hardware' both. Memory: peak `torch.cuda.max_memory_allocated` (GiB); extra copies in "
            "units of one float32 parameter copy.",
            "",
            markdown_table(COST_COLUMNS, cost_rows),
        ]
    quant_rows = _rows_quant(sections.get("bnb", {}))
    if quant_rows:
        lines += [
            "## bitsandbytes: PT-loss degradation of a small trained model",
            "",
            "max_error_ratio (int8): worst |dequantized - original| / rounding bound over all quantized weights (<= 1); "
            "mismatched_4bit_weights (NF4): dequantized weights that differ from the exact reference dequantizer (0).",
            "",
            markdown_table(QUANT_COLUMNS, quant_rows),
        ]
    lines += _finetune_lines(sections.get("finetune_batched", {}))
    fsdp = sections.get("fsdp_bf16", {}).get("results", {}).get("fsdp_bf16")
    if fsdp:
        losses = ", ".join(f"{x:.3f}" for x in fsdp["losses"])
        lines += [
            "## FSDP bf16 SAM run",
            "",
            f"{fsdp['steps']} steps, {fsdp['backend']}, param_dtype {fsdp['param_dtype']}; CE loss per step: {losses}",
            "",
        ]
    skipped = [(n, s) for n, sec in sections.items() for s in sec.get("skipped", [])]
    if skipped:
        lines += ["## Skipped", ""] + [f"- {n}: {s['what']}: {s['why']}" for n, s in skipped] + [""]
    errors = [(n, e) for n, sec in sections.items() for e in sec.get("errors", [])]
    if errors:
        lines += ["## Errors", ""] + [f"- {n}: {e['what']}: `{e['error'][:300]}`" for n, e in errors] + [""]
    return "\n".join(lines).rstrip() + "\n"


def write_report(out: str | Path, report: Dict[str, Any]) -> List[Path]:
    out = Path(out)
    return [write_json(out / JSON_NAME, report), atomic_write_text(out / MD_NAME, markdown_report(report))]
