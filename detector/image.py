"""Decode any supported image source into the detector's input: BGR uint8 ``[H, W, 3]``.

The reference extractors read images with ``cv2.imread(path)`` (``IMREAD_COLOR``), so file and
byte inputs are decoded with OpenCV wherever it can, giving the same pixels as ``cv2.imread``;
Pillow reads the header first (to refuse decompression bombs before any pixel is decoded and to
read the EXIF orientation) and decodes what OpenCV cannot.

Behaviour, by input:

- Paths and bytes: any format Pillow can identify. EXIF orientation is applied (as
  ``cv2.imread`` does). Gray and palette images become three equal or looked-up channels;
  alpha is dropped without compositing (as ``cv2.imread``); CMYK JPEGs are converted by OpenCV;
  16-bit images go to 8 bit as ``cv2.imread`` does (``value >> 8`` for PNG, rounded
  ``value / 257`` for TIFF). Unlike ``cv2.imread``, a truncated file is an error rather than a
  partly grey picture.
- Files are checked before they are read: ``os.stat`` first (a directory, FIFO, device or socket
  is named as what it is and never opened; a file over ``max_bytes`` is refused unread), then
  the format and size are read from the header alone, Pillow reading at most
  :data:`HEADER_READ_LIMIT` bytes, so a huge file of garbage or a decompression bomb costs
  almost nothing. Only a file that passes is read whole and decoded.
- ``PIL.Image.Image``: converted by Pillow; its EXIF orientation (if any) is applied.
- ``numpy.ndarray``: RGB by default, as from PIL or scikit-image; pass ``channel_order="bgr"``
  for arrays from OpenCV. Shapes ``[H, W]``, ``[H, W, 1]``, ``[H, W, 3]`` and ``[H, W, 4]``
  (alpha dropped). Dtypes: uint8; uint16 (``>> 8``); bool (0 / 255); float in ``[0, 1]``
  (scikit-image's convention, scaled by 255 and rounded; NaN, inf or values outside ``[0, 1]``
  are refused: convert 0..255 floats with ``.astype(numpy.uint8)``).

Every failure to produce an image raises :class:`ImageError`, whose message names the source.
"""

from __future__ import annotations

import errno
import io
import os
import stat
from collections.abc import Callable
from typing import IO, TYPE_CHECKING, Literal

import cv2
import numpy as np
from PIL import Image, UnidentifiedImageError

if TYPE_CHECKING:
    from _typeshed import WriteableBuffer

#: Default cap on ``width * height`` of an input image (100 megapixels, ~300 MB as BGR uint8).
DEFAULT_MAX_PIXELS: int = 100_000_000

#: Default cap on the size of an encoded image (a file or bytes), checked before reading it
#: (200 MB; a 100 MP photo is ~20-40 MB as JPEG).
DEFAULT_MAX_BYTES: int = 200_000_000

#: At most this many bytes of a file are read to find its format and size (16 MiB: room for
#: JPEG APP segments with large ICC profiles; Pillow seeks, so a TIFF directory at the end of
#: the file is still found). A file whose header needs more is refused without the rest.
HEADER_READ_LIMIT: int = 16 * 2**20

#: Anything :func:`load_image` accepts.
ImageSource = str | os.PathLike | bytes | bytearray | memoryview | Image.Image | np.ndarray

ChannelOrder = Literal["rgb", "bgr"]

_EXIF_ORIENTATION_TAG = 0x0112
# Formats whose OpenCV decoder returns the stored (unrotated) pixels under
# IMREAD_IGNORE_ORIENTATION, checked for OpenCV 5.0. OpenCV's TIFF decoder rotates regardless
# (and fails on the transposing orientations), so rotated files of other formats go to Pillow.
_CV2_RAW_ORIENTATION_FORMATS = frozenset({"JPEG", "PNG"})
_CV2_FLAGS = cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION


class ImageError(ValueError):
    """An image source could not be turned into pixels.

    ``str(error)`` is ``"<source>: <reason>"``; ``source`` is the path, the caller's name, or
    ``"<bytes>"`` / ``"<array>"`` / ``"<PIL image>"``.
    """

    def __init__(self, source: str, reason: str) -> None:
        # Both pieces go to args so the error pickles across DataLoader worker processes.
        super().__init__(source, reason)
        self.source = source
        self.reason = reason

    def __str__(self) -> str:
        return f"{self.source}: {self.reason}"


def load_image(
    source: ImageSource,
    *,
    channel_order: ChannelOrder = "rgb",
    max_pixels: int = DEFAULT_MAX_PIXELS,
    max_bytes: int = DEFAULT_MAX_BYTES,
    name: str | None = None,
) -> np.ndarray:
    """Decode ``source`` into a new BGR uint8 array ``[H, W, 3]``, C-contiguous.

    ``H, W`` are the size after EXIF orientation. ``channel_order`` says how a numpy array's
    channels are ordered and is ignored for other sources. ``max_pixels`` caps ``H * W`` for
    every source; for files and bytes it is checked on the header, before decoding.
    ``max_bytes`` caps the encoded size of files (from ``os.stat``, before opening them) and
    of bytes (their length); it does not apply to arrays and PIL images. ``name`` replaces
    the source's description in error messages.

    Pillow also refuses, at header time, images above its own hard limit
    (``2 * PIL.Image.MAX_IMAGE_PIXELS``, ~179 MP, also reported as :class:`ImageError`), and
    warns (``DecompressionBombWarning``) above ``PIL.Image.MAX_IMAGE_PIXELS``. Raise that
    module setting yourself to admit larger images.

    Raises:
        ImageError: missing, empty, not a regular file, unreadable, unrecognised, truncated
            or oversized (pixels or bytes) input.
        TypeError: ``source`` is none of the accepted types.
        ValueError: ``channel_order``, ``max_pixels`` or ``max_bytes`` is invalid.
    """
    if channel_order not in ("rgb", "bgr"):
        raise ValueError(f"channel_order must be 'rgb' or 'bgr', got {channel_order!r}")
    if max_pixels <= 0:
        raise ValueError(f"max_pixels must be positive, got {max_pixels}")
    if max_bytes <= 0:
        raise ValueError(f"max_bytes must be positive, got {max_bytes}")
    if isinstance(source, np.ndarray):
        return _array_to_bgr(
            source, channel_order=channel_order, max_pixels=max_pixels, label=name or "<array>"
        )
    if isinstance(source, Image.Image):
        label = name or getattr(source, "filename", "") or "<PIL image>"
        return _pil_to_oriented_bgr(source, max_pixels=max_pixels, label=label)
    if isinstance(source, (str, os.PathLike)):
        label = name or os.fspath(source)
        data = _read_file(source, label=label, max_pixels=max_pixels, max_bytes=max_bytes)
        return _decode_bytes(data, max_pixels=max_pixels, label=label)
    if isinstance(source, (bytes, bytearray, memoryview)):
        label = name or "<bytes>"
        size = source.nbytes if isinstance(source, memoryview) else len(source)
        if not size:
            raise ImageError(label, "empty input (0 bytes)")
        _check_bytes(size, max_bytes=max_bytes, label=label, before="decoding them")
        return _decode_bytes(bytes(source), max_pixels=max_pixels, label=label)
    raise TypeError(
        "image source must be a path, bytes, a PIL image or a numpy array, "
        f"got {type(source).__name__}"
    )


def image_size(source: ImageSource, *, name: str | None = None) -> tuple[int, int]:
    """``(height, width)`` of ``source`` after EXIF orientation, reading only the header.

    For numpy arrays this is ``source.shape[:2]``. Raises :class:`ImageError` as
    :func:`load_image` does for sources whose header cannot be read.
    """
    if isinstance(source, np.ndarray):
        if source.ndim not in (2, 3):
            raise ImageError(name or "<array>", f"unsupported array shape {source.shape}")
        return int(source.shape[0]), int(source.shape[1])
    if isinstance(source, Image.Image):
        return _upright_size(source)
    if isinstance(source, (str, os.PathLike)):
        label = name or os.fspath(source)
        _file_size(source, label)
        try:
            with open(source, "rb") as handle:
                return _upright_size(_open_header(handle, label))
        except OSError as exc:
            raise ImageError(label, f"cannot read file: {exc.strerror or exc}") from exc
    if isinstance(source, (bytes, bytearray, memoryview)):
        label = name or "<bytes>"
        if not len(source):
            raise ImageError(label, "empty input (0 bytes)")
        return _upright_size(_open_header(io.BytesIO(bytes(source)), label))
    raise TypeError(
        "image source must be a path, bytes, a PIL image or a numpy array, "
        f"got {type(source).__name__}"
    )


