"""The sharpness monitor inside a real (tiny) OLMo-core training run."""

from __future__ import annotations

import json

import pytest
import torch
import yaml
from olmo_core.exceptions import OLMoConfigurationError
from olmo_core.optim import AdamWConfig
from olmo_core.script_utils import ExperimentConfig

from olmo_sam.checkpoints import load_transformer
from olmo_sam.models import model_config
from olmo_sam.optim import CosineAlpha
from olmo_sam.probes.hessian import (
    HessianVectorProduct,
    fixed_batch,
    hutchinson_trace,
    lm_batch_loss,
)
from olmo_sam.probes.monitor import SharpnessMonitorCallback
from olmo_sam.train import build_experiment, read_metrics, run_experiment

STEPS, EVERY, PROBES = 6, 3, 3


def _config(corpus, save, callbacks=None):
    cfg = build_experiment(
        model=model_config("tiny", vocab_size=corpus.vocab_size),
        tokenizer=corpus.tokenizer(),
        train_paths=[str(corpus.train)],
        save_folder=str(save),
        optim=AdamWConfig(lr=3e-3, betas=(0.9, 0.95), weight_decay=0.1),
        sequence_length=64,
        global_batch_size=8,
        max_steps=STEPS,
        callbacks=callbacks,
    )
    cfg.train_module.scheduler = CosineAlpha(warmup=2)
    cfg.train_module.max_grad_norm = 1.0
    return cfg


def _monitor(corpus, method):
    return SharpnessMonitorCallback(
        val_paths=[str(corpus.val)], every_steps=EVERY, probes=PROBES, n_sequences=2, method=method, seed=5
    )


@pytest.fixture(scope="module")
def runs(tiny_corpus, tmp_path_factory):
    root = tmp_path_factory.mktemp("monitor")
    out = {}
    for name, cb in [
        ("plain", None),
        ("double_backward", _monitor(tiny_corpus, "double_backward")),
        ("finite_difference", _monitor(tiny_corpus, "finite_difference")),
    ]:
        run_experiment(_config(tiny_corpus, root / name, {"sharpness": cb} if cb else None))
        out[name] = root / name
    return out


def test_monitor_does_not_disturb_training(runs):
    plain = read_metrics(runs["plain"])
    final, _ = load_transformer(runs["plain"])
    for name in ("double_backward", "finite_difference"):
        m = read_metrics(runs[name])
        for step in range(1, STEPS + 1):
            assert m[step]["train/CE loss"] == plain[step]["train/CE loss"], (name, step)
        other, _ = load_transformer(runs[name])
        for (n, a), (_, b) in zip(final.named_parameters(), other.named_parameters()):
            assert torch.equal(a, b), (name, n)


def test_monitor_records_trace(runs, tiny_corpus):
    for name in ("double_backward", "finite_difference"):
        m = read_metrics(runs[name])
        steps = [s for s in m if "sharpness/PT trace" in m[s]]
        assert steps == list(range(EVERY, STEPS + 1, EVERY))
        assert m[STEPS]["sharpness/PT probes"] == PROBES
    # the last measurement is tr(H) of the final weights on the first validation windows, with the
    # callback's probes: recompute it independently from the saved checkpoint
    model, _ = load_transformer(runs["double_backward"])
    batch = fixed_batch([tiny_corpus.val], 64, tiny_corpus.vocab_size, 2)
    op = HessianVectorProduct(lambda: lm_batch_loss(model, batch), list(model.parameters()), model=model)
    est = hutchinson_trace(op, n_probes=PROBES, seed=5)
    rec = read_metrics(runs["double_backward"])[STEPS]
    assert rec["sharpness/PT trace"] == pytest.approx(est.trace, rel=1e-5)
    assert rec["sharpness/PT trace stderr"] == pytest.approx(est.stderr, rel=1e-4)
    fd = read_metrics(runs["finite_difference"])[STEPS]["sharpness/PT trace"]
    assert fd == pytest.approx(est.trace, rel=1e-2)


def test_monitor_config_round_trips(tiny_corpus, tmp_path):
    cb = _monitor(tiny_corpus, "auto")
    cfg = _config(tiny_corpus, tmp_path / "x", {"sharpness": cb})
    back = ExperimentConfig.from_dict(json.loads(json.dumps(cfg.as_config_dict()))).trainer.callbacks["sharpness"]
    assert type(back) is SharpnessMonitorCallback
    assert back == cb
    text = yaml.safe_dump(cb.as_config_dict())
    assert "_CLASS_" in text
    assert SharpnessMonitorCallback.from_dict(yaml.safe_load(text)) == cb


def test_monitor_rejects_bad_settings(tiny_corpus):
    with pytest.raises(OLMoConfigurationError, match="every_steps"):
        SharpnessMonitorCallback(val_paths=[str(tiny_corpus.val)], every_steps=0)
    with pytest.raises(OLMoConfigurationError, match="val_paths"):
        SharpnessMonitorCallback()
    with pytest.raises(OLMoConfigurationError, match="method"):
        SharpnessMonitorCallback(val_paths=[str(tiny_corpus.val)], method="exact")
