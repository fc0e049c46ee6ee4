"""Turn a study into jobs: ids, stages, dependencies, parameters, and where results go.

A *unit* is one pretrained checkpoint: an arm at one budget and pretraining seed (``adamw``;
``adamw@24B`` when an arm has several token budgets; ``adamw@100tpp-s1`` with budgets in tokens
per parameter and several seeds: :func:`expand_units`). Every later stage has one job per unit
(and per fine-tuning dataset). A job is finished when its ``done.json`` exists; it holds the job's result,
which dependent jobs read.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

from ..output import atomic_write_text
from ..seeds import DATA_SEED, INIT_SEED
from .spec import (
    MIX_METHODS,
    PRETRAIN_BUDGETS_TPP,
    PRETRAIN_SEEDS,
    STAGES,
    StudyError,
    StudySpec,
    check_stage_names,
)

__all__ = ["Job", "Plan", "Unit", "build_plan", "expand_units", "unit_name"]


SUMMARY_STAGES = ("analysis", "report")


@dataclass
class Job:
    id: str
    stage: str
    kind: str
    params: Dict[str, Any] = field(default_factory=dict)
    deps: List[str] = field(default_factory=list)
    #: a training job: launched under torchrun by the torchrun/slurm executors
    distributed: bool = False
    #: inner runs (e.g. fine-tuning LRs x methods) -- for dry-run counts
    runs: int = 1

    def dir(self, out: Path) -> Path:
        return out / self.stage / re.sub(r"[^A-Za-z0-9_.@=+-]", "_", self.id.split("/", 1)[-1])

    def done_path(self, out: Path) -> Path:
        return self.dir(out) / "done.json"

    def is_done(self, out: Path) -> bool:
        return self.done_path(out).exists()

    def result(self, out: Path) -> Dict[str, Any]:
        p = self.done_path(out)
        if not p.exists():
            raise StudyError(f"job {self.id} has not finished (no {p})")
        return json.loads(p.read_text())["result"]

    def mark_done(self, out: Path, result: Dict[str, Any], seconds: float, cpu_seconds: Optional[float] = None) -> None:
        payload = {"job": asdict(self), "result": result, "seconds": seconds, "cpu_seconds": cpu_seconds}
        atomic_write_text(self.done_path(out), json.dumps(payload, indent=2, default=str) + "\n")


@dataclass
class Plan:
    study: StudySpec
    jobs: List[Job]

    @property
    def out(self) -> Path:
        return self.study.out

    def by_id(self) -> Dict[str, Job]:
        return {j.id: j for j in self.jobs}

    def select(self, stages: Optional[Sequence[str]] = None, exclude: Sequence[str] = ()) -> List[Job]:
        if stages:
            check_stage_names(stages, "--stages")
        check_stage_names(exclude, "--exclude")
        keep = [j for j in self.jobs if (not stages or j.stage in stages) and j.stage not in exclude]
        ids = {j.id for j in keep}
        index = self.by_id()
        for j in keep:
            if j.stage in SUMMARY_STAGES:
                # analysis and report summarise what exists: an excluded stage is simply absent
                j.deps = [d for d in j.deps if d in ids or index[d].is_done(self.out)]
                continue
            for d in j.deps:
                if d not in ids and not index[d].is_done(self.out):
                    raise StudyError(
                        f"job {j.id} needs {d} (stage '{index[d].stage}'), which is neither "
                        "selected nor finished; include that stage or run it first"
                    )
        return keep

    def unit_meta(self, unit: str) -> Dict[str, Any]:
        """What a pretrained base is: ``arm``, ``seed``, ``budget_tpp`` (planned), and once its
        pretraining job has finished the measured ``tokens``, ``params_total``,
        ``params_non_embedding``, tokens per parameter both ways, ``data_epochs`` and
        ``data_source`` (:func:`olmo_sam.study.jobs.job_pretrain`). Fine-tuning records name
        their base by this unit name (``base_label``)."""
        job = self.by_id().get(f"pretrain/{unit}")
        meta: Dict[str, Any] = {"unit": unit}
        if job is None:  # not a stage of this plan (e.g. ``stages: [analysis, report]``)
            return meta
        meta.update({k: job.params.get(k) for k in UNIT_FIELDS})
        if job.is_done(self.out):
            res = job.result(self.out)
            meta.update({k: res[k] for k in BASE_RESULT_FIELDS if k in res})
        return meta

    def stage_summary(self) -> Dict[str, Dict[str, int]]:
        out: Dict[str, Dict[str, int]] = {}
        for j in self.jobs:
            s = out.setdefault(j.stage, {"jobs": 0, "runs": 0, "done": 0})
            s["jobs"] += 1
            s["runs"] += j.runs
            s["done"] += int(j.is_done(self.out))
        return out


def unit_name(
    arm: str, budget: Optional[Any], n_budgets: int, seed: Optional[int] = None, n_seeds: int = 1, tpp: bool = False
) -> str:
    name = arm if budget is None or n_budgets == 1 else f"{arm}@{budget:g}tpp" if tpp else f"{arm}@{budget}"
    return name if seed is None or n_seeds == 1 else f"{name}-s{seed}"


#: planned fields of a pretrained base (job params of ``pretrain/{unit}``)
UNIT_FIELDS = ("arm", "seed", "budget", "budget_tpp")
#: measured fields of a pretrained base (its pretraining result)
BASE_RESULT_FIELDS = (
    "tokens",
    "params_total",
    "params_non_embedding",
    "tpp_total",
    "tpp_non_embedding",
    "budget_tpp",
    "data_epochs",
    "data_source",
    "steps",
)


@dataclass
class Unit:
    """One pretrained base: an arm at one budget and pretraining seed."""

    name: str
    arm: str
    recipe: str
    #: the recipe's settings (study defaults, then the arm's, then budget and seeds)
    settings: Dict[str, Any]
    seed: int
    budget: Optional[Any] = None
    budget_tpp: Optional[float] = None
    #: the arm's ``data_fraction`` (None: every training token)
    data_fraction: Optional[float] = None


def expand_units(study: StudySpec) -> List[Unit]:
    """Every arm x budget x pretraining seed, in the study file's arm order, then budget, then
    seed (pretraining arms only). Seed ``s`` initialises the model with ``INIT_SEED + s`` and orders the data with
    ``DATA_SEED + s``; a tokens-per-parameter budget becomes the recipe's ``tokens_per_param``."""
    units: List[Unit] = []
    for arm in study.arms:
        # pretrain.seeds expands pretraining arms; mid-training keeps Table 1's seed
        seeds = study.pretrain_seeds() if arm.recipe == "pretrain" else [study.seed]
        defaults = {
            k: v
            for k, v in (study.pretrain if arm.recipe == "pretrain" else study.midtrain).items()
            if k not in (PRETRAIN_SEEDS, PRETRAIN_BUDGETS_TPP)
        }
        tpps = study.arm_budgets_tpp(arm)
        budgets = study.arm_budgets(arm) if tpps == [None] else [None]
        for b in budgets:
            for tpp in tpps:
                for seed in seeds:
                    settings = {**defaults, **arm.settings}
                    if b is not None:
                        settings["tokens"] = b
                    if tpp is not None:
                        settings["tokens_per_param"] = tpp
                    if b is not None or tpp is not None:
                        for k in ("steps", "tokens", "tokens_per_param"):
                            if k != ("tokens" if b is not None else "tokens_per_param"):
                                settings.pop(k, None)
                    if arm.recipe == "pretrain":
                        settings.setdefault("seed", INIT_SEED + seed)
                        settings.setdefault("data_seed", DATA_SEED + seed)
                    n_b, key = (len(tpps), tpp) if tpp is not None else (len(budgets), b)
                    name = unit_name(arm.name, key, n_b, seed, len(seeds), tpp=tpp is not None)
                    units.append(Unit(name, arm.name, arm.recipe, settings, seed, b, tpp, arm.data_fraction))
    names = [u.name for u in units]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise StudyError(f"arms: the bases {dup} would share a name; give the arms distinct names")
    return units


