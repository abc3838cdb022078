"""Exit codes of every command (``extract_features``, ``answer``, ...) and the usage error.

A command picks its exit code in one place, from these names; the README's tables list them.
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_SOME_FAILED = 1
EXIT_USAGE = 2
EXIT_ALL_FAILED = 3
EXIT_ERROR = 4
EXIT_INTERRUPTED = 130

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


class UsageError(ValueError):
    """A problem with the command line or its inputs, found before any image is processed
    (exit :data:`EXIT_USAGE`)."""
