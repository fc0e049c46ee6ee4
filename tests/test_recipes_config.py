"""Recipes: every number of [SAM-PT] Tables 1, 4, 5, 6 in the resolved configs; dry runs for all
sizes, budgets and optimizers; overrides; sweeps; mix files; errors before any compute."""

from __future__ import annotations

import json
import math
import re

import pytest
from click.testing import CliRunner
from olmo_core.exceptions import OLMoConfigurationError

from olmo_sam import paper
from olmo_sam.recipes.common import parse_tokens, read_mix_file, run_summary
from olmo_sam.recipes.midtrain import MidtrainSpec, build_midtrain
from olmo_sam.recipes.midtrain import main as midtrain_main
from olmo_sam.recipes.pretrain import PretrainSpec, build_pretrain, sweep_members
from olmo_sam.recipes.pretrain import main as pretrain_main

# Table 4 (architecture, warmup) and Table 5 (budgets), written out here independently of paper.py
TABLE4 = {
    "20M": dict(layers=8, heads=8, d_model=256, warmup=1000),
    "60M": dict(layers=8, heads=8, d_model=528, warmup=2000),
    "150M": dict(layers=12, heads=12, d_model=768, warmup=3000),
}
TABLE5_B = {"20M": [4, 8, 16, 32, 64], "60M": [12, 24, 48, 96, 192], "150M": [15, 30, 60, 120]}
# Table 6: peak LR per size, in the order of the Table 5 budgets
TABLE6 = {
    "20M": [3e-3, 3e-3, 3e-3, 1e-3, 1e-3],
    "60M": [1e-3, 1e-3, 6e-4, 6e-4, 3e-4],
    "150M": [1e-3, 1e-3, 6e-4, 3e-4],
}
CASES = [(s, b, TABLE6[s][i]) for s in TABLE5_B for i, b in enumerate(TABLE5_B[s])]


def _pre(size, **kw):
    return PretrainSpec(size=size, train_paths=["x.npy"], check_paths=False, **kw)


def _dry(cmd, args):
    r = CliRunner().invoke(cmd, [*args, "--dry-run", "--json"])
    assert r.exit_code == 0, r.output
    return json.loads(r.output[r.output.index("{") :])


@pytest.mark.parametrize("size, budget_b, lr", CASES)
def test_tables_4_5_6_in_resolved_config(size, budget_b, lr):
    cfg, resolved = build_pretrain(_pre(size, tokens=int(budget_b * 1e9)))
    d = cfg.as_config_dict()
    m, t4 = d["model"], TABLE4[size]
    assert (m["n_layers"], m["block"]["sequence_mixer"]["n_heads"], m["d_model"]) == (
        t4["layers"],
        t4["heads"],
        t4["d_model"],
    )
    assert m["vocab_size"] == 100352 and d["dataset"]["tokenizer"]["vocab_size"] == 100278
    assert m["block"]["feed_forward"]["activation"] == "silu"  # SwiGLU: silu-gated w1 * w3
    assert m.get("dropout") in (None, 0.0)
    assert d["dataset"]["sequence_length"] == 1024
    assert d["data_loader"]["global_batch_size"] == 256 * 1024
    opt = d["train_module"]["optim"]
    assert (opt["type"], opt["lr"], tuple(opt["betas"]), opt["weight_decay"]) == ("adamw", lr, (0.9, 0.95), 0.1)
    assert d["train_module"]["scheduler"]["warmup"] == t4["warmup"]
    assert d["train_module"]["max_grad_norm"] == 1.0
    assert d["trainer"]["max_duration"] == {
        "value": int(budget_b * 1e9),
        "unit": "tokens",
        "_CLASS_": "olmo_core.train.common.Duration",
    }
    assert "Table 6" in resolved["lr_source"]


