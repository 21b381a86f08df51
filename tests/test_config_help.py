"""`python -m adahop.train --help` documents every adahop key with its docstring (not upstream's MXFP8 text), and
docs/config.md lists the same keys with the same defaults."""

from __future__ import annotations

import dataclasses
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from adahop import config

ROOT = Path(__file__).resolve().parents[1]
TABLE = "layer_transform_config"


def our_keys() -> dict[str, tuple[object, str]]:
    """Dotted key -> (default, docstring) for every leaf of adahop.config's dataclasses; the pair-key table's
    entries as keys of their own (tyro gives each one a flag)."""
    keys = {}

    def walk(cls, prefix: str):
        docs = config._field_docstrings(cls)
        default = cls()
        for f in dataclasses.fields(cls):
            key, value = f"{prefix}{f.name}", getattr(default, f.name)
            if dataclasses.is_dataclass(f.type):
                walk(f.type, key + ".")
            elif f.name == TABLE:
                keys.update({f"{key}.{k}": (mode, "") for k, mode in value.items()})
            else:
                keys[key] = (value, docs.get(f.name))

    walk(config.MXLinear, "quantize.linear.mx.")
    return keys


def test_every_field_has_a_docstring_and_it_is_the_help_text():
    for cls in (
        config.Calibration,
        config.Kernels,
        config.MXLinear,
        config.QuantizedLinear,
        config.Quantize,
        config.JobConfig,
    ):
        docs = config._field_docstrings(cls)
        for f in dataclasses.fields(cls):
            assert docs.get(f.name), f"{cls.__name__}.{f.name} has no docstring"
            assert f.metadata.get("help") == docs[f.name], f"{cls.__name__}.{f.name}: help is not its docstring"


@pytest.fixture(scope="module")
def help_text() -> str:
    env = {**os.environ, "COLUMNS": "80"}  # one column of boxes: each key's text in one piece
    r = subprocess.run(
        [sys.executable, "-m", "adahop.train", "--help"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300
    )
    assert r.returncode == 0, r.stderr[-2000:]
    return r.stdout


def flat(text: str) -> str:
    return " ".join(text.replace("│", " ").split())


def help_section(help_text: str, title: str) -> str:
    start = help_text.index(f"─ {title} options ")
    end = help_text.find("╭─", start)
    return help_text[start : end if end > 0 else None]


def help_entry(help_text: str, key: str) -> tuple[str, str]:
    """(help text, default text) that --help gives the flag of `key`."""
    flag = "--" + key.replace("_", "-")
    text = flat(help_text)
    m = re.search(re.escape(flag) + r"(?:[ ,]\S*)*? (.*?)\(default: (.*?)\)(?= --|$| ╰| ╭)", text)
    assert m, f"{flag} is not in --help"
    return m.group(1), m.group(2)


def help_default(value) -> str:
    """How tyro writes a default in --help."""
    if isinstance(value, str):
        return value or "''"
    if isinstance(value, list):
        return " ".join(value)
    return str(value)


def docs_defaults() -> dict[str, object]:
    """Dotted key -> default as docs/config.md's tables (and the pair-key table's TOML block) give it."""
    from adahop.config_types import tomllib

    text = (ROOT / "docs" / "config.md").read_text()
    out = {}
    for m in re.finditer(r"^#+ `\[([\w.]+)\]`[^\n]*\n(.*?)(?=^#)", text, flags=re.S | re.M):
        section, body = m.groups()
        if section.endswith(TABLE):
            block = re.search(r"```toml\n(.*?)```", body, flags=re.S).group(1)
            out.update({f"{section}.{k}": v for k, v in tomllib.loads(block).items()})
            continue
        for key, cell in re.findall(r"^\| `(\w+)` \| ([^|]+) \|", body, flags=re.M):
            cell = cell.strip().strip("`")
            out[f"{section}.{key}"] = None if cell == "unset" else tomllib.loads(f"v = {cell}")["v"]
    return out


def test_help_and_docs_give_every_key_its_text_and_default(help_text):
    documented = docs_defaults()
    keys = our_keys()
    assert set(keys) == set(documented), set(keys) ^ set(documented)
    for key, (default, doc) in keys.items():
        text, shown = help_entry(help_text, key)
        assert shown == help_default(default), (key, shown, default)
        assert documented[key] == default, (key, documented[key], default)
        if doc:
            assert " ".join(doc.split()) in text, (key, text)


def test_help_shows_no_upstream_mxfp8_text_for_our_section(help_text):
    section = flat(help_section(help_text, "quantize.linear.mx"))
    for upstream in ("mxfp8_cublas", "divisible by 16", "Temp work around", "applying mxfp8 training"):
        assert upstream not in section, upstream
    assert "outlier-extraction modes" in section  # outlier_k's own text
    table = flat(help_section(help_text, "quantize.linear.mx.calibration.layer-transform-config"))
    assert "Pair key" in table and "--quantize.linear.mx.calibration.layer-transform-config.col-col" in table
