"""The fine-tuning stage: per base and dataset, the LR sweep of every method
(:mod:`olmo_sam.finetune.sweep`), and its analysis -- learning-forgetting frontiers ([SAM-PT]
Eq. 8, Fig 2), forgetting and the Fig 5 quantity at the matched fine-tuning loss tau ([SAM-PT]
Eq. 9-10, App C.4), with each base's grid-edge flag and tau sensitivity."""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

from olmo_core.exceptions import OLMoConfigurationError

from ...analysis.findings import make_finding, unmeasurable_finding
from ...analysis.plots import Panel, plot_bands
from ...analysis.stats import compare_seeds
from ...config import Checked, ConfigError, setting
from ...finetune.sweep import LR_GRIDS, MIX_METHODS
from ...output import write_table
from ...seeds import MAX_SEED
from ..bases import BaseRecord, budget_key
from ..job import Job
from .base import (
    PLACEHOLDER_BASE,
    PLACEHOLDER_FT,
    PLACEHOLDER_TOKENS,
    PlanBuilder,
    ReportSection,
    Stage,
    data_of,
    field_in,
    in_file_words,
    unit_checkpoint,
)

log = logging.getLogger(__name__)

__all__ = [
    "FinetuneStage",
    "ANALYSIS_MATCHINGS",
    "FT_QUANTITIES",
    "ft_sweeps",
    "finetune_curves",
    "matched_rows",
    "seed_values",
    "sensitivity_taus",
]

#: ``analysis: matching`` -- how a base's retained PT loss is read at tau: ``nearest`` (the paper's:
#: the frontier run with the largest L_FT <= tau) or ``interpolate`` (log-LR interpolation between
#: the two frontier runs that bracket tau; olmo_sam.analysis.forgetting.retained_pt_loss)
ANALYSIS_MATCHINGS = ("nearest", "interpolate")


# -- jobs ---------------------------------------------------------------------------------------


def job_ft_data(ctx) -> Dict[str, Any]:
    from ...finetune.adapters import prepare_dataset
    from ...finetune.data import read_meta

    name = ctx.job.params["dataset"]
    if Path(name).is_dir():
        meta = read_meta(name)
        return {"dir": str(Path(name).resolve()), "name": meta.name, "splits": meta.splits}
    data = data_of(ctx)
    if not data.get("tokenizer_dir"):
        raise ConfigError(
            "finetune: datasets are tokenized with the study's tokenizer directory; set data.tokenizer to a dir"
        )
    ds = prepare_dataset(
        name, data["tokenizer_dir"], ctx.dir / "data", overwrite=True, **ctx.job.params.get("prepare", {})
    )
    return {"dir": str(ds.root), "name": ds.name, "splits": ds.meta.splits}


def ft_sweeps(
    job: Job,
    *,
    base: str,
    ft_dir: str,
    pt_val: List[str],
    mixes: Dict[str, str],
    paths: Optional[Dict[str, str]] = None,
):
    """The fine-tuning sweeps of one ``ft_sweep`` job (the main methods, then one per cfs/cs mix);
    the plan step builds them too, with stand-in paths, and expands them without files. The
    shared options are checked by name and type (``paths``: their places in the study file)."""
    from ...config import check_settings
    from ...finetune.engine import FTConfig
    from ...finetune.sweep import LR_GRIDS, MIX_METHODS, SweepSpec, mix_sweeps

    p = job.params
    lrs = [float(x) for x in (p["lrs"] if p["lrs"] is not None else LR_GRIDS[p["preset"]])]
    given = dict(p.get("common") or {})
    symbolic = {k: given.pop(k) for k in ("token_budget",) if given.get(k) == "table3"}  # resolved per dataset
    common = {"pt_val": list(pt_val), **check_settings(FTConfig, given, "finetune.common", paths), **symbolic}
    methods = list(p["methods"])
    grids = dict(p.get("grids") or {})
    main = SweepSpec(
        bases=[base],
        datasets=[ft_dir],
        lrs=lrs,
        methods=[m for m in methods if m not in MIX_METHODS],
        base_labels=[p["unit"]],
        common=common,
        **grids,
    )
    return ([main] if main.methods else []) + mix_sweeps(main, {m: mixes[m] for m in methods if m in MIX_METHODS})


