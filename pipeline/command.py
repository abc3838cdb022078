"""What the pipeline's commands share beyond :mod:`weights.command` (where :class:`Command`
and :func:`run_command`, the one place that turns errors into exit codes, live): logging and
the argparse types of counts."""

from __future__ import annotations

import argparse
import logging
import sys

from weights.command import Command, add_verbose_flag, report_unexpected, run_command

__all__ = [
    "Command",
    "add_verbose_flag",
    "configure_logging",
    "non_negative_int",
    "positive_int",
    "report_unexpected",
    "run_command",
]


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
