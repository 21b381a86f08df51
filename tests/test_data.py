"""The runtime data package: embedded corpus, tokenizer, torchtitan dataset registration; it holds no corpus
builder (tools/corpus, tested in tools/corpus/tests).

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
    for p in (
        TRAIN_FILE,
        VALIDATION_FILE,
        ASSETS_DIR / "SOURCES.md",
        ASSETS_DIR / "stats.json",
        Path(default_assets_path()) / "tokenizer.json",
        Path(default_assets_path()) / "tokenizer_config.json",
    ):
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


@pytest.mark.parametrize(
    "text",
    [
        "It is a truth universally acknowledged, that a single man in possession of a good "
        "fortune, must be in want of a wife.",
        "In 1790, the President addressed Congress: “Fellow-Citizens of the Senate…” — 42%!",
        "def f(x):\n    return x ** 2  # café, naïve, 東京, 😀\n\n\ttabs and  double  spaces ",
        "",
    ],
)
def test_tokenizer_round_trips(tokenizer, text):
    ids = tokenizer.encode(text, add_bos=False, add_eos=False)
    assert all(0 <= i < VOCAB_SIZE for i in ids)
    assert tokenizer.decode(ids) == text


def test_tokenizer_compresses_english(tokenizer):
    text = (
        "The Congress has before it many questions of great importance to the welfare of "
        "the people, and I trust that they will receive the careful attention they deserve."
    )
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


# ------------------------------------------------------------ no corpus builder in the package

BUILDER_MODULES = ("text", "sources", "corpus", "assemble", "bpe", "build")


def test_runtime_package_has_no_corpus_builder():
    """The importable adahop (the editable install's finder maps it to adahop/) has only the runtime data
    modules; the builder is tools/corpus, which the package list (pyproject: adahop*) leaves out."""
    import adahop.data

    for name in BUILDER_MODULES:
        assert importlib.util.find_spec(f"adahop.data.{name}") is None, name
    modules = {p.stem for p in Path(adahop.data.__file__).parent.glob("*.py")}
    assert modules == {"__init__", "datasets", "tokenizer"}
    from adahop.data import tokenizer

    assert not hasattr(tokenizer, "train_bpe_tokenizer")


def test_package_list_leaves_tools_out():
    from setuptools import find_packages

    from adahop.config_types import tomllib

    include = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]["find"]["include"]
    packages = find_packages(str(REPO), include=include)
    assert "adahop.data" in packages and not [p for p in packages if not p.startswith("adahop")]
    assert (REPO / "tools" / "corpus" / "build.py").is_file()  # the builder lives on, outside the package