def job_ft_sweep(ctx) -> Dict[str, Any]:
    """The LR sweep of one base checkpoint on one dataset, for every method; a ``cfs`` method
    trains on the context-free mix for as many steps as the task alone ([CFS] Sec 3)."""
    from ...finetune.records import ResultStore
    from ...finetune.sweep import expand, run_sweep, stale_runs

    p = ctx.job.params
    unit, ds = p["unit"], p["dataset"]
    mixes = {m: ctx.dep(f"cfs/{unit}:{ds}:{m}")["mix_dir"] for m in p["methods"] if m in MIX_METHODS}
    sweeps = ft_sweeps(
        ctx.job,
        base=unit_checkpoint(ctx, unit),
        ft_dir=ctx.dep(f"finetune/data:{ds}")["dir"],
        pt_val=list(data_of(ctx)["val"]),
        mixes=mixes,
    )
    from ..progress import PROGRESS_FILE, write_progress

    expanded = [expand(spec) for spec in sweeps]
    planned = [cfg for runs in expanded for cfg in runs]
    store = ResultStore(ctx.dir / "results.jsonl")
    # a job re-run (--rerun) after its data were prepared again with other settings: the runs made
    # on the data as they were are this job's to redo, not a store to refuse (as a sweep's --out is)
    stale = stale_runs(store.records(), planned)
    if stale:
        store.keep_only(rid for rid in store.done_ids() if rid not in stale)
        log.info(f"{ctx.job.id}: {len(stale)} record(s) made on the data as prepared before are redone")
    sizes = [len(runs) for runs in expanded]
    started = time.time()
    total, failed = 0, []
    for i, spec in enumerate(sweeps):
        before = sum(sizes[:i])
        report = lambda done, _n, before=before: write_progress(  # noqa: E731
            ctx.dir / PROGRESS_FILE, before + done, sum(sizes), "runs", started=started
        )
        res = run_sweep(
            spec,
            ctx.dir,
            jobs=1,
            progress=False,
            keep_checkpoints=bool(p.get("keep_checkpoints")),
            on_progress=report,
            engine=p.get("engine", "batched"),
        )
        total += res.total
        failed += [f"{rid}: {why} ({log})" for rid, log, why in res.failed]
    if failed:
        raise ConfigError(f"{ctx.job.id}: {len(failed)} fine-tuning run(s) failed:\n" + "\n".join(failed))
    # a job re-run with other settings (--rerun) finds its earlier runs' records beside the new ones
    dropped = store.keep_only(rid for cfg in planned for rid in cfg.expected_run_ids())
    if dropped:
        log.info(f"{ctx.job.id}: dropped {dropped} record(s) of runs this job no longer plans")
    base_meta = BaseRecord.from_result(ctx.dep(f"pretrain/{unit}"), f"pretrain/{unit}").to_dict()
    return {"results": str(ctx.dir / "results.jsonl"), "runs": total, "base_label": unit, "base_meta": base_meta}


# -- validation ---------------------------------------------------------------------------------


def _validate_ft_data(study, job: Job) -> None:
    from ...finetune.adapters import get_source

    name = job.params["dataset"]
    where = f"finetune.datasets[{study.finetune.datasets.index(name)}]" if study.finetune else "finetune.datasets"
    if not Path(name).is_dir():
        try:
            get_source(name)
        except OLMoConfigurationError as e:
            raise ConfigError(f"{where}: {e}; or give a prepared dataset directory") from None


@dataclass
class PrepareOptions(Checked):
    """``finetune.prepare``: the options of :func:`olmo_sam.finetune.adapters.prepare_dataset`
    (``None``: its default; a test keeps the two equal)."""

    seed: Optional[int] = setting(None, ge=0, le=MAX_SEED)
    val_fraction: Optional[float] = setting(None, gt=0, lt=1)
    max_val_documents: Optional[int] = setting(None, ge=1)
    max_train_tokens: Optional[int] = setting(None, ge=1)
    max_documents: Optional[int] = setting(None, ge=1)


