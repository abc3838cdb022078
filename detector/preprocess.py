"""Turn a decoded BGR image into the detector's input, exactly as the Caffe extractor did.

The reference (``_get_image_blob`` in ``lib/fast_rcnn/test.py`` of the original
bottom-up-attention, called from ``tools/generate_tsv.py``) does, for one scale:

1. copy the uint8 BGR image to float32 and subtract the BGR pixel mean in place; the mean is a
   float64 array, so the subtraction is computed in float64 and rounded to float32;
2. ``scale = min_size / short side``, lowered to ``max_size / long side`` when
   ``round(scale * long side) > max_size``;
3. ``cv2.resize(image, None, None, fx=scale, fy=scale, interpolation=cv2.INTER_LINEAR)``:
   OpenCV rounds ``side * scale`` to the nearest integer (ties to even) for the output size and
   maps pixels with the given factor itself (not the rounded size ratio).

Boxes found on the resized image map back to raw pixels by dividing by ``scale``.

NumPy and OpenCV only: torch is imported when a :class:`PreparedImage` becomes a tensor, so a
process that only decodes (the Ray engine's decode tasks) never loads it.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import cv2
import numpy as np

from detector.image import (
    DEFAULT_MAX_BYTES,
    DEFAULT_MAX_PIXELS,
    ChannelOrder,
    ImageError,
    ImageSource,
    load_image,
)

if TYPE_CHECKING:
    import torch

    from detector.config import DetectorConfig


@dataclass(frozen=True, eq=False)
class PreparedImage:
    """One image ready for the detector. Picklable without torch (Ray's decode tasks send it)."""

    image_id: str
    """The caller's id for this image (file stem, relative path, ...)."""
    pixels: np.ndarray
    """float32 ``[3, h, w]``, C-contiguous: BGR minus ``pixel_mean``, divided by
    ``pixel_std``, resized by ``scale``."""
    scale: float
    """Resized size / raw size (the Caffe ``im_scale``); raw pixels = resized pixels / scale."""
    raw_h: int
    """Height of the raw image after EXIF orientation, in pixels."""
    raw_w: int
    """Width of the raw image after EXIF orientation, in pixels."""

    @property
    def resized_size(self) -> tuple[int, int]:
        """``(h, w)`` of :attr:`pixels`, in resized-image pixels."""
        return int(self.pixels.shape[1]), int(self.pixels.shape[2])

    @property
    def tensor(self) -> torch.Tensor:
        """:attr:`pixels` as a float32 ``Tensor[3, h, w]`` sharing their memory; a read-only
        array (as Ray hands one over) is copied first, since torch tensors are writable."""
        import torch

        pixels = self.pixels if self.pixels.flags.writeable else self.pixels.copy()
        return torch.from_numpy(pixels)


def compute_scale(raw_h: int, raw_w: int, *, min_size: int, max_size: int) -> float:
    """The Caffe test-time scale for a ``raw_h x raw_w`` image.

    ``min_size / short side``, unless that makes ``round(scale * long side) > max_size``, in which
    case ``max_size / long side``. Rounding is Python's (ties to even), as ``numpy.round``.
    """
    if raw_h <= 0 or raw_w <= 0:
        raise ValueError(f"image size must be positive, got {raw_h}x{raw_w} (h x w)")
    if min_size <= 0 or max_size <= 0:
        raise ValueError(f"min_size and max_size must be positive, got {min_size}/{max_size}")
    short_side, long_side = min(raw_h, raw_w), max(raw_h, raw_w)
    scale = float(min_size) / float(short_side)
    if round(scale * long_side) > max_size:
        scale = float(max_size) / float(long_side)
    return scale


def resized_size(raw_h: int, raw_w: int, scale: float) -> tuple[int, int]:
    """``(h, w)`` that ``cv2.resize(..., fx=scale, fy=scale)`` produces: each side times
    ``scale``, rounded to nearest (ties to even, as OpenCV's ``saturate_cast<int>``)."""
    return round(raw_h * scale), round(raw_w * scale)


def preprocess(
    image_bgr: np.ndarray,
    *,
    min_size: int,
    max_size: int,
    pixel_mean: Sequence[float],
    pixel_std: Sequence[float] = (1.0, 1.0, 1.0),
    image_id: str = "",
) -> PreparedImage:
    """Mean-subtract and resize a BGR uint8 image ``[H, W, 3]`` as the Caffe extractor did.

    ``pixel_mean`` and ``pixel_std`` are per channel in BGR order; the division by ``pixel_std``
    comes after the resize (it is 1 for the real model, where it changes nothing).

    Raises:
        TypeError: ``image_bgr`` is not a uint8 numpy array.
        ValueError: wrong shape, mean/std not of length 3, zero std.
        ImageError: the aspect ratio is so extreme that a side would resize to 0 pixels.
    """
    if not isinstance(image_bgr, np.ndarray) or image_bgr.dtype != np.uint8:
        raise TypeError(
            "image_bgr must be a uint8 numpy array [H, W, 3] in BGR order (see load_image), "
            f"got {type(image_bgr).__name__} {getattr(image_bgr, 'dtype', '')}"
        )
    if image_bgr.ndim != 3 or image_bgr.shape[2] != 3 or 0 in image_bgr.shape:
        raise ValueError(f"image_bgr must have shape [H, W, 3], got {image_bgr.shape}")
    mean = np.asarray(pixel_mean, dtype=np.float64)
    std = np.asarray(pixel_std, dtype=np.float64)
    if mean.shape != (3,) or std.shape != (3,):
        raise ValueError(
            f"pixel_mean and pixel_std need 3 values (BGR), got {list(mean)} and {list(std)}"
        )
    if not np.all(std != 0):
        raise ValueError(f"pixel_std must be non-zero, got {list(std)}")

    raw_h, raw_w = int(image_bgr.shape[0]), int(image_bgr.shape[1])
    scale = compute_scale(raw_h, raw_w, min_size=min_size, max_size=max_size)
    out_h, out_w = resized_size(raw_h, raw_w, scale)
    if out_h < 1 or out_w < 1:
        raise ImageError(
            image_id or "<array>",
            f"aspect ratio too extreme: {raw_w}x{raw_h} would resize to {out_w}x{out_h} pixels",
        )

    # float64 arithmetic rounded once to float32, as Caffe's `float32_image -= float64_means`.
    centred = np.empty(image_bgr.shape, dtype=np.float32)
    np.subtract(image_bgr, mean, out=centred, casting="same_kind")
    resized = np.asarray(
        cv2.resize(centred, None, None, fx=scale, fy=scale, interpolation=cv2.INTER_LINEAR)
    )
    if resized.shape[:2] != (out_h, out_w):
        raise RuntimeError(  # OpenCV changed its size rule; the scale contract would be broken
            f"cv2.resize gave {resized.shape[:2]}, expected {(out_h, out_w)} for scale {scale}"
        )
    if np.any(std != 1.0):
        np.divide(resized, std.astype(np.float32), out=resized)
    pixels = np.ascontiguousarray(resized.transpose(2, 0, 1))
    return PreparedImage(image_id=image_id, pixels=pixels, scale=scale, raw_h=raw_h, raw_w=raw_w)


def prepare(
    source: ImageSource,
    *,
    config: DetectorConfig,
    image_id: str,
    channel_order: ChannelOrder = "rgb",
    max_pixels: int = DEFAULT_MAX_PIXELS,
    max_bytes: int = DEFAULT_MAX_BYTES,
) -> PreparedImage:
    """:func:`~detector.image.load_image` then :func:`preprocess` with ``config``'s sizes,
    mean and std. ``channel_order`` applies to numpy arrays only (RGB by default);
    ``max_pixels`` and ``max_bytes`` are :func:`~detector.image.load_image`'s caps.

    Raises :class:`~detector.image.ImageError` for any unreadable or oversized input; its
    message names the path, or ``image_id`` for in-memory sources.
    """
    # Paths name themselves in errors; in-memory sources are best named by their id.
    name = None if isinstance(source, (str, os.PathLike)) else (image_id or None)
    image = load_image(
        source, channel_order=channel_order, max_pixels=max_pixels, max_bytes=max_bytes, name=name
    )
    return preprocess_for(image, config, image_id=image_id)


def preprocess_for(
    image_bgr: np.ndarray, config: DetectorConfig, *, image_id: str = ""
) -> PreparedImage:
    """:func:`preprocess` with the sizes, mean and std of ``config``."""
    return preprocess(
        image_bgr,
        min_size=config.min_size,
        max_size=config.max_size,
        pixel_mean=config.pixel_mean,
        pixel_std=config.pixel_std,
        image_id=image_id,
    )
