"""Stages as plugins: every stage is one module registered once (olmo_sam.study.stages), and a new
stage is one module plus one ``register_stage`` line -- its study-file section, plan, job, analysis
section and report section, with nothing else edited. The stage below is the example of
docs/study.md ("Adding a stage")."""

from __future__ import annotations

import ast
import json
import math
import os
import subprocess
import sys
from dataclasses import dataclass
from importlib.metadata import EntryPoint
from pathlib import Path
from typing import Any, Dict

import pytest
import study_synth

from olmo_sam.config import ConfigError
from olmo_sam.output import write_table
from olmo_sam.study import stages as registry
from olmo_sam.study.context import JobContext
from olmo_sam.study.job import Job
from olmo_sam.study.plan import build_plan
from olmo_sam.study.spec import parse_study
from olmo_sam.study.stages import PIPELINE, job_kinds, register_stage, stage_names, write_report
from olmo_sam.study.stages.analysis import analyse_study
from olmo_sam.study.stages.base import PlanBuilder, ReportSection, Stage

STAGES_DIR = Path(registry.__file__).parent

# -- the example stage (docs/study.md) ------------------------------------------------------------


@dataclass
class GapConfig:
    #: report the gap in nats (false: in % of the training loss)
    nats: bool = True


def job_gap(ctx) -> Dict[str, Any]:
    unit = ctx.job.params["unit"]
    train = ctx.dep(f"pretrain/{unit}")["final_train_loss"]
    val = ctx.dep(f"pt_eval/{unit}")["l_pt"]
    gap = val - train if ctx.job.params["nats"] else 100 * (val - train) / train
    return {"unit": unit, "gap": gap}


class GapStage(Stage):
    """Generalisation gap of every base: validation L_PT minus the last training loss."""

    name = "generalization_gap"
    section = "generalization_gap"
    config = GapConfig
    kinds = {"generalization_gap": job_gap}
    report = ReportSection("generalization_gap", "Generalisation gap", {"rows": "one row per base checkpoint"})

    def plan(self, study, plan: PlanBuilder) -> None:
        nats = study.sections[self.section].nats
        for u in plan.unit_names:
            plan.add(
                Job(
                    f"{self.name}/{u}",
                    self.name,
                    "generalization_gap",
                    params={"unit": u, "nats": nats},
                    deps=[f"pretrain/{u}", f"pt_eval/{u}"],
                )
            )

    def analyse(self, ctx, bases, out: Path) -> Dict[str, Any]:
        rows = []
        for u in bases.by_unit:
            res = ctx.finished(f"{self.name}/{u}")
            if res is not None:
                rows.append({"unit": u, **bases.row(u), "gap": res["gap"]})
        if not rows:
            return {}
        write_table(out, self.name, list(rows[0]), rows)
        findings = bases.compare(
            {r["unit"]: r["gap"] for r in rows}, section=self.name, quantity="l_pt", context="Generalisation gap"
        )
        return {"rows": rows, "findings": findings}


@pytest.fixture
def gap_stage():
    stage = register_stage(GapStage(), after="hessian")
    try:
        yield stage
    finally:
        PIPELINE.remove(stage)


STUDY = {
    "name": "gap",
    "data": {"demo": {}},
    "pretrain": {"size": "micro", "seeds": [0, 1], "budgets_tpp": [10]},
    "arms": [{"name": "adamw", "optimizer": "adamw"}, {"name": "sam", "optimizer": "sam", "rho": 0.01}],
    "probes": {"hessian": {}},
    "finetune": {"datasets": ["demo-code"], "lrs": [1e-3]},
}


# -- the registry ---------------------------------------------------------------------------------


def test_one_module_per_stage_and_every_job_kind_registered_once():
    modules = {p.stem for p in STAGES_DIR.glob("*.py")} - {"__init__", "base", "probe"}
    assert sorted(modules) == sorted(stage_names())
    for name in modules:  # each stage module defines its stage class (and no other stage's)
        tree = ast.parse((STAGES_DIR / f"{name}.py").read_text())
        classes = [n for n in tree.body if isinstance(n, ast.ClassDef) and n.name.endswith("Stage")]
        assert len(classes) == 1, (name, [c.name for c in classes])
    kinds = job_kinds()
    for f in sorted(Path("olmo_sam/study/files").glob("*.yaml")):
        from olmo_sam.study.spec import load_study

        plan = build_plan(load_study(f))
        assert {j.kind for j in plan.jobs} <= set(kinds), f
        for j in plan.jobs:  # a job's kind belongs to its own stage
            assert j.kind in registry.get_stage(j.stage).kinds, (f, j.id)
    ranks = [s.report.rank for s in PIPELINE if s.report]
    assert len(ranks) == len(set(ranks))


