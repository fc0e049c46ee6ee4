"""Generation without vLLM: the BOS prompt, the transformers engine, shards and resume, bad input."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
from cfs_helpers import (
    chi2_pvalue,
    counts,
    exact_distribution,
    first_tokens,
    make_peaked_model,
    make_task_dir,
)
from click.testing import CliRunner
from olmo_core.exceptions import OLMoConfigurationError

from olmo_sam.cfs.generate import (
    VLLM_PYTHON_ENV,
    SamplingSettings,
    context_free_job,
    contextual_job,
    parse_count,
    resolve_vllm_python,
    run_generation,
)
from olmo_sam.cfs.prompts import resolve_prompt
from olmo_sam.cli import main


@pytest.fixture(scope="module")
def peaked(tiny_hf_model, tmp_path_factory):
    return make_peaked_model(tiny_hf_model, tmp_path_factory.mktemp("peaked"))


@pytest.fixture(scope="module")
def tok(tiny_hf_model):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_hf_model)


def no_special_model(src: Path, dst: Path, *, keep_eos: bool) -> Path:
    """A copy of the tiny model whose tokenizer has no BOS (and, unless keep_eos, no EOS)."""
    shutil.copytree(src, dst)
    cfg_path = dst / "tokenizer_config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg.pop("bos_token", None)
    if not keep_eos:
        cfg.pop("eos_token", None)
    cfg_path.write_text(json.dumps(cfg))
    return dst


def test_prompt_is_the_bos_token(tok, tiny_hf_model):
    start = resolve_prompt(tok)
    assert start.ids == [tok.convert_tokens_to_ids("<|endoftext|>")] == [tok.bos_token_id]
    assert start.source == "bos"
    assert resolve_prompt(tok, token_id=5).ids == [5]
    assert resolve_prompt(tok, text="<|pad|>").ids == [tok.pad_token_id]
    assert resolve_prompt(tok, text="\n").ids == tok.encode("\n", add_special_tokens=False)
    with pytest.raises(OLMoConfigurationError, match="outside the tokenizer"):
        resolve_prompt(tok, token_id=len(tok))
    with pytest.raises(OLMoConfigurationError, match="not both"):
        resolve_prompt(tok, token_id=1, text="x")
    job = context_free_job(tiny_hf_model, "/tmp/unused.jsonl", 3, tokenizer=tok)
    assert job.prompts == [[tok.bos_token_id]] * 3


def test_model_without_bos_or_eos(tiny_hf_model, tmp_path):
    from transformers import AutoTokenizer

    eos_only = no_special_model(tiny_hf_model, tmp_path / "eos_only", keep_eos=True)
    t = AutoTokenizer.from_pretrained(eos_only)
    assert t.bos_token_id is None and resolve_prompt(t).source == "eos"
    neither = no_special_model(tiny_hf_model, tmp_path / "neither", keep_eos=False)
    with pytest.raises(OLMoConfigurationError, match="neither a BOS nor an EOS.*--prompt-token-id"):
        context_free_job(neither, tmp_path / "x.jsonl", 4)
    r = CliRunner().invoke(
        main, ["cfs", "generate", str(neither), "--out", str(tmp_path / "x.jsonl"), "-n", "4", "--engine", "hf"]
    )
    assert r.exit_code == 1 and "neither a BOS nor an EOS" in r.output
    # an explicit start token makes it usable
    job = context_free_job(neither, tmp_path / "x.jsonl", 2, prompt_token_id=0)
    assert job.prompts == [[0], [0]] and job.prompt_source == "explicit-id"


def test_parse_count():
    assert parse_count("1000") == 1000
    assert [parse_count(f"{p}%", 400) for p in (10, 50, 100, 200)] == [40, 200, 400, 800]
    with pytest.raises(OLMoConfigurationError, match="--task-dir"):
        parse_count("50%")
    with pytest.raises(OLMoConfigurationError, match="at least 1"):
        parse_count("10%", 4)
    with pytest.raises(OLMoConfigurationError, match="not an integer"):
        parse_count("many")
    with pytest.raises(
        OLMoConfigurationError, match="temperature: must be a number > 0, got 0.0; greedy decoding is not sampling"
    ):
        SamplingSettings(temperature=0)
    with pytest.raises(OLMoConfigurationError, match="top_p"):
        SamplingSettings(top_p=1.5)


def test_missing_vllm_environment(tiny_hf_model, tmp_path, monkeypatch):
    monkeypatch.delenv(VLLM_PYTHON_ENV, raising=False)
    monkeypatch.chdir(tmp_path)  # no ./.venv-vllm here
    with pytest.raises(OLMoConfigurationError, match="separate Python environment.*setup-vllm.sh.*--engine hf"):
        resolve_vllm_python()
    with pytest.raises(OLMoConfigurationError, match="--vllm-python=.*no executable Python"):
        resolve_vllm_python(tmp_path / "nope" / "python")
    monkeypatch.setenv(VLLM_PYTHON_ENV, str(tmp_path / "missing-python"))
    with pytest.raises(OLMoConfigurationError, match=f"{VLLM_PYTHON_ENV}=.*no executable Python"):
        resolve_vllm_python()
    monkeypatch.delenv(VLLM_PYTHON_ENV)
    r = CliRunner().invoke(main, ["cfs", "generate", str(tiny_hf_model), "--out", str(tmp_path / "o.jsonl"), "-n", "2"])
    assert r.exit_code == 1 and "setup-vllm.sh" in r.output
    assert not (tmp_path / "o.jsonl").exists()
    # --engine auto falls back to transformers only when no environment is configured at all
    job = context_free_job(tiny_hf_model, tmp_path / "auto.jsonl", 2, SamplingSettings(max_tokens=3))
    run_generation(tiny_hf_model, [job], engine="auto")
    assert json.loads(open(tmp_path / "auto.jsonl").readline())["engine"] == "hf"
    monkeypatch.setenv(VLLM_PYTHON_ENV, str(tmp_path / "missing-python"))
    with pytest.raises(OLMoConfigurationError, match="no executable Python"):
        run_generation(tiny_hf_model, [job], engine="auto", overwrite=True)


def test_environment_without_vllm(tiny_hf_model, tmp_path):
    # a real Python that lacks vLLM (this one): the worker reports it, the caller explains
    job = context_free_job(tiny_hf_model, tmp_path / "o.jsonl", 2, SamplingSettings(max_tokens=4))
    with pytest.raises(OLMoConfigurationError, match="cannot import vllm.*setup-vllm.sh"):
        run_generation(tiny_hf_model, [job], engine="vllm", vllm_python=sys.executable)


def test_hf_engine_records_and_resume(tiny_hf_model, tok, tmp_path):
    settings = SamplingSettings(max_tokens=12, seed=3)
    job = lambda out: context_free_job(tiny_hf_model, out, 11, settings, tokenizer=tok, shard_size=4)  # noqa: E731
    (ref,) = run_generation(tiny_hf_model, [job(tmp_path / "ref.jsonl")], engine="hf", hf_batch_size=3)
    recs = [json.loads(line) for line in open(tmp_path / "ref.jsonl")]
    assert ref.samples == len(recs) == 11 and [r["index"] for r in recs] == list(range(11))
    assert not (tmp_path / "ref.jsonl.shards").exists()  # merged and cleaned up
    for r in recs:
        assert r["prompt_token_ids"] == [tok.bos_token_id]
        assert (r["engine"], r["temperature"], r["top_p"], r["max_tokens"]) == ("hf", 1.0, 0.95, 12)
        assert len(r["model_sha256"]) == 64 and r["kind"] == "context_free"
        if r["finish_reason"] == "stop":
            assert r["token_ids"][-1] == tok.eos_token_id and tok.eos_token_id not in r["token_ids"][:-1]
        else:
            assert r["finish_reason"] == "length" and len(r["token_ids"]) == 12
            assert tok.eos_token_id not in r["token_ids"]
        assert r["text"] == tok.decode(r["token_ids"], skip_special_tokens=True)
    meta = json.loads((tmp_path / "ref.jsonl.meta.json").read_text())
    assert meta["tokens"] == ref.tokens == sum(len(r["token_ids"]) for r in recs)

    # interrupted run: shards 0 and 2 of 3 finished, shard 1 missing; mark the finished ones so
    # the test can see they are reused, not resampled
    out = tmp_path / "resumed.jsonl"
    shards = Path(str(out) + ".shards")
    shards.mkdir()
    (shards / "manifest.json").write_text((json.dumps(meta["manifest"])) + "\n")
    for k, rng in ((0, range(0, 4)), (2, range(8, 11))):
        with open(shards / f"shard-{k:05d}.jsonl", "w") as f:
            for i in rng:
                f.write(json.dumps({**recs[i], "text": "REUSED"}) + "\n")
    (shards / "shard-00001.jsonl").write_text(json.dumps(recs[4]) + "\n")  # torn write: 1 of 4 lines
    (res,) = run_generation(tiny_hf_model, [job(out)], engine="hf", hf_batch_size=3)
    assert res.resumed_shards == 2
    got = [json.loads(line) for line in open(out)]
    assert [g["text"] for g in got] == ["REUSED"] * 4 + [r["text"] for r in recs[4:8]] + ["REUSED"] * 3
    assert [g["token_ids"] for g in got] == [r["token_ids"] for r in recs]  # shard 1 resampled identically

    # a finished OUT with the same settings is left alone; different settings are refused
    (again,) = run_generation(tiny_hf_model, [job(out)], engine="hf", hf_batch_size=3)
    assert again.seconds == 0 and again.samples == 11
    other = context_free_job(
        tiny_hf_model, out, 11, SamplingSettings(max_tokens=12, seed=4), tokenizer=tok, shard_size=4
    )
    with pytest.raises(OLMoConfigurationError, match=r"different settings \(seed: 3 -> 4\).*--overwrite"):
        run_generation(tiny_hf_model, [other], engine="hf", hf_batch_size=3)
    run_generation(tiny_hf_model, [other], engine="hf", hf_batch_size=3, overwrite=True)
    assert json.loads(open(out).readline())["run_seed"] == 4


def test_hf_first_token_distribution(peaked, tmp_path):
    """The fallback samples the first token from exactly softmax(logits(BOS)/T) cut to top-p."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(peaked)
    n = 2000
    job = context_free_job(peaked, tmp_path / "first.jsonl", n, SamplingSettings(max_tokens=1, seed=11), tokenizer=tok)
    run_generation(peaked, [job], engine="hf", hf_batch_size=500, dtype="float32")
    obs = counts(first_tokens([json.loads(line) for line in open(tmp_path / "first.jsonl")]), len(tok))
    p = exact_distribution(peaked, [tok.bos_token_id], 1.0, 0.95)
    assert obs[p == 0].sum() == 0  # nothing outside the nucleus
    assert chi2_pvalue(obs, p) > 1e-3
    # the check has power: the same samples reject T=0.6, or no top-p
    assert chi2_pvalue(obs, exact_distribution(peaked, [tok.bos_token_id], 0.6, 0.95)) < 1e-6
    assert obs[exact_distribution(peaked, [tok.bos_token_id], 1.0, 0.8) == 0].sum() > 0


