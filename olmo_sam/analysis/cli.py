"""``olmo-sam forgetting ...``: learning-forgetting frontiers and matched comparisons of a sweep.

All three commands read one or more :class:`~olmo_sam.finetune.records.ResultStore` files
(``RESULTS.jsonl ...``; a sweep's or a ``finetune run`` directory, or its ``records.json``),
print a Markdown table (or ``--json``) and, with ``--out DIR``, write ``.md``/``.csv``/``.json``
tables and a plot there atomically. The computations are :mod:`olmo_sam.analysis.forgetting`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Dict, List, Optional, Sequence

import click

from ..files import read_json
from ..finetune.records import FTRecord, ResultStore
from ..output import json_text
from ..preflight import out_dir_callback
from .forgetting import Curve, compare, group_curves, matched_pt_view
from .tables import Report, compare_report, frontier_report, matched_pt_report

__all__ = ["forgetting"]

PLOT_FORMATS = ("png", "pdf", "svg")


def _records(path: str) -> List[FTRecord]:
    """The records of a sweep's ``results.jsonl`` (or ``finetune run --store``), a ``finetune run
    --out`` directory's ``records.json`` (a JSON list), or a directory holding either."""
    p = Path(path)
    if p.is_dir():
        found = [p / n for n in ("results.jsonl", "records.json") if (p / n).is_file()]
        if not found:
            raise click.ClickException(
                f"{path} holds neither results.jsonl (a sweep's --out) nor records.json (a finetune run's --out)"
            )
        p = found[0]
    try:
        if p.suffix == ".json":
            data = read_json(p, what="fine-tuning records")
            if not isinstance(data, list):
                raise ValueError(
                    f"expected a JSON list of records (finetune run's records.json), got {type(data).__name__}"
                )
            return [FTRecord.from_dict(d) for d in data]
        return ResultStore(p).records()
    except (ValueError, TypeError, AttributeError) as e:
        raise click.ClickException(f"{p}: not fine-tuning result records: {e}") from e


def _load(paths: Sequence[str]) -> List[FTRecord]:
    """Records of one or more stores; a run_id recorded differently in two stores is an error."""
    seen: Dict[str, tuple] = {}
    for path in paths:
        records = _records(path)
        for r in records:
            if r.run_id in seen and seen[r.run_id][0] != r:
                raise click.ClickException(
                    f"run '{r.run_id}' is recorded differently in {seen[r.run_id][1]} and {path}; "
                    f"run ids must be unique across the stores analysed together"
                )
            seen.setdefault(r.run_id, (r, path))
    if not seen:
        raise click.ClickException(
            f"{', '.join(paths)} hold{'s' if len(paths) == 1 else ''} no finished fine-tuning runs; "
            f"run `olmo-sam sweep` first"
        )
    return [r for r, _ in seen.values()]


def _selection(f):
    """Options shared by every command: what to read and how to group it."""
    options = [
        click.argument("results", nargs=-1, required=True, type=click.Path(exists=True)),
        click.option("--dataset", "datasets", multiple=True, help="Only this dataset (repeatable)."),
        click.option("--method", "methods", multiple=True, help="Only this fine-tuning method (repeatable)."),
        click.option(
            "--base",
            "bases",
            multiple=True,
            help="Only this base checkpoint: label, path or label@dirname (repeatable).",
        ),
        click.option("--pool-methods", is_flag=True, help="One tradeoff set per base, pooling all methods."),
        click.option(
            "--split-by",
            multiple=True,
            metavar="HPARAM",
            help="Split each set by this hparams key, e.g. ewc_lambda (repeatable).",
        ),
        click.option(
            "--out",
            callback=out_dir_callback,
            type=click.Path(file_okay=False),
            default=None,
            help="Write tables (.md, .csv, .json) and a plot into this folder.",
        ),
        click.option(
            "--format",
            "fmt",
            type=click.Choice(PLOT_FORMATS),
            default="png",
            show_default=True,
            help="Plot file format.",
        ),
        click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a Markdown table."),
    ]
    for opt in reversed(options):
        f = opt(f)
    return f


def _threshold(f):
    options = [
        click.option(
            "--tau",
            "taus",
            multiple=True,
            metavar="[DATASET=]LOSS",
            help="Fine-tuning-loss threshold instead of tau = max_i L_min(i) "
            "([SAM-PT] Eq. 10): LOSS for every dataset, or DATASET=LOSS (repeatable).",
        ),
        click.option(
            "--strict",
            is_flag=True,
            help="Use L_FT < tau (Fig 5 footnote) instead of L_FT <= tau (App C.4); needs --tau.",
        ),
        click.option(
            "--interpolate",
            is_flag=True,
            help="Interpolate L_PT linearly along the frontier at L_FT = tau (an estimate; "
            "not the paper's definition).",
        ),
    ]
    for opt in reversed(options):
        f = opt(f)
    return f


def _curves(results, datasets, methods, bases, pool_methods, split_by) -> Dict[str, List[Curve]]:
    return group_curves(
        _load(results),
        datasets=list(datasets) or None,
        methods=list(methods) or None,
        bases=list(bases) or None,
        by_method=not pool_methods,
        split_by=list(split_by),
    )


