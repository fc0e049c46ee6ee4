"""Post-training quantization with bitsandbytes, and proof that it happened.

The compression-forgetting measurement of [SAM-PT] Sec 3.1/3.4: the pretraining validation
loss of a base model quantized to 4 bits (NF4, the bitsandbytes scheme of QLoRA) or 8 bits
(LLM.int8), minus that of the same model unquantized.

Two ways in:

* an **OLMo-core checkpoint** (:func:`quantize_transformer`): the model's ``nn.Linear`` layers
  are replaced by real ``bnb.nn.Linear4bit`` / ``bnb.nn.Linear8bitLt`` modules holding packed
  weights; the forward pass then runs bitsandbytes' kernels (CPU or GPU).
* an **exported Hugging Face model directory** (:func:`load_hf_quantized`): transformers'
  ``from_pretrained(..., quantization_config=BitsAndBytesConfig(...))``, the path GPU users take.

Which layers (both paths, the transformers convention): every linear projection of the
transformer blocks (OLMo-core ``blocks.*.attention.w_q|w_k|w_v|w_out`` and
``blocks.*.feed_forward.w1|w2|w3``; HF ``q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj``).
The LM head stays in full precision unless ``quantize_lm_head=True``; the token embedding is
a lookup table, not a linear layer, and stays in full precision unless
``quantize_embeddings=True`` (OLMo-core path only: ``bnb.nn.Embedding4bit``/``Embedding8bit``;
transformers never quantizes embeddings). Norm gains are never quantized.

A misspelled option must not silently evaluate the full-precision model (a known forgetting
codebase passed ``load_in_4_bit`` and measured bf16): :meth:`QuantConfig.from_dict` rejects
unknown keys, and :func:`inspect_quantization` counts quantized modules, storage dtypes and bytes
so that :meth:`QuantReport.verify` fails loudly when nothing (or the wrong thing) was quantized.
Options are typed: booleans take ``true``/``false`` only, numbers must parse, each error names
the option. The proof compares every dequantized 4-bit weight with the exact reference
dequantizer (:func:`reference_4bit_dequant`), then runs each 4-bit layer's forward once against
``x @ dequant(W)^T``. bitsandbytes 0.50.2's CPU kernels need each layer's input width to be a
multiple of the blocksize (otherwise its dequantizer is wrong and its inference kernel crashes)
and, on AVX-512 BF16 CPUs, the output width to be a multiple of 32; such settings are refused
before quantizing, naming the blocksizes that work.
"""

from __future__ import annotations

import copy
import difflib
import fnmatch
import logging
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import torch
import torch.nn as nn
from olmo_core.exceptions import OLMoConfigurationError

from ..config import Checked, ConfigError, check_value, setting, unknown_setting
from ..evals.hf_load import HF_4BIT_BLOCKSIZE, cpu_4bit_misfits
from ..preflight import CommandError

log = logging.getLogger(__name__)

__all__ = [
    "QuantConfig",
    "QUANT_PRESETS",
    "QuantizationError",
    "QuantReport",
    "parse_quant_spec",
    "quantize_transformer",
    "load_hf_quantized",
    "inspect_quantization",
    "reference_4bit_dequant",
]

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
#: Block sizes bitsandbytes accepts for 4-bit quantization.
BNB_4BIT_BLOCKSIZES = (32, 64, 128, 256, 512, 1024, 2048, 4096)


class QuantizationError(CommandError):
    """The model is not quantized the way it was asked to be."""


# transformers' BitsAndBytesConfig names, accepted as aliases so copied model-args work
_HF_ALIASES = {
    "load_in_4bit": "bits",
    "load_in_8bit": "bits",
    "bnb_4bit_quant_type": "quant_type",
    "bnb_4bit_use_double_quant": "double_quant",
    "bnb_4bit_compute_dtype": "compute_dtype",
    "llm_int8_threshold": "int8_threshold",
    "llm_int8_skip_modules": "skip_modules",
}


