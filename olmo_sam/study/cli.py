"""``olmo-sam study run|status`` and ``olmo-sam report``."""

from __future__ import annotations

import contextlib
import shlex
import signal
import sys
import threading
from pathlib import Path
from typing import Any, List, Optional, Sequence, Tuple

import click

from ..preflight import comma_list
from .stages import stage_names


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
    resume_command: Optional[str] = None,
    progress=True,
    allow_missing_data: bool = False,
    overrides: Sequence[str] = (),
):
    """Plan (and unless ``dry_run``, run) a study; returns the plan. ``overrides``: dotted
    ``KEY=VALUE`` changes to the study file (:func:`.spec.apply_overrides`).

    Every job's configuration is built before anything runs (:func:`.validate.validate_plan`);
    the output directory is locked while the study runs; a study file changed under finished
    jobs is refused (:mod:`.state`). ``resume_command`` is printed on Ctrl-C."""
    from .executors import Interrupted, job_code, job_command, run_jobs
    from .manifest import Manifest
    from .plan import build_plan
    from .runner import save_study
    from .spec import ConfigError, StudySpec, load_study
    from .state import check_unchanged, check_writable, out_dir_lock
    from .validate import validate_executor, validate_plan

    spec = path_or_spec if isinstance(path_or_spec, StudySpec) else load_study(path_or_spec, overrides)
    if out:
        spec.out_dir = out
    validate_executor(spec, kind=executor, jobs=jobs, nproc_per_node=nproc_per_node)
    plan = build_plan(spec)
    if allow_missing_data and not dry_run:
        raise ConfigError("--allow-missing-data: only with --dry-run (a run needs its data)")
    warnings = validate_plan(plan, missing_data_ok=allow_missing_data)
    selected = plan.select(stages or None, exclude or ())
    source = spec.source if spec.source and not spec.source.startswith("<") else "STUDY_FILE"
    source = shlex.join([source, *overrides])  # (a command to copy repeats the overrides)
    rerun_ids = _rerun_set(plan, selected) if rerun else set()
    held: List[Any] = []
    if rerun:
        selected, held = _rerun_jobs(plan, rerun_ids, exclude or ())
    if dry_run:  # the run refuses a study file edited under finished jobs (below, under the lock); so does its dry run
        check_unchanged(plan, rerun_ids, source)
    kind = executor or spec.executor.kind
    nproc = nproc_per_node or spec.executor.nproc_per_node
    parallel = jobs or (1 if kind == "torchrun" else spec.executor.jobs)
    summary = plan.stage_summary()
    echo(f"study '{spec.name}' -> {plan.out}  ({len(selected)} of {len(plan.jobs)} jobs selected; executor {kind})")
    for stage in stage_names():
        if stage in summary:
            s = summary[stage]
            runs = f", {s['runs']} runs" if s["runs"] != s["jobs"] else ""
            echo(f"  {stage:<11} {s['jobs']:>4} jobs{runs}  ({s['done']} done)")
    for w in warnings:
        echo(f"  warning: {w}")
    if held:
        echo(
            f"  --exclude: {len(held)} job(s) after the re-run ones are not run now ({', '.join(j.id for j in held)}); "
            "their results would predate the re-run, so they are marked to run again (the next 'study run' runs them)"
        )
    if dry_run:
        for j in selected:
            mark = "done" if j.is_done(plan.out) and not rerun else "todo"
            echo(f"  [{mark}] {j.id}: {' '.join(job_command(j, plan.out, kind, nproc))}")
        return plan
    resume = resume_command or f"olmo-sam study run {source} --out {shlex.quote(str(plan.out))}"
    check_writable(plan.out)
    with out_dir_lock(plan.out, "demo" if resume.startswith("olmo-sam demo") else "study run"):
        check_unchanged(plan, rerun_ids, source)
        for j in plan.jobs:
            if j.id in rerun_ids and j.done_path(plan.out).exists():
                j.done_path(plan.out).unlink()
        save_study(plan)
        manifest = Manifest(plan.out)
        manifest.start(spec.plain(), {"study_seed": spec.seed}, job_code=job_code())
        try:
            with _sigterm_interrupts():
                run_jobs(
                    plan,
                    selected,
                    kind=kind,
                    parallel=parallel,
                    nproc_per_node=nproc,
                    slurm=spec.executor.slurm,
                    progress=progress,
                    reuse_processes=spec.executor.reuse_processes,
                )
        except (Interrupted, KeyboardInterrupt) as e:
            jobs_then = getattr(e, "jobs", [])
            manifest.set_state("interrupted", resume=resume, interrupted_jobs=jobs_then)
            raise Interrupted(jobs_then) from None
        except BaseException:
            manifest.set_state("failed")
            raise
        manifest.set_state("finished")
    return plan


