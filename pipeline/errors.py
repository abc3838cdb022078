"""Exit codes of every command (``extract_features``, ``answer``, ...) and the usage error.

The codes and :class:`UsageError` live in the base layer (:mod:`weights.command`, used by
``python -m weights`` too); this module names them for the pipeline and holds
``extract_features``'s table of their meanings, which the README lists.
"""

from __future__ import annotations

from weights.command import (
    EXIT_ALL_FAILED,
    EXIT_ERROR,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_SOME_FAILED,
    EXIT_USAGE,
    UsageError,
)

__all__ = [
    "EXIT_ALL_FAILED",
    "EXIT_CODES",
    "EXIT_ERROR",
    "EXIT_INTERRUPTED",
    "EXIT_OK",
    "EXIT_SOME_FAILED",
    "EXIT_USAGE",
    "UsageError",
]

#: What each exit status of ``extract_features`` means (printed by ``--help``).
EXIT_CODES: dict[int, str] = {
    EXIT_OK: "every selected image is in the output (written now or by an earlier run)",
    EXIT_SOME_FAILED: "some inputs failed (named with reasons in the summary and the "
    "manifest); every other image was written",
    EXIT_USAGE: "nothing was done: bad flags (also sizes, box counts or a device the model "
    "cannot use), no inputs, duplicate ids, an existing output without --resume/--overwrite, "
    "an output that is locked by another run, not ours, made with other settings, in a "
    "missing or read-only folder, or also an input, or a detector that cannot be loaded",
    EXIT_ALL_FAILED: "every selected input failed; no record was written",
    EXIT_ERROR: "unexpected error during the run (the output stays valid; --resume continues)",
    EXIT_INTERRUPTED: "interrupted (Ctrl-C); the output is valid, --resume finishes it",
}