@dataclass(frozen=True)
class QuantConfig(Checked):
    """One bitsandbytes quantization setting (see the module docstring for the layers).

    :param bits: 4 (``Linear4bit``) or 8 (``Linear8bitLt``, LLM.int8).
    :param quant_type: 4-bit data type, ``"nf4"`` (the paper's) or ``"fp4"``.
    :param double_quant: 4-bit only: quantize the per-block absmax constants again (QLoRA).
    :param blocksize: 4-bit only: weights per absmax block; one of :data:`BNB_4BIT_BLOCKSIZES`.
        The Hugging Face path only supports :data:`HF_4BIT_BLOCKSIZE`.
    :param compute_dtype: dtype the dequantized matmul runs in.
    :param int8_threshold: 8-bit only: LLM.int8 outlier threshold (transformers' default 6.0).
    :param quantize_lm_head: quantize the output projection too (default: keep full precision).
    :param quantize_embeddings: quantize the token embedding (OLMo-core path only).
    :param skip_modules: glob patterns of module names to keep in full precision
        (e.g. ``"blocks.0.*"``); on the HF path plain names, passed to transformers'
        ``llm_int8_skip_modules``.
    """

    bits: int = setting(4, choices=(4, 8))
    quant_type: str = setting("nf4", choices=("nf4", "fp4"))
    double_quant: bool = False
    blocksize: int = setting(64, choices=BNB_4BIT_BLOCKSIZES)
    compute_dtype: str = setting("float32", choices=tuple(_DTYPES))
    int8_threshold: float = setting(6.0, hint=" (the LLM.int8 outlier threshold)")
    quantize_lm_head: bool = False
    quantize_embeddings: bool = False
    skip_modules: Tuple[str, ...] = ()

    def __post_init__(self):
        super().__post_init__()
        object.__setattr__(self, "skip_modules", tuple(self.skip_modules))
        if self.bits == 8:
            # 4-bit-only options set away from their defaults would be silently meaningless
            for name, default in (("double_quant", False), ("blocksize", 64), ("quant_type", "nf4")):
                if getattr(self, name) != default:
                    raise ConfigError.at(name, "applies to 4-bit quantization only, but bits=8; drop it or set bits=4")

    @property
    def name(self) -> str:
        """Short label, e.g. ``nf4``, ``nf4-dq-b128``, ``int8``: distinct for settings that differ
        (except in ``skip_modules`` patterns, counted only)."""
        if self.bits == 8:
            s = "int8"
        else:
            s = self.quant_type + ("-dq" if self.double_quant else "")
            if self.blocksize != 64:
                s += f"-b{self.blocksize}"
        if self.bits == 8 and self.int8_threshold != 6.0:
            s += f"-t{self.int8_threshold:g}"
        if self.compute_dtype != "float32":
            s += f"-{self.compute_dtype}"
        if self.quantize_lm_head:
            s += "-head"
        if self.quantize_embeddings:
            s += "-emb"
        if self.skip_modules:
            s += "-skip" + str(len(self.skip_modules))
        return s

    @property
    def torch_compute_dtype(self) -> torch.dtype:
        return _DTYPES[self.compute_dtype]

    def to_dict(self) -> Dict[str, Any]:
        d = asdict(self)
        d["skip_modules"] = list(self.skip_modules)
        return d

    @classmethod
    def from_dict(cls, options: Mapping[str, Any]) -> "QuantConfig":
        """Build from a mapping; every key must be a field (or a transformers
        ``BitsAndBytesConfig`` name with the same meaning). An unknown or misspelled key is an
        error naming it."""
        known = {f.name for f in fields(cls)}
        out: Dict[str, Any] = {}
        for key, value in options.items():
            if key in known:
                target = key
            elif key in _HF_ALIASES:
                target = _HF_ALIASES[key]
                if key in ("load_in_4bit", "load_in_8bit"):
                    if not check_value(value, bool, key):
                        continue
                    value = 4 if key == "load_in_4bit" else 8
                elif key == "bnb_4bit_compute_dtype" and isinstance(value, torch.dtype):
                    value = str(value).replace("torch.", "")
            else:
                raise unknown_setting(key, sorted(known | set(_HF_ALIASES)), key)
            if target in out and out[target] != value:
                raise ConfigError.at(
                    target,
                    f"given twice with different values ({out[target]!r} and {value!r}, the latter from {key!r})",
                )
            out[target] = value
        if "skip_modules" in out and out["skip_modules"] is not None:
            out["skip_modules"] = tuple(out["skip_modules"])
        elif "skip_modules" in out:
            out.pop("skip_modules")
        return cls(**out)

    # -- the Hugging Face path ---------------------------------------------------------------------

    def to_transformers(self):
        """The equivalent ``transformers.BitsAndBytesConfig``; options it cannot express are errors."""
        from transformers import BitsAndBytesConfig

        if self.bits == 4 and self.blocksize != HF_4BIT_BLOCKSIZE:
            raise OLMoConfigurationError(
                f"quantization option 'blocksize'={self.blocksize}: transformers' "
                f"BitsAndBytesConfig always uses {HF_4BIT_BLOCKSIZE}; quantize the OLMo-core "
                "checkpoint instead (quantize_transformer) to vary the block size"
            )
        if self.quantize_embeddings:
            raise OLMoConfigurationError(
                "quantization option 'quantize_embeddings' is not supported by transformers' "
                "bitsandbytes integration; quantize the OLMo-core checkpoint instead"
            )
        for pat in self.skip_modules:
            if any(c in pat for c in "*?["):
                raise OLMoConfigurationError(
                    f"quantization option 'skip_modules': {pat!r} is a glob; the Hugging Face path "
                    "takes plain module names (transformers' llm_int8_skip_modules)"
                )
        skip = list(self.skip_modules)
        if not self.quantize_lm_head:
            skip.append("lm_head")
        common = dict(llm_int8_skip_modules=skip)
        if self.bits == 8:
            return BitsAndBytesConfig(load_in_8bit=True, llm_int8_threshold=self.int8_threshold, **common)
        return BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type=self.quant_type,
            bnb_4bit_use_double_quant=self.double_quant,
            bnb_4bit_compute_dtype=self.torch_compute_dtype,
            **common,
        )


