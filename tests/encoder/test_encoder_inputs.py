"""RegionFeatures -> visual_feats / visual_pos / visual_attention_mask."""

from __future__ import annotations

import numpy as np
import pytest
from encoder_fixtures import FEAT_DIM, make_regions

from detector.structures import RegionFeatures
from encoder.inputs import build_visual_inputs


def _with_boxes(regions: RegionFeatures, boxes: np.ndarray) -> RegionFeatures:
    return RegionFeatures(
        image_id=regions.image_id,
        image_h=regions.image_h,
        image_w=regions.image_w,
        boxes=boxes.astype(np.float32),
        features=regions.features,
        objects_id=regions.objects_id,
        objects_conf=regions.objects_conf,
        attrs_id=regions.attrs_id,
        attrs_conf=regions.attrs_conf,
    )


def test_normalises_raw_pixel_boxes() -> None:
    base = make_regions("img", 3, seed=1, image_w=400, image_h=200)
    boxes = np.array([[0, 0, 400, 200], [100, 50, 200, 150], [10, 20, 30, 40]], np.float32)
    visual = build_visual_inputs([_with_boxes(base, boxes)])
    expected = [[0, 0, 1, 1], [0.25, 0.25, 0.5, 0.75], [0.025, 0.1, 0.075, 0.2]]
    np.testing.assert_allclose(visual.visual_pos[0].numpy(), expected, rtol=1e-6)
    np.testing.assert_array_equal(visual.visual_feats[0].numpy(), base.features)


def test_clips_float_excess_and_rejects_outside_boxes() -> None:
    base = make_regions("tiny-excess", 1, seed=2, image_w=400, image_h=200)
    almost = np.array([[-0.001, 0, 400.001, 200]], np.float32)  # 2.5e-6 of the width
    visual = build_visual_inputs([_with_boxes(base, almost)])
    assert visual.visual_pos.min() >= 0.0 and visual.visual_pos.max() <= 1.0
    outside = _with_boxes(make_regions("street-7", 1, seed=3), np.array([[0, 0, 700, 10]]))
    with pytest.raises(ValueError, match="street-7"):
        build_visual_inputs([base, outside])


def test_pads_fewer_boxes_with_mask() -> None:
    images = [make_regions("a", 3, seed=4), make_regions("b", 5, seed=5)]
    visual = build_visual_inputs(images)
    assert tuple(visual.visual_feats.shape) == (2, 5, FEAT_DIM)
    assert tuple(visual.visual_pos.shape) == (2, 5, 4)
    assert visual.visual_attention_mask.tolist() == [[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]]
    assert visual.visual_feats[0, 3:].eq(0).all() and visual.visual_pos[0, 3:].eq(0).all()
    np.testing.assert_array_equal(visual.visual_pos[1].numpy(), images[1].normalized_boxes)


def test_bad_batches() -> None:
    with pytest.raises(ValueError, match="at least one"):
        build_visual_inputs([])
    with pytest.raises(ValueError, match="'odd'"):
        build_visual_inputs(
            [make_regions("a", 2, seed=6), make_regions("odd", 2, seed=7, feat_dim=8)]
        )
    with pytest.raises(ValueError, match="'empty'"):
        build_visual_inputs([make_regions("empty", 0, seed=8)])
    with pytest.raises(TypeError):
        build_visual_inputs([{"boxes": []}])  # type: ignore[list-item]
