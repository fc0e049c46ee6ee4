"""Load a Hugging Face causal LM for evaluation, optionally quantized with bitsandbytes.

[SAM-PT] measures compression robustness with bitsandbytes 4-bit NF4 (Sec 3.5.1, App D.1). The
quantized model is built with ``BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type=...)``
and checked after loading: every quantizable linear layer must really be a ``Linear4bit`` (or
``Linear8bitLt``) of the requested type, so a spelling slip can never evaluate bf16 weights
under a "4-bit" label.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Tuple

import torch
from olmo_core.exceptions import OLMoConfigurationError

__all__ = ["QUANT_KINDS", "HF_4BIT_BLOCKSIZE", "bnb_config", "load_causal_lm", "count_quantized", "cpu_4bit_misfits"]

#: ``none`` | bitsandbytes 4-bit ``nf4`` (the paper's) / ``fp4`` | 8-bit ``int8`` (LLM.int8()).
QUANT_KINDS = ("none", "nf4", "fp4", "int8")
#: the 4-bit blocksize of transformers' ``BitsAndBytesConfig`` (not configurable there)
HF_4BIT_BLOCKSIZE = 64


def cpu_4bit_misfits(linears, blocksize: int):
    """The layers of ``linears`` (``(name, nn.Linear)``) that bitsandbytes' CPU 4-bit kernels
    cannot run at ``blocksize``: ``(split, narrow)``, lists of ``(name, width)``.

    Found by trying bitsandbytes 0.50.2 on this machine's CPU (AVX-512 BF16): its CPU dequantizer
    and its inference kernel treat every weight row as whole blocks, so a layer whose input width
    is not a multiple of ``blocksize`` (``split``) is dequantized wrongly (blocksizes <= 1024) and
    crashes in the forward pass (every blocksize); the AVX-512 BF16 inference kernel also needs
    the output width to be a multiple of 32 (``narrow``). GPUs have neither limit."""
    split = [(n, m.in_features) for n, m in linears if m.in_features % blocksize]
    narrow = []
    if not split:
        from bitsandbytes.functional import has_avx512bf16

        if has_avx512bf16():
            narrow = [(n, m.out_features) for n, m in linears if m.out_features % 32]
    return split, narrow


def bnb_config(kind: str, compute_dtype: torch.dtype):
    from transformers import BitsAndBytesConfig

    if kind in ("nf4", "fp4"):
        return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type=kind, bnb_4bit_compute_dtype=compute_dtype)
    if kind == "int8":
        return BitsAndBytesConfig(load_in_8bit=True)
    raise OLMoConfigurationError(f"quantization must be one of {QUANT_KINDS}, got {kind!r}")


def count_quantized(model: torch.nn.Module) -> Tuple[int, int, set]:
    """(quantized linear layers, plain ``nn.Linear`` layers, 4-bit quant types seen)."""
    import bitsandbytes as bnb

    n_q, n_plain, types = 0, 0, set()
    for m in model.modules():
        if isinstance(m, bnb.nn.Linear4bit):
            n_q += 1
            types.add(getattr(m.weight, "quant_type", None))
        elif isinstance(m, bnb.nn.Linear8bitLt):
            n_q += 1
            types.add("int8")
        elif type(m) is torch.nn.Linear:
            n_plain += 1
    return n_q, n_plain, types


def load_causal_lm(
    model_dir: str | Path,
    quant: Optional[str] = None,
    *,
    device: str = "cpu",
    dtype: Optional[torch.dtype] = None,
):
    """``(model, tokenizer)`` from a local HF model directory, in eval mode."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model_dir = Path(model_dir)
    if not (model_dir / "config.json").is_file():
        raise OLMoConfigurationError(
            f"{model_dir} is not a Hugging Face model directory (no config.json); export an "
            f"OLMo-core checkpoint first with 'olmo-sam export-hf'"
        )
    quant = quant or "none"  # (any other than none, nf4, fp4, int8 is refused by bnb_config)
    tok = AutoTokenizer.from_pretrained(model_dir)
    if quant == "none":
        model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype or torch.float32)
        model.to(device)
    else:
        compute = dtype or (torch.bfloat16 if device.startswith("cuda") else torch.float32)
        model = AutoModelForCausalLM.from_pretrained(
            model_dir, quantization_config=bnb_config(quant, compute), device_map=device
        )
        n_q, _, types = count_quantized(model)
        want = {"int8"} if quant == "int8" else {quant}
        if n_q == 0 or types != want:
            raise RuntimeError(
                f"loading {model_dir} with {quant} gave {n_q} quantized layers of type(s) "
                f"{sorted(map(str, types))}; refusing to evaluate a model that is not {quant}"
            )
        if quant != "int8" and not device.startswith("cuda"):
            import bitsandbytes as bnb

            q4 = [(n, m) for n, m in model.named_modules() if isinstance(m, bnb.nn.Linear4bit)]
            split, narrow = cpu_4bit_misfits(q4, HF_4BIT_BLOCKSIZE)
            if split or narrow:
                name, width = (split or narrow)[0]
                raise OLMoConfigurationError(
                    f"{model_dir} cannot run {quant} on this CPU: bitsandbytes' CPU 4-bit kernels need every "
                    f"layer's input width to be a multiple of transformers' blocksize {HF_4BIT_BLOCKSIZE} (and, on "
                    f"AVX-512 BF16, its output width a multiple of 32), but {name} has {width} "
                    f"{'inputs' if split else 'outputs'}; evaluate it 4-bit on a GPU, or use --quant int8 "
                    "('olmo-sam probe quantize' takes a blocksize)"
                )
    model.eval()
    return model, tok
