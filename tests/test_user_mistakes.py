"""Mistakes a new user made when trying the package (a probe of ~300 bad inputs): each is refused
up front with one line naming the field or flag, where it used to train a wrong model, collide
two jobs' directories, crash with a traceback, or be silently ignored."""

from __future__ import annotations

import copy
import math
import subprocess
import sys

import click
import pytest
from click.testing import CliRunner
from olmo_core.exceptions import OLMoConfigurationError

from olmo_sam.cli import main
from olmo_sam.config import ConfigError, decode
from olmo_sam.finetune.engine import FTConfig
from olmo_sam.finetune.records import FTRecord
from olmo_sam.finetune.sweep import SweepSpec, expand
from olmo_sam.preflight import FLOAT, POSITIVE_FLOAT, SEED
from olmo_sam.probes.quantize import parse_quant_spec
from olmo_sam.probes.runners import QuantizeOptions
from olmo_sam.seeds import DATA_SEED, MAX_SEED
from olmo_sam.study.cli import start_study
from olmo_sam.study.plan import expand_units
from olmo_sam.study.spec import parse_study

STUDY = {
    "name": "u",
    "data": {"demo": {"vocab_size": 384}},
    "pretrain": {"size": "micro", "lr": 3e-3},
    "budgets": ["1M"],
    "arms": [{"name": "adamw", "optimizer": "adamw"}, {"name": "sam", "optimizer": "sam", "rho": 0.01}],
    "finetune": {"datasets": ["demo-code"], "lrs": [1e-3], "common": {"max_steps": 3}},
}


def _study(**changes):
    d = copy.deepcopy(STUDY)
    for key, value in changes.items():
        d[key] = value
    return d


def _refused(data, starts: str, says: str = ""):
    """Refused by ``study run --dry-run`` (which reads, plans and builds every job's config)."""
    import tempfile

    with tempfile.TemporaryDirectory() as out, pytest.raises(ConfigError) as e:
        start_study(parse_study({**data, "out_dir": out + "/o"}), dry_run=True, echo=lambda *a: None)
    msg = str(e.value)
    assert msg.startswith(starts) and says in msg and "\n" not in msg, msg


def _ft(**kw) -> FTConfig:
    return FTConfig(base="b", data="d", lr=1e-3, **kw)


# -- silent wrong results -----------------------------------------------------------------------


@pytest.mark.parametrize("norm", [-1.0, 0.0])
def test_a_clipping_norm_that_is_not_positive_is_refused(norm):
    """A negative norm made every step climb the loss (clip_grads_with_norm_ scales by it); 0 froze
    the weights while the run was recorded as a result."""
    with pytest.raises(ConfigError, match=r"max_grad_norm: must be a number > 0, got .* \(null: no clipping\)"):
        _ft(max_grad_norm=norm)
    assert _ft(max_grad_norm=None).max_grad_norm is None  # no clipping stays possible
    res = CliRunner().invoke(
        main, ["finetune", "run", "--base", "b", "--data", "d", "--lr", "1e-3", "--max-grad-norm=-1", "--out", "o"]
    )
    assert res.exit_code != 0 and "max_grad_norm" in res.output.replace("-", "_"), res.output


@pytest.mark.parametrize(
    "grid, method, field",
    [
        ("ewc_lambdas", "ewc", "ewc_lambda"),
        ("replay_ratios", "replay", "replay_ratio"),
        ("l2_lambdas", "l2init", "l2_lambda"),
    ],
)
def test_a_sweep_dry_run_refuses_bad_grid_values(grid, method, field):
    spec = SweepSpec(bases=["b"], datasets=["d"], lrs=[1e-3], methods=[method], **{grid: [-1.0]})
    with pytest.raises(ConfigError, match=rf"^{field}: must be a number >"):
        expand(spec, resolve=False)


def test_lora_settings_are_checked_like_the_other_options():
    with pytest.raises(ConfigError, match=r"^lora_alpha: must be a number > 0"):
        _ft(method="lora", lora_alpha=-4)
    with pytest.raises(ConfigError, match=r"^lora_dropout: must be a number in \[0, 1\)"):
        _ft(method="lora", lora_dropout=1.0)


@pytest.mark.parametrize("name", ["..", ".", "a b", "a/b", "../../etc", "-rf", "x" * 65])
def test_arm_names_that_would_share_or_escape_directories_are_refused(name):
    data = _study()
    data["arms"][0]["name"] = name
    _refused(data, "arms[0].name: expected a name of letters, digits")


