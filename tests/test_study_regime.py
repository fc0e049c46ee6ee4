"""The overtrained CPU regime in study files: pretraining seeds x budgets in tokens per parameter
expand into bases with their metadata, tokens per parameter are counted the recipes' way, and the
demo study files meet issue 11's constraints (computed from the files and the model preset)."""

from __future__ import annotations

import json
import math

import pytest
from olmo_core.data import TokenizerConfig

from olmo_sam import paper
from olmo_sam.demo import demo_study_path
from olmo_sam.models import model_config, param_counts
from olmo_sam.recipes.pretrain import PretrainSpec, build_pretrain
from olmo_sam.seeds import DATA_SEED, INIT_SEED
from olmo_sam.study.bases import BaseRecord
from olmo_sam.study.plan import build_plan
from olmo_sam.study.spec import ConfigError, load_study, parse_study

GRID = {
    "name": "regime",
    "data": {"demo": {"vocab_size": 384}},
    "pretrain": {"size": "micro", "lr": 3e-3, "seeds": [0, 1, 2], "budgets_tpp": [10, 100]},
    "arms": [
        {"name": "adamw", "optimizer": "adamw", "schedule": "cosine"},
        {"name": "sam", "optimizer": "sam", "schedule": "cosine", "rho": 0.01},
    ],
    "pt_eval": {"max_sequences": 8},
    "probes": {"noise": {"gammas": [0.01], "seeds": [0]}},
    "finetune": {"datasets": ["demo-code"], "lrs": [1e-3, 1e-2]},
}


def _micro_tokenizer(vocab: int = 384) -> TokenizerConfig:
    return TokenizerConfig(vocab_size=vocab, eos_token_id=0, pad_token_id=1)


def test_seeds_and_budgets_expand_into_one_base_per_arm_budget_seed(tmp_path):
    plan = build_plan(parse_study({**GRID, "out_dir": str(tmp_path / "out")}))
    pre = {j.params["unit"]: j for j in plan.jobs if j.stage == "pretrain"}
    expected = {f"{a}@{b}tpp-s{s}" for a in ("adamw", "sam") for b in (10, 100) for s in (0, 1, 2)}
    assert set(pre) == expected
    for unit, job in pre.items():
        arm, rest = unit.split("@")
        tpp, seed = int(rest.split("tpp-s")[0]), int(rest.split("tpp-s")[1])
        assert (job.params["arm"], job.params["seed"], job.params["budget_tpp"]) == (arm, seed, tpp)
        st = job.params["settings"]
        # the seed sets both the init and the data order; the budget is the recipe's tokens_per_param
        assert (st["seed"], st["data_seed"], st["tokens_per_param"]) == (INIT_SEED + seed, DATA_SEED + seed, tpp)
        assert "seeds" not in st and "budgets_tpp" not in st
        assert st.get("rho") == (0.01 if arm == "sam" else None)
        # every later stage has its job per base
        ids = {j.id for j in plan.jobs}
        assert {f"pt_eval/{unit}", f"noise/{unit}", f"finetune/{unit}:demo-code"} <= ids
    analysis = next(j for j in plan.jobs if j.stage == "analysis")
    assert sorted(analysis.params["units"]) == sorted(expected)
    # the study's plain form (study.json) re-plans to the same jobs
    again = build_plan(parse_study(json.loads(json.dumps(plan.study.plain(), default=str))))
    assert [j.id for j in again.jobs] == [j.id for j in plan.jobs]
    assert not (tmp_path / "out").exists()


def test_an_arm_may_have_its_own_budgets_and_one_seed_keeps_plain_names():
    data = {
        **GRID,
        "pretrain": {"size": "micro", "lr": 3e-3, "budgets_tpp": [10, 100]},
        "arms": [
            {"name": "adamw", "optimizer": "adamw"},
            {"name": "wso", "optimizer": "adamw", "schedule": "wso", "budgets_tpp": [800]},
        ],
    }
    units = [j.params["unit"] for j in build_plan(parse_study(data)).jobs if j.stage == "pretrain"]
    assert units == ["adamw@10tpp", "adamw@100tpp", "wso"]  # one budget, one seed: the arm's name
    one = {**GRID, "pretrain": {"size": "micro", "lr": 3e-3, "steps": 5}}
    plan = build_plan(parse_study(one))
    job = next(j for j in plan.jobs if j.stage == "pretrain")
    # no seeds: the study seed, with the recipes' default init and data-order seeds
    assert job.params["unit"] == "adamw" and job.params["settings"]["seed"] == INIT_SEED
    assert job.params["settings"]["data_seed"] == DATA_SEED and job.params["settings"]["steps"] == 5


