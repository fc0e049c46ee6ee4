"""Helpers shared by the tests/test_cfs_*.py files: a model with a peaked next-token distribution,
the exact sampling distribution computed independently of both engines, statistics, task data."""

from __future__ import annotations

import math
import shutil
from pathlib import Path
from typing import Dict, List, Sequence

import numpy as np

#: lm_head scale that turns the random tiny model's near-uniform next-token distribution into one
#: with ~28 tokens inside top-p 0.95 at T=1 (entropy ~2.2 nats): temperature and top-p then change
#: it measurably
PEAK_SCALE = 15.0


def make_peaked_model(src: Path, dst: Path, scale: float = PEAK_SCALE) -> Path:
    import torch
    from transformers import AutoModelForCausalLM

    if (dst / "config.json").exists():
        return dst
    shutil.copytree(src, dst, dirs_exist_ok=True)
    model = AutoModelForCausalLM.from_pretrained(src)
    with torch.no_grad():
        model.lm_head.weight.mul_(scale)
    model.save_pretrained(dst)
    return dst


def exact_distribution(model_dir: Path, prompt: Sequence[int], temperature: float, top_p: float) -> np.ndarray:
    """p(next | prompt) after temperature and nucleus filtering, written here from the definition:
    keep the smallest set of most likely tokens whose probability reaches top_p (ties aside)."""
    import torch

    model = _model(model_dir)
    with torch.no_grad():
        logits = model(torch.tensor([list(prompt)])).logits[0, -1].double()
    p = torch.softmax(logits / temperature, dim=-1).numpy()
    order = np.argsort(-p, kind="stable")
    mass_before = np.cumsum(p[order]) - p[order]
    keep = order[mass_before < top_p]
    out = np.zeros_like(p)
    out[keep] = p[keep]
    return out / out.sum()


_MODELS: Dict[str, object] = {}


def _model(model_dir: Path):
    from transformers import AutoModelForCausalLM

    key = str(model_dir)
    if key not in _MODELS:
        _MODELS[key] = AutoModelForCausalLM.from_pretrained(model_dir, dtype="float32").eval()
    return _MODELS[key]


def counts(tokens: Sequence[int], vocab: int) -> np.ndarray:
    return np.bincount(np.asarray(tokens, dtype=np.int64), minlength=vocab)


def chi2_pvalue(observed: np.ndarray, p: np.ndarray, min_expected: float = 5.0) -> float:
    """Goodness of fit of ``observed`` counts to ``p`` (cells with expected < 5 pooled)."""
    from scipy.stats import chi2

    n = observed.sum()
    exp = n * p
    big = exp >= min_expected
    obs_cells = list(observed[big]) + [observed[~big].sum()]
    exp_cells = list(exp[big]) + [exp[~big].sum()]
    if exp_cells[-1] == 0:
        if obs_cells[-1] > 0:
            return 0.0
        obs_cells, exp_cells = obs_cells[:-1], exp_cells[:-1]
    obs_a, exp_a = np.asarray(obs_cells, float), np.asarray(exp_cells, float)
    stat = float(((obs_a - exp_a) ** 2 / exp_a).sum())
    return float(chi2.sf(stat, len(obs_a) - 1))


def tv(a: np.ndarray, b: np.ndarray) -> float:
    return 0.5 * float(np.abs(a / a.sum() - b / b.sum()).sum())


def tv_bound(p: np.ndarray, n: int, delta: float = 1e-3) -> float:
    """With probability >= 1 - delta, TV(empirical of n samples, p) is at most this:
    E[TV] <= 1/2 sum_i sqrt(p_i (1 - p_i) / n) (Jensen), plus McDiarmid's sqrt(ln(1/delta) / 2n)
    (one sample moves the TV by at most 1/n)."""
    return 0.5 * float(np.sqrt(p * (1 - p) / n).sum()) + math.sqrt(math.log(1 / delta) / (2 * n))


def make_task_dir(
    root: Path, *, n_docs: int = 40, vocab: int = 512, eos: int = 0, seed: int = 0, name: str = "toy-task"
) -> Path:
    """A prepared prompt/response fine-tuning set: random prompts (not targets) + responses
    (targets, closing EOS a target), ids in [2, vocab); distinct documents."""
    from olmo_sam.data.tokens import token_dtype_for_vocab
    from olmo_sam.finetune.data import FTDataMeta, write_meta, write_split

    rng = np.random.default_rng(seed)

    def docs(n):
        for _ in range(n):
            p = rng.integers(2, vocab, size=int(rng.integers(3, 12)))
            r = rng.integers(2, vocab, size=int(rng.integers(4, 30)))
            tokens = np.concatenate([p, r, [eos]])
            mask = np.concatenate([np.zeros(len(p), bool), np.ones(len(r) + 1, bool)])
            yield tokens, mask

    root.mkdir(parents=True, exist_ok=True)
    splits = {
        "train": write_split(root, "train", docs(n_docs), vocab_size=vocab, eos_token_id=eos),
        "val": write_split(root, "val", docs(max(n_docs // 4, 1)), vocab_size=vocab, eos_token_id=eos),
    }
    write_meta(
        root,
        FTDataMeta(
            name=name,
            vocab_size=vocab,
            eos_token_id=eos,
            dtype=np.dtype(token_dtype_for_vocab(vocab)).name,
            splits=splits,
            source={"generated": "tests/cfs_helpers.py"},
        ),
    )
    return root


def first_tokens(records: List[dict]) -> List[int]:
    return [r["token_ids"][0] for r in records]
