"""``olmo-sam eval``: OLMES runs, the offline CPU suite, and forgetting tables."""

from __future__ import annotations

from pathlib import Path
from typing import Dict, List, Optional

import click
from olmo_core.exceptions import OLMoConfigurationError

from .. import paper
from ..preflight import DEVICE, FLOAT, POSITIVE_INT, FiniteFloatRange, errors_by_flag, model_callback, out_dir_callback
from .hf_load import QUANT_KINDS

__all__ = ["eval_group"]


def _records_table(records) -> str:
    lines = ["| task | score | metric | instances | source |", "|---|---|---|---|---|"]
    for r in records:
        lines.append(f"| {r.task} | {r.score:.2f} | {r.metric} | {r.num_instances} | {r.source} |")
    if records:
        lines.append(
            f"| **average ({len(records)} tasks)** | {sum(r.score for r in records) / len(records):.2f} | | | |"
        )
    return "\n".join(lines)


def _olmes_batch_size(ctx, param, value: Optional[str]):
    if value in (None, "auto"):
        return value
    if not str(value).isdigit() or int(value) < 1:
        raise click.BadParameter(f"{value!r}: give a whole number >= 1 or 'auto'")
    return int(value)


@click.group("eval")
def eval_group():
    """Benchmarks of the OLMo-2 pretraining suite and forgetting tables ([SAM-PT] App B.1.2).

    \b
    Example:
      olmo-sam eval offline runs/demo/export/sam --limit 20 --out evals/sam
      olmo-sam eval compare adamw=evals/adamw/results.json sam=evals/sam/results.json
    """


@eval_group.command("olmes")
@click.argument("model_dir", type=click.Path(file_okay=False, path_type=Path), callback=model_callback)
@click.option(
    "--suite",
    default="olmo2-pretrain",
    show_default=True,
    type=click.Choice(["olmo2-pretrain"]),
    help="Task suite: the OLMo-2 pretraining benchmarks of [SAM-PT] App B.1.2.",
)
@click.option("--task", "tasks", multiple=True, help="Run only these paper tasks (default: all ten).")
@click.option(
    "--model-type", default="hf", show_default=True, type=click.Choice(["hf", "vllm"]), help="OLMES model backend."
)
@click.option(
    "--quant",
    default="none",
    show_default=True,
    type=click.Choice(QUANT_KINDS),
    help="bitsandbytes loading; nf4 is the paper's 4-bit setting.",
)
@click.option(
    "--model-arg",
    "model_arg",
    multiple=True,
    metavar="KEY=VALUE",
    help="Extra OLMES model arg (VALUE as JSON); validated against OLMES's MODEL_DEFAULTS.",
)
@click.option("--limit", type=FLOAT, default=None, help="Instances (or fraction) per task, for quick runs.")
@click.option(
    "--eval-batch-size",
    "batch_size",
    default=None,
    callback=_olmes_batch_size,
    help="OLMES batch size (an int or 'auto').",
)
@click.option("--gpus", type=POSITIVE_INT, default=None, help="Number of GPUs for OLMES.")
@click.option(
    "--out",
    "output_dir",
    callback=out_dir_callback,
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="OLMES output directory [default: MODEL_DIR/olmes].",
)
@click.option(
    "--olmes",
    "olmes_path",
    default=None,
    metavar="PATH",
    help="OLMES 'olmes' executable, its python, or its venv dir [env: OLMO_SAM_OLMES].",
)
@click.option("--label", default=None, help="Model label in the results [default: MODEL_DIR name].")
@click.option("--print", "print_only", is_flag=True, help="Print the OLMES command and exit.")
def olmes_command(
    model_dir,
    suite,
    tasks,
    model_type,
    quant,
    model_arg,
    limit,
    batch_size,
    gpus,
    output_dir,
    olmes_path,
    label,
    print_only,
):
    """Run OLMES on MODEL_DIR (a local HF model directory or a hub id) for the paper's suite."""
    from . import olmes as o
    from .records import write_records

    aliases = o.suite_aliases(suite, tasks)
    args = o.with_quant_args(o.parse_model_arg_pairs(model_arg), quant, model_type)
    output_dir = output_dir or Path(model_dir) / "olmes"
    try:
        exe: Optional[Path] = o.find_olmes(olmes_path)
    except o.OlmesNotFound:
        if not print_only:
            raise
        exe = None
    cmd = o.build_olmes_command(
        model_dir,
        aliases,
        output_dir=output_dir,
        model_type=model_type,
        model_args=args,
        limit=limit,
        batch_size=batch_size,
        gpus=gpus,
        olmes=exe or olmes_path or "olmes",
    )
    if print_only:
        click.echo(o.format_command(cmd, exe))
        if exe is None:
            where = f"--olmes {olmes_path}" if olmes_path else "'olmes' on PATH"
            click.echo(f"# OLMES not found here; the command assumes {where} where it runs", err=True)
        return
    click.echo(f"$ {o.format_command(cmd, exe)}", err=True)
    rc = o.run_olmes(cmd, exe, echo=lambda line: click.echo(line, nl=False))
    if rc != 0:
        raise click.ClickException(f"OLMES exited with code {rc}; its output is in {output_dir}")
    records = o.load_olmes_results(output_dir, model=label or Path(model_dir).name, suite=suite)
    path = write_records(output_dir / "results.json", records, meta={"command": cmd, "quant": quant})
    click.echo(_records_table(records))
    click.echo(f"records: {path}")


