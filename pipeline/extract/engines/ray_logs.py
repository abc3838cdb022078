"""Ray's own output goes to a file beside the run's manifest (``OUT.ray.log``), not the terminal.

Ray writes to the driver's terminal by three roads: its Python loggers (the token-
authentication warning, cluster start), which write to ``sys.stderr`` when they emit; the
lines of the workers' stdout and stderr it forwards to the driver (prefixed ``(pid=...)``),
printed on ``sys.stdout``/``sys.stderr`` when they arrive; and its C++ core worker, which
writes its errors (``[... E ...] core_worker.cc:...``) straight to file descriptor 2, out of
Python's reach. For the Ray session of a run (:func:`ray_output_to`), descriptor 2 and
``sys.stdout`` point at the log file, so all three land there, while this command's own output
(its logger's messages and the progress bar) goes to the terminal through a copy of the
original descriptor 2 (:attr:`RayLog.terminal`).

Joining a cluster by address, Ray's word on token authentication still shows on the terminal
too: there it decides whether the driver gets in (``RAY_AUTH_MODE``, ``RAY_AUTH_TOKEN``).
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from tqdm import tqdm

#: The logger of Ray's token-authentication notes (``ray._private.authentication.*``).
AUTH_LOGGER = "ray._private.authentication"
#: The loggers whose messages are this command's own (``weights.command.configure_logging``).
OWN_LOGGERS = ("pipeline",)


@dataclass(frozen=True)
class RayLog:
    """Where a run's Ray session writes.

    Attributes:
        path: the log file, ``OUT.ray.log`` (``pipeline.features.manifest.ray_log_path``).
        terminal: where this command's own output goes meanwhile (the original stderr).
    """

    path: Path
    terminal: TextIO


@contextlib.contextmanager
def ray_output_to(path: Path, *, joined: bool) -> Iterator[RayLog]:
    """Send Ray's output to ``path`` (appended, one header line per run) for the block, the
    command's own to the terminal; everything is put back on exit, also on errors and Ctrl-C.

    Args:
        path: the log file.
        joined: a cluster joined by address: Ray's token-authentication notes also show on
            the terminal (prefixed ``ray:``).
    """
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    with open(path, "a", encoding="utf-8", buffering=1) as log:
        stamp = time.strftime("%Y-%m-%d %H:%M:%S")
        log.write(f"--- Ray session of {' '.join(sys.argv)} (pid {os.getpid()}, {stamp}) ---\n")
        with contextlib.ExitStack() as stack:
            terminal = stack.enter_context(_descriptor_2_to(log))
            stack.enter_context(_own_loggers_to(terminal))
            stack.enter_context(_auth_notes_to(terminal if joined else None))
            stack.enter_context(_stdout_to(log))
            stack.enter_context(_plain_worker_prefixes())
            yield RayLog(path=path, terminal=terminal)


@contextlib.contextmanager
def progress_logging(terminal: TextIO) -> Iterator[None]:
    """While a tqdm bar is on ``terminal``, this command's messages there are written above
    it (``tqdm.write``) rather than through it (``tqdm.contrib.logging.logging_redirect_tqdm``
    only knows handlers on ``sys.stderr``)."""
    swapped: list[tuple[logging.Logger, logging.Handler, logging.Handler]] = []
    for name in OWN_LOGGERS:
        logger = logging.getLogger(name)
        for handler in list(logger.handlers):
            if isinstance(handler, logging.StreamHandler) and handler.stream is terminal:
                swapped.append((logger, handler, _TqdmHandler(handler, terminal)))
    for logger, handler, writer in swapped:
        logger.removeHandler(handler)
        logger.addHandler(writer)
    try:
        yield
    finally:
        for logger, handler, writer in swapped:
            logger.removeHandler(writer)
            logger.addHandler(handler)


class _TqdmHandler(logging.Handler):
    """``tqdm.write`` with the formatter, level and filters of the handler it stands for."""

    def __init__(self, original: logging.Handler, terminal: TextIO) -> None:
        super().__init__(original.level)
        self.setFormatter(original.formatter)
        for log_filter in original.filters:
            self.addFilter(log_filter)
        self.terminal = terminal

    def emit(self, record: logging.LogRecord) -> None:
        try:
            tqdm.write(self.format(record), file=self.terminal)
        except Exception:  # as logging.StreamHandler: a failed message never ends the run
            self.handleError(record)


def _writes_to_descriptor_2(stream: TextIO) -> bool:
    try:
        return stream.fileno() == 2
    except (AttributeError, OSError, ValueError, io.UnsupportedOperation):
        return False  # a stream of its own (a test's capture): it never meets Ray's fd 2


@contextlib.contextmanager
def _descriptor_2_to(log: TextIO) -> Iterator[TextIO]:
    """Point file descriptor 2 at ``log``; yields the terminal: a stream on a copy of the old
    descriptor 2, or ``sys.stderr`` itself when it does not write to descriptor 2."""
    if not _writes_to_descriptor_2(sys.stderr):
        saved = os.dup(2)
        os.dup2(log.fileno(), 2)
        try:
            yield sys.stderr
        finally:
            os.dup2(saved, 2)
            os.close(saved)
        return
    encoding = getattr(sys.stderr, "encoding", None) or "utf-8"
    terminal = os.fdopen(os.dup(2), "w", buffering=1, encoding=encoding, errors="backslashreplace")
    os.dup2(log.fileno(), 2)
    try:
        yield terminal
    finally:
        terminal.flush()
        os.dup2(terminal.fileno(), 2)
        terminal.close()


@contextlib.contextmanager
def _own_loggers_to(terminal: TextIO) -> Iterator[None]:
    """Handlers of this command's loggers that wrote to ``sys.stderr`` write to ``terminal``."""
    moved: list[tuple[logging.StreamHandler[TextIO], TextIO]] = []
    if terminal is not sys.stderr:
        for name in OWN_LOGGERS:
            for handler in logging.getLogger(name).handlers:
                if isinstance(handler, logging.StreamHandler) and handler.stream is sys.stderr:
                    moved.append((handler, handler.stream))
                    handler.setStream(terminal)
    try:
        yield
    finally:
        for handler, stream in moved:
            handler.setStream(stream)


@contextlib.contextmanager
def _auth_notes_to(terminal: TextIO | None) -> Iterator[None]:
    """Ray's token-authentication notes also on ``terminal`` (None: only in the log)."""
    if terminal is None:
        yield
        return
    handler = logging.StreamHandler(terminal)
    handler.setLevel(logging.WARNING)
    handler.setFormatter(logging.Formatter("ray: %(message)s"))
    logger = logging.getLogger(AUTH_LOGGER)
    logger.addHandler(handler)
    try:
        yield
    finally:
        logger.removeHandler(handler)


@contextlib.contextmanager
def _stdout_to(log: TextIO) -> Iterator[None]:
    """``sys.stdout`` (where Ray prints the workers' forwarded stdout) to ``log``."""
    saved, sys.stdout = sys.stdout, log
    try:
        yield
    finally:
        sys.stdout = saved


@contextlib.contextmanager
def _plain_worker_prefixes() -> Iterator[None]:
    """The ``(pid=...)`` prefixes of forwarded worker lines without colour codes (a file is
    read in an editor or with grep), unless the user chose ``RAY_COLOR_PREFIX`` (Ray reads it
    at every line)."""
    if "RAY_COLOR_PREFIX" in os.environ:
        yield
        return
    os.environ["RAY_COLOR_PREFIX"] = "0"
    try:
        yield
    finally:
        os.environ.pop("RAY_COLOR_PREFIX", None)
