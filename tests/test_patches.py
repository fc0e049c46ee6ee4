"""patches/: the fork patch is current, applies to pristine OLMo-core 3.0.0, and trains exactly like
the plugin (same weights after a SAM + annealing-switch run), without olmo_sam importable; it also
applies to and trains in an earlier OLMo-core release (the PyPI sdist of :data:`EARLIER_RELEASE`,
whose train module has no ``eval_only``)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import olmo_core
import pytest
import torch
from helpers import adamw, tiny_experiment

from olmo_sam.config import config_to_plain
from olmo_sam.optim import SAMConfig, WSDAlpha
from olmo_sam.train import SAMSwitchCallback, run_experiment

ROOT = Path(__file__).resolve().parents[1]
PATCH = ROOT / "patches" / "olmo-core-3.0.0-sam.patch"
#: an OLMo-core release before the pinned one that trains with this environment's torch
EARLIER_RELEASE = "2.6.0"

# plugin class -> the class of the same code inside the patched OLMo-core tree
RENAMES = {
    "olmo_sam.train.train_module.SAMTrainModuleConfig": "olmo_core.sam.train_module.SAMTrainModuleConfig",
    "olmo_sam.optim.sam.SAMConfig": "olmo_core.sam.sam.SAMConfig",
    "olmo_sam.optim.schedules.WSDAlpha": "olmo_core.sam.schedules.WSDAlpha",
    "olmo_sam.train.callbacks.SAMSwitchCallback": "olmo_core.sam.callbacks.SAMSwitchCallback",
}

FORK_SCRIPT = r"""
import json, sys
import torch
from olmo_core.script_utils import ExperimentConfig
from olmo_core.train import prepare_training_environment
from olmo_core.utils import seed_all

import olmo_core
assert olmo_core.__file__.startswith(sys.argv[3]), olmo_core.__file__  # the patched fork
torch.set_num_threads(1)
cfg = ExperimentConfig.from_dict(json.load(open(sys.argv[1])))
prepare_training_environment(backend=None)
seed_all(cfg.init_seed)
model = cfg.model.build(init_device="meta")
tm = cfg.train_module.build(model)
assert type(tm).__module__ == "olmo_core.sam.train_module", type(tm)
ds = cfg.dataset.build()
dl = cfg.data_loader.build(ds, dp_process_group=tm.dp_process_group)
trainer = cfg.trainer.build(tm, dl)
trainer.fit()
torch.save({n: p.detach() for n, p in tm.model.named_parameters()}, sys.argv[2])
assert not any(m == "olmo_sam" or m.startswith("olmo_sam.") for m in sys.modules), "used the plugin"
print("SAM ascents", tm.sam_ascents)
"""


def test_committed_patch_is_current():
    proc = subprocess.run([sys.executable, str(ROOT / "patches" / "make_patch.py"), "--check"],
                          capture_output=True, text=True, env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})  # fmt: skip
    assert proc.returncode == 0, proc.stderr


def _patched_tree(root: Path, olmo_core_dir: Path, name: str) -> Path:
    """``olmo_core_dir`` copied to ``root/src/olmo_core`` as a git repo, with the patch applied."""
    shutil.copytree(olmo_core_dir, root / "src" / "olmo_core", ignore=shutil.ignore_patterns("__pycache__"))
    git = ["git", "-c", "user.email=t@t", "-c", "user.name=t"]
    subprocess.run([*git, "init", "-q"], cwd=root, check=True)
    subprocess.run([*git, "add", "-A"], cwd=root, check=True)
    subprocess.run([*git, "commit", "-qm", name], cwd=root, check=True)
    proc = subprocess.run([*git, "apply", str(PATCH)], cwd=root, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    return root


@pytest.fixture(scope="module")
def fork(tmp_path_factory):
    """A pristine OLMo-core 3.0.0 tree (this environment's installed copy), patched."""
    from importlib.metadata import version

    assert version("ai2-olmo-core") == "3.0.0"
    return _patched_tree(tmp_path_factory.mktemp("fork"), Path(olmo_core.__file__).parent, "OLMo-core 3.0.0")


@pytest.fixture(scope="module")
def earlier_fork(tmp_path_factory):
    """The OLMo-core tree of the :data:`EARLIER_RELEASE` sdist from PyPI (downloaded once, cached
    under ``$OLMO_SAM_CACHE/olmo-core-sdists``), patched."""
    import tarfile

    from olmo_sam.locks import file_lock

    cache = Path(os.environ.get("OLMO_SAM_CACHE", Path.home() / ".cache" / "olmo-sam")) / "olmo-core-sdists"
    with file_lock(cache / f"{EARLIER_RELEASE}.lock", what="(OLMo-core sdist download)"):
        sdists = sorted(cache.glob(f"ai2_olmo_core-{EARLIER_RELEASE}.tar.gz"))
        if not sdists:
            proc = subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--no-binary", ":all:",
                                   f"ai2-olmo-core=={EARLIER_RELEASE}", "-d", str(cache)],
                                  capture_output=True, text=True)  # fmt: skip
            assert proc.returncode == 0, proc.stderr[-2000:]
            sdists = sorted(cache.glob(f"ai2_olmo_core-{EARLIER_RELEASE}.tar.gz"))
    root = tmp_path_factory.mktemp("earlier_fork")
    with tarfile.open(sdists[0]) as tf:
        members = [m for m in tf.getmembers() if m.name.startswith(f"ai2_olmo_core-{EARLIER_RELEASE}/src/olmo_core/")]
        tf.extractall(root / "sdist", members=members, filter="data")
    return _patched_tree(root / "tree", root / "sdist" / f"ai2_olmo_core-{EARLIER_RELEASE}" / "src" / "olmo_core",
                         f"OLMo-core {EARLIER_RELEASE}")  # fmt: skip


