"""Byte-offset index of an obj36 TSV: image id -> the bytes of its line, built by one pass over
the file and cached, so that opening the file again reads no feature.

The cache (format version 2, little-endian) is the header ``struct "<8sIIqqqq32s"``: magic
``b"LXFSIDX\\0"``, version, 0 (reserved), the TSV's size in bytes and ``st_mtime_ns`` when it
was indexed, the record count ``R``, the byte length ``L`` of the id block, and the sha256 of
the TSV's first and last 64 KiB (:func:`pipeline.features.fingerprint.edges_sha256`); then
``offsets`` int64 ``[R + 1]`` (line ``r`` spans bytes ``offsets[r]:offsets[r + 1]``); then the ``R``
ids, UTF-8, joined by ``\\n`` (an obj36 id never holds a newline). An index whose size, mtime or
edge hash differs from the file's (or of version 1, which had no hash) is rebuilt; so is one
that a read finds wrong (:func:`rebuild_tsv_index`, called by the feature store).

It lies beside the TSV (``X.tsv.index``), or, where that cannot be written (a read-only folder,
or a file of that name that is not an index of ours), in :func:`index_cache_dir` under the
sha256 of the TSV's real path. Where neither can be written the index lives in memory only.
"""

from __future__ import annotations

import hashlib
import os
import struct
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from pipeline.features.fingerprint import edges_sha256, fingerprint
from pipeline.features.output import tsv_line_id
from weights.defaults import cache_dir as project_cache_dir
from weights.files import atomic_write_bytes

INDEX_MAGIC = b"LXFSIDX\0"
INDEX_VERSION = 2
_HEADER = struct.Struct("<8sIIqqqq32s")


@dataclass(frozen=True, eq=False)
class TsvIndex:
    """Where each complete record of one TSV lies.

    Attributes:
        size: the TSV's size in bytes when it was indexed (bytes past it were not read).
        mtime_ns: its ``st_mtime_ns`` then.
        edges_sha256: hex sha256 of its first and last 64 KiB then.
        ids: image ids, in file order; record ``r`` is line ``r + 1``.
        offsets: int64 ``[R + 1]``; record ``r`` is bytes ``offsets[r]:offsets[r + 1]``, its
            ``\\r\\n`` included.
        location: the cache file it was read from or saved to; None when it lives in memory
            only.
    """

    size: int
    mtime_ns: int
    edges_sha256: str
    ids: tuple[str, ...]
    offsets: np.ndarray
    location: Path | None = None


def index_cache_dir() -> Path:
    """Folder of the indexes that cannot lie beside their TSV, from the environment as it is
    now: ``$XDG_CACHE_HOME/lxmert-pipeline/index``, else ``~/.cache/lxmert-pipeline/index``."""
    return project_cache_dir() / "index"


def index_locations(path: str | os.PathLike[str], *, cache_dir: Path | None = None) -> list[Path]:
    """Where the index of ``path`` is looked for, in order: beside it, then in ``cache_dir``
    (default :func:`index_cache_dir`) under the sha256 of its real path."""
    path = Path(path)
    key = hashlib.sha256(os.path.realpath(path).encode("utf-8", "surrogateescape")).hexdigest()
    return [path.with_name(path.name + ".index"), (cache_dir or index_cache_dir()) / key]


def scan_tsv(path: str | os.PathLike[str]) -> TsvIndex:
    """Index ``path`` in one pass (one line in memory at a time), up to its size at the start.

    An incomplete last line (what a killed run leaves) is not a record and is left out.

    Raises:
        ValueError: a line before the last is not a complete obj36 record; names the file and
            the line.
    """
    path = Path(path)
    ids: list[str] = []
    offsets = [0]
    with open(path, "rb") as stream:
        stat = os.fstat(stream.fileno())
        edges = edges_sha256(stream.fileno(), stat.st_size)
        for number, line in enumerate(stream, start=1):
            if offsets[-1] + len(line) > stat.st_size or not line.endswith(b"\n"):
                break  # written after the scan began, or the incomplete last line
            image_id = tsv_line_id(line)
            if image_id is None:
                raise ValueError(
                    f"{path}:{number}: line {number} is not a complete obj36 TSV record (only "
                    "the last line of a file may be incomplete, as a killed run leaves it)"
                )
            ids.append(image_id)
            offsets.append(offsets[-1] + len(line))
    return TsvIndex(
        size=stat.st_size,
        mtime_ns=stat.st_mtime_ns,
        edges_sha256=edges,
        ids=tuple(ids),
        offsets=np.array(offsets, dtype=np.int64),
    )