def _validate_ft_sweep(study, job: Job) -> None:
    from ...finetune.sweep import MIX_METHODS, expand

    ft = study.finetune
    assert ft is not None
    grids = dict(job.params.get("grids") or {})
    ds = job.params["dataset"]
    own = ft.per_dataset.get(ds, {})
    paths = {
        k: (f"finetune.per_dataset.{ds}.{k}" if k in own else f"finetune.common.{k}") for k in job.params["common"]
    }
    if (
        "pt_val_max_sequences" in paths
        and "pt_val_max_sequences" not in ft.common
        and "pt_val_max_sequences" not in own
    ):
        paths["pt_val_max_sequences"] = "pt_eval.max_sequences"
    mixes = {m: PLACEHOLDER_FT for m in MIX_METHODS}
    try:
        for spec in ft_sweeps(
            job, base=PLACEHOLDER_BASE, ft_dir=PLACEHOLDER_FT, pt_val=[PLACEHOLDER_TOKENS], mixes=mixes, paths=paths
        ):
            expand(spec, resolve=False)
    except ConfigError:
        raise
    except (OLMoConfigurationError, TypeError, ValueError) as e:
        msg = str(e).strip()
        key = field_in(msg, list(paths))
        msg = in_file_words(msg, paths)
        if key:
            raise ConfigError(f"{paths[key]}: {msg}") from None
        gkey = field_in(msg, list(grids))
        if gkey:
            raise ConfigError(f"finetune.grids.{gkey}: {msg}") from None
        if "learning rate" in msg:
            raise ConfigError(f"finetune.lrs: {msg}") from None
        raise ConfigError(f"finetune ({ds}): {msg}") from None


# -- analysis -----------------------------------------------------------------------------------


#: compared fine-tuning quantities -> the matched row's field holding a base's value
FT_QUANTITIES = {"matched_forgetting": "forgetting", "fig5_pt_loss": "l_pt"}


def finetune_curves(ctx) -> Tuple[list, Dict[str, List[Any]]]:
    """(records, curves) of every finished fine-tuning sweep of the study: the curves grouped per
    dataset, and per ``dataset/method`` when the study fine-tunes with several methods."""
    from ...analysis.forgetting import group_curves
    from ...finetune.records import ResultStore

    records = []
    for job in ctx.plan.jobs:
        if job.kind == "ft_sweep" and job.is_done(ctx.out):
            records += ResultStore(job.result(ctx.out)["results"]).records()
    if not records:
        return [], {}
    curves = group_curves(records)
    methods = sorted({c.key.method or "" for cs in curves.values() for c in cs})
    out: Dict[str, List[Any]] = {}
    for ds, cs in curves.items():
        for m in methods:
            sel = [c for c in cs if (c.key.method or "") == m]
            if sel:
                out[f"{ds}/{m}" if len(methods) > 1 else ds] = sel
    return records, out


def sensitivity_taus(curves: List[Any], units: Optional[List[str]] = None) -> Dict[str, float]:
    """The thresholds at which a matched result is shown, by name:

    * ``study``: Eq. 10 over every base of the dataset in the study (the findings' tau; it depends
      on which bases the study holds: the weakest base sets it);
    * ``compared``: Eq. 10 over the compared bases only (``units``: e.g. both arms at one budget) --
      the tightest threshold every one of them reaches, at most ``study``;
    * ``looser``: ``study + (study - compared)``, or 2% above ``study`` when the two coincide -- a
      threshold that asks less learning, reached by every base.
    """
    from ...analysis.forgetting import matched_threshold

    tau = matched_threshold(curves)
    sel = [c for c in curves if units is None or c.base_label in units]
    tau_c = matched_threshold(sel) if sel else tau
    gap = tau - tau_c
    return {"study": tau, "compared": tau_c, "looser": tau + (gap if gap > 0 else 0.02 * abs(tau))}