#: Named settings for the command line and the study pipeline.
QUANT_PRESETS: Dict[str, QuantConfig] = {
    "nf4": QuantConfig(bits=4, quant_type="nf4"),
    "nf4-dq": QuantConfig(bits=4, quant_type="nf4", double_quant=True),
    "fp4": QuantConfig(bits=4, quant_type="fp4"),
    "int8": QuantConfig(bits=8),
}


def _cli_value(text: str) -> Any:
    """A command-line value: ``true``/``false`` (any case) as booleans, anything else as text
    (QuantConfig's checks read numbers from it and name the option a misspelling is given to)."""
    value = text.strip()
    return {"true": True, "false": False}.get(value.lower(), value)


def parse_quant_spec(spec: str) -> QuantConfig:
    """``PRESET[:key=value,...]`` or ``key=value,...`` -> :class:`QuantConfig`.

    Examples: ``nf4``, ``nf4-dq``, ``int8``, ``nf4:blocksize=128``,
    ``bits=4,quant_type=nf4,double_quant=true``. ``skip_modules`` takes ``|``-separated globs.
    """
    spec = spec.strip()
    preset, _, rest = spec.partition(":")
    base: Dict[str, Any] = {}
    if "=" in preset:
        rest, preset = spec, ""
    if preset:
        if preset not in QUANT_PRESETS:
            close = difflib.get_close_matches(preset, list(QUANT_PRESETS), n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise OLMoConfigurationError(
                f"unknown quantization preset {preset!r}{hint} (presets: {list(QUANT_PRESETS)})"
            )
        base = QUANT_PRESETS[preset].to_dict()
    given: Dict[str, Any] = {}
    for item in filter(None, (s.strip() for s in rest.split(","))):
        if "=" not in item:
            raise OLMoConfigurationError(f"quantization option {item!r} in {spec!r} is not key=value")
        k, v = item.split("=", 1)
        k = k.strip()
        if k in given:
            raise OLMoConfigurationError(f"quantization option {k!r} is given twice in {spec!r}; give it once")
        given[k] = tuple(v.split("|")) if k in ("skip_modules", "llm_int8_skip_modules") else _cli_value(v)
    return QuantConfig.from_dict({**base, **given})


# -------------------------------------------------------------------------------------------------
# OLMo-core path: module replacement
# -------------------------------------------------------------------------------------------------


def _match(name: str, patterns: Sequence[str]) -> bool:
    return any(fnmatch.fnmatchcase(name, p) for p in patterns)


def _is_lm_head(name: str) -> bool:
    return name == "lm_head" or name.startswith("lm_head.")


def _set_submodule(root: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = root.get_submodule(parent_name) if parent_name else root
    setattr(parent, child, module)


def _bnb():
    try:
        import bitsandbytes as bnb
    except ImportError as e:  # pragma: no cover - dependency of the 'probes' extra
        raise OLMoConfigurationError("quantization needs bitsandbytes: pip install 'olmo-sam[probes]'") from e
    return bnb


def _packed_weight(w: torch.Tensor, cfg: QuantConfig, module: nn.Module) -> nn.Parameter:
    """A bitsandbytes parameter holding ``w``; it is packed when the module moves to a device."""
    bnb = _bnb()
    data = w.detach().to("cpu", copy=True)
    if cfg.bits == 4:
        return bnb.nn.Params4bit(
            data,
            requires_grad=False,
            quant_type=cfg.quant_type,
            blocksize=cfg.blocksize,
            compress_statistics=cfg.double_quant,
            module=module,
        )
    return bnb.nn.Int8Params(data, requires_grad=False, has_fp16_weights=False)


def _quantized_linear(lin: nn.Linear, cfg: QuantConfig, device: torch.device) -> nn.Module:
    bnb = _bnb()
    w = lin.weight.detach()
    bias = lin.bias is not None
    if cfg.bits == 4:
        q = bnb.nn.Linear4bit(
            lin.in_features,
            lin.out_features,
            bias=bias,
            compute_dtype=cfg.torch_compute_dtype,
            compress_statistics=cfg.double_quant,
            quant_type=cfg.quant_type,
            device="meta",
        )
        q.weight = _packed_weight(w, cfg, q)
    else:
        q = bnb.nn.Linear8bitLt(
            lin.in_features,
            lin.out_features,
            bias=bias,
            has_fp16_weights=False,
            threshold=cfg.int8_threshold,
            device="meta",
        )
        q.weight = _packed_weight(w, cfg, q)
    if bias:
        q.bias = nn.Parameter(lin.bias.detach().to("cpu", copy=True), requires_grad=False)
    return q.to(device)  # bitsandbytes quantizes on the move to the device


def _quantized_embedding(emb: nn.Embedding, cfg: QuantConfig, device: torch.device) -> nn.Module:
    bnb = _bnb()
    w = emb.weight.detach()
    n, d = w.shape
    if cfg.bits == 4:
        if d % cfg.blocksize != 0:
            raise OLMoConfigurationError(
                f"quantize_embeddings: the embedding width {d} is not a multiple of "
                f"blocksize={cfg.blocksize} (bitsandbytes' Embedding4bit needs whole blocks per row)"
            )
        q = bnb.nn.Embedding4bit(n, d, dtype=cfg.torch_compute_dtype, quant_type=cfg.quant_type, device="cpu")
    else:
        q = bnb.nn.Embedding8bit(n, d, device="cpu")
    q.weight = _packed_weight(w, cfg, q)
    return q.to(device)


def _device_of(model: nn.Module) -> torch.device:
    params = list(model.parameters())
    return params[0].device if params else torch.device("cpu")


def quant_targets(model: nn.Module, cfg: QuantConfig) -> List[Tuple[str, nn.Module]]:
    """The modules :func:`quantize_transformer` replaces under ``cfg``, after refusing what it
    could not do (``skip_modules`` patterns that match nothing; 4-bit shapes bitsandbytes' CPU
    kernels cannot run). Cheap: a probe calls it for every setting before evaluating anything."""
    unmatched = [p for p in cfg.skip_modules if not any(fnmatch.fnmatchcase(n, p) for n, _ in model.named_modules())]
    if unmatched:
        raise OLMoConfigurationError(
            f"quantization option 'skip_modules': pattern(s) {unmatched} match no module of the model"
        )
    targets: List[Tuple[str, nn.Module]] = []
    for name, mod in model.named_modules():
        if not name or _match(name, cfg.skip_modules):
            continue
        if isinstance(mod, nn.Linear):
            if _is_lm_head(name) and not cfg.quantize_lm_head:
                continue
            targets.append((name, mod))
        elif isinstance(mod, nn.Embedding) and cfg.quantize_embeddings:
            targets.append((name, mod))
    if cfg.bits == 4 and _device_of(model).type == "cpu":
        _check_cpu_4bit_shapes(targets, cfg)
    return targets


def quantize_transformer(model: nn.Module, cfg: QuantConfig, *, verify: bool = True) -> "QuantReport":
    """Replace ``model``'s linear layers (and optionally its embedding) by bitsandbytes modules,
    in place, on the model's device. Returns the :func:`inspect_quantization` report (verified
    against ``cfg`` unless ``verify=False``).

    The original full-precision weights are compared with the packed ones (error bound check),
    so keep ``verify`` on unless the model is too large to hold both.
    """
    originals: Dict[str, torch.Tensor] = {}
    device = _device_of(model)
    targets = quant_targets(model, cfg)
    for name, mod in targets:
        if verify:
            originals[name] = mod.weight.detach().to("cpu", torch.float32, copy=True)
        if isinstance(mod, nn.Linear):
            new = _quantized_linear(mod, cfg, device)
        else:
            new = _quantized_embedding(mod, cfg, device)  # type: ignore[arg-type]
        _set_submodule(model, name, new)
    report = inspect_quantization(model, originals=originals if verify else None)
    if verify:
        report.verify(cfg)
        if cfg.bits == 4:
            _check_4bit_forward(model, [n for n, m in targets if isinstance(m, nn.Linear)], cfg)
    return report


def _cpu_4bit_blocksizes(widths: Sequence[int]) -> List[int]:
    return [b for b in BNB_4BIT_BLOCKSIZES if all(k % b == 0 for k in widths)]


def _check_cpu_4bit_shapes(targets: Sequence[Tuple[str, nn.Module]], cfg: QuantConfig) -> None:
    """Refuse, before quantizing, a 4-bit setting bitsandbytes' CPU kernels cannot run
    (:func:`olmo_sam.evals.hf_load.cpu_4bit_misfits`), naming the blocksizes that work."""
    linears = [(n, m) for n, m in targets if isinstance(m, nn.Linear)]
    split, narrow = cpu_4bit_misfits(linears, cfg.blocksize)
    if split:
        ok = _cpu_4bit_blocksizes(sorted({m.in_features for _, m in linears}))
        fix = f"use blocksize {' or '.join(map(str, ok))}" if ok else "skip those layers (skip_modules)"
        raise OLMoConfigurationError(
            f"quantization option 'blocksize'={cfg.blocksize}: bitsandbytes' CPU 4-bit kernels "
            f"need every layer's input width to be a multiple of the blocksize, but "
            f"{split[0][0]} has {split[0][1]} inputs ({len(split)} layer(s) like it); {fix}, "
            "or quantize on a GPU"
        )
    if narrow:
        raise OLMoConfigurationError(
            f"bitsandbytes' AVX-512 BF16 CPU 4-bit kernel needs every layer's output width "
            f"to be a multiple of 32, but {narrow[0][0]} has {narrow[0][1]} outputs; keep it in "
            f"full precision (skip_modules={narrow[0][0]!r}"
            + (", or quantize_lm_head=false" if any(_is_lm_head(n) for n, _ in narrow) else "")
            + ") or quantize on a GPU"
        )


def _check_4bit_forward(model: nn.Module, names: Sequence[str], cfg: QuantConfig) -> None:
    """Run each 4-bit linear layer's inference forward once (on a copy: bitsandbytes repacks the
    weight on the first CPU inference call) and compare it with ``x @ dequant(W)^T``, so a
    setting that passes the dequantizer proof but cannot run (or runs wrongly) fails here, with
    the option named, rather than in the middle of an evaluation."""
    bnb = _bnb()
    gen = torch.Generator().manual_seed(0)
    for name in names:
        mod = model.get_submodule(name)
        if not isinstance(mod, bnb.nn.Linear4bit):
            continue
        w = mod.weight
        device = w.device
        x = torch.randn(2, mod.in_features, generator=gen).to(device, cfg.torch_compute_dtype)
        ref_w = bnb.functional.dequantize_4bit(w.data, w.quant_state).to(cfg.torch_compute_dtype)
        probe = copy.deepcopy(mod).eval()
        try:
            with torch.no_grad():
                y = probe(x).float()
        except Exception as e:  # noqa: BLE001 - any kernel failure is a refused setting
            raise OLMoConfigurationError(
                f"quantization option 'blocksize'={cfg.blocksize} ({cfg.name}): bitsandbytes "
                f"cannot run the 4-bit forward of {name} ({mod.in_features}->{mod.out_features}) "
                f"on {device.type}: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}; "
                "use blocksize 64 (the presets') or quantize on a GPU"
            ) from None
        want = torch.nn.functional.linear(x.float(), ref_w.float())
        if mod.bias is not None:
            want = want + mod.bias.float()
        # the CPU inference kernel computes in bfloat16: allow its rounding
        err = float((y - want).abs().max() / want.abs().max().clamp_min(1e-12))
        if not err < 3e-2:
            raise QuantizationError(
                f"the 4-bit forward of {name} differs from x @ dequant(W)^T by {err:.3g} of its "
                f"scale (blocksize={cfg.blocksize}); the bitsandbytes forward kernel on "
                f"{device.type} is wrong for this setting"
            )


# -------------------------------------------------------------------------------------------------
# Hugging Face path
# -------------------------------------------------------------------------------------------------


def load_hf_quantized(
    path: str | Path,
    cfg: QuantConfig,
    *,
    device_map: str | Dict[str, Any] = "cpu",
    dtype: torch.dtype = torch.float32,
    verify: bool = True,
):
    """``AutoModelForCausalLM.from_pretrained(path, quantization_config=cfg.to_transformers())``,
    checked with :func:`inspect_quantization`. Returns ``(model, report)``.

    ``device_map="cpu"`` works with bitsandbytes' CPU kernels (needs ``accelerate``); on a GPU
    pass ``device_map="auto"`` or ``{"": 0}``.
    """
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(
        str(path), quantization_config=cfg.to_transformers(), device_map=device_map, dtype=dtype
    )
    model.eval()
    report = inspect_quantization(model)
    if verify:
        report.verify(cfg)
    return model, report


# -------------------------------------------------------------------------------------------------
# Proof
# -------------------------------------------------------------------------------------------------


#: how close (in units of the block absmax) a weight may lie to the midpoint of two code values
#: for either of them to count as the nearest: bitsandbytes scales by ``w * (1/absmax)``, which
#: can differ from ``w / absmax`` in the last bit.
_TIE = 1e-6


def _reference_4bit_codes(
    w: torch.Tensor, quant_type: str, blocksize: int
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Round-to-nearest blockwise 4-bit codes of ``w`` in plain torch: ``(code table, nearest
    index, second-nearest index, near-tie mask, block absmax)``, indices per padded block."""
    from bitsandbytes.functional import get_4bit_type

    code = get_4bit_type(quant_type, device="cpu").to(torch.float32)
    flat = w.detach().to("cpu", torch.float32).reshape(-1)
    pad = (-flat.numel()) % blocksize
    blocks = torch.cat([flat, flat.new_zeros(pad)]).view(-1, blocksize)
    absmax = blocks.abs().amax(dim=1, keepdim=True)
    safe = torch.where(absmax == 0, torch.ones_like(absmax), absmax)
    dist = (blocks / safe).unsqueeze(-1).sub(code).abs()
    two = dist.topk(2, dim=-1, largest=False)
    tie = (two.values[..., 1] - two.values[..., 0]) <= _TIE
    return code, two.indices[..., 0], two.indices[..., 1], tie, absmax


def reference_4bit_dequant(
    w: torch.Tensor, quant_type: str, blocksize: int, absmax: Optional[torch.Tensor] = None
) -> torch.Tensor:
    """Round-to-nearest 4-bit blockwise quantization of ``w`` and back, in plain torch
    (blocks of ``blocksize`` consecutive elements of the flattened tensor, each mapped to the
    nearest code value of ``w / block absmax``, then multiplied by the block's scale).
    Independent of bitsandbytes' kernels except for the 16-entry code table. ``absmax``, if
    given, is the scale each block is dequantized with (e.g. the 8-bit-rounded absmax of double
    quantization); the codes are always chosen with the exact block absmax, as bitsandbytes does."""
    code, idx, _, _, own = _reference_4bit_codes(w, quant_type, blocksize)
    scale = own if absmax is None else absmax.reshape(-1, 1).to("cpu", torch.float32)
    return (code[idx] * scale).reshape(-1)[: w.numel()].view_as(w)


def _stored_4bit_scales(qs) -> torch.Tensor:
    """The per-block scale a 4-bit weight is dequantized with, from its quant state in plain
    torch (double quantization: ``code2[absmax_8bit] * absmax2[block // blocksize2] + offset``)."""
    if not qs.nested:
        return qs.absmax.to("cpu", torch.float32).reshape(-1)
    s2 = qs.state2
    q = qs.absmax.to("cpu").long().reshape(-1)
    per = s2.absmax.to("cpu", torch.float32).repeat_interleave(s2.blocksize)[: q.numel()]
    return s2.code.to("cpu", torch.float32)[q] * per + float(qs.offset)


def _4bit_mismatches(deq: torch.Tensor, orig: torch.Tensor, qs) -> Tuple[int, float]:
    """Compare a dequantized 4-bit weight with the exact reference: ``(number of weights that
    are not the reference value, error of the stored block scales in units of their bound)``
    (above 1 the scales are wrong).

    A weight matches when it equals the nearest code value times its block's stored scale (to
    float32 rounding, or the rounding of the weight's own dtype, e.g. bfloat16), or the other of
    two code values it lies midway between (``_TIE``). The stored scales must be the block absmax
    exactly, or with double quantization its 8-bit rounding: within the widest gap of the 8-bit
    code times the scale-block's maximum."""
    code, near, second, tie, own = _reference_4bit_codes(orig, qs.quant_type, qs.blocksize)
    n = orig.numel()
    scale = _stored_4bit_scales(qs).view(-1, 1)
    if scale.shape != own.shape:
        return n, float("inf")
    if qs.nested:
        code2 = qs.state2.code.to("cpu", torch.float32).sort().values
        # bitsandbytes' 8-bit blockwise rounding is not always to the nearest code value:
        # allow one (widest) code gap
        gap2 = float((code2[1:] - code2[:-1]).max())
        per = qs.state2.absmax.to("cpu", torch.float32).repeat_interleave(qs.state2.blocksize)
        bound = gap2 * per[: own.numel()].view(-1, 1) * (1 + 1e-6) + 1e-12
        scale_err = float(((scale - own).abs() / bound).max())  # <= 1: rounded to 8 bits
    else:
        # the absmax itself: equal up to float32 rounding
        scale_err = float(((scale - own).abs() / (own.abs() * 1e-6 + 1e-30)).max())
    got = torch.cat(
        [
            deq.reshape(-1).to("cpu", torch.float32),
            deq.new_zeros((-n) % qs.blocksize, dtype=torch.float32, device="cpu"),
        ]
    )
    got = got.view_as(near)
    # float32 products to the last bits; a half-precision weight (qs.dtype) rounds to its own ulp
    eps = torch.finfo(deq.dtype).eps if deq.dtype.is_floating_point else 0.0
    want, alt = code[near] * scale, code[second] * scale
    ok = (got - want).abs() <= scale.abs() * 1e-6 + want.abs() * eps + 1e-30
    ok |= tie & ((got - alt).abs() <= scale.abs() * 1e-6 + alt.abs() * eps + 1e-30)
    return int((~ok).reshape(-1)[:n].sum()), scale_err


@dataclass
class QuantReport:
    """What :func:`inspect_quantization` found in a model."""

    counts: Dict[str, int] = field(default_factory=dict)
    #: module name -> {type, storage_dtype, shape, quantized_bytes, original_bytes, ...}
    modules: Dict[str, Dict[str, Any]] = field(default_factory=dict)
    #: full-precision linear layers left as they were (e.g. the LM head)
    full_precision_linear: List[str] = field(default_factory=list)
    quantized_bytes: int = 0
    original_bytes: int = 0
    #: 4-bit weights whose dequantized value differs from the exact reference dequantizer
    #: (:func:`reference_4bit_dequant`); 0 for correct kernels, None without the originals
    mismatched_4bit_weights: Optional[int] = None
    #: worst |dequant - original| / (absmax_row / 254 + float16 pre-rounding) over 8-bit modules
    #: (<= 1 for correct rounding); None without the originals or 8-bit modules
    max_error_ratio: Optional[float] = None

    @property
    def n_quantized(self) -> int:
        return len(self.modules)

    @property
    def compression(self) -> float:
        return self.original_bytes / self.quantized_bytes if self.quantized_bytes else 1.0

    def to_dict(self) -> Dict[str, Any]:
        return {
            "counts": dict(self.counts),
            "n_quantized": self.n_quantized,
            "quantized_modules": sorted(self.modules),
            "full_precision_linear": list(self.full_precision_linear),
            "storage_dtypes": sorted({m["storage_dtype"] for m in self.modules.values()}),
            "quantized_bytes": self.quantized_bytes,
            "original_bytes": self.original_bytes,
            "compression": self.compression,
            "mismatched_4bit_weights": self.mismatched_4bit_weights,
            "max_error_ratio": self.max_error_ratio,
        }

    def verify(self, cfg: QuantConfig) -> None:
        """Raise :class:`QuantizationError` unless the model holds ``cfg``'s quantized modules."""
        if self.n_quantized == 0:
            raise QuantizationError(
                f"nothing was quantized for {cfg.name}: no bitsandbytes Linear4bit/Linear8bitLt "
                f"module in the model (found {self.counts}); the evaluation would measure the "
                "full-precision model"
            )
        want = {4: ("uint8",), 8: ("int8",)}[cfg.bits]
        wrong = {n: m for n, m in self.modules.items() if m["bits"] != cfg.bits or m["storage_dtype"] not in want}
        if wrong:
            raise QuantizationError(
                f"asked for {cfg.bits}-bit ({cfg.name}) but found {len(wrong)} module(s) with other "
                f"storage: {dict(list(wrong.items())[:3])}"
            )
        if cfg.bits == 4:
            bad = {n: m["quant_type"] for n, m in self.modules.items() if m.get("quant_type") != cfg.quant_type}
            if bad:
                raise QuantizationError(f"asked for {cfg.quant_type} but modules hold {bad}")
            bad_bs = {n: m["blocksize"] for n, m in self.modules.items() if m.get("blocksize") != cfg.blocksize}
            if bad_bs:
                raise QuantizationError(f"asked for blocksize {cfg.blocksize} but modules hold {bad_bs}")
            bad_dq = {n for n, m in self.modules.items() if m.get("double_quant") != cfg.double_quant}
            if bad_dq:
                raise QuantizationError(f"asked for double_quant={cfg.double_quant} but {sorted(bad_dq)[:3]} differ")
        if self.quantized_bytes >= self.original_bytes:
            raise QuantizationError(
                f"quantized weights take {self.quantized_bytes} bytes, not less than the original {self.original_bytes}"
            )
        lm_head_left = [n for n in self.full_precision_linear if _is_lm_head(n) or n.endswith("lm_head")]
        if cfg.quantize_lm_head and lm_head_left:
            raise QuantizationError(f"quantize_lm_head=True but {lm_head_left} is full precision")
        if self.mismatched_4bit_weights:
            bad_mods = sorted(((m.get("mismatches") or 0, n) for n, m in self.modules.items()), reverse=True)[:3]
            raise QuantizationError(
                f"{self.mismatched_4bit_weights} dequantized {cfg.quant_type} weights differ from "
                f"the exact reference dequantizer (worst modules: {bad_mods}); the bitsandbytes "
                f"kernel for blocksize={cfg.blocksize} on this device is wrong. Use a blocksize "
                "that divides every layer's input width (64 for the presets), or a GPU"
            )
        if self.max_error_ratio is not None and self.max_error_ratio > 1.0 + 1e-3:
            bad_mods8 = sorted(((m.get("error_ratio") or 0.0, n) for n, m in self.modules.items()), reverse=True)[:3]
            raise QuantizationError(
                f"dequantized int8 weights are off by up to {self.max_error_ratio:.2f}x the "
                f"row-wise rounding error bound (worst: {bad_mods8}); the bitsandbytes int8 "
                "kernel on this device is wrong"
            )


def _nbytes(t: torch.Tensor) -> int:
    return t.numel() * t.element_size()


def _quant_state_bytes(qs) -> int:
    total = _nbytes(qs.absmax) + _nbytes(qs.code)
    if getattr(qs, "nested", False) and qs.state2 is not None:
        total += _nbytes(qs.state2.absmax) + _nbytes(qs.state2.code)
        if qs.offset is not None:
            total += _nbytes(qs.offset)
    return total


def inspect_quantization(model: nn.Module, originals: Optional[Mapping[str, torch.Tensor]] = None) -> QuantReport:
    """Count bitsandbytes modules in ``model`` (OLMo-core or Hugging Face), their storage dtype
    and bytes (packed weights + scales) against the bytes of the weights they replace.

    With ``originals`` (module name -> full-precision weight), every 4-bit weight is dequantized
    and compared with the exact reference dequantizer (:func:`reference_4bit_dequant`: nearest
    code value times the block's stored scale; near-midpoint weights may take either neighbour),
    and the stored scales with the block absmax (exactly, or within the 8-bit rounding of double
    quantization); every 8-bit weight against ``|W~ - W| <= absmax_row / 127 / 2``.
    """
    bnb = _bnb()
    import bitsandbytes.functional as bF

    report = QuantReport()
    worst: Optional[float] = None
    mismatched: Optional[int] = None
    for name, mod in model.named_modules():
        kind = type(mod).__name__
        if isinstance(mod, (bnb.nn.Linear4bit, bnb.nn.Embedding4bit)):
            w = mod.weight
            qs = w.quant_state
            if qs is None or not getattr(w, "bnb_quantized", False):
                raise QuantizationError(f"{name}: {kind} holds an unquantized weight (was it moved to a device?)")
            info = {
                "type": kind,
                "bits": 4,
                "storage_dtype": str(w.dtype).replace("torch.", ""),
                "shape": list(qs.shape),
                "quant_type": qs.quant_type,
                "blocksize": qs.blocksize,
                "double_quant": bool(qs.nested),
                "quantized_bytes": _nbytes(w.data) + _quant_state_bytes(qs),
                "original_bytes": int(torch.Size(qs.shape).numel()) * torch.empty((), dtype=qs.dtype).element_size(),
            }
            if originals is not None and name in originals:
                if getattr(qs, "packing_format_for_cpu", False):
                    raise QuantizationError(
                        f"{name}: the 4-bit weight was repacked for CPU inference (a forward pass "
                        "ran); inspect it with the originals before the first forward"
                    )
                deq = bF.dequantize_4bit(w.data, qs)
                bad, scale_err = _4bit_mismatches(deq, originals[name], qs)
                if scale_err > 1.0:
                    bad = max(bad, 1)
                info["mismatches"] = bad
                info["scale_error"] = scale_err
                mismatched = bad if mismatched is None else mismatched + bad
        elif isinstance(mod, (bnb.nn.Linear8bitLt, bnb.nn.Embedding8bit)):
            w = mod.weight
            scb = getattr(w, "SCB", None)
            if scb is None:
                scb = getattr(getattr(mod, "state", None), "SCB", None)
            if w.dtype != torch.int8 or scb is None:
                raise QuantizationError(f"{name}: {kind} holds an unquantized {w.dtype} weight")
            info = {
                "type": kind,
                "bits": 8,
                "storage_dtype": "int8",
                "shape": list(w.shape),
                "quantized_bytes": _nbytes(w.data) + _nbytes(scb),
                "original_bytes": w.numel() * 4,  # replaced from float32 here, or fp16/bf16 in HF
            }
            if originals is not None and name in originals:
                orig = originals[name]
                info["original_bytes"] = _nbytes(orig)
                deq = w.data.float() * (scb.float().view(-1, 1) / 127.0)
                # bitsandbytes rounds the weight to float16 before the row-wise int8 rounding
                absmax = orig.abs().amax(1, keepdim=True)
                bound = absmax / 127.0 / 2 + absmax * 2.0**-10 + 1e-12
                ratio = float(((deq.cpu() - orig).abs() / bound).max())
                info["error_ratio"] = ratio
                worst = ratio if worst is None else max(worst, ratio)
        elif isinstance(mod, nn.Linear):
            report.full_precision_linear.append(name)
            report.counts[kind] = report.counts.get(kind, 0) + 1
            continue
        else:
            continue
        report.counts[kind] = report.counts.get(kind, 0) + 1
        report.modules[name] = info
        report.quantized_bytes += info["quantized_bytes"]
        report.original_bytes += info["original_bytes"]
    report.max_error_ratio = worst
    report.mismatched_4bit_weights = mismatched
    return report