def test_two_jobs_never_share_a_directory(tmp_path):
    a, b = tmp_path / "a b", tmp_path / "a_b"
    data = _study(finetune={"datasets": [str(a), str(b)], "lrs": [1e-3]})
    _refused(data, "jobs finetune/data:", "would share the directory")


# -- tracebacks ---------------------------------------------------------------------------------


def test_a_budget_grid_given_as_strings_is_read_as_numbers():
    data = _study(budgets=None)
    data.pop("budgets")
    data["pretrain"] = {**data["pretrain"], "budgets_tpp": ["4", 16]}
    study = parse_study(data)
    assert study.pretrain["budgets_tpp"] == [4, 16]
    assert [u.name for u in expand_units(study)][:2] == ["adamw@4tpp", "adamw@16tpp"]


def test_seeds_are_bounded_where_they_are_read():
    """OLMo-core's seed_all takes [0, 2^32 - 1]: a larger seed passed the dry run and failed at the start."""
    assert SEED.convert(str(MAX_SEED), None, None) == MAX_SEED
    for bad in ("-1", str(MAX_SEED + 1)):
        with pytest.raises(click.BadParameter):
            SEED.convert(bad, None, None)
    with pytest.raises(ConfigError, match=r"^data_seed: must be a whole number in \[0, 4294967295\]"):
        _ft(data_seed=2**64)
    top = MAX_SEED - DATA_SEED  # a study's seed s seeds its bases with INIT_SEED + s and DATA_SEED + s
    assert parse_study(_study(seed=top)).seed == top
    _refused(_study(seed=top + 1), f"seed: must be a whole number in [0, {top}]")
    _refused(_study(pretrain={**STUDY["pretrain"], "seeds": [0, 2**64]}), "pretrain.seeds[1]:")


def test_the_float_flags_refuse_nan_and_inf():
    for kind in (FLOAT, POSITIVE_FLOAT):
        assert kind.convert("1e-3", None, None) == 1e-3
        for bad in ("nan", "inf", "-inf"):
            with pytest.raises(click.BadParameter, match="not a finite number|not in the range"):
                kind.convert(bad, None, None)


def test_slurm_settings_are_submitits():
    _refused(_study(executor={"kind": "slurm", "slurm": {"partitionn": "gpu"}}), "executor.slurm.partitionn: unknown")
    ok = parse_study(_study(executor={"kind": "slurm", "slurm": {"slurm_partition": "gpu", "timeout_min": 60}}))
    assert ok.executor.slurm["slurm_partition"] == "gpu"


def test_a_record_whose_loss_is_a_string_is_not_a_record():
    d = dict(run_id="r", base="b", base_label="b", dataset="d", method="ft", lr=1e-3, l_pt=1.0, base_l_pt=1.0)
    with pytest.raises(ValueError, match="'l_ft' must be a number, got 'NaN'"):
        FTRecord.from_dict({**d, "l_ft": "NaN"})
    assert math.isnan(FTRecord.from_dict({**d, "l_ft": float("nan")}).l_ft)  # a diverged run is a result


def test_a_diverged_record_is_strict_json(tmp_path):
    """results.jsonl is strict JSON (jq, JavaScript and pandas read it): a diverged run's losses
    are written as null and read back as NaN; a file written before (bare NaN) still reads."""
    import json

    from olmo_sam.finetune.records import ResultStore

    d = dict(run_id="r", base="b", base_label="b", dataset="d", method="ft", lr=1e-3, base_l_pt=1.0)
    rec = FTRecord.from_dict({**d, "l_ft": float("nan"), "l_pt": float("inf"), "extra": {"diverged": "nan loss"}})
    store = ResultStore(tmp_path / "results.jsonl")
    store.append(rec)
    line = (tmp_path / "results.jsonl").read_text().strip()
    assert "NaN" not in line and "Infinity" not in line
    strict = json.loads(line, parse_constant=lambda c: pytest.fail(f"non-standard JSON constant {c}"))
    assert strict["l_ft"] is None and strict["l_pt"] is None and strict["extra"] == {"diverged": "nan loss"}
    (back,) = store.records()
    assert math.isnan(back.l_ft) and math.isnan(back.l_pt) and back.base_l_pt == 1.0
    old = tmp_path / "old.jsonl"
    old.write_text(json.dumps({**d, "l_ft": float("nan"), "l_pt": 2.0}) + "\n")
    assert math.isnan(ResultStore(old).records()[0].l_ft)


