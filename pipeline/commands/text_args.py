"""Text given on the command line that must be valid UTF-8 (questions, statements).

On POSIX, Python decodes argv with ``surrogateescape``: a byte that is not UTF-8 (``\\xff``)
becomes a lone surrogate (``\\udcff``), which no tokenizer accepts. Commands check their text
arguments with :func:`first_non_utf8` before any model loads, so that such text is a usage
error (exit 2) that names the argument, not a tokenizer's ``TypeError`` (exit 4).
"""

from __future__ import annotations

from collections.abc import Sequence


def first_non_utf8(texts: Sequence[str]) -> int | None:
    """1-based position of the first text that cannot be encoded as UTF-8 (it holds a lone
    surrogate), or None when every one can."""
    for position, text in enumerate(texts, start=1):
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            return position
    return None


def non_utf8_message(texts: Sequence[str], *, what: str) -> str | None:
    """The usage error for the first of ``texts`` that is not valid UTF-8, naming it by
    position (``what`` 2 of 3) and showing it escaped; None when all are valid."""
    position = first_non_utf8(texts)
    if position is None:
        return None
    return (
        f"{what} {position} of {len(texts)} is not valid UTF-8 ({_shown(texts[position - 1])}); "
        "give the text in UTF-8"
    )


def _shown(text: str) -> str:
    """``text`` printable, its undecodable bytes as ``\\xff`` (as they came in argv)."""
    try:
        raw = text.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:  # a surrogate that is not an escaped byte
        return text.encode("utf-8", "backslashreplace").decode("utf-8")
    return raw.decode("utf-8", "backslashreplace")