def test_register_stage_refuses_clashes():
    with pytest.raises(ValueError, match="taken"):
        register_stage(type("X", (Stage,), {"name": "hessian"})(), after="data")
    with pytest.raises(ValueError, match="no such stage"):
        register_stage(type("X", (Stage,), {"name": "new"})(), after="nope")
    with pytest.raises(ValueError, match="already belong"):
        register_stage(type("X", (Stage,), {"name": "new", "kinds": {"ft_sweep": job_gap}})(), after="data")
    assert "new" not in stage_names()


# -- a stage added by one module ------------------------------------------------------------------


def test_an_added_stage_plans_validates_and_round_trips(gap_stage):
    plain = parse_study(dict(STUDY))
    assert "generalization_gap" not in plain.configured_stages()  # no section: no jobs
    assert not [j for j in build_plan(plain).jobs if j.stage == "generalization_gap"]

    study = parse_study({**STUDY, "generalization_gap": {"nats": False}})
    assert study.sections["generalization_gap"] == GapConfig(nats=False)
    order = [j.stage for j in build_plan(study).jobs]
    gap = [j for j in build_plan(study).jobs if j.stage == "generalization_gap"]
    assert [j.id for j in gap] == [f"generalization_gap/{a}-s{s}" for a in ("adamw", "sam") for s in (0, 1)]
    assert all(
        j.params["nats"] is False and j.deps == [f"pretrain/{j.params['unit']}", f"pt_eval/{j.params['unit']}"]
        for j in gap
    )
    # in pipeline order: after the Hessian jobs, before fine-tuning; the analysis waits for it
    assert order.index("hessian") < order.index("generalization_gap") < order.index("finetune")
    analysis = next(j for j in build_plan(study).jobs if j.id == "analysis")
    assert all(j.id in analysis.deps for j in gap)
    # study.json round trip (the section at the top level, as written)
    again = parse_study(study.plain())
    assert again.plain() == study.plain() and again.plain()["generalization_gap"] == {"nats": False}
    # ... with the module that registers the stage, which the processes reading study.json import
    assert study.plain()["stage_modules"] == {"generalization_gap": __name__}
    assert "stage_modules" not in plain.plain()  # a study of the built-in stages records none
    # the section is read strictly, with its path; the stage can be selected and excluded
    with pytest.raises(ConfigError, match=r"generalization_gap.*natz"):
        parse_study({**STUDY, "generalization_gap": {"natz": True}})
    with pytest.raises(ConfigError, match=r"generalization_gap\.nats"):
        parse_study({**STUDY, "generalization_gap": {"nats": "yes"}})
    only = parse_study(
        {**STUDY, "generalization_gap": {}, "stages": ["data", "pretrain", "pt_eval", "generalization_gap"]}
    )
    assert {j.stage for j in build_plan(only).jobs} == {"data", "pretrain", "pt_eval", "generalization_gap"}
    with pytest.raises(ConfigError, match="the 'generalization_gap' stage needs the 'pt_eval' stage"):
        build_plan(
            parse_study({**STUDY, "generalization_gap": {}, "stages": ["data", "pretrain", "generalization_gap"]})
        )


def test_an_added_stage_runs_and_reaches_the_summary_and_report(gap_stage, tmp_path):
    """Its jobs run through the registry's job kinds on a finished (synthetic) study; the analysis
    adds its section and its findings to the one secondary family; the report shows its table."""
    ctx = study_synth.build(tmp_path)
    plan = ctx.plan
    units = ctx.job.params["units"]
    for u in units:
        job = Job(
            f"generalization_gap/{u}", "generalization_gap", "generalization_gap", params={"unit": u, "nats": True}
        )
        job.deps = [f"pretrain/{u}", f"pt_eval/{u}"]
        deps = {d: plan.by_id()[d].result(tmp_path) for d in job.deps}
        job.mark_done(tmp_path, job_kinds()[job.kind](JobContext(job, plan, deps)), 0.0)
        plan.jobs.append(job)
    res = analyse_study(ctx)
    import json

    summary = json.loads(Path(res["summary"]).read_text())
    assert "generalization_gap" in res["sections"]
    rows = summary["generalization_gap"]["rows"]
    assert len(rows) == len(units)
    for r in rows:  # val L_PT minus the last training loss (5.1 in the synthetic study)
        arm, b, s = r["arm"], int(round(r["budget_tpp"])), r["seed"]
        assert math.isclose(r["gap"], study_synth.l_pt(arm, b, s) - 5.1, rel_tol=1e-12)
    mine = [f for f in summary["findings"] if f["section"] == "generalization_gap"]
    assert len(mine) == 2 and all(math.isclose(f["estimate"], 0.04, abs_tol=1e-9) for f in mine)
    assert summary["multiplicity"]["comparisons"] == len(summary["findings"])
    md = Path(write_report(tmp_path, res)["markdown"]).read_text()
    assert "## Generalisation gap" in md and "One row per base checkpoint." in md
    # its section follows the built-in ones (rank 100)
    assert md.index("## Benchmarks" if "## Benchmarks" in md else "## Sharpness") < md.index("## Generalisation gap")