# --- files and bytes -------------------------------------------------------------------------


# What a path that is not a regular file is, by the ``stat`` test that recognises it. Such a
# path is never opened: reading a FIFO blocks and a device can be endless.
_NOT_REGULAR: tuple[tuple[Callable[[int], bool], str], ...] = (
    (stat.S_ISDIR, "is a directory, not a file"),
    (stat.S_ISFIFO, "is a FIFO (named pipe), not a file"),
    (stat.S_ISCHR, "is a character device, not a file"),
    (stat.S_ISBLK, "is a block device, not a file"),
    (stat.S_ISSOCK, "is a socket, not a file"),
)


def not_a_file(mode: int) -> str | None:
    """What a path with ``stat`` mode ``mode`` is when it is not a regular file ("is a FIFO
    (named pipe), not a file", ...), or None for a regular file. The one wording, used by the
    decoder and by the input listing."""
    if stat.S_ISREG(mode):
        return None
    for is_kind, reason in _NOT_REGULAR:
        if is_kind(mode):
            return reason
    return "is not a regular file"


def _file_size(path: str | os.PathLike, label: str) -> int:
    """Size in bytes of the regular, non-empty file at ``path``, from ``os.stat`` alone."""
    try:
        info = os.stat(path)
    except FileNotFoundError as exc:
        broken = os.path.islink(path)
        raise ImageError(label, "broken symbolic link" if broken else "no such file") from exc
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise ImageError(label, "symbolic link loop") from exc
        raise ImageError(label, f"cannot read file: {exc.strerror or exc}") from exc
    reason = not_a_file(info.st_mode)
    if reason is not None:
        raise ImageError(label, reason)
    if info.st_size == 0:
        raise ImageError(label, "empty file (0 bytes)")
    return info.st_size


def _check_bytes(size: int, *, max_bytes: int, label: str, before: str) -> None:
    if size > max_bytes:
        raise ImageError(
            label,
            f"{size} bytes ({size / 1e6:.1f} MB), more than max_bytes={max_bytes} (refused "
            f"before {before}; raise the cap with --max-bytes N, or max_bytes=N in Python)",
        )


def _read_file(path: str | os.PathLike, *, label: str, max_pixels: int, max_bytes: int) -> bytes:
    """The whole file, read only once its size, format and pixel count have passed."""
    size = _file_size(path, label)
    _check_bytes(size, max_bytes=max_bytes, label=label, before="reading it")
    try:
        with open(path, "rb") as handle:
            width, height = _open_file_header(handle, label).size
            _check_pixels(height, width, max_pixels=max_pixels, label=label)
            handle.seek(0)
            data = handle.read(size)
            if len(data) != size or handle.read(1):
                raise ImageError(label, "the file changed size while it was being read")
    except OSError as exc:
        raise ImageError(label, f"cannot read file: {exc.strerror or exc}") from exc
    return data


class _HeaderBytes(io.RawIOBase):
    """``handle`` for Pillow's header parsing: it reads as end of file once ``limit`` bytes
    have been read (seeking is free), so no header parse reads more than ``limit``."""

    def __init__(self, handle: IO[bytes], limit: int) -> None:
        super().__init__()
        self._handle = handle
        self._left = limit
        self.exhausted = False

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        return self._handle.seek(offset, whence)

    def tell(self) -> int:
        return self._handle.tell()

    def readinto(self, buffer: WriteableBuffer, /) -> int:
        wanted = memoryview(buffer).cast("B")
        if self._left <= 0:
            self.exhausted = self.exhausted or len(wanted) > 0
            return 0
        chunk = self._handle.read(min(len(wanted), self._left))
        wanted[: len(chunk)] = chunk
        self._left -= len(chunk)
        return len(chunk)


