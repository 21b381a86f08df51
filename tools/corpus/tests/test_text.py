"""tools/corpus/text.py: cleaning, document splitting, de-duplication and the markup converters, on
small hand-written inputs."""

from tools.corpus.text import (
    ParagraphDeduper,
    clean_gutenberg,
    clean_rst,
    exact_dedup,
    html_to_text,
    markdown_to_text,
    normalize_whitespace,
    pod_inline,
    pod_to_text,
    rst_to_prose,
    split_documents,
)

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
    assert (
        "torrents, except at occasional intervals, when it was checked by a violent gust "
        "of wind which swept up the streets. He was very tired."
    ) in out
    # verse keeps its line break
    assert out.endswith("Tyger Tyger, burning bright,\nIn the forests of the night;")


def test_clean_gutenberg_without_markers_is_body_preserving():
    body = "CHAPTER I\n\nShort line.\nAnother short line."
    assert clean_gutenberg(body) == body


def test_normalize_whitespace():
    assert normalize_whitespace("a\r\nb\t\tc\u00a0 d  \n\n\n\n e\u200b") == "a\nb c d\n\n e"
    assert normalize_whitespace(">>>     x = 1", collapse_inner=False) == ">>>     x = 1"


def test_clean_rst_keeps_prose_and_code_drops_markup():
    rst = (
        ".. _tut-intro:\n\n**********\nIntroduction\n**********\n\n"
        ".. index::\n   single: foo\n   single: bar\n\n"
        "Some *prose* with :func:`len`. Example::\n\n   >>>     x = 1\n\n"
        ".. note::\n\n   Keep this note.\n\n.. a comment\n   continued\n\nEnd."
    )
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


# ------------------------------------------------------------------------------ HTML

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
    out = html_to_text(PAGE, drop_classes={"navheader", "sphinxsidebar", "footer", "headerlink"})
    assert out.split("\n\n") == [
        "Transactions",
        "A transaction bundles several steps into a single, all-or-nothing operation — see BEGIN & COMMIT.",
        "first item",
        "second\nline",
        "Nested part.",
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
    html = (
        '<div class="docblock"><p>One.</p></div><p>outside</p><br/><hr />'
        '<div class="docblock"><p>Two<br/>lines.</p><div>inner</div></div>'
    )
    out = html_to_text(html, main=lambda t, a: "docblock" in (a.get("class") or ""))
    assert out == "One.\n\nTwo\nlines.\n\ninner"


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
        "the guide, cv=5 or NumPy."
    )
    assert "Let's load the iris data set:" in paras
    assert "We can now sample a training set." in paras
    assert "Keep this note." in paras
    assert "cross_val_score(estimator, X)" in paras  # a signature stays, as a line
    assert "Evaluate a score by cross-validation." in paras
    assert "* first item continues here\n* second item" in paras
    assert paras[-1] == "param cv: Determines the splitting strategy."
    for gone in (">>>", "load_iris", "0.96", "dropped", "currentmodule", ":class:", "xval", "=====", "[1]", "https"):
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
        "NAME",
        "perlfilter - Source Filters",
        "DESCRIPTION",
        'This article is about source filters, see "open" in perlfunc and the manual; '
        "$a <=> $b compares, <tag> is escaped, non breaking and here.",
        "First point",
        "Explained here.",
    ]
    assert pod_inline("B<bold I<nested>> C<<< a >> b >>> E<eacute> E<0x41>") == ("bold nested a >> b é A")


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
        "The node:fs module enables interacting with the file system, see POSIX and fs.open().",
        "* path {string} the path\n* mode {integer}",
    ]
