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
- ``PIL.Image.Image``: converted by Pillow; its EXIF orientation (if any) is applied.
- ``numpy.ndarray``: RGB by default, as from PIL or scikit-image; pass ``channel_order="bgr"``
  for arrays from OpenCV. Shapes ``[H, W]``, ``[H, W, 1]``, ``[H, W, 3]`` and ``[H, W, 4]``
  (alpha dropped). Dtypes: uint8; uint16 (``>> 8``); bool (0 / 255); float in ``[0, 1]``
  (scikit-image's convention, scaled by 255 and rounded; NaN, inf or values outside ``[0, 1]``
  are refused: convert 0..255 floats with ``.astype(numpy.uint8)``).

Every failure to produce an image raises :class:`ImageError`, whose message names the source.
"""

from __future__ import annotations

import io
import os
from collections.abc import Callable
from pathlib import Path
from typing import IO, Literal

import cv2
import numpy as np
from PIL import Image, UnidentifiedImageError

#: Default cap on ``width * height`` of an input image (100 megapixels, ~300 MB as BGR uint8).
DEFAULT_MAX_PIXELS: int = 100_000_000

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
    name: str | None = None,
) -> np.ndarray:
    """Decode ``source`` into a new BGR uint8 array ``[H, W, 3]``, C-contiguous.

    ``H, W`` are the size after EXIF orientation. ``channel_order`` says how a numpy array's
    channels are ordered and is ignored for other sources. ``max_pixels`` caps ``H * W`` for
    every source; for files and bytes it is checked on the header, before decoding. ``name``
    replaces the source's description in error messages.

    Pillow also refuses, at header time, images above its own hard limit
    (``2 * PIL.Image.MAX_IMAGE_PIXELS``, ~179 MP, also reported as :class:`ImageError`), and
    warns (``DecompressionBombWarning``) above ``PIL.Image.MAX_IMAGE_PIXELS``. Raise that
    module setting yourself to admit larger images.

    Raises:
        ImageError: missing, empty, unreadable, unrecognised, truncated or oversized input.
        TypeError: ``source`` is none of the accepted types.
        ValueError: ``channel_order`` or ``max_pixels`` is invalid.
    """
    if channel_order not in ("rgb", "bgr"):
        raise ValueError(f"channel_order must be 'rgb' or 'bgr', got {channel_order!r}")
    if max_pixels <= 0:
        raise ValueError(f"max_pixels must be positive, got {max_pixels}")
    if isinstance(source, np.ndarray):
        return _array_to_bgr(
            source, channel_order=channel_order, max_pixels=max_pixels, label=name or "<array>"
        )
    if isinstance(source, Image.Image):
        label = name or getattr(source, "filename", "") or "<PIL image>"
        return _pil_to_oriented_bgr(source, max_pixels=max_pixels, label=label)
    if isinstance(source, (str, os.PathLike)):
        label = name or os.fspath(source)
        return _decode_bytes(_read_file(source, label), max_pixels=max_pixels, label=label)
    if isinstance(source, (bytes, bytearray, memoryview)):
        label = name or "<bytes>"
        data = bytes(source)
        if not data:
            raise ImageError(label, "empty input (0 bytes)")
        return _decode_bytes(data, max_pixels=max_pixels, label=label)
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
        _check_file(source, label)
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


def _check_file(path: str | os.PathLike, label: str) -> None:
    target = Path(path)
    try:
        if not target.exists():
            raise ImageError(label, "no such file")
        if target.is_dir():
            raise ImageError(label, "is a directory, not an image file")
        if target.stat().st_size == 0:
            raise ImageError(label, "empty file (0 bytes)")
    except OSError as exc:
        raise ImageError(label, f"cannot read file: {exc.strerror or exc}") from exc


def _read_file(path: str | os.PathLike, label: str) -> bytes:
    _check_file(path, label)
    try:
        with open(path, "rb") as handle:
            return handle.read()
    except OSError as exc:
        raise ImageError(label, f"cannot read file: {exc.strerror or exc}") from exc


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