def test_a_config_file_that_is_not_a_mapping(tmp_path):
    from olmo_core.script_utils import ExperimentConfig

    from olmo_sam.files import load_config

    for name, text in (("empty.yaml", ""), ("list.yaml", "- a\n")):
        (tmp_path / name).write_text(text)
        with pytest.raises(OLMoConfigurationError, match="a config file is a mapping of its fields"):
            load_config(ExperimentConfig, tmp_path / name)


# -- accepted and ignored -----------------------------------------------------------------------


def test_a_decay_fraction_outside_a_wsd_schedule_is_refused():
    from olmo_sam.recipes.pretrain import PretrainSpec

    with pytest.raises(ConfigError, match=r"^decay_fraction: must be a number in \(0, 1\]"):
        PretrainSpec(size="micro", decay_fraction=-0.5)
    data = _study()
    data["arms"][0].update(schedule="cosine", decay_fraction=0.3)
    _refused(data, "arms[0]", "applies to")


def test_a_quantization_option_given_twice_is_refused():
    assert parse_quant_spec("nf4:blocksize=32").blocksize == 32
    with pytest.raises(OLMoConfigurationError, match="'blocksize' is given twice"):
        parse_quant_spec("nf4:blocksize=32,blocksize=64")


def test_a_probe_device_is_a_torch_device_where_the_study_is_read():
    assert decode(QuantizeOptions, {"device": "cuda:7"}).device == "cuda:7"  # planned where it will not run
    with pytest.raises(ConfigError, match="probes.quantize.device: 'gpu' is not a torch device"):
        decode(QuantizeOptions, {"device": "gpu"}, "probes.quantize")


def test_stages_that_select_nothing_are_refused(tmp_path):
    path = tmp_path / "s.yaml"
    import yaml

    path.write_text(yaml.safe_dump(STUDY))
    run = ["study", "run", str(path), "--dry-run", "--out", str(tmp_path / "o")]
    res = CliRunner().invoke(main, [*run, "--stages", "cfs"])
    assert res.exit_code == 1 and "--stages: the study runs no ['cfs'] stage" in res.output, res.output
    res = CliRunner().invoke(main, [*run, "--stages", ""])
    assert res.exit_code == 2 and "'--stages': the value is empty" in res.output, res.output
    res = CliRunner().invoke(main, [*run, "--stages", "pretrain,pretrain"])
    assert res.exit_code == 2 and "pretrain is given twice" in res.output, res.output
    res = CliRunner().invoke(main, [*run, "--exclude", "pretrainn"])
    assert res.exit_code == 1 and "--exclude: unknown stage(s) ['pretrainn']; did you mean 'pretrain'?" in res.output
    assert "Traceback" not in res.output
    res = CliRunner().invoke(main, ["probe", "noise", str(tmp_path), "--gammas", ""])
    assert res.exit_code == 2 and "'--gammas': the value is empty" in res.output, res.output


# -- misleading messages ------------------------------------------------------------------------


def test_bounds_open_on_both_sides_are_said():
    from olmo_sam.study.stages.data import DemoOptions

    with pytest.raises(ConfigError, match=r"^val_fraction: must be a number in \(0, 1\), got 1"):
        DemoOptions(val_fraction=1.0)


def test_the_switch_fraction_is_named_by_its_own_flag(tmp_path):
    res = CliRunner().invoke(
        main,
        ["pretrain", "--size", "20M", "--tokens", "4B", "--optimizer", "sam-anneal", "--schedule", "wsd",
         "--sam-start-fraction", "5", "--dry-run"],
    )  # fmt: skip
    assert res.exit_code == 1 and res.output.startswith("Error: --sam-start-fraction:"), res.output


def test_a_run_length_below_one_is_named_by_its_field():
    """An override ``trainer.max_duration.value=-5`` (or 0) was reported as a warmup longer than
    the run; it now names the run length and the field."""
    for value in ("-5", "0"):
        res = CliRunner().invoke(
            main,
            [
                "pretrain",
                "--size",
                "20M",
                "--steps",
                "2000",
                "--lr",
                "1e-3",
                "--dry-run",
                f"trainer.max_duration.value={value}",
            ],
        )
        assert res.exit_code == 1 and "give 'trainer.max_duration' a length of at least 1" in res.output, res.output
        assert f"the run is {int(value)} steps long" in res.output and "warmup" not in res.output, res.output


