"""SAM cannot silently be AdamW (issue 12 section 1), and its options' errors name the field.

The stock OLMo-core train module builds a 'sam' optimizer but never runs its ascent; stepping
it must fail on the first step with the fix (the SAM train module and its YAML '_CLASS_' line).
Checked through the Python API and through OLMo-core's own ``from_file`` with the real trainer.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch
import yaml
from helpers import adamw, tiny_experiment
from olmo_core.exceptions import OLMoConfigurationError
from olmo_core.optim import OptimGroupOverride
from olmo_core.script_utils import ExperimentConfig
from olmo_core.train.train_module import TransformerTrainModuleConfig

from olmo_sam.files import to_yaml
from olmo_sam.optim import SAMConfig, WSDAlpha
from olmo_sam.train import SAMSwitchCallback, build_trainer

STOCK = "olmo_core.train.train_module.TransformerTrainModuleConfig"
FIX_LINE = "_CLASS_: olmo_sam.train.train_module.SAMTrainModuleConfig"


def _stock(cfg: ExperimentConfig) -> ExperimentConfig:
    """The same experiment under OLMo-core's stock train module (what an existing YAML has)."""
    tm = cfg.train_module
    fields = {f.name: getattr(tm, f.name) for f in dataclasses.fields(TransformerTrainModuleConfig)}
    cfg.train_module = TransformerTrainModuleConfig(**fields)
    return cfg


def _yaml_roundtrip(cfg: ExperimentConfig, tmp_path, edit=None) -> ExperimentConfig:
    data = yaml.safe_load(to_yaml(cfg))
    if edit is not None:
        edit(data)
    path = tmp_path / "exp.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    import olmo_sam  # noqa: F401  (registers 'sam' before OLMo-core decodes)

    return ExperimentConfig.from_file(str(path))  # OLMo-core's own loader


def _assert_first_step_refused(trainer):
    w0 = {n: p.detach().clone() for n, p in trainer.train_module.model.named_parameters()}
    with pytest.raises(OLMoConfigurationError) as err:
        trainer.fit()
    msg = str(err.value)
    assert "SAMTrainModuleConfig" in msg and FIX_LINE in msg, msg
    assert trainer.global_step <= 1
    for n, p in trainer.train_module.model.named_parameters():
        assert torch.equal(p, w0[n]), n  # nothing was trained as AdamW


@pytest.mark.parametrize("variant", ["sam", "msam"])
def test_sam_under_the_stock_train_module_fails_on_its_first_step(tmp_path, tiny_corpus, variant):
    cfg = _stock(tiny_experiment(tiny_corpus, tmp_path / "run", SAMConfig(base=adamw(), variant=variant)))
    _assert_first_step_refused(build_trainer(cfg))


def test_sam_in_a_stock_yaml_fails_on_its_first_step(tmp_path, tiny_corpus):
    cfg = tiny_experiment(tiny_corpus, tmp_path / "run", SAMConfig(base=adamw()))

    def stock(d):
        d["train_module"]["_CLASS_"] = STOCK

    loaded = _yaml_roundtrip(cfg, tmp_path, stock)
    assert type(loaded.train_module) is TransformerTrainModuleConfig
    _assert_first_step_refused(build_trainer(loaded))


def test_the_sam_train_module_from_yaml_trains(tmp_path, tiny_corpus):
    cfg = tiny_experiment(tiny_corpus, tmp_path / "run", SAMConfig(base=adamw()), max_steps=1)
    trainer = build_trainer(_yaml_roundtrip(cfg, tmp_path))
    trainer.fit()
    assert trainer.global_step == 1 and trainer.train_module.sam_ascents == 1


@pytest.mark.parametrize("through", ["python", "yaml"])
def test_switch_callback_on_the_stock_train_module_is_refused(tmp_path, tiny_corpus, through):
    cfg = tiny_experiment(
        tiny_corpus,
        tmp_path / "run",
        SAMConfig(base=adamw()),
        max_steps=8,
        scheduler=WSDAlpha(warmup=2, decay_fraction=0.25),
        callbacks={"sam_switch": SAMSwitchCallback()},
    )
    if through == "python":
        cfg = _stock(cfg)
    else:
        cfg = _yaml_roundtrip(cfg, tmp_path, lambda d: d["train_module"].__setitem__("_CLASS_", STOCK))
    with pytest.raises(OLMoConfigurationError) as err:
        build_trainer(cfg).fit()
    msg = str(err.value)
    assert "SAMSwitchCallback" in msg and FIX_LINE in msg, msg


@pytest.mark.parametrize(
    "key, value, match",
    [
        ("interval", 2.5, "interval: expected a whole number, got 2.5"),
        ("interval", 0, "interval: must be a whole number >= 1, got 0"),
        ("adaptive", "yes", "adaptive: expected true or false, got 'yes'"),
        ("rho", "abc", r"rho: expected a number, got 'abc' \(the paper uses 0.05\)"),
        ("rho", -0.1, "rho: must be a number >= 0, got -0.1"),
        ("scope", "glob", "scope: must be one of .*did you mean 'global'"),
        ("variant", "lsam", "variant: must be one of"),
    ],
)
def test_bad_option_names_the_field_from_yaml_and_python(tmp_path, tiny_corpus, key, value, match):
    with pytest.raises(OLMoConfigurationError, match=match):
        SAMConfig(base=adamw(), **{key: value})
    cfg = tiny_experiment(tiny_corpus, tmp_path / "run", SAMConfig(base=adamw()))
    with pytest.raises(OLMoConfigurationError, match=match):
        _yaml_roundtrip(cfg, tmp_path, lambda d: d["train_module"]["optim"].__setitem__(key, value))


def test_numeric_strings_read_the_same_from_yaml_and_python(tmp_path, tiny_corpus):
    py = SAMConfig(base=adamw(), rho="0.05", interval="2")
    cfg = tiny_experiment(tiny_corpus, tmp_path / "run", SAMConfig(base=adamw()))

    def strings(d):
        d["train_module"]["optim"].update(rho="0.05", interval="2")

    loaded = _yaml_roundtrip(cfg, tmp_path, strings).train_module.optim
    assert (py.rho, py.interval) == (loaded.rho, loaded.interval) == (0.05, 2)
    assert type(py.rho) is type(loaded.rho) is float


def test_unknown_group_override_key_is_an_error(tmp_path, tiny_corpus):
    base = adamw()
    base.group_overrides = [OptimGroupOverride(params=["embeddings.weight"], opts={"rhoo": 0.0})]
    with pytest.raises(OLMoConfigurationError, match=r"group_overrides\[0\]\.opts.*rhoo"):
        SAMConfig(base=base)

    cfg = tiny_experiment(tiny_corpus, tmp_path / "run", SAMConfig(base=adamw()))

    def override(d):
        d["train_module"]["optim"]["base"]["group_overrides"] = [
            {"params": ["embeddings.weight"], "opts": {"rhoo": 0.0}}
        ]

    with pytest.raises(OLMoConfigurationError, match="rhoo"):
        _yaml_roundtrip(cfg, tmp_path, override)
    # the known keys (SAM's and AdamW's) are accepted
    ok = adamw()
    ok.group_overrides = [OptimGroupOverride(params=["embeddings.weight"], opts={"rho": 0.0, "weight_decay": 0.0})]
    SAMConfig(base=ok)
