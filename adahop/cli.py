"""How the command-line tools end on bad input: one line on stderr and exit code 2, no traceback.

Each CLI's ``main(argv)`` is ``run_cli(_main, argv)``. An error raised for user input (a config value,
a checkpoint, a command-line argument or input file) prints as ``error: <message>`` and gives exit code
2; any other exception is a bug and keeps its traceback.
"""

from __future__ import annotations

import sys
from typing import Callable, Sequence


class UsageError(ValueError):
    """A bad command-line argument or input file; the message names it, what is allowed and the fix."""


def user_errors() -> tuple[type[BaseException], ...]:
    """The exception classes that mean bad user input, in every adahop CLI."""
    # imported here: checkpoint_io imports this module (UsageError)
    from .checkpoint_io import CheckpointError
    from .config import ConfigError

    return (ConfigError, CheckpointError, UsageError)


def run_cli(
    main_fn: Callable[[list[str] | None], int | None],
    argv: list[str] | None = None,
    errors: Sequence[type[BaseException]] = (),
) -> int:
    """``main_fn(argv)``'s exit code; a user-input error (``user_errors()`` or one of ``errors``) is
    printed as one line and gives 2."""
    try:
        return main_fn(argv) or 0
    except (*user_errors(), *errors) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
