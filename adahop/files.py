"""Writing results without losing files: atomic writes, and output folders that keep what they hold.

A tool writes its files under temporary names made by `tempfile` (never a fixed `<name>.tmp` that could
be a user's file) and moves them into place with `os.replace`; it deletes nothing but its own
temporaries.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator, Sequence

from .cli import UsageError


def write_text_atomic(path: str | Path, text: str) -> None:
    """`path` holds `text` or is left as it was (the text goes to a temporary file beside it first)."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes it 0600; give it the mode a plain open() would
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def _umask() -> int:
    """The process's umask. Read from /proc where it is there: setting it to read it (os.umask) would leave other
    threads of the process creating files with a zero umask for that moment."""
    with contextlib.suppress(OSError, ValueError):
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    mask = os.umask(0)
    os.umask(mask)
    return mask


def check_out_folder(out: str | Path, overwrite: bool, writes: Sequence[str], flag: str = "--out") -> Path:
    """`out` resolved, or UsageError: `out` is a file, a DCP checkpoint folder, holds a folder where a file
    of `writes` goes, or is not empty while `overwrite` is off."""
    out = Path(out).resolve()
    if out.exists() and not out.is_dir():
        raise UsageError(f"{flag} {out} is a file, not a folder: give the path of a new or empty folder")
    if not out.is_dir():
        return out
    if (out / ".metadata").exists():
        raise UsageError(f"{flag} {out} is a DCP checkpoint folder: write the output to another folder")
    blocked = sorted(name for name in writes if (out / name).is_dir())
    if blocked:
        raise UsageError(
            f"{flag} {out} holds folder(s) {blocked} where files of this name would be written: give another folder"
        )
    present = sorted(p.name for p in out.iterdir())
    if present and not overwrite:
        raise UsageError(
            f"{flag} {out} is not empty ({len(present)} entries, e.g. {', '.join(present[:3])}): give a new or empty "
            f"folder, or pass --overwrite to replace only the files written here ({', '.join(writes)}) and keep "
            "every other entry"
        )
    return out


@contextlib.contextmanager
def atomic_dir_write(out: str | Path, overwrite: bool = False, writes: Sequence[str] = ()) -> Iterator[Path]:
    """Context: yields a fresh temporary folder beside `out` to write files into; on success they move to
    `out`. A new `out` appears whole (one rename); in an existing one (empty, or any with `overwrite`) each
    written file replaces its namesake atomically and every other entry stays. On error only the temporary
    folder is removed. `out` is checked first (check_out_folder, with `writes`: the file names to come)."""
    out = check_out_folder(out, overwrite, writes)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    try:
        yield tmp
        os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes it 0700; give it the mode a plain mkdir would
        if not out.exists():
            os.rename(tmp, out)
            return
        for f in sorted(tmp.iterdir()):
            os.replace(f, out / f.name)
        tmp.rmdir()
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
