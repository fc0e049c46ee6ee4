"""Executors: where study jobs run. No scheduler of our own beyond dependency order.

* ``local``: subprocesses on this machine, ``jobs`` at a time (each training process uses one
  CPU thread by default, so ``jobs`` = cores is right on CPU). With ``reuse_processes: true``
  the jobs run in ``jobs`` long-lived worker processes instead, one after another, so the
  ~5 CPU-seconds of importing torch and OLMo-core are paid once per worker rather than once per
  job (many small jobs: the CPU demo).
* ``torchrun``: as local, but training jobs (pretraining, fine-tuning sweeps) are launched with
  ``torchrun --nproc-per-node N``; one job at a time by default (it uses every GPU).
* ``slurm``: job arrays through submitit, one array per wave of ready jobs; submitit's ``local``
  cluster runs the same path on a machine without Slurm.

All of them call :func:`olmo_sam.study.runner.run_job`, skip jobs whose ``done.json`` exists, and
record timings in the manifest.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional

from ..config import ConfigError
from ..workers import die_with_parent, output_to
from .job import Job
from .manifest import Manifest
from .plan import Plan

__all__ = ["job_command", "job_code", "run_jobs", "JobFailed", "Interrupted"]


class JobFailed(RuntimeError):
    pass


def job_command(job: Job, out: Path, kind: str = "local", nproc_per_node: int = 1) -> List[str]:
    runner = ["-m", "olmo_sam.study.runner", str(out), job.id]
    if kind in ("torchrun", "slurm") and job.distributed and nproc_per_node > 1:
        return [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(nproc_per_node), *runner]
    return [sys.executable, *runner]


def job_code() -> Dict[str, str]:
    """Where job processes import ``olmo_sam`` from: the package that planned the study (this
    process's), never a checkout that happens to be in the current directory."""
    import olmo_sam

    return {"package_path": str(Path(olmo_sam.__file__).resolve().parents[1]), "python": sys.executable}


def _env() -> Dict[str, str]:
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", "1")
    # children import the olmo_sam that planned the study: its root first on PYTHONPATH, and
    # PYTHONSAFEPATH keeps 'python -m' from putting the current directory (which may hold another
    # checkout) in front of it (Python >= 3.11; torchrun's workers inherit both)
    # (and, after the rest, where this process found the modules of the stages it added: a job
    # imports them by the module its study.json records)
    from .stages import module_roots

    given = list(filter(None, [env.get("PYTHONPATH")]))
    env["PYTHONPATH"] = os.pathsep.join([job_code()["package_path"], *given, *module_roots()])
    env["PYTHONSAFEPATH"] = "1"
    return env


@dataclass
class _Running:
    job: Job
    proc: Any  # subprocess.Popen or _PoolRun
    log: Path
    started: float


def _tail(path: Path, n: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return ""


def run_jobs(
    plan: Plan,
    jobs: List[Job],
    *,
    kind: str = "local",
    parallel: int = 1,
    nproc_per_node: int = 1,
    slurm: Optional[dict] = None,
    progress=True,
    reuse_processes: bool = False,
) -> Dict[str, float]:
    """Run ``jobs`` (skipping finished ones) in dependency order; returns seconds per job."""
    out = plan.out
    manifest = Manifest(out)
    pending = [j for j in jobs if not j.is_done(out)]
    for j in jobs:
        if j.is_done(out):
            manifest.record(j.id, "skipped (done)")
    if not pending:
        return {}
    if kind == "slurm":
        return _run_submitit(plan, pending, manifest, slurm or {}, nproc_per_node)
    if kind not in ("local", "torchrun"):
        raise ConfigError(f"unknown executor {kind!r}; choose local, torchrun or slurm")
    pool = _WorkerPool(out, parallel) if reuse_processes and kind == "local" else None
    try:
        return _run_subprocesses(plan, pending, manifest, kind, parallel, nproc_per_node, progress, pool)
    finally:
        if pool is not None:
            pool.close()


class _WorkerPool:
    """``parallel`` spawned worker processes that each import the stack once and then run study
    jobs one after another (:func:`_pool_job`); a job's output goes to its ``log.txt``. Workers
    die with this process (``PR_SET_PDEATHSIG``)."""

    def __init__(self, out: Path, parallel: int):
        import concurrent.futures as cf
        import multiprocessing as mp

        self.out = out
        self.executor = cf.ProcessPoolExecutor(
            max_workers=parallel, mp_context=mp.get_context("spawn"), initializer=_pool_init, initargs=(_env(),)
        )

    def launch(self, job: Job, log: Path) -> "_PoolRun":
        return _PoolRun(self.executor.submit(_pool_job, str(self.out), job.id, str(log)), self)

    def signal_workers(self, sig) -> None:
        for proc in list(getattr(self.executor, "_processes", {}).values()):
            try:
                os.kill(proc.pid, sig)
            except (ProcessLookupError, PermissionError):
                pass

    def close(self) -> None:
        self.executor.shutdown(wait=False, cancel_futures=True)


class _PoolRun:
    """A job running in a pool worker, polled like a ``subprocess.Popen``."""

    def __init__(self, future, pool: "_WorkerPool"):
        self.future, self.pool = future, pool

    def send_signal(self, sig) -> None:
        """Interrupts reach the job through its worker process (the whole pool: one job each)."""
        self.pool.signal_workers(sig)

    def poll(self) -> Optional[int]:
        if not self.future.done():
            return None
        try:
            return int(self.future.result())
        except BaseException:  # noqa: BLE001 - a crashed worker (BrokenProcessPool) fails its job
            return 1


def _pool_init(env: Dict[str, str]) -> None:  # pragma: no cover - runs in the worker
    os.environ.update({k: v for k, v in env.items() if k in ("OMP_NUM_THREADS", "PYTHONPATH")})
    die_with_parent()
    import torch

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    import olmo_sam.study.stages  # noqa: F401  (the stack, imported once per worker)


def _pool_job(out: str, job_id: str, log: str) -> int:  # pragma: no cover - runs in the worker
    """One study job in this worker, its output appended to ``log``; 0 on success."""
    import traceback

    from .runner import run_job

    with output_to(log):
        try:
            run_job(out, job_id)
            return 0
        except BaseException:  # noqa: BLE001 - reported through the log and the exit code
            traceback.print_exc()
            return 1


class Interrupted(KeyboardInterrupt):
    """The study was stopped (Ctrl-C / SIGINT / SIGTERM); ``jobs`` were running."""

    def __init__(self, jobs: List[str]):
        super().__init__(f"interrupted while running {jobs}")
        self.jobs = jobs


def _stop(running: List["_Running"], grace: float = 20.0) -> None:
    """Stop the running jobs: SIGINT (a training job stops at a step), then SIGTERM/SIGKILL."""
    import signal

    for sig, wait in ((signal.SIGINT, grace), (signal.SIGTERM, 5.0), (signal.SIGKILL, 5.0)):
        alive = [r for r in running if r.proc.poll() is None]
        if not alive:
            return
        for r in alive:
            try:
                r.proc.send_signal(sig)
            except (ProcessLookupError, PermissionError):
                pass
        deadline = time.time() + wait
        while time.time() < deadline and any(r.proc.poll() is None for r in alive):
            time.sleep(0.1)


def _run_subprocesses(plan, pending, manifest, kind, parallel, nproc_per_node, progress, pool=None) -> Dict[str, float]:
    from .progress import PROGRESS_FILE, StudyProgress, read_progress

    out = plan.out
    index = plan.by_id()
    todo = list(pending)
    running: List[_Running] = []
    seconds: Dict[str, float] = {}
    failures: List[str] = []
    env = _env()

    def deps_done(j: Job) -> bool:
        return all(index[d].is_done(out) for d in j.deps)

    def job_progress(job_id: str):
        return read_progress(index[job_id].dir(out) / PROGRESS_FILE)

    display = progress if isinstance(progress, StudyProgress) else StudyProgress(len(pending), enabled=bool(progress))
    with display as bar:
        try:
            while todo or running:
                # launch what is ready
                while not failures and len(running) < parallel:
                    ready = next((j for j in todo if deps_done(j)), None)
                    if ready is None:
                        break
                    todo.remove(ready)
                    jdir = ready.dir(out)
                    jdir.mkdir(parents=True, exist_ok=True)
                    (jdir / PROGRESS_FILE).unlink(missing_ok=True)
                    log = jdir / "log.txt"
                    cmd = job_command(ready, out, kind, nproc_per_node)
                    with open(log, "w") as f:
                        f.write(("# in a reused worker process: " if pool else "$ ") + " ".join(cmd) + "\n")
                    if pool is not None:
                        proc = pool.launch(ready, log)
                    else:
                        logf = open(log, "a")
                        # (a study killed with -9 takes its jobs along: a restart would run them twice)
                        linux = sys.platform.startswith("linux")
                        proc = subprocess.Popen(
                            cmd,
                            stdout=logf,
                            stderr=subprocess.STDOUT,
                            env=env,
                            preexec_fn=die_with_parent if linux else None,
                        )
                        logf.close()
                    running.append(_Running(ready, proc, log, time.time()))
                    manifest.record(ready.id, "running", started=time.time())
                    bar.started(ready.id)
                if not running:
                    if todo and not failures:
                        stuck = [j.id for j in todo]
                        raise ConfigError(f"jobs {stuck} wait on dependencies that will never finish")
                    break
                time.sleep(0.2)
                bar.poll(job_progress)
                for r in list(running):
                    rc = r.proc.poll()
                    if rc is None:
                        continue
                    running.remove(r)
                    took = time.time() - r.started
                    if rc == 0 and r.job.is_done(out):
                        seconds[r.job.id] = took
                        manifest.record(r.job.id, "done", seconds=took)
                        bar.finished(r.job.id, took, ok=True)
                    else:
                        failures.append(r.job.id)
                        manifest.record(r.job.id, f"failed (exit {rc})", seconds=took)
                        bar.finished(r.job.id, took, ok=False, why=f"exit {rc}, log {r.log}")
        except KeyboardInterrupt:
            ids = [r.job.id for r in running]
            _stop(running)
            for r in running:
                manifest.record(r.job.id, "interrupted", seconds=time.time() - r.started)
            bar.interrupted(ids)
            raise Interrupted(ids) from None
    if failures:
        details = "\n\n".join(
            f"--- {j} ({index[j].dir(out) / 'log.txt'}):\n{_tail(index[j].dir(out) / 'log.txt')}" for j in failures
        )
        waiting = f"; {len(todo)} job(s) not started" if todo else ""
        raise JobFailed(f"{len(failures)} job(s) failed: {failures}{waiting}\n{details}")
    return seconds


@contextlib.contextmanager
def _planning_package_env():
    """This process's environment, for the duration, as :func:`_env` gives subprocesses."""
    keys = ("PYTHONPATH", "PYTHONSAFEPATH")
    saved = {k: os.environ.get(k) for k in keys}
    env = _env()
    os.environ.update({k: env[k] for k in keys})
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _submitit_entry(out: str, job_id: str) -> None:  # pragma: no cover - runs on the cluster
    from .runner import run_job

    os.environ.setdefault("OMP_NUM_THREADS", "1")
    if int(os.environ.get("SLURM_NTASKS", "1")) > 1:
        # several tasks of one Slurm job = one torch.distributed world (RANK, WORLD_SIZE, ...)
        import submitit

        submitit.helpers.TorchDistributedEnvironment().export(set_cuda_visible_devices=False)
    run_job(out, job_id)


def _run_submitit(plan, pending, manifest, slurm: dict, nproc_per_node: int) -> Dict[str, float]:
    del nproc_per_node  # set tasks_per_node / gpus_per_node in executor.slurm instead
    try:
        import submitit
    except ImportError as e:
        raise ConfigError("the slurm executor needs submitit: pip install 'olmo-sam[study]'") from e
    out = plan.out
    index = plan.by_id()
    opts = dict(slurm)
    cluster = opts.pop("cluster", None)  # "local" runs the same path without Slurm
    executor = submitit.AutoExecutor(folder=str(out / "_submitit"), cluster=cluster)
    if opts:
        executor.update_parameters(**opts)
    todo = list(pending)
    seconds: Dict[str, float] = {}
    while todo:
        wave = [j for j in todo if all(index[d].is_done(out) for d in j.deps)]
        if not wave:
            raise ConfigError(f"jobs {[j.id for j in todo]} wait on dependencies that will never finish")
        t0 = time.time()
        with _planning_package_env(), executor.batch():  # the tasks inherit this environment
            handles = [executor.submit(_submitit_entry, str(out), j.id) for j in wave]
        for j in wave:
            manifest.record(j.id, "submitted", started=t0)
        errors = []
        for j, h in zip(wave, handles):
            try:
                h.result()
                seconds[j.id] = time.time() - t0
                manifest.record(j.id, "done", seconds=seconds[j.id])
            except Exception as e:  # noqa: BLE001 - report every failure of the wave
                errors.append(f"{j.id}: {e}")
                manifest.record(j.id, "failed", seconds=time.time() - t0)
        if errors:
            todo = [j for j in todo if j not in wave]
            waiting = f" ({len(todo)} job(s) not started)" if todo else ""
            raise JobFailed(f"slurm jobs failed{waiting}:\n" + "\n".join(errors))
        todo = [j for j in todo if j not in wave]
    return seconds
