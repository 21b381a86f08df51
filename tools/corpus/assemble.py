"""Corpus assembly: raw source documents -> de-duplicated, size-capped train/validation.

Pure functions on RawDoc objects (tools/corpus/build.py feeds them), so the pipeline is tested with
synthetic sources and without network.
"""

from __future__ import annotations

import gzip
import io
import json
import random
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

from .sources import RawDoc
from .text import ParagraphDeduper, split_documents, text_hash

# Share of the validation budget for sources that are entirely held out (never trained
# on, e.g. Wikipedia); the rest goes to held-out documents of the training sources.
HELD_OUT_SOURCE_SHARE = 0.5


@dataclass
class Doc:
    text: str
    source: str
    id: str

    def to_json(self) -> str:
        return json.dumps({"text": self.text, "source": self.source, "id": self.id}, ensure_ascii=False)


def water_fill(available: dict[str, int], budget: int | None) -> dict[str, int]:
    """Split `budget` characters equally among sources, giving what a small source cannot
    use to the others. None means no cap: every source gives all it has."""
    if budget is None:
        return dict(available)
    alloc: dict[str, int] = {}
    left = dict(available)
    remaining = budget
    while left:
        share = remaining // len(left)
        small = {s: a for s, a in left.items() if a <= share}
        if not small:
            alloc.update({s: share for s in left})
            break
        for s, a in small.items():
            alloc[s] = a
            remaining -= a
            del left[s]
    return alloc


def _sample(docs: list[Doc], budget: int, rng: random.Random) -> list[Doc]:
    """Random documents of one source until their characters reach the budget."""
    order = list(docs)
    rng.shuffle(order)
    out, total = [], 0
    for d in order:
        if total >= budget:
            break
        out.append(d)
        total += len(d.text)
    return out


def assemble(
    raw_docs: Iterable[RawDoc],
    max_train_chars: int | None,
    max_val_chars: int | None,
    target_chars: int = 6000,
    seed: int = 0,
    progress: bool = False,
) -> tuple[list[Doc], list[Doc], dict]:
    """Cut, de-duplicate, cap and shuffle raw documents into (train, validation, info).

    Held-out documents are processed first so that the paragraph de-duplicator removes
    from *training* anything that also appears in validation (never the reverse).
    Training sources share the train budget equally (water-filling); validation gives
    HELD_OUT_SOURCE_SHARE of its budget to sources with no training documents.
    """
    raw = sorted(raw_docs, key=lambda r: not r.held_out)  # stable: held-out first
    if progress:
        from tqdm import tqdm

        raw = tqdm(raw, desc="clean+dedup", unit="doc")
    dedup = ParagraphDeduper()
    seen_exact: set[str] = set()
    exact_dropped = 0
    pools: dict[bool, dict[str, list[Doc]]] = {True: defaultdict(list), False: defaultdict(list)}
    for r in raw:
        for i, chunk in enumerate(split_documents(r.text, target_chars)):
            kept = dedup(chunk)
            if kept is None:
                continue
            h = text_hash(kept)
            if h in seen_exact:
                exact_dropped += 1
                continue
            seen_exact.add(h)
            pools[r.held_out][r.source].append(Doc(kept, r.source, f"{r.doc_id}#{i}"))

    # One generator per split: the validation split then does not depend on the train
    # cap, so a full build and the embedded build share the same validation file.
    rng_train, rng_val = random.Random(f"{seed}/train"), random.Random(f"{seed}/val")
    train_pool, val_pool = pools[False], pools[True]

    def chars(docs: Sequence[Doc]) -> int:
        return sum(len(d.text) for d in docs)

    train_alloc = water_fill({s: chars(d) for s, d in train_pool.items()}, max_train_chars)
    train = [d for s in sorted(train_pool) for d in _sample(train_pool[s], train_alloc[s], rng_train)]

    # Validation: sources never trained on vs held-out parts of training sources.
    unseen = {s: chars(d) for s, d in val_pool.items() if s not in train_pool}
    seen = {s: chars(d) for s, d in val_pool.items() if s in train_pool}
    if max_val_chars is None:
        val_alloc = {**unseen, **seen}
    else:
        unseen_budget = (
            int(max_val_chars * HELD_OUT_SOURCE_SHARE) if (unseen and seen) else (max_val_chars if unseen else 0)
        )
        val_alloc = {**water_fill(unseen, unseen_budget), **water_fill(seen, max_val_chars - unseen_budget)}
    val = [d for s in sorted(val_pool) for d in _sample(val_pool[s], val_alloc[s], rng_val)]

    # Shuffled so that any prefix (torchtitan reads files in order; validation may stop
    # after a fixed number of steps) is a representative mix of sources.
    rng_train.shuffle(train)
    rng_val.shuffle(val)
    info = {
        "paragraphs_dropped_near_dup": dedup.dropped_paragraphs,
        "documents_dropped_near_dup": dedup.dropped_documents,
        "documents_dropped_exact_dup": exact_dropped,
        "available_chars": {
            "train": {s: chars(d) for s, d in sorted(train_pool.items())},
            "validation": {s: chars(d) for s, d in sorted(val_pool.items())},
        },
    }
    return train, val, info


def write_jsonl_gz(docs: Iterable[Doc], path: str | Path) -> None:
    """Write documents as gzip'd JSON lines; mtime=0 makes the bytes reproducible."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", mtime=0, compresslevel=9, filename="") as gz:
        with io.TextIOWrapper(gz, encoding="utf-8", newline="\n") as f:
            for d in docs:
                f.write(d.to_json() + "\n")


def read_jsonl_gz(path: str | Path) -> list[Doc]:
    with gzip.open(path, "rt", encoding="utf-8") as f:
        return [Doc(**json.loads(line)) for line in f if line.strip()]


def split_stats(docs: Sequence[Doc], tokenizer=None) -> dict:
    """Counts per split and per source; tokens only if a `tokenizers.Tokenizer` is given."""

    def count(ds: Sequence[Doc]) -> dict:
        out = {
            "docs": len(ds),
            "chars": sum(len(d.text) for d in ds),
            "utf8_bytes": sum(len(d.text.encode("utf-8")) for d in ds),
        }
        if tokenizer is not None:
            # +2 per document: the BOS/EOS torchtitan adds around each document.
            enc = tokenizer.encode_batch([d.text for d in ds])
            out["tokens"] = sum(len(e.ids) + 2 for e in enc)
        return out

    by_source: dict[str, list[Doc]] = defaultdict(list)
    for d in docs:
        by_source[d.source].append(d)
    return {**count(docs), "by_source": {s: count(v) for s, v in sorted(by_source.items())}}
