"""adahop's tokenizer as torchtitan loads it: its special tokens and the check of its files.

torchtitan 0.2.2's HuggingFaceTokenizer reads `<folder>/tokenizer.json` and takes BOS/EOS
from `<folder>/tokenizer_config.json` ("bos_token" / "eos_token"); the folder is given as
`model.hf_assets_path` (the shipped one: adahop/data/assets/tokenizer). The same two files also
load with transformers' PreTrainedTokenizerFast, so checkpoints stay usable outside torchtitan.

Training it is corpus building, outside the package: tools/corpus/bpe.py
(`python scripts/build_corpus.py --embedded --train-tokenizer` reproduces the shipped one).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

BOS_TOKEN = "<|begin_of_text|>"
EOS_TOKEN = "<|end_of_text|>"
#: ids 0 and 1 of the shipped tokenizer, in this order
SPECIAL_TOKENS = [BOS_TOKEN, EOS_TOKEN]
#: the files torchtitan's HuggingFaceTokenizer reads from model.hf_assets_path
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json")


def tokenizer_folder(path: str) -> str:
    """`path`, or, where a relative `path` does not exist from the working folder, the same path from the repository
    root if it exists there (so `adahop/data/assets/tokenizer` works from anywhere)."""
    if path and not os.path.isabs(path) and not os.path.exists(path):
        candidate = Path(__file__).resolve().parents[2] / path
        if candidate.exists():
            return str(candidate)
    return path


def tokenizer_file_problem(folder: str | Path) -> tuple[Path, str] | None:
    """(file, what is wrong with it) for the first tokenizer file in `folder` that is empty or not
    UTF-8 JSON, or None. Checked before training: the tokenizers library's errors name no file."""
    for name in TOKENIZER_FILES:
        path = Path(folder) / name
        if not path.is_file():
            continue
        data = path.read_bytes()
        if not data.strip():
            return path, "the file is empty"
        try:
            json.loads(data.decode("utf-8"))
        except UnicodeDecodeError as e:
            return path, f"binary data, not UTF-8 JSON (byte {e.start})"
        except ValueError as e:
            return path, f"not valid JSON ({e})"
    return None
