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

__all__ = ["QUANT_KINDS", "bnb_config", "load_causal_lm", "count_quantized"]

#: ``none`` | bitsandbytes 4-bit ``nf4`` (the paper's) / ``fp4`` | 8-bit ``int8`` (LLM.int8()).
QUANT_KINDS = ("none", "nf4", "fp4", "int8")


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
    model.eval()
    return model, tok
