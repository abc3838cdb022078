"""The detector network: anchors, RPN layout, shapes, batching, BN folding, full-size forward."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
from skimage import data

from detector import InferenceOptions, build_detector, get_preset
from detector.backbone import fold_frozen_batchnorm
from detector.model import batches_by_shape
from detector.preprocess import prepare
from detector.rpn import AnchorGenerator, RPNHead, cell_anchors

TINY = get_preset("tiny")


@pytest.fixture(scope="module")
def tiny_detector():
    return build_detector(TINY, seed=0)


@pytest.fixture(scope="module")
def photos():
    # astronaut 512x512, coffee 400x600, chelsea 300x451, rocket 427x640
    return {
        "astronaut": data.astronaut(),
        "coffee": data.coffee(),
        "chelsea": data.chelsea(),
        "rocket": data.rocket(),
    }


def test_cell_anchors_are_size_major_with_equal_areas() -> None:
    anchors = cell_anchors((64, 128), (0.5, 1.0, 2.0))
    assert anchors.shape == (6, 4)
    w = anchors[:, 2] - anchors[:, 0]
    h = anchors[:, 3] - anchors[:, 1]
    torch.testing.assert_close(w * h, torch.tensor([64.0**2] * 3 + [128.0**2] * 3))
    torch.testing.assert_close(h / w, torch.tensor([0.5, 1.0, 2.0] * 2))
    # Detectron2 geometry: centred on (0, 0), no +1 and no rounding.
    assert anchors[0].tolist() == pytest.approx(
        [-math.sqrt(8192) / 2, -math.sqrt(8192) / 4, math.sqrt(8192) / 2, math.sqrt(8192) / 4]
    )


def test_grid_anchors_order_is_location_then_anchor() -> None:
    generator = AnchorGenerator(sizes=(32, 64), ratios=(1.0,), stride=16)
    grid = generator(2, 3)
    base = generator.base_anchors
    assert grid.shape == (2 * 3 * 2, 4)
    for y in range(2):
        for x in range(3):
            for a in range(2):
                row = (y * 3 + x) * 2 + a
                expected = base[a] + torch.tensor([16.0 * x, 16.0 * y, 16.0 * x, 16.0 * y])
                torch.testing.assert_close(grid[row], expected)


def test_rpn_head_flattens_like_the_anchor_grid() -> None:
    torch.manual_seed(0)
    head = RPNHead(in_channels=4, hidden_channels=5, num_anchors=3)
    features = torch.randn(2, 4, 3, 4)
    with torch.no_grad():
        logits, deltas = head(features)
        hidden = torch.relu(head.conv(features))
        raw_logits = head.objectness_logits(hidden)
        raw_deltas = head.anchor_deltas(hidden)
    for b in range(2):
        for y in range(3):
            for x in range(4):
                for a in range(3):
                    row = (y * 4 + x) * 3 + a
                    assert logits[b, row].item() == raw_logits[b, a, y, x].item()
                    expected = raw_deltas[b, a * 4 : a * 4 + 4, y, x]
                    torch.testing.assert_close(deltas[b, row], expected)


def test_stem_uses_caffe_max_pool() -> None:
    detector = build_detector(TINY, seed=0)
    x = torch.randn(1, 3, 97, 130)
    stem_out = detector.backbone.stem(x)
    # conv 7x7/2 pad 3: 49x65; pool 3x3/2 pad 0 ceil: ceil((49-3)/2)+1 = 24, ceil((65-3)/2)+1 = 32
    assert stem_out.shape[2:] == (24, 32)


def test_regions_shapes_and_dtypes(tiny_detector, photos) -> None:
    (regions,) = tiny_detector.regions([photos["coffee"]], ["coffee"])
    assert regions.image_id == "coffee"
    assert (regions.image_h, regions.image_w) == (400, 600)
    n = regions.num_boxes
    assert TINY.min_boxes <= n <= TINY.max_boxes
    assert regions.boxes.shape == (n, 4) and regions.boxes.dtype == np.float32
    assert regions.features.shape == (n, TINY.feature_dim)
    assert regions.features.dtype == np.float32
    assert regions.objects_id.dtype == np.int64 and regions.attrs_id.dtype == np.int64
    assert regions.objects_id.max() < TINY.num_classes
    assert regions.attrs_id.max() < TINY.num_attributes
    assert np.isfinite(regions.features).all() and np.abs(regions.features).max() > 0
    assert (regions.boxes[:, 2] >= regions.boxes[:, 0]).all()
    assert regions.boxes.min() >= 0 and regions.boxes[:, 2].max() <= 600
    assert regions.normalized_boxes.max() <= 1.0


def test_random_init_behaves_at_full_depth() -> None:
    """ResNet-101 depth with the seeded init: finite, non-trivial res4 and proposals."""
    config = TINY.replace(stage_blocks=(3, 4, 23, 3))
    detector = build_detector(config, seed=0)
    image = prepare(data.chelsea(), config=config, image_id="chelsea")
    with torch.inference_mode():
        raw = detector.forward_raw(image.tensor[None])
    assert torch.isfinite(raw.features).all()
    assert 1e-3 < raw.features.abs().mean() < 1e3
    assert len(raw.rpn.proposals[0]) > TINY.max_boxes


def test_batch_equals_single(tiny_detector, photos) -> None:
    images = [
        prepare(photos["coffee"], config=TINY, image_id="a"),
        prepare(photos["rocket"], config=TINY, image_id="b"),
        prepare(np.ascontiguousarray(photos["coffee"][:, ::-1]), config=TINY, image_id="c"),
        prepare(photos["astronaut"], config=TINY, image_id="d"),
    ]
    batched = tiny_detector.detect(images, batch_size=4)
    single = [tiny_detector.detect([image])[0] for image in images]
    assert [r.image_id for r in batched] == ["a", "b", "c", "d"]
    for one, many in zip(single, batched, strict=True):
        np.testing.assert_array_equal(one.boxes, many.boxes)
        np.testing.assert_array_equal(one.objects_id, many.objects_id)
        np.testing.assert_allclose(many.features, one.features, rtol=1e-4, atol=1e-6)


def test_batches_group_by_shape() -> None:
    images = [
        prepare(data.coffee(), config=TINY, image_id="a"),
        prepare(data.astronaut(), config=TINY, image_id="b"),
        prepare(data.coffee(), config=TINY, image_id="c"),
        prepare(data.coffee(), config=TINY, image_id="d"),
    ]
    assert list(batches_by_shape(images, 2)) == [[0, 2], [3], [1]]
    with pytest.raises(ValueError, match="batch_size"):
        list(batches_by_shape(images, 0))


def test_bn_folding_keeps_outputs(photos) -> None:
    detector = build_detector(TINY, seed=5)
    # Non-trivial BN statistics so that folding has something to do.
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, buffer in detector.named_buffers():
            if name.endswith("running_mean"):
                buffer.copy_(torch.randn(buffer.shape, generator=generator) * 0.1)
            elif name.endswith("running_var"):
                buffer.copy_(torch.rand(buffer.shape, generator=generator) + 0.5)
    folded = copy.deepcopy(detector)
    assert fold_frozen_batchnorm(folded) > 0
    image = prepare(photos["chelsea"], config=TINY, image_id="x")
    with torch.inference_mode():
        before = detector.forward_raw(image.tensor[None])
        after = folded.forward_raw(image.tensor[None])
    scale = before.features.abs().max()
    assert (after.features - before.features).abs().max() / scale < 1e-5
    # Same proposals; folding moves res4 by ~1e-6 relative, so a coordinate (up to ~200 px)
    # may move by a few float32 ulps.
    torch.testing.assert_close(
        after.rpn.proposals[0], before.rpn.proposals[0], rtol=1e-5, atol=1e-4
    )
    rel = (after.roi.features - before.roi.features).abs().max() / before.roi.features.abs().max()
    assert rel < 1e-5


@pytest.mark.slow
def test_full_size_forward_on_one_image() -> None:
    config = get_preset("vg-r101-c4-attr")
    detector = build_detector(config, seed=0).optimize_for_inference()
    small = data.chelsea()[::2, ::2]
    (regions,) = detector.regions([small], ["chelsea"])
    assert regions.num_boxes == 36
    assert regions.features.shape == (36, 2048)
    assert np.isfinite(regions.features).all()


@pytest.mark.parametrize("channels_last", [False, True])
def test_memory_formats_give_the_same_regions(photos, channels_last: bool) -> None:
    plain = build_detector(TINY, seed=2).optimize_for_inference(
        InferenceOptions(channels_last=False)
    )
    other = copy.deepcopy(plain).apply_options(InferenceOptions(channels_last=channels_last))
    assert other.options.channels_last is channels_last
    conv = other.backbone.stem.conv1
    assert conv.weight.is_contiguous(memory_format=torch.channels_last) is channels_last
    image = prepare(photos["rocket"], config=TINY, image_id="r")
    (expected,) = plain.detect([image])
    (actual,) = other.detect([image])
    np.testing.assert_array_equal(actual.objects_id, expected.objects_id)
    np.testing.assert_allclose(actual.boxes, expected.boxes, rtol=1e-5, atol=1e-3)
    np.testing.assert_allclose(actual.features, expected.features, rtol=1e-4, atol=1e-5)


def test_out_of_memory_splits_the_batch_and_retries(tiny_detector, photos, monkeypatch) -> None:
    images = [prepare(photos["coffee"], config=TINY, image_id=str(i)) for i in range(4)]
    expected = tiny_detector.detect(images, batch_size=1)
    real = type(tiny_detector)._detect_same_size
    sizes = []

    def fails_above_one(self, batch, boxes):
        sizes.append(len(batch))
        if len(batch) > 1:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")
        return real(self, batch, boxes)

    monkeypatch.setattr(type(tiny_detector), "_detect_same_size", fails_above_one)
    got = tiny_detector.detect(images, batch_size=4)
    assert sizes == [4, 2, 1, 1, 2, 1, 1]
    for a, b in zip(got, expected, strict=True):
        assert a.image_id == b.image_id
        np.testing.assert_array_equal(a.features, b.features)


def test_auto_batch_size_is_one_on_cpu() -> None:
    from detector.model import auto_batch_size

    assert auto_batch_size(torch.device("cpu"), (600, 1000)) == 1
