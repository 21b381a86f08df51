"""tools/corpus/assemble.py: the split is honest (held-out text never trained on) and capped by source;
the shipped splits (adahop/data/assets) keep those promises."""

import gzip
import json

from adahop.data import TRAIN_FILE, VALIDATION_FILE
from tools.corpus.assemble import assemble, water_fill
from tools.corpus.sources import RawDoc
from tools.corpus.text import near_dup_key, text_hash


def _read(path):
    with gzip.open(path, "rt", encoding="utf-8") as f:
        return [json.loads(line) for line in f]


def test_water_fill():
    assert water_fill({"a": 10, "b": 100, "c": 100}, 110) == {"a": 10, "b": 50, "c": 50}
    assert water_fill({"a": 10, "b": 20}, None) == {"a": 10, "b": 20}
    assert water_fill({"a": 10, "b": 20}, 1000) == {"a": 10, "b": 20}


def test_assemble_keeps_held_out_separate_and_honest():
    shared = "This exact paragraph is quoted in both a held-out and a training document."
    raw = [
        RawDoc(
            "books",
            "b1",
            f"Training text one, long enough to be interesting.\n\n{shared}"
            "\n\nMore training text that stays in the corpus after de-duplication.",
            False,
        ),
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


def test_shipped_splits_share_no_document():
    train, val = _read(TRAIN_FILE), _read(VALIDATION_FILE)
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
