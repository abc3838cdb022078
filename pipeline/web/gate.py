"""What a request to the page may name: files the server stored, models it offered, numbers
within the page's sliders.

The page is a server: anyone who reaches it sends any JSON. So every value a request carries
is checked here before it reaches a reader or a loader, and a refused file gets one message
that says nothing about the path (whether it exists, what it is). No gradio here: the app
passes gradio's payloads in, and tests call these functions directly.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from pipeline.web.service import DemoError

#: The one answer to a file the server did not store or list; it never names the path.
NOT_UPLOADED = "Not an uploaded file: upload the image (or pick an example) and try again."
#: The marker gradio puts in a file payload; gradio checks a payload's path against its
#: upload folder only when the marker is there, so a payload without it is refused here.
FILE_DATA_META = {"_type": "gradio.FileData"}


@dataclass(frozen=True)
class Uploads:
    """Where files a request names may be.

    Attributes:
        folder: gradio's upload cache of this server, resolved (links followed); the files
            gradio stored there (uploads, and its copies of the examples) may be read.
        examples: the example images listed at start, resolved, allowed by exact path.
    """

    folder: Path
    examples: frozenset[Path]

    @classmethod
    def of(cls, *, folder: str | os.PathLike[str], examples: Iterable[str] = ()) -> Uploads:
        """The gate for ``folder`` and ``examples``, both resolved now."""
        return cls(
            folder=Path(os.path.realpath(folder)),
            examples=frozenset(Path(os.path.realpath(path)) for path in examples),
        )

    def checked(self, path: object) -> Path:
        """The resolved path of ``path`` when it is a regular file this server may read.

        Raises:
            DemoError: :data:`NOT_UPLOADED`, the same for every refusal.
        """
        if not isinstance(path, str) or not path or "\0" in path:
            raise DemoError(NOT_UPLOADED)
        real = Path(os.path.realpath(path))
        stored = real != self.folder and real.is_relative_to(self.folder)
        if not (stored or real in self.examples) or not real.is_file():
            raise DemoError(NOT_UPLOADED)
        return real


def upload_of(payload: object, uploads: Uploads) -> tuple[Path | None, str]:
    """(checked local path, display name) of an image input as gradio passes it unprocessed.

    Only a gradio file dict (``path``, ``meta`` = :data:`FILE_DATA_META`, ``orig_name``)
    whose path passes :meth:`Uploads.checked` is accepted; None means no image.

    Raises:
        DemoError: :data:`NOT_UPLOADED` for plain strings, dicts without the marker, and
            paths the server did not store.
    """
    if payload is None:
        return None, "image"
    if not isinstance(payload, dict) or payload.get("meta") != FILE_DATA_META:
        raise DemoError(NOT_UPLOADED)
    path = uploads.checked(payload.get("path"))
    name = payload.get("orig_name")
    shown = name if isinstance(name, str) and name else path.name
    # A lone surrogate in the name would break the JSON answer, not the request: replace it.
    return path, shown.encode("utf-8", "replace").decode("utf-8")


def offered(value: object, choices: Sequence[str], *, what: str) -> str:
    """``value`` when it is one of ``choices`` (the page's dropdown), else a page error that
    names the choices."""
    if isinstance(value, str) and value in choices:
        return value
    allowed = ", ".join(choices) or "none"
    raise DemoError(f"{what} must be one of the page's choices: {allowed}.")


def bounded(value: object, *, low: int, high: int, what: str) -> int:
    """``value`` as an integer when it is a whole number in [``low``, ``high``] (a slider's
    range, step 1), else a page error that gives the range."""
    number = value if isinstance(value, (int, float)) and not isinstance(value, bool) else None
    if number is None or not math.isfinite(number) or not float(number).is_integer():
        raise DemoError(f"{what} must be a whole number from {low} to {high}.")
    if not low <= number <= high:
        raise DemoError(f"{what} must be a whole number from {low} to {high}.")
    return int(number)
