"""Data and tokenizer files are checked before training: an empty or binary file is refused naming it
(the `datasets` / `tokenizers` errors name none: SchemaInferenceError, UnicodeDecodeError)."""

from __future__ import annotations

import gzip
import shutil

import pytest

import adahop.titan  # noqa: F401  (dataset registrations)
from adahop.config import ConfigError, validate_job_config
from adahop.data import TOKENIZER_DIR, load_text_dataset

BINARY = bytes(range(256)) * 4


def parse(args: list[str]):
    from torchtitan.config import ConfigManager

    return ConfigManager().parse_args(
        [
            "--job.custom_config_module",
            "adahop.config",
            "--training.dataset",
            "adahop_text",
            "--model.hf_assets_path",
            str(TOKENIZER_DIR),
            *args,
        ]
    )


def write(path, data: bytes):
    if path.suffix == ".gz":
        data = gzip.compress(data)
    path.write_bytes(data)
    return path


BAD_FILES = [
    ("empty.txt", b"", "the file is empty"),
    ("blank.jsonl", b"\n  \n", "no text"),
    ("binary.txt", BINARY, "binary data, not UTF-8 text"),
    ("latin1.txt", "caf\xe9 au lait\n".encode("latin-1"), "not UTF-8 text"),
    ("empty.jsonl.gz", b"", "no text"),
    ("binary.jsonl.gz", BINARY, "binary data"),
    ("notes.docx", b"hello", "unsupported data file type"),
]


@pytest.mark.parametrize("name, data, problem", BAD_FILES, ids=[b[0] for b in BAD_FILES])
def test_bad_training_file_refused_naming_it(tmp_path, name, data, problem):
    path = write(tmp_path / name, data)
    with pytest.raises(ConfigError) as e:
        validate_job_config(parse(["--training.dataset_path", str(path)]), check_model=False)
    assert e.value.key == "training.dataset_path" and str(path) in str(e.value) and problem in str(e.value)
    with pytest.raises(ValueError, match=problem) as e:  # the loader refuses it too (eval, own loaders)
        load_text_dataset(str(path))
    assert str(path) in str(e.value)


def test_bad_validation_file_refused_only_when_validating(tmp_path):
    empty = write(tmp_path / "val.jsonl", b"")
    config = parse(["--validation.dataset", "adahop_text_val", "--validation.dataset_path", str(empty)])
    validate_job_config(config, check_model=False)  # validation off: the file is not read
    config.validation.enable = True
    with pytest.raises(ConfigError) as e:
        validate_job_config(config, check_model=False)
    assert e.value.key == "validation.dataset_path" and str(empty) in str(e.value)


def test_bad_file_in_a_dataset_folder_refused(tmp_path):
    (tmp_path / "data").mkdir()
    write(tmp_path / "data" / "a.jsonl", b'{"text": "fine"}\n')
    write(tmp_path / "data" / "b.jsonl", b"")
    (tmp_path / "data" / "README.md").write_text("")  # not a data file: not read
    with pytest.raises(ConfigError) as e:
        validate_job_config(parse(["--training.dataset_path", str(tmp_path / "data")]), check_model=False)
    assert "b.jsonl" in str(e.value) and "the file is empty" in str(e.value)


def test_unregistered_dataset_name_refused(tmp_path):
    with pytest.raises(ConfigError) as e:
        validate_job_config(parse(["--training.dataset", "adahop_txt"]), check_model=False)
    assert (
        e.value.key == "training.dataset"
        and "adahop_text_val" in str(e.value)
        and "register_local_dataset" in str(e.value)
    )
    validate_job_config(parse(["--training.dataset", "AdaHOP_Text"]), check_model=False)  # as torchtitan: any case


def test_good_files_pass(tmp_path):
    for name, data in [("t.txt", "ünïcode text\n".encode()), ("t.jsonl.gz", b'{"text": "a"}\n')]:
        validate_job_config(parse(["--training.dataset_path", str(write(tmp_path / name, data))]), check_model=False)
    validate_job_config(parse([]), check_model=False)  # the embedded split and tokenizer


@pytest.mark.parametrize(
    "name, data, problem",
    [
        ("tokenizer.json", b"", "the file is empty"),
        ("tokenizer.json", BINARY, "binary data"),
        ("tokenizer.json", b'{"model": ', "not valid JSON"),
        ("tokenizer_config.json", b"  ", "the file is empty"),
    ],
)
def test_bad_tokenizer_file_refused_naming_it(tmp_path, name, data, problem):
    folder = tmp_path / "tok"
    shutil.copytree(TOKENIZER_DIR, folder)
    write(folder / name, data)
    with pytest.raises(ConfigError) as e:
        validate_job_config(parse(["--model.hf_assets_path", str(folder)]), check_model=False)
    msg = str(e.value)
    assert e.value.key == "model.hf_assets_path" and str(folder / name) in msg and problem in msg, msg


def test_tools_take_the_dataset_name_in_any_case_as_training_does():
    """eval and sweep check a checkpoint's dataset with the trainer's own check (torchtitan lower-cases the name):
    a run trained with "AdaHOP_Text" is not refused by the tools that read it."""
    from adahop.config import ConfigError, check_dataset

    job = parse(["--validation.dataset", "AdaHOP_Text_Val"])
    check_dataset(job, "validation")
    job.validation.dataset = "no_such_corpus"
    with pytest.raises(ConfigError, match=r"validation\.dataset = 'no_such_corpus'; allowed: a registered dataset"):
        check_dataset(job, "validation")
