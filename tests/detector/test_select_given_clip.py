"""Given boxes reaching outside the image: clipped (default) or, with ``clip=False``, pooled
unclipped as the original bottom-up code did (``im_detect`` -> ``_project_im_rois``)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from skimage import data

from detector import Detector, build_detector, get_preset
from detector.given_boxes import check_given_boxes, given_box_rois
from detector.preprocess import PreparedImage, prepare

TINY = get_preset("tiny")


@pytest.fixture(scope="module")
def tiny() -> Detector:
    return build_detector(TINY, seed=0).optimize_for_inference()


@pytest.fixture(scope="module")
def coffee() -> PreparedImage:
    return prepare(data.coffee(), config=TINY, image_id="coffee")  # 600 x 400 raw


def c_round(value: float) -> int:
    """C's ``round``: halves away from zero (``torch.round`` rounds them to even)."""
    return int(math.copysign(math.floor(abs(value) + 0.5), value))


def caffe_roi_pool(features: torch.Tensor, roi: list[float], size: int) -> torch.Tensor:
    """One RoI (xyxy, resized pixels) of ``features`` ``[1, C, H, W]`` at stride 16, pooled as
    Caffe's ROIPoolingLayer does, written out here: the RoI's corners rounded to cells, the
    ``size x size`` bins in float32, each clamped to the feature map and max-pooled, an empty
    bin 0. Returns ``[C, size, size]``."""
    _, channels, height, width = features.shape
    x1, y1, x2, y2 = (c_round(float(np.float32(v) * np.float32(1 / 16))) for v in roi)
    roi_w, roi_h = max(x2 - x1 + 1, 1), max(y2 - y1 + 1, 1)
    bin_w, bin_h = np.float32(roi_w) / np.float32(size), np.float32(roi_h) / np.float32(size)
    out = torch.zeros(channels, size, size, dtype=features.dtype)
    for ph in range(size):
        h0 = min(max(math.floor(np.float32(ph) * bin_h) + y1, 0), height)
        h1 = min(max(math.ceil(np.float32(ph + 1) * bin_h) + y1, 0), height)
        for pw in range(size):
            w0 = min(max(math.floor(np.float32(pw) * bin_w) + x1, 0), width)
            w1 = min(max(math.ceil(np.float32(pw + 1) * bin_w) + x1, 0), width)
            if h1 > h0 and w1 > w0:
                out[:, ph, pw] = features[0, :, h0:h1, w0:w1].amax(dim=(1, 2))
    return out


def reference_features(detector: Detector, image: PreparedImage, rois: torch.Tensor):
    """res5 features of ``rois`` (resized pixels), pooled by :func:`caffe_roi_pool`."""
    with torch.inference_mode():
        res4 = detector.backbone(image.tensor[None])
        pooled = torch.stack(
            [caffe_roi_pool(res4, roi, TINY.pooler_resolution) for roi in rois.tolist()]
        )
        return detector.roi_heads.res5(pooled).mean(dim=(2, 3)).numpy()


#: Partly outside the 600 x 400 coffee photo: left and top, right and bottom, and inside.
OUTSIDE = np.array([[-200, -120, 260, 190], [420.5, 250, 900, 700], [30, 40, 300, 210]], np.float32)


def test_default_clips_and_pools_the_clipped_boxes(tiny, coffee) -> None:
    clipped = np.clip(OUTSIDE, 0, np.array([600, 400, 600, 400], np.float32))
    got = tiny.detect([coffee], boxes=[OUTSIDE])[0]
    same = tiny.detect([coffee], boxes=[clipped])[0]
    np.testing.assert_array_equal(got.boxes, clipped)
    np.testing.assert_array_equal(got.features, same.features)


def test_no_clip_pools_the_scaled_boxes_unclipped_as_the_original(tiny, coffee) -> None:
    rois = given_box_rois(torch.from_numpy(OUTSIDE), coffee, clip=False)
    plain = torch.from_numpy((OUTSIDE.astype(np.float64) * coffee.scale).astype(np.float32))
    assert torch.equal(rois, plain)  # box * scale: nothing clipped
    assert rois[0, 0] < 0 and rois[1, 2] > coffee.resized_size[1]

    region = tiny.detect([coffee], boxes=[OUTSIDE], clip=False)[0]
    np.testing.assert_array_equal(region.boxes, OUTSIDE)  # the records' boxes: as given
    expected = reference_features(tiny, coffee, rois)
    scale = float(np.abs(expected).max())
    np.testing.assert_allclose(region.features, expected, rtol=1e-5, atol=1e-5 * scale)
    clipped = tiny.detect([coffee], boxes=[OUTSIDE])[0]
    # Boxes 0 and 1 pool other cells unclipped; box 2 lies inside and is the same.
    for index in (0, 1):
        assert not np.allclose(region.features[index], clipped.features[index], rtol=1e-3)
    np.testing.assert_array_equal(region.features[2], clipped.features[2])

    via_regions = tiny.regions([data.coffee()], ["coffee"], boxes=[OUTSIDE], clip=False)[0]
    np.testing.assert_array_equal(via_regions.features, region.features)


def test_no_clip_has_no_far_edge_rule() -> None:
    # raw 47 x 30 at scale 0.5, resized 24 x 15: clipped, the raw far edge 47 goes to the
    # resized far edge 24; unclipped it is 47 * 0.5 = 23.5, as the original computed it.
    pixels = np.zeros((3, 15, 24), dtype=np.float32)
    image = PreparedImage(image_id="x", pixels=pixels, scale=0.5, raw_h=30, raw_w=47)
    boxes = torch.tensor([[3.0, 5.0, 47.0, 30.0], [-4.0, 2.0, 60.0, 41.0]])
    assert given_box_rois(check_given_boxes(boxes, image_h=30, image_w=47), image).tolist() == [
        [1.5, 2.5, 24.0, 15.0],
        [0.0, 1.0, 24.0, 15.0],
    ]
    unclipped = check_given_boxes(boxes, image_h=30, image_w=47, clip=False)
    assert torch.equal(unclipped, boxes)
    assert given_box_rois(unclipped, image, clip=False).tolist() == [
        [1.5, 2.5, 23.5, 15.0],
        [-2.0, 1.0, 30.0, 20.5],
    ]


@pytest.mark.parametrize(
    ("boxes", "message"),
    [
        ([[1, 2, 10, float("nan")]], "has a NaN or infinite coordinate"),
        ([[-5, 2, float("inf"), 4]], "has a NaN or infinite coordinate"),
        ([[1, 2, 10, 12], [5, 5, 5, 9]], r"box 1 \[5, 5, 5, 9\] is degenerate"),
        ([[700, 10, 800, 20]], r"box 0 \[700, 10, 800, 20\] lies wholly outside the 600x400"),
        ([[-50, -40, 0, 30]], r"box 0 .* lies wholly outside"),  # touches the left edge only
    ],
)
@pytest.mark.parametrize("clip", [True, False])
def test_unusable_boxes_are_refused_clipped_or_not(boxes, message: str, clip: bool) -> None:
    with pytest.raises(ValueError, match=message):
        check_given_boxes(np.asarray(boxes, np.float32), image_h=400, image_w=600, clip=clip)