@pytest.mark.parametrize("optimizer", ["adamw", "sam"])
def test_table_1_in_midtrain_config(optimizer):
    cfg = build_midtrain(MidtrainSpec(optimizer=optimizer, train_paths=["x.npy"], check_paths=False))
    d = cfg.as_config_dict()
    m = d["model"]
    assert (m["n_layers"], m["block"]["sequence_mixer"]["n_heads"], m["d_model"], m["vocab_size"]) == (
        16,
        16,
        2048,
        100352,
    )
    assert d["dataset"]["tokenizer"]["vocab_size"] == 100278
    assert m["block"]["feed_forward"]["activation"] == "silu" and m.get("dropout") in (None, 0.0)
    assert d["dataset"]["sequence_length"] == 2048 and d["data_loader"]["global_batch_size"] == 1024 * 2048
    assert d["init_seed"] == 42 and d["data_loader"]["seed"] == 42
    opt = d["train_module"]["optim"]
    base = opt["base"] if optimizer == "sam" else opt
    assert (base["lr"], tuple(base["betas"]), base["weight_decay"]) == (7.4487e-5, (0.9, 0.95), 0.1)
    if optimizer == "sam":
        assert opt["type"] == "sam" and opt["rho"] == 0.05
    else:
        assert opt["type"] == "adamw"
    assert d["train_module"]["scheduler"]["type"] == "midtrain" and d["train_module"]["scheduler"]["alpha_f"] == 0.0
    assert d["trainer"]["max_duration"]["value"] == 50_000_000_000
    s = run_summary(cfg)
    assert s["warmup_steps"] == 0
    steps = math.ceil(50e9 / (1024 * 2048))
    assert s["steps"] == steps
    assert s["lr"]["start"] == pytest.approx(7.4487e-5 * (1 - 1 / steps)) and s["lr"]["end"] == 0.0
    assert s["sam_steps"] == (steps if optimizer == "sam" else 0)


@pytest.mark.parametrize("size, budget_b, lr", CASES)
def test_dry_run_every_size_and_budget(size, budget_b, lr):
    out = _dry(pretrain_main, ["--size", size, "--tokens", f"{budget_b}B"])
    s = out["summary"]
    tokens = int(budget_b * 1e9)
    assert s["tokens"] == tokens and s["steps"] == math.ceil(tokens / (256 * 1024))
    assert s["lr"]["peak"] == lr and s["warmup_steps"] == TABLE4[size]["warmup"]
    # cosine with warmup: linear from 0, decays from the end of warmup to 10% of peak
    assert s["lr"]["start"] == pytest.approx(lr / TABLE4[size]["warmup"])
    assert s["lr"]["decay_start_step"] == TABLE4[size]["warmup"] and s["lr"]["end"] == pytest.approx(0.1 * lr)
    p = s["params"]
    assert p["embedding"] == 100352 * TABLE4[size]["d_model"] and p["total"] == p["embedding"] + p["non_embedding"]
    # FLOPs: 6 per non-embedding parameter + causal attention 6*L*d*T, per token (within 0.1%)
    L, d = TABLE4[size]["layers"], TABLE4[size]["d_model"]
    assert s["flops_per_token"] == pytest.approx(6 * p["non_embedding"] + 6 * L * d * 1024, rel=1e-3)
    assert s["total_flops"] == pytest.approx(s["flops_per_token"] * tokens)
    assert s["gpu_hours"] == pytest.approx(s["total_flops"] / (989e12 * 0.4) / 3600)


@pytest.mark.parametrize("optimizer", ["adamw", "sam", "sam-anneal"])
@pytest.mark.parametrize("schedule", ["cosine", "wsd", "wso", "linear"])
def test_dry_run_optimizers_and_schedules(optimizer, schedule):
    args = ["--size", "60M", "--tokens-per-param", "3200", "--optimizer", optimizer, "--schedule", schedule]
    if optimizer == "sam-anneal" and schedule == "wso":
        r = CliRunner().invoke(pretrain_main, [*args, "--dry-run"])
        assert r.exit_code != 0 and "never decays" in r.output
        return
    s = _dry(pretrain_main, args)["summary"]
    steps = math.ceil(192e9 / 262144)
    decay_start = {"cosine": 2000, "linear": 2000, "wsd": steps - round(0.1 * steps), "wso": None}[schedule]
    assert s["lr"]["decay_start_step"] == decay_start
    assert s["lr"]["end"] == pytest.approx(3e-4 * (1.0 if schedule == "wso" else 0.1))
    sam_steps = {"adamw": 0, "sam": steps, "sam-anneal": steps - (decay_start or 0)}[optimizer]
    assert s["sam_steps"] == sam_steps
    assert s["total_flops"] == pytest.approx(s["flops_per_token"] * 262144 * (steps + sam_steps), rel=1e-6)


