"""The pretraining seed reaches the initial weights (OLMo-core takes them from the model config's
own ``init_seed``, not the experiment's): different seeds start from different weights, the same
seed from the same ones."""

from __future__ import annotations

import torch

from helpers import adamw, tiny_experiment


def _initial_weights(corpus, folder, seed):
    from olmo_sam.train import build_experiment  # noqa: F401  (registers the plugin)
    cfg = tiny_experiment(corpus, folder, adamw(), seed=seed)
    assert cfg.model.init_seed == seed
    model = cfg.model.build(init_device="cpu")
    model.init_weights(device=torch.device("cpu"))
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def test_seed_sets_the_initial_weights(tiny_corpus, tmp_path):
    a = _initial_weights(tiny_corpus, tmp_path / "a", 1)
    a2 = _initial_weights(tiny_corpus, tmp_path / "a2", 1)
    b = _initial_weights(tiny_corpus, tmp_path / "b", 2)
    assert all(torch.equal(a[n], a2[n]) for n in a)
    differing = [n for n in a if a[n].numel() > 1 and a[n].std() > 0 and not torch.equal(a[n], b[n])]
    assert "embeddings.weight" in differing, differing
    assert len(differing) >= len(a) // 2, (len(differing), len(a))
