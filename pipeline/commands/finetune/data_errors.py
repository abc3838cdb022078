"""Faults of the user's feature files met while a command runs (a corrupt record, a file
changed under the run) are usage errors, exit 2, naming the file and line: never exit 4,
which is for faults of the machine or of the code."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

from pipeline.errors import UsageError

if TYPE_CHECKING:
    from pipeline.features.store import FeatureDataError

#: The class name as a worker's traceback text writes it.
_NAME = "FeatureDataError"


def data_error_text(error: FeatureDataError) -> str:
    """The error's own message. A DataLoader worker's error comes back with the worker's
    traceback in its text ("Caught FeatureDataError in DataLoader worker process 0 ...");
    its last line holds the original message."""
    text = str(error)
    if "Traceback" not in text:
        return text
    last = [line for line in text.splitlines() if line.strip()][-1]
    return last.split(f"{_NAME}: ", 1)[-1].strip()


@contextlib.contextmanager
def data_errors_are_usage(*, remedy: str | Callable[[], str]) -> Iterator[None]:
    """Turn a :class:`FeatureDataError` raised in the block into a :class:`UsageError` (exit
    2) that names the file and line and ends with ``remedy`` (called when the error comes,
    if a function: what to do may depend on what the run had done by then)."""
    from pipeline.features.store import (
        FeatureDataError,  # numpy, h5py, torch: only once work starts
    )

    try:
        yield
    except FeatureDataError as error:
        advice = remedy if isinstance(remedy, str) else remedy()
        raise UsageError(f"{data_error_text(error)}; {advice}") from None