def test_comma_lists_read_numbers_and_refuse_repeats():
    """One reader for every repeatable, comma-separated option (sweep grids, probe gammas/seeds, books)."""
    from olmo_sam.preflight import comma_list

    assert comma_list(float)(None, None, ("1e-3,3e-3", "1e-2")) == (1e-3, 3e-3, 1e-2)
    assert comma_list(int)(None, None, ("2", "4.0")) == (2, 4)
    assert comma_list(int)(None, None, (str(2**64 + 1),)) == (2**64 + 1,)  # exact, not rounded through a float
    assert comma_list(float, keep=("table10",))(None, None, ("table10",)) == ("table10",)
    for kind, values, says in [
        (float, ("1e-3,1e-3",), "given twice"),
        (float, ("0.01", "nan"), "not a finite number"),
        (float, ("abc",), "not a finite number"),
        (int, ("2.5",), "not a whole number"),
    ]:
        with pytest.raises(click.BadParameter, match=says):
            comma_list(kind)(None, None, values)
    with pytest.raises(click.BadParameter, match="'fine' is not one of ft, ewc"):
        comma_list(choices=("ft", "ewc"))(None, None, ("ft,fine",))
    from olmo_sam.finetune.sweep import parse_lrs

    with pytest.raises(OLMoConfigurationError, match=r"gives \[0.001\] twice"):
        parse_lrs("1e-3,3e-3,1e-3")
    res = CliRunner().invoke(main, ["sweep", "--base", "b", "--data", "d", "--methods", "ft,ft", "--out", "o"])
    assert res.exit_code == 2 and "ft is given twice" in res.output, res.output


def test_a_model_directory_must_be_a_hugging_face_one(tmp_path, tiny_checkpoint):
    from olmo_sam.preflight import check_local_model

    (tmp_path / "empty").mkdir()
    (tmp_path / "core").mkdir()
    (tmp_path / "core" / "config.json").write_text('{"model": {}, "trainer": {}}')  # an OLMo-core config
    with pytest.raises(OLMoConfigurationError, match="its config.json is not a Hugging Face model config"):
        check_local_model(tmp_path / "core", flag="MODEL_DIR")
    (tmp_path / "core" / "config.json").write_text("{}")
    with pytest.raises(OLMoConfigurationError, match="its config.json is not a Hugging Face model config"):
        check_local_model(tmp_path / "core", flag="MODEL_DIR")
    with pytest.raises(OLMoConfigurationError, match="export it with 'olmo-sam export-hf"):
        check_local_model(tiny_checkpoint, flag="MODEL_DIR")
    res = CliRunner().invoke(main, ["import-hf", str(tmp_path / "empty"), "--out", str(tmp_path / "o")])
    assert res.exit_code == 1 and "no config.json" in res.output and "Traceback" not in res.output, res.output


def test_a_pretraining_token_dataset_is_not_a_fine_tuning_one(tmp_path):
    import json

    from olmo_sam.finetune.data import read_meta

    (tmp_path / "meta.json").write_text(
        json.dumps({"tokenizer": "x", "dtype": "uint16", "splits": {}, "shard_tokens": 8})
    )
    with pytest.raises(
        OLMoConfigurationError, match="is not a prepared fine-tuning dataset .*'olmo-sam finetune prepare'"
    ):
        read_meta(tmp_path)


def test_options_of_what_is_not_used_are_refused(tmp_path):
    from olmo_core.optim import AdamWConfig

    from olmo_sam.optim.sam import SAMConfig

    with pytest.raises(ConfigError, match="looksam_alpha: applies to variant 'looksam' only"):
        SAMConfig(base=AdamWConfig(lr=1e-3), variant="sam", looksam_alpha=0.5)
    assert SAMConfig(base=AdamWConfig(lr=1e-3), variant="looksam", looksam_alpha=0.5).looksam_alpha == 0.5
    data = _study()
    data["finetune"] = {**data["finetune"], "grids": {"ewc_lambdas": [1.0]}}
    _refused(data, "finetune.grids.ewc_lambdas: the grid of method 'ewc'")
    from olmo_sam.recipes.common import resolve_data

    with pytest.raises(OLMoConfigurationError, match="--mix-include selects lines of a mix file"):
        resolve_data([str(tmp_path / "a.npy")], include=["wiki"])


