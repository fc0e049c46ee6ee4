"""Sections ``sam_cuda`` and ``fsdp_bf16``: the SAM step of the real train module on the device.

* ``sam_cuda``: one SAM and one ASAM step (two steps each, two micro-batches) of
  :class:`~olmo_sam.train.SAMTransformerTrainModule` in float32 on the GPU (TF32 off) against the
  independent float64 CPU computation of :func:`olmo_sam_tools.gpucheck.reference.reference_steps`:
  losses at ``w`` and ``w + eps`` and the updated weights within 1e-5.
* ``fsdp_bf16``: a SAM run through ``Trainer.fit()`` with FSDP over a one-rank process group
  (NCCL; gloo on a CPU dry run) and bfloat16 parameters (FSDP mixed precision, float32 master
  weights): every step an ascent, every loss finite, the loss falling.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from .common import Section, init_one_rank_group, reset_world_mesh, write_markov_corpus

__all__ = ["run_sam_cuda", "run_fsdp_bf16"]

VOCAB = 256
TOL = 1e-5


def _tokenizer():
    from olmo_core.data import TokenizerConfig

    return TokenizerConfig(vocab_size=VOCAB, eos_token_id=0, pad_token_id=1, bos_token_id=0)


def _adamw(lr: float, eps: float = 1e-8):
    from olmo_core.optim import AdamWConfig

    return AdamWConfig(lr=lr, betas=(0.9, 0.95), weight_decay=0.1, eps=eps)


def _sam_step_vs_reference(sec: Section, work: Path, train: Path, adaptive: bool) -> None:
    import torch

    from olmo_sam.models import model_config
    from olmo_sam.optim import SAMConfig
    from olmo_sam.train import build_experiment, build_trainer

    from .reference import reference_steps

    label = "asam" if adaptive else "sam"
    rho = 0.5 if adaptive else 0.05  # ASAM's radius is relative to |w|
    seq, lr, clip = 32, 2e-3, 0.5
    # Adam eps 1e-4: float32 round-off in tiny gradient elements must not dominate (see
    # tests/test_sam_step.py)
    cfg = build_experiment(
        model=model_config("tiny", vocab_size=VOCAB),
        tokenizer=_tokenizer(),
        train_paths=[str(train)],
        save_folder=str(work / label),
        optim=SAMConfig(base=_adamw(lr, eps=1e-4), rho=rho, adaptive=adaptive),
        sequence_length=seq,
        global_batch_size=4,
        micro_batch_size=2,
        max_steps=4,
    )
    cfg.train_module.max_grad_norm = clip
    reset_world_mesh()
    trainer = build_trainer(cfg)
    tm = trainer.train_module
    device = next(tm.model.parameters()).device
    sec.check(f"{label}: train module on {sec.mode.device}", device.type == sec.mode.device, str(device))
    arr = np.fromfile(train, dtype=np.uint16)
    batches = [
        torch.from_numpy(arr[i * 4 * seq : (i + 1) * 4 * seq].astype(np.int64).reshape(4, seq)) for i in range(2)
    ]
    ref_w, ref_losses, ref_pert = reference_steps(
        tm.model, batches, lr=lr, betas=(0.9, 0.95), wd=0.1, eps_adam=1e-4, rho=rho, adaptive=adaptive, clip=clip
    )
    loss_err = pert_err = 0.0
    ascents = 0
    for step, ids in enumerate(batches, start=1):
        trainer.global_step = step
        tm.train_batch({"input_ids": ids.clone()})
        tm.optim_step()
        tm.zero_grads()
        m = trainer._metrics[step]
        loss_err = max(loss_err, abs(float(m["train/CE loss"]) - ref_losses[step - 1]))
        pert_err = max(pert_err, abs(float(m["sam/perturbed CE loss"]) - ref_pert[step - 1]))
        ascents += int(float(m["sam/ascent"]) == 1.0)
    w_err = max(float((p.detach().cpu().double() - ref_w[n]).abs().max()) for n, p in tm.model.named_parameters())
    sec.record(
        label,
        {
            "device": str(device),
            "steps": len(batches),
            "rho": rho,
            "max_loss_error": loss_err,
            "max_perturbed_loss_error": pert_err,
            "max_weight_error": w_err,
            "reference_losses": ref_losses,
            "tolerance": TOL,
        },
    )
    sec.check(f"{label}: loss at w vs CPU reference", loss_err < TOL, f"max |diff| {loss_err:.2e} (tol {TOL:g})")
    sec.check(f"{label}: loss at w+eps vs CPU reference", pert_err < TOL, f"max |diff| {pert_err:.2e} (tol {TOL:g})")
    sec.check(f"{label}: weights after 2 steps vs CPU reference", w_err < TOL, f"max |diff| {w_err:.2e} (tol {TOL:g})")
    sec.check(
        f"{label}: an ascent every step, perturbation undone",
        ascents == len(batches) and not tm.optim.is_perturbed,
        f"{ascents}/{len(batches)} ascents",
    )


def run_sam_cuda(sec: Section, work: Path) -> None:
    import torch

    if sec.mode.dry_run:
        sec.skip("CUDA", "CPU dry run: the train module runs on CPU against the same reference")
    else:
        # float32 means float32: no TF32 matmuls in the comparison with the CPU computation
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
    train, _ = write_markov_corpus(work / "data", VOCAB, n_train=8_192, n_val=1_024)
    for adaptive in (False, True):
        sec.part(
            "asam step" if adaptive else "sam step",
            lambda: _sam_step_vs_reference(sec, work, train, adaptive),
            need_s=5,
        )


def _fsdp_run(sec: Section, work: Path) -> None:
    import torch
    from torch.distributed.fsdp import FSDPModule

    from olmo_sam.models import model_config
    from olmo_sam.optim import SAMConfig
    from olmo_sam.train import build_experiment, build_trainer, read_metrics

    dry = sec.mode.dry_run
    size, steps, seq, batch, micro = ("micro", 10, 64, 8, 4) if dry else ("tiny", 20, 128, 16, 8)
    train, _ = write_markov_corpus(work / "data", VOCAB, n_train=(steps + 2) * batch * (seq + 1) * 2, n_val=1_024)
    init_one_rank_group(sec.mode)
    reset_world_mesh()
    save = work / "fsdp"
    cfg = build_experiment(
        model=model_config(size, vocab_size=VOCAB),
        tokenizer=_tokenizer(),
        train_paths=[str(train)],
        save_folder=str(save),
        optim=SAMConfig(base=_adamw(1e-2), rho=0.05),
        sequence_length=seq,
        global_batch_size=batch,
        micro_batch_size=micro,
        max_steps=steps,
        dp="fsdp",
        param_dtype="bfloat16",
    )
    cfg.train_module.max_grad_norm = 1.0
    cfg.trainer.callbacks["checkpointer"].enabled = False
    trainer = build_trainer(cfg, setup=False)
    model = trainer.train_module.model
    is_fsdp = isinstance(model, FSDPModule) or any(isinstance(m, FSDPModule) for m in model.modules())
    mp = getattr(trainer.train_module, "dp_config", None)
    sec.check(
        "model wrapped by FSDP (world size 1)",
        is_fsdp and torch.distributed.get_world_size() == 1,
        f"backend {torch.distributed.get_backend()}",
    )
    trainer.fit()
    m = read_metrics(save)
    losses = [m[s]["train/CE loss"] for s in range(1, steps + 1) if "train/CE loss" in m.get(s, {})]
    ascents = [m[s].get("sam/ascent") for s in range(1, steps + 1) if s in m]
    k = max(len(losses) // 4, 1)
    first, last = float(np.mean(losses[:k])), float(np.mean(losses[-k:]))
    sec.record(
        "fsdp_bf16",
        {
            "model": size,
            "steps": steps,
            "sequence_length": seq,
            "batch": batch,
            "micro_batch": micro,
            "param_dtype": str(mp.param_dtype) if mp is not None else None,
            "backend": torch.distributed.get_backend(),
            "losses": losses,
            "first_quarter_mean": first,
            "last_quarter_mean": last,
        },
    )
    sec.check(f"fsdp bf16: {steps} losses logged", len(losses) == steps, f"{len(losses)} logged")
    sec.check("fsdp bf16: every loss finite", all(math.isfinite(x) for x in losses), "")
    sec.check("fsdp bf16: an ascent every step", ascents == [1.0] * steps, f"{ascents.count(1.0)}/{steps}")
    sec.check(
        "fsdp bf16: loss decreasing",
        last < first - 0.05 and losses[-1] < losses[0],
        f"mean of first {k} {first:.3f} -> last {k} {last:.3f}",
    )


def run_fsdp_bf16(sec: Section, work: Path) -> None:
    if sec.mode.dry_run:
        sec.skip("NCCL", "CPU dry run: the one-rank process group uses gloo; 'micro' model, 10 steps")
    sec.part("fsdp bf16 SAM run", lambda: _fsdp_run(sec, work), need_s=5)