# -- every process of a study finds the added stage -------------------------------------------------

REPO = Path(__file__).resolve().parents[1]


def _docs_block(first_line: str) -> str:
    """The code block of docs/study.md ("Adding a stage") that starts with ``first_line``."""
    lines = (REPO / "docs" / "study.md").read_text().splitlines()
    for i, line in enumerate(lines):
        if line.strip().startswith(first_line) and lines[i - 1].strip() == "```python":
            indent = len(line) - len(line.lstrip())
            end = next(j for j in range(i, len(lines)) if lines[j].strip() == "```")
            return "\n".join(x[indent:] for x in lines[i:end]) + "\n"
    raise AssertionError(f"no block {first_line!r} in docs/study.md")


RUN_STUDY = {
    "name": "gap-run",
    "data": {"demo": {"vocab_size": 512, "books": ["carroll-alice"]}},
    "pretrain": {"size": "tiny", "steps": 4, "lr": 3e-3, "batch_size": 4, "seq_len": 64, "warmup": 1},
    "arms": [{"name": "adamw", "optimizer": "adamw", "schedule": "cosine"}],
    "pt_eval": {"max_sequences": 8},
    "generalization_gap": {"nats": True},
    "stages": ["data", "pretrain", "pt_eval", "generalization_gap"],
    "executor": {"kind": "local", "jobs": 1},
}


@pytest.mark.slow
def test_an_added_stage_runs_in_the_study_job_processes(tmp_path):
    """docs/study.md's stage module and driver, run as written: each job is a fresh
    ``python -m olmo_sam.study.runner`` process that imports the module study.json records; a
    later ``study status`` in a new process does too, and says how to fix a module it cannot import."""
    import yaml

    plugin = tmp_path / "plugin"
    (plugin / "my_stages").mkdir(parents=True)
    (plugin / "my_stages" / "gap.py").write_text(_docs_block("# my_stages/gap.py"))
    (plugin / "run_study.py").write_text(_docs_block("# run_study.py"))
    (plugin / "gap-study.yaml").write_text(yaml.safe_dump(RUN_STUDY))
    out = tmp_path / "out"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "run_study.py", "study", "run", "gap-study.yaml", "--out", str(out)],
        cwd=plugin, capture_output=True, text=True, env=env, timeout=900,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-4000:]
    recorded = json.loads((out / "study.json").read_text())
    assert recorded["stage_modules"] == {"generalization_gap": "my_stages.gap"}
    done = json.loads((out / "generalization_gap" / "adamw" / "done.json").read_text())
    pt_eval = json.loads((out / "pt_eval" / "adamw" / "done.json").read_text())["result"]
    pretrain = json.loads((out / "pretrain" / "adamw" / "done.json").read_text())["result"]
    assert math.isclose(done["result"]["gap"], pt_eval["l_pt"] - pretrain["final_train_loss"], rel_tol=1e-12)
    assert (out / "generalization_gap" / "adamw" / "log.txt").is_file()  # it ran as a job process

    def status(pythonpath):
        return subprocess.run(
            [sys.executable, "-m", "olmo_sam.cli", "study", "status", str(out)],
            cwd=tmp_path, capture_output=True, text=True, env={**env, "PYTHONPATH": os.pathsep.join(pythonpath)},
            timeout=300,
        )  # fmt: skip

    found = status([*sys.path, str(plugin)])
    assert found.returncode == 0, found.stdout + found.stderr
    assert "done  generalization_gap/adamw" in found.stdout.splitlines()
    lost = status(sys.path)
    assert lost.returncode == 1 and "Traceback" not in lost.stderr
    assert (
        "uses stage 'generalization_gap' from module 'my_stages.gap', which this process cannot import" in lost.stderr
    )
    assert "make it importable (PYTHONPATH or pip install)" in lost.stderr


def test_a_stage_other_processes_cannot_import_is_refused_when_planned():
    main_class = type("GapStage", (GapStage,), {"__module__": "__main__"})
    stage = register_stage(main_class(), after="hessian")
    try:
        with pytest.raises(ConfigError, match=r"defined in the script being run \(__main__\).*into a module"):
            build_plan(parse_study({**STUDY, "generalization_gap": {}}))
    finally:
        PIPELINE.remove(stage)
    script = {"__name__": "__main__", "register_stage": register_stage, "GapStage": GapStage}
    exec("stage = register_stage(GapStage(), after='hessian')", script)  # a driver's own register_stage line
    try:
        with pytest.raises(ConfigError, match=r"registered by the script being run.*bottom of its module"):
            build_plan(parse_study({**STUDY, "generalization_gap": {}}))
    finally:
        PIPELINE.remove(script["stage"])
    assert "generalization_gap" not in stage_names()