def _ft_runs(study: StudySpec) -> int:
    ft = study.finetune
    assert ft is not None
    if ft.lrs is not None:
        n_lr = len(ft.lrs)
    else:
        from .. import paper

        presets = {
            "table7": paper.FT_LR_GRID_SMALL,
            "table3": paper.FT_LR_GRID_1B,
            "table10": paper.EWC_LR_GRID,
        }
        if ft.preset not in presets:
            raise StudyError(f"finetune.preset must be one of {sorted(presets)}, got {ft.preset!r}")
        n_lr = len(presets[ft.preset])
    return n_lr * len(ft.methods)


def build_plan(study: StudySpec) -> Plan:
    stages = set(study.configured_stages())
    jobs: List[Job] = []

    def add(job: Job) -> Job:
        jobs.append(job)
        return job

    add(Job("data", "data", "data", params={"data": asdict(study.data)}))
    units: List[str] = []
    for unit in expand_units(study):
        u = unit.name
        units.append(u)
        add(
            Job(
                f"pretrain/{u}",
                "pretrain",
                unit.recipe,
                params={
                    "arm": unit.arm,
                    "unit": u,
                    "settings": unit.settings,
                    "seed": unit.seed,
                    "budget": unit.budget,
                    "budget_tpp": unit.budget_tpp,
                    **({"data_fraction": unit.data_fraction} if unit.data_fraction is not None else {}),
                },
                deps=["data"],
                distributed=True,
            )
        )
        add(Job(f"export/{u}", "export", "export", params={"unit": u}, deps=[f"pretrain/{u}", "data"]))
        add(
            Job(
                f"pt_eval/{u}",
                "pt_eval",
                "pt_eval",
                params={"unit": u, "options": study.pt_eval},
                deps=[f"pretrain/{u}", "data"],
            )
        )
        for probe in ("quantize", "noise", "hessian"):
            opts = getattr(study.probes, probe)
            if opts is not None and probe != "hessian" and "max_sequences" in study.pt_eval:
                # one validation subset for every PT loss of the study unless a probe says otherwise
                opts = {"max_sequences": study.pt_eval["max_sequences"], **opts}
            if opts is not None:
                add(
                    Job(
                        f"{probe}/{u}",
                        probe,
                        probe,
                        params={"unit": u, "options": opts},
                        deps=[f"pretrain/{u}", "data"],
                    )
                )

    if study.finetune is not None:
        ft = study.finetune
        runs = _ft_runs(study)
        pt_val_default = (
            {"pt_val_max_sequences": study.pt_eval["max_sequences"]} if "max_sequences" in study.pt_eval else {}
        )
        for ds in ft.datasets:
            add(
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
        if study.cfs is not None and not mix_methods:
            raise StudyError(
                "cfs: the section configures the mixes of the fine-tuning methods 'cfs'/'cs'; "
                "add one of them to finetune.methods"
            )
        for u in units:
            for ds in ft.datasets:
                for m in mix_methods:
                    add(
                        Job(
                            f"cfs/{u}:{ds}:{m}",
                            "cfs",
                            "cfs",
                            params={"unit": u, "dataset": ds, "method": m, "options": study.cfs or {}},
                            deps=[f"export/{u}", f"finetune/data:{ds}"],
                        )
                    )
        for u in units:
            for ds in ft.datasets:
                deps = [f"pretrain/{u}", f"finetune/data:{ds}", "data"]
                deps += [f"cfs/{u}:{ds}:{m}" for m in mix_methods]
                add(
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
                            "keep_checkpoints": bool(study.benchmarks.finetuned),
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
    elif study.cfs is not None:
        raise StudyError("cfs: context-free data is used by fine-tuning; add a 'finetune' section")

    if study.benchmarks.offline is not None or study.benchmarks.olmes is not None:
        for u in units:
            add(
                Job(
                    f"benchmarks/{u}",
                    "benchmarks",
                    "benchmarks",
                    params={"unit": u, "offline": study.benchmarks.offline, "olmes": study.benchmarks.olmes},
                    deps=[f"export/{u}"],
                )
            )
            if study.benchmarks.finetuned:
                if study.finetune is None:
                    raise StudyError("benchmarks.finetuned: there is no 'finetune' section to take models from")
                for ds in study.finetune.datasets:
                    add(
                        Job(
                            f"benchmarks/{u}:{ds}",
                            "benchmarks",
                            "benchmarks_ft",
                            params={
                                "unit": u,
                                "dataset": ds,
                                "offline": study.benchmarks.offline,
                                "olmes": study.benchmarks.olmes,
                            },
                            deps=[f"finetune/{u}:{ds}", "data"],
                        )
                    )

    before_analysis = [j.id for j in jobs if j.stage not in ("data", "export", "cfs")]
    add(Job("analysis", "analysis", "analysis", params={"units": units}, deps=before_analysis))
    add(Job("report", "report", "report", params={"units": units}, deps=["analysis"]))

    stage_of = {j.id: j.stage for j in jobs}
    jobs = [j for j in jobs if j.stage in stages]
    kept = {j.id for j in jobs}
    for j in jobs:
        lost = [d for d in j.deps if d not in kept]
        if lost and j.stage not in SUMMARY_STAGES:
            # the stages fit together: every stage finds what it reads (analysis and report summarise what exists)
            raise StudyError(
                f"stages: the '{j.stage}' stage needs the '{stage_of[lost[0]]}' stage (job {j.id} reads {lost[0]}), "
                f"which is not among the study's stages {sorted(stages, key=STAGES.index)}; add it"
            )
        j.deps = [d for d in j.deps if d in kept]
    order = {s: i for i, s in enumerate(STAGES)}
    jobs.sort(key=lambda j: order[j.stage])
    return Plan(study, jobs)
