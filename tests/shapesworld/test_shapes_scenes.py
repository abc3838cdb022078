"""Scenes: determinism, splits, layout bounds, box tightness against the rendered pixels."""

from __future__ import annotations

import hashlib
import math

import numpy as np
import pytest

from shapesworld.scenes import (
    SceneObject,
    make_scene,
    make_split,
    object_alpha,
    split_seeds,
)
from shapesworld.vocab import (
    COLOR_RGB,
    COLORS,
    MAX_OBJECTS,
    MIN_OBJECTS,
    SHAPES,
    SIZE_PERCENT,
    SPLIT_SEED_BASE,
    SPLIT_SIZE,
)

# sha256 of image bytes; a change means the same seed no longer gives the same pixels.
GOLDEN = {
    0: "f4450f2dac6636a1a71c751c938a88502aa370f348c46baf7e53171991937184",
    30_000_000: "5fc2d725710c7de963d741b0c2c603c57d9f13538e11d8a8e239483c6640e99d",
}


@pytest.fixture(scope="module")
def scenes():
    return make_split("train", 120) + make_split("heldout", 80)


def test_same_seed_same_bytes_and_ground_truth():
    a, b = make_scene(1234), make_scene(1234)
    assert a.image_rgb.tobytes() == b.image_rgb.tobytes()
    assert a.objects == b.objects
    assert make_scene(1235).image_rgb.tobytes() != a.image_rgb.tobytes()


@pytest.mark.parametrize("seed", sorted(GOLDEN))
def test_golden_pixels(seed):
    digest = hashlib.sha256(make_scene(seed).image_rgb.tobytes()).hexdigest()
    assert digest == GOLDEN[seed]


def test_numpy_integer_seed_accepted():
    assert make_scene(np.int64(7)).objects == make_scene(7).objects


def test_splits_use_disjoint_seeds():
    ranges = {s: split_seeds(s, SPLIT_SIZE) for s in SPLIT_SEED_BASE}
    names = sorted(ranges)
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            ra, rb = ranges[a], ranges[b]
            assert ra.stop <= rb.start or rb.stop <= ra.start, (a, b)
    assert list(split_seeds("val", 3, offset=5)) == [10_000_005, 10_000_006, 10_000_007]
    val = make_split("val", 2)
    assert [s.seed for s in val] == [10_000_000, 10_000_001]
    assert val[0].image_rgb.tobytes() == make_scene(10_000_000).image_rgb.tobytes()


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"split": "dev", "count": 1}, ValueError),
        ({"split": "train", "count": -1}, ValueError),
        ({"split": "train", "count": SPLIT_SIZE + 1}, ValueError),
        ({"split": "train", "count": 2, "offset": SPLIT_SIZE - 1}, ValueError),
        ({"split": "train", "count": 1.5}, TypeError),
    ],
)
def test_split_bad_input(kwargs, error):
    with pytest.raises(error):
        split_seeds(**kwargs)


@pytest.mark.parametrize(("seed", "error"), [(-1, ValueError), ("3", TypeError), (True, TypeError)])
def test_scene_bad_seed(seed, error):
    with pytest.raises(error):
        make_scene(seed)


def test_image_sizes_and_object_counts(scenes):
    counts = set()
    aspects = set()
    for scene in scenes:
        h, w = scene.height, scene.width
        assert scene.image_rgb.dtype == np.uint8 and scene.image_rgb.shape == (h, w, 3)
        assert not scene.image_rgb.flags.writeable
        assert min(h, w) >= 96 and max(h, w) <= 320
        aspects.add(round(max(h, w) / min(h, w), 1))
        assert MIN_OBJECTS <= len(scene.objects) <= MAX_OBJECTS
        counts.add(len(scene.objects))
    assert counts == set(range(MIN_OBJECTS, MAX_OBJECTS + 1))
    assert len(aspects) >= 4
    assert any(s.height > s.width for s in scenes) and any(s.width > s.height for s in scenes)


def test_helpers_match_objects(scenes):
    scene = scenes[0]
    n = len(scene.objects)
    assert scene.class_ids().dtype == np.int64 and scene.attribute_ids().dtype == np.int64
    assert scene.class_ids().tolist() == [SHAPES.index(o.shape) for o in scene.objects]
    assert scene.attribute_ids().tolist() == [COLORS.index(o.color) for o in scene.objects]
    boxes = scene.boxes_array()
    assert boxes.dtype == np.float32 and boxes.shape == (n, 4)
    np.testing.assert_array_equal(boxes, np.array([o.box for o in scene.objects], np.float32))
    bgr = scene.image_bgr()
    assert bgr.dtype == np.uint8 and bgr.shape == scene.image_rgb.shape
    np.testing.assert_array_equal(bgr, scene.image_rgb[:, :, ::-1])


