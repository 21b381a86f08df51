"""tools/corpus/build.py: the command line's arguments, default source sets and attributions; the
scripts/build_corpus.py launcher runs from any folder."""

import subprocess
import sys
from pathlib import Path

import pytest

from adahop.data import ASSETS_DIR
from tools.corpus import build
from tools.corpus.sources import SOURCES

REPO = Path(__file__).resolve().parents[3]


def test_build_corpus_args():
    bc = build
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


COPYLEFT = ("GPL", "GFDL", "BY-SA", "LGPL", "MPL")


def test_default_sources_are_permissive_and_copyleft_is_opt_in():
    bc = build
    full = bc.parse_args(["--out", "/tmp/x"]).sources
    embedded = bc.parse_args(["--embedded"]).sources
    # --embedded rebuilds exactly the shipped corpus's four sources
    assert embedded == ["gutenberg", "sotu", "python_docs", "wikipedia"]
    assert set(embedded) < set(full) and len(full) >= 20
    assert "linux_docs" not in full and not SOURCES["linux_docs"].default
    assert bc.parse_args(["--out", "/tmp/x", "--sources", "+linux_docs"]).sources == (full + ["linux_docs"])
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


def test_launcher_help_from_another_folder(tmp_path):
    out = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "build_corpus.py"), "--help"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "--embedded" in out and "--train-tokenizer" in out
