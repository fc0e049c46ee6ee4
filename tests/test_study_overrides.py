"""Dotted overrides of a study file (``olmo-sam study run FILE KEY=VALUE ...``): each changes the
value at its path in the file, read as YAML, and the result is checked like the file itself."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from olmo_sam.cli import main
from olmo_sam.config import ConfigError
from olmo_sam.study.plan import build_plan
from olmo_sam.study.spec import apply_overrides, load_study

DEMO = Path(__file__).resolve().parents[1] / "olmo_sam" / "study" / "files" / "demo.yaml"


def test_paths_lists_and_created_sections():
    d = {"arms": [{"name": "a"}, {"name": "b", "rho": 0.01}], "finetune": {"lrs": [1.0]}}
    out = apply_overrides(
        d, ["arms[1].rho=0.05", "arms.0.optimizer=sam", "finetune.lrs=[0.1, 0.2]", "probes.noise.gammas=[0.01]"]
    )
    assert out == {
        "arms": [{"name": "a", "optimizer": "sam"}, {"name": "b", "rho": 0.05}],
        "finetune": {"lrs": [0.1, 0.2]},
        "probes": {"noise": {"gammas": [0.01]}},
    }
    assert d["arms"][1]["rho"] == 0.01  # the input is left as it was
    assert apply_overrides(d, ["finetune.lrs=[1]", "finetune.lrs=[2]"])["finetune"]["lrs"] == [2]  # in order


@pytest.mark.parametrize(
    "override, message",
    [
        ("arms[5].rho=1", r"override arms\[5\]\.rho: arms is a list of 2; no entry \[5\]"),
        ("finetune.lrs.x=1", r"override finetune\.lrs\.x: finetune\.lrs is not a mapping"),
        ("nokey", r"expected KEY=VALUE"),
        ("=3", r"expected KEY=VALUE"),
        ("finetune.lrs=[1e-3", r"override finetune\.lrs, line 1.*not valid YAML"),
        ("arms[x].rho=1", r"'arms\[x\]' is not a key or list index"),
    ],
)
def test_bad_overrides_are_refused_with_their_path(override, message):
    with pytest.raises(ConfigError, match=message):
        apply_overrides({"arms": [{"name": "a"}, {"name": "b"}], "finetune": {"lrs": [1]}}, [override])


def test_overridden_values_are_checked_like_the_file():
    study = load_study(DEMO, ["finetune.lrs=[1e-3, 3e-3]", "pretrain.seeds=[7]", "executor.jobs=1"])
    assert study.finetune.lrs == [1e-3, 3e-3] and study.pretrain_seeds() == [7] and study.executor.jobs == 1
    assert study.plain()["finetune"]["lrs"] == [1e-3, 3e-3]  # recorded like the file's own values
    units = {j.params["unit"] for j in build_plan(study).jobs if j.stage == "pretrain"}
    assert units and all(u.endswith("tpp") for u in units)  # one seed: no -s suffix
    with pytest.raises(ConfigError, match=r"finetune\.lrz: unknown setting; did you mean .lrs.\?"):
        load_study(DEMO, ["finetune.lrz=[1e-3]"])
    with pytest.raises(ConfigError, match=r"finetune\.lrs\[0\]"):
        load_study(DEMO, ["finetune.lrs=[-1]"])
    with pytest.raises(ConfigError, match=r"arms\[1\]\.rhoo: unknown setting"):
        from olmo_sam.study.validate import validate_plan

        validate_plan(build_plan(load_study(DEMO, ["arms[1].rhoo=0.1"])))


def test_study_run_takes_overrides(tmp_path):
    runner = CliRunner()
    args = ["study", "run", str(DEMO), "finetune.lrs=[1e-3]", "pretrain.seeds=[0]", "--dry-run", "--out", str(tmp_path)]
    res = runner.invoke(main, args)
    assert res.exit_code == 0, res.output
    assert "finetune       5 jobs, 4 runs" in res.output  # 4 bases x 1 LR (+ the dataset job)
    res = runner.invoke(main, ["study", "run", str(DEMO), "arms[1].rho=-1", "--dry-run", "--out", str(tmp_path)])
    assert res.exit_code == 1 and res.output.count("\n") == 1 and "arms[1].rho" in res.output, res.output
