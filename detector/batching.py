"""Batches of the detector: grouping by resized shape, batch sizes, and CUDA out-of-memory.

:meth:`detector.model.Detector.detect_each` runs images in groups of one resized shape (never
padded: :func:`batches_by_shape`), ``batch_size`` at a time, cut to what out-of-memory taught
(:class:`BatchLimits`). A batch that runs out of device memory is halved and retried
(:func:`run_splitting`); an image that does not fit even alone becomes an
:class:`ImageOutOfMemory` entry, and every other image keeps its regions.
:func:`auto_batch_size` guesses a first size from the free CUDA memory.

The names are also importable from :mod:`detector.model`, where they were first defined.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TypeVar

import torch

from detector.preprocess import PreparedImage
from detector.structures import RegionFeatures

#: One image's boxes as the batch runner takes them (the detector's checked given boxes).
BoxesT = TypeVar("BoxesT")

#: Rough device memory per image at fp32, per resized megapixel: res4 activations of the trunk
#: plus one res5 chunk of regions and the 300 pooled regions (measured on CPU: ~1.8 GB peak RSS
#: at 600x800 with the weights).
BYTES_PER_MEGAPIXEL = 2.5 * 2**30


@dataclass(frozen=True)
class BatchLimits:
    """The largest batch known to fit in device memory, per resized shape ``(h, w)``.

    Learnt from CUDA out-of-memory: a batch of ``n`` images that fails sets its shape's limit
    to ``n // 2`` (at least 1), the size the split tries next, so that the next batches of that
    shape start at the last size that fit instead of failing again. Immutable:
    :meth:`detector.model.Detector.detect_each` takes one and returns the updated one, so a
    long run (the local engine) keeps what it learnt and a plain ``Detector.detect`` call
    starts afresh.
    """

    fits: Mapping[tuple[int, int], int] = field(default_factory=dict)
    """Resized ``(h, w)`` -> images per batch; a shape not listed has no known limit."""

    def cap(self, shape: tuple[int, int], batch_size: int) -> int:
        """``batch_size`` lowered to the limit learnt for ``shape``, if any."""
        return min(batch_size, self.fits.get(shape, batch_size))

    def after_out_of_memory(self, shape: tuple[int, int], size: int) -> BatchLimits:
        """The limits after a batch of ``size`` images of ``shape`` ran out of memory."""
        limit = max(1, min(size // 2, self.fits.get(shape, size)))
        return BatchLimits(fits={**self.fits, shape: limit})


@dataclass(frozen=True)
class ImageOutOfMemory:
    """An image that does not fit in device memory even alone: it has no regions."""

    image_id: str
    reason: str
    """The out-of-memory message (its first line)."""


@dataclass(frozen=True)
class DetectOutcome:
    """What :meth:`detector.model.Detector.detect_each` returns."""

    results: list[RegionFeatures | ImageOutOfMemory]
    """One entry per image, in input order."""
    limits: BatchLimits
    """The batch limits given, with what this call learnt."""


class ImagesOutOfMemoryError(torch.OutOfMemoryError):
    """``Detector.detect``: some images do not fit in device memory even alone.

    Attributes:
        regions: the regions of every other image, in input order (nothing finished is lost).
        failed: the images that did not fit.
    """

    def __init__(self, *, regions: list[RegionFeatures], failed: list[ImageOutOfMemory]) -> None:
        names = ", ".join(repr(entry.image_id) for entry in failed)
        super().__init__(f"out of device memory even one image at a time: {names}")
        self.regions = regions
        self.failed = failed


def auto_batch_size(
    device: torch.device, resized_size: tuple[int, int], *, fraction: float = 0.6, cap: int = 16
) -> int:
    """Images per batch that fit in ``fraction`` of the free CUDA memory (1 on CPU, where
    batching buys no speed)."""
    if device.type != "cuda":
        return 1
    free, _ = torch.cuda.mem_get_info(device)
    per_image = BYTES_PER_MEGAPIXEL * resized_size[0] * resized_size[1] / 1e6
    return max(1, min(cap, int(free * fraction / per_image)))


def batches_by_shape(images: Sequence[PreparedImage], batch_size: int) -> Iterator[list[int]]:
    """Indices grouped by resized shape (first-seen order), at most ``batch_size`` per group."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    groups: dict[tuple[int, int], list[int]] = defaultdict(list)
    for index, image in enumerate(images):
        groups[image.resized_size].append(index)
    for indices in groups.values():
        for start in range(0, len(indices), batch_size):
            yield indices[start : start + batch_size]


def run_splitting(
    run: Callable[[Sequence[PreparedImage], Sequence[BoxesT] | None], list[RegionFeatures]],
    batch: Sequence[PreparedImage],
    boxes: Sequence[BoxesT] | None,
    limits: BatchLimits,
    *,
    device: torch.device,
) -> tuple[list[RegionFeatures | ImageOutOfMemory], BatchLimits]:
    """``run(batch, boxes)`` (same-size images; ``boxes`` None or one entry per image),
    halving the batch and retrying on CUDA out-of-memory. Returns the entries in batch order
    and ``limits`` with what was learnt; the cache of ``device`` is emptied before a retry."""
    try:
        return list(run(batch, boxes)), limits
    except torch.cuda.OutOfMemoryError as error:
        # Only the message leaves this block: the exception (and with its traceback the
        # failed forward's tensors) is released here, before the retry needs the memory.
        reason = "out of device memory even alone: " + str(error).split("\n", 1)[0]
    if device.type == "cuda":
        torch.cuda.empty_cache()
    limits = limits.after_out_of_memory(batch[0].resized_size, len(batch))
    if len(batch) == 1:
        return [ImageOutOfMemory(image_id=batch[0].image_id, reason=reason)], limits
    half = len(batch) // 2
    first, second = (None, None) if boxes is None else (boxes[:half], boxes[half:])
    done, limits = run_splitting(run, batch[:half], first, limits, device=device)
    rest, limits = run_splitting(run, batch[half:], second, limits, device=device)
    return done + rest, limits
