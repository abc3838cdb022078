"""Features for given boxes: Detector.detect/regions(boxes=...) on real photos."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from skimage import data
from torchvision.ops import roi_pool

from detector import Detector, RegionFeatures, build_detector, get_preset
from detector.given_boxes import check_given_boxes, given_box_rois
from detector.preprocess import PreparedImage, prepare

TINY = get_preset("tiny")


def photos() -> dict[str, np.ndarray]:
    """RGB photos. The crops are widths whose resized width is a multiple of 16 plus 8 while
    ``width * scale`` falls short of it (coffee: 498 * 0.24 = 119.52 -> 120), so a box on the
    right edge pools other RoIPool cells unless the far edge maps to the far edge; with the
    seeded tiny detector in detectron2 mode, bottom-up keeps such a box in both crops."""
    return {
        "astronaut": data.astronaut(),
        "coffee": data.coffee(),
        "chelsea": data.chelsea(),
        "rocket": data.rocket(),
        "coffee-498": np.ascontiguousarray(data.coffee()[:, :498]),
        "chelsea-374": np.ascontiguousarray(data.chelsea()[:, :374]),
    }


@pytest.fixture(scope="module", params=["detectron2", "caffe"])
def bottom_up(request: pytest.FixtureRequest) -> tuple[Detector, list[RegionFeatures]]:
    """A seeded tiny bottom-up detector (each proposal layer) and its regions of the photos."""
    config = dataclasses.replace(TINY, selection="bottom-up", proposals=request.param)
    detector = build_detector(config, seed=0).optimize_for_inference()
    images = photos()
    return detector, detector.regions(list(images.values()), list(images))


def assert_same_labels_close_features(got: RegionFeatures, ref: RegionFeatures) -> None:
    assert got.image_id == ref.image_id
    assert (got.image_h, got.image_w) == (ref.image_h, ref.image_w)
    np.testing.assert_array_equal(got.boxes, ref.boxes)
    np.testing.assert_array_equal(got.objects_id, ref.objects_id)
    np.testing.assert_array_equal(got.attrs_id, ref.attrs_id)
    scale = float(np.abs(ref.features).max())
    np.testing.assert_allclose(got.features, ref.features, rtol=1e-5, atol=1e-5 * scale)
    np.testing.assert_allclose(got.objects_conf, ref.objects_conf, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(got.attrs_conf, ref.attrs_conf, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("batch_size", [1, 3])
def test_a_bottom_up_runs_own_boxes_reproduce_its_regions(bottom_up, batch_size: int) -> None:
    detector, reference = bottom_up
    images = photos()
    got = detector.regions(
        list(images.values()),
        list(images),
        boxes=[region.boxes for region in reference],
        batch_size=batch_size,
    )
    for region, ref in zip(got, reference, strict=True):
        assert_same_labels_close_features(region, ref)


def test_the_right_edge_case_is_exercised(bottom_up) -> None:
    detector, reference = bottom_up
    if detector.config.proposals != "detectron2":
        pytest.skip("caffe proposals end at W - 1, inside the raw image")
    by_id = {region.image_id: region for region in reference}
    for image_id in ("coffee-498", "chelsea-374"):
        region = by_id[image_id]
        assert (region.boxes[:, 2] == region.image_w).any(), image_id


def prepared(name: str) -> PreparedImage:
    return prepare(photos()[name], config=TINY, image_id=name)


def reference_regions(detector: Detector, image: PreparedImage, boxes: np.ndarray):
    """Features, class and attribute probabilities of ``boxes`` (raw pixels, inside the image,
    off its far edges) computed here from the detector's modules: RoIs = boxes * scale,
    RoIPool 1/16, res5, mean, predictors."""
    with torch.inference_mode():
        res4 = detector.backbone(image.tensor[None])
        rois = torch.from_numpy((boxes.astype(np.float64) * image.scale).astype(np.float32))
        indexed = torch.cat([torch.zeros(len(rois), 1), rois], dim=1)
        pooled = roi_pool(res4, indexed, TINY.pooler_resolution, 1.0 / 16)
        features = detector.roi_heads.res5(pooled).mean(dim=(2, 3))
        predictor = detector.roi_heads.box_predictor
        logits = predictor.cls_score(features)
        embedded = predictor.cls_embedding(logits.argmax(dim=1))
        hidden = torch.relu(predictor.fc_attr(torch.cat([features, embedded], dim=1)))
        attrs = predictor.attr_score(hidden)
    return features.numpy(), logits.softmax(dim=1).numpy(), attrs.softmax(dim=1).numpy()


@pytest.fixture(scope="module")
def tiny() -> Detector:
    return build_detector(TINY, seed=0).optimize_for_inference()


def test_features_and_labels_are_the_heads_on_exactly_these_boxes_in_order(tiny) -> None:
    image = prepared("coffee")  # 600 x 400 raw
    boxes = np.array(
        [[10, 20, 200, 300], [300.5, 50.25, 590, 390], [0, 0, 50, 40], [120, 80, 480, 260]],
        np.float32,
    )
    region = tiny.detect([image], boxes=[boxes])[0]
    features, class_probs, attr_probs = reference_regions(tiny, image, boxes)
    np.testing.assert_array_equal(region.boxes, boxes)
    scale = float(np.abs(features).max())
    np.testing.assert_allclose(region.features, features, rtol=1e-5, atol=1e-5 * scale)
    objects = class_probs[:, :-1]  # background last
    np.testing.assert_array_equal(region.objects_id, objects.argmax(axis=1))
    np.testing.assert_allclose(region.objects_conf, objects.max(axis=1), rtol=1e-5)
    attributes = attr_probs[:, :-1]  # bottom-up: not renormalised
    np.testing.assert_array_equal(region.attrs_id, attributes.argmax(axis=1))
    np.testing.assert_allclose(region.attrs_conf, attributes.max(axis=1), rtol=1e-5)

    order = np.array([2, 0, 3, 1])
    shuffled = tiny.detect([image], boxes=[torch.from_numpy(boxes[order])])[0]
    np.testing.assert_array_equal(shuffled.boxes, boxes[order])
    np.testing.assert_array_equal(shuffled.objects_id, region.objects_id[order])
    np.testing.assert_allclose(shuffled.features, region.features[order], rtol=1e-5, atol=1e-5)


def test_max_class_mode_renormalises_attributes_as_its_selection_does() -> None:
    detector = build_detector(dataclasses.replace(TINY, selection="max-class"), seed=0)
    image = prepared("coffee")
    boxes = np.array([[10, 20, 200, 300], [120, 80, 480, 260]], np.float32)
    region = detector.optimize_for_inference().detect([image], boxes=[boxes])[0]
    _, _, attr_probs = reference_regions(detector, image, boxes)
    renormalised = attr_probs[:, :-1] / attr_probs[:, :-1].sum(axis=1, keepdims=True)
    np.testing.assert_array_equal(region.attrs_id, renormalised.argmax(axis=1))
    np.testing.assert_allclose(region.attrs_conf, renormalised.max(axis=1), rtol=1e-5)


def test_boxes_outside_the_image_are_clipped_to_it(tiny) -> None:
    image = prepared("coffee")  # 600 x 400
    outside = np.array([[-30, -5, 250, 200], [400, 300, 900, 700]], np.float32)
    inside = np.array([[0, 0, 250, 200], [400, 300, 600, 400]], np.float32)
    got, expected = tiny.detect([image, image], boxes=[outside, inside])
    np.testing.assert_array_equal(got.boxes, inside)
    np.testing.assert_array_equal(got.features, expected.features)


def test_the_rpn_does_not_run_for_given_boxes(tiny) -> None:
    calls: list[int] = []
    hook = tiny.proposal_generator.register_forward_hook(lambda *_: calls.append(1))
    try:
        tiny.detect([prepared("coffee")], boxes=[np.array([[0, 0, 10, 10]], np.float32)])
        assert calls == []
        tiny.detect([prepared("coffee")])
        assert calls == [1]
    finally:
        hook.remove()


def test_far_edges_map_to_the_resized_far_edges() -> None:
    # raw 47 x 30 at scale 0.5: resized 24 x 15 (OpenCV rounds 23.5 to 24), so the raw right
    # edge 47 goes to 24, not 23.5 (RoIPool would round 23.5 / 16 down and 24 / 16 up).
    image = PreparedImage(
        image_id="x", pixels=np.zeros((3, 15, 24), np.float32), scale=0.5, raw_h=30, raw_w=47
    )
    boxes = torch.tensor([[3.0, 5.0, 47.0, 30.0], [1.0, 2.0, 45.0, 29.0]])
    rois = given_box_rois(boxes, image)
    assert rois.tolist() == [[1.5, 2.5, 24.0, 15.0], [0.5, 1.0, 22.5, 14.5]]


@pytest.mark.parametrize(
    ("boxes", "message"),
    [
        ([[1, 2, 10, float("nan")]], r"box 0 \[1, 2, 10, nan\] has a NaN or infinite coordinate"),
        ([[1, 2, 10, 12], [5, 5, 5, 9]], r"box 1 \[5, 5, 5, 9\] is degenerate"),
        ([[1, 2, 10, 12], [9, 9, 3, 20]], r"box 1 .* is degenerate"),
        ([[700, 10, 800, 20]], r"box 0 .* lies wholly outside the 600x400 image"),
        ([[1, 2, float("inf"), 4]], "NaN or infinite"),
        (np.zeros((0, 4)), "no boxes"),
        ([[1, 2, 3]], r"\[K, 4\]"),
    ],
)
def test_unusable_boxes_are_refused_naming_the_image_and_box(tiny, boxes, message) -> None:
    with pytest.raises(ValueError, match=r"image 'coffee': .*" + message):
        tiny.detect([prepared("coffee")], boxes=[np.asarray(boxes, np.float32)])


def test_one_box_set_per_image() -> None:
    image = prepared("coffee")
    detector = build_detector(TINY, seed=0)
    one = np.array([[0, 0, 10, 10]], np.float32)
    with pytest.raises(ValueError, match="got 2 images and 1 box sets"):
        detector.detect([image, image], boxes=[one])
    with pytest.raises(ValueError, match=r"wrap one image's boxes in a list: \[boxes\]"):
        detector.detect([image], boxes=one)


def test_check_given_boxes_clips_and_keeps_order() -> None:
    boxes = np.array([[-1, 5, 20, 50], [3, -2, 9, 4]], np.float32)
    checked = check_given_boxes(boxes, image_h=40, image_w=10)
    assert checked.dtype == torch.float32
    assert checked.tolist() == [[0, 5, 10, 40], [3, 0, 9, 4]]
    assert boxes[0, 0] == -1  # the caller's array is untouched


def test_out_of_memory_splits_images_with_their_boxes(tiny, monkeypatch) -> None:
    images = [prepared("coffee"), prepared("coffee"), prepared("coffee")]
    boxes = [np.array([[0, 0, 10 + 50 * i, 40]], np.float32) for i in range(3)]
    expected = [tiny.detect([image], boxes=[b])[0] for image, b in zip(images, boxes, strict=True)]
    real = type(tiny)._detect_same_size

    def fails_above_one(self, batch, batch_boxes):
        if len(batch) > 1:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")
        return real(self, batch, batch_boxes)

    monkeypatch.setattr(type(tiny), "_detect_same_size", fails_above_one)
    got = tiny.detect(images, boxes=boxes, batch_size=3)
    for region, one in zip(got, expected, strict=True):
        np.testing.assert_array_equal(region.boxes, one.boxes)
        np.testing.assert_array_equal(region.features, one.features)


def edge_cases(min_size: int, max_size: int, heights: range, widths: range):
    """(raw h, raw w, scale, resized side n) where a Caffe far edge ``n - 1`` with
    ``(n - 1) / 16 = k + 1/2``, written out as a bottom-up run writes it (float32 ``(n - 1) /
    scale``), comes back one float32 step off ``n - 1`` by the plain product."""
    from detector.boxes import unscale_boxes
    from detector.preprocess import compute_scale, resized_size

    for raw_h in heights:
        for raw_w in widths:
            scale = compute_scale(raw_h, raw_w, min_size=min_size, max_size=max_size)
            for n in resized_size(raw_h, raw_w, scale):
                edge = torch.tensor([[float(n - 1)] * 4])
                plain = (unscale_boxes(edge, scale).double() * scale).float()
                if (n - 1) % 16 == 8 and not torch.equal(plain, edge):
                    yield raw_h, raw_w, scale, n


def test_a_runs_own_integer_coordinates_come_back_exactly_at_half_cell_edges() -> None:
    from detector.boxes import unscale_boxes
    from detector.preprocess import resized_size

    cases = list(edge_cases(600, 1000, range(300, 700, 13), range(300, 1200, 7)))
    assert len(cases) > 20  # the sizes hit the case often: the test means something
    for raw_h, raw_w, scale, n in cases:
        h, w = resized_size(raw_h, raw_w, scale)
        image = PreparedImage(
            image_id="x",
            pixels=np.zeros((3, h, w), np.float32),
            scale=scale,
            raw_h=raw_h,
            raw_w=raw_w,
        )
        # Caffe-clipped proposals: 0 and the far edges W - 1, H - 1, and other integers.
        assert n - 1 in (w - 1, h - 1)
        proposals = torch.tensor([[0.0, 0.0, w - 1, h - 1], [1.0, 2.0, w - 9, h - 3]])
        boxes = unscale_boxes(proposals, scale)  # as bottom-up selection writes them
        boxes = torch.minimum(boxes, torch.tensor([raw_w, raw_h, raw_w, raw_h]))
        assert torch.equal(given_box_rois(boxes, image), proposals), (raw_h, raw_w)


@pytest.mark.parametrize(("name", "width"), [("coffee", 317), ("astronaut", 358)])
def test_caffe_far_edges_at_half_cells_reproduce_features_bit_for_bit(
    name: str, width: int
) -> None:
    # The tiny preset resizes these crops to 121 and 137 rows: (n - 1) / 16 = 7.5 and 8.5,
    # and a box on the bottom edge, fed back, would pool one row less without the recovery.
    from detector.preprocess import compute_scale

    image = np.ascontiguousarray(getattr(data, name)()[:, :width])
    scale = compute_scale(*image.shape[:2], min_size=TINY.min_size, max_size=TINY.max_size)
    assert any(n for _, _, _, n in edge_cases(96, 160, [image.shape[0]], [width]))
    config = dataclasses.replace(TINY, selection="bottom-up", proposals="caffe")
    detector = build_detector(config, seed=0).optimize_for_inference()
    reference = detector.regions([image], [name])[0]
    h = round(image.shape[0] * scale)
    edge = (torch.tensor([[float(h - 1)] * 4]) / scale)[0, 0].item()
    assert (reference.boxes[:, 3] == np.float32(edge)).any()  # a box ends on that edge
    again = detector.regions([image], [name], boxes=[reference.boxes])[0]
    np.testing.assert_array_equal(again.boxes, reference.boxes)
    np.testing.assert_array_equal(again.features, reference.features)
    np.testing.assert_array_equal(again.objects_id, reference.objects_id)
    np.testing.assert_array_equal(again.objects_conf, reference.objects_conf)
