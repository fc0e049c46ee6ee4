"""A learnable synthetic token stream: documents from a fixed sparse random Markov chain.

Each token has 4 likely successors (entropy below ln 4), so a tiny model's loss falls well below
``ln(vocab)`` within a few dozen steps. Used by the test fixtures (``tests/conftest.py``) and the
GPU check (:mod:`olmo_sam_tools.gpucheck`), which must run without any downloaded data.
"""

from __future__ import annotations

import numpy as np

__all__ = ["markov_tokens"]


def markov_tokens(n: int, seed: int, vocab: int = 256, doc_len: int = 64, eos: int = 0) -> np.ndarray:
    """``n`` uint16 tokens: documents of ``doc_len`` tokens starting with ``eos``, then a walk on
    a fixed random chain over ids ``2..vocab-1`` (0 and 1 are EOS and padding)."""
    rng = np.random.default_rng(1234)  # the chain itself is fixed; `seed` varies the sample
    trans = np.full((vocab, vocab), 1e-4)
    for s in range(vocab):
        trans[s, rng.choice(np.arange(2, vocab), size=4, replace=False)] += rng.dirichlet(np.ones(4))
    trans /= trans.sum(axis=1, keepdims=True)
    cum = np.cumsum(trans, axis=1)
    rs = np.random.default_rng(seed)
    out = np.empty(n, dtype=np.uint16)
    state = 2
    u = rs.random(n)
    for i in range(n):
        if i % doc_len == 0:
            out[i] = eos
            state = int(rs.integers(2, vocab))
            continue
        state = int(np.searchsorted(cum[state], u[i]))
        state = min(max(state, 2), vocab - 1)
        out[i] = state
    return out
