"""patches/: the fork patch is current, applies to pristine OLMo-core 3.0.0, and trains exactly like
the plugin (same weights after a SAM + annealing-switch run), without olmo_sam importable. The patch
targets the pinned OLMo-core 3.0.0 only (no code for earlier trees)."""

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

from olmo_sam.files import config_to_plain
from olmo_sam.optim import SAMConfig, WSDAlpha
from olmo_sam.train import SAMSwitchCallback, run_experiment

ROOT = Path(__file__).resolve().parents[1]
PATCH = ROOT / "patches" / "olmo-core-3.0.0-sam.patch"

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
    proc = subprocess.run(
        [sys.executable, str(ROOT / "patches" / "make_patch.py"), "--check"],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
    )
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


def test_patched_fork_trains_exactly_like_the_plugin(tmp_path, tiny_corpus, fork):
    cfg = tiny_experiment(
        tiny_corpus,
        tmp_path / "plugin",
        SAMConfig(base=adamw()),
        max_steps=6,
        max_grad_norm=1.0,
        scheduler=WSDAlpha(warmup=1, decay_fraction=0.5),
        callbacks={"sam_switch": SAMSwitchCallback()},
    )
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
    proc = subprocess.run(
        [sys.executable, str(script), str(cfg_path), str(out), str(fork)],
        env=env,
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "SAM ascents 3" in proc.stdout
    got = torch.load(out)
    for n, p in want.items():
        assert torch.equal(got[n], p), n


def test_the_plugin_refuses_to_register_over_the_patched_fork(fork):
    """With the fork patch applied, OLMo-core registers 'sam' and the schedules itself; importing
    the plugin as well silently re-registered them under its own classes."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["PYTHONPATH"] = os.pathsep.join([str(fork / "src"), str(ROOT)])
    proc = subprocess.run([sys.executable, "-c", "import olmo_sam"], env=env, capture_output=True, text=True)
    assert proc.returncode == 1 and "carries olmo-sam's fork patch (olmo_core.sam)" in proc.stderr, proc.stderr[-2000:]
