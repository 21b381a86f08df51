"""Register adahop's datasets with torchtitan's dataset registry.

torchtitan 0.2.2 looks datasets up by name in
`torchtitan.hf_datasets.text_datasets.DATASETS` (a dict of DatasetConfig(path, loader,
sample_processor)); `training.dataset` picks the entry, `training.dataset_path` (if set)
replaces its `path`, and then `loader(path)` gives a Hugging Face dataset whose samples
`sample_processor` turns into text. We extend that dict instead of touching torchtitan.

Entries added by register_datasets():

  adahop_text               embedded training split (adahop/data/assets/train.jsonl.gz)
  adahop_text_val           embedded validation split (validation.jsonl.gz, all sources, read in an
                            order that interleaves them: interleave_by_source)
  adahop_text_val_<source>  validation split restricted to one source
                            (e.g. adahop_text_val_wikipedia), for per-source loss

All use the same generic loader, so `training.dataset_path` may point any of them at
another file, folder or Hugging Face hub dataset whose samples have a "text" field:
see load_text_dataset() and docs/data.md.
"""

from __future__ import annotations

import bz2
import codecs
import gzip
import json
import lzma
from functools import partial
from pathlib import Path
from typing import Any, Callable

ASSETS_DIR = Path(__file__).resolve().parent / "assets"
TRAIN_FILE = ASSETS_DIR / "train.jsonl.gz"
VALIDATION_FILE = ASSETS_DIR / "validation.jsonl.gz"
TOKENIZER_DIR = ASSETS_DIR / "tokenizer"
STATS_FILE = ASSETS_DIR / "stats.json"

TRAIN_DATASET = "adahop_text"
VALIDATION_DATASET = "adahop_text_val"

# Used when stats.json is missing; the builder writes the true list there.
_DEFAULT_VAL_SOURCES = ("gutenberg", "sotu", "python_docs", "wikipedia")

_LOCAL_FORMATS = {  # file suffix -> datasets builder name
    ".json": "json",
    ".jsonl": "json",
    ".parquet": "parquet",
    ".txt": "text",
    ".csv": "csv",
    ".arrow": "arrow",
}
_BINARY_FORMATS = ("parquet", "arrow")


def default_assets_path() -> str:
    """Folder holding the tokenizer (tokenizer.json + tokenizer_config.json).

    Pass it as torchtitan's `model.hf_assets_path`. In the repository it is
    `adahop/data/assets/tokenizer`; this function resolves it wherever adahop is installed.
    """
    return str(TOKENIZER_DIR)


def _format_of(path: Path) -> str | None:
    suffixes = [s for s in path.suffixes if s not in (".gz", ".bz2", ".xz", ".zst")]
    return _LOCAL_FORMATS.get(suffixes[-1]) if suffixes else None


def _head(path: Path, size: int = 1 << 16) -> bytes | None:
    """The first `size` bytes of the file's (decompressed) content; None for a compression we cannot read."""
    opener = {".gz": gzip.open, ".bz2": bz2.open, ".xz": lzma.open, ".zst": None}.get(path.suffix, open)
    if opener is None:
        return None
    with opener(path, "rb") as f:
        return f.read(size)


def data_file_problem(path: Path) -> str | None:
    """Why the local data file `path` cannot give samples (unsupported type, empty, not UTF-8 text),
    or None. Checked before loading: `datasets` reports these cases without naming the file."""
    fmt = _format_of(path)
    if fmt is None:
        return f"unsupported data file type (use one of {sorted(_LOCAL_FORMATS)})"
    if path.stat().st_size == 0:
        return "the file is empty"
    if fmt in _BINARY_FORMATS:
        return None
    try:
        head = _head(path)
    except (OSError, EOFError, lzma.LZMAError) as e:
        return f"cannot be read as {''.join(path.suffixes)} ({e})"
    if head is None:
        return None
    if not head.strip():
        return "the file holds no text (empty or only whitespace)"
    if b"\0" in head:
        return f"binary data, not UTF-8 text (a NUL byte at {head.index(bytes(1))})"
    try:  # incremental: the head may end inside a character
        codecs.getincrementaldecoder("utf-8")().decode(head, final=False)
    except UnicodeDecodeError as e:
        return f"binary data, not UTF-8 text (byte {e.start}: {e.reason})"
    return None


def registered_datasets() -> list[str]:
    """The names torchtitan's `training.dataset` / `validation.dataset` may take (lower case)."""
    return list(_registry())


def local_data_files(dataset: str, dataset_path: str | None) -> list[Path]:
    """The local data files the registered dataset `dataset` (its path replaced by `dataset_path`)
    reads; [] for a hub dataset."""
    p = Path(dataset_path or _registry()[dataset.lower()].path).expanduser()
    if p.is_file():
        return [p]
    if p.is_dir():
        return [
            f
            for f in sorted(p.rglob("*"))
            if f.is_file() and _format_of(f) and not any(part.startswith(".") for part in f.relative_to(p).parts)
        ]
    return []


