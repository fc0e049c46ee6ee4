"""The study's stages, registered once, in pipeline order.

Each stage is one module here (a :class:`~.base.Stage`: its configuration check, plan,
validation, job kinds, analysis section and report section); :data:`PIPELINE` lists them in the
order their jobs run, and everything else -- the plan (:mod:`olmo_sam.study.plan`), ``--dry-run``
(:mod:`olmo_sam.study.validate`), the job runner (:mod:`olmo_sam.study.runner`), the analysis and
the report -- goes through it. Adding a stage is one new module and one line below
(``docs/study.md``, "Adding a stage").
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence

from ...config import ConfigError
from .analysis import AnalysisStage
from .base import ReportSection, Stage, report_sections
from .benchmarks import BenchmarksStage
from .cfs import CfsStage
from .data import DataStage
from .export import ExportStage
from .finetune import FinetuneStage
from .hessian import HessianStage
from .noise import NoiseStage
from .pretrain import PretrainStage
from .pt_eval import PtEvalStage
from .quantize import QuantizeStage
from .report import ReportStage, render_report

__all__ = [
    "PIPELINE",
    "register_stage",
    "stage_names",
    "Stage",
    "ReportSection",
    "get_stage",
    "job_kinds",
    "check_stage_names",
    "write_report",
]

#: every stage, in the order its jobs run (:func:`register_stage` inserts one)
PIPELINE: List[Stage] = [
    DataStage(),
    PretrainStage(),
    ExportStage(),
    PtEvalStage(),
    QuantizeStage(),
    NoiseStage(),
    HessianStage(),
    CfsStage(),
    FinetuneStage(),
    BenchmarksStage(),
    AnalysisStage(),
    ReportStage(),
]


def register_stage(stage: Stage, *, after: str) -> Stage:
    """Add ``stage`` to the pipeline right after the stage named ``after`` (its jobs run after
    that stage's; its summary and report section take the place its ``report.rank`` gives)."""
    names = stage_names()
    if not stage.name or stage.name in names:
        raise ValueError(f"a stage needs a new name; {stage.name!r} is taken or empty (stages: {names})")
    if after not in names:
        raise ValueError(f"after={after!r}: no such stage; the stages are {names}")
    taken = {k for s in PIPELINE for k in s.kinds} | {s.section for s in PIPELINE if s.section}
    clash = sorted(taken & ({*stage.kinds} | ({stage.section} if stage.section else set())))
    if clash:
        raise ValueError(f"stage {stage.name!r}: job kind(s) or section {clash} already belong to another stage")
    PIPELINE.insert(names.index(after) + 1, stage)
    return stage


def stage_names() -> List[str]:
    """The stage names, in pipeline order (``stages:`` in a study file, ``--stages``/``--exclude``)."""
    return [s.name for s in PIPELINE]


def get_stage(name: str) -> Stage:
    return next(s for s in PIPELINE if s.name == name)


def job_kinds() -> Dict[str, Callable[[Any], Dict[str, Any]]]:
    """Job kind -> what a job of that kind runs, over every stage."""
    kinds: Dict[str, Callable[[Any], Dict[str, Any]]] = {}
    for s in PIPELINE:
        for kind, fn in s.kinds.items():
            assert kind not in kinds, f"job kind {kind!r} registered twice"
            kinds[kind] = fn
    return kinds


def write_report(out_dir: str | Path, analysis: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
    """``olmo-sam report OUTDIR``: the report of the study at ``out_dir`` from its analysis summary."""
    return render_report(out_dir, analysis, report_sections(PIPELINE))


def check_stage_names(names: Sequence[str], where: str) -> None:
    known = stage_names()
    bad = [s for s in names if s not in known]
    if bad:
        raise ConfigError(f"{where}: unknown stage(s) {bad}; the stages are {known}")