@pytest.mark.parametrize("optimizer", ["adamw", "sam"])
def test_midtrain_dry_run_allocates_no_weights(optimizer):
    import resource

    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    out = _dry(midtrain_main, ["--optimizer", optimizer])
    assert out["summary"]["params"]["total"] > 1_400_000_000
    grown_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
    assert grown_kib < 1_000_000, "the dry run must not materialise the 1B model (~6 GB in fp32)"
    assert paper.OLMO2_1B_STAGE1_REVISION in out["start"]


def test_wsd_alpha_decay_fraction_and_switch_fraction():
    cfg, _ = build_pretrain(
        _pre("20M", tokens=int(8e9), schedule="wsd", decay_fraction=0.2, alpha=0.0, optimizer="sam-anneal")
    )
    s = run_summary(cfg)
    assert s["lr"]["decay_start_step"] == s["steps"] - round(0.2 * s["steps"]) and s["lr"]["end"] == 0.0
    assert s["sam_steps"] == round(0.2 * s["steps"])
    cfg, _ = build_pretrain(_pre("20M", tokens=int(8e9), optimizer="sam-anneal", sam_start_fraction=0.5))
    assert run_summary(cfg)["sam_steps"] == s["steps"] - round(0.5 * s["steps"])


def test_dotted_overrides():
    cfg, _ = build_pretrain(
        _pre("20M", tokens=int(4e9), optimizer="sam"), ["train_module.optim.rho=0.1", "train_module.optim.base.lr=5e-4"]
    )
    assert cfg.train_module.optim.rho == 0.1 and cfg.train_module.optim.lr == 5e-4
    assert run_summary(cfg)["lr"]["peak"] == 5e-4
    with pytest.raises(OLMoConfigurationError, match="change a config's class"):
        build_pretrain(_pre("20M", tokens=int(4e9)), ["train_module.optim.type=sam"])
    with pytest.raises(OLMoConfigurationError, match=r"did you mean \['rho'\]"):
        build_pretrain(_pre("20M", tokens=int(4e9), optimizer="sam"), ["train_module.optim.rhoo=0.1"])
    with pytest.raises(OLMoConfigurationError, match="has no field 'nope'"):
        build_midtrain(MidtrainSpec(train_paths=["x"], check_paths=False), ["nope.x=1"])
    with pytest.raises(OLMoConfigurationError, match="rho: must be a number >= 0"):  # SAMConfig's own validation runs
        build_pretrain(_pre("20M", tokens=int(4e9), optimizer="sam"), ["train_module.optim.rho=-1"])
    # the peak LR an override sets is checked as --lr is (OLMo-core's warmup asserted on 0; -1 climbed)
    for optimizer, key in (("adamw", "train_module.optim.lr"), ("sam-anneal", "train_module.optim.base.lr")):
        for lr in ("0", "-1"):
            with pytest.raises(OLMoConfigurationError, match=rf"^{key} = {lr}: the peak LR must be > 0"):
                build_pretrain(_pre("20M", tokens=int(4e9), optimizer=optimizer, schedule="wsd"), [f"{key}={lr}"])
    with pytest.raises(OLMoConfigurationError, match="max_grad_norm: must be a number > 0"):
        build_pretrain(_pre("20M", tokens=int(4e9)), ["train_module.max_grad_norm=0"])
    anneal = _pre("20M", tokens=int(4e9), optimizer="sam-anneal", schedule="wsd")
    with pytest.raises(OLMoConfigurationError, match="switch needs the SAM optimizer, but train_module.optim is AdamW"):
        build_pretrain(anneal, ["train_module.optim={type: adamw, lr: 1.0e-3}"])
    with pytest.raises(
        OLMoConfigurationError, match="^the train_module.scheduler override with --optimizer sam-anneal"
    ):
        build_pretrain(anneal, ["train_module.scheduler={type: wso, warmup: 3}"])
    cfg = build_midtrain(
        MidtrainSpec(train_paths=["x"], check_paths=False), ["trainer.callbacks.checkpointer.save_interval=250"]
    )
    assert cfg.trainer.callbacks["checkpointer"].save_interval == 250


