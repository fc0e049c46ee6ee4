"""The study's stages, registered once, in pipeline order.

Each stage is one module here (a :class:`~.base.Stage`: its configuration check, plan,
validation, job kinds, analysis section and report section); :data:`PIPELINE` lists them in the
order their jobs run, and everything else -- the plan (:mod:`olmo_sam.study.plan`), ``--dry-run``
(:mod:`olmo_sam.study.validate`), the job runner (:mod:`olmo_sam.study.runner`), the analysis and
the report -- goes through it. Adding a stage is one new module and one line below
(``docs/study.md``, "Adding a stage").

A stage that does not ship with olmo-sam is a module that ends with its :func:`register_stage`
line, so importing it registers it. Every process of a study imports it: the process that plans
the study (its driver imports the module, or an installed plugin names it in the
``olmo_sam.stages`` entry-point group, loaded when the registry is first used:
:func:`load_plugins`), and every process that reads the recorded study (a job, ``study status``,
``report``), by the module ``study.json`` records for it (``stage_modules``:
:func:`import_stage_modules`).
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence

from ...config import ConfigError, did_you_mean
from .analysis import AnalysisStage
from .base import ReportSection, Stage, report_sections
from .benchmarks import BenchmarksStage
from .cfs import CfsStage
from .data import DataStage
from .directional import DirectionalStage
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
    "ENTRY_POINT_GROUP",
    "STAGE_MODULES",
    "load_plugins",
    "import_stage_modules",
    "stage_modules",
    "module_roots",
]

#: the entry-point group of installed stage plugins: each entry point names a module that registers
#: its stage(s) when imported (``[project.entry-points."olmo_sam.stages"] gap = "my_stages.gap"``)
ENTRY_POINT_GROUP = "olmo_sam.stages"
#: the key of ``study.json`` (and of a study file) that names the module of each added stage
STAGE_MODULES = "stage_modules"

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
    DirectionalStage(),
    BenchmarksStage(),
    AnalysisStage(),
    ReportStage(),
]

#: the stages shipped with olmo-sam (a study of these only records no modules)
BUILT_IN = frozenset(s.name for s in PIPELINE)
#: stage name -> the module whose import registered it (where :func:`register_stage` was called)
_registered_by: Dict[str, str] = {}
#: the installed plugins: None (not loaded), "loading", "loaded"
_plugins: Optional[str] = None


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
    _registered_by[stage.name] = sys._getframe(1).f_globals.get("__name__") or type(stage).__module__
    return stage


def load_plugins(entry_points: Optional[Iterable[Any]] = None) -> None:
    """Import the modules that installed plugins name in the ``olmo_sam.stages`` entry-point group
    (once; each registers its stages when imported), or those of ``entry_points``
    (``importlib.metadata.EntryPoint`` s). A plugin that fails to load is a ``ConfigError`` naming
    its entry point."""
    global _plugins
    if entry_points is None:
        if _plugins is not None:  # loaded, or being loaded (a plugin's register_stage asks for the names)
            return
        from importlib.metadata import entry_points as installed

        _plugins = "loading"
        try:
            load_plugins(installed(group=ENTRY_POINT_GROUP))
        except BaseException:
            _plugins = None
            raise
        _plugins = "loaded"
        return
    for ep in entry_points:
        try:
            ep.load()
        except Exception as e:
            raise ConfigError(
                f"stage plugin {ep.name!r} (entry point {ep.name} = {ep.value!r} in group {ep.group or ENTRY_POINT_GROUP!r}) "
                f"failed to load: {type(e).__name__}: {e}"
            ) from e


def import_stage_modules(modules: Any, where: str) -> None:
    """Import the module of each stage a recorded study uses (``stage_modules`` of its
    ``study.json``: stage name -> module) that this process has not registered; ``where`` names
    the study in the errors."""
    load_plugins()
    if modules is None:
        return
    if not isinstance(modules, dict) or not all(isinstance(v, str) and v for v in modules.values()):
        raise ConfigError(f"{where}: {STAGE_MODULES}: expected a mapping of stage name -> module, got {modules!r}")
    for name, module in modules.items():
        if name in stage_names():
            continue
        try:
            importlib.import_module(module)
        except Exception as e:
            raise ConfigError(
                f"the study in {where} uses stage {name!r} from module {module!r}, which this process cannot "
                f"import ({type(e).__name__}: {e}): make it importable (PYTHONPATH or pip install)"
            ) from None
        if name not in stage_names():
            raise ConfigError(
                f"the study in {where} uses stage {name!r} from module {module!r}, and importing it registered "
                f"no such stage: end the module with its register_stage(...) line"
            )


def stage_modules(names: Iterable[str]) -> Dict[str, str]:
    """Stage name -> the module that registers it, for the stages among ``names`` that do not ship
    with olmo-sam: what ``study.json`` records, so that every process reading the study imports
    them. A stage defined or registered in the script being run (``__main__``) is refused: no
    other process can import it."""
    out: Dict[str, str] = {}
    for name in names:
        if name in BUILT_IN:
            continue
        stage = get_stage(name)
        module = _registered_by.get(name, type(stage).__module__)
        if type(stage).__module__ == "__main__":
            raise ConfigError(
                f"stage {name!r}: its class {type(stage).__qualname__} is defined in the script being run "
                f"(__main__), which the study's job processes cannot import; move the class and its "
                f"register_stage(...) line into a module (e.g. my_stages/{name}.py) and import that module"
            )
        if module == "__main__":
            raise ConfigError(
                f"stage {name!r} is registered by the script being run (__main__), which the study's job "
                f"processes do not run; move its register_stage(...) line to the bottom of its module "
                f"{type(stage).__module__!r} and import that module"
            )
        out[name] = module
    return out


def module_roots() -> List[str]:
    """The ``sys.path`` entries this process imported the modules of its added stages from (a
    study's job processes get them on ``PYTHONPATH``, so a module next to the driver script is
    found there too)."""
    roots: List[str] = []
    for name, module in _registered_by.items():
        top = sys.modules.get(module.split(".")[0])
        spec = getattr(top, "__spec__", None)
        if name in BUILT_IN or name not in stage_names() or spec is None:
            continue
        if spec.submodule_search_locations:  # a package (or a namespace package: a folder)
            found = [Path(p).parent for p in spec.submodule_search_locations]
        elif spec.has_location and spec.origin:
            found = [Path(spec.origin).parent]
        else:
            found = []
        roots += [str(p.resolve()) for p in found]
    return list(dict.fromkeys(roots))


def stage_names() -> List[str]:
    """The stage names, in pipeline order (``stages:`` in a study file, ``--stages``/``--exclude``)."""
    load_plugins()
    return [s.name for s in PIPELINE]


def get_stage(name: str) -> Stage:
    load_plugins()
    return next(s for s in PIPELINE if s.name == name)


def job_kinds() -> Dict[str, Callable[[Any], Dict[str, Any]]]:
    """Job kind -> what a job of that kind runs, over every stage."""
    load_plugins()
    kinds: Dict[str, Callable[[Any], Dict[str, Any]]] = {}
    for s in PIPELINE:
        for kind, fn in s.kinds.items():
            assert kind not in kinds, f"job kind {kind!r} registered twice"
            kinds[kind] = fn
    return kinds


def write_report(out_dir: str | Path, analysis: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
    """``olmo-sam report OUTDIR``: the report of the study at ``out_dir`` from its analysis summary."""
    from ...files import read_json

    recorded = Path(out_dir) / "study.json"
    if recorded.is_file():  # the report sections of the stages it added
        import_stage_modules(read_json(recorded, what="study record").get(STAGE_MODULES), str(out_dir))
    return render_report(out_dir, analysis, report_sections(PIPELINE))


def check_stage_names(names: Sequence[str], where: str) -> None:
    known = stage_names()
    bad = [s for s in names if s not in known]
    if bad:
        raise ConfigError(f"{where}: unknown stage(s) {bad}; {did_you_mean(bad[0], known)}the stages are {known}")