def _parse_taus(values: Sequence[str], datasets: Sequence[str]) -> Dict[str, Optional[float]]:
    """``--tau`` values -> dataset -> tau (None: Eq. 10's default)."""
    out: Dict[str, Optional[float]] = {ds: None for ds in datasets}
    every: Optional[float] = None
    specific: Dict[str, float] = {}
    for v in values:
        name, sep, num = v.rpartition("=")
        try:
            x = float(num)
        except ValueError:
            raise click.BadParameter(f"'{v}' is not LOSS or DATASET=LOSS", param_hint="--tau") from None
        if sep and not name:
            raise click.BadParameter(f"'{v}' has an empty dataset name", param_hint="--tau")
        if not sep:
            if every is not None:
                raise click.BadParameter("give one bare LOSS at most; use DATASET=LOSS for several", param_hint="--tau")
            every = x
        elif name not in out:
            raise click.BadParameter(
                f"dataset '{name}' is not among the analysed datasets ({', '.join(datasets)})",
                param_hint="--tau",
            )
        else:
            specific[name] = x
    for ds in out:
        out[ds] = specific.get(ds, every)
    return out


def _emit(report: Report, out: Optional[str], as_json: bool, plot) -> None:
    for note in report.notes:
        click.echo(f"note: {note}", err=True)
    if as_json:
        click.echo(json_text(report.payload), nl=False)
    else:
        click.echo(report.markdown(), nl=False)
    if out:
        paths = report.write(out)
        paths.append(plot(Path(out)))
        for p in paths:
            click.echo(f"wrote {p}", err=True)


@click.group("forgetting")
def forgetting():
    """Learning-forgetting analysis of fine-tuning results ([SAM-PT] Sec 3.2, App C.4).

    \b
    Example:
      olmo-sam forgetting compare runs/sweep/results.jsonl --reference adamw --out report/
    """


@forgetting.command("frontier", short_help="Pareto frontiers per dataset and checkpoint (Fig 2).")
@_selection
@click.option("--annotate-lr", is_flag=True, help="Write each frontier run's learning rate on the plot.")
def frontier_cmd(results, datasets, methods, bases, pool_methods, split_by, out, fmt, as_json, annotate_lr):
    """Pareto frontiers of (L_PT, L_FT) per dataset and base checkpoint (Fig 2)."""
    from .plots import plot_frontiers

    curves = _curves(results, datasets, methods, bases, pool_methods, split_by)
    report = frontier_report(curves)
    _emit(report, out, as_json, lambda d: plot_frontiers(curves, d / f"frontier.{fmt}", annotate_lr=annotate_lr))


@forgetting.command("compare", short_help="Forgetting at matched L_FT, % less forgetting (App C.4).")
@_selection
@_threshold
@click.option(
    "--reference",
    default=None,
    metavar="CURVE",
    help="Curve the others are compared with (e.g. adamw); default: first by label.",
)
@click.option("--annotate-lr", is_flag=True, help="Write each frontier run's learning rate on the plot.")
def compare_cmd(
    results,
    datasets,
    methods,
    bases,
    pool_methods,
    split_by,
    out,
    fmt,
    as_json,
    taus,
    strict,
    interpolate,
    reference,
    annotate_lr,
):
    """Forgetting at a matched fine-tuning loss and "% less forgetting" (App C.4).

    Each curve is one base checkpoint, so a comparison is one run against one run, with no
    interval: the output says so. `olmo-sam study run` pools seeds into arms with intervals.
    """
    from .plots import plot_frontiers

    curves = _curves(results, datasets, methods, bases, pool_methods, split_by)
    tau = _parse_taus(taus, list(curves))
    comps = {
        ds: compare(cs, reference=reference, tau=tau[ds], strict=strict, interpolate=interpolate)
        for ds, cs in curves.items()
    }
    report = compare_report(comps, curves)
    matched = {ds: c.matched for ds, c in comps.items()}
    _emit(
        report,
        out,
        as_json,
        lambda d: plot_frontiers(curves, d / f"compare.{fmt}", matched=matched, annotate_lr=annotate_lr),
    )


@forgetting.command("matched-pt", short_help="Min PT loss at matched L_FT vs base PT loss (Fig 5).")
@_selection
@_threshold
def matched_pt_cmd(
    results, datasets, methods, bases, pool_methods, split_by, out, fmt, as_json, taus, strict, interpolate
):
    """Minimum PT loss at a matched fine-tuning loss vs the base model's PT loss (Fig 5)."""
    from .plots import plot_matched_pt

    curves = _curves(results, datasets, methods, bases, pool_methods, split_by)
    tau = _parse_taus(taus, list(curves))
    views = {ds: matched_pt_view(cs, tau[ds], strict=strict, interpolate=interpolate) for ds, cs in curves.items()}
    report = matched_pt_report(views, curves)
    _emit(report, out, as_json, lambda d: plot_matched_pt(views, d / f"matched_pt.{fmt}"))