def test_sweep_presets():
    base = _pre("60M", tokens=int(192e9))
    tuning = sweep_members("lr-tuning", base, {})
    assert [s.lr for _, s in tuning] == [1e-4, 3e-4, 6e-4, 1e-3, 3e-3, 1e-2]
    assert {(s.optimizer, s.schedule) for _, s in tuning} == {("adamw", "cosine")}
    peak = sweep_members("peak-lr", _pre("20M", tokens_per_param=200), {})
    assert len(peak) == 10 and {(s.size, s.tokens, s.tokens_per_param) for _, s in peak} == {
        ("60M", 192_000_000_000, None)
    }
    assert sorted({s.lr for _, s in peak}) == [1e-4, 3e-4, 6e-4, 1e-3, 3e-3]
    assert {s.schedule for _, s in peak} == {"cosine", "wsd"} and {s.decay_fraction for _, s in peak} == {0.1}
    anneal = sweep_members("anneal-fraction", base, {})
    assert [s.decay_fraction for _, s in anneal] == [0.05, 0.10, 0.15, 0.20]
    assert anneal[0][1].save_folder.endswith("/decay5")
    with pytest.raises(OLMoConfigurationError, match="sets 'lr' itself"):
        sweep_members("lr-tuning", base, {"lr": 1e-3})
    out = _dry(pretrain_main, ["--sweep", "lr-tuning", "--size", "20M", "--tokens", "4B"])
    assert [m["summary"]["lr"]["peak"] for m in out["members"]] == list(paper.LR_TUNING_GRID)
    r = CliRunner().invoke(pretrain_main, ["--sweep", "peak-lr", "--data", "x.npy", "--out", "r"])
    assert r.exit_code != 0 and "launch one per job with --member" in r.output


@pytest.mark.parametrize(
    "args, match",
    [
        (["--size", "tiny", "--steps", "5", "--lr", "1e-3"], "takes its vocabulary from the data"),
        (["--size", "150M", "--tokens", "240B"], "not in Table 6"),
        (["--size", "20M", "--tokens", "5B"], r"250 tokens per parameter.*give the peak LR with --lr"),
        (["--size", "20M"], "exactly one of --tokens, --tokens-per-param, --steps"),
        (["--size", "20M", "--tokens", "4B", "--steps", "3"], "exactly one of"),
        (["--size", "20M", "--tokens", "4B", "--dp", "ddp"], "needs several processes"),
        (["--size", "20M", "--tokens", "lots"], "cannot read token count"),
        (["--size", "20M", "--tokens", "4B", "--schedule", "wso", "--alpha", "0.1"], "does not apply"),
    ],
)
def test_bad_pretrain_flags(args, match):
    r = CliRunner().invoke(pretrain_main, [*args, "--dry-run"])
    assert r.exit_code != 0
    assert re.search(match, r.output), r.output


def test_budget_off_table_works_with_explicit_lr():
    cfg, resolved = build_pretrain(_pre("20M", tokens=int(5e9), lr=2e-3))
    assert cfg.train_module.optim.lr == 2e-3 and resolved["lr_source"] == "--lr"
    with pytest.raises(OLMoConfigurationError, match=r"size: must be one of .*got .7B."):
        build_pretrain(_pre("7B", tokens=int(5e9)))


