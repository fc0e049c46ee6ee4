"""What a study stage is: the :class:`Stage` every stage module subclasses.

A stage owns one step of the paper's workflow end to end ([SAM-PT] Sec 3, App C), in one module
under ``olmo_sam/study/stages/``:

* ``section`` and ``config`` -- the top-level study-file section it owns, if any, and the dataclass
  that section is read into (unknown keys and wrong types refused with their path; a ``validate()``
  method of the dataclass checks values), found in ``study.sections[section]``;
* ``configured(study)`` -- whether the study file asks for it (by default: its section is present);
* ``plan(study, plan)`` -- the jobs it adds (ids, parameters, dependencies) to a :class:`PlanBuilder`;
* ``validate(study, job, data)`` -- what ``--dry-run`` builds of one job without running it (errors
  name the study-file field);
* ``kinds`` -- job kind -> the function a job of that kind runs (a ``JobContext`` in, a JSON-safe
  result out: the job's ``done.json``);
* ``analyse(ctx, bases, out)`` -- its section of ``analysis/summary.json`` (tables, figures, findings);
* ``report`` -- how the report shows that section (:class:`ReportSection`).

Stage modules import nothing from the study's upper layers (the spec, the plan, the runner): a
study's :class:`~olmo_sam.study.spec.StudySpec`, its ``JobContext`` and its ``BaseSet`` reach
them as arguments. The registry (:mod:`olmo_sam.study.stages`) lists them in pipeline order.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional, Set

from ..job import Job

__all__ = [
    "Stage",
    "ReportSection",
    "PlanBuilder",
    "report_sections",
    "data_of",
    "unit_checkpoint",
    "load_json",
    "field_in",
    "in_file_words",
    "PLACEHOLDER_TOKENS",
    "PLACEHOLDER_BASE",
    "PLACEHOLDER_FT",
]

#: a job's work: its ``JobContext`` in, a JSON-safe result (its ``done.json``) out
JobFn = Callable[[Any], Dict[str, Any]]


@dataclass(frozen=True)
class ReportSection:
    """How the report shows a stage's section of ``summary.json``."""

    #: the section's key in ``summary.json``
    key: str
    title: str
    #: table key in the section -> what one row is (the table's caption)
    tables: Mapping[str, str] = field(default_factory=dict)
    #: place in the summary and the report (the fine-tuning trade-off, the study's question,
    #: comes right after pretraining)
    rank: int = 100


@dataclass
class PlanBuilder:
    """The jobs planned so far, and the study's pretrained bases (``olmo_sam.study.plan.Unit``)
    every per-base stage plans one job for."""

    units: List[Any]
    jobs: List[Job] = field(default_factory=list)
    #: the stages planned so far whose jobs measure the bases (:attr:`Stage.measures`)
    measuring: Set[str] = field(default_factory=set)

    @property
    def unit_names(self) -> List[str]:
        return [u.name for u in self.units]

    def add(self, job: Job) -> Job:
        self.jobs.append(job)
        return job


class Stage:
    """One stage of a study. Subclasses set ``name`` (and ``kinds``, ``report``) and override
    what they do; the defaults plan nothing, validate nothing and add no summary section."""

    name: str = ""
    kinds: Mapping[str, JobFn] = {}
    report: Optional[ReportSection] = None
    #: the top-level study-file section this stage owns (stages added by :func:`register_stage`;
    #: the built-in stages read the sections :class:`~olmo_sam.study.spec.StudySpec` declares)
    section: Optional[str] = None
    #: the dataclass ``section`` is read into
    config: Optional[type] = None
    #: its jobs measure something of the bases that the analysis reads (the analysis job waits
    #: for them); preparation stages (data, export, mixes) set False
    measures: bool = True

    def configured(self, study) -> bool:
        """Whether ``study`` configures this stage (a stage without configuration has no jobs)."""
        return self.section is not None and self.section in study.sections

    def plan(self, study, plan: PlanBuilder) -> None:
        """Add this stage's jobs to ``plan``."""

    def validate(self, study, job: Job, data: Callable[[], Dict[str, Any]]) -> None:
        """Build what ``job`` would build, with ``data()`` standing in for the data stage's result
        (made on first use: it may read the study's tokenizer); raise ``ConfigError`` naming the
        study-file field of a bad value."""

    def analyse(self, ctx, bases, out: Path) -> Dict[str, Any]:
        """This stage's section of the analysis summary (``findings`` are taken out of it and
        pooled), or ``{}``."""
        return {}


def report_sections(stages: Iterable[Stage]) -> List[ReportSection]:
    """The report sections of ``stages``, in report order."""
    return sorted((s.report for s in stages if s.report is not None), key=lambda r: r.rank)


# -- what jobs read -----------------------------------------------------------------------------


def data_of(ctx) -> Dict[str, Any]:
    """The data stage's result: token files, tokenizer, vocabulary size."""
    return ctx.dep("data")


def unit_checkpoint(ctx, unit: str) -> str:
    """The checkpoint of the pretrained base ``unit``."""
    return ctx.dep(f"pretrain/{unit}")["checkpoint"]


def load_json(path: Optional[str]) -> Any:
    """A result file's JSON, or None when there is none."""
    if not path or not Path(path).exists():
        return None
    return json.loads(Path(path).read_text())


# -- validation in the study file's words -------------------------------------------------------

#: stand-ins for what the data, pretraining and fine-tuning-data jobs will write
PLACEHOLDER_TOKENS = "<token files of the data stage>"
PLACEHOLDER_BASE = "<checkpoint of the pretraining stage>"
PLACEHOLDER_FT = "<prepared fine-tuning dataset>"


def field_in(message: str, keys: Iterable[str]) -> Optional[str]:
    """The setting a builder's message is about: the key (or its ``--flag`` spelling) that
    appears first in the message."""
    best: Optional[tuple] = None
    for k in keys:
        pattern = rf"(?<![\w-])(?:--{re.escape(k.replace('_', '-'))}|{re.escape(k)})(?![\w-])"
        m = re.search(pattern, message)
        if m and (best is None or m.start() < best[0]):
            best = (m.start(), k)
    return best[1] if best else None


def in_file_words(message: str, paths: Dict[str, str]) -> str:
    """A builder's message in the study file's words: ``--batch-size`` becomes the place of
    ``batch_size`` in the file (``pretrain.batch_size``)."""
    for key, path in paths.items():
        message = re.sub(rf"(?<![\w-])--{re.escape(key.replace('_', '-'))}(?![\w-])", path, message)
    return re.sub(r"(?<![\w-])--([a-z][a-z-]*)", lambda m: m.group(1).replace("-", "_"), message)