def test_hf_contextual_left_padding(peaked, tmp_path):
    """CS prompts of different lengths share a left-padded batch: every row's first-token
    distribution (processed log-probs) equals the unpadded prompt's."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(peaked)
    task = make_task_dir(tmp_path / "task", n_docs=6, vocab=len(tok))
    settings = SamplingSettings(temperature=0.6, top_p=0.95, max_tokens=1, seed=0)
    job = contextual_job(peaked, tmp_path / "cs.jsonl", task, None, settings, tokenizer=tok, logprobs=-1)
    assert len({len(p) for p in job.prompts}) > 1
    run_generation(peaked, [job], engine="hf", hf_batch_size=6, dtype="float32")
    for rec, prompt in zip([json.loads(line) for line in open(tmp_path / "cs.jsonl")], job.prompts):
        assert rec["prompt_token_ids"] == prompt and rec["kind"] == "contextual"
        p = exact_distribution(peaked, prompt, 0.6, 0.95)
        lp = np.full(len(tok), -np.inf)
        for t, v in rec["logprobs"][0].items():
            lp[int(t)] = v
        assert np.array_equal(np.isfinite(lp), p > 0)
        np.testing.assert_allclose(np.exp(lp), p, atol=1e-5)


def test_generate_cli_hf(tiny_hf_model, tmp_path):
    task = make_task_dir(tmp_path / "task", n_docs=20)
    out = tmp_path / "cfs.jsonl"
    args = [
        "cfs",
        "generate",
        str(tiny_hf_model),
        "--out",
        str(out),
        "-n",
        "50%",
        "--task-dir",
        str(task),
        "--engine",
        "hf",
        "--max-tokens",
        "6",
        "--seed",
        "2",
    ]
    r = CliRunner().invoke(main, args)
    assert r.exit_code == 0, r.output
    recs = [json.loads(line) for line in open(out)]
    assert len(recs) == 10 and "10 samples" in r.output
    r = CliRunner().invoke(
        main,
        [
            "cfs",
            "generate",
            str(tiny_hf_model),
            "--out",
            str(tmp_path / "cs.jsonl"),
            "-n",
            "5",
            "--contextual",
            "--engine",
            "hf",
            "--max-tokens",
            "4",
        ],
    )
    assert r.exit_code == 1 and "--task-dir" in r.output


def test_prepare_method_end_to_end(tiny_hf_model, tmp_path):
    """What the sweep calls: sample the base model, mix, and reuse the samples on the next call."""
    from olmo_sam.cfs.method import prepare_method
    from olmo_sam.finetune.data import read_meta

    task = make_task_dir(tmp_path / "task", n_docs=20)
    kw = dict(engine="hf", max_tokens=8, epochs=2, seq_len=16, global_batch_size=2)
    for method in ("cfs", "cs"):
        out = prepare_method(method, tiny_hf_model, task, tmp_path / "work", ratio=0.5, **kw)
        meta = read_meta(out)
        steps = 2 * ((read_meta(task).splits["train"]["tokens"] // 16) // 2)
        assert meta.source["method"] == method and meta.source["train_steps"] == steps
        assert meta.splits["train"]["tokens"] == steps * 2 * 16
        assert meta.source["pool_size"] == 10
    samples = tmp_path / "work" / "cfs-T1-n10.jsonl"
    stamp = samples.stat().st_mtime_ns
    out = prepare_method("cfs", tiny_hf_model, task, tmp_path / "work", ratio=0.5, lam=1.0, **kw)
    assert samples.stat().st_mtime_ns == stamp  # reused, not resampled
    assert read_meta(out).source["copies_per_pass"] == 2


def test_generate_never_replaces_a_file_it_did_not_write(tiny_hf_model, tmp_path):
    """`cfs generate H --out H/model.safetensors --overwrite` deleted the model it was about to
    read, then failed with a traceback; a task's train.npy as --out went the same way."""
    model = tmp_path / "model"
    shutil.copytree(tiny_hf_model, model)
    weights = {p.name: p.read_bytes() for p in model.iterdir() if p.is_file()}
    task = make_task_dir(tmp_path / "task", n_docs=20)
    base = ["cfs", "generate", str(model), "-n", "4", "--engine", "hf", "--max-tokens", "3"]
    r = CliRunner().invoke(main, [*base, "--out", str(model / "model.safetensors"), "--overwrite"])
    assert r.exit_code == 1 and "is inside the model directory" in r.output and "Traceback" not in r.output
    r = CliRunner().invoke(main, [*base, "--out", str(model / "samples.jsonl")])
    assert r.exit_code == 1 and "is inside the model directory" in r.output
    assert {p.name: p.read_bytes() for p in model.iterdir() if p.is_file()} == weights
    train = sorted(task.glob("train*"))[0]
    before = train.read_bytes()
    r = CliRunner().invoke(main, [*base, "--out", str(train), "--overwrite"])
    assert r.exit_code == 1 and "is not an output of 'cfs generate'" in r.output and "never replaced" in r.output
    assert train.read_bytes() == before
    ok = CliRunner().invoke(main, [*base, "--out", str(tmp_path / "s.jsonl")])  # its own output: replaced on ask
    assert ok.exit_code == 0, ok.output
    assert (
        CliRunner().invoke(main, [*base, "--out", str(tmp_path / "s.jsonl"), "--seed", "9", "--overwrite"]).exit_code
        == 0
    )