def test_missing_data_errors_before_compute(tmp_path):
    r = CliRunner().invoke(pretrain_main, ["--size", "20M", "--tokens", "4B", "--out", str(tmp_path)])
    assert r.exit_code != 0 and "--data is required" in r.output
    r = CliRunner().invoke(
        pretrain_main,
        ["--size", "20M", "--tokens", "4B", "--out", str(tmp_path / "r"), "--data", str(tmp_path / "nope.npy")],
    )
    assert r.exit_code != 0 and "not found" in r.output
    assert not (tmp_path / "r").exists()
    r = CliRunner().invoke(midtrain_main, ["--out", str(tmp_path / "m")])
    assert r.exit_code != 0 and "--data-mix is required" in r.output


def test_data_model_tokenizer_mismatch_errors_before_compute(tmp_path, demo_data_small):
    from olmo_sam.train.experiment import validate_experiment

    # paper size (dolma2, vocab 100278) on data tokenized with the 512-token demo BPE
    cfg, _ = build_pretrain(
        PretrainSpec(
            size="20M",
            tokens=int(4e9),
            train_paths=[str(p) for p in demo_data_small.train_paths],
            save_folder=str(tmp_path / "r"),
        )
    )
    with pytest.raises(OLMoConfigurationError, match="was tokenized with .*vocab_size=512.*vocab_size=100278"):
        validate_experiment(cfg)
    r = CliRunner().invoke(
        pretrain_main,
        [
            "--size",
            "20M",
            "--tokens",
            "4B",
            "--data",
            str(demo_data_small.root / "tokens"),
            "--out",
            str(tmp_path / "r2"),
        ],
    )
    assert r.exit_code != 0 and "re-tokenize" in r.output
    assert not (tmp_path / "r2" / "metrics.jsonl").exists()


def test_mix_files(tmp_path):
    mix = tmp_path / "mix.txt"
    mix.write_text(
        "# Dolmino-style mix\n"
        "math,preprocessed/math/{TOKENIZER}/part-0.npy\n"
        "web,preprocessed/web/part-1.npy  # trailing comment\n"
        "\n"
        "/abs/path/part-2.npy\n"
    )
    paths = read_mix_file(mix, data_root="https://olmo-data.org", tokenizer_id="allenai/dolma2-tokenizer")
    assert paths == [
        "https://olmo-data.org/preprocessed/math/allenai/dolma2-tokenizer/part-0.npy",
        "https://olmo-data.org/preprocessed/web/part-1.npy",
        "/abs/path/part-2.npy",
    ]
    assert read_mix_file(mix, include=["web"]) == [f"{tmp_path}/preprocessed/web/part-1.npy"]
    with pytest.raises(OLMoConfigurationError, match="no label"):
        read_mix_file(mix, include=["code"])
    out = _dry(midtrain_main, ["--data-mix", str(mix), "--data-root", "https://olmo-data.org", "--mix-include", "math"])
    assert out["config"]["dataset"]["paths"] == [paths[0]]


def test_parse_tokens():
    assert parse_tokens("192B") == 192 * 10**9 and parse_tokens("1.5T") == 1_500_000_000_000
    assert parse_tokens("50e9") == 50 * 10**9 and parse_tokens("10M") == 10**7 and parse_tokens(4096) == 4096
    for bad in ("-3B", "0.5", "B"):
        with pytest.raises(OLMoConfigurationError):
            parse_tokens(bad)


