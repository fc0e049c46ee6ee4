"""Model presets: the paper's controlled-experiment sizes, OLMo-2-1B, and CPU-sized ``tiny`` and ``micro``.

The 20M/60M/150M shapes are [SAM-PT] Table 4 (:data:`olmo_sam.paper.PRETRAIN_SHAPES`): OLMo-2
blocks (reordered norm, QK-norm, SwiGLU, RoPE theta 500k), no dropout, the dolma2 tokenizer's
100278-token vocabulary padded to a 100352-row embedding. The MLP width is OLMo-core's OLMo-2
default (``hidden_size_multiplier=1.5``); the paper's tables do not give it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from olmo_core.data import TokenizerConfig
from olmo_core.exceptions import OLMoConfigurationError
from olmo_core.nn.transformer import TransformerBlockType, TransformerConfig

from . import paper

__all__ = ["SIZES", "model_config", "ParamCounts", "param_counts", "dolma2_tokenizer"]

#: CPU-sized model for demos and tests: head_dim 64 (vLLM's CPU backend rejects 16).
TINY = dict(d_model=128, n_layers=2, n_heads=2)
#: Micro model for the overtrained regime on CPU (hundreds of tokens per parameter in minutes):
#: one layer, one head of width 32, a SwiGLU of width 128 (4 x d_model; OLMo-core's default
#: rounding to a multiple of 256 would double it); its vocabulary comes from the data like
#: ``tiny``'s. With the demo's 384-row embedding: 41,120 parameters (28,832 non-embedding). Sized
#: by measurement (docs/cpu-reproduction.md): ~80k tokens per CPU-second with AdamW at batch
#: 64 x 128 on one core, against ~60k for d_model 64 (115k parameters), so 100 tokens per
#: parameter takes under a minute of CPU. (vLLM's CPU backend rejects head widths below 64:
#: context-free sampling needs ``tiny``. bitsandbytes 0.50.2's CPU 4-bit kernel is wrong for
#: weight rows that are not whole blocks: quantize ``micro`` with NF4 block size 32.)
MICRO = dict(d_model=32, n_layers=1, n_heads=1, hidden_size_multiple_of=128)

#: Presets whose vocabulary is the size of the tokenizer trained for them (CPU demos and tests).
CPU_SIZES = {"tiny": TINY, "micro": MICRO}

SIZES = ("tiny", "micro", "20M", "60M", "150M", "1B")


def dolma2_tokenizer() -> TokenizerConfig:
    """OLMo-2's dolma2 tokenizer (vocab 100278, embedding 100352; [SAM-PT] Table 4)."""
    tok = TokenizerConfig.dolma2()
    assert tok.vocab_size == paper.DOLMA2_VOCAB_SIZE
    return tok


def _olmo2_like(d_model: int, n_layers: int, n_heads: int, vocab_size: int, **kw):
    return TransformerConfig.llama_like(
        d_model=d_model,
        n_layers=n_layers,
        n_heads=n_heads,
        vocab_size=vocab_size,
        block_name=TransformerBlockType.reordered_norm,
        qk_norm=True,
        rope_theta=500_000,
        layer_norm_eps=1e-6,
        hidden_size_multiplier=1.5,
        **kw,
    )


def model_config(size: str, vocab_size: Optional[int] = None) -> TransformerConfig:
    """The :class:`TransformerConfig` of a preset.

    :param size: one of :data:`SIZES`.
    :param vocab_size: embedding rows; defaults to dolma2's padded 100352 for the paper sizes and
        is required for ``tiny`` and ``micro`` (the size of the tokenizer trained for them).
    """
    if size in CPU_SIZES:
        if vocab_size is None:
            raise OLMoConfigurationError(f"the {size!r} model needs 'vocab_size' (the size of its tokenizer)")
        return _olmo2_like(vocab_size=vocab_size, **CPU_SIZES[size])
    vocab = vocab_size if vocab_size is not None else paper.DOLMA2_EMBEDDING_SIZE
    if size in paper.PRETRAIN_SHAPES:
        s = paper.PRETRAIN_SHAPES[size]
        return _olmo2_like(s.d_model, s.n_layers, s.n_heads, vocab)
    if size == "1B":
        m = paper.MIDTRAIN_1B
        # OLMo-core's preset that matches the released OLMo-2-0425-1B (16 layers, 2048 hidden)
        cfg = TransformerConfig.olmo2_1B_v2(vocab_size=vocab)
        assert cfg.d_model == m.d_model and cfg.n_layers == m.n_layers
        return cfg
    raise OLMoConfigurationError(f"unknown model size {size!r}; choose one of {list(SIZES)}")


@dataclass(frozen=True)
class ParamCounts:
    total: int
    embedding: int
    non_embedding: int


def param_counts(cfg: TransformerConfig) -> ParamCounts:
    """Analytic parameter counts (no weights allocated)."""
    total = cfg.num_params
    embedding = cfg.vocab_size * cfg.d_model
    return ParamCounts(total=total, embedding=embedding, non_embedding=total - embedding)