def matched_rows(
    curves: Dict[str, List[Any]],
    bases: Any,
    *,
    matching: str = "nearest",
    taus: Optional[Dict[str, float]] = None,
) -> Tuple[List[Dict[str, Any]], Dict[str, Any], List[str]]:
    """(rows, matched sets, notes): one row per base and dataset with its retained PT loss at tau
    (``l_pt``, the Fig 5 quantity), its forgetting (``forgetting``), ``grid_edge`` (matched at the
    grid's lowest LR past tau: an upper bound), ``tau`` and how it was chosen. ``taus`` gives a
    dataset's tau (default: Eq. 10 over every base of the dataset)."""
    from ...analysis.forgetting import AnalysisError, match_at_tau

    if matching not in ANALYSIS_MATCHINGS:
        raise ConfigError(f"analysis.matching: unknown {matching!r}; choose one of {list(ANALYSIS_MATCHINGS)}")
    rows: List[Dict[str, Any]] = []
    matched, notes = {}, []
    for ds, cs in curves.items():
        if len(cs) < 2:
            notes.append(f"{ds}: only one base checkpoint; no matched comparison")
            continue
        tau = (taus or {}).get(ds)
        try:  # default tau = max_i L_min(i) over every base of the dataset (Eq. 10)
            m = match_at_tau(cs, tau, interpolate=matching == "interpolate")
        except AnalysisError as e:
            notes.append(f"{ds}: {e}")
            continue
        matched[ds] = m
        forgetting = {r.curve.base_label: r.forgetting for r in m.rows}
        rule = ("Eq. 10: the largest best-L_FT over all " + f"{len(cs)} bases of {ds}") if tau is None else "given"
        for r in m.rows:
            u = r.curve.base_label
            b = bases.by_unit.get(u)
            ref_arm = bases.reference_of(b.arm) if b else None
            ref_u = next(
                (
                    v
                    for v, c in bases.by_unit.items()
                    if b and c.arm == ref_arm and c.seed == b.seed and c.budget_key == b.budget_key
                ),
                None,
            )
            ref_f = forgetting.get(ref_u) if ref_u else None
            rows.append(
                {
                    "dataset": ds,
                    "tau": m.tau,
                    "tau_rule": rule,
                    "matching": matching,
                    "unit": u,
                    **bases.row(u),
                    "base_l_pt": r.curve.base_l_pt,
                    "l_min": r.l_min,
                    "l_ft": r.retained.l_ft,
                    "l_pt": r.retained.l_pt,
                    "forgetting": r.forgetting,
                    "grid_edge": r.grid_edge,
                    "interpolated": r.retained.interpolated,
                    "matched_lr": r.retained.lr,
                    "less_forgetting_pct": (100.0 * (1 - r.forgetting / ref_f))
                    if ref_f and ref_f > 0 and u != ref_u
                    else None,
                    "lr": ";".join(f"{lr:g}" for p in r.retained.points for lr in p.lrs),
                }
            )
    return rows, matched, notes


def seed_values(
    rows: List[Dict[str, Any]], quantity: str, *, include_grid_edge: bool = False
) -> Dict[Tuple[str, Optional[float], str], Dict[int, float]]:
    """Per (arm, budget key, dataset): seed -> a base's value of ``quantity`` from
    :func:`matched_rows`' rows (or ``summary["finetune"]["matched_rows"]``):

    * ``matched_forgetting``: PT-loss increase at matched fine-tuning loss (App C.4);
    * ``fig5_pt_loss``: PT loss after fine-tuning to L_FT <= tau, the minimum over the LR grid
      (Sec 3.2 footnote 1, Fig 5).

    The budget key is the budget in tokens/param to 3 significant digits (:class:`Base`). Bases
    matched at the grid's edge (``grid_edge``: their value is an upper bound) are left out unless
    ``include_grid_edge``. Pass two cells to :func:`olmo_sam.analysis.stats.compare_seeds`: it
    pairs them on their shared seeds."""
    if quantity not in FT_QUANTITIES:
        raise ConfigError(f"quantity {quantity!r}: seed_values knows {sorted(FT_QUANTITIES)}")
    field = FT_QUANTITIES[quantity]
    out: Dict[Tuple[str, Optional[float], str], Dict[int, float]] = {}
    for r in rows:
        v = r.get(field)
        if r.get("arm") is None or v is None or not math.isfinite(v) or (r.get("grid_edge") and not include_grid_edge):
            continue  # a fine-tuned checkpoint that is no base of the study, or no value
        out.setdefault((r["arm"], budget_key(r["budget_tpp"]), r["dataset"]), {})[int(r["seed"])] = float(v)
    return out


