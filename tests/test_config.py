"""Configs: YAML round trip of a full trainer config, dotted overrides, and bad input."""

from __future__ import annotations

import dataclasses
import math
from typing import List, Optional

import pytest
import yaml
from helpers import adamw, tiny_experiment
from olmo_core.exceptions import OLMoConfigurationError
from olmo_core.optim import OptimConfig
from olmo_core.script_utils import ExperimentConfig

from olmo_sam.config import Checked, ConfigError, check_settings, decode, setting
from olmo_sam.files import load_config, to_yaml
from olmo_sam.optim import WSO, SAMConfig
from olmo_sam.train import SAMSwitchCallback, SAMTrainModuleConfig
from olmo_sam.train.train_module import check_sam_parallelism


@pytest.fixture
def full_config(tmp_path, tiny_corpus):
    return tiny_experiment(
        tiny_corpus,
        tmp_path / "run",
        SAMConfig(base=adamw(lr=3e-3), rho=0.07, adaptive=True, interval=2),
        max_steps=10,
        scheduler=WSO(warmup=3),
        callbacks={"sam_switch": SAMSwitchCallback(start_fraction=0.5)},
        val_paths=[str(tiny_corpus.val)],
        eval_interval=5,
    )


def test_full_trainer_config_round_trips_through_yaml(full_config):
    text = to_yaml(full_config)
    back = ExperimentConfig.from_dict(yaml.safe_load(text))
    assert back.as_config_dict() == full_config.as_config_dict()
    tm = back.train_module
    assert type(tm) is SAMTrainModuleConfig
    assert type(tm.optim) is SAMConfig and tm.optim.rho == 0.07 and tm.optim.adaptive
    assert tm.optim.interval == 2 and tm.optim.base.lr == 3e-3
    assert type(tm.scheduler) is WSO
    switch = back.trainer.callbacks["sam_switch"]
    assert type(switch) is SAMSwitchCallback and switch.start_fraction == 0.5


def test_round_trip_keeps_unset_intervals(tmp_path, tiny_corpus):
    """None-valued intervals would come back as OLMo-core's defaults (as_config_dict drops None)."""
    cfg = tiny_experiment(tiny_corpus, tmp_path / "run", adamw(), max_steps=10, val_paths=[str(tiny_corpus.val)])
    back = ExperimentConfig.from_dict(yaml.safe_load(to_yaml(cfg)))
    assert back.as_config_dict() == cfg.as_config_dict()
    assert back.trainer.callbacks["checkpointer"].save_interval > 10**9
    assert back.trainer.callbacks["lm_evaluator"].eval_interval > 10**9


def test_config_file_load_with_overrides(full_config, tmp_path):
    path = tmp_path / "exp.yaml"
    path.write_text(to_yaml(full_config))
    back = load_config(ExperimentConfig, path, overrides=["train_module.optim.rho=0.2"])
    assert back.train_module.optim.rho == 0.2
    assert back.trainer.callbacks["sam_switch"].start_fraction == 0.5


def test_yaml_uses_registered_type_names(full_config):
    d = full_config.as_config_dict()
    assert d["train_module"]["optim"]["type"] == "sam"
    assert d["train_module"]["optim"]["base"]["type"] == "adamw"
    assert d["train_module"]["scheduler"]["type"] == "wso"
    # a config written by hand with only registered names (no _CLASS_) decodes too
    hand = {"type": "sam", "rho": 0.1, "base": {"type": "adamw", "lr": 1e-3}}
    opt = OptimConfig.from_dict(hand)
    assert type(opt) is SAMConfig and opt.rho == 0.1 and opt.base.lr == 1e-3


def test_dotted_overrides(full_config):
    c = full_config.merge(["train_module.optim.rho=0.1", "train_module.optim.base.lr=0.01"])
    assert c.train_module.optim.rho == 0.1 and c.train_module.optim.base.lr == 0.01
    d = full_config.as_config_dict()
    c2 = ExperimentConfig.from_dict(d, overrides=["train_module.optim.interval=3"])
    assert c2.train_module.optim.interval == 3
    c3 = full_config.merge(["trainer.callbacks.sam_switch.start_fraction=0.8"])
    assert c3.trainer.callbacks["sam_switch"].start_fraction == 0.8


