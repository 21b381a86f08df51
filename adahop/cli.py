"""How the command-line tools end on bad input: one line on stderr and exit code 2, no traceback.

Each CLI's ``main(argv)`` is ``run_cli(_main, argv)``. An error raised for user input (a config value,
a checkpoint, a command-line argument or input file) prints as ``error: <message>`` and gives exit code
2; any other exception is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Callable, Sequence


class UsageError(ValueError):
    """A bad command-line argument or input file; the message names it, what is allowed and the fix."""


class ArgumentParser(argparse.ArgumentParser):
    """argparse, with a bad argument raised as a UsageError: one line under run_cli, not the usage block."""

    def error(self, message: str):
        raise UsageError(f"{message} (see {self.prog} --help)")


def user_errors() -> tuple[type[BaseException], ...]:
    """The exception classes that mean bad user input, in every adahop CLI."""
    # imported here: checkpoint_io imports this module (UsageError)
    from .checkpoint_io import CheckpointError
    from .config import ConfigError

    return (ConfigError, CheckpointError, UsageError)


# Environment switches adahop does not read, each with what to use instead: a run that sets one would otherwise
# run without what it asked for. Every adahop command refuses them (run_cli, the trainer, the scripts).
REMOVED_SWITCHES = {
    "ADAHOP_TILE_B": "--quantize.linear.mx.kernels.tile_b none|forward|weights|all (1 was all)",
    "ADAHOP_SYNC_EVERY_GEMM": "--quantize.linear.mx.kernels.exactness_check per_gemm",
    "ADAHOP_DEFICIENT_REPORT": "--quantize.linear.mx.kernels.deficient_report <prefix>",
    "ADAHOP_DUAL_QUANT": "nothing (removed: measured no faster); unset it",
    "ADAHOP_SIDE_STREAM": "nothing (removed: measured no faster); unset it",
    "ADAHOP_FORCE_REFERENCE": "--quantize.linear.mx.kernels.reference_only (a flag: no value)",
}


def check_removed_switches(environ=os.environ) -> None:
    """Refuse an environment switch of REMOVED_SWITCHES, naming what to use instead. Raises ConfigError."""
    from .config import ConfigError

    for name, instead in REMOVED_SWITCHES.items():
        if name in environ:
            raise ConfigError(
                f"{name} (environment)", environ[name], "unset: this switch no longer exists", f"use {instead}"
            )


def run_cli(
    main_fn: Callable[[list[str] | None], int | None],
    argv: list[str] | None = None,
    errors: Sequence[type[BaseException]] = (),
) -> int:
    """``main_fn(argv)``'s exit code; a user-input error (``user_errors()`` or one of ``errors``) is
    printed as one line and gives 2."""
    try:
        check_removed_switches()
        return main_fn(argv) or 0
    except (*user_errors(), *errors) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


def exit_on_removed_switches() -> None:
    """For the scripts that do not run under run_cli: refuse a removed switch in one line, exit code 2."""
    code = run_cli(lambda _argv: 0)
    if code:
        sys.exit(code)