def test_a_token_file_written_by_np_save_is_named_as_such(tmp_path):
    import numpy as np

    from olmo_sam.data.tokens import check_token_files
    from olmo_sam.evals.lm_loss import check_eval_token_files

    np.save(tmp_path / "ids.npy", np.arange(1000, dtype=np.uint16))
    tok = type("Tok", (), {"vocab_size": 384, "eos_token_id": 0, "identifier": "t"})()
    with pytest.raises(OLMoConfigurationError, match="was written by np.save"):
        check_token_files([tmp_path / "ids.npy"], tok)
    with pytest.raises(OLMoConfigurationError, match="was written by np.save"):
        check_eval_token_files([tmp_path / "ids.npy"], np.uint16, 384)


def test_recipe_flags_of_estimates_and_starts(tmp_path):
    res = CliRunner().invoke(main, ["pretrain", "--size", "20M", "--tokens", "4B", "--mfu", "5", "--dry-run"])
    assert res.exit_code == 2 and "--mfu" in res.output, res.output
    res = CliRunner().invoke(main, ["midtrain", "--steps", "2", "--init-from-hf", "./no-such-model", "--dry-run"])
    assert res.exit_code == 1 and "--init-from-hf ./no-such-model: no such directory" in res.output, res.output


def test_a_local_dataset_path_that_does_not_exist_is_not_looked_up_on_the_hub():
    from olmo_sam.data.sources import iter_hf_dataset

    with pytest.raises(OLMoConfigurationError, match=r"--hf-dataset \./no-such-data: no such directory"):
        next(iter_hf_dataset("./no-such-data"))


def test_data_parallelism_without_torchrun_is_named(tmp_path, tiny_checkpoint, tiny_corpus, monkeypatch):
    """OLMo-core refuses a data-parallel config in one process without naming the flag that set it."""
    from ft_helpers import write_task

    with pytest.raises(ConfigError, match=r"^dp: must be one of \['ddp', 'fsdp', 'hsdp'\]"):
        _ft(dp="fsdpp")
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    task = write_task(tmp_path / "task", n_train=80, n_val=10)
    res = CliRunner().invoke(
        main,
        ["finetune", "run", "--base", str(tiny_checkpoint), "--data", str(task), "--lr", "1e-3", "--max-steps", "2",
         "--pt-val", str(tiny_corpus.val), "--dp", "fsdp", "--out", str(tmp_path / "run")],
    )  # fmt: skip
    assert res.exit_code == 1 and "dp 'fsdp' (--dp) needs several processes" in res.output, res.output


def test_the_olmes_batch_size_is_a_count_or_auto():
    res = CliRunner().invoke(main, ["eval", "olmes", "org/model", "--eval-batch-size", "lots", "--print"])
    assert res.exit_code == 2 and "give a whole number >= 1 or 'auto'" in res.output, res.output
    res = CliRunner().invoke(main, ["eval", "olmes", "org/model", "--eval-batch-size", "auto", "--print"])
    assert res.exit_code == 0 and "--batch-size auto" in res.output, res.output


def test_no_help_prints_an_unbounded_range_as_none():
    """click printed ``[x<=None]`` beside every unbounded finite-float option (``--alpha``)."""

    def walk(cmd, path):
        yield path, cmd
        for name, sub in getattr(cmd, "commands", {}).items():
            yield from walk(sub, [*path, name])

    for path, _cmd in walk(main, []):
        res = CliRunner().invoke(main, [*path, "--help"], terminal_width=200)
        assert res.exit_code == 0, (path, res.output)
        assert "None]" not in res.output, (path, [ln for ln in res.output.splitlines() if "None]" in ln])