def test_a_recorded_stage_module_that_cannot_be_imported_is_one_clear_error():
    where = "runs/gap/study.json"
    with pytest.raises(ConfigError) as e:
        parse_study({**STUDY, "generalization_gap": {}, "stage_modules": {"generalization_gap": "no_such.gap"}}, where)
    assert str(e.value).startswith(
        "the study in runs/gap/study.json uses stage 'generalization_gap' from module 'no_such.gap', "
        "which this process cannot import (ModuleNotFoundError"
    )
    assert str(e.value).endswith("make it importable (PYTHONPATH or pip install)")
    with pytest.raises(ConfigError, match="importing it registered no such stage"):
        parse_study({**STUDY, "stage_modules": {"generalization_gap": "json"}}, where)


def test_stages_and_exclude_name_a_stage_the_study_file_adds(tmp_path):
    """A study file that names its stage's module (``stage_modules``) runs with the plain
    ``olmo-sam`` command, and ``--stages``/``--exclude`` name that stage: they were checked against
    the built-in stages when the command line was read, before the study file had been loaded."""
    import yaml

    (tmp_path / "my_stages").mkdir()
    (tmp_path / "my_stages" / "gap.py").write_text(_docs_block("# my_stages/gap.py"))
    study = {**RUN_STUDY, "stage_modules": {"generalization_gap": "my_stages.gap"}}
    (tmp_path / "gap-study.yaml").write_text(yaml.safe_dump(study))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), *sys.path]), "OMP_NUM_THREADS": "1"}

    def dry_run(*selection):
        cmd = [sys.executable, "-m", "olmo_sam.cli", "study", "run", "gap-study.yaml", "--out", "out", "--dry-run"]
        return subprocess.run(
            [*cmd, "--allow-missing-data", *selection], cwd=tmp_path, capture_output=True, text=True, env=env,
            timeout=300,
        )  # fmt: skip

    only = dry_run("--stages", "data,pretrain,pt_eval,generalization_gap")
    assert only.returncode == 0, only.stdout + only.stderr
    assert "(4 of 4 jobs selected" in only.stdout and "generalization_gap    1 jobs" in only.stdout
    without = dry_run("--exclude", "generalization_gap")
    assert without.returncode == 0, without.stdout + without.stderr
    assert "(3 of 4 jobs selected" in without.stdout
    typo = dry_run("--stages", "generalization_gapp")
    assert typo.returncode == 1 and "Traceback" not in typo.stderr
    assert "--stages: unknown stage(s) ['generalization_gapp']; did you mean 'generalization_gap'?" in typo.stderr


PLUGIN = """
from olmo_sam.study.stages import register_stage
from olmo_sam.study.stages.base import Stage


class PluginStage(Stage):
    name = section = "plugin_stage"


register_stage(PluginStage(), after="data")
"""


def test_installed_plugins_load_from_the_entry_point_group(tmp_path, monkeypatch):
    (tmp_path / "olmo_sam_test_plugin.py").write_text(PLUGIN)
    monkeypatch.syspath_prepend(str(tmp_path))
    group = registry.ENTRY_POINT_GROUP
    installed = [EntryPoint(name="plugin", value="olmo_sam_test_plugin", group=group)]
    monkeypatch.setattr(
        "importlib.metadata.entry_points", lambda group: installed if group == registry.ENTRY_POINT_GROUP else []
    )
    monkeypatch.setattr(registry, "_plugins", None)  # as in a new process
    try:
        assert "plugin_stage" in stage_names()  # loaded when the registry is first used
        assert stage_names().count("plugin_stage") == 1  # once
        assert registry.stage_modules(["plugin_stage"]) == {"plugin_stage": "olmo_sam_test_plugin"}
    finally:
        PIPELINE[:] = [s for s in PIPELINE if s.name != "plugin_stage"]
        sys.modules.pop("olmo_sam_test_plugin", None)
    broken = EntryPoint(name="gap", value="no_such_plugin.gap", group=group)
    with pytest.raises(ConfigError) as e:
        registry.load_plugins([broken])
    assert str(e.value).startswith(
        "stage plugin 'gap' (entry point gap = 'no_such_plugin.gap' in group 'olmo_sam.stages') failed to load: "
        "ModuleNotFoundError"
    )
    assert "\n" not in str(e.value)
