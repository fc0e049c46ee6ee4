"""Section ``bnb``: bitsandbytes quantization on the device's kernels, and what it costs in loss.

A tiny OLMo-core model is trained on the Markov stream (OLMo-core ``Trainer.fit()``), then each of
NF4, NF4 with double quantization and LLM.int8 is applied by :func:`olmo_sam.probes.quantize.
quantize_transformer` on the device (on a GPU, bitsandbytes packs and runs with its CUDA kernels).
The proofs are those of ``tests/test_probes_quantize.py``: every block linear replaced, the LM head
kept, packed storage of 4 (8) bits per weight, dequantized weights within the rounding bound (and,
for NF4, equal to the plain-torch round-to-nearest of :func:`~olmo_sam.probes.quantize.
reference_4bit_dequant`), and the validation (PT) loss changed, higher for 4 bits.
"""

from __future__ import annotations

import copy
import math
from pathlib import Path

from .common import Section, reset_world_mesh, write_markov_corpus

__all__ = ["run_bnb", "SPECS"]

VOCAB = 256
SPECS = ("nf4", "nf4-dq", "int8")
LINEARS_PER_BLOCK = 7  # w_q, w_k, w_v, w_out, w1, w2, w3


def _sizes(sec: Section) -> tuple[int, int]:
    """(training steps, batch in sequences of 64 tokens)"""
    return (30, 8) if sec.mode.dry_run else (200, 32)


def _preset(sec: Section) -> str:
    return "micro" if sec.mode.dry_run else "tiny"


