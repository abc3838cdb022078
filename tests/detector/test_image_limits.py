"""detector.image on hostile files: byte cap before reading, format and size from the header.

Reproductions of issue 15 item 6 (a 3 GB file named ``.jpg`` took 3.9 GB of memory before
"not a recognised image format"). Big files are sparse, so they cost no disk. Memory is
measured in a subprocess (peak RSS); bytes read are counted by wrapping ``open``; time is
never asserted.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import cv2
import numpy as np
import pytest
from PIL import ImageFile
from skimage import data

import detector.image
from detector import get_preset
from detector.image import DEFAULT_MAX_BYTES, HEADER_READ_LIMIT, ImageError, load_image
from detector.preprocess import prepare

if TYPE_CHECKING:
    from _typeshed import WriteableBuffer

REPO = Path(__file__).resolve().parents[2]
# Read once here: tests that forbid decoding must not decode their own inputs either.
CHELSEA_BGR = np.ascontiguousarray(data.chelsea()[:, :, ::-1])

# Loads one image in a fresh interpreter; prints the error and the peak resident memory of that
# interpreter before and after. The peak is /proc's VmHWM (this address space only), not
# getrusage's ru_maxrss: Linux carries ru_maxrss over execve, so a child of this ~1 GB pytest
# process would report the parent's size. detector/image.py is loaded on its own: the detector
# package imports torch, ~0.9 GB of resident shared libraries here, which would drown the figure.
_LOAD_AND_MEASURE = """
import importlib.util, json, sys
def peak_bytes():
    with open("/proc/self/status") as status:
        line = next(line for line in status if line.startswith("VmHWM:"))
    return int(line.split()[1]) * 1024
spec = importlib.util.spec_from_file_location("image_alone", "detector/image.py")
image = importlib.util.module_from_spec(spec)
spec.loader.exec_module(image)
before = peak_bytes()
try:
    image.load_image(sys.argv[1])
    error = None
except image.ImageError as exc:
    error = str(exc)
print(json.dumps({"error": error, "before": before, "peak": peak_bytes()}))
"""


def _load_in_subprocess(path: Path) -> dict[str, object]:
    # A timeout turns a blocked open (a FIFO read blindly) into a failure, not a hung run.
    done = subprocess.run(
        [sys.executable, "-c", _LOAD_AND_MEASURE, str(path)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    result: dict[str, object] = json.loads(done.stdout)
    return result


def _sparse(path: Path, size: int, head: bytes = b"") -> Path:
    """A file of ``size`` bytes that starts with ``head``; the rest is a hole (no disk use)."""
    with open(path, "wb") as handle:
        handle.write(head)
        handle.truncate(size)
    return path


def _png_bytes() -> bytes:
    ok, encoded = cv2.imencode(".png", CHELSEA_BGR[:40, :60])
    assert ok
    return encoded.tobytes()


class _CountingFile(io.FileIO):
    """A file that adds every byte read to ``counts[name]``."""

    def __init__(self, name: str, counts: dict[str, int]) -> None:
        super().__init__(name, "r")
        self._counts = counts
        counts.setdefault(name, 0)

    def readinto(self, buffer: WriteableBuffer, /) -> int | None:
        got = super().readinto(buffer)
        self._counts[str(self.name)] += got or 0
        return got

    def readall(self) -> bytes:
        got = super().readall()
        self._counts[str(self.name)] += len(got)
        return got


@pytest.fixture
def bytes_read(monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, int]]:
    """``{path: bytes read}`` of every file detector.image opens (absent: never opened)."""
    counts: dict[str, int] = {}

    def counting_open(file: str | os.PathLike[str], mode: str = "r") -> io.BufferedReader:
        assert mode == "rb", mode
        return io.BufferedReader(_CountingFile(os.fspath(file), counts))

    monkeypatch.setattr(detector.image, "open", counting_open, raising=False)
    yield counts


@pytest.fixture
def no_decoding(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make any pixel decoding fail the test."""

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("pixels were decoded")

    monkeypatch.setattr(cv2, "imdecode", refuse)
    monkeypatch.setattr(ImageFile.ImageFile, "load", refuse)


