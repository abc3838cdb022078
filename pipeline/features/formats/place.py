"""Putting a finished output of any format where the user asked for it, and clearing a
half-written one: the last step of ``extract_features convert`` and of an extraction into a
format written through a TSV (:mod:`pipeline.extract.staged`)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from pipeline.features.formats.registry import FormatSpec
from weights.files import fsync_directory, fsync_file


def move_into_place(tmp: Path, out: Path, spec: FormatSpec) -> None:
    """Move the written output ``tmp`` (companions first) over ``out``. An old folder is
    moved aside beside ``tmp`` first (``NAME.replaced``: no output name can be it, as the
    output itself is ``tmp``'s name) and removed with ``tmp``'s work folder. Every file
    reaches the disk before its rename, so ``out`` is the old output or the whole new one.

    The manifest beside ``out`` is the caller's: it is left as it is, so a kill before the
    caller writes the new one leaves an output this tool still owns (the work folder,
    which the caller removes last, says the move may be incomplete)."""
    for companion in spec.companions(tmp):
        target = out.with_name(companion.name)
        if companion.exists():
            fsync_file(companion)
            os.replace(companion, target)
        else:
            target.unlink(missing_ok=True)  # a stale table of an overwritten output
    if spec.folder:
        for item in tmp.rglob("*"):
            if item.is_file():
                fsync_file(item)
        if out.exists():
            stale = tmp.with_name(tmp.name + ".replaced")
            shutil.rmtree(stale, ignore_errors=True)  # left by a kill during an earlier move
            os.replace(out, stale)
    else:
        fsync_file(tmp)
    os.replace(tmp, out)
    fsync_directory(out.parent)


def remove_output(path: Path, spec: FormatSpec) -> None:
    """Remove a (partial) output at ``path`` and its companions, file or folder."""
    for item in (path, *spec.companions(path)):
        if item.is_dir() and not item.is_symlink():
            shutil.rmtree(item)
        else:
            item.unlink(missing_ok=True)