def test_patched_fork_trains_exactly_like_the_plugin(tmp_path, tiny_corpus, fork):
    cfg = tiny_experiment(
        tiny_corpus, tmp_path / "plugin", SAMConfig(base=adamw()), max_steps=6, max_grad_norm=1.0,
        scheduler=WSDAlpha(warmup=1, decay_fraction=0.5), callbacks={"sam_switch": SAMSwitchCallback()},
    )  # fmt: skip
    trainer = run_experiment(cfg)
    want = {n: p.detach().clone() for n, p in trainer.train_module.model.named_parameters()}
    assert trainer.train_module.sam_ascents == 3

    plain = config_to_plain(cfg)
    plain["trainer"]["save_folder"] = str(tmp_path / "fork_run")
    plain["trainer"]["work_dir"] = str(tmp_path / "fork_run" / "_work")
    plain["trainer"]["callbacks"].pop("metrics_log")  # an olmo-sam utility, not part of the patch
    text = json.dumps(plain)
    for old, new in RENAMES.items():
        assert old in text, old
        text = text.replace(old, new)
    assert "olmo_sam" not in text
    cfg_path = tmp_path / "fork.json"
    cfg_path.write_text(text)
    script = tmp_path / "fork_train.py"
    script.write_text(FORK_SCRIPT)
    out = tmp_path / "fork_weights.pt"
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["PYTHONPATH"] = str(fork / "src")
    env["OMP_NUM_THREADS"] = "1"
    proc = subprocess.run([sys.executable, str(script), str(cfg_path), str(out), str(fork)], env=env,
                          capture_output=True, text=True, cwd=tmp_path)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "SAM ascents 3" in proc.stdout
    got = torch.load(out)
    for n, p in want.items():
        assert torch.equal(got[n], p), n


