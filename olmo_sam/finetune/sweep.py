"""Fine-tuning sweeps: LR grids x base checkpoints x datasets x methods, resumable.

A sweep directory holds::

    results.jsonl      the ResultStore (append-only, one FTRecord per finished result)
    runs/{run_id}/     one run directory per fine-tuning run (:func:`~.engine.run_finetune`)
    cache/             base L_PT, Fisher and replay mixes shared by the runs

Every run has a deterministic id (:attr:`FTConfig.run_id`). A sweep only launches runs whose
records are not all in the store; a run whose worker finished but whose records never reached
the store (the sweep was killed in between) is harvested from its ``records.json`` without
re-training; a run killed mid-training restarts (or resumes from its latest checkpoint) in its
own directory. Records enter the store only from this process, each once, so a killed and
re-run sweep ends complete and without duplicates.

``engine="batched"`` (the default) trains the runs that differ only in their learning rate
together, as chunks of one grid (:mod:`.batched`: each slice equal to its trainer run, the same
run directories and records); runs of methods it does not support train one at a time through
OLMo-core's trainer, as all runs do with ``engine="trainer"``.

Runs execute in ``jobs`` worker processes (each imports the stack once and runs runs one after
another; ``jobs=1`` runs them in the sweep's own process), or as one ``torchrun
--nproc-per-node N`` launch per run on GPU nodes (``python -m olmo_sam.finetune.worker``).
Workers die with the sweep (Linux ``PR_SET_PDEATHSIG``) and hold their run directory's lock
while they live.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from olmo_core.exceptions import OLMoConfigurationError

from .. import paper
from ..output import differences, plain, read_json_or_none, write_json
from ..workers import die_with_parent, output_to
from .batched import ENGINES, grid_units, run_grid
from .data import data_digest
from .engine import METHODS, FTConfig, run_finetune, run_spec
from .records import FTRecord, ResultStore

log = logging.getLogger(__name__)

__all__ = [
    "LR_GRIDS",
    "MIX_METHODS",
    "mix_sweeps",
    "parse_lrs",
    "SweepSpec",
    "expand",
    "worker_command",
    "SweepResult",
    "run_sweep",
    "default_jobs",
]

#: LR grid presets: [SAM-PT] Table 7 (controlled models), Table 3 (OLMo-2-1B), Table 10 (EWC).
LR_GRIDS: Dict[str, Tuple[float, ...]] = {
    "table7": paper.FT_LR_GRID_SMALL,
    "table3": paper.FT_LR_GRID_1B,
    "table10": paper.EWC_LR_GRID,
}
SWEEP_METHODS = METHODS + ("wiseft",)
#: each baseline grid of a sweep (``SweepSpec`` field, ``--<name>`` flag, ``finetune.grids`` key)
#: -> the method it is the grid of
GRID_METHODS = {
    "ewc_lambdas": "ewc",
    "l2_lambdas": "l2init",
    "lora_ranks": "lora",
    "replay_ratios": "replay",
    "wise_alphas": "wiseft",
}


def parse_lrs(text: str) -> List[float]:
    """A preset name (:data:`LR_GRIDS`) or a comma-separated list of learning rates."""
    text = text.strip()
    if text in LR_GRIDS:
        return list(LR_GRIDS[text])
    try:
        lrs = [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise OLMoConfigurationError(
            f"LR grid {text!r} is neither a preset ({sorted(LR_GRIDS)}) nor a comma-separated list of numbers"
        ) from None
    if not lrs:
        raise OLMoConfigurationError("the LR grid is empty; give a preset or at least one learning rate")
    twice = sorted({x for x in lrs if lrs.count(x) > 1})
    if twice:
        raise OLMoConfigurationError(f"the LR grid gives {twice} twice; give each learning rate once")
    return lrs


def table3_budget(data: str | Path) -> int:
    """[SAM-PT] Table 3's token budget for a prepared dataset, by its name."""
    from .data import read_meta

    name = read_meta(data).name
    if name not in paper.FT_TOKEN_BUDGET_1B:
        raise OLMoConfigurationError(
            f"token budget 'table3' is defined for {sorted(paper.FT_TOKEN_BUDGET_1B)}, not for dataset '{name}'"
        )
    return paper.FT_TOKEN_BUDGET_1B[name]


