"""adahop's training data: embedded corpus, tokenizer and torchtitan dataset registration.

Importing this package is cheap: torchtitan and `datasets` are only imported when a
function that needs them is called.

    from adahop.data import register_datasets, default_assets_path
    register_datasets()            # adds "adahop_text", "adahop_text_val", ...
    default_assets_path()          # tokenizer folder for model.hf_assets_path

See docs/data.md.
"""

from adahop.data.datasets import (
    ASSETS_DIR,
    TOKENIZER_DIR,
    TRAIN_DATASET,
    TRAIN_FILE,
    VALIDATION_DATASET,
    VALIDATION_FILE,
    default_assets_path,
    load_split,
    load_text_dataset,
    register_datasets,
    register_local_dataset,
    validation_sources,
)

__all__ = [
    "ASSETS_DIR",
    "TOKENIZER_DIR",
    "TRAIN_DATASET",
    "TRAIN_FILE",
    "VALIDATION_DATASET",
    "VALIDATION_FILE",
    "default_assets_path",
    "load_split",
    "load_text_dataset",
    "register_datasets",
    "register_local_dataset",
    "validation_sources",
]
