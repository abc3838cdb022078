"""LXMERT's obj36 TSV: encode and decode one line, scan and repair a file a kill cut short,
read it in order, append to it durably.

Exactly the file LXMERT's ``load_obj_tsv`` reads. One line per image, no header, tab-separated
fields ``img_id, img_h, img_w, objects_id, objects_conf, attrs_id, attrs_conf, num_boxes, boxes,
features`` written by ``csv.DictWriter(delimiter="\\t")`` (``\\r\\n`` line ends, as the
original ``generate_tsv.py``). Arrays are base64 of their raw little-endian bytes: int64 for
``objects_id``/``attrs_id``, float32 for the rest; ``boxes`` is ``[N, 4]`` xyxy in raw-image
pixels, ``features`` is ``[N, D]``. :class:`TsvWriter` puts each line on disk with one
``write`` + ``fsync``, so a kill leaves at most one partial last line, which
:func:`repair_tsv` cuts away.

Split from :mod:`pipeline.features.output` (which re-exports the public names); no format but TSV
here.
"""

from __future__ import annotations

import base64
import csv
import io
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from detector.structures import ARRAY_DTYPES, TSV_FIELDNAMES, RegionFeatures
from weights.files import fsync_directory


def _b64(array: np.ndarray, dtype: np.dtype) -> str:
    return base64.b64encode(np.ascontiguousarray(array, dtype=dtype).tobytes()).decode("ascii")


def encode_tsv_line(region: RegionFeatures) -> bytes:
    """One obj36 TSV line (with its ``\\r\\n``) for ``region``, as ``csv.DictWriter`` writes it."""
    if any(char in region.image_id for char in "\t\r\n"):
        raise ValueError(
            f"image id {region.image_id!r} holds a tab or newline; TSV cannot store it"
        )
    row: dict[str, object] = {
        "img_id": region.image_id,
        "img_h": int(region.image_h),
        "img_w": int(region.image_w),
        "num_boxes": region.num_boxes,
    }
    for name, dtype in ARRAY_DTYPES.items():
        row[name] = _b64(getattr(region, name), dtype)
    buffer = io.StringIO()
    csv.DictWriter(buffer, fieldnames=list(TSV_FIELDNAMES), delimiter="\t").writerow(row)
    return buffer.getvalue().encode("utf-8")


def unquote_id(field: str) -> str:
    # csv quotes an id only when it holds a double quote (tabs and newlines are refused).
    if len(field) >= 2 and field[0] == field[-1] == '"':
        return field[1:-1].replace('""', '"')
    return field


def b64_size(text: str) -> int:
    if len(text) % 4:
        return -1
    return len(text) // 4 * 3 - (text.endswith("=") + text.endswith("=="))


def split_tsv_line(line: bytes) -> list[str] | None:
    """The ten fields of a complete, structurally sound line, else ``None`` (cheap: no decode)."""
    try:
        text = line.decode("utf-8").rstrip("\r\n")
    except UnicodeDecodeError:
        return None
    fields = text.split("\t")
    if len(fields) != len(TSV_FIELDNAMES):
        return None
    try:
        n = int(fields[7])
        int(fields[1]), int(fields[2])
    except ValueError:
        return None
    expected = {3: 8 * n, 4: 4 * n, 5: 8 * n, 6: 4 * n, 8: 16 * n}
    for index, size in expected.items():
        if b64_size(fields[index]) != size:
            return None
    feature_bytes = b64_size(fields[9])
    if feature_bytes < 0 or (n and feature_bytes % (4 * n)) or (not n and feature_bytes):
        return None
    return fields


def tsv_line_id(line: bytes) -> str | None:
    """The image id of a complete, structurally sound obj36 line (its ``\\n`` included), else
    ``None``. Checks field count, integers and base64 lengths only: no array is decoded."""
    if not line.endswith(b"\n"):
        return None
    fields = split_tsv_line(line)
    return None if fields is None else unquote_id(fields[0])


