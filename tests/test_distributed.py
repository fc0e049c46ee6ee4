"""torchrun --nproc_per_node=2 (gloo): DDP and FSDP SAM (and its MSAM/LookSAM variants) against
one process, and local scope.

One torchrun launch runs every distributed configuration in turn (start-up dominates on CPU).
Single process: global batch 8 sequences in 4 micro-batches of 2. Two ranks: 4 sequences each in
2 micro-batches of 2 -- the same global batch, gradient clipping on.
"""

from __future__ import annotations

import copy
import math
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from helpers import adamw, losses, tiny_experiment
from olmo_core.exceptions import OLMoConfigurationError

from olmo_sam.files import to_yaml
from olmo_sam.optim import SAMConfig
from olmo_sam.train import build_trainer, read_metrics, run_experiment

WORKER = Path(__file__).parent / "workers" / "train_worker.py"
STEPS = 10
LOCAL_STEPS = 2
VARIANT_STEPS = 5  # LookSAM with interval 2: full SAM at steps 2 and 4, g_v reused at 3 and 5
VARIANTS = ("msam", "looksam")
CLIP = 1.0
LR, WD, ADAM_EPS, RHO = 2e-3, 0.1, 1e-4, 0.05

pytestmark = pytest.mark.slow


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _optim(scope="global", variant="sam"):
    base = adamw(lr=LR, wd=WD)
    base.eps = ADAM_EPS
    interval = 2 if variant == "looksam" else 1
    return SAMConfig(base=base, rho=RHO, scope=scope, variant=variant, interval=interval)


def _cfg(corpus, folder, *, dp=None, scope="global", steps=STEPS, variant="sam", **kw):
    return tiny_experiment(
        corpus,
        folder,
        _optim(scope, variant),
        max_steps=steps,
        global_batch_size=8,
        micro_batch_size=2,
        max_grad_norm=CLIP,
        dp=dp,
        **kw,
    )


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tiny_corpus):
    root = tmp_path_factory.mktemp("dist")
    single = root / "single"
    run_experiment(_cfg(tiny_corpus, single))
    for v in VARIANTS:
        run_experiment(_cfg(tiny_corpus, root / f"single_{v}", variant=v, steps=VARIANT_STEPS))
    variants = {
        "ddp": _cfg(tiny_corpus, root / "ddp", dp="ddp"),
        "fsdp": _cfg(tiny_corpus, root / "fsdp", dp="fsdp"),
        "fsdp_bf16": _cfg(tiny_corpus, root / "fsdp_bf16", dp="fsdp", param_dtype="bfloat16", steps=3),
        "ddp_local": _cfg(tiny_corpus, root / "ddp_local", dp="ddp", scope="local", steps=LOCAL_STEPS),
        **{
            f"{dp}_{v}": _cfg(tiny_corpus, root / f"{dp}_{v}", dp=dp, variant=v, steps=VARIANT_STEPS)
            for v in VARIANTS
            for dp in ("ddp", "fsdp")
        },
    }
    paths = []
    for name, cfg in variants.items():
        p = root / f"{name}.yaml"
        p.write_text(to_yaml(cfg))
        paths.append(str(p))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path), OMP_NUM_THREADS="1")
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc-per-node",
            "2",
            "--master-port",
            str(_free_port()),
            str(WORKER),
            *paths,
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, (proc.stdout[-3000:], proc.stderr[-5000:])
    return root


@pytest.mark.parametrize("dp", ["ddp", "fsdp"])
def test_global_scope_matches_single_process(runs, dp):
    single, dist_ = losses(runs / "single"), losses(runs / dp)
    assert sorted(single) == sorted(dist_) == list(range(1, STEPS + 1))
    worst = max(abs(single[s] - dist_[s]) for s in single)
    assert worst <= 1e-5, (single, dist_)

    from olmo_sam.checkpoints import load_transformer

    m1, _ = load_transformer(runs / "single")
    m2, info = load_transformer(runs / dp)  # FSDP checkpoints are sharded: this re-assembles them
    assert info.step == STEPS
    for (n, p), (_, q) in zip(m1.named_parameters(), m2.named_parameters()):
        assert torch.allclose(p, q, atol=1e-5, rtol=0), n


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("dp", ["ddp", "fsdp"])
def test_variants_match_single_process(runs, dp, variant):
    """MSAM's momentum norm and LookSAM's g_v (norms and <g, g_sam> over the global gradient)
    are the same on 2 ranks as on one process: same losses and weights to 1e-5."""
    single, dist_ = losses(runs / f"single_{variant}"), losses(runs / f"{dp}_{variant}")
    assert sorted(single) == sorted(dist_) == list(range(1, VARIANT_STEPS + 1))
    worst = max(abs(single[s] - dist_[s]) for s in single)
    assert worst <= 1e-5, (single, dist_)
    m = read_metrics(runs / f"{dp}_{variant}")
    if variant == "looksam":
        assert [m[s]["sam/looksam reuse"] for s in (3, 5)] == [1.0, 1.0]
    else:
        assert all(m[s]["sam/ascent"] == 1.0 for s in range(2, VARIANT_STEPS + 1))

    from olmo_sam.checkpoints import load_transformer

    m1, _ = load_transformer(runs / f"single_{variant}")
    m2, info = load_transformer(runs / f"{dp}_{variant}")
    assert info.step == VARIANT_STEPS
    for (n, p), (_, q) in zip(m1.named_parameters(), m2.named_parameters()):
        assert torch.allclose(p, q, atol=1e-5, rtol=0), n


