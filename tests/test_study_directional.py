"""The directional-sharpness stage ([SAM-PT] Sec 4): along the update of the plain fine-tuning run
at the grid's LR nearest 4e-4, Delta^T H Delta / ||Delta||^2 at the base, checked against a
Hessian-vector product taken here with torch's double backward; the forgetting it sits next to is
the sweep's own; the arms are compared per dataset over seeds, in the pooled family."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import pytest
import torch
import yaml
from torch.nn.attention import SDPBackend, sdpa_kernel

from olmo_sam import paper
from olmo_sam.config import ConfigError
from olmo_sam.study.plan import build_plan
from olmo_sam.study.spec import parse_study
from olmo_sam.study.stages.directional import nearest_lr

STUDY = {
    "name": "directional",
    "data": {"demo": {"vocab_size": 512, "books": ["carroll-alice"]}},
    "pretrain": {"size": "tiny", "steps": 6, "lr": 3e-3, "batch_size": 4, "seq_len": 64, "warmup": 1, "seeds": [0, 1]},
    "arms": [
        {"name": "adamw", "optimizer": "adamw", "schedule": "cosine"},
        {"name": "sam", "optimizer": "sam", "schedule": "cosine", "rho": 0.05},
    ],
    "pt_eval": {"max_sequences": 8},
    "finetune": {
        "datasets": ["demo-music"],
        "lrs": [1e-4, 1e-3],
        "common": {"max_steps": 3, "batch_size": 4, "ft_val_max_sequences": 8},
        "prepare": {"max_documents": 60},
    },
    "directional": {"n_sequences": 2},
    "stages": ["data", "pretrain", "finetune", "directional", "analysis", "report"],
    "executor": {"kind": "local", "jobs": 2},
}


def test_the_grid_lr_nearest_the_papers_on_a_log_scale():
    assert paper.HESSIAN_FT_LR == 4e-4
    assert nearest_lr([1e-4, 1e-3], 4e-4) == 1e-3  # |ln 2.5| < |ln 4|
    assert nearest_lr([3e-4, 5e-4, 1e-3], 4e-4) == 5e-4  # ln(5/4) = 0.223 < ln(4/3) = 0.288
    assert nearest_lr([4.0, 1.0], 2.0) == 1.0  # a tie: the lower one


def test_the_stage_needs_plain_fine_tuning_and_checks_its_options(tmp_path):
    study = dict(STUDY, out_dir=str(tmp_path))
    with pytest.raises(ConfigError, match=r"^directional: the stage measures along a plain fine-tuning run"):
        build_plan(parse_study({k: v for k, v in study.items() if k != "finetune"} | {"stages": None}))
    with pytest.raises(ConfigError, match=r"^directional.lr: must be a number > 0, got -0.0004"):
        parse_study(dict(study, directional={"lr": -4e-4}))
    with pytest.raises(ConfigError, match=r"^directional.methd: unknown setting; did you mean 'method'\?"):
        parse_study(dict(study, directional={"methd": "double_backward"}))
    with pytest.raises(ConfigError, match=r"^directional.fd_step: applies to method finite_difference"):
        parse_study(dict(study, directional={"fd_step": 1e-4}))
    plan = build_plan(parse_study(study))
    jobs = [j for j in plan.jobs if j.stage == "directional"]
    assert len(jobs) == 4 and all(j.params["lr"] == 4e-4 for j in jobs)  # 2 arms x 2 seeds x 1 dataset
    assert jobs[0].params["options"] == {"n_sequences": 2, "val_max_sequences": 8}  # pt_eval's subset
    sweeps = [j for j in plan.jobs if j.kind == "ft_sweep"]
    assert all(j.params["keep_checkpoints"] for j in sweeps)  # the stage reads the fine-tuned weights
    plain = build_plan(parse_study({k: v for k, v in study.items() if k != "directional"} | {"stages": None}))
    assert not any(j.params["keep_checkpoints"] for j in plain.jobs if j.kind == "ft_sweep")


def _hvp_along(model, batch, delta):
    """Delta^T H Delta by double backward through the loss (torch.autograd, not the probe's operator)."""
    from olmo_sam.probes.hessian import lm_batch_loss

    params = [p for _, p in model.named_parameters() if p.requires_grad]
    with sdpa_kernel(SDPBackend.MATH):  # (the fused CPU attention kernel has no second derivative)
        loss = lm_batch_loss(model, batch)
        grads = torch.autograd.grad(loss, params, create_graph=True)
        dot = sum((g * d).sum() for g, d in zip(grads, delta))
        hv = torch.autograd.grad(dot, params)
    return float(sum((h * d).sum() for h, d in zip(hv, delta)))


@pytest.mark.slow
def test_directional_sharpness_along_the_fine_tuning_update(tmp_path):
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(STUDY))
    out = tmp_path / "out"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "olmo_sam.cli", "study", "run", str(tmp_path / "s.yaml"), "--out", str(out)],
        capture_output=True, text=True, env=env, timeout=1200,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]

    from olmo_sam.finetune.records import ResultStore
    from olmo_sam.probes.hessian import fixed_batch, parameter_delta
    from olmo_sam.probes.runners import _load_for_hvp, eval_seq_len, model_ref
    from olmo_sam.study.runner import load_plan

    jobs = load_plan(out).by_id()
    data = jobs["data"].result(out)
    unit = "adamw-s1"
    res = jobs[f"directional/{unit}:demo-music"].result(out)
    assert res["lr"] == 1e-3 and res["lr_asked"] == 4e-4  # the grid's LR nearest the paper's
    sweep = ResultStore(jobs[f"finetune/{unit}:demo-music"].result(out)["results"]).records()
    run = next(r for r in sweep if r.lr == 1e-3)
    assert res["run_id"] == run.run_id and res["l_ft"] == run.l_ft
    # the forgetting beside it is the sweep's: the same validation subset, the same loss
    assert res["val_loss_finetuned"] - res["val_loss_base"] == pytest.approx(run.l_pt - run.base_l_pt, abs=1e-5)

    base_ckpt = jobs[f"pretrain/{unit}"].result(out)["checkpoint"]
    base_ref, ft_ref = model_ref(base_ckpt), model_ref(run.extra["checkpoint"])
    base, ft = _load_for_hvp(base_ref, "cpu"), _load_for_hvp(ft_ref, "cpu")
    batch = fixed_batch(data["val"], eval_seq_len(base_ref, None), base_ref.vocab_size, 2, "cpu")
    names = [n for n, p in base.named_parameters() if p.requires_grad]
    delta = parameter_delta(ft, base, names)
    vectors = list(delta.values()) if isinstance(delta, dict) else list(delta)
    sq = float(sum((d * d).sum() for d in vectors))
    assert res["delta_norm"] == pytest.approx(math.sqrt(sq), rel=1e-6) and sq > 0
    assert res["directional_sharpness"] == pytest.approx(_hvp_along(base, batch, vectors) / sq, rel=1e-4)

    summary = json.loads((out / "analysis" / "summary.json").read_text())
    rows = summary["directional"]["rows"]
    assert len(rows) == 4 and {r["arm"] for r in rows} == {"adamw", "sam"}
    (f,) = [f for f in summary["findings"] if f["section"] == "directional"]
    assert f["quantity"] == "directional_sharpness" and f["arms"] == ["sam", "adamw"] and f["n_seeds"] == 2
    kappa = {(r["arm"], r["seed"]): r["directional_sharpness"] for r in rows}
    assert f["estimate"] == pytest.approx(
        sum(kappa[("sam", s)] - kappa[("adamw", s)] for s in (0, 1)) / 2, rel=1e-9
    )  # paired by seed
    assert summary["multiplicity"]["comparisons"] == len(summary["findings"])
    assert (out / "analysis" / "directional.png").stat().st_size > 1000
    md = (out / "report" / "report.md").read_text()
    section = md[md.index("## Directional sharpness along the fine-tuning update ([SAM-PT] Sec 4)") :]
    glossary = section[section.index("*One row per base checkpoint and fine-tuning dataset.") :].split("\n")[0]
    for column in rows[0]:  # every column of its table is explained
        assert f"{column}: " in glossary, column
