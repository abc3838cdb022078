"""RoI head: threaded RoIPool == torchvision's, res5 chunking, per-device defaults."""

from __future__ import annotations

import pytest
import torch
from torchvision.ops import roi_pool

from detector import build_detector, get_preset
from detector.options import InferenceOptions, default_res5_chunk
from detector.roi_heads import ROI_POOL_TASK, boxes_to_rois, threaded_roi_pool

TINY = get_preset("tiny")


def awkward_boxes(count: int, generator: torch.Generator) -> torch.Tensor:
    """xyxy boxes for a 20x30-cell map at 1/16: inside, across the border, degenerate, and on
    half-cell edges where C's round() and torch.round() disagree."""
    xy = torch.rand((count, 2), generator=generator) * torch.tensor([520.0, 360.0]) - 20
    wh = torch.rand((count, 2), generator=generator) * 300
    boxes = torch.cat([xy, xy + wh], dim=1)
    boxes[::7, 2:] = boxes[::7, :2]  # zero-size
    boxes[1::5] = torch.tensor([8.0, 24.0, 40.0, 56.0])  # x * 1/16 = .5 exactly
    boxes[2::9, 2:] += 400  # far past the map's right/bottom edge
    return boxes


@pytest.mark.parametrize("threads", [2, 3])
def test_threaded_roi_pool_is_torchvision_bit_for_bit(threads: int) -> None:
    generator = torch.Generator().manual_seed(0)
    features = torch.rand((2, 16, 20, 30), generator=generator)
    boxes = [awkward_boxes(3 * ROI_POOL_TASK + 5, generator), awkward_boxes(9, generator)]
    rois = boxes_to_rois(boxes)
    assert rois[:, 0].tolist() == [0.0] * len(boxes[0]) + [1.0] * len(boxes[1])
    expected = roi_pool(features, boxes, output_size=7, spatial_scale=1 / 16)
    with torch.inference_mode():
        got = threaded_roi_pool(
            features, rois, output_size=7, spatial_scale=1 / 16, threads=threads
        )
    assert torch.equal(got, expected)


def test_threaded_roi_pool_without_regions() -> None:
    features = torch.rand((1, 4, 5, 5))
    got = threaded_roi_pool(
        features, boxes_to_rois([torch.zeros((0, 4))]), output_size=3, spatial_scale=1.0, threads=2
    )
    assert got.shape == (0, 4, 3, 3)


def test_head_pool_threaded_in_inference_plain_with_grad() -> None:
    detector = build_detector(TINY, seed=0)
    heads = detector.roi_heads
    generator = torch.Generator().manual_seed(1)
    features = torch.rand((1, TINY.res4_channels, 12, 18), generator=generator)
    boxes = [awkward_boxes(70, generator) / 2]
    expected = roi_pool(
        features, boxes, output_size=heads.pooler_resolution, spatial_scale=heads.spatial_scale
    )
    with torch.inference_mode():
        assert torch.equal(heads.pool(features, boxes), expected)
    # Training: the plain op, so gradients reach the trunk.
    trainable = features.clone().requires_grad_(True)
    heads.pool(trainable, boxes).sum().backward()
    assert trainable.grad is not None and trainable.grad.sum() > 0


def test_res5_chunk_size_does_not_change_features() -> None:
    detector = build_detector(TINY, seed=0).optimize_for_inference(InferenceOptions(res5_chunk=3))
    pooled = torch.rand(
        (10, TINY.res4_channels, 14, 14), generator=torch.Generator().manual_seed(2)
    )
    heads = detector.roi_heads
    with torch.inference_mode():
        chunked = heads.region_features(pooled, chunk_size=detector.options.res5_chunk)
        whole = heads.region_features(pooled, chunk_size=10)
    assert detector.options.res5_chunk == 3
    torch.testing.assert_close(chunked, whole, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="chunk_size"):
        heads.region_features(pooled, chunk_size=0)


def test_res5_chunk_per_device_and_checked() -> None:
    assert default_res5_chunk(torch.device("cpu")) == 8
    assert default_res5_chunk(torch.device("cuda")) > 8
    detector = build_detector(TINY, seed=0).optimize_for_inference()
    assert detector.options.res5_chunk == 8
    with pytest.raises(ValueError, match="res5_chunk"):
        InferenceOptions(res5_chunk=0)