@pytest.mark.parametrize(
    "pretrain, arm, match",
    [
        ({"seeds": [0, 0]}, {}, r"pretrain\.seeds\[1\]: duplicate entry 0"),
        ({"seeds": [0, 1.5]}, {}, r"pretrain\.seeds\[1\]: expected a whole number, got 1\.5"),
        ({"seeds": []}, {}, r"pretrain\.seeds: the list is empty; give at least one entry"),
        ({"seeds": [0, 1], "seed": 3}, {}, "conflict with 'seeds'"),
        ({"seeds": [0, 1]}, {"data_seed": 3}, "conflict with pretrain.seeds"),
        ({"budgets_tpp": [10, -1]}, {}, r"pretrain\.budgets_tpp\[1\]: must be a number > 0, got -1"),
        ({"budgets_tpp": [10, 10]}, {}, "duplicate"),
        ({"budgets_tpp": [10], "steps": 100}, {}, "conflict with 'budgets_tpp'"),
        ({}, {"budgets_tpp": [10], "budgets": ["1M"]}, "not both"),
        ({}, {"budgets_tpp": [10], "tokens": 1000}, "sets the budget"),
        ({}, {"seeds": [0, 1]}, "study-wide"),
    ],
)
def test_bad_seed_and_budget_grids_fail_at_parse_time(pretrain, arm, match):
    data = {
        **GRID,
        "pretrain": {"size": "micro", "lr": 3e-3, **pretrain},
        "arms": [{"name": "a", "optimizer": "adamw", **arm}],
    }
    with pytest.raises(ConfigError, match=match):
        build_plan(parse_study(data))


def count_from_module(model) -> dict:
    """Parameter counts of a built model, independent of :func:`param_counts`'s arithmetic."""
    total = sum(p.numel() for p in model.parameters())
    emb = sum(p.numel() for n, p in model.named_parameters() if n.startswith("embeddings."))
    return {"total": total, "embedding": emb, "non_embedding": total - emb}


def test_tokens_per_param_counts_total_parameters_of_the_built_model():
    tok = _micro_tokenizer()
    cfg, resolved = build_pretrain(
        PretrainSpec(
            size="micro",
            tokens_per_param=100,
            lr=3e-3,
            batch_size=64,
            seq_len=128,
            tokenizer=tok,
            train_paths=["x.npy"],
            check_paths=False,
        )
    )
    counts = count_from_module(cfg.model.build(init_device="cpu"))  # independent of the config's arithmetic
    assert counts["total"] == resolved["params_total"] == param_counts(model_config("micro", vocab_size=384)).total
    assert counts["non_embedding"] == resolved["params_non_embedding"]
    step = 64 * 128
    assert resolved["tokens"] == math.ceil(100 * counts["total"] / step) * step  # whole steps, rounded up
    assert cfg.trainer.max_duration.value == resolved["tokens"]
    assert resolved["tpp_total"] == pytest.approx(resolved["tokens"] / counts["total"])
    assert resolved["tpp_non_embedding"] == pytest.approx(resolved["tokens"] / counts["non_embedding"])
    assert 100 <= resolved["budget_tpp"] < 100 + step / counts["total"]
    assert resolved["steps"] == resolved["tokens"] // step
    # paper sizes keep Table 6's count: tokens per *nominal* parameter
    _, r60 = build_pretrain(PretrainSpec(size="60M", tokens_per_param=200, train_paths=["x.npy"], check_paths=False))
    assert r60["tokens"] == 200 * paper.PRETRAIN_NOMINAL_PARAMS["60M"] and r60["budget_tpp"] == 200
    assert r60["tpp_total"] < 200  # the 60M model has more than 60M parameters with its embedding