def default_jobs() -> int:
    """Parallel local workers: at most 2, and at most the CPUs this process may use."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - non-Linux
        cpus = os.cpu_count() or 1
    return max(1, min(2, cpus))


@dataclass
class SweepSpec:
    bases: List[str]
    datasets: List[str]
    lrs: List[float]
    methods: List[str] = field(default_factory=lambda: ["ft"])
    base_labels: Optional[List[str]] = None
    ewc_lambdas: Sequence[float] = (paper.EWC_BEST_LAMBDA,)
    l2_lambdas: Sequence[float] = (paper.L2_INIT_PENALTY,)
    lora_ranks: Sequence[int] = (paper.LORA_RANK,)
    replay_ratios: Sequence[float] = (paper.REPLAY_DEFAULT_RATIO,)
    wise_alphas: Sequence[float] = (paper.WISE_FT_ALPHA,)
    #: :class:`FTConfig` fields shared by every run (recipe, evaluation, baseline options)
    common: Dict[str, Any] = field(default_factory=dict)


#: methods realised as a prepared mix trained with plain fine-tuning ([CFS]: context-free
#: samples, contextual samples)
MIX_METHODS = ("cfs", "cs")


def mix_sweeps(spec: SweepSpec, mixes: Dict[str, str]) -> List[SweepSpec]:
    """One sweep per ``method -> mix directory`` (``cfs``/``cs`` mixes built by ``olmo-sam cfs
    mix`` from the single task dataset of ``spec``): plain fine-tuning on the mix for as many
    gradient steps as the task alone ([CFS] Sec 3), recorded as ``method`` on the task's
    learning-forgetting set, over the same bases and LR grid."""
    out = []
    for method, mix in mixes.items():
        if method not in MIX_METHODS:
            raise OLMoConfigurationError(f"a mix is for one of the methods {MIX_METHODS}, got {method!r}")
        if len(spec.datasets) != 1:
            raise OLMoConfigurationError(
                f"a '{method}' mix belongs to one task: give exactly one --data (the task), got {len(spec.datasets)}"
            )
        out.append(
            SweepSpec(
                bases=list(spec.bases),
                datasets=[mix],
                lrs=list(spec.lrs),
                methods=["ft"],
                base_labels=spec.base_labels,
                common={**spec.common, "epoch_data": spec.datasets[0], "record_method": method},
            )
        )
    return out


def expand(spec: SweepSpec, resolve: bool = True) -> List[FTConfig]:
    """Every run of the sweep, resolved and validated, without duplicates, in a fixed order.

    :param resolve: fill defaults from the base checkpoints and datasets (which must exist);
        ``False`` runs only the checks that need no files (a study's plan step)."""
    if not spec.lrs:
        raise OLMoConfigurationError("the LR grid is empty; give a preset (table7, table3, table10) or learning rates")
    if not spec.bases:
        raise OLMoConfigurationError("no base checkpoint given")
    if not spec.datasets:
        raise OLMoConfigurationError("no fine-tuning dataset given")
    for flag, values in (("--base", spec.bases), ("--data", spec.datasets)):
        seen: Dict[str, str] = {}
        for v in values:  # (the same base twice became one, its second label dropped)
            key = str(Path(v).resolve()) if Path(v).exists() else str(v)
            if key in seen:
                raise OLMoConfigurationError(f"{flag} {v} is given twice (also as {seen[key]}); give each once")
            seen[key] = str(v)
    if spec.base_labels is not None and len(spec.base_labels) != len(spec.bases):
        raise OLMoConfigurationError(
            f"{len(spec.base_labels)} base label(s) for {len(spec.bases)} base checkpoint(s); give one per base"
        )
    unknown = sorted(set(spec.methods) - set(SWEEP_METHODS))
    if unknown or not spec.methods:
        raise OLMoConfigurationError(f"unknown or no method(s) {unknown}; choose from {list(SWEEP_METHODS)}")
    for k in ("ewc_lambdas", "l2_lambdas", "lora_ranks", "replay_ratios", "wise_alphas"):
        if not getattr(spec, k):
            raise OLMoConfigurationError(f"'{k}' is empty")
    reserved = {
        "base",
        "data",
        "lr",
        "method",
        "base_label",
        "ewc_lambda",
        "l2_lambda",
        "lora_rank",
        "replay_ratio",
        "wise_alphas",
    }
    clash = sorted(reserved & set(spec.common))
    if clash:
        raise OLMoConfigurationError(f"sweep 'common' options may not set the sweep dimensions {clash}")

    variants: List[Dict[str, Any]] = []
    for m in spec.methods:
        if m == "ft":
            variants.append({"method": "ft"})
        elif m == "wiseft":
            pass
        elif m == "ewc":
            variants += [{"method": "ewc", "ewc_lambda": float(x)} for x in spec.ewc_lambdas]
        elif m == "l2init":
            variants += [{"method": "l2init", "l2_lambda": float(x)} for x in spec.l2_lambdas]
        elif m == "lora":
            variants += [{"method": "lora", "lora_rank": int(x)} for x in spec.lora_ranks]
        elif m == "replay":
            variants += [{"method": "replay", "replay_ratio": float(x)} for x in spec.replay_ratios]
    wise = tuple(float(a) for a in spec.wise_alphas) if "wiseft" in spec.methods else ()
    if wise and not any(v["method"] == "ft" for v in variants):
        variants.insert(0, {"method": "ft"})

    configs: Dict[str, FTConfig] = {}
    labels = spec.base_labels or [None] * len(spec.bases)
    for base, label in zip(spec.bases, labels):
        for data in spec.datasets:
            common = dict(spec.common)
            if common.get("token_budget") == "table3":
                common["token_budget"] = table3_budget(data) if resolve else 1
            for v in variants:
                for lr in spec.lrs:
                    cfg = FTConfig.from_dict(
                        dict(
                            common,
                            base=base,
                            base_label=label,
                            data=data,
                            lr=float(lr),
                            wise_alphas=wise if v["method"] == "ft" else (),
                            **v,
                        )
                    )
                    if not resolve:
                        cfg.check(strict=False)
                        continue
                    cfg = cfg.resolved(strict=False)
                    configs.setdefault(cfg.run_id, cfg)
    return list(configs.values())


def worker_command(spec_path: str | Path, launcher: str = "local", nproc_per_node: int = 1) -> List[str]:
    """The command that runs one fine-tuning run from its spec file."""
    if launcher == "local":
        return [sys.executable, "-m", "olmo_sam.finetune.worker", str(spec_path)]
    if launcher == "torchrun":
        return [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            f"--nproc-per-node={nproc_per_node}",
            "-m",
            "olmo_sam.finetune.worker",
            str(spec_path),
        ]
    raise OLMoConfigurationError(f"launcher must be 'local' or 'torchrun', got {launcher!r}")


@dataclass
class SweepResult:
    total: int
    already_done: int
    harvested: int
    ran: int
    failed: List[Tuple[str, str, str]] = field(default_factory=list)  # (run_id, log file, reason)
    records: List[FTRecord] = field(default_factory=list)


def _harvest(store: ResultStore, done: set, cfg: FTConfig, run_dir: Path) -> bool:
    """Append the records a finished worker left in ``run_dir``; True if the run is complete."""
    rec_path, spec_path = run_dir / "records.json", run_dir / "spec.json"
    if not (rec_path.exists() and spec_path.exists()):
        return False
    try:
        if json.loads(spec_path.read_text()) != run_spec(cfg):  # (another run, or this one on other data)
            return False
        records = [FTRecord.from_dict(d) for d in json.loads(rec_path.read_text())]
    except (json.JSONDecodeError, ValueError, TypeError):
        return False
    got = {r.run_id for r in records}
    if not set(cfg.expected_run_ids()) <= got:
        return False
    for r in records:
        if r.run_id not in done:
            store.append(r)
            done.add(r.run_id)
    return True


def _pool_init() -> None:  # pragma: no cover - runs in the worker process
    die_with_parent()
    os.environ.setdefault("OMP_NUM_THREADS", "1")


def _pool_task(
    engine: str, configs: List[Dict[str, Any]], run_dirs: List[str], cache_dir: str, keep: bool
) -> int:  # pragma: no cover
    """One unit (a run, or a batched grid chunk) in a pool worker, its output going to the first
    run's ``worker.log``."""
    import olmo_sam  # noqa: F401

    with output_to(Path(run_dirs[0]) / "worker.log"):
        return _run_unit(
            engine, [FTConfig.from_dict(c) for c in configs], [Path(d) for d in run_dirs], Path(cache_dir), keep
        )


def _run_unit(engine: str, cfgs: List[FTConfig], run_dirs: List[Path], cache: Path, keep: bool) -> int:
    """One run through the trainer, or one grid chunk through the batched engine."""
    if engine == "trainer":
        (cfg,), (run_dir,) = cfgs, run_dirs
        return len(run_finetune(cfg, run_dir, cache_dir=cache, keep_checkpoint=keep))
    return sum(len(r) for r in run_grid(cfgs, run_dirs, cache_dir=cache, keep_checkpoint=keep))


def _subprocess_task(cmd: List[str], log_path: Path, env: Dict[str, str]) -> int:
    with open(log_path, "ab") as logf:
        proc = subprocess.Popen(
            cmd,
            stdout=logf,
            stderr=subprocess.STDOUT,
            env=env,
            preexec_fn=die_with_parent if sys.platform.startswith("linux") else None,
        )
        return proc.wait()


#: the settings every run of a sweep shares (``SweepSpec.common``), kept in its output directory
SHARED_SETTINGS = "sweep-settings.json"


def check_shared_settings(out_dir: str | Path, common: Dict[str, Any], *, record: bool = True) -> None:
    """Refuse a sweep into ``out_dir`` whose shared settings (budget, batch, recipe: what is not a
    grid) differ from those its earlier runs had: its ``results.jsonl`` would pool runs of both,
    and a frontier would mix them without a word. Grids (bases, datasets, LRs, methods) may grow.
    The first sweep records them (``record``; a dry run only checks)."""
    path = Path(out_dir) / SHARED_SETTINGS
    new = plain(common)
    old = read_json_or_none(path)
    if isinstance(old, dict) and old != new:
        changed = [f"{key}: {a!r} -> {b!r}" for key, a, b in differences(old, new)]
        raise OLMoConfigurationError(
            f"{out_dir} holds a sweep with other shared settings ({'; '.join(changed)}); its results.jsonl would pool "
            "runs of both. Use another --out, or the same settings (the grids of bases, datasets, LRs and methods may grow)"
        )
    if record and old is None:
        write_json(path, new, sort_keys=True)


def stale_runs(records: Sequence[FTRecord], configs: Sequence[FTConfig]) -> Dict[str, FTConfig]:
    """The planned runs (of ``configs``) that ``records`` hold as made on their dataset as it was
    prepared before: the dataset prepared again in the same directory with other settings, or a
    mix rebuilt (its data digest differs). Run id -> the run's config, WiSE-FT records included."""
    made_on = {r.run_id: r.data_digest for r in records}
    digests: Dict[Tuple[str, Optional[str]], str] = {}
    stale: Dict[str, FTConfig] = {}
    for c in configs:
        if made_on.get(c.run_id):
            key = (c.data, c.epoch_data)
            if key not in digests:
                digests[key] = data_digest(*key)
            if made_on[c.run_id] != digests[key]:
                stale.update((rid, c) for rid in c.expected_run_ids())
    return stale


def check_records(store: ResultStore, configs: Sequence[FTConfig]) -> set:
    """Refuse runs that the results already in ``store`` would contradict; returns the done run ids.

    - A base filed under another label than its results: the runs done keep their label (the
      label is not part of a run's id, so they count as done), and results would be filed under
      both.
    - A run done on its dataset as it was prepared before (:func:`stale_runs`): it would count as
      done, and the new runs would be pooled with it."""
    records = store.records()
    filed: Dict[str, str] = {}
    for r in records:
        filed.setdefault(r.base, r.base_label)
    for c in configs:
        old = filed.get(c.base)
        if old is not None and old != c.base_label:
            raise OLMoConfigurationError(
                f"--base {c.base} would be filed under the label {c.base_label!r}, but {store.path} files its results "
                f"under {old!r}: give --base-label {old} for it (the runs done keep their label), or another --out"
            )
    stale = stale_runs(records, configs)
    if stale:
        rid, c = next(iter(stale.items()))
        raise OLMoConfigurationError(
            f"{store.path} holds run {rid} made on {c.data} as it was prepared before (its meta.json has changed "
            "since: prepared again with other settings, or a mix rebuilt); new runs would be pooled with it. Use "
            "another --out, or the data as it was prepared"
        )
    return {r.run_id for r in records}


def run_sweep(
    spec: SweepSpec,
    out_dir: str | Path,
    *,
    jobs: Optional[int] = None,
    launcher: str = "local",
    nproc_per_node: int = 1,
    keep_checkpoints: bool = False,
    progress: bool = True,
    on_progress: Optional[Callable[[int, int], None]] = None,
    engine: str = "batched",
    memory_budget_gb: Optional[float] = None,
    shared_settings: Optional[Dict[str, Any]] = None,
) -> SweepResult:
    """Run every pending run of ``spec`` and return what happened (module docstring).

    ``launcher="local"``: ``jobs`` worker processes (spawned once, each running runs one after
    another); with ``jobs=1`` the runs execute in this process. ``launcher="torchrun"``: one
    ``torchrun --nproc-per-node`` launch per run, ``jobs`` at a time. ``on_progress(done, total)``
    is called once the pending runs are known and after each run ends (done counts earlier runs).
    ``engine``: ``batched`` (LR grids trained together, chunks of at most the slices that fit
    ``memory_budget_gb``, default 4 GiB on CPU and half the GPU's memory; local launcher) or ``trainer`` (module docstring).
    ``shared_settings``: checked against (or recorded as) the output directory's, once the sweep's
    own settings pass (:func:`check_shared_settings`; ``sweep`` gives its ``common`` options).
    """
    import concurrent.futures as cf
    import multiprocessing as mp
    import traceback

    jobs = jobs or default_jobs()
    if jobs < 1:
        raise OLMoConfigurationError(f"jobs must be >= 1, got {jobs}")
    if launcher == "torchrun" and nproc_per_node > 1 and not spec.common.get("dp"):
        raise OLMoConfigurationError(
            f"torchrun with {nproc_per_node} processes per run needs data parallelism: set dp to 'ddp' or 'fsdp' (--dp)"
        )
    if launcher == "local" and nproc_per_node != 1:
        raise OLMoConfigurationError(
            f"--nproc-per-node {nproc_per_node}: the local launcher runs each run in one process and would ignore "
            "it; add --executor torchrun"
        )
    if launcher == "local" and spec.common.get("dp") and int(os.environ.get("WORLD_SIZE", "1")) == 1:
        raise OLMoConfigurationError(
            f"--dp {spec.common['dp']} (dp): data parallelism needs several processes, and the local launcher runs "
            "each run in one; add --executor torchrun --nproc-per-node N (or drop --dp)"
        )
    worker_command("x", launcher, nproc_per_node)  # validates the launcher
    if engine not in ENGINES:
        raise OLMoConfigurationError(f"engine must be one of {list(ENGINES)}, got {engine!r}")
    if engine == "batched" and launcher == "torchrun":
        log.info("the torchrun launcher trains every run through the OLMo-core trainer (engine 'trainer')")
        engine = "trainer"
    out = Path(out_dir).resolve()
    configs = expand(spec)
    if shared_settings is not None:
        check_shared_settings(out, shared_settings)
    store = ResultStore(out / "results.jsonl")
    done = check_records(store, configs)
    result = SweepResult(total=len(configs), already_done=0, harvested=0, ran=0)
    queue: List[FTConfig] = []
    for cfg in configs:
        if set(cfg.expected_run_ids()) <= done:
            result.already_done += 1
        elif _harvest(store, done, cfg, out / "runs" / cfg.run_id):
            result.harvested += 1
        else:
            queue.append(cfg)
    log.info(
        f"Sweep {out}: {len(configs)} runs, {result.already_done} already done, "
        f"{result.harvested} recovered from finished run directories, {len(queue)} to run"
    )
    if on_progress is not None:
        on_progress(len(configs) - len(queue), len(configs))
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", "1")
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in [str(Path(__file__).resolve().parents[2]), env.get("PYTHONPATH", "")] if p
    )
    cache = out / "cache"

    units = (
        grid_units(queue, jobs=jobs, memory_budget_gb=memory_budget_gb)
        if engine == "batched"
        else [("trainer", [c]) for c in queue]
    )
    executor: Optional[cf.Executor] = None
    if queue and launcher == "torchrun":
        executor = cf.ThreadPoolExecutor(max_workers=jobs)
    elif queue and jobs > 1:
        executor = cf.ProcessPoolExecutor(max_workers=jobs, mp_context=mp.get_context("spawn"), initializer=_pool_init)

    def submit(unit_engine: str, unit: List[FTConfig]) -> cf.Future:
        run_dirs = [out / "runs" / c.run_id for c in unit]
        for d in run_dirs:
            d.mkdir(parents=True, exist_ok=True)
        cfg, run_dir = unit[0], run_dirs[0]
        if launcher == "torchrun":
            spec_path = run_dir / "worker.json"
            write_json(
                spec_path,
                dict(config=cfg.to_dict(), out=str(run_dir), cache_dir=str(cache), keep_checkpoint=keep_checkpoints),
                keep_nan=True,
                sort_keys=True,
            )
            cmd = worker_command(spec_path, launcher, nproc_per_node)
            return executor.submit(_subprocess_task, cmd, run_dir / "worker.log", env)  # type: ignore[union-attr]
        if executor is not None:
            return executor.submit(
                _pool_task,
                unit_engine,
                [c.to_dict() for c in unit],
                [str(d) for d in run_dirs],
                str(cache),
                keep_checkpoints,
            )
        fut: cf.Future = cf.Future()
        try:  # jobs=1: in this process
            fut.set_result(_run_unit(unit_engine, unit, run_dirs, cache, keep_checkpoints))
        except Exception as e:  # noqa: BLE001 - one failed run must not stop the sweep
            (run_dir / "error.txt").write_text(traceback.format_exc())
            fut.set_exception(e)
        return fut

    running: Dict[cf.Future, List[FTConfig]] = {}
    pending = len(queue)
    with _progress(progress, len(queue)) as advance:
        try:
            while units or running:
                while units and len(running) < jobs:
                    unit_engine, unit = units.pop(0)
                    running[submit(unit_engine, unit)] = unit
                finished, _ = cf.wait(list(running), return_when=cf.FIRST_COMPLETED)
                for fut in finished:
                    unit = running.pop(fut)
                    error = fut.exception()
                    rc = fut.result() if error is None and launcher == "torchrun" else 0
                    for cfg in unit:
                        run_dir = out / "runs" / cfg.run_id
                        if error is None and rc == 0 and _harvest(store, done, cfg, run_dir):
                            result.ran += 1
                        else:
                            where = out / "runs" / unit[0].run_id / ("error.txt" if executor is None else "worker.log")
                            why = f"{type(error).__name__}: {error}" if error is not None else f"exit code {rc}"
                            result.failed.append((cfg.run_id, str(where), why))
                            log.error(f"run {cfg.run_id} failed ({why}); see {where}")
                        pending -= 1
                        advance()
                        if on_progress is not None:
                            on_progress(len(configs) - pending, len(configs))
        finally:
            if executor is not None:
                executor.shutdown(wait=False, cancel_futures=True)
    wanted = {i for c in configs for i in c.expected_run_ids()}
    result.records = [r for r in store.records() if r.run_id in wanted]
    return result


class _progress:
    """A rich progress bar with ETA over the runs (a no-op when disabled)."""

    def __init__(self, enabled: bool, total: int):
        self.enabled, self.total = enabled and total > 0, total
        self._bar = None

    def __enter__(self):
        if not self.enabled:
            return lambda: None
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        self._bar = Progress(
            TextColumn("fine-tuning runs"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TextColumn("ETA"),
            TimeRemainingColumn(),
        )
        self._bar.__enter__()
        task = self._bar.add_task("runs", total=self.total)
        return lambda: self._bar.advance(task)  # type: ignore[union-attr]

    def __exit__(self, *exc):
        if self._bar is not None:
            self._bar.__exit__(*exc)
        return False