def _open_file_header(handle: IO[bytes], label: str) -> Image.Image:
    """Pillow's header of the open file ``handle``, reading at most
    :data:`HEADER_READ_LIMIT` bytes of it. The result must not be loaded."""
    budget = _HeaderBytes(handle, HEADER_READ_LIMIT)
    try:
        return _open_header(io.BufferedReader(budget), label)
    except ImageError as exc:
        if not budget.exhausted:
            raise
        raise ImageError(
            label, f"{exc.reason} (no image header in its first {HEADER_READ_LIMIT} bytes)"
        ) from exc


def _open_header(stream: IO[bytes], label: str) -> Image.Image:
    """Pillow's lazy open: parses the header only, no pixel data."""
    try:
        return Image.open(stream)
    except UnidentifiedImageError as exc:
        raise ImageError(label, "not a recognised image format") from exc
    except Image.DecompressionBombError as exc:
        raise ImageError(label, f"refused before decoding: {exc}") from exc
    except (OSError, SyntaxError, ValueError, EOFError, IndexError, TypeError) as exc:
        raise ImageError(label, f"unreadable image header: {exc}") from exc


def _decode_bytes(data: bytes, *, max_pixels: int, label: str) -> np.ndarray:
    header = _open_header(io.BytesIO(data), label)
    width, height = header.size
    _check_pixels(height, width, max_pixels=max_pixels, label=label)
    orientation = _orientation(header)

    if orientation == 1 or header.format in _CV2_RAW_ORIENTATION_FORMATS:
        bgr = _cv2_decode(data)
        # OpenCV's imdecode refuses truncated data (None); if it read a different size than
        # the header announced, trust Pillow's reading of the file instead.
        if bgr is not None and bgr.shape[:2] == (height, width):
            return _apply_orientation(bgr, orientation)
    return _pil_to_oriented_bgr(header, max_pixels=max_pixels, label=label)


def _cv2_decode(data: bytes) -> np.ndarray | None:
    try:
        return cv2.imdecode(np.frombuffer(data, dtype=np.uint8), _CV2_FLAGS)
    except cv2.error:
        return None


# --- PIL images --------------------------------------------------------------------------------


def _pil_to_oriented_bgr(image: Image.Image, *, max_pixels: int, label: str) -> np.ndarray:
    width, height = image.size
    _check_pixels(height, width, max_pixels=max_pixels, label=label)
    bgr = _pil_to_bgr(image, label)
    # Read after loading: Pillow's TIFF plugin turns the pixels upright while loading and then
    # drops the orientation tag, so it must not be applied a second time.
    return _apply_orientation(bgr, _orientation(image))


def _pil_to_bgr(image: Image.Image, label: str) -> np.ndarray:
    """Decode (if still lazy) and convert a Pillow image of any mode to BGR uint8."""
    try:
        image.load()
        if image.mode.startswith("I"):
            # 16-bit (and 32-bit integer) gray: keep the high byte, as cv2.imread does for PNG.
            wide = np.asarray(image).astype(np.int64)
            gray = (np.clip(wide, 0, 65535) >> 8).astype(np.uint8)
            rgb = np.repeat(gray[:, :, None], 3, axis=2)
        else:
            rgb = np.asarray(image if image.mode == "RGB" else image.convert("RGB"))
    except Image.DecompressionBombError as exc:
        raise ImageError(label, f"refused before decoding: {exc}") from exc
    except (OSError, SyntaxError, ValueError, EOFError, IndexError, TypeError) as exc:
        raise ImageError(label, f"cannot decode image: {exc}") from exc
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        raise ImageError(label, f"unsupported image mode {image.mode!r}")
    return np.ascontiguousarray(rgb[:, :, ::-1])


# --- numpy arrays ------------------------------------------------------------------------------