def test_finetune_run_into_another_runs_directory_is_refused(tmp_path, tiny_checkpoint, tiny_corpus):
    """`finetune run --out D` with another learning rate replaced D's finished run without a word."""
    from ft_helpers import write_task

    task = write_task(tmp_path / "task", n_train=80, n_val=10)
    run = ["finetune", "run", "--base", str(tiny_checkpoint), "--data", str(task), "--max-steps", "2",
           "--batch-size", "8", "--pt-val", str(tiny_corpus.val), "--pt-val-max-sequences", "16",
           "--ft-val-max-sequences", "8", "--out", str(tmp_path / "run")]  # fmt: skip
    assert CliRunner().invoke(main, [*run, "--lr", "1e-3"]).exit_code == 0
    records = (tmp_path / "run" / "records.json").read_text()
    res = CliRunner().invoke(main, [*run, "--lr", "2e-3"])
    assert res.exit_code == 1 and "holds another fine-tuning run (lr, run_id differ)" in res.output, res.output
    assert "pass --overwrite" in res.output and (tmp_path / "run" / "records.json").read_text() == records
    res = CliRunner().invoke(main, [*run, "--lr", "2e-3", "--overwrite"])
    assert res.exit_code == 0 and (tmp_path / "run" / "records.json").read_text() != records, res.output


def test_a_sweep_into_a_directory_of_other_shared_settings_is_refused(tmp_path, tiny_checkpoint, tiny_corpus):
    """A second sweep with another --max-steps into the same --out appended its runs to the first's
    results.jsonl, and the frontier pooled 3- and 4-step runs without a note."""
    from ft_helpers import write_task

    from olmo_sam.finetune.sweep import SHARED_SETTINGS, check_shared_settings

    out = tmp_path / "sweep"
    check_shared_settings(out, {"max_steps": 3, "batch_size": 4})
    check_shared_settings(out, {"batch_size": 4, "max_steps": 3})  # the same settings resume
    with pytest.raises(OLMoConfigurationError, match=r"other shared settings \(max_steps: 3 -> 4\); its results"):
        check_shared_settings(out, {"max_steps": 4, "batch_size": 4})
    assert (out / SHARED_SETTINGS).is_file()
    task = write_task(tmp_path / "task", n_train=80, n_val=10)
    sweep = ["sweep", "--base", str(tiny_checkpoint), "--data", str(task), "--lrs", "1e-3", "--batch-size", "4",
             "--pt-val", str(tiny_corpus.val), "--out", str(out), "--dry-run"]  # fmt: skip
    res = CliRunner().invoke(main, [*sweep, "--max-steps", "5"])
    assert res.exit_code == 1 and "other shared settings (max_steps: 3 -> 5; pt_val: None ->" in res.output, res.output


def test_a_sweep_base_or_dataset_given_twice_is_refused(tmp_path):
    """`sweep --base pt1 --base pt1 --base-label x --base-label y` became one base labelled y."""
    (tmp_path / "pt1").mkdir()
    for bases, data, match in [
        ([str(tmp_path / "pt1"), str(tmp_path / "pt1/")], ["code"], r"--base .*pt1/? is given twice"),
        (["b"], ["code", "code"], "--data code is given twice"),
    ]:
        with pytest.raises(OLMoConfigurationError, match=match):
            expand(SweepSpec(bases=bases, datasets=data, lrs=[1e-3]), resolve=False)


def test_a_data_demo_output_given_for_its_token_dataset_names_it(tmp_path):
    """`pretrain --data demo` (the directory `data demo --out demo` wrote) said only 'prepare one'."""
    from olmo_sam.data.tokens import META_FILE, read_meta

    (tmp_path / "demo" / "tokens").mkdir(parents=True)
    (tmp_path / "demo" / "tokens" / META_FILE).write_text("{}")
    with pytest.raises(OLMoConfigurationError, match=r"no meta.json\); did you mean .*demo/tokens\?"):
        read_meta(tmp_path / "demo")
    with pytest.raises(OLMoConfigurationError, match="prepare one with 'olmo-sam data tokenize'"):
        read_meta(tmp_path / "demo" / "tokens" / "nothing")


def test_only_olmo_cores_te_notice_is_logged_at_debug_level():
    """The filter `import olmo_sam` adds re-levelled every record of that logger, errors included."""
    import logging

    import olmo_sam  # noqa: F401

    log = logging.getLogger("olmo_core.nn.attention.te_attn_api")
    notice = log.makeRecord(
        log.name, logging.WARNING, __file__, 1, "transformer_engine unavailable, disabling TE", (), None
    )
    error = log.makeRecord(log.name, logging.ERROR, __file__, 1, "a real failure", (), None)
    assert [f.filter(error) for f in log.filters] == [True] * len(log.filters)
    assert not all(f.filter(notice) for f in log.filters)  # (debug logging is off)
    assert (notice.levelno, error.levelno) == (logging.DEBUG, logging.ERROR)


