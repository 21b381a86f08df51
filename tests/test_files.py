"""adahop.files: atomic writes that keep the old file on failure, and output folders that keep what they hold."""

from __future__ import annotations

import os

import pytest

from adahop.cli import UsageError
from adahop.files import _umask, atomic_dir_write, check_out_folder, write_text_atomic


def leftovers(folder) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


def test_write_text_atomic_replaces_and_takes_the_umask_mode(tmp_path):
    path = tmp_path / "report.json"
    path.write_text("old")
    old_mask = os.umask(0o027)
    try:
        assert _umask() == 0o027 and _umask() == 0o027  # reading it leaves it as it is
        write_text_atomic(path, "new")
    finally:
        os.umask(old_mask)
    assert path.read_text() == "new"
    assert os.stat(path).st_mode & 0o777 == 0o640  # what open() would give under that umask
    assert leftovers(tmp_path) == []


def test_write_text_atomic_keeps_the_old_file_when_writing_fails(tmp_path):
    path = tmp_path / "plan.json"
    path.write_text("the old plan")
    with pytest.raises(TypeError):
        write_text_atomic(path, 123)  # not text: the write fails
    assert path.read_text() == "the old plan" and leftovers(tmp_path) == []


def test_check_out_folder_refuses_what_it_would_damage(tmp_path):
    f = tmp_path / "a_file"
    f.write_text("x")
    with pytest.raises(UsageError, match="is a file, not a folder"):
        check_out_folder(f, overwrite=True, writes=["r.md"])
    ckpt = tmp_path / "step-10"
    ckpt.mkdir()
    (ckpt / ".metadata").write_text("")
    with pytest.raises(UsageError, match="DCP checkpoint folder"):
        check_out_folder(ckpt, overwrite=True, writes=["r.md"])
    busy = tmp_path / "busy"
    (busy / "r.md").mkdir(parents=True)
    with pytest.raises(UsageError, match=r"holds folder\(s\) \['r.md'\]"):
        check_out_folder(busy, overwrite=True, writes=["r.md"])
    full = tmp_path / "full"
    full.mkdir()
    (full / "mine.txt").write_text("keep")
    with pytest.raises(UsageError, match="is not empty .*--overwrite"):
        check_out_folder(full, overwrite=False, writes=["r.md"])
    assert check_out_folder(full, overwrite=True, writes=["r.md"]) == full.resolve()
    assert check_out_folder(tmp_path / "new", overwrite=False, writes=["r.md"]) == (tmp_path / "new").resolve()


def test_atomic_dir_write_keeps_other_entries_and_leaves_nothing_on_error(tmp_path):
    out = tmp_path / "out"
    with atomic_dir_write(out, writes=["r.md"]) as tmp:
        (tmp / "r.md").write_text("first")
    assert sorted(p.name for p in out.iterdir()) == ["r.md"]
    (out / "mine.txt").write_text("the user's")
    with atomic_dir_write(out, overwrite=True, writes=["r.md"]) as tmp:
        (tmp / "r.md").write_text("second")
    assert (out / "r.md").read_text() == "second" and (out / "mine.txt").read_text() == "the user's"
    with pytest.raises(RuntimeError), atomic_dir_write(out, overwrite=True, writes=["r.md"]) as tmp:
        (tmp / "r.md").write_text("third, never finished")
        raise RuntimeError("the tool failed")
    assert (out / "r.md").read_text() == "second" and leftovers(tmp_path) == []