def _array_to_bgr(
    array: np.ndarray, *, channel_order: ChannelOrder, max_pixels: int, label: str
) -> np.ndarray:
    if array.ndim == 2:
        array = array[:, :, None]
    if array.ndim != 3 or array.shape[2] not in (1, 3, 4):
        raise ImageError(
            label,
            f"unsupported array shape {array.shape}; expected [H, W], [H, W, 1], [H, W, 3] "
            "or [H, W, 4]",
        )
    height, width = int(array.shape[0]), int(array.shape[1])
    if height == 0 or width == 0:
        raise ImageError(label, f"empty image of shape {array.shape}")
    _check_pixels(height, width, max_pixels=max_pixels, label=label)

    pixels = _to_uint8(array[:, :, :3], label)
    if pixels.shape[2] == 1:
        return np.ascontiguousarray(np.repeat(pixels, 3, axis=2))
    if channel_order == "rgb":
        pixels = pixels[:, :, ::-1]
    return np.array(pixels, dtype=np.uint8, order="C", copy=True)


def _to_uint8(array: np.ndarray, label: str) -> np.ndarray:
    if array.dtype == np.uint8:
        return array
    if array.dtype == np.uint16:
        return (array >> 8).astype(np.uint8)
    if array.dtype == np.bool_:
        return array.astype(np.uint8) * np.uint8(255)
    if np.issubdtype(array.dtype, np.floating):
        if not np.isfinite(array).all():
            raise ImageError(label, "float array contains NaN or infinity")
        low, high = float(array.min()), float(array.max())
        if low < 0.0 or high > 1.0:
            raise ImageError(
                label,
                f"float arrays must hold values in [0, 1], got [{low:g}, {high:g}]; "
                "for 0..255 values pass array.astype(numpy.uint8)",
            )
        return np.rint(array.astype(np.float64) * 255.0).astype(np.uint8)
    raise ImageError(
        label, f"unsupported array dtype {array.dtype}; use uint8, uint16, bool or float in [0, 1]"
    )


# --- shared helpers ----------------------------------------------------------------------------


def _check_pixels(height: int, width: int, *, max_pixels: int, label: str) -> None:
    if height <= 0 or width <= 0:
        raise ImageError(label, f"invalid image size {width}x{height}")
    if height * width > max_pixels:
        raise ImageError(
            label,
            f"image is {width}x{height} = {height * width} pixels, more than "
            f"max_pixels={max_pixels} (refused before decoding; raise max_pixels to allow it)",
        )


def _orientation(image: Image.Image) -> int:
    """EXIF orientation 1..8 of ``image``; 1 when absent or unreadable."""
    try:
        value = image.getexif().get(_EXIF_ORIENTATION_TAG, 1)
    except Exception:
        # A broken EXIF block must not make an otherwise good image unreadable.
        return 1
    return value if isinstance(value, int) and 1 <= value <= 8 else 1


def _upright_size(image: Image.Image) -> tuple[int, int]:
    """``(height, width)`` after EXIF orientation, from an opened (not necessarily loaded)
    Pillow image."""
    width, height = image.size
    if image.format == "TIFF":
        # Pillow reports TIFF sizes already oriented (and orients the pixels on load).
        return height, width
    return (width, height) if _orientation(image) >= 5 else (height, width)


# EXIF orientation -> how to turn the stored pixels [H, W, C] upright (same as PIL's
# ImageOps.exif_transpose and cv2.imread; all lossless).
_ORIENT: dict[int, Callable[[np.ndarray], np.ndarray]] = {
    2: lambda a: a[:, ::-1],
    3: lambda a: a[::-1, ::-1],
    4: lambda a: a[::-1],
    5: lambda a: a.transpose(1, 0, 2),
    6: lambda a: a.transpose(1, 0, 2)[:, ::-1],
    7: lambda a: a.transpose(1, 0, 2)[::-1, ::-1],
    8: lambda a: a.transpose(1, 0, 2)[::-1],
}


def _apply_orientation(bgr: np.ndarray, orientation: int) -> np.ndarray:
    turn = _ORIENT.get(orientation)
    return np.ascontiguousarray(bgr if turn is None else turn(bgr))