def decode_tsv_line(line: bytes, *, source: str = "<tsv>") -> RegionFeatures:
    """Parse one obj36 line; ``ValueError`` naming ``source`` if it is not a complete record."""
    fields = split_tsv_line(line)
    if fields is None:
        raise ValueError(f"{source}: not a complete obj36 TSV record")
    n = int(fields[7])
    arrays: dict[str, np.ndarray] = {}
    try:
        for name, text in zip(TSV_FIELDNAMES[3:], fields[3:], strict=True):
            if name == "num_boxes":
                continue
            raw = np.frombuffer(base64.b64decode(text, validate=True), dtype=ARRAY_DTYPES[name])
            if name in ("boxes", "features"):
                raw = raw.reshape(n, -1) if n else raw.reshape(0, 4 if name == "boxes" else 0)
            arrays[name] = raw
    except ValueError as error:  # binascii.Error is a ValueError
        raise ValueError(f"{source}: bad base64 in an obj36 TSV record ({error})") from None
    return RegionFeatures(
        image_id=unquote_id(fields[0]), image_h=int(fields[1]), image_w=int(fields[2]), **arrays
    )


def scan_tsv(path: Path) -> tuple[list[str], int | None]:
    """Ids of the complete records of ``path``, and the offset where an incomplete last
    record starts (None when the file ends with a complete record).

    A line in the middle that is not a record means the file is not one of ours (or was
    damaged otherwise than by a kill): ``ValueError``.
    """
    ids: list[str] = []
    good_end = 0
    bad_at: int | None = None
    last_line = b""
    with open(path, "rb") as stream:
        offset = 0
        for line in stream:
            if bad_at is not None:
                raise ValueError(
                    f"{path}: line {len(ids) + 1} is not a complete obj36 record but more lines "
                    "follow it; the file was not written by a killed run of this tool. "
                    "Use --overwrite to start again."
                )
            fields = split_tsv_line(line) if line.endswith(b"\n") else None
            if fields is None:
                bad_at = offset
            else:
                ids.append(unquote_id(fields[0]))
                good_end = offset + len(line)
                last_line = line
            offset += len(line)
    if ids:
        # The structural check is cheap; fully decode the last record, the one a kill could hit.
        try:
            decode_tsv_line(last_line, source=str(path))
        except ValueError:
            ids.pop()
            good_end -= len(last_line)
            bad_at = good_end
    return ids, bad_at


def repair_tsv(path: Path) -> list[str]:
    """Ids of the complete records of ``path``, after cutting an incomplete last record."""
    ids, bad_at = scan_tsv(path)
    if bad_at is not None:
        with open(path, "r+b") as stream:
            stream.truncate(bad_at)
            stream.flush()
            os.fsync(stream.fileno())
    return ids


def iter_tsv(path: str | os.PathLike[str]) -> Iterator[RegionFeatures]:
    """Records of an obj36 TSV in file order (an incomplete last line is ignored)."""
    path = Path(path)
    with open(path, "rb") as stream:
        for number, line in enumerate(stream, start=1):
            if not line.endswith(b"\n"):
                return
            yield decode_tsv_line(line, source=f"{path}:{number}")


class TsvWriter:
    """Appends obj36 lines, each with one ``os.write`` + ``fsync``.

    Args:
        path: the ``.tsv`` file.
        resume: keep the records already there (an incomplete last line is cut away);
            otherwise the file is created empty (the caller decides about clobbering).
    """

    def __init__(self, path: str | os.PathLike[str], *, resume: bool) -> None:
        self.path = Path(path)
        self._ids: set[str] = set()
        if resume and self.path.exists():
            self._ids = set(repair_tsv(self.path))
        flags = os.O_WRONLY | os.O_CREAT | os.O_APPEND | getattr(os, "O_BINARY", 0)
        if not resume:
            flags |= os.O_TRUNC
        self._fd: int | None = os.open(self.path, flags, 0o644)
        fsync_directory(self.path.parent)

    def existing_ids(self) -> set[str]:
        """Ids found complete in the file when it was opened."""
        return set(self._ids)

    def write(self, region: RegionFeatures) -> None:
        """Append ``region`` durably."""
        if self._fd is None:
            raise ValueError(f"{self.path}: writer is closed")
        data = encode_tsv_line(region)
        view = memoryview(data)
        while view:  # os.write may write less than asked for very large lines
            written = os.write(self._fd, view)
            view = view[written:]
        os.fsync(self._fd)

    def truncate(self) -> None:
        """Empty the file (used after its records were folded elsewhere)."""
        if self._fd is None:
            raise ValueError(f"{self.path}: writer is closed")
        os.ftruncate(self._fd, 0)
        os.fsync(self._fd)

    def close(self) -> None:
        """Close the file descriptor (every record is already on disk)."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