def test_fsdp_bf16_params_run_and_track_fp32(runs):
    bf16, single = losses(runs / "fsdp_bf16"), losses(runs / "single")
    assert sorted(bf16) == [1, 2, 3]
    for s in (1, 2, 3):
        assert math.isfinite(bf16[s])
        assert abs(bf16[s] - single[s]) < 5e-2  # bf16 compute, fp32 master weights and ascent


def _rank_batches(cfg, world: int, steps: int):
    """The batches OLMo-core's data loader hands each DP rank, built the same way."""
    from olmo_core.data import DataCollator, NumpyDataLoaderBase

    dataset = cfg.dataset.build()
    dataset.prepare()
    out = []
    for rank in range(world):
        loader = NumpyDataLoaderBase.wrap_numpy_dataset(
            dataset,
            global_batch_size=cfg.data_loader.global_batch_size,
            collator=DataCollator(pad_token_id=dataset.pad_token_id, vocab_size=dataset.vocab_size),
            work_dir=cfg.data_loader.work_dir,
            dp_world_size=world,
            dp_rank=rank,
            fs_local_rank=0,
            seed=cfg.data_loader.seed,
        )
        loader.reshuffle(epoch=1)
        batches = []
        for i, b in enumerate(loader):
            if i == steps:
                break
            batches.append(b["input_ids"].clone())
        loader.reset()
        out.append(batches)
    return out


def test_local_scope_each_rank_ascends_along_its_own_gradient(runs, tiny_corpus, tmp_path):
    """Defining property of scope='local' (the paper's public DDP code): rank r perturbs with
    eps_r = rho g_r/||g_r|| from ITS OWN micro-batches, and the update averages the ranks'
    gradients at their own perturbed points. Simulated here in one process, by hand."""
    cfg = _cfg(tiny_corpus, tmp_path / "sim", steps=LOCAL_STEPS)
    trainer = build_trainer(cfg)  # same seed -> the same initial weights as the torchrun run
    model = copy.deepcopy(trainer.train_module.model).eval()
    rank_batches = _rank_batches(cfg, 2, LOCAL_STEPS)
    names = [n for n, _ in model.named_parameters()]
    w = {n: p.detach().clone() for n, p in model.named_parameters()}
    m = {n: torch.zeros_like(v) for n, v in w.items()}
    v = {n: torch.zeros_like(v) for n, v in w.items()}

    def grad(params, ids):
        params = {n: params[n].clone().requires_grad_(True) for n in names}
        logits = torch.func.functional_call(model, params, (ids,))
        loss = F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1))
        return dict(zip(names, torch.autograd.grad(loss, [params[n] for n in names])))

    for t in range(1, LOCAL_STEPS + 1):
        per_rank = []
        for r in range(2):
            ids = rank_batches[r][t - 1]
            g = grad(w, ids)
            norm = math.sqrt(sum(float((g[n] ** 2).sum()) for n in names))
            e = {n: RHO * g[n] / (norm + 1e-12) for n in names}
            per_rank.append(grad({n: w[n] + e[n] for n in names}, ids))
        g = {n: (per_rank[0][n] + per_rank[1][n]) / 2 for n in names}
        total = math.sqrt(sum(float((g[n] ** 2).sum()) for n in names))
        coef = min(1.0, CLIP / (total + 1e-6))
        for n in names:
            gn = g[n] * coef
            w[n] = w[n] * (1 - LR * WD)
            m[n] = 0.9 * m[n] + 0.1 * gn
            v[n] = 0.95 * v[n] + 0.05 * gn**2
            w[n] = w[n] - LR * (m[n] / (1 - 0.9**t)) / ((v[n] / (1 - 0.95**t)).sqrt() + ADAM_EPS)

    from olmo_sam.checkpoints import load_transformer

    got, _ = load_transformer(runs / "ddp_local")
    worst = max(float((p - w[n]).abs().max()) for n, p in got.named_parameters())
    assert worst < 1e-5, worst
    # and it is not the global-scope update: same loss at step 1, a different first update
    g_losses, l_losses = losses(runs / "ddp"), losses(runs / "ddp_local")
    assert l_losses[1] == pytest.approx(g_losses[1], abs=1e-6)
    assert abs(l_losses[2] - g_losses[2]) > 1e-5


def test_local_scope_under_fsdp_is_a_configuration_error(tmp_path, tiny_corpus):
    cfg = _cfg(tiny_corpus, tmp_path / "x", dp="fsdp", scope="local")
    with pytest.raises(OLMoConfigurationError, match="FSDP"):
        build_trainer(cfg)
