"""A cheap identity of a file: path, size, mtime and a sha256 of its first and last 64 KiB.

One function for every place that must notice a changed input without reading it whole: the
TSV index cache (:mod:`pipeline.features.index`) and the inputs a fine-tuning checkpoint records
(``lxmert-finetune train --resume``). Multi-GB feature stores are not hashed whole on every
open or resume; an edit that keeps size and mtime and touches neither end goes unnoticed here,
and the store's reads catch it (each record's id is checked against the index).
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import asdict, dataclass
from pathlib import Path

#: Bytes hashed at each end of a file.
EDGE_BYTES = 64 * 1024


@dataclass(frozen=True)
class Fingerprint:
    """What :func:`fingerprint` saw of one file.

    Attributes:
        path: the path as given (not resolved: a moved file with the same bytes differs).
        size: bytes.
        mtime_ns: ``st_mtime_ns``.
        edges_sha256: hex sha256 of the first :data:`EDGE_BYTES` and the last
            :data:`EDGE_BYTES` (the whole file when it is at most twice that).
    """

    path: str
    size: int
    mtime_ns: int
    edges_sha256: str

    def to_dict(self) -> dict[str, object]:
        """A JSON-ready copy (what a checkpoint stores)."""
        return asdict(self)

    def describe(self) -> str:
        """One line for an error message."""
        return (
            f"{self.path} ({self.size} bytes, mtime_ns {self.mtime_ns}, "
            f"edges sha256 {self.edges_sha256[:12]})"
        )


def edges_sha256(fd: int, size: int) -> str:
    """sha256 (hex) of the first and last :data:`EDGE_BYTES` of the open file ``fd``, read up
    to ``size`` (the size seen by the caller's ``stat``, so a growing file hashes the same
    bytes as the size says); the bytes in the middle of a small file are hashed once."""
    digest = hashlib.sha256()
    head = min(size, EDGE_BYTES)
    digest.update(os.pread(fd, head, 0))
    tail_start = max(head, size - EDGE_BYTES)
    digest.update(os.pread(fd, size - tail_start, tail_start))
    return digest.hexdigest()


def fingerprint(path: str | os.PathLike[str]) -> Fingerprint:
    """The :class:`Fingerprint` of ``path`` now.

    Raises:
        OSError: ``path`` cannot be opened (``FileNotFoundError`` when missing).
    """
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_BINARY", 0))
    try:
        stat = os.fstat(fd)
        edges = edges_sha256(fd, stat.st_size)
    finally:
        os.close(fd)
    return Fingerprint(
        path=str(Path(path)), size=stat.st_size, mtime_ns=stat.st_mtime_ns, edges_sha256=edges
    )