#: trains in a patched tree through that tree's own API (configs of another OLMo-core version
#: need not decode there): SAM from the 'sam' registration, WSD decaying over the second half and
#: the switch callback, so SAM ascends on the last half of the steps
NATIVE_SCRIPT = r"""
import inspect, math, sys
import torch
import olmo_core
assert olmo_core.__file__.startswith(sys.argv[4]), olmo_core.__file__  # the patched tree
from olmo_core.data import NumpyDataLoaderConfig, NumpyFSLDatasetConfig, TokenizerConfig
from olmo_core.nn.transformer import TransformerConfig
from olmo_core.optim import OptimConfig
from olmo_core.sam.callbacks import SAMSwitchCallback
from olmo_core.sam.schedules import WSDAlpha
from olmo_core.sam.train_module import SAMTrainModuleConfig
from olmo_core.train import Duration, TrainerConfig, prepare_training_environment
from olmo_core.train.train_module import TransformerTrainModule
from olmo_core.utils import seed_all

train_path, save, steps = sys.argv[1], sys.argv[2], int(sys.argv[3])
torch.set_num_threads(1)
prepare_training_environment(backend=None)
seed_all(0)
seq, batch = 64, 8
tok = TokenizerConfig(vocab_size=256, eos_token_id=0, pad_token_id=1)
optim = OptimConfig.from_dict({"type": "sam", "rho": 0.05, "base": {"type": "adamw", "lr": 3e-3}})
tm_cfg = SAMTrainModuleConfig(rank_microbatch_size=batch * seq, max_sequence_length=seq, optim=optim,
                              scheduler=WSDAlpha(warmup=1, decay_fraction=0.5), max_grad_norm=1.0)
has_eval_only = "eval_only" in inspect.signature(TransformerTrainModule.__init__).parameters
if not has_eval_only:  # asking for what this tree cannot do is an error, not silently dropped
    from olmo_core.exceptions import OLMoConfigurationError
    try:
        tm_cfg.build(TransformerConfig.olmo2_1M(vocab_size=256).build(init_device="cpu"), eval_only=True)
        raise AssertionError("eval_only=True was accepted by a tree without it")
    except OLMoConfigurationError as e:
        assert "eval_only" in str(e), e
tm = tm_cfg.build(TransformerConfig.olmo2_1M(vocab_size=256).build(init_device="cpu"))
start = {n: p.detach().clone() for n, p in tm.model.named_parameters()}
ds = NumpyFSLDatasetConfig(paths=[train_path], sequence_length=seq, tokenizer=tok, work_dir=save + "/_work").build()
dl = NumpyDataLoaderConfig(global_batch_size=batch * seq, seed=0, num_workers=0).build(
    ds, dp_process_group=tm.dp_process_group)
trainer = TrainerConfig(save_folder=save, max_duration=Duration.steps(steps), metrics_collect_interval=1,
                        callbacks={"sam_switch": SAMSwitchCallback()}).build(tm, dl)
trainer.fit()
assert not any(m == "olmo_sam" or m.startswith("olmo_sam.") for m in sys.modules), "used the plugin"
moved = max((p.detach() - start[n]).abs().max().item() for n, p in tm.model.named_parameters())
finite = all(torch.isfinite(p).all().item() for p in tm.model.parameters())
print("RESULT", tm.sam_ascents, trainer.global_step, moved > 0 and finite, has_eval_only)
"""


def _train_native(tree: Path, train: Path, out: Path, steps: int) -> list:
    script = out.parent / "native_train.py"
    script.write_text(NATIVE_SCRIPT)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(PYTHONPATH=str(tree / "src"), OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, str(script), str(train), str(out), str(steps), str(tree)], env=env,
                          capture_output=True, text=True, cwd=out.parent, timeout=600)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-4000:]
    return next(line for line in proc.stdout.splitlines() if line.startswith("RESULT ")).split()[1:]


def test_patch_applies_and_trains_on_an_earlier_release(tmp_path, tiny_corpus, earlier_fork):
    ascents, steps, trained, has_eval_only = _train_native(earlier_fork, tiny_corpus.train, tmp_path / "run", 4)
    assert has_eval_only == "False", "the earlier release must lack eval_only, or this test checks nothing"
    assert (ascents, steps, trained) == ("2", "4", "True")
