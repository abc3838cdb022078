"""Output ownership, "is this ours to replace": the rule every writer of the project applies
before it writes over anything that already exists.

- A **folder output** (``lxmert-finetune train --out``) is ours when it is new, empty, or
  holds one of the writer's marker files (the record or checkpoint an earlier run of the same
  writer left there); never when it is one of the inputs (the starting model).
- A **file output** (``lxmert-finetune evaluate --predictions/--report``) is never an input,
  nor inside an input folder, nor another output of the same run; its folder must exist; an
  existing file is replaced only when the writer recognises it as its own.

Checked before any work, so a refusal costs nothing. The other half of ownership, one writer
at a time (an OS lock beside an extraction output), is :mod:`weights.lock`. Standard library
only: ``encoder`` and ``pipeline`` both use it. Every refusal is a :class:`NotOursError`, a
:class:`~weights.command.UsageError` (exit 2) whose message names the flag and the remedy.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path

from weights.command import UsageError


class NotOursError(UsageError):
    """An output that is not this writer's to replace (or is one of its inputs)."""


def same_file(a: Path, b: Path) -> bool:
    """One file under two names: equal resolved paths (links followed), or one inode (hard
    links, bind mounts)."""
    if a.resolve() == b.resolve():
        return True
    try:
        return os.path.samefile(a, b)
    except OSError:  # one of them does not exist (yet)
        return False


def check_folder_is_ours(
    folder: Path,
    *,
    markers: Iterable[str | Path],
    flag: str,
    inputs: Sequence[tuple[str, Path]] = (),
) -> None:
    """Refuse a folder output that is one of ``inputs`` or that holds files but none of the
    writer's ``markers`` (paths relative to ``folder``).

    Args:
        folder: the output folder; it may not exist yet.
        markers: files only this writer leaves in its folders; the first names the writer in
            the message.
        flag: the option that gave ``folder`` (``--out``), for the message.
        inputs: (what, path) of what the writer reads, e.g. ``("the starting model (--from)",
            model_dir)``.

    Raises:
        NotOursError: the folder is an input, or another's.
    """
    for what, source in inputs:
        if source.exists() and folder.exists() and same_file(folder, source):
            raise NotOursError(f"{flag} {folder} is {what}; choose another {flag}")
    if not folder.is_dir() or not any(folder.iterdir()):
        return
    names = [Path(marker) for marker in markers]
    if not any((folder / name).exists() for name in names):
        raise NotOursError(
            f"{flag} {folder} is a folder this command did not write (no {names[0]}); "
            "choose a new or empty folder"
        )


def check_file_outputs(
    outputs: Mapping[str, Path | None],
    inputs: Sequence[tuple[str, Path]],
    *,
    is_ours: Callable[[str, Path], bool],
    writer: str,
    kinds: Mapping[str, str],
) -> None:
    """Refuse an output that is an input (or inside an input folder), two outputs that are
    one file, an output in a missing folder, and an existing output the writer did not write.

    Args:
        outputs: flag -> file; None when not asked for.
        inputs: (flag, path) of every file and folder the writer reads.
        is_ours: (flag, existing file) -> whether the writer wrote it (it reads the file).
        writer: the writer as the message names it (``lxmert-finetune evaluate``).
        kinds: flag -> what the file is (``report``), for the message.

    Raises:
        NotOursError: naming the flag, the file and what to do.
    """
    given = [(flag, path) for flag, path in outputs.items() if path is not None]
    for number, (flag, path) in enumerate(given):
        if path.is_dir():
            raise NotOursError(f"{flag} {path} is a directory; give a file")
        if not path.parent.is_dir():
            raise NotOursError(f"{flag} {path}: the folder {path.parent} does not exist")
        for in_flag, source in inputs:
            inside = source.is_dir() and path.resolve().is_relative_to(source.resolve())
            if inside or same_file(path, source):
                raise NotOursError(
                    f"{flag} {path} is also an input ({in_flag} {source}); {writer} never "
                    "writes over what it reads: choose another file"
                )
        for other_flag, other in given[:number]:
            if same_file(path, other):
                raise NotOursError(
                    f"{flag} {path} and {other_flag} {other} are one file; give each its own"
                )
        if path.exists() and not is_ours(flag, path):
            raise NotOursError(
                f"{flag} {path} exists and is not a {kinds[flag]} of {writer}; "
                "remove it or choose another name"
            )
