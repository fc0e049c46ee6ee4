"""WiSE-FT end points, exact replay mixing, and LoRA training that leaves the base untouched."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import VOCAB
from ft_helpers import write_task
from olmo_core.distributed.checkpoint import load_model_and_optim_state
from olmo_core.exceptions import OLMoConfigurationError

from olmo_sam.checkpoints import (
    load_checkpoint_config,
    load_transformer,
    save_transformer,
)
from olmo_sam.evals.lm_loss import lm_loss
from olmo_sam.finetune.baselines import build_replay_mix, save_wise_ft, wise_ft_state
from olmo_sam.finetune.data import iter_documents, read_meta, split_paths
from olmo_sam.finetune.engine import FTConfig, run_finetune
from olmo_sam.finetune.lora import (
    LoRASettings,
    inject_lora,
    load_merged_lora,
    merge_lora,
)


def _state(path):
    model, _ = load_transformer(path)
    return {k: v.clone() for k, v in model.state_dict().items()}


def test_wise_ft_end_points_are_exact(tiny_checkpoint, tmp_path):
    base, _ = load_transformer(tiny_checkpoint)
    ft = load_transformer(tiny_checkpoint)[0]
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in ft.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.05)
    ft_dir = save_transformer(ft, tmp_path / "ft", load_checkpoint_config(tiny_checkpoint), step=7)
    b_sd, f_sd = _state(tiny_checkpoint), _state(ft_dir)
    for alpha, expect in [(0.0, b_sd), (1.0, f_sd)]:
        got = _state(save_wise_ft(tiny_checkpoint, ft_dir, alpha, tmp_path / f"w{alpha}"))
        assert got.keys() == expect.keys()
        for k in expect:
            assert torch.equal(got[k], expect[k]), (alpha, k)
    half = _state(save_wise_ft(tiny_checkpoint, ft_dir, 0.25, tmp_path / "w25"))
    for k in b_sd:
        torch.testing.assert_close(half[k], 0.75 * b_sd[k] + 0.25 * f_sd[k], rtol=1e-6, atol=1e-7)
    assert any(not torch.equal(half[k], b_sd[k]) for k in b_sd)
    with pytest.raises(OLMoConfigurationError, match="alpha must be in"):
        wise_ft_state(b_sd, f_sd, 1.5)
    # an existing --out is replaced only when asked; the inputs never
    with pytest.raises(OLMoConfigurationError, match="w25 already exists; pass --overwrite"):
        save_wise_ft(tiny_checkpoint, ft_dir, 0.5, tmp_path / "w25")
    assert torch.equal(_state(save_wise_ft(tiny_checkpoint, ft_dir, 1.0, tmp_path / "w25", overwrite=True))[k], f_sd[k])
    with pytest.raises(OLMoConfigurationError, match=r"holds the input .*: writing it would delete the input"):
        save_wise_ft(tiny_checkpoint, ft_dir, 0.5, tmp_path / "ft", overwrite=True)
    assert torch.equal(_state(ft_dir)[k], f_sd[k])
    # (user probe 6) a bad alpha is refused before two checkpoints load; the same checkpoint twice is no interpolation
    with pytest.raises(OLMoConfigurationError, match="alpha must be in"):
        save_wise_ft(tiny_checkpoint, ft_dir, 1.5, tmp_path / "w15")
    assert not (tmp_path / "w15").exists()
    with pytest.raises(OLMoConfigurationError, match="--base and --ft are the same checkpoint"):
        save_wise_ft(tiny_checkpoint, tiny_checkpoint, 0.5, tmp_path / "same")


@pytest.mark.parametrize("ratio", [0.5, 1.0, 2.0])
def test_replay_mix_ratio_is_exact(tmp_path, tiny_corpus, ratio):
    task = write_task(tmp_path / "task", n_train=80, n_val=10)
    meta = read_meta(task)
    out, mix = build_replay_mix(task, [tiny_corpus.train], ratio, tmp_path / "mix", seed=3)
    task_tokens = meta.splits["train"]["tokens"]
    n_replay = round(ratio * task_tokens)
    assert mix.splits["train"]["tokens"] == task_tokens + n_replay
    assert mix.source["replay"]["replay_tokens"] == n_replay
    # the task documents are all there, unchanged; the rest are pretraining pieces
    task_docs = sorted(tuple(t.tolist()) for t, _ in iter_documents(task, "train"))
    mixed = list(iter_documents(out, "train"))
    is_task = [tuple(t.tolist()) in set(task_docs) and not m.all() for t, m in mixed]
    assert sorted(tuple(t.tolist()) for (t, _), k in zip(mixed, is_task) if k) == task_docs
    replay = [(t, m) for (t, m), k in zip(mixed, is_task) if not k]
    assert sum(len(t) for t, _ in replay) == n_replay and all(m.all() for _, m in replay)  # all-token loss
    # pieces are contiguous pretraining text (the last one closed with EOS)
    pt = np.fromfile(tiny_corpus.train, dtype=np.uint16)
    pt_str = pt.tobytes()
    for t, _ in replay:
        body = t[:-1].astype(np.uint16).tobytes()
        assert body in pt_str
    # shuffled, and the validation split is the task's own
    assert is_task != sorted(is_task, reverse=True)
    assert split_paths(out, "val")[0].read_bytes() == split_paths(task, "val")[0].read_bytes()
    with pytest.raises(OLMoConfigurationError, match="replay needs"):
        build_replay_mix(task, [tiny_corpus.val], 1000.0, tmp_path / "too_much")


def test_lora_trains_adapters_only_and_merges(tiny_checkpoint, tiny_corpus, tmp_path):
    data = write_task(tmp_path / "task", n_train=120, n_val=20)
    cfg = FTConfig(
        base=str(tiny_checkpoint),
        data=str(data),
        lr=1e-2,
        method="lora",
        lora_rank=4,
        batch_size=8,
        max_steps=4,
        pt_val=[str(tiny_corpus.val)],
        pt_val_max_sequences=16,
    )
    (rec,) = run_finetune(cfg, tmp_path / "run", keep_checkpoint=True)
    final = tmp_path / "run" / "train" / "step4"
    settings = LoRASettings(rank=4, init_seed=cfg.seed)
    # the trained checkpoint's base weights are bit-identical to the base checkpoint's
    trained, _ = load_transformer(tiny_checkpoint)
    inject_lora(trained, settings)
    load_model_and_optim_state(str(final / "model_and_optim"), trained)
    base_sd = _state(tiny_checkpoint)
    trained_sd = trained.state_dict()
    n_lora = 0
    for k, v in trained_sd.items():
        if "lora_" in k:
            n_lora += 1
            continue
        assert torch.equal(v, base_sd[k.replace(".base_layer.", ".")]), k
    assert n_lora == 2 * 7 * 2  # A and B for 7 linear maps in each of 2 blocks
    assert all(trained_sd[k].abs().sum() > 0 for k in trained_sd if "lora_B" in k)  # B left zero-init
    assert rec.extra["checkpoint"] == str(final)
    # merging gives W + (alpha/r) B A, and the same function as the adapter model
    x = torch.randint(2, VOCAB, (2, 16))
    with torch.no_grad():
        adapted = trained(x)
        merged = merge_lora(trained)
        torch.testing.assert_close(merged(x), adapted, rtol=1e-4, atol=1e-4)
    m = load_merged_lora(tiny_checkpoint, final, settings)
    assert not any("lora" in k for k in m.state_dict())
    l_ft = lm_loss(
        m, [split_paths(data, "val")[0]], mask_paths=[split_paths(data, "val")[1]], seq_len=64, vocab_size=VOCAB
    )
    assert l_ft.loss == pytest.approx(rec.l_ft, rel=1e-6)
    base_model, _ = load_transformer(tiny_checkpoint)
    l_ft_base = lm_loss(
        base_model,
        [split_paths(data, "val")[0]],
        mask_paths=[split_paths(data, "val")[1]],
        seq_len=64,
        vocab_size=VOCAB,
    )
    assert rec.l_ft < l_ft_base.loss  # the adapters learned the task


def test_checkpoint_helpers_do_not_print_torchs_single_process_notice(tiny_checkpoint, tmp_path):
    """`probe noise` and `wise-ft` printed torch's "torch.distributed is disabled ... assuming the
    intent is to load in a single process" on every checkpoint: these helpers are that case."""
    import warnings

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model, _ = load_transformer(tiny_checkpoint)
        save_transformer(model, tmp_path / "copy", load_checkpoint_config(tiny_checkpoint))
    assert not [w for w in caught if "torch.distributed is disabled" in str(w.message)]