@pytest.mark.parametrize(
    "override, match",
    [
        ("train_module.optim.rho=-0.5", "rho"),
        ("train_module.optim.interval=0", "interval"),
        ("train_module.optim.scope=sideways", "scope"),
        ("train_module.optim.rhoo=0.1", "rhoo"),  # unknown keys are errors, not ignored
        ("trainer.callbacks.sam_switch.start_fraction=1.5", "start_fraction"),
        ("train_module.scheduler.warmup_fraction=2.0", "warmup_fraction"),
    ],
)
def test_bad_overrides_name_the_field(full_config, override, match):
    with pytest.raises(OLMoConfigurationError, match=match):
        full_config.merge([override])


def test_unknown_base_optimizer_is_an_error_naming_the_field(full_config, tmp_path):
    with pytest.raises(KeyError, match="adamx.*not registered.*adamw"):  # OLMo-core's own decoder
        OptimConfig.from_dict({"type": "sam", "base": {"type": "adamx"}})
    d = yaml.safe_load(to_yaml(full_config))
    opt = d["train_module"]["optim"]
    opt["base"] = {"type": "adamx", "lr": 1e-3}
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(d))
    with pytest.raises(OLMoConfigurationError, match=r"train_module\.optim\.base\.type: 'adamx'.*'adamw'"):
        load_config(ExperimentConfig, path)
    opt["base"] = {"type": "adamw"}
    d["train_module"]["scheduler"] = {"type": "cosine_alhpa", "warmup": 3}
    path.write_text(yaml.safe_dump(d))
    with pytest.raises(OLMoConfigurationError, match=r"train_module\.scheduler\.type: 'cosine_alhpa'.*cosine_alpha"):
        load_config(ExperimentConfig, path)


@pytest.mark.parametrize("rho", [-0.1, float("nan"), float("inf")])
def test_bad_rho(rho):
    with pytest.raises(OLMoConfigurationError, match="rho"):
        SAMConfig(rho=rho)


def test_sam_wrapper_refuses_misplaced_fields():
    from olmo_core.optim import OptimGroupOverride

    with pytest.raises(OLMoConfigurationError, match="optim.base.group_overrides"):
        SAMConfig(group_overrides=[OptimGroupOverride(params=["*"], opts={})])
    with pytest.raises(OLMoConfigurationError, match="itself"):
        SAMConfig(base=SAMConfig())


def test_local_scope_is_refused_under_fsdp():
    with pytest.raises(OLMoConfigurationError, match="FSDP"):
        check_sam_parallelism("local", "fsdp")
    with pytest.raises(OLMoConfigurationError, match="FSDP"):
        check_sam_parallelism("local", "hsdp")
    check_sam_parallelism("local", "ddp")
    check_sam_parallelism("global", "fsdp")


# -- the one checking layer (olmo_sam/config.py) ---------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Inner(Checked):
    rate: float = setting(0.1, gt=0, le=1)
    steps: Optional[int] = setting(None, ge=1)
    kinds: List[str] = setting(default_factory=list, choices=("nf4", "int8"))


def test_values_are_read_as_olmo_core_reads_them_and_refused_by_name():
    """Types from annotations, rules from ``setting``: numeric strings are numbers (YAML 1.1
    reads ``3e-3`` as a string), an integral float or numeric string is an integer, a bool is
    not a number, and every refusal starts with the field's path."""
    ok = decode(Inner, {"rate": "3e-3", "steps": "4", "kinds": ["int8"]})
    assert (ok.rate, ok.steps, ok.kinds) == (0.003, 4, ["int8"]) and type(ok.steps) is int
    assert decode(Inner, {"steps": 2.0}).steps == 2
    bad = [
        ({"rate": 0}, "where.rate: must be a number in (0, 1], got 0.0"),
        ({"rate": True}, "where.rate: expected a number, got True"),
        ({"rate": float("nan")}, "where.rate: expected a number, got nan"),
        ({"steps": 2.5}, "where.steps: expected a whole number (or null), got 2.5"),
        ({"steps": 0}, "where.steps: must be a whole number >= 1, got 0"),
        ({"kinds": ["int8", "nf5"]}, "where.kinds[1]: must be one of ['nf4', 'int8'], got 'nf5'; did you mean 'nf4'?"),
        ({"kinds": "nf4"}, "where.kinds: expected a list of strings, got 'nf4'"),
        ({"stpes": 3}, "where.stpes: unknown setting; did you mean 'steps'? allowed: ['kinds', 'rate', 'steps']"),
        (["rate"], "where: expected a mapping (key: value), got ['rate']"),
    ]
    for data, message in bad:
        with pytest.raises(ConfigError) as err:
            decode(Inner, data, "where")
        assert str(err.value) == message
    # built directly (no file): the field's own name; inside a file: the whole path
    with pytest.raises(ConfigError, match=r"^rate: must be"):
        Inner(rate=2)
    with pytest.raises(ConfigError, match=r"^arms\[1\]\.rate: must be"):
        try:
            Inner(rate=2)
        except ConfigError as e:
            raise e.within("arms[1]") from None
    # some fields of a config, checked without building it (a study arm's recipe settings)
    assert check_settings(Inner, {"rate": "0.5"}, "arms[0]") == {"rate": 0.5}
    with pytest.raises(ConfigError, match=r"^arms\[0\]\.steps: unknown setting; allowed: \['kinds', 'rate'\]"):
        check_settings(Inner, {"steps": 3}, "arms[0]", reserved=("steps",))


