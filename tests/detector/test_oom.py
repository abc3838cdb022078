"""CUDA out-of-memory bookkeeping of ``Detector.detect_each``, on the CPU: the network call is
replaced by a stub that raises ``torch.cuda.OutOfMemoryError`` (raisable without CUDA) for the
batches it chooses and runs the real computation otherwise."""

from __future__ import annotations

import weakref
from collections.abc import Callable

import numpy as np
import pytest
import torch
from skimage import data

from detector import build_detector, get_preset
from detector.model import BatchLimits, Detector, ImageOutOfMemory, ImagesOutOfMemoryError
from detector.preprocess import PreparedImage, prepare
from detector.structures import RegionFeatures

TINY = get_preset("tiny")


@pytest.fixture(scope="module")
def tiny_detector() -> Detector:
    return build_detector(TINY, seed=0)


@pytest.fixture(scope="module")
def images() -> list[PreparedImage]:
    coffee = data.coffee()  # 400x600: all four share one resized shape
    return [
        prepare(np.roll(coffee, 40 * i, axis=1), config=TINY, image_id=str(i)) for i in range(4)
    ]


def out_of_memory_when(
    monkeypatch: pytest.MonkeyPatch, fails: Callable[[list[str]], bool]
) -> list[list[str]]:
    """Make the network call of a batch whose ids ``fails`` run out of memory; returns the log
    of the ids of every call."""
    real = Detector._detect_same_size
    calls: list[list[str]] = []

    def stub(
        self: Detector, batch: list[PreparedImage], boxes: list[torch.Tensor] | None
    ) -> list[RegionFeatures]:
        ids = [image.image_id for image in batch]
        calls.append(ids)
        if fails(ids):
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2 GiB\nmore")
        return real(self, batch, boxes)

    monkeypatch.setattr(Detector, "_detect_same_size", stub)
    return calls


def assert_same_regions(got: RegionFeatures, expected: RegionFeatures) -> None:
    assert got.image_id == expected.image_id
    np.testing.assert_array_equal(got.boxes, expected.boxes)
    np.testing.assert_array_equal(got.features, expected.features)


def test_batch_limits_halve_the_size_that_failed_and_never_rise() -> None:
    shape, other = (600, 800), (800, 600)
    limits = BatchLimits().after_out_of_memory(shape, 8)
    assert limits.fits == {shape: 4}
    assert limits.cap(shape, 16) == 4 and limits.cap(shape, 3) == 3
    assert limits.cap(other, 16) == 16  # another shape knows nothing yet
    assert limits.after_out_of_memory(shape, 8).fits == {shape: 4}  # a bigger failure: no rise
    assert limits.after_out_of_memory(shape, 3).fits == {shape: 1}
    assert limits.after_out_of_memory(shape, 1).after_out_of_memory(shape, 1).fits == {shape: 1}
    assert BatchLimits().fits == {}  # the record given was not changed


def test_an_image_that_cannot_fit_alone_loses_no_finished_image(
    tiny_detector, images, monkeypatch
) -> None:
    expected = tiny_detector.detect(images, batch_size=1)
    calls = out_of_memory_when(monkeypatch, lambda ids: "2" in ids)
    outcome = tiny_detector.detect_each(images, batch_size=4)
    # 4 fails; the finished half [0, 1] is kept; [2, 3] fails, then 2 alone; 3 runs.
    assert calls == [["0", "1", "2", "3"], ["0", "1"], ["2", "3"], ["2"], ["3"]]
    failed = outcome.results[2]
    assert isinstance(failed, ImageOutOfMemory)
    assert failed.image_id == "2"
    assert failed.reason == "out of device memory even alone: CUDA out of memory. Tried to " + (
        "allocate 2 GiB"
    )
    for index in (0, 1, 3):
        entry = outcome.results[index]
        assert isinstance(entry, RegionFeatures)
        assert_same_regions(entry, expected[index])
    assert outcome.limits.fits == {images[0].resized_size: 1}


def test_detect_raises_with_the_finished_regions(tiny_detector, images, monkeypatch) -> None:
    expected = tiny_detector.detect(images, batch_size=1)
    out_of_memory_when(monkeypatch, lambda ids: "0" in ids)
    with pytest.raises(ImagesOutOfMemoryError, match="'0'") as caught:
        tiny_detector.detect(images, batch_size=2)
    assert isinstance(caught.value, torch.cuda.OutOfMemoryError)  # callers catching it still do
    assert [entry.image_id for entry in caught.value.failed] == ["0"]
    for got, want in zip(caught.value.regions, expected[1:], strict=True):
        assert_same_regions(got, want)


def test_the_next_batches_start_at_the_size_that_fit(tiny_detector, images, monkeypatch) -> None:
    expected = tiny_detector.detect(images, batch_size=1)
    calls = out_of_memory_when(monkeypatch, lambda ids: len(ids) > 2)
    first = tiny_detector.detect_each(images, batch_size=4)
    assert calls == [["0", "1", "2", "3"], ["0", "1"], ["2", "3"]]
    assert first.limits.fits == {images[0].resized_size: 2}
    calls.clear()
    second = tiny_detector.detect_each(images, batch_size=4, limits=first.limits)
    assert calls == [["0", "1"], ["2", "3"]]  # no batch of 4 tried again
    assert second.limits == first.limits
    for entry, want in zip(second.results, expected, strict=True):
        assert isinstance(entry, RegionFeatures)
        assert_same_regions(entry, want)
    calls.clear()
    tiny_detector.detect_each(images, batch_size=4)  # a call without the record starts afresh
    assert calls[0] == ["0", "1", "2", "3"]


def test_the_failed_forward_is_released_before_the_retry(
    tiny_detector, images, monkeypatch
) -> None:
    """What the failed call held (here a tensor in its frame, reachable only through the
    exception's traceback) is freed before the halves run."""
    real = Detector._detect_same_size
    held: list[weakref.ref[torch.Tensor]] = []
    alive_at_retry: list[bool] = []

    def stub(
        self: Detector, batch: list[PreparedImage], boxes: list[torch.Tensor] | None
    ) -> list[RegionFeatures]:
        if len(batch) > 1:
            activations = torch.zeros(1000)
            held.append(weakref.ref(activations))
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")
        alive_at_retry.append(held[0]() is not None)
        return real(self, batch, boxes)

    monkeypatch.setattr(Detector, "_detect_same_size", stub)
    tiny_detector.detect_each(images[:2], batch_size=2)
    assert alive_at_retry == [False, False]
