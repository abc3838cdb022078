"""Putting a finished output of any format where the user asked for it, and clearing a
half-written one: the last step of ``extract_features convert`` and of an extraction into a
format written through a TSV (:mod:`pipeline.extract.staged`)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from pipeline.features.formats.registry import FormatSpec
from weights.files import fsync_directory, fsync_file


def move_into_place(tmp: Path, out: Path, spec: FormatSpec, stale: Path) -> None:
    """Move the written output ``tmp`` (companions first) over ``out``; an old folder goes to
    ``stale`` (inside the work folder, removed with it). Every file reaches the disk before
    its rename, so ``out`` is the old output or the whole new one."""
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
