"""Turn a study into jobs: ids, stages, dependencies, parameters, and where results go.

A *unit* is one pretrained checkpoint: an arm at one budget and pretraining seed (``adamw``;
``adamw@24B`` when an arm has several token budgets; ``adamw@100tpp-s1`` with budgets in tokens
per parameter and several seeds: :func:`expand_units`). Every later stage has one job per unit
(and per fine-tuning dataset). A job is finished when its ``done.json`` exists; it holds the job's result,
which dependent jobs read.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

from ..config import ConfigError
from ..seeds import DATA_SEED, INIT_SEED
from .job import Job
from .spec import PRETRAIN_BUDGETS_TPP, PRETRAIN_SEEDS, StudySpec
from .stages import PIPELINE, check_stage_names, stage_names
from .stages.base import PlanBuilder

__all__ = ["Job", "Plan", "Unit", "build_plan", "expand_units", "unit_name"]


SUMMARY_STAGES = ("analysis", "report")


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
            planned = {j.stage for j in self.jobs}
            absent = [s for s in stages if s not in planned]
            if absent:
                raise ConfigError(
                    f"--stages: the study runs no {absent} stage (its stages: "
                    f"{[s for s in stage_names() if s in planned]}); configure it in the study file or leave it out"
                )
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
                    raise ConfigError(
                        f"job {j.id} needs {d} (stage '{index[d].stage}'), which is neither "
                        "selected nor finished; include that stage or run it first"
                    )
        return keep

    def unit_meta(self, unit: str) -> Dict[str, Any]:
        """What a pretrained base is: ``arm``, ``seed``, ``budget_tpp`` (planned), and once its
        pretraining job has finished the measured ``tokens``, ``params_total``,
        ``params_non_embedding``, tokens per parameter both ways, ``data_epochs`` and
        ``data_source`` (:func:`olmo_sam.study.stages.pretrain.job_pretrain`). Fine-tuning records name
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
        raise ConfigError(f"arms: the bases {dup} would share a name; give the arms distinct names")
    return units


def build_plan(study: StudySpec) -> Plan:
    """Every configured stage adds its jobs (:meth:`Stage.plan`), in pipeline order; the study's
    ``stages:`` then selects among them, and a selected stage must find the stages it reads."""
    study.added_stage_modules()  # a stage the job processes cannot import is refused here
    builder = PlanBuilder(units=expand_units(study))
    for stage in PIPELINE:
        if stage.configured(study):
            stage.plan(study, builder)
            builder.measuring.update({stage.name} if stage.measures else set())
    jobs = builder.jobs
    stages = set(study.configured_stages())
    stage_of = {j.id: j.stage for j in jobs}
    jobs = [j for j in jobs if j.stage in stages]
    kept = {j.id for j in jobs}
    for j in jobs:
        lost = [d for d in j.deps if d not in kept]
        if lost and j.stage not in SUMMARY_STAGES:
            # the stages fit together: every stage finds what it reads (analysis and report summarise what exists)
            raise ConfigError(
                f"stages: the '{j.stage}' stage needs the '{stage_of[lost[0]]}' stage (job {j.id} reads {lost[0]}), "
                f"which is not among the study's stages {sorted(stages, key=stage_names().index)}; add it"
            )
        j.deps = [d for d in j.deps if d in kept]
    order = {s: i for i, s in enumerate(stage_names())}
    jobs.sort(key=lambda j: order[j.stage])
    where: Dict[Path, str] = {}
    for j in jobs:  # every job its own directory (ids that differ only in a character Job.dir replaces)
        d = j.dir(Path("."))
        if d in where:
            raise ConfigError(
                f"jobs {where[d]} and {j.id} would share the directory {d}; rename the arm or dataset so they differ"
            )
        where[d] = j.id
    return Plan(study, jobs)