def _matched_findings(bases: Any, rows: List[Dict[str, Any]], ds: str) -> List[Dict[str, Any]]:
    """Findings for both fine-tuning quantities on one dataset: per non-reference arm and budget,
    paired by seed over the seeds where neither arm's base is at the grid's edge."""
    rs = [r for r in rows if r["dataset"] == ds]
    if not rs or bases.reference is None:
        return []
    tau, rule, matching = rs[0]["tau"], rs[0]["tau_rule"], rs[0]["matching"]
    edge = {(r["arm"], budget_key(r["budget_tpp"]), r["seed"]) for r in rs if r["grid_edge"]}
    how = "nearest frontier run" if matching == "nearest" else "log-LR interpolation"
    out: List[Dict[str, Any]] = []
    for quantity, field in FT_QUANTITIES.items():
        values = {r["unit"]: r[field] for r in rs}
        what = "PT loss after fine-tuning" if quantity == "fig5_pt_loss" else "forgetting"
        context = f"Fine-tuning on {ds}, {what} at L_FT <= tau = {tau:.4g} ({rule}; {how})"
        extra = {"tau": tau, "tau_rule": rule, "matching": matching}
        for key in bases.budgets:
            for arm in bases.arms:
                ref_arm = bases.reference_of(arm)
                if ref_arm is None:
                    continue
                ref = bases.cell(ref_arm, key, values)
                vals = bases.cell(arm, key, values)
                if not vals or not ref:
                    continue
                drop = sorted({s for s in set(vals) | set(ref) if (arm, key, s) in edge or (ref_arm, key, s) in edge})
                a = {s: v for s, v in vals.items() if s not in drop}
                r = {s: v for s, v in ref.items() if s not in drop}
                kw = dict(
                    section="finetune",
                    quantity=quantity,
                    arm=arm,
                    reference=ref_arm,
                    budget=bases.budget(key),
                    dataset=ds,
                    context=context,
                )
                why = (
                    f"seed{'s' if len(drop) != 1 else ''} {', '.join(map(str, drop))} matched at the grid's "
                    f"lowest learning rate past tau (an upper bound)"
                )
                if not a or not r:
                    out.append(
                        unmeasurable_finding(
                            confidence=bases.spec.confidence,
                            reason=f"every seed left out: {why}; extend the learning-rate grid downward",
                            extra={**extra, "grid_edge_seeds": drop},
                            **kw,
                        )
                    )
                    continue
                note = (
                    " ".join(
                        n
                        for n in (
                            f"Left out: {why} -- not measurable on this grid." if drop else None,
                            bases.contrast_note(arm),
                        )
                        if n
                    )
                    or None
                )
                out.append(
                    make_finding(
                        diff=compare_seeds(a, r, bases.spec),
                        extra={**extra, "grid_edge_seeds": drop, "note": note, **bases.contrast(arm)},
                        **kw,
                    )
                )
    return out


def _tau_sensitivity(bases: Any, curves: Dict[str, List[Any]], matching: str) -> List[Dict[str, Any]]:
    """Every matched comparison (arm vs reference at one budget, both quantities) at the three
    thresholds of :func:`sensitivity_taus`: a table, not findings (they are the same comparisons)."""
    out: List[Dict[str, Any]] = []
    for ds, cs in curves.items():
        if len(cs) < 2 or bases.reference is None:
            continue
        for key in bases.budgets:
            for arm in bases.arms:
                ref_arm = bases.reference_of(arm)
                if ref_arm is None:
                    continue
                units = [u for u, b in bases.by_unit.items() if b.budget_key == key and b.arm in (arm, ref_arm)]
                if not any(c.base_label in units for c in cs):
                    continue
                compared = [c for c in cs if c.base_label in units]  # the other bases may not reach a lower tau
                for name, tau in sensitivity_taus(cs, units).items():
                    rows, _, _ = matched_rows({ds: compared}, bases, matching=matching, taus={ds: tau})
                    for quantity in FT_QUANTITIES:
                        vals = seed_values(rows, quantity)
                        a, r = vals.get((arm, key, ds)), vals.get((ref_arm, key, ds))
                        d = compare_seeds(a, r, bases.spec) if a and r else None
                        out.append(
                            {
                                "dataset": ds,
                                "quantity": quantity,
                                "arm": arm,
                                "reference": ref_arm,
                                "budget_tpp": bases.budget(key)["budget_tpp"],
                                "tau_name": name,
                                "tau": tau,
                                "estimate": d and d.estimate,
                                "ci_low": d and d.ci_low,
                                "ci_high": d and d.ci_high,
                                "p_value": d and d.p_value,
                                "n_seeds": d.n_seeds if d else 0,
                                "grid_edge_bases": sum(1 for x in rows if x["grid_edge"] and x["unit"] in units),
                            }
                        )
    return out


