"""How every console script runs: exit codes, the usage error, and :func:`run_command`.

In the base layer so that every command uses it, ``python -m weights`` too (``weights``
imports no other package of the project). A :class:`Command` is a parser and a function of
the parsed flags that returns the exit code. :func:`run_command` is the one place where a
:class:`UsageError` becomes exit 2, Ctrl-C exit 130, a full disk and any other exception
exit 4 (the traceback under ``-v``), each printed as ``prog: message``. Also what every
command's parser shares: ``-v``, :func:`configure_logging` and the count types of argparse.
"""

from __future__ import annotations

import argparse
import errno
import logging
import sys
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass

EXIT_OK = 0
EXIT_SOME_FAILED = 1
EXIT_USAGE = 2
EXIT_ALL_FAILED = 3
EXIT_ERROR = 4
EXIT_INTERRUPTED = 130


class UsageError(ValueError):
    """A problem with the command line or its inputs, found before any work is done (exit
    :data:`EXIT_USAGE`): bad flags or files, models that cannot be loaded."""


@dataclass(frozen=True)
class Command:
    """One command or sub-command.

    Attributes:
        name: what follows the program name (``merge``), or ``""`` for the default command.
        summary: one line for the program's help.
        build_parser: its argument parser.
        run: parsed flags -> exit code; raises :class:`UsageError` for a usage problem.
        disk_full_remedy: what to do after the disk filled up (ENOSPC, exit 4).
    """

    name: str
    summary: str
    build_parser: Callable[[], argparse.ArgumentParser]
    run: Callable[[argparse.Namespace], int]
    disk_full_remedy: str = "free some space and run the same command again"


def run_command(command: Command, argv: Sequence[str]) -> int:
    """Parse ``argv`` with ``command``'s parser and run it; returns the exit code.

    ``argparse`` exits 2 itself on unknown flags, as the exit-code tables say.
    """
    parser = command.build_parser()
    args = argparse.Namespace()
    try:
        args = parser.parse_args(list(argv))
        return command.run(args)
    except UsageError as error:
        print(f"{parser.prog}: error: {error}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        # Outside the extraction loop (which records it itself): nothing half done to report.
        print(f"{parser.prog}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except OSError as error:
        if error.errno != errno.ENOSPC:
            report_unexpected(parser, args, error)
            return EXIT_ERROR
        print(
            f"{parser.prog}: error: the disk is full ({error}); {command.disk_full_remedy}.",
            file=sys.stderr,
        )
        return EXIT_ERROR
    except Exception as error:
        report_unexpected(parser, args, error)
        return EXIT_ERROR


def report_unexpected(
    parser: argparse.ArgumentParser, args: argparse.Namespace, error: Exception
) -> None:
    """Report an unexpected error (exit 4): its type and message, and the traceback with -v."""
    print(f"{parser.prog}: unexpected error: {type(error).__name__}: {error}", file=sys.stderr)
    if getattr(args, "verbose", False):
        traceback.print_exception(error)
    else:
        print("(run with -v for the traceback)", file=sys.stderr)


def add_verbose_flag(parser: argparse.ArgumentParser) -> None:
    """``-v/--verbose``: the traceback of an unexpected error (and more logging where the
    command has it)."""
    parser.add_argument(
        "-v", "--verbose", action="store_true", help="show tracebacks of unexpected errors"
    )


def configure_logging(
    *, quiet: bool, verbose: bool, names: tuple[str, ...] = ("pipeline",)
) -> None:
    """Messages of the ``names`` loggers (and their children) to stderr, plain: warnings only
    with ``quiet``, debug with ``verbose``. Installed once per process (by name), so a process
    running several commands logs each message once. ``encoder`` says what a model load left
    unused in one line, and shows transformers' own report at debug."""
    level = logging.WARNING if quiet else logging.DEBUG if verbose else logging.INFO
    for name in names:
        logger = logging.getLogger(name)
        logger.setLevel(level)
        if not any(handler.get_name() == "lxmert-pipeline" for handler in logger.handlers):
            handler = logging.StreamHandler(sys.stderr)
            handler.set_name("lxmert-pipeline")
            handler.setFormatter(logging.Formatter("%(message)s"))
            logger.addHandler(handler)
            logger.propagate = False


def positive_int(text: str) -> int:
    """An ``argparse`` type: an int >= 1."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def non_negative_int(text: str) -> int:
    """An ``argparse`` type: an int >= 0."""
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value
