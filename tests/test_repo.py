"""The README promises two set-up commands; CI must run the test one verbatim."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def readme_commands():
    text = (ROOT / "README.md").read_text()
    setup = text.split("## Set-up", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```bash\n(.*?)\n```", setup, flags=re.S)


def test_readme_has_exactly_two_setup_commands():
    commands = readme_commands()
    assert len(commands) == 2, commands
    train, test = commands
    assert "run_train.sh" in train or "adahop.train" in train
    assert "pytest" in test


def test_ci_runs_the_readme_test_command():
    ci = (ROOT / ".ci" / "run").read_text()
    assert readme_commands()[1] in ci.splitlines()


def test_ci_lints_with_the_pre_commit_ruff_version():
    """CI runs ruff check and ruff format --check before the tests, with the ruff of .pre-commit-config.yaml."""
    ci = (ROOT / ".ci" / "run").read_text()
    pinned = re.search(r"ruff==([\d.]+)", ci)
    hook = re.search(r"ruff-pre-commit\s+rev: v([\d.]+)", (ROOT / ".pre-commit-config.yaml").read_text())
    assert pinned and hook and pinned.group(1) == hook.group(1)
    assert ci.index("ruff check .") < ci.index("ruff format --check .") < ci.index("python -m pytest")


def test_paths_named_in_readme_and_docs_exist():
    """A config, script or doc named in the README or docs/ exists (renames must update the docs)."""
    files = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    missing = []
    for f in files:
        for path in set(re.findall(r"\b((?:configs|scripts|docs)/[\w./-]+\.(?:toml|py|sh|md|png))\b", f.read_text())):
            if not (ROOT / path).exists():
                missing.append(f"{f.name}: {path}")
    assert not missing, missing
