"""Stages as plugins: every stage is one module registered once (olmo_sam.study.stages), and a new
stage is one module plus one ``register_stage`` line -- its study-file section, plan, job, analysis
section and report section, with nothing else edited. The stage below is the example of
docs/study.md ("Adding a stage")."""

from __future__ import annotations

import ast
import math
from dataclasses import dataclass
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