@contextlib.contextmanager
def _sigterm_interrupts():
    """SIGTERM (Slurm's time limit, ``kill``) stops the study like Ctrl-C."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _rerun_set(plan, selected) -> set:
    """The selected jobs and everything downstream of them."""
    ids = {j.id for j in selected}
    changed = True
    while changed:
        changed = False
        for j in plan.jobs:
            if j.id not in ids and any(d in ids for d in j.deps):
                ids.add(j.id)
                changed = True
    return ids


def _rerun_jobs(plan, rerun_ids: set, exclude: Sequence[str]) -> Tuple[List[Any], List[Any]]:
    """``--rerun``'s jobs, in plan order: those to run again, and those held back -- the jobs of
    ``--exclude``'d stages among them and everything after those, which are not run now but lose
    their done marker (their results would predate the re-run)."""
    held = _rerun_set(plan, [j for j in plan.jobs if j.id in rerun_ids and j.stage in exclude])
    run = [j for j in plan.jobs if j.id in rerun_ids and j.id not in held]
    return run, [j for j in plan.jobs if j.id in held]


def run_study_command(fn, resume: str) -> None:
    """Run ``fn`` (a start_study call) the way the commands do: configuration problems as one
    line (exit 1, :func:`olmo_sam.preflight.cli_errors`), failed jobs with their log tails (exit 1),
    Ctrl-C with how to resume (130)."""
    from .executors import Interrupted, JobFailed

    try:
        return fn()
    except JobFailed as e:
        click.echo(f"{e}\n\nFinished jobs are kept. Once the failure is fixed, go on with:\n  {resume}", err=True)
        sys.exit(1)
    except (Interrupted, KeyboardInterrupt):
        click.echo(f"\nInterrupted; finished jobs are kept. Resume with:\n  {resume}", err=True)
        sys.exit(130)


@click.group()
def study():
    """Run the paper's chain of stages from one study file (resumable).

    \b
    Example:
      olmo-sam study run recipes/studies/paper-60m.yaml --dry-run --allow-missing-data
      olmo-sam study run recipes/studies/paper-60m.yaml --stages quantize,noise --rerun
      olmo-sam study run paper-60m --dry-run --allow-missing-data   # a shipped study, by name
      olmo-sam study status runs/paper-60m
    """


@study.command("run")
@click.argument("study_file", type=click.Path(dir_okay=False))
@click.argument("overrides", nargs=-1, metavar="[KEY=VALUE]...")
@click.option("--out", type=click.Path(file_okay=False), help="Output directory (default: the file's out_dir).")
@click.option(
    "--stages",
    multiple=True,
    callback=comma_list(),
    help=f"Only these stages (comma-separated): {', '.join(stage_names())}, or a stage the study adds.",
)
@click.option("--exclude", multiple=True, callback=comma_list(), help="Skip these stages.")
@click.option("--dry-run", is_flag=True, help="Print the planned jobs and their commands; run nothing.")
@click.option(
    "--allow-missing-data",
    is_flag=True,
    help="With --dry-run: plan even though data files are missing here (they are listed).",
)
@click.option(
    "--rerun",
    is_flag=True,
    help="Run the selected jobs (--stages/--exclude; default all) and everything after them again, "
    "replacing their results; without it finished jobs are skipped.",
)
@click.option(
    "--executor",
    type=click.Choice(["local", "torchrun", "slurm"]),
    default=None,
    help="How jobs start: local subprocesses, torchrun launches, or Slurm (submitit) "
    "[default: the file's executor.kind].",
)
@click.option("--jobs", type=click.IntRange(min=1), default=None, help="Jobs at a time (local executor), >= 1.")
@click.option(
    "--nproc-per-node",
    type=click.IntRange(min=1),
    default=None,
    help="torchrun processes per training job (torchrun executor only).",
)
def run_command(
    study_file, overrides, out, stages, exclude, dry_run, allow_missing_data, rerun, executor, jobs, nproc_per_node
):
    """Run (or resume) the study in STUDY_FILE: finished jobs are skipped. STUDY_FILE may also
    name a study shipped with the package (paper-60m, olmo2-1b, cpu-overtraining, ...).

    KEY=VALUE arguments change the file's settings for this run, by their path in the file, values
    read as YAML (e.g. finetune.lrs=[1e-4,3e-4] arms[1].rho=0.05 executor.jobs=4); the study
    records them like the file's own values, so a resume repeats them."""
    resume = " ".join(
        ["olmo-sam study run", shlex.quote(study_file), *map(shlex.quote, overrides)]
        + (["--out", shlex.quote(out)] if out else [])
    )
    plan = run_study_command(
        lambda: start_study(
            study_file,
            out=out,
            stages=list(stages),
            exclude=list(exclude),
            dry_run=dry_run,
            rerun=rerun,
            executor=executor,
            jobs=jobs,
            nproc_per_node=nproc_per_node,
            resume_command=resume,
            allow_missing_data=allow_missing_data,
            overrides=overrides,
        ),
        resume,
    )
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
    from .stages import write_report

    try:
        res = write_report(out_dir)
    except FileNotFoundError as e:
        raise click.ClickException(str(e)) from None
    click.echo(f"report: {Path(res['html']).resolve()}")
    click.echo(f"markdown: {Path(res['markdown']).resolve()}")