def test_dry_run_shows_a_token_unit_schedule_in_tokens(tiny_corpus, tmp_path):
    """train_module.scheduler.units=tokens: the dry run printed 'warmup: 200 steps' and step-unit
    LRs, but OLMo-core evaluates the schedule at the tokens seen (200 tokens of warmup here, within
    step 1). The summary now uses the schedule's units; its LRs and SAM steps are the trained run's."""
    from olmo_core.optim.scheduler import SchedulerUnits

    from olmo_sam.train import read_metrics, run_experiment

    spec = PretrainSpec(
        size="tiny", steps=8, lr=3e-3, batch_size=4, seq_len=32, optimizer="sam-anneal", schedule="wsd",
        decay_fraction=0.25, tokenizer=tiny_corpus.tokenizer(), train_paths=[str(tiny_corpus.train)],
        save_folder=str(tmp_path / "run"), eval_interval=0,
    )  # fmt: skip
    cfg, _ = build_pretrain(spec, ["train_module.scheduler.units=tokens", "train_module.scheduler.warmup=200"])
    assert cfg.train_module.scheduler.units == SchedulerUnits.tokens
    s = run_summary(cfg)  # 128 tokens per step, 1024 in all; decay over the last 256 tokens
    assert (s["schedule_units"], s["warmup"], s["warmup_steps"]) == ("tokens", 200, 1)
    assert (s["lr"]["decay_start"], s["lr"]["decay_start_step"], s["sam_steps"]) == (768, 6, 2)
    m = read_metrics(run_experiment(cfg).save_folder)
    lr = {step: m[step]["optim/LR (group 0)"] for step in range(1, 9)}
    assert s["lr"]["start"] == pytest.approx(lr[1]) == pytest.approx(3e-3 * 128 / 200)
    assert s["lr"]["at_decay_start"] == pytest.approx(lr[6]) and s["lr"]["end"] == pytest.approx(lr[8])
    assert sum(m[step]["sam/active"] for step in range(1, 9)) == s["sam_steps"]


def test_dry_run_prints_a_token_unit_schedule_in_tokens(capsys):
    cfg, _ = build_pretrain(_pre("20M", tokens=int(4e9)), ["train_module.scheduler.units=tokens"])
    from olmo_sam.recipes.common import print_dry_run

    print_dry_run(cfg, run_summary(cfg), as_json=False)
    out = capsys.readouterr().out
    assert "warmup: 1,000 tokens = 0 steps (scheduler units: tokens)" in out
    assert re.search(r"decay start 0\.003 at token 1,000 \(step 1\); end 0\.0003", out), out


@pytest.mark.parametrize("main_cmd", ["pretrain", "midtrain"])
def test_the_dry_run_output_loads_as_the_config_it_prints(main_cmd, tmp_path):
    """The dry run's YAML was two documents (config, '---', estimates), which no config loader
    reads; the estimates are now YAML comments, so the output file is the run's config."""
    from olmo_core.script_utils import ExperimentConfig

    from olmo_sam.files import load_config
    from olmo_sam.recipes.midtrain import main as midtrain_main

    cmd, args = {
        "pretrain": (pretrain_main, ["--size", "20M", "--tokens-per-param", "200", "--optimizer", "sam-anneal"]),
        "midtrain": (midtrain_main, ["--optimizer", "sam"]),
    }[main_cmd]
    r = CliRunner().invoke(cmd, [*args, "--dry-run"])
    assert r.exit_code == 0, r.output
    assert "# SAM steps: " in r.stdout and "\n---" not in r.stdout
    (tmp_path / "run.yaml").write_text(r.stdout)
    loaded = load_config(ExperimentConfig, tmp_path / "run.yaml")
    assert loaded.as_config_dict() == _dry(cmd, args)["config"]


def test_sam_anneal_defaults_to_the_papers_wsd_and_warns_when_sam_runs_most_of_a_run():
    """`pretrain --optimizer sam-anneal` took the cosine default, whose decay starts after warmup:
    SAM ran on 99.7% of the steps (not the paper's ~10%, [SAM-PT] Sec 3.5), without a word."""
    steps = math.ceil(192e9 / 262144)
    s = _dry(pretrain_main, ["--size", "60M", "--tokens-per-param", "3200", "--optimizer", "sam-anneal"])["summary"]
    assert s["sam_steps"] == round(0.1 * steps) and s["lr"]["decay_start_step"] == steps - round(0.1 * steps)
    assert PretrainSpec(size="60M", optimizer="sam-anneal").schedule == "wsd"
    assert PretrainSpec(size="60M", optimizer="sam").schedule == "cosine"
    from helpers import logged_warnings

    with logged_warnings("olmo_sam.recipes.pretrain") as records:
        build_pretrain(_pre("60M", tokens=int(192e9), optimizer="sam-anneal", schedule="cosine"))
    assert any("SAM runs on 730,422 of 732,422 steps" in m and "--schedule wsd" in m for m in records), records
    with logged_warnings("olmo_sam.recipes.pretrain") as records:
        build_pretrain(_pre("60M", tokens=int(192e9), optimizer="sam-anneal"))
    assert not records


