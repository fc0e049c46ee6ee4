"""Gaussian weight noise, [SAM-PT] App C.3 Eq. 7, on the tiny OLMo-core checkpoint."""

from __future__ import annotations

import statistics

import pytest
import torch
from olmo_core.exceptions import OLMoConfigurationError

from olmo_sam import paper
from olmo_sam.checkpoints import load_transformer
from olmo_sam.evals import lm_loss
from olmo_sam.probes.perturb import gaussian_noise_, perturbed, select_weights
from olmo_sam.probes.runners import noise_probe


@pytest.fixture(scope="module")
def model(tiny_checkpoint):
    m, _ = load_transformer(tiny_checkpoint)
    return m


def _snapshot(m):
    return {n: p.detach().clone() for n, p in m.named_parameters()}


@pytest.mark.parametrize("gamma", paper.NOISE_GAMMAS)
def test_eq7_norm_and_untouched(model, gamma):
    before = _snapshot(model)
    with perturbed(model, gamma, seed=3) as names:
        after = _snapshot(model)
    # default: every weight matrix, including embedding and LM head; no 1-D gains
    assert set(names) == {n for n, p in model.named_parameters() if p.ndim >= 2}
    assert "embeddings.weight" in names and "lm_head.w_out.weight" in names
    for n, w in before.items():
        if n in names:
            d = torch.linalg.vector_norm((after[n] - w).double())
            assert d == pytest.approx(gamma * torch.linalg.vector_norm(w.double()).item(), rel=1e-5), n
        else:
            assert torch.equal(after[n], w), n  # bit-identical
    for n, w in _snapshot(model).items():  # restored bit-identically on exit
        assert torch.equal(w, before[n]), n


def test_seeds_and_selection(model):
    def delta(seed, **kw):
        before = _snapshot(model)
        with perturbed(model, 0.02, seed, **kw):
            after = _snapshot(model)
        return {n: after[n] - before[n] for n in before}

    a, a2, b = delta(0), delta(0), delta(1)
    w = "blocks.0.attention.w_q.weight"
    assert torch.equal(a[w], a2[w])  # a seed reproduces
    assert not torch.allclose(a[w], b[w])
    # the noise of a tensor does not depend on what else is selected
    only = delta(0, include=("blocks.0.*",), exclude=("*.feed_forward.*",))
    assert torch.equal(only[w], a[w])
    assert torch.count_nonzero(only["embeddings.weight"]) == 0
    assert torch.count_nonzero(only["blocks.0.feed_forward.w1.weight"]) == 0
    vec = delta(0, min_ndim=1)
    assert torch.count_nonzero(vec["blocks.0.attention_norm.weight"]) > 0


def test_selection_errors(model):
    with pytest.raises(OLMoConfigurationError, match="'exclude' pattern.*'embedding.*'"):
        select_weights(model, exclude=("embedding.*",))
    with pytest.raises(OLMoConfigurationError, match="selection is empty"):
        select_weights(model, include=("*.attention_norm.weight",))
    with pytest.raises(OLMoConfigurationError, match="gamma"):
        gaussian_noise_(select_weights(model), -0.1, 0)


def test_noise_probe(tiny_checkpoint, tiny_corpus, tmp_path):
    gammas, seeds = (0.01, 0.05), (0, 1, 2)
    out = tmp_path / "noise.json"
    res = noise_probe(
        [tiny_checkpoint], [tiny_corpus.val], gammas=gammas, seeds=seeds, max_sequences=8, out=out, progress=False
    )
    assert out.exists()
    recs = res["records"]
    base = [r for r in recs if r["gamma"] == 0.0]
    assert len(base) == 1 and len(recs) == 1 + len(gammas) * len(seeds)
    m, _ = load_transformer(tiny_checkpoint)
    assert base[0]["loss"] == pytest.approx(
        lm_loss(m, [tiny_corpus.val], seq_len=64, vocab_size=256, max_sequences=8).loss, abs=1e-6
    )
    # an independent evaluation of one perturbed model agrees with the record
    with perturbed(m, 0.05, 2):
        loss = lm_loss(m, [tiny_corpus.val], seq_len=64, vocab_size=256, max_sequences=8).loss
    assert [r["loss"] for r in recs if r["gamma"] == 0.05 and r["seed"] == 2][0] == pytest.approx(loss, abs=1e-6)
    for s in res["summary"]:
        if s["gamma"] == 0.0:
            continue
        losses = [r["loss"] for r in recs if r["gamma"] == s["gamma"]]
        assert s["mean"] == pytest.approx(statistics.fmean(losses))
        assert s["std"] == pytest.approx(statistics.stdev(losses))
        assert s["n_seeds"] == 3
    big = [s for s in res["summary"] if s["gamma"] == 0.05][0]
    assert big["increase"] > 0  # 5% relative noise on every matrix costs loss