def test_base_metadata_reaches_the_plan_and_analysis(tmp_path):
    plan = build_plan(parse_study({**GRID, "out_dir": str(tmp_path)}))
    job = next(j for j in plan.jobs if j.id == "pretrain/sam@100tpp-s2")
    assert plan.unit_meta("sam@100tpp-s2") == {
        "unit": "sam@100tpp-s2",
        "arm": "sam",
        "seed": 2,
        "budget": None,
        "budget_tpp": 100,
    }
    resolved = {
        "tokens": 4_120_000,
        "steps": 503,
        "params_total": 41_120,
        "params_non_embedding": 28_832,
        "tpp_total": 4_120_000 / 41_120,
        "tpp_non_embedding": 4_120_000 / 28_832,
        "budget_tpp": 100.19,
    }
    data = {"train_tokens": 2_060_000, "description": "demo corpus"}
    meta = BaseRecord.measure(job.params, resolved, data).to_dict()
    assert meta["budget_tpp"] == 100  # the planned budget names the group; tpp_total is the measured one
    assert meta["data_epochs"] == pytest.approx(2.0) and meta["data_source"] == "demo corpus"
    job.mark_done(tmp_path, {"checkpoint": "x", **meta}, 1.0)
    got = plan.unit_meta("sam@100tpp-s2")
    assert got["seed"] == 2 and got["tokens"] == 4_120_000 and got["params_non_embedding"] == 28_832
    assert got["data_epochs"] == pytest.approx(2.0)


def _demo_facts(quick: bool):
    study = load_study(demo_study_path(quick))
    plan = build_plan(study)
    vocab = -(-study.data.demo["vocab_size"] // 128) * 128  # the tokenizer's padded embedding rows
    counts = param_counts(model_config(study.pretrain["size"], vocab_size=vocab))
    bases = [j.params for j in plan.jobs if j.stage == "pretrain"]
    return study, plan, counts, bases


def test_demo_study_meets_the_regime_constraints():
    study, plan, counts, bases = _demo_facts(quick=False)
    assert not study.quick
    assert 10_000 <= counts.total < 100_000  # tens of thousands of parameters
    arms = {a.name: a.settings for a in study.arms}
    assert arms["adamw"]["optimizer"] == "adamw" and arms["adamw"].get("schedule", "cosine") == "cosine"
    assert arms["sam"]["optimizer"] == "sam"
    for arm in arms:
        mine = [b for b in bases if b["arm"] == arm]
        seeds = {b["seed"] for b in mine}
        tpps = sorted({b["budget_tpp"] for b in mine})
        assert len(seeds) >= 3 and tpps[0] <= 10 and tpps[-1] >= 100
        # every budget has every seed
        assert len(mine) == len(seeds) * len(tpps)
    assert len(study.finetune.datasets) >= 1 and len(study.finetune.lrs) >= 6
    assert max(study.finetune.lrs) / min(study.finetune.lrs) >= 100  # wide enough to reach tau
    # the longest budget at the demo's batch: steps x batch x seq_len tokens >= 100 per parameter
    step = study.pretrain["batch_size"] * study.pretrain["seq_len"]
    longest = max(b["budget_tpp"] for b in bases)
    assert math.ceil(longest * counts.total / step) * step / counts.total >= 100


def test_quick_demo_says_it_is_quick():
    study, plan, counts, bases = _demo_facts(quick=True)
    assert study.quick is True
    assert {b["arm"] for b in bases} >= {"adamw", "sam"}
    assert len({b["budget_tpp"] for b in bases}) >= 2


def test_cpu_overtraining_study_plans_the_long_grid(tmp_path):
    from pathlib import Path

    study = load_study(Path(__file__).resolve().parents[1] / "recipes" / "studies" / "cpu-overtraining.yaml")
    study.out_dir = str(tmp_path / "never")
    plan = build_plan(study)
    bases = [j.params for j in plan.jobs if j.stage == "pretrain"]
    arms = {b["arm"] for b in bases}
    assert {"adamw", "adamw-wsd", "sam", "sam-anneal", "wso"} <= arms
    tpps = sorted({b["budget_tpp"] for b in bases})
    assert tpps[0] <= 10 and tpps[-1] >= 800
    seeds = {b["seed"] for b in bases}
    assert len(seeds) >= 5
    # every main arm at every budget and seed; the quarter-corpus control arms at the longest only
    main = [b for b in bases if not b.get("data_fraction")]
    control = [b for b in bases if b.get("data_fraction")]
    main_arms = {b["arm"] for b in main}
    assert len(main) == len(main_arms) * len(tpps) * len(seeds)
    assert control and {b["budget_tpp"] for b in control} == {tpps[-1]} and len(control) == 2 * len(seeds)
    assert len(study.finetune.datasets) == 2
    # the primary hypotheses are registered at the longest budget (and one interaction)
    assert len(study.hypotheses) >= 5
    sweeps = [j for j in plan.jobs if j.kind == "ft_sweep"]
    assert len(sweeps) == len(bases) * 2 and all(j.runs == len(study.finetune.lrs) for j in sweeps)
    assert not (tmp_path / "never").exists()
