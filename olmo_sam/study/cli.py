"""``olmo-sam study run|status`` and ``olmo-sam report``."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import List, Optional

import click

from .spec import STAGES


def _split(values) -> List[str]:
    out: List[str] = []
    for v in values or ():
        out += [x.strip() for x in v.split(",") if x.strip()]
    return out


def start_study(
    path_or_spec,
    *,
    out: Optional[str] = None,
    stages: Optional[List[str]] = None,
    exclude: Optional[List[str]] = None,
    dry_run: bool = False,
    rerun: bool = False,
    executor: Optional[str] = None,
    jobs: Optional[int] = None,
    nproc_per_node: Optional[int] = None,
    echo=click.echo,
):
    """Plan (and unless ``dry_run``, run) a study; returns the plan."""
    from .executors import job_command, run_jobs
    from .manifest import Manifest
    from .plan import build_plan
    from .runner import save_study
    from .spec import StudySpec, load_study

    spec = path_or_spec if isinstance(path_or_spec, StudySpec) else load_study(path_or_spec)
    if out:
        spec.out_dir = out
    plan = build_plan(spec)
    selected = plan.select(stages or None, exclude or ())
    kind = executor or spec.executor.kind
    nproc = nproc_per_node or spec.executor.nproc_per_node
    parallel = jobs or (1 if kind == "torchrun" else spec.executor.jobs)
    summary = plan.stage_summary()
    echo(f"study '{spec.name}' -> {plan.out}  ({len(selected)} of {len(plan.jobs)} jobs selected; executor {kind})")
    for stage in STAGES:
        if stage in summary:
            s = summary[stage]
            runs = f", {s['runs']} runs" if s["runs"] != s["jobs"] else ""
            echo(f"  {stage:<11} {s['jobs']:>4} jobs{runs}  ({s['done']} done)")
    if dry_run:
        for j in selected:
            mark = "done" if j.is_done(plan.out) and not rerun else "todo"
            echo(f"  [{mark}] {j.id}: {' '.join(job_command(j, plan.out, kind, nproc))}")
        return plan
    if rerun:
        ids = {j.id for j in selected}
        changed = True
        while changed:  # everything downstream of a rerun job reruns too
            changed = False
            for j in plan.jobs:
                if j.id not in ids and any(d in ids for d in j.deps):
                    ids.add(j.id)
                    changed = True
        for j in plan.jobs:
            if j.id in ids and j.done_path(plan.out).exists():
                j.done_path(plan.out).unlink()
        selected = [j for j in plan.jobs if j.id in ids]
    plan.out.mkdir(parents=True, exist_ok=True)
    save_study(plan)
    Manifest(plan.out).start(spec.plain(), {"study_seed": spec.seed})
    run_jobs(plan, selected, kind=kind, parallel=parallel, nproc_per_node=nproc, slurm=spec.executor.slurm)
    return plan


@click.group()
def study():
    """Run the paper's chain of stages from one study file (resumable).

    \b
    Example:
      olmo-sam study run recipes/studies/paper-60m.yaml --dry-run
      olmo-sam study run recipes/studies/paper-60m.yaml --stages quantize,noise --rerun
      olmo-sam study status runs/paper-60m
    """


@study.command("run")
@click.argument("study_file", type=click.Path(dir_okay=False))
@click.option("--out", type=click.Path(file_okay=False), help="Output directory (default: the file's out_dir).")
@click.option("--stages", multiple=True, help=f"Only these stages (comma-separated): {', '.join(STAGES)}.")
@click.option("--exclude", multiple=True, help="Skip these stages.")
@click.option("--dry-run", is_flag=True, help="Print the planned jobs and their commands; run nothing.")
@click.option("--rerun", is_flag=True,
              help="Run the selected jobs (--stages/--exclude; default all) and everything after them again, "
                   "replacing their results; without it finished jobs are skipped.")
@click.option("--executor", type=click.Choice(["local", "torchrun", "slurm"]), default=None,
              help="How jobs start: local subprocesses, torchrun launches, or Slurm (submitit) "
                   "[default: the file's executor.kind].")
@click.option("--jobs", type=int, default=None, help="Jobs at a time (local executor).")
@click.option("--nproc-per-node", type=int, default=None, help="torchrun processes per training job.")
def run_command(study_file, out, stages, exclude, dry_run, rerun, executor, jobs, nproc_per_node):
    """Run (or resume) the study in STUDY_FILE: finished jobs are skipped."""
    from olmo_core.exceptions import OLMoConfigurationError

    from .executors import JobFailed

    try:
        plan = start_study(study_file, out=out, stages=_split(stages), exclude=_split(exclude), dry_run=dry_run,
                           rerun=rerun, executor=executor, jobs=jobs, nproc_per_node=nproc_per_node)  # fmt: skip
    except OLMoConfigurationError as e:
        raise click.UsageError(str(e)) from None
    except JobFailed as e:
        click.echo(str(e), err=True)
        sys.exit(1)
    if not dry_run:
        report = plan.out / "report" / "report.html"
        if report.exists():
            click.echo(f"report: {report.resolve()}")


@study.command("status")
@click.argument("out_dir", type=click.Path(file_okay=False, exists=True))
def status_command(out_dir):
    """Which jobs of the study in OUT_DIR are finished."""
    from .runner import load_plan

    plan = load_plan(out_dir)
    for j in plan.jobs:
        click.echo(f"{'done' if j.is_done(plan.out) else 'todo'}  {j.id}")


@click.command()
@click.argument("out_dir", type=click.Path(file_okay=False, exists=True))
def report(out_dir):
    """Write OUT_DIR/report/report.html and report.md from a finished study's analysis."""
    from .report import write_report

    try:
        res = write_report(out_dir)
    except FileNotFoundError as e:
        raise click.UsageError(str(e)) from None
    click.echo(f"report: {Path(res['html']).resolve()}")
    click.echo(f"markdown: {Path(res['markdown']).resolve()}")
