"""Which 4-bit block sizes bitsandbytes' CPU kernels run correctly, per layer shape.

For each blocksize x NF4/FP4 x double quantization x (out, in) layer shape: quantize a random
weight with ``bnb.nn.Linear4bit``, count dequantized weights that differ from the plain-torch
reference (:func:`olmo_sam.probes.quantize.reference_4bit_dequant` rules, ties aside), then run
the inference forward (eval, no grad) and compare it with ``x @ dequant(W)^T``.

    OMP_NUM_THREADS=1 PYTHONPATH=. python scripts/bnb_cpu_blocksizes.py
"""

from __future__ import annotations

import bitsandbytes as bnb
import bitsandbytes.functional as F
import torch

from olmo_sam.probes.quantize import BNB_4BIT_BLOCKSIZES, _4bit_mismatches

SHAPES = [(64, 64), (64, 96), (128, 256), (96, 512), (64, 2048), (32, 4096), (48, 128)]


def main() -> None:
    torch.manual_seed(0)
    print(f"bitsandbytes {bnb.__version__}, AVX-512 BF16: {bool(F.has_avx512bf16())}")
    print("blocksize quant dq (out, in)    mismatched/total  forward")
    for bs in BNB_4BIT_BLOCKSIZES:
        for qt in ("nf4", "fp4"):
            for dq in (False, True):
                for out_f, in_f in SHAPES:
                    w = torch.randn(out_f, in_f) * 0.05
                    q = bnb.nn.Linear4bit(
                        in_f,
                        out_f,
                        bias=False,
                        compute_dtype=torch.float32,
                        compress_statistics=dq,
                        quant_type=qt,
                        device="meta",
                    )
                    q.weight = bnb.nn.Params4bit(
                        w.clone(), requires_grad=False, quant_type=qt, blocksize=bs, compress_statistics=dq, module=q
                    )
                    q = q.to("cpu").eval()
                    deq = F.dequantize_4bit(q.weight.data, q.weight.quant_state)
                    bad, _ = _4bit_mismatches(deq, w, q.weight.quant_state)
                    x = torch.randn(3, in_f)
                    try:
                        with torch.no_grad():
                            y = q(x)
                        want = x @ deq.float().T
                        fwd = f"ok (rel. err {float((y - want).abs().max() / want.abs().max()):.1e})"
                    except Exception as e:  # noqa: BLE001
                        fwd = f"CRASH {type(e).__name__}"
                    print(f"{bs:9d} {qt} {str(dq):5s} {str((out_f, in_f)):12s} {bad:6d}/{w.numel():<7d}  {fwd}")


if __name__ == "__main__":
    main()