def _train_small_model(sec: Section, work: Path, train: Path):
    from olmo_core.data import TokenizerConfig
    from olmo_core.optim import AdamWConfig

    from olmo_sam.models import model_config
    from olmo_sam.optim import CosineAlpha
    from olmo_sam.train import build_experiment, run_experiment

    steps, batch = _sizes(sec)
    cfg = build_experiment(
        model=model_config(_preset(sec), vocab_size=VOCAB),
        tokenizer=TokenizerConfig(vocab_size=VOCAB, eos_token_id=0, pad_token_id=1, bos_token_id=0),
        train_paths=[str(train)],
        save_folder=str(work / "train"),
        optim=AdamWConfig(lr=3e-3, betas=(0.9, 0.95), weight_decay=0.1),
        sequence_length=64,
        global_batch_size=batch,
        max_steps=steps,
    )
    cfg.train_module.scheduler = CosineAlpha(warmup=max(steps // 10, 1))
    cfg.train_module.max_grad_norm = 1.0
    cfg.trainer.callbacks["checkpointer"].enabled = False
    reset_world_mesh()  # a dry run shares its process with the FSDP sections
    trainer = run_experiment(cfg)
    model = trainer.train_module.model.eval()
    sec.record(
        "model", {"preset": _preset(sec), "train_steps": steps, "params": sum(p.numel() for p in model.parameters())}
    )
    return model


def _check_spec(sec: Section, model, spec: str, val: Path, base_loss: float, n_blocks: int) -> None:
    import bitsandbytes as bnb
    import torch

    from olmo_sam.evals.lm_loss import lm_loss
    from olmo_sam.probes.quantize import (
        QuantizationError,
        parse_quant_spec,
        quantize_transformer,
        reference_4bit_dequant,
    )

    # bitsandbytes' CPU 4-bit kernels need input widths that are multiples of the blocksize: the
    # dry run's micro model is 32 wide, so it quantizes in blocks of 32 (the GPU run keeps 64)
    cpu_4bit = sec.mode.dry_run and spec != "int8"
    cfg = parse_quant_spec(f"{spec}:blocksize=32" if cpu_4bit else spec)
    q = copy.deepcopy(model)
    try:
        report = quantize_transformer(q, cfg)  # verifies types and the rounding bound, raises if not
        verified = ""
    except QuantizationError as e:
        report, verified = None, str(e)
    sec.check(f"{spec}: quantize_transformer verification", report is not None, verified[:300])
    if report is None:
        return
    bnb_type = bnb.nn.Linear4bit if cfg.bits == 4 else bnb.nn.Linear8bitLt
    quantized = {n: m for n, m in q.named_modules() if isinstance(m, bnb_type)}
    plain = {n for n, m in q.named_modules() if type(m) is torch.nn.Linear}
    storage = torch.uint8 if cfg.bits == 4 else torch.int8
    devices = {m.weight.device.type for m in quantized.values()}
    sec.check(
        f"{spec}: every block linear is {bnb_type.__name__}, LM head kept",
        len(quantized) == LINEARS_PER_BLOCK * n_blocks and plain == {"lm_head.w_out"},
        f"{len(quantized)} quantized, full precision: {sorted(plain)}",
    )
    sec.check(f"{spec}: packed weights on {sec.mode.device}", devices == {sec.mode.device}, str(devices))
    packed = sum(m.weight.numel() * m.weight.element_size() for m in quantized.values())
    original = sum(model.get_submodule(n).weight.numel() * 4 for n in quantized)
    sec.check(
        f"{spec}: {cfg.bits} bits per weight",
        all(m.weight.dtype == storage for m in quantized.values()) and packed * (32 // cfg.bits) == original,
        f"packed {packed} B vs float32 {original} B",
    )
    agree = None
    if cfg.bits == 4 and not cfg.double_quant:
        fractions = []
        for n, m in quantized.items():
            deq = bnb.functional.dequantize_4bit(m.weight.data, m.weight.quant_state)  # device kernel
            ref = reference_4bit_dequant(model.get_submodule(n).weight, cfg.quant_type, cfg.blocksize)
            fractions.append(float(((deq.float().cpu() - ref).abs() < 1e-6).float().mean()))
        agree = min(fractions)
        sec.check(
            f"{spec}: dequantized = round-to-nearest NF4 (plain torch)",
            agree > 0.99,
            f"worst module: {agree:.4f} of weights equal (ties aside)",
        )
    with torch.no_grad():
        q_loss = lm_loss(q, [val], seq_len=64, vocab_size=VOCAB, max_sequences=64).loss
    delta = q_loss - base_loss
    sec.record(
        spec,
        {
            "base_loss": base_loss,
            "quantized_loss": q_loss,
            "loss_increase": delta,
            "compression": report.compression,
            "max_error_ratio": report.max_error_ratio,
            "mismatched_4bit_weights": report.mismatched_4bit_weights,
            "blocksize": cfg.blocksize if cfg.bits == 4 else None,
            "nf4_reference_agreement": agree,
            "device": sorted(devices)[0] if devices else None,
        },
    )
    ok = math.isfinite(q_loss) and q_loss != base_loss and abs(delta) < 0.5 and (cfg.bits == 8 or delta > 0)
    sec.check(
        f"{spec}: PT loss changed{' and rose' if cfg.bits == 4 else ''}",
        ok,
        f"{base_loss:.4f} -> {q_loss:.4f} ({delta:+.4f})",
    )


def run_bnb(sec: Section, work: Path) -> None:
    try:
        import bitsandbytes  # noqa: F401
    except ImportError as e:
        sec.skip("bnb", f"bitsandbytes is not installed ({e}); was it left out of the wheels?")
        return
    import torch

    from olmo_sam.evals.lm_loss import lm_loss

    sec.record("bitsandbytes", bitsandbytes.__version__)
    if sec.mode.dry_run:
        sec.skip("CUDA kernels", "CPU dry run: bitsandbytes' CPU kernels quantize and run the model")
    train, val = write_markov_corpus(
        work / "data", VOCAB, n_train=_sizes(sec)[0] * _sizes(sec)[1] * 65 + 1_000, n_val=8_192
    )
    model = sec.part("train a small model", lambda: _train_small_model(sec, work, train), need_s=10)
    if model is None:
        return
    with torch.no_grad():
        base_loss = lm_loss(model, [val], seq_len=64, vocab_size=VOCAB, max_sequences=64).loss
    sec.record("base_loss", base_loss)
    n_blocks = len(model.blocks)
    for spec in SPECS:
        sec.part(spec, lambda: _check_spec(sec, model, spec, val, base_loss, n_blocks), need_s=3)