def load_text_dataset(path: str, split: str = "train", streaming: bool | None = None, name: str | None = None):
    """Load a local file/folder or a Hugging Face hub dataset as a `datasets` dataset.

    - a local file (.jsonl/.json/.parquet/.txt/.csv, optionally .gz): loaded with the
      matching builder ("json", "parquet", ...); its rows form the "train" split
      (a .txt file gives one sample per line, in the "text" field);
    - a local folder: handed to `load_dataset(folder)` (builder inferred from the files);
    - anything else: a hub name such as "allenai/c4" (`name` is the config, e.g. "en"),
      streamed by default so nothing large is downloaded up front.

    Small local data is loaded map-style (torchtitan then checkpoints the position as a
    sample index); hub data streams (the position is the stream's own state).
    """
    from datasets import load_dataset

    p = Path(path).expanduser()
    if p.is_file():
        problem = data_file_problem(p)
        if problem:
            raise ValueError(f"data file {p}: {problem}")
        return load_dataset(_format_of(p), data_files=str(p.resolve()), split="train", streaming=bool(streaming))
    if p.is_dir():
        return load_dataset(str(p.resolve()), name=name, split=split, streaming=bool(streaming))
    return load_dataset(path, name=name, split=split, streaming=True if streaming is None else streaming)


def interleave_by_source(sources: list[str], sizes: list[int]) -> list[int]:
    """The indices of documents (their source and size) in an order where each source's running share of the size
    read so far stays close to its share of the whole: the next document is the next one of the source furthest
    behind its share (ties: the larger share). Each source keeps its own order."""
    total = sum(sizes) or 1
    queues: dict[str, list[int]] = {}
    for i, source in enumerate(sources):
        queues.setdefault(source, []).append(i)
    share = {s: sum(sizes[i] for i in q) / total for s, q in queues.items()}
    nexts = {s: 0 for s in queues}
    taken = {s: 0 for s in queues}
    done, order = 0, []
    while len(order) < len(sources):
        s = max((s for s in queues if nexts[s] < len(queues[s])), key=lambda s: (share[s] * done - taken[s], share[s]))
        i = queues[s][nexts[s]]
        nexts[s] += 1
        taken[s] += sizes[i]
        done += sizes[i]
        order.append(i)
    return order


def _load_interleaved(path: str):
    """A validation file whose samples have a "source" field, in interleave_by_source order (by characters), so
    that the first `validation.steps` batches hold every source (the file itself is shuffled by document, and
    its many short Wikipedia leads fill any short prefix); other data as it is."""
    ds = load_text_dataset(path)
    if "source" not in (getattr(ds, "column_names", None) or []) or not hasattr(ds, "select"):
        return ds  # streamed, or without sources
    return ds.select(interleave_by_source(ds["source"], [len(t) for t in ds["text"]]))


def _load_source_subset(path: str, source: str):
    """The validation file restricted to one "source" value."""
    ds = load_text_dataset(path)
    return ds.filter(lambda s: s["source"] == source)


def _text_field(field: str, sample: dict[str, Any]) -> str:
    return sample[field]


def _registry() -> dict:
    from torchtitan.hf_datasets.text_datasets import DATASETS

    return DATASETS


def validation_sources() -> list[str]:
    """Sources present in the embedded validation split (read from stats.json)."""
    try:
        stats = json.loads(STATS_FILE.read_text())
        return sorted(stats["splits"]["validation"]["by_source"])
    except (OSError, KeyError, ValueError):
        return list(_DEFAULT_VAL_SOURCES)


def register_local_dataset(
    name: str,
    path: str,
    text_field: str = "text",
    split: str = "train",
    hf_name: str | None = None,
    streaming: bool | None = None,
    sample_processor: Callable[[dict], str] | None = None,
) -> str:
    """Add (or replace) a torchtitan dataset entry for any file, folder or hub dataset.

    `name` is lower-cased because torchtitan lower-cases `training.dataset` before the
    lookup; the registered name is returned. `text_field` names the column holding the
    text (or pass `sample_processor` for anything more involved). `hf_name`/`split`/
    `streaming` go to load_text_dataset(). Call it before the trainer builds its data
    loader (e.g. in the module that registers adahop's model / train spec).
    """
    from torchtitan.hf_datasets import DatasetConfig

    key = name.lower()
    _registry()[key] = DatasetConfig(
        path=str(path),
        loader=partial(load_text_dataset, split=split, streaming=streaming, name=hf_name),
        sample_processor=sample_processor or partial(_text_field, text_field),
    )
    return key


def register_datasets() -> list[str]:
    """Register the embedded adahop datasets with torchtitan (idempotent).

    Returns the registered names. Safe to call many times (entries are simply
    overwritten with identical ones) and from every rank.
    """
    from torchtitan.hf_datasets import DatasetConfig

    registry = _registry()
    text = partial(_text_field, "text")
    registry[TRAIN_DATASET] = DatasetConfig(str(TRAIN_FILE), load_text_dataset, text)
    registry[VALIDATION_DATASET] = DatasetConfig(str(VALIDATION_FILE), _load_interleaved, text)
    names = [TRAIN_DATASET, VALIDATION_DATASET]
    for source in validation_sources():
        key = f"{VALIDATION_DATASET}_{source}"
        registry[key] = DatasetConfig(str(VALIDATION_FILE), partial(_load_source_subset, source=source), text)
        names.append(key)
    return names


def load_split(split: str = "validation"):
    """The embedded split ("train" or "validation") as a map-style `datasets.Dataset`
    with "text", "source" and "id" columns (for evaluation tools, e.g. per-source loss)."""
    files = {"train": TRAIN_FILE, "validation": VALIDATION_FILE}
    return load_text_dataset(str(files[split]))
