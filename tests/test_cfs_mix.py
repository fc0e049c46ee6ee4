"""Mixing synthetic samples into a fine-tuning set: ratios, lambda, step counts, label masks."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from cfs_helpers import make_task_dir
from olmo_core.exceptions import OLMoConfigurationError

from olmo_sam import paper
from olmo_sam.cfs.mix import build_cfs_mix, build_cs_mix, ft_train_steps, plan_mix
from olmo_sam.finetune.data import iter_documents, read_meta, split_paths

VOCAB, EOS = 512, 0
SEQ, BATCH, EPOCHS = 16, 4, 2


def fake_samples(path: Path, n: int, *, kind="context_free", seed=0, prompts=None, max_tokens=20):
    """Records in the generator's layout, distinct contents; every third sample cut at max_tokens."""
    rng = np.random.default_rng(seed)
    with open(path, "w") as f:
        for i in range(n):
            if i % 3 == 2:
                toks, reason = rng.integers(2, VOCAB, size=max_tokens).tolist(), "length"
            else:
                toks = rng.integers(2, VOCAB, size=int(rng.integers(1, max_tokens))).tolist() + [EOS]
                reason = "stop"
            prompt = [EOS] + (list(map(int, prompts[i])) if prompts is not None else [])
            rec = dict(
                index=i,
                seed=i,
                prompt_token_ids=prompt,
                token_ids=toks,
                text="",
                finish_reason=reason,
                kind=kind,
                eos_token_id=EOS,
                model_sha256="x" * 64,
            )
            f.write(json.dumps(rec) + "\n")
    return path


@pytest.fixture(scope="module")
def task(tmp_path_factory):
    return make_task_dir(tmp_path_factory.mktemp("task"), n_docs=60, vocab=VOCAB, eos=EOS)


@pytest.fixture(scope="module")
def samples(tmp_path_factory):
    return fake_samples(tmp_path_factory.mktemp("samples") / "cfs.jsonl", 150)


def keyed(docs):
    return {tuple(t.tolist()): (t, m) for t, m in docs}


def classify(out_dir, task_dir, samples_path, pool_size):
    """Map every output document back to its source by content; returns [(kind, key, tokens, mask)]."""
    task_docs = keyed(iter_documents(task_dir, "train"))
    recs = [json.loads(line) for line in open(samples_path)][:pool_size]
    pool = {}
    for r in recs:
        gen = r["token_ids"] + ([] if r["finish_reason"] == "stop" else [EOS])
        pool[tuple(r["prompt_token_ids"][1:] + gen)] = r
    out = []
    for t, m in iter_documents(out_dir, "train"):
        key = tuple(t.tolist())
        if key in task_docs:
            out.append(("task", key, t, m))
        elif key in pool:
            out.append(("synthetic", key, t, m))
        else:
            out.append(("cut", key, t, m))
    return out, task_docs, pool


def olmo_core_steps(out_dir: Path, tmp: Path) -> int:
    """Batches per epoch as OLMo-core's own FSL dataset + data loader count them."""
    from olmo_core.data import (
        NumpyDataLoaderConfig,
        NumpyDatasetDType,
        NumpyFSLDatasetConfig,
        TokenizerConfig,
    )

    meta = read_meta(out_dir)
    tokens, masks = split_paths(out_dir, "train")
    ds = NumpyFSLDatasetConfig(
        tokenizer=TokenizerConfig(vocab_size=VOCAB, eos_token_id=EOS, pad_token_id=1),
        dtype=NumpyDatasetDType(meta.dtype),
        paths=[str(tokens)],
        label_mask_paths=[str(masks)],
        sequence_length=SEQ,
        work_dir=str(tmp),
    ).build()
    ds.prepare()
    loader = NumpyDataLoaderConfig(global_batch_size=BATCH * SEQ, seed=0, work_dir=str(tmp)).build(ds)
    item = ds[0]
    assert item["label_mask"].shape == item["input_ids"].shape  # the mask file really is read
    return loader.total_batches


