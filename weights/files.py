"""Replacing files atomically: the one way this project writes a file that may already exist.

A reader (or a crash) sees the old file or the new one, never half of either: the new content
goes to a temporary file in the same folder (same filesystem, so the rename is atomic), which is
fsynced, renamed over the target, and the folder is fsynced so the rename itself is durable.
Standard library only: every package may import this module.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
from collections.abc import Iterator
from pathlib import Path


def fsync_directory(directory: str | os.PathLike[str]) -> None:
    """Make a rename or a new directory entry in ``directory`` durable (a no-op where the
    platform cannot open a folder for fsync)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def fsync_file(path: str | os.PathLike[str]) -> None:
    """Flush ``path``'s content to disk (for files written by a library such as h5py)."""
    with open(path, "rb+") as stream:
        os.fsync(stream.fileno())


#: The pid in a temporary name has at most this many digits (Linux' pid_max is 4194304).
_PID_DIGITS = 7


def temporary_name(name: str) -> str:
    """The temporary file name :func:`atomic_path` writes ``name`` under, beside it:
    ``.NAME.PID.8HEX.tmp`` (hidden; this process's id; 8 random hex digits)."""
    return f".{name}.{os.getpid()}.{secrets.token_hex(4)}.tmp"


def is_temporary_name(candidate: str, name: str) -> bool:
    """Whether ``candidate`` is a :func:`temporary_name` of ``name`` (of any process): only
    such files, left by a killed writer, are ours to remove."""
    pattern = rf"\.{re.escape(name)}\.\d{{1,{_PID_DIGITS}}}\.[0-9a-f]{{8}}\.tmp"
    return re.fullmatch(pattern, candidate) is not None


def longest_temporary_name(name: str) -> str:
    """The longest :func:`temporary_name` of ``name`` (for checking a folder's name limit)."""
    return f".{name}.{'9' * _PID_DIGITS}.{'f' * 8}.tmp"


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it replaces ``path`` atomically.

    For writers that need a file name (h5py, safetensors). The temporary file is fsynced before
    the rename and removed if the block raises, so a failure leaves ``path`` as it was and no
    temporary file behind.
    """
    path = Path(path)
    tmp = path.with_name(temporary_name(path.name))
    # os.open with 0o666 honours the umask, so the file gets the permissions a plain open()
    # would give it (mkstemp would make it private to the user).
    os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
    mode = tmp.stat().st_mode & 0o777
    try:
        yield tmp
        # Some writers (safetensors) recreate the file privately; give it the mode it was made
        # with.
        os.chmod(tmp, mode)
        fsync_file(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    fsync_directory(path.parent)


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes | memoryview) -> Path:
    """Replace ``path`` with ``data`` (bytes, or any buffer as a memoryview) atomically (see
    the module docstring); returns ``path``."""
    path = Path(path)
    with atomic_path(path) as tmp, open(tmp, "wb") as stream:
        stream.write(data)
    return path


def atomic_write_text(path: str | os.PathLike[str], text: str) -> Path:
    """Replace ``path`` with ``text`` (UTF-8) atomically; returns ``path``."""
    return atomic_write_bytes(path, text.encode("utf-8"))