@eval_group.command("offline")
@click.argument("model_dir", type=click.Path(exists=True, file_okay=False, path_type=Path), callback=model_callback)
@click.option("--task", "tasks", multiple=True, help="Offline tasks to run (default: all eight).")
@click.option("--limit", type=click.IntRange(min=1), default=None, help="Documents per task, for quick runs.")
@click.option(
    "--quant",
    default="none",
    show_default=True,
    type=click.Choice(QUANT_KINDS),
    help="bitsandbytes loading through transformers (nf4 = the paper's 4-bit).",
)
@click.option(
    "--eval-batch-size",
    "batch_size",
    type=POSITIVE_INT,
    default=8,
    show_default=True,
    help="Sequences per forward pass.",
)
@click.option(
    "--max-gen-toks", type=click.IntRange(min=1), default=None, help="Cap generated tokens (for small-context models)."
)
@click.option("--device", type=DEVICE, default="cpu", show_default=True, help="Torch device (cpu, cuda, cuda:1, ...).")
@click.option(
    "--out",
    "output_dir",
    callback=out_dir_callback,
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Results + resume cache [default: MODEL_DIR/offline-eval[-QUANT]].",
)
@click.option("--label", default=None, help="Model label in the results [default: MODEL_DIR name].")
def offline_command(model_dir, tasks, limit, quant, batch_size, max_gen_toks, device, output_dir, label):
    """Evaluate MODEL_DIR on the offline suite (8 of the 10 tasks; no AGIEval, no MMLU-Pro)."""
    from .offline import OFFLINE_MISSING, run_offline_suite

    out = output_dir or Path(model_dir) / ("offline-eval" + ("" if quant == "none" else f"-{quant}"))
    with errors_by_flag({"tasks"}, {"tasks": "--task"}):  # (--task[1], not the function's tasks[1])
        records = run_offline_suite(
            model_dir,
            tasks or None,
            limit,
            quant,
            out_dir=out,
            model_label=label,
            batch_size=batch_size,
            max_gen_toks=max_gen_toks,
            device=device,
        )
    click.echo(_records_table(records))
    click.echo("missing offline: " + "; ".join(f"{k} ({v})" for k, v in OFFLINE_MISSING.items()))
    click.echo(f"records: {out / 'results.json'}")


def _parse_results_spec(spec: str):
    """``[LABEL=]PATH``."""
    from .results import read_records

    if not Path(spec).exists() and "=" in spec:
        label, path = spec.split("=", 1)
        return label, read_records(path, model=label)
    recs = read_records(spec)
    labels = {r.model for r in recs}
    if len(labels) != 1:
        raise OLMoConfigurationError(f"{spec} holds several models {sorted(labels)}; give LABEL=PATH")
    return labels.pop(), recs


def _kv(values, what) -> Dict[str, str]:
    out = {}
    for v in values:
        if "=" not in v:
            raise OLMoConfigurationError(f"{what} expects MODEL=BASE, got {v!r}")
        a, b = v.split("=", 1)
        out[a] = b
    return out


@eval_group.command("compare")
@click.argument("results", nargs=-1, metavar="BASE_RESULTS [OTHER_RESULTS]...")
@click.option("--base-of", multiple=True, metavar="MODEL=BASE", help="A model's own base (default: the first).")
@click.option(
    "--reference",
    type=FiniteFloatRange(min=0, max=100),
    default=None,
    help="Also measure every drop from this average (a score in [0, 100]).",
)
@click.option(
    "--paper-reference",
    is_flag=True,
    help=f"--reference {paper.BENCH_REFERENCE_AVG} (the paper's AdamW base, Sec 3.5.1).",
)
@click.option(
    "--pair",
    "pairs",
    multiple=True,
    metavar="BASELINE,ARM",
    help="Report '% less forgetting' of ARM vs BASELINE, with a paired interval over tasks.",
)
@click.option("--tasks", default=None, help="Comma-separated tasks to compare on (default: all, must match).")
@click.option(
    "--out",
    "out_dir",
    callback=out_dir_callback,
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Write compare.{md,csv,json,png} here.",
)
@click.option("--paper-table8", is_flag=True, help="Use the paper's Table 8 rows as the results.")
def compare_command(results, base_of, reference, paper_reference, pairs, tasks, out_dir, paper_table8):
    """Per-task and average scores, drops from base / reference, and '% less forgetting'.

    Each --pair states the difference in average drop with a 95% interval and p-value paired
    over the tasks; "X% less" is written only when that interval excludes zero.

    RESULTS are results.json files or OLMES output directories, optionally LABEL=PATH. The first
    is the base everything is compared to unless --base-of says otherwise.
    """
    from .compare import compare, paper_table8_records

    if paper_reference:
        if reference is not None:
            raise OLMoConfigurationError("give --reference or --paper-reference, not both")
        reference = paper.BENCH_REFERENCE_AVG
    loaded: Dict[str, List] = {}
    if paper_table8:
        loaded.update(paper_table8_records())
    for spec in results:
        label, recs = _parse_results_spec(spec)
        if label in loaded:
            raise OLMoConfigurationError(f"two results are labelled {label!r}; use LABEL=PATH")
        loaded[label] = recs
    if not loaded:
        raise OLMoConfigurationError("give at least BASE_RESULTS (or --paper-table8)")
    pair_list = []
    for p in pairs:
        parts = p.split(",")
        if len(parts) != 2:
            raise OLMoConfigurationError(f"--pair expects BASELINE,ARM, got {p!r}")
        pair_list.append((parts[0], parts[1]))
    comp = compare(
        loaded,
        next(iter(loaded)),
        base_of=_kv(base_of, "--base-of"),
        reference=reference,
        pairs=pair_list,
        tasks=tasks.split(",") if tasks else None,
    )
    click.echo(comp.to_markdown())
    if out_dir is not None:
        written = comp.write(out_dir)
        click.echo("wrote " + ", ".join(str(p) for p in written.values()))
