"""Box geometry against hand-computed values and independent computations."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torchvision

from detector.boxes import (
    DEFAULT_SCALE_CLAMP,
    apply_deltas,
    clip_boxes,
    encode_deltas,
    nonempty,
    pairwise_iou,
    pairwise_iou_caffe,
    scale_boxes,
    unscale_boxes,
)

HEAD_WEIGHTS = (10.0, 10.0, 5.0, 5.0)


def random_boxes(generator: torch.Generator, n: int, size: float = 500.0) -> torch.Tensor:
    xy = torch.rand(n, 2, generator=generator) * size
    wh = torch.rand(n, 2, generator=generator) * size / 2 + 1.0
    return torch.cat([xy, xy + wh], dim=1)


def test_apply_deltas_hand_values() -> None:
    # Box centre (5, 10), size 10 x 20: shift x by 0.1 w, y by -0.1 h, double the width.
    box = torch.tensor([[0.0, 0.0, 10.0, 20.0]])
    unit = torch.tensor([[0.1, -0.1, math.log(2.0), 0.0]])
    expected = torch.tensor([[-4.0, -2.0, 16.0, 18.0]])
    out = apply_deltas(unit, box, weights=(1.0, 1.0, 1.0, 1.0))
    torch.testing.assert_close(out, expected)
    # The box head's weights scale the deltas: the same move, expressed in its units.
    scaled = unit * torch.tensor(HEAD_WEIGHTS)
    torch.testing.assert_close(apply_deltas(scaled, box, weights=HEAD_WEIGHTS), expected)


def test_apply_deltas_class_specific_and_dtype() -> None:
    boxes = torch.tensor([[0.0, 0.0, 10.0, 20.0], [5.0, 5.0, 9.0, 7.0]], dtype=torch.float16)
    deltas = torch.zeros(2, 3 * 4, dtype=torch.float16)
    deltas[:, 4] = 1.0  # second class of each box: shift x by one width (weights 1)
    out = apply_deltas(deltas, boxes, weights=(1.0, 1.0, 1.0, 1.0))
    assert out.shape == (2, 12) and out.dtype == torch.float32
    torch.testing.assert_close(out[:, 0:4], boxes.float())
    torch.testing.assert_close(out[:, 8:12], boxes.float())
    torch.testing.assert_close(
        out[:, 4:8], boxes.float() + torch.tensor([[10, 0, 10, 0], [4, 0, 4, 0]])
    )


def test_apply_deltas_clamps_scale() -> None:
    box = torch.tensor([[0.0, 0.0, 16.0, 16.0]])
    deltas = torch.tensor([[0.0, 0.0, 50.0, 50.0]])
    out = apply_deltas(deltas, box, weights=(1.0, 1.0, 1.0, 1.0))
    side = 16.0 * math.exp(DEFAULT_SCALE_CLAMP)  # 1000 px
    torch.testing.assert_close(
        out, torch.tensor([[8 - side / 2, 8 - side / 2, 8 + side / 2, 8 + side / 2]])
    )


def test_encode_apply_round_trip() -> None:
    generator = torch.Generator().manual_seed(0)
    src = random_boxes(generator, 200)
    target = random_boxes(generator, 200)
    deltas = encode_deltas(src, target, weights=HEAD_WEIGHTS)
    assert deltas.shape == (200, 4)
    back = apply_deltas(deltas, src, weights=HEAD_WEIGHTS)
    torch.testing.assert_close(back, target, rtol=1e-5, atol=1e-3)


def test_encode_deltas_hand_values() -> None:
    src = torch.tensor([[0.0, 0.0, 10.0, 20.0]])
    target = torch.tensor([[-4.0, -2.0, 16.0, 18.0]])
    deltas = encode_deltas(src, target, weights=HEAD_WEIGHTS)
    torch.testing.assert_close(deltas, torch.tensor([[1.0, -1.0, 5 * math.log(2.0), 0.0]]))


def test_encode_deltas_rejects_empty_source() -> None:
    with pytest.raises(ValueError, match="positive width"):
        encode_deltas(torch.tensor([[0.0, 0.0, 0.0, 5.0]]), torch.ones(1, 4), weights=HEAD_WEIGHTS)


def test_clip_boxes_hand_values_and_no_mutation() -> None:
    boxes = torch.tensor([[-5.0, -1.0, 120.0, 30.0], [10.0, 90.0, 20.0, 300.0]])
    before = boxes.clone()
    out = clip_boxes(boxes, (80, 100))  # h=80, w=100
    torch.testing.assert_close(
        out, torch.tensor([[0.0, 0.0, 100.0, 30.0], [10.0, 80.0, 20.0, 80.0]])
    )
    torch.testing.assert_close(boxes, before)


def test_clip_boxes_rejects_non_finite() -> None:
    with pytest.raises(ValueError, match="NaN or infinite"):
        clip_boxes(torch.tensor([[0.0, float("nan"), 1.0, 1.0]]), (10, 10))


def test_nonempty() -> None:
    boxes = torch.tensor([[0.0, 0.0, 1.0, 1.0], [0.0, 0.0, 0.0, 5.0], [0, 0, 5, 0.5], [2, 2, 1, 3]])
    assert nonempty(boxes).tolist() == [True, False, True, False]
    assert nonempty(boxes, threshold=0.5).tolist() == [True, False, False, False]


def test_pairwise_iou_hand_values_and_torchvision() -> None:
    a = torch.tensor([[0.0, 0.0, 10.0, 10.0]])
    b = torch.tensor([[5.0, 0.0, 15.0, 10.0], [10.0, 0.0, 20.0, 10.0], [0.0, 0.0, 10.0, 10.0]])
    torch.testing.assert_close(pairwise_iou(a, b), torch.tensor([[1 / 3, 0.0, 1.0]]))
    # Degenerate boxes (zero union) give 0, not NaN.
    point = torch.tensor([[3.0, 3.0, 3.0, 3.0]])
    assert pairwise_iou(point, point).item() == 0.0
    generator = torch.Generator().manual_seed(1)
    x, y = random_boxes(generator, 30), random_boxes(generator, 20)
    torch.testing.assert_close(pairwise_iou(x, y), torchvision.ops.box_iou(x, y))


def plain_caffe_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    out = np.zeros((len(a), len(b)), dtype=np.float32)
    for i, (ax1, ay1, ax2, ay2) in enumerate(a):
        for j, (bx1, by1, bx2, by2) in enumerate(b):
            area_a = (ax2 - ax1 + 1) * (ay2 - ay1 + 1)
            area_b = (bx2 - bx1 + 1) * (by2 - by1 + 1)
            w = max(np.float32(0), min(ax2, bx2) - max(ax1, bx1) + 1)
            h = max(np.float32(0), min(ay2, by2) - max(ay1, by1) + 1)
            out[i, j] = w * h / (area_a + area_b - w * h)
    return out


def test_pairwise_iou_caffe_hand_values() -> None:
    a = torch.tensor([[0.0, 0.0, 9.0, 9.0]])  # 10 x 10 pixels in the +1 convention
    b = torch.tensor(
        [
            [5.0, 0.0, 14.0, 9.0],  # 5 columns shared: 50 / 150
            [10.0, 0.0, 19.0, 9.0],  # adjacent: nothing shared
            [9.0, 0.0, 18.0, 9.0],  # one shared column: 10 / 190
            [0.0, 0.0, 9.0, 4.0],  # half of a: exactly 0.5
        ]
    )
    expected = torch.tensor([[1 / 3, 0.0, 10 / 190, 0.5]])
    torch.testing.assert_close(pairwise_iou_caffe(a, b), expected)
    assert pairwise_iou_caffe(a, b)[0, 3].item() == 0.5


def test_pairwise_iou_caffe_matches_plain_float32() -> None:
    generator = torch.Generator().manual_seed(2)
    x = random_boxes(generator, 25)
    y = torch.cat([random_boxes(generator, 15), x[:5].round()])
    out = pairwise_iou_caffe(x, y)
    assert out.dtype == torch.float32
    # Bitwise equal: the NMS decisions in select.py depend on these exact float32 values.
    np.testing.assert_array_equal(out.numpy(), plain_caffe_iou(x.numpy(), y.numpy()))


def test_scale_boxes() -> None:
    boxes = torch.tensor([[1.0, 2.0, 3.0, 4.0]])
    torch.testing.assert_close(scale_boxes(boxes, 2.0, 0.5), torch.tensor([[2.0, 1.0, 6.0, 2.0]]))


def test_unscale_boxes_divides_like_caffe() -> None:
    scale = 600 / 451  # chelsea's Caffe im_scale
    resized = np.random.default_rng(0).uniform(0, 800, (50, 4)).astype(np.float32)
    got = unscale_boxes(torch.from_numpy(resized), scale).numpy()
    # The reference's float32 `rois / im_scale`, bit for bit ...
    np.testing.assert_array_equal(got, resized / np.float32(scale))
    # ... which multiplying by 1 / scale does not reproduce.
    assert (scale_boxes(torch.from_numpy(resized), 1 / scale, 1 / scale).numpy() != got).any()
    with pytest.raises(ValueError, match="scale"):
        unscale_boxes(torch.from_numpy(resized), 0.0)


@pytest.mark.parametrize(
    "bad", [torch.zeros(3, 5), torch.zeros(4), torch.zeros(2, 2, 4)], ids=["5cols", "1d", "3d"]
)
def test_bad_shapes_raise(bad: torch.Tensor) -> None:
    with pytest.raises(ValueError, match=r"\[N, 4\]"):
        clip_boxes(bad, (10, 10))
    with pytest.raises(ValueError, match=r"\[N, 4\]"):
        pairwise_iou_caffe(bad, bad)


def test_bad_types_and_weights_raise() -> None:
    with pytest.raises(TypeError, match=r"torch\.Tensor"):
        nonempty(np.zeros((2, 4)))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="weights"):
        apply_deltas(torch.zeros(1, 4), torch.zeros(1, 4), weights=(1.0, 1.0, 0.0, 1.0))
    with pytest.raises(ValueError, match="k\\*4"):
        apply_deltas(torch.zeros(2, 4), torch.zeros(1, 4), weights=HEAD_WEIGHTS)