def test_an_unknown_key_in_a_config_file_is_named_by_its_path(full_config, tmp_path):
    """OLMo-core's decoder says 'Failed to coerce value {...whole parent mapping...}' before the key."""
    d = yaml.safe_load(to_yaml(full_config))
    d["train_module"]["optim"]["rhoo"] = 0.1
    path = tmp_path / "typo.yaml"
    path.write_text(yaml.safe_dump(d))
    with pytest.raises(
        OLMoConfigurationError, match=r"^train_module\.optim\.rhoo: unknown setting; did you mean 'rho'\?"
    ):
        load_config(ExperimentConfig, path)
    del d["train_module"]["optim"]["rhoo"]
    d["trainer"]["callbacks"]["checkpointer"]["save_intervall"] = 5
    path.write_text(yaml.safe_dump(d))
    with pytest.raises(OLMoConfigurationError, match=r"^trainer\.callbacks\.checkpointer\.save_intervall: unknown"):
        load_config(ExperimentConfig, path)
    del d["trainer"]["callbacks"]["checkpointer"]["save_intervall"]
    path.write_text(yaml.safe_dump(d))
    assert load_config(ExperimentConfig, path).train_module.optim.rho == full_config.train_module.optim.rho


def test_load_config_refuses_overrides_its_merge_would_get_wrong(full_config, tmp_path):
    """The recipes refused these; the Python loader let OLMo-core's merge keep the old class
    (``type=`` ignored), read ``yes`` as true, and a key of a field absent from the file works."""
    path = tmp_path / "exp.yaml"
    path.write_text(to_yaml(full_config))
    for override, match in [
        ("train_module.optim.type=adamw", r"would change a config's class.*change the class in the config file"),
        ("train_module.scheduler.type=cosine_alpha", "would change a config's class"),
        ("train_module.optim.adaptive=yes", r"write true or false \('yes' is a YAML 1.1 word"),
        ("trainer.callbacks.sam_switch.enabled=Off", "write true or false"),
        ("train_module.optim.rhoo=0.1", r"unknown config key 'train_module.optim.rhoo'.*did you mean \['rho'\]"),
    ]:
        with pytest.raises(OLMoConfigurationError, match=match):
            load_config(ExperimentConfig, path, overrides=[override])
    back = load_config(ExperimentConfig, path, overrides=["train_module.z_loss_multiplier=1e-4"])  # not in the file
    assert back.train_module.z_loss_multiplier == 1e-4


@pytest.mark.parametrize(
    "field, value, match",
    [
        ("max_grad_norm", -1.0, r"max_grad_norm: must be a number > 0, got -1.0 \(null: no clipping\)"),
        ("max_grad_norm", 0.0, "max_grad_norm: must be a number > 0"),
        ("z_loss_multiplier", math.nan, "z_loss_multiplier: expected a number"),
        ("z_loss_multiplier", -1e-4, "z_loss_multiplier: must be a number >= 0"),
    ],
)
def test_train_module_bounds_olmo_core_leaves_open(full_config, field, value, match):
    """A clipping norm <= 0 freezes or reverses every update; a nan z-loss makes every SAM ascent
    norm nan, so every update was skipped and the run still ended with exit 0."""
    with pytest.raises(OLMoConfigurationError, match=match):
        full_config.merge([f"train_module.{field}={value}"])
    assert SAMTrainModuleConfig(rank_microbatch_size=64, max_sequence_length=8, optim=adamw()).max_grad_norm is None


def test_a_skip_step_base_is_refused():
    """OLMo-core feeds the loss and grad norm that decide a skip only to an optimizer that is itself
    a skip-step one: under the SAM wrapper no step would ever be skipped."""
    from olmo_core.optim import SkipStepAdamWConfig

    with pytest.raises(OLMoConfigurationError, match="'base': SkipStepAdamW cannot be wrapped by SAM"):
        SAMConfig(base=SkipStepAdamWConfig(lr=1e-3))