def test_layout_bounds(scenes):
    for scene in scenes:
        short = min(scene.height, scene.width)
        for o in scene.objects:
            x1, y1, x2, y2 = o.box
            assert 0 <= x1 < x2 <= scene.width and 0 <= y1 < y2 <= scene.height
            assert o.shape in SHAPES and o.color in COLORS
            low, high = SIZE_PERCENT[o.size]
            side = x2 - x1
            assert side == y2 - y1
            assert low / 100 * short - 0.25 <= side <= high / 100 * short + 0.25
        for i, a in enumerate(scene.objects):
            for b in scene.objects[i + 1 :]:
                iw = min(a.box[2], b.box[2]) - max(a.box[0], b.box[0])
                ih = min(a.box[3], b.box[3]) - max(a.box[1], b.box[1])
                inter = max(iw, 0) * max(ih, 0)
                area_a = (a.box[2] - a.box[0]) ** 2
                area_b = (b.box[2] - b.box[0]) ** 2
                assert inter <= 0.25 * min(area_a, area_b) + 1e-9
                assert inter / (area_a + area_b - inter) < 0.3


def test_boxes_are_tight_around_each_mask(scenes):
    for scene in scenes:
        for o in scene.objects:
            alpha = object_alpha(o, height=scene.height, width=scene.width)
            ys, xs = np.nonzero(alpha)
            x1, y1, x2, y2 = o.box
            # Every painted pixel lies inside the box (pixel i covers [i, i + 1)) ...
            assert xs.min() >= math.floor(x1) and xs.max() + 1 <= math.ceil(x2)
            assert ys.min() >= math.floor(y1) and ys.max() + 1 <= math.ceil(y2)
            # ... and the paint reaches every side of the box to within one pixel.
            assert xs.min() <= x1 + 1 and xs.max() + 1 >= x2 - 1
            assert ys.min() <= y1 + 1 and ys.max() + 1 >= y2 - 1


def _nearest_color(rgb: np.ndarray) -> str:
    dist = [np.abs(rgb - np.array(c)).sum() for c in COLOR_RGB]
    return COLORS[int(np.argmin(dist))]


def test_pixels_show_each_object_in_its_colour_and_nothing_else(scenes):
    for scene in scenes:
        image = scene.image_rgb.astype(np.int32)
        masks = [object_alpha(o, height=scene.height, width=scene.width) for o in scene.objects]
        for i, o in enumerate(scene.objects):
            visible = masks[i] == 255
            for later in masks[i + 1 :]:
                visible &= later == 0
            # Overlap is bounded, so most of every object stays visible.
            assert visible.sum() >= 0.3 * (masks[i] == 255).sum()
            median = np.median(image[visible], axis=0)
            assert _nearest_color(median) == o.color, (scene.seed, o)
        background = np.all(np.stack(masks) == 0, axis=0)
        pixels = image[background]
        # Backgrounds are dim, nearly gray: far from every object colour (white included).
        assert (pixels.max(axis=1) - pixels.min(axis=1)).max() <= 40
        assert pixels.max() <= 205


def test_coverage_is_exact_for_squares_and_close_for_circles():
    for box in [(10.0, 5.0, 20.0, 15.0), (10.25, 5.5, 23.75, 19.0), (3.75, 7.25, 4.75, 8.25)]:
        alpha = object_alpha(SceneObject("square", "red", "small", box), height=30, width=30)
        side = box[2] - box[0]
        assert abs(alpha.astype(np.int64).sum() / 255 - side * side) < 0.05
        assert (
            alpha[int(box[1]) + 1 : int(box[3]) - 1, int(box[0]) + 1 : int(box[2]) - 1] == 255
        ).all()
    box = (5.5, 6.25, 45.5, 46.25)
    alpha = object_alpha(SceneObject("circle", "red", "small", box), height=60, width=60)
    area = alpha.astype(np.int64).sum() / 255
    assert abs(area - math.pi * 20**2) / (math.pi * 20**2) < 0.03
    # A centre pixel and a corner pixel of the box.
    assert alpha[26, 25] == 255 and alpha[6, 5] == 0