def test_library_notices_print_nothing_under_olmo_cores_log_setup():
    """Under OLMo-core's log set-up (a root handler of level NOTSET) the TE notice printed as a DEBUG
    line, and bitsandbytes printed "Failed to load CPU gemm_4bit_forward from kernels-community: No
    module named 'kernels'. Please ... pip install kernels" on every CPU with AVX512-BF16 (its own
    CPU kernels run the 4-bit layers; the `kernels` package would download one from the hub)."""
    code = (
        "from olmo_core.utils import setup_logging; setup_logging(); import logging, olmo_sam\n"
        "import olmo_core.nn.attention, bitsandbytes\n"
        "from bitsandbytes.functional import has_avx512bf16; print('avx512bf16', has_avx512bf16())\n"
        "logging.getLogger('bitsandbytes.backends.cpu.ops').warning('a real bitsandbytes warning')"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "transformer_engine" not in r.stdout + r.stderr and "kernels" not in r.stdout + r.stderr
    assert "WARNING\ta real bitsandbytes warning" in r.stdout  # the logger's other records pass


def test_sweep_and_probe_flags_are_named_as_given(tmp_path, tiny_checkpoint, tiny_corpus):
    """User probe 6: `sweep --methods ft --ewc-lambdas 5` ignored the grid; a bad run setting was
    named by FTConfig's field (`micro_batch_size (7) must divide ...`, `lr: must be > 0`), not by
    the flag; `probe hessian --fd-step` under the exact double backward was ignored yet recorded
    (a later run 'changed: fd_step'); `--pair CK CK` printed kappa nan."""
    sweep = ["sweep", "--base", "b", "--data", "d", "--out", str(tmp_path / "s"), "--dry-run"]
    r = CliRunner().invoke(main, [*sweep, "--methods", "ft", "--ewc-lambdas", "5"])
    assert r.exit_code == 2 and "--ewc-lambdas" in r.output and "the grid of method 'ewc'" in r.output, r.output
    r = CliRunner().invoke(main, [*sweep, "--lrs", "1e-3", "--batch-size", "64", "--micro-batch-size", "7"])
    assert r.exit_code == 1 and "--micro-batch-size: 7 must divide batch_size (64)" in r.output, r.output
    r = CliRunner().invoke(main, [*sweep, "--lrs=-1e-3,1e-3"])
    assert r.exit_code == 1 and "--lrs: must be a number > 0, got -0.001" in r.output, r.output
    hessian = ["probe", "hessian", "--val", str(tiny_corpus.val), "--max-sequences", "2", "--n-sequences", "1"]
    r = CliRunner().invoke(main, [*hessian, str(tiny_checkpoint), "--fd-step", "0.5", "--out", str(tmp_path / "h")])
    assert r.exit_code == 1 and "--fd-step: applies to method finite_difference" in r.output, r.output
    r = CliRunner().invoke(
        main, [*hessian, "--pair", str(tiny_checkpoint), str(tiny_checkpoint), "--out", str(tmp_path / "p")]
    )
    assert r.exit_code == 1 and "the two checkpoints hold the same weights" in r.output, r.output
    val = str(tiny_corpus.val)
    r = CliRunner().invoke(
        main, ["probe", "noise", str(tiny_checkpoint), "--val", val, "--val", val, "--out", str(tmp_path / "n")]
    )
    assert r.exit_code == 1 and f"--val {val} is given twice" in r.output, r.output


def test_a_meta_json_given_for_its_dataset_and_a_negative_reference(tmp_path):
    """User probe 6: `data info DIR/meta.json` said "no meta.json"; `eval compare --reference -5`
    was accepted (the reference is a benchmark average, in [0, 100])."""
    from olmo_sam.data.tokens import META_FILE, read_meta

    (tmp_path / META_FILE).write_text("{}")
    with pytest.raises(
        OLMoConfigurationError, match=rf"meta.json is not a prepared token dataset .*did you mean {tmp_path}\?"
    ):
        read_meta(tmp_path / META_FILE)
    r = CliRunner().invoke(main, ["eval", "compare", str(tmp_path / "a.json"), "--reference", "-5"])
    assert r.exit_code == 2 and "--reference" in r.output and "-5" in r.output, r.output