# --- the byte cap ------------------------------------------------------------------------------


@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="measures memory via /proc")
def test_sparse_3gb_jpg_is_refused_before_reading_within_1gb_of_memory(tmp_path: Path) -> None:
    # Issue 15, item 6, as reported: 3 GB named .jpg. Before the fix this read all 3 GB.
    path = _sparse(tmp_path / "x.jpg", 3 * 10**9)
    result = _load_in_subprocess(path)
    error = str(result["error"])
    assert error.startswith(f"{path}: 3000000000 bytes")
    assert f"max_bytes={DEFAULT_MAX_BYTES}" in error
    assert "--max-bytes N" in error and "max_bytes=N" in error
    before, peak = result["before"], result["peak"]
    assert isinstance(before, int) and isinstance(peak, int)
    assert peak < 10**9
    assert peak - before < 64 * 2**20  # load_image itself: far below one read of the file


@pytest.mark.usefixtures("no_decoding")
def test_valid_header_over_the_cap_is_refused_without_opening(
    tmp_path: Path, bytes_read: dict[str, int]
) -> None:
    # 250 MB that start as a real PNG: the byte cap decides from os.stat alone.
    path = _sparse(tmp_path / "big.png", 250_000_000, head=_png_bytes())
    with pytest.raises(ImageError, match=r"big\.png: 250000000 bytes \(250\.0 MB\)") as info:
        load_image(path)
    assert "max_bytes=200000000" in info.value.reason
    assert "refused before reading it" in info.value.reason
    assert bytes_read == {}
    with pytest.raises(ImageError, match="max_bytes=1000"):
        prepare(path, config=get_preset("tiny"), image_id="big", max_bytes=1000)


def test_counting_open_sees_a_file_that_is_read(tmp_path: Path, bytes_read) -> None:
    # The control for the tests that count: a good file is opened and read whole.
    png = _png_bytes()
    path = tmp_path / "small.png"
    path.write_bytes(png)
    np.testing.assert_array_equal(load_image(path), cv2.imread(str(path)))
    assert bytes_read[str(path)] >= len(png)


def test_garbage_just_under_the_cap_is_rejected_from_its_header(
    tmp_path: Path, bytes_read: dict[str, int]
) -> None:
    path = _sparse(tmp_path / "notes.jpg", DEFAULT_MAX_BYTES - 1, head=b"meeting notes\n" * 8)
    with pytest.raises(ImageError, match=r"notes\.jpg: not a recognised image format"):
        load_image(path)
    # The header was looked at, but not the ~200 MB behind it.
    assert 0 < bytes_read[str(path)] <= 1_000_000


@pytest.mark.usefixtures("no_decoding")
def test_bomb_header_is_refused_by_pixels_without_reading_the_file(
    tmp_path: Path, png_header_only: Callable[[int, int], bytes], bytes_read: dict[str, int]
) -> None:
    # A 150 MB PNG whose IHDR claims 10^10 pixels: refused from the header bytes.
    path = _sparse(tmp_path / "bomb.png", 150_000_000, head=png_header_only(100_000, 100_000))
    with pytest.raises(ImageError, match=r"bomb\.png: .*pixels"):
        load_image(path)
    assert 0 < bytes_read[str(path)] <= 1_000_000


def test_header_read_limit_stops_a_header_that_never_ends(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, bytes_read: dict[str, int]
) -> None:
    # A JPEG whose APP segments run past the limit is refused having read about the limit.
    comment = b"\xff\xfe" + (65_535).to_bytes(2, "big") + b"c" * 65_533
    path = _sparse(tmp_path / "long.jpg", 50_000_000, head=b"\xff\xd8" + comment * 100)
    monkeypatch.setattr(detector.image, "HEADER_READ_LIMIT", 1_000_000)
    with pytest.raises(ImageError, match="no image header in its first 1000000 bytes"):
        load_image(path)
    assert 1_000_000 <= bytes_read[str(path)] <= 1_100_000
    assert HEADER_READ_LIMIT >= 16 * 2**20  # the real limit leaves room for large ICC profiles