def _finetune(ctx, bases, out: Path) -> Dict[str, Any]:
    from ...analysis.plots import plot_frontiers
    from ...analysis.tables import frontier_report

    records, curves = finetune_curves(ctx)
    if not records:
        return {}
    merged = out / "finetune_results.jsonl"
    merged.write_text("".join(r.to_json() + "\n" for r in records))
    from ...analysis.forgetting import group_curves

    by_dataset = group_curves(records)
    frontier = frontier_report(by_dataset)
    frontier.write(out)
    arm_of = {u: (b.arm, bases.budget_label(b.budget_key)) for u, b in bases.by_unit.items()}
    figs = {
        "frontiers": str(
            plot_frontiers(
                by_dataset,
                out / "frontiers.png",
                arm_of=arm_of,
                title="Learning-forgetting frontiers: every fine-tuning run",
            )
        )
    }
    section: Dict[str, Any] = {"runs": len(records), "frontier_rows": frontier.rows, "figures": figs}
    matching = ctx.study.analysis.matching_rule
    rows, matched, notes = matched_rows(curves, bases, matching=matching)
    findings: List[Dict[str, Any]] = []
    for ds in matched:
        findings += _matched_findings(bases, rows, ds)
    if matched:
        write_table(out, "matched", list(rows[0]), rows)
        section["matched_rows"] = rows
        section["reference"] = bases.reference
        section["references"] = {a: bases.reference_of(a) for a in bases.arms if bases.reference_of(a)}
        section["matching"] = matching
        section["grid_edge"] = {ds: {r["unit"]: r["grid_edge"] for r in rows if r["dataset"] == ds} for ds in matched}
        sens = _tau_sensitivity(bases, {ds: curves[ds] for ds in matched}, matching)
        if sens:
            write_table(out, "tau_sensitivity", list(sens[0]), sens)
            section["tau_sensitivity"] = sens
        figs["frontiers_matched"] = str(
            plot_frontiers(
                curves,
                out / "frontiers_matched.png",
                matched=matched,
                arm_of=arm_of,
                title="Learning-forgetting frontiers matched at tau ([SAM-PT] App C.4): stars are the matched points",
            )
        )
        figs["overtraining"] = str(_overtraining_figure(bases, rows, findings, out))
    section["notes"] = frontier.notes + notes  # (diverged runs, left out of every frontier, first)
    section["findings"] = findings
    return section


def _overtraining_figure(bases, rows, findings, out: Path) -> Path:
    """Per dataset: forgetting at matched L_FT, the Fig 5 view (minimum L_PT with L_FT <= tau), and
    the paired difference of each from the reference arm, against the pretraining budget; one line
    per arm with its interval band over seeds and each seed as a thin line of the arm's hue (the CPU
    analogue of [SAM-PT] Fig 5 / Fig 3a). Bases matched at the grid's edge are drawn hollow."""
    panels = []
    xlabel = "pretraining tokens per parameter" if bases.xlog else "pretraining budget (index)"
    for ds in dict.fromkeys(r["dataset"] for r in rows):
        rs = [r for r in rows if r["dataset"] == ds]
        tau = rs[0]["tau"]
        edge = [(bases.x(budget_key(r["budget_tpp"])), r) for r in rs if r["grid_edge"]]
        for quantity, title, ylabel in (
            ("matched_forgetting", f"{ds}: forgetting at L_FT <= {tau:.3g}", "PT-loss increase (nats)"),
            ("fig5_pt_loss", f"{ds}: min L_PT with L_FT <= {tau:.3g} (Fig 5)", "PT loss after fine-tuning"),
        ):
            field = FT_QUANTITIES[quantity]
            vals = {r["unit"]: r[field] for r in rs if not r["grid_edge"]}
            series = {arm: [bases.band(arm, k, vals) for k in bases.budgets] for arm in bases.arms}
            seeds = {arm: bases.seed_lines(arm, vals) for arm in bases.arms}
            hollow = [(x, r[field], r["arm"]) for x, r in edge]
            panels.append(
                Panel(
                    title=title,
                    xlabel=xlabel,
                    ylabel=ylabel,
                    series=series,
                    xlog=bases.xlog,
                    seeds=seeds,
                    hollow=hollow,
                )
            )
        for quantity, what in (("matched_forgetting", "forgetting"), ("fig5_pt_loss", "Fig 5 PT loss")):
            diff: Dict[str, List[Any]] = {}
            for f in findings:
                if f["dataset"] == ds and f["quantity"] == quantity and f.get("measurable", True):
                    key = budget_key(f["budget_tpp"])
                    diff.setdefault(f["arm"], []).append((bases.x(key), f["estimate"], f["ci_low"], f["ci_high"]))
            if diff:
                refs = sorted({f["reference"] for f in findings if f["dataset"] == ds and f["quantity"] == quantity})
                against = f"{refs[0]}'s" if len(refs) == 1 else "reference"
                panels.append(
                    Panel(
                        title=f"{ds}: {what} minus {against} (paired)",
                        xlabel=xlabel,
                        ylabel="arm minus its reference arm (nats)" if len(refs) > 1 else "difference (nats)",
                        series=diff,
                        xlog=bases.xlog,
                        zero_line=True,
                    )
                )
    ncols = 4 if any("minus" in p.title for p in panels) else 2
    return plot_bands(
        panels,
        out / "overtraining.png",
        ncols=ncols,
        band_label=bases.band_label(),
        colors=bases.colors(),
        title="Fine-tuning at matched loss against the pretraining budget",
    )


