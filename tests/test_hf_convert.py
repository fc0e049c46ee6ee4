"""OLMo-core <-> Hugging Face: export, import, round trip, logits, and the 1B recipe's start path."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from olmo_core.exceptions import OLMoConfigurationError
from safetensors.torch import load_file

from olmo_sam.checkpoints import load_transformer, resolve_checkpoint
from olmo_sam.hf import export_hf, import_hf
from olmo_sam.train import read_metrics

SEQ = 64


def hf_logits(hf_dir: Path, ids: torch.Tensor) -> torch.Tensor:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32).eval()
    with torch.no_grad():
        return model(input_ids=ids).logits


def olmo_logits(ckpt, ids: torch.Tensor) -> torch.Tensor:
    model, _ = load_transformer(ckpt)
    with torch.no_grad():
        return model(ids)


def batch_of(path: Path, dtype=np.uint16, n: int = 2) -> torch.Tensor:
    arr = np.fromfile(path, dtype=dtype)[: n * SEQ].astype(np.int64)
    return torch.from_numpy(arr.reshape(n, SEQ))


@pytest.fixture(scope="module")
def bpe_run(tmp_path_factory, demo_data_small):
    """A tiny model trained 3 steps on the demo data (BPE tokenizer) through the pretrain recipe."""
    from olmo_sam.recipes.pretrain import PretrainSpec, build_pretrain
    from olmo_sam.train import run_experiment

    save = tmp_path_factory.mktemp("bpe_run") / "run"
    cfg, _ = build_pretrain(
        PretrainSpec(
            size="tiny",
            steps=3,
            lr=3e-3,
            batch_size=4,
            seq_len=SEQ,
            tokenizer=demo_data_small.tokenizer,
            train_paths=[str(p) for p in demo_data_small.train_paths],
            save_folder=str(save),
        )
    )
    run_experiment(cfg)
    return resolve_checkpoint(save)


def test_export_without_tokenizer_matches_logits(tiny_checkpoint, tiny_corpus, tmp_path):
    out = tmp_path / "hf"
    report = export_hf(tiny_checkpoint, out, include_tokenizer=False)
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["architectures"] == ["Olmo2ForCausalLM"]
    assert (cfg["max_position_embeddings"], cfg["vocab_size"]) == (SEQ, 256)
    assert (cfg["bos_token_id"], cfg["eos_token_id"], cfg["pad_token_id"]) == (0, 0, 1)
    ids = batch_of(tiny_corpus.val)
    diff = (hf_logits(out, ids) - olmo_logits(tiny_checkpoint, ids)).abs().max().item()
    assert diff < 1e-5 and report["max_abs_logit_diff"] < 1e-4


def test_export_refuses_missing_or_wrong_tokenizer(tiny_checkpoint, demo_data_small, tmp_path):
    with pytest.raises(OLMoConfigurationError, match="no tokenizer found"):
        export_hf(tiny_checkpoint, tmp_path / "a")
    with pytest.raises(
        OLMoConfigurationError, match="has 512 tokens but the checkpoint was trained with vocab_size=256"
    ):
        export_hf(tiny_checkpoint, tmp_path / "b", tokenizer=str(demo_data_small.tokenizer_dir))
    assert not any(tmp_path.iterdir()), "a failed export must leave nothing behind"


def test_export_import_round_trip(bpe_run, demo_data_small, tmp_path):
    hf1, imported, hf2 = tmp_path / "hf1", tmp_path / "imported", tmp_path / "hf2"
    report = export_hf(bpe_run, hf1)  # tokenizer found through the data's tokenizer identifier
    assert report["tokenizer"] == str(demo_data_small.tokenizer_dir.resolve())
    assert report["planned_steps"] == 3 and "warning" not in report  # the run's end
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(hf1)
    text = "Alice was beginning to get very tired"
    assert tok.decode(tok(text)["input_ids"]) == text and len(tok) == 512
    cfg = json.loads((hf1 / "config.json").read_text())
    assert (cfg["bos_token_id"], cfg["eos_token_id"], cfg["pad_token_id"], cfg["max_position_embeddings"]) == (
        0,
        0,
        1,
        SEQ,
    )

    import_hf(str(hf1), imported)
    original, _ = load_transformer(bpe_run)
    back, info = load_transformer(imported)
    a, b = original.state_dict(), back.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert info.tokenizer.vocab_size == 512 and info.sequence_length == SEQ
    assert (imported / "tokenizer" / "tokenizer.json").exists()
    ids = batch_of(demo_data_small.val_paths[0])
    ref = olmo_logits(bpe_run, ids)
    assert (hf_logits(hf1, ids) - ref).abs().max().item() < 1e-5

    # exporting the import gives the same Hugging Face weights, tokenizer found beside the step
    export_hf(imported / "step0", hf2)
    w1, w2 = load_file(hf1 / "model.safetensors"), load_file(hf2 / "model.safetensors")
    assert w1.keys() == w2.keys() and all(torch.equal(w1[k], w2[k]) for k in w1)
    with pytest.raises(OLMoConfigurationError, match="already exists"):
        export_hf(bpe_run, hf1)
    # --overwrite never replaces the input itself (it replaced a whole run by its export)
    for out, src in [(bpe_run, bpe_run), (imported, imported / "step0")]:
        with pytest.raises(OLMoConfigurationError, match="holds the input .*writing it would delete the input"):
            export_hf(src, out, overwrite=True)
    with pytest.raises(OLMoConfigurationError, match="holds the input"):
        import_hf(str(hf1), hf1, overwrite=True)
    assert (hf1 / "model.safetensors").is_file() and (imported / "step0").is_dir()


def test_export_of_an_unfinished_run_says_so(demo_data_small, tmp_path):
    """export-hf of a run stopped early (--stop-at-step 2 of --steps 4) silently exported step 2 as
    if it were the trained model: now a warning names the step and the planned length, and the
    conversion record keeps both."""
    from olmo_sam.cli import main

    run = tmp_path / "run"
    res = CliRunner().invoke(
        main,
        ["pretrain", "--size", "tiny", "--steps", "4", "--stop-at-step", "2", "--checkpoint-interval", "1",
         "--lr", "3e-3", "--batch-size", "4", "--seq-len", str(SEQ), "--data", str(demo_data_small.root / "tokens"),
         "--out", str(run)],
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    res = CliRunner().invoke(main, ["export-hf", str(run), "--out", str(tmp_path / "hf"), "--no-validate"])
    assert res.exit_code == 0, res.output
    assert "warning: the run is unfinished: it stopped at step 2 of its planned 4 steps" in res.stderr
    report = json.loads((tmp_path / "hf" / "olmo-sam-conversion.json").read_text())
    assert (report["step"], report["planned_steps"]) == (2, 4) and "stopped at step 2" in report["warning"]
    res = CliRunner().invoke(main, ["export-hf", str(run / "step1"), "--out", str(tmp_path / "hf1"), "--no-validate"])
    assert (
        res.exit_code == 0
        and "warning: step 1 is an intermediate checkpoint of a run planned for 4 steps" in res.stderr
    )


def test_import_generic_olmo2_model(tiny_hf_model, tmp_path):
    import_hf(str(tiny_hf_model), tmp_path / "imp")
    model, info = load_transformer(tmp_path / "imp")
    assert model.blocks["0"].feed_forward.hidden_size == 384  # not a project preset: generic path
    ids = torch.randint(0, 512, (2, 32), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        diff = (model(ids) - hf_logits(tiny_hf_model, ids)).abs().max().item()
    assert diff < 1e-5


def test_import_rejects_other_architectures(tmp_path):
    from transformers import LlamaConfig, LlamaForCausalLM

    d = tmp_path / "llama"
    LlamaForCausalLM(
        LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=1, num_attention_heads=2, vocab_size=128)
    ).save_pretrained(d)
    with pytest.raises(OLMoConfigurationError, match="only OLMo-2 models"):
        import_hf(str(d), tmp_path / "out")


@pytest.mark.slow
def test_midtrain_recipe_starts_from_converted_hf_model(bpe_run, demo_data_small, tmp_path, tiny_checkpoint):
    """The 1B recipe's start path on CPU: convert the HF model on first launch, load it as the
    initial weights. With LR 0 the trained weights must equal the converted ones exactly."""
    from olmo_sam.recipes.midtrain import main as midtrain_main

    hf = tmp_path / "hf"
    export_hf(bpe_run, hf)
    save = tmp_path / "mid"
    args = [
        "--size",
        "tiny",
        "--optimizer",
        "sam",
        "--steps",
        "2",
        "--batch-size",
        "4",
        "--seq-len",
        str(SEQ),
        "--data-mix",
        str(demo_data_small.root / "tokens"),
        "--eval-interval",
        "1000",
        "--lr",
        "0",
    ]
    r = CliRunner().invoke(midtrain_main, [*args, "--init-from-hf", str(hf), "--out", str(save)])
    assert r.exit_code == 0, r.output
    start, _ = load_transformer(save / "init")
    end, _ = load_transformer(save)
    assert resolve_checkpoint(save).name == "step2"
    s, e = start.state_dict(), end.state_dict()
    assert all(torch.equal(s[k], e[k]) for k in s)
    orig = load_transformer(bpe_run)[0].state_dict()
    assert all(torch.equal(orig[k], s[k]) for k in orig)
    metrics = read_metrics(save)
    assert metrics[2]["sam/ascent"] == 1.0 and "eval/lm/pt-val/CE loss" in metrics[2]
    # the Python API (what a study arm's load_path uses) starts from a model-only import directory
    from olmo_sam.recipes.midtrain import MidtrainSpec, build_midtrain, run_midtrain

    spec = MidtrainSpec(
        size="tiny",
        optimizer="adamw",
        steps=1,
        tokens=None,
        lr=0.0,
        batch_size=4,
        seq_len=SEQ,
        train_paths=[str(p) for p in demo_data_small.train_paths],
        tokenizer=demo_data_small.tokenizer,
        load_path=str(save / "init"),
        save_folder=str(tmp_path / "api"),
        eval_interval=1000,
    )
    run_midtrain(build_midtrain(spec), init_from_hf=None)
    api = load_transformer(tmp_path / "api")[0].state_dict()
    assert all(torch.equal(api[k], s[k]) for k in s)
    # a start checkpoint of another model is refused before training
    r = CliRunner().invoke(midtrain_main, [*args, "--load-path", str(tiny_checkpoint), "--out", str(tmp_path / "bad")])
    assert r.exit_code != 0 and "holds a different model" in r.output