def test_tiff_with_its_directory_at_the_end_still_loads(tmp_path: Path) -> None:
    # libtiff (cv2.imwrite) writes the IFD after the pixels: the header reader must seek to it.
    bgr = CHELSEA_BGR
    path = tmp_path / "cat.tif"
    assert cv2.imwrite(str(path), bgr)
    offset = int.from_bytes(path.read_bytes()[4:8], "little")
    assert offset > bgr.nbytes // 2  # the directory really is at the end
    np.testing.assert_array_equal(load_image(path), cv2.imread(str(path)))


@pytest.mark.usefixtures("no_decoding")
def test_in_memory_bytes_are_capped_by_length() -> None:
    png = _png_bytes()
    for source in (png, bytearray(png), memoryview(png)):
        with pytest.raises(ImageError, match=rf"^<bytes>: {len(png)} bytes .*max_bytes=100 ") as e:
            load_image(source, max_bytes=100)
        assert "refused before decoding them" in e.value.reason
    # memoryview counts bytes, not items.
    wide = memoryview(np.frombuffer(png[: len(png) // 8 * 8], dtype=np.uint64))
    with pytest.raises(ImageError, match=rf"{len(png) // 8 * 8} bytes"):
        load_image(wide, max_bytes=100)


def test_cap_admits_a_file_of_exactly_max_bytes(tmp_path: Path) -> None:
    png = _png_bytes()
    path = tmp_path / "exact.png"
    path.write_bytes(png)
    assert load_image(path, max_bytes=len(png)).shape == (40, 60, 3)
    assert load_image(png, max_bytes=len(png)).shape == (40, 60, 3)
    with pytest.raises(ImageError, match=f"max_bytes={len(png) - 1}"):
        load_image(path, max_bytes=len(png) - 1)


@pytest.mark.parametrize("bad", [0, -1])
def test_max_bytes_must_be_positive(bad: int) -> None:
    with pytest.raises(ValueError, match="max_bytes must be positive"):
        load_image(_png_bytes(), max_bytes=bad)


# --- what a path is ----------------------------------------------------------------------------


@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="Linux only (/proc)")
def test_fifo_is_named_and_never_opened(tmp_path: Path) -> None:
    fifo = tmp_path / "pipe.jpg"
    os.mkfifo(fifo)
    # In a subprocess: opening a FIFO to read would block until the timeout.
    result = _load_in_subprocess(fifo)
    assert result["error"] == f"{fifo}: is a FIFO (named pipe), not a file"


@pytest.mark.skipif(not os.path.exists("/dev/zero"), reason="needs /dev/zero")
def test_device_is_named_and_never_read(tmp_path: Path, bytes_read: dict[str, int]) -> None:
    link = tmp_path / "zero.jpg"
    link.symlink_to("/dev/zero")
    with pytest.raises(ImageError, match=r"zero\.jpg: is a character device, not a file"):
        load_image(link)
    assert bytes_read == {}


def test_links_and_folders_are_named(tmp_path: Path) -> None:
    loop = tmp_path / "loop.jpg"
    loop.symlink_to(loop)
    broken = tmp_path / "broken.jpg"
    broken.symlink_to(tmp_path / "gone.jpg")
    with pytest.raises(ImageError, match=r"loop\.jpg: symbolic link loop$"):
        load_image(loop)
    with pytest.raises(ImageError, match=r"broken\.jpg: broken symbolic link$"):
        load_image(broken)
    with pytest.raises(ImageError, match=r"no such file$"):
        load_image(tmp_path / "gone.jpg")
    with pytest.raises(ImageError, match=r"is a directory, not a file$"):
        load_image(tmp_path)