class FinetuneStage(Stage):
    name = "finetune"
    kinds = {"ft_data": job_ft_data, "ft_sweep": job_ft_sweep}
    report = ReportSection(
        "finetune",
        "Learning-forgetting trade-off (fine-tuning)",
        {
            "matched_rows": "one row per base checkpoint and dataset, at the matched fine-tuning loss ([SAM-PT] App C.4)",
            "frontier_rows": "one row per Pareto-frontier point of a base checkpoint's fine-tuning runs ([SAM-PT] Eq. 8)",
        },
        rank=1,
    )

    def configured(self, study) -> bool:
        return study.finetune is not None

    def plan(self, study, plan: PlanBuilder) -> None:
        ft = study.finetune
        lrs = ft.lrs if ft.lrs is not None else LR_GRIDS[ft.preset]
        runs = len(lrs) * len(ft.methods)
        pt_val_default = (
            {"pt_val_max_sequences": study.pt_eval.max_sequences} if study.pt_eval.max_sequences is not None else {}
        )
        for ds in ft.datasets:
            plan.add(
                Job(
                    f"finetune/data:{ds}",
                    "finetune",
                    "ft_data",
                    params={"dataset": ds, "prepare": ft.prepare},
                    deps=["data"],
                    runs=0,
                )
            )
        mix_methods = [m for m in ft.methods if m in MIX_METHODS]
        for u in plan.unit_names:
            for ds in ft.datasets:
                deps = [f"pretrain/{u}", f"finetune/data:{ds}", "data"]
                deps += [f"cfs/{u}:{ds}:{m}" for m in mix_methods]
                plan.add(
                    Job(
                        f"finetune/{u}:{ds}",
                        "finetune",
                        "ft_sweep",
                        params={
                            "unit": u,
                            "dataset": ds,
                            "lrs": ft.lrs,
                            "preset": ft.preset,
                            "methods": ft.methods,
                            "grids": ft.grids,
                            # (the benchmarks of fine-tuned models and the directional stage read them)
                            "keep_checkpoints": bool(study.benchmarks.finetuned or "directional" in study.sections),
                            "common": {**pt_val_default, **ft.common, **ft.per_dataset.get(ds, {})},
                            # (only when not the default: the jobs' parameters, and so their
                            # state, stay those of existing studies)
                            **({"engine": ft.engine} if ft.engine != "batched" else {}),
                        },
                        deps=deps,
                        distributed=True,
                        runs=runs,
                    )
                )

    def validate(self, study, job: Job, data) -> None:
        if job.kind == "ft_data":
            _validate_ft_data(study, job)
        else:
            _validate_ft_sweep(study, job)

    def analyse(self, ctx, bases, out: Path) -> Dict[str, Any]:
        return _finetune(ctx, bases, out)