def test_ft_train_steps_formula():
    assert ft_train_steps(1000, epochs=2, seq_len=16, global_batch_size=4) == 2 * ((1000 // 16) // 4)
    assert ft_train_steps(63, epochs=3, seq_len=16, global_batch_size=4) == 0
    with pytest.raises(OLMoConfigurationError, match="epochs"):
        ft_train_steps(100, epochs=0, seq_len=16, global_batch_size=4)


@pytest.mark.parametrize("ratio", paper.CFS_MIX_RATIOS)
def test_paper_ratios_exact_counts_and_steps(task, samples, tmp_path, ratio):
    meta_task = read_meta(task)
    n = meta_task.splits["train"]["documents"]
    out = tmp_path / "mix"
    epochs = 4  # enough steps for at least one whole pass at ratio 2
    meta = build_cfs_mix(task, samples, ratio, out, epochs=epochs, seq_len=SEQ, global_batch_size=BATCH, seed=3)
    s = meta.source
    # steps equal to plain fine-tuning's, whatever the ratio ([CFS] Sec 3)
    steps = epochs * ((meta_task.splits["train"]["tokens"] // SEQ) // BATCH)
    assert s["train_steps"] == steps
    assert meta.splits["train"]["tokens"] == steps * BATCH * SEQ
    assert olmo_core_steps(out, tmp_path / "work") == steps
    assert s["pool_size"] == round(ratio * n) and s["lam"] == ratio
    # pass structure: pass p holds every task doc once and every pool sample once (lambda = ratio)
    docs, task_docs, pool = classify(out, task, samples, s["pool_size"])
    per_pass = n + s["pool_size"]
    full = len(docs) // per_pass
    assert full >= 1
    for p in range(full):
        chunk = docs[p * per_pass : (p + 1) * per_pass]
        c = Counter((kind, key) for kind, key, _, _ in chunk)
        assert sorted(k for (kind, k) in c if kind == "task") == sorted(task_docs)
        assert sorted(k for (kind, k) in c if kind == "synthetic") == sorted(pool)
        assert set(c.values()) == {1}
    # only the document crossing the step budget is cut
    assert [kind for kind, *_ in docs].count("cut") <= 1
    assert docs[-1][0] in ("cut", "task", "synthetic")
    assert s["documents_seen"]["task"] + s["documents_seen"]["synthetic"] == len(docs)


def test_masks_token_by_token(task, samples, tmp_path):
    meta = build_cfs_mix(task, samples, 0.5, tmp_path / "mix", epochs=EPOCHS, seq_len=SEQ, global_batch_size=BATCH)
    docs, task_docs, pool = classify(tmp_path / "mix", task, samples, meta.source["pool_size"])
    seen = Counter()
    for kind, key, t, m in docs:
        seen[kind] += 1
        if kind == "task":  # response-only: exactly the task's own mask
            assert np.array_equal(m, task_docs[key][1])
            assert not m[0] and m[-1]
        elif kind == "synthetic":  # all-token loss; a sample cut at max_tokens gets a non-target EOS
            rec = pool[key]
            expect = [True] * len(rec["token_ids"])
            if rec["finish_reason"] == "length":
                expect.append(False)
            assert m.tolist() == expect
            assert t[-1] == EOS
        else:  # the cut tail: closed by a non-target EOS
            assert t[-1] == EOS and not m[-1]
    assert seen["task"] > 0 and seen["synthetic"] > 0
    # the whole file, flat: same arrays the fine-tuner reads
    tp, mp = split_paths(tmp_path / "mix", "train")
    flat_mask = np.fromfile(mp, dtype=bool)
    assert flat_mask.sum() == meta.splits["train"]["target_tokens"]
    assert np.fromfile(tp, dtype=np.uint16).size == flat_mask.size
    # val split: the task's, unchanged
    for a, b in zip(split_paths(task, "val"), split_paths(tmp_path / "mix", "val")):
        assert a.read_bytes() == b.read_bytes()


def test_lambda_by_duplication_integer_is_exact(task, samples, tmp_path):
    # ratio 0.5, lambda 1: each pool sample twice per pass (weight 1 on half as many samples)
    meta = build_cfs_mix(task, samples, 0.5, tmp_path / "mix", lam=1.0, epochs=4, seq_len=SEQ, global_batch_size=BATCH)
    s = meta.source
    assert (s["copies_per_pass"], s["extra_draws_per_pass"]) == (2, 0)
    docs, task_docs, pool = classify(tmp_path / "mix", task, samples, s["pool_size"])
    per_pass = s["task_documents"] + 2 * s["pool_size"]
    chunk = docs[:per_pass]
    c = Counter(key for kind, key, *_ in chunk if kind == "synthetic")
    assert len(c) == s["pool_size"] and set(c.values()) == {2}


def test_lambda_fractional_is_exact_in_expectation():
    from olmo_sam.cfs.mix import _pass_documents

    # N=60 task docs, pool M=30 (ratio 0.5), lambda 1.3: q = 2.6 copies per sample per pass
    plan = plan_mix(60, 60 * 20, ratio=0.5, lam=1.3, epochs=1, seq_len=SEQ, global_batch_size=BATCH)
    assert plan.copies_per_pass == 2 and plan.extra_draws_per_pass == pytest.approx(18.0)
    mult = np.zeros(plan.pool_size)
    passes = 400
    for p in range(passes):
        order = _pass_documents(plan, np.random.default_rng([0, p]))
        synth = order[order >= 60] - 60
        assert len(synth) == 78  # lambda * N = 78 draws, an integer here
        per = np.bincount(synth, minlength=plan.pool_size)
        assert set(per.tolist()) <= {2, 3}
        assert np.array_equal(np.sort(order[order < 60]), np.arange(60))
        mult += per
    # each sample's mean multiplicity -> q = 2.6; binomial sd of the mean = sqrt(.24/400) ~ .024
    assert np.abs(mult / passes - 2.6).max() < 5 * np.sqrt(0.24 / passes)
    # a non-integer draw count is rounded at random with the right mean
    plan2 = plan_mix(60, 1200, ratio=0.5, lam=1.01, epochs=1, seq_len=SEQ, global_batch_size=BATCH)
    n_synth = [int((_pass_documents(plan2, np.random.default_rng([1, p])) >= 60).sum()) for p in range(2000)]
    assert set(n_synth) == {60, 61} and abs(np.mean(n_synth) - 60.6) < 0.05


def test_contextual_mix_masks(task, tmp_path):
    from olmo_sam.cfs.mix import task_prompts

    prompts = task_prompts(task)
    cs = fake_samples(tmp_path / "cs.jsonl", len(prompts), kind="contextual", prompts=prompts)
    meta = build_cs_mix(task, cs, 1.0, tmp_path / "mix", epochs=EPOCHS, seq_len=SEQ, global_batch_size=BATCH)
    docs, task_docs, pool = classify(tmp_path / "mix", task, cs, meta.source["pool_size"])
    n_cs = 0
    for kind, key, t, m in docs:
        if kind != "synthetic":
            continue
        n_cs += 1
        rec = pool[key]
        n_prompt = len(rec["prompt_token_ids"]) - 1  # the leading start token is the previous EOS
        assert not m[:n_prompt].any()  # the task prompt is context, not target
        assert m[n_prompt : n_prompt + len(rec["token_ids"])].all()
        assert t[:n_prompt].tolist() == rec["prompt_token_ids"][1:]
    assert n_cs > 0 and meta.source["method"] == "cs"


@pytest.mark.parametrize("ratio", [0, -0.5, float("nan")])
def test_bad_ratio(task, samples, tmp_path, ratio):
    with pytest.raises(OLMoConfigurationError, match="ratio must be > 0"):
        build_cfs_mix(task, samples, ratio, tmp_path / "mix")


def test_bad_inputs(task, samples, tmp_path):
    kw = dict(epochs=EPOCHS, seq_len=SEQ, global_batch_size=BATCH)
    with pytest.raises(OLMoConfigurationError, match="lam"):
        build_cfs_mix(task, samples, 0.5, tmp_path / "m1", lam=0.0, **kw)
    few = fake_samples(tmp_path / "few.jsonl", 10)
    with pytest.raises(OLMoConfigurationError, match=r"needs 30 samples.*has 10.*--num-samples 50%"):
        build_cfs_mix(task, few, 0.5, tmp_path / "m2", **kw)
    with pytest.raises(OLMoConfigurationError, match="needs contextual samples"):
        build_cs_mix(task, samples, 0.5, tmp_path / "m3", **kw)
    with pytest.raises(OLMoConfigurationError, match="0 steps"):
        build_cfs_mix(task, samples, 0.5, tmp_path / "m4", epochs=1, seq_len=4096, global_batch_size=BATCH)
    with pytest.raises(OLMoConfigurationError, match="must differ"):
        build_cfs_mix(task, samples, 0.5, task, **kw)
    recs = [json.loads(line) for line in open(samples)]
    for r in recs:
        r["eos_token_id"] = 7
    other = tmp_path / "other_eos.jsonl"
    other.write_text("".join(json.dumps(r) + "\n" for r in recs))
    with pytest.raises(OLMoConfigurationError, match="tokenizer differ"):
        build_cfs_mix(task, other, 0.5, tmp_path / "m5", **kw)
    recs = [json.loads(line) for line in open(samples)]
    recs[0]["token_ids"] = [VOCAB + 3, EOS]
    big = tmp_path / "big_ids.jsonl"
    big.write_text("".join(json.dumps(r) + "\n" for r in recs))
    with pytest.raises(OLMoConfigurationError, match=f"token id {VOCAB + 3} >= the task's vocab_size"):
        build_cfs_mix(task, big, 0.5, tmp_path / "m8", **kw)
    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"index": 0}\n')
    with pytest.raises(OLMoConfigurationError, match=r"broken.jsonl:1: record lacks"):
        build_cfs_mix(task, broken, 0.5, tmp_path / "m6", **kw)
    with pytest.raises(OLMoConfigurationError, match="samples file .* not found"):
        build_cfs_mix(task, tmp_path / "missing.jsonl", 0.5, tmp_path / "m7", **kw)
    assert not (tmp_path / "m2" / "train.npy").exists()


def test_mix_cli(task, samples, tmp_path):
    from click.testing import CliRunner

    from olmo_sam.cli import main

    r = CliRunner().invoke(
        main,
        [
            "cfs",
            "mix",
            str(task),
            str(samples),
            "--out",
            str(tmp_path / "mix"),
            "--ratio",
            "0.5",
            "--epochs",
            "2",
            "--seq-len",
            "16",
            "--batch-size",
            "4",
        ],
    )
    assert r.exit_code == 0, r.output
    assert "train for 1 epoch" in r.output
    assert read_meta(tmp_path / "mix").source["ratio"] == 0.5
    r = CliRunner().invoke(main, ["cfs", "mix", str(task), str(samples), "--out", str(tmp_path / "m2"), "--ratio", "0"])
    assert r.exit_code == 1 and "ratio must be > 0" in r.output