def encode_index(index: TsvIndex) -> bytes:
    """The cache file's bytes (see the module docstring)."""
    id_block = "\n".join(index.ids).encode("utf-8", "surrogateescape")
    header = _HEADER.pack(
        INDEX_MAGIC,
        INDEX_VERSION,
        0,
        index.size,
        index.mtime_ns,
        len(index.ids),
        len(id_block),
        bytes.fromhex(index.edges_sha256),
    )
    return header + index.offsets.astype("<i8").tobytes() + id_block


def _read_index(location: Path, *, size: int, mtime_ns: int, edges: str) -> TsvIndex | None:
    """The index stored at ``location`` if it is ours, sound and made for this size, mtime and
    edge hash."""
    try:
        with open(location, "rb") as stream:
            header = stream.read(_HEADER.size)
            if len(header) < _HEADER.size:
                return None
            magic, version, _, stored_size, stored_mtime, count, id_bytes, stored_edges = (
                _HEADER.unpack(header)
            )
            stamp = (magic, version, stored_size, stored_mtime, stored_edges.hex())
            if stamp != (INDEX_MAGIC, INDEX_VERSION, size, mtime_ns, edges):
                return None
            if (
                count < 0
                or id_bytes < 0
                or os.fstat(stream.fileno()).st_size != (_HEADER.size + 8 * (count + 1) + id_bytes)
            ):
                return None
            offsets = np.frombuffer(stream.read(8 * (count + 1)), dtype="<i8").astype(np.int64)
            id_block = stream.read(id_bytes).decode("utf-8", "surrogateescape")
    except (OSError, UnicodeDecodeError):
        return None
    ids = tuple(id_block.split("\n")) if count else ()
    sound = offsets[0] == 0 and bool(np.all(np.diff(offsets) > 0)) and offsets[-1] <= size
    if len(ids) != count or not sound:
        return None
    return TsvIndex(
        size=size,
        mtime_ns=mtime_ns,
        edges_sha256=edges,
        ids=ids,
        offsets=offsets,
        location=location,
    )


def _is_ours_or_absent(location: Path) -> bool:
    # A file of that name that is not an index of ours is the user's: never replace it.
    try:
        with open(location, "rb") as stream:
            return stream.read(len(INDEX_MAGIC)) == INDEX_MAGIC
    except FileNotFoundError:
        return True
    except OSError:
        return False


def _save_index(index: TsvIndex, locations: list[Path]) -> Path | None:
    """Write ``index`` to the first location that takes it; None when none does."""
    data = encode_index(index)
    for location in locations:
        try:
            if not _is_ours_or_absent(location):
                continue
            location.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_bytes(location, data)
            return location
        except OSError:
            continue  # read-only folder, full disk: try the next place
    return None


def load_tsv_index(path: str | os.PathLike[str], *, cache_dir: Path | None = None) -> TsvIndex:
    """The index of ``path``: a cached one that matches its size, mtime and edge hash, else a
    fresh scan (:func:`scan_tsv`), which is then cached (see the module docstring).

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: as :func:`scan_tsv`.
    """
    found = fingerprint(path)
    locations = index_locations(path, cache_dir=cache_dir)
    for location in locations:
        cached = _read_index(
            location, size=found.size, mtime_ns=found.mtime_ns, edges=found.edges_sha256
        )
        if cached is not None:
            return cached
    return rebuild_tsv_index(path, cache_dir=cache_dir)


def rebuild_tsv_index(path: str | os.PathLike[str], *, cache_dir: Path | None = None) -> TsvIndex:
    """A fresh scan of ``path``, cached where :func:`load_tsv_index` looks first: for a new
    file, and for an index that a read found wrong although its stamp matched.

    Raises:
        FileNotFoundError, ValueError: as :func:`scan_tsv`.
    """
    index = scan_tsv(path)
    return replace(index, location=_save_index(index, index_locations(path, cache_dir=cache_dir)))