def test_msam_costs_one_pass_per_step_in_the_estimate():
    """The dry run counted MSAM's steps as two forward/backward passes (twice AdamW's FLOPs);
    MSAM ascends along the optimizer's momentum and takes one pass per step. LookSAM's in-between
    steps take one pass too (its full steps every interval-th step take two)."""
    args = ["--size", "20M", "--tokens-per-param", "200"]
    adamw_run = _dry(pretrain_main, args)["summary"]
    msam = _dry(pretrain_main, [*args, "--optimizer", "sam", "train_module.optim.variant=msam"])["summary"]
    sam = _dry(pretrain_main, [*args, "--optimizer", "sam"])["summary"]
    look = _dry(
        pretrain_main,
        [*args, "--optimizer", "sam", "train_module.optim.variant=looksam", "train_module.optim.interval=5"],
    )["summary"]
    steps, per_token = sam["steps"], sam["flops_per_token"]
    assert msam["sam_steps"] == steps and msam["two_pass_steps"] == 0
    assert msam["total_flops"] == adamw_run["total_flops"] == per_token * sam["tokens"]
    assert sam["total_flops"] == per_token * (sam["tokens"] + steps * 262144)
    assert look["two_pass_steps"] == math.ceil(steps / 5)
    assert look["total_flops"] == per_token * (sam["tokens"] + 262144 * math.ceil(steps / 5))
    r = CliRunner().invoke(pretrain_main, [*args, "--optimizer", "sam", "train_module.optim.variant=msam", "--dry-run"])
    assert f"SAM steps: {steps:,d} of {steps:,d} (one forward/backward each: MSAM)" in r.output


def test_the_dry_run_refuses_what_the_run_would_fail_on(tmp_path):
    """User probe 6: `data_loader.global_batch_size=100` planned 0-sequence steps, and AdamW betas
    [0.9, 1.5] or weight_decay -0.1 passed the dry run (torch refuses them when the optimizer is
    built); a --data path that does not exist passed silently, or (tiny) was blamed on --data missing."""
    base = ["--size", "20M", "--tokens-per-param", "200", "--dry-run"]
    for args, message in [
        (
            ["data_loader.global_batch_size=100"],
            "data_loader.global_batch_size = 100 tokens is not a whole number of 1024-token sequences",
        ),
        (["train_module.rank_microbatch_size=1000"], "train_module.rank_microbatch_size = 1000 tokens"),
        (["train_module.optim.betas=[0.9, 1.5]"], "train_module.optim: Invalid beta parameter at index 1: 1.5"),
        (
            ["--optimizer", "sam", "train_module.optim.base.weight_decay=-0.1"],
            "train_module.optim.base: Invalid weight_decay value: -0.1",
        ),
    ]:
        r = CliRunner().invoke(pretrain_main, [*base, *args])
        assert r.exit_code == 1 and message in r.output and "Traceback" not in r.output, (args, r.output)
    nope = str(tmp_path / "nope")
    r = CliRunner().invoke(pretrain_main, [*base, "--data", nope, "--json"])
    assert r.exit_code == 0 and f"warning: --data/--val {nope} is not found here" in r.stderr
    assert json.loads(r.stdout)["summary"]["steps"] > 0  # (the warning is not in the JSON)
    r = CliRunner().invoke(
        pretrain_main, ["--size", "tiny", "--steps", "5", "--lr", "1e-3", "--dry-run", "--data", nope]
    )
    assert r.exit_code == 1 and f"--data/--val {nope}: not found" in r.output
    # the optimizer check draws nothing from torch's generator (a script that seeds, builds, trains)
    import torch

    torch.manual_seed(0)
    expected = torch.rand(1)
    torch.manual_seed(0)
    build_pretrain(_pre("20M", tokens=int(4e9)))
    assert torch.equal(torch.rand(1), expected)
