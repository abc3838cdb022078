"""The Caffe proposal layer against a plain numpy port of the original test-time code.

The port below is written from the semantics of peteanderson80/bottom-up-attention's
``lib/rpn/proposal_layer.py``, ``lib/rpn/generate_anchors.py``,
``lib/fast_rcnn/bbox_transform.py`` and ``lib/nms/cpu_nms.pyx``: Caffe's blob layout (fg
probabilities ``(1, A, H, W)``, deltas ``(1, 4A, H, W)``, anchors ratio-major), a 2-way
softmax, float32 arithmetic, ``im_info`` as float32, numpy 1.x's ``argsort()[::-1]`` (the
introsort of introsort_helpers, not today's numpy, whose SIMD sorts order ties differently),
a correctly rounded float32 ``exp``, and NMS that removes suppressed candidates from a list
(cpu_nms marks them; the result is the same).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from introsort_helpers import exp32, introsort_argsort

from detector.checkpoint import config_from_dict
from detector.config import DetectorConfig, get_preset
from detector.proposals import (
    caffe_cell_anchors,
    caffe_nms,
    caffe_proposals,
    detectron2_proposals,
)
from detector.rpn import RPN, AnchorGenerator
from pipeline.features.manifest import record_settings

VG_SIZES = (64.0, 128.0, 256.0, 512.0)
VG_RATIOS = (0.5, 1.0, 2.0)


# --- the reference, in Caffe's layout -------------------------------------------------------
def ref_generate_anchors(base_size: int, ratios, scales) -> np.ndarray:
    """[R * S, 4] float64, ratio-major, as generate_anchors.py."""
    base = np.array([1, 1, base_size, base_size]) - 1
    w, h = base[2] - base[0] + 1, base[3] - base[1] + 1
    cx, cy = base[0] + 0.5 * (w - 1), base[1] + 0.5 * (h - 1)
    rows = []
    for ratio in ratios:
        ws = np.round(np.sqrt(w * h / ratio))
        hs = np.round(ws * ratio)
        ratio_box = [
            cx - 0.5 * (ws - 1),
            cy - 0.5 * (hs - 1),
            cx + 0.5 * (ws - 1),
            cy + 0.5 * (hs - 1),
        ]
        rw = ratio_box[2] - ratio_box[0] + 1
        rh = ratio_box[3] - ratio_box[1] + 1
        rcx, rcy = ratio_box[0] + 0.5 * (rw - 1), ratio_box[1] + 0.5 * (rh - 1)
        for scale in scales:
            sw, sh = rw * scale, rh * scale
            rows.append(
                [
                    rcx - 0.5 * (sw - 1),
                    rcy - 0.5 * (sh - 1),
                    rcx + 0.5 * (sw - 1),
                    rcy + 0.5 * (sh - 1),
                ]
            )
    return np.array(rows)


def ref_softmax_fg(bg: np.ndarray, fg: np.ndarray) -> np.ndarray:
    """Caffe's SoftmaxLayer over (bg, fg), float32: subtract the max, exp, normalise."""
    top = np.maximum(bg, fg)
    e_bg, e_fg = exp32(bg - top), exp32(fg - top)
    return e_fg / (e_bg + e_fg)


def ref_bbox_transform_inv(boxes: np.ndarray, deltas: np.ndarray) -> np.ndarray:
    boxes = boxes.astype(deltas.dtype, copy=False)
    widths = boxes[:, 2] - boxes[:, 0] + 1.0
    heights = boxes[:, 3] - boxes[:, 1] + 1.0
    ctr_x = boxes[:, 0] + 0.5 * widths
    ctr_y = boxes[:, 1] + 0.5 * heights
    pred_ctr_x = deltas[:, 0::4] * widths[:, None] + ctr_x[:, None]
    pred_ctr_y = deltas[:, 1::4] * heights[:, None] + ctr_y[:, None]
    with np.errstate(over="ignore"):
        pred_w = exp32(deltas[:, 2::4]) * widths[:, None]
        pred_h = exp32(deltas[:, 3::4]) * heights[:, None]
    out = np.zeros(deltas.shape, dtype=deltas.dtype)
    out[:, 0::4] = pred_ctr_x - 0.5 * pred_w
    out[:, 1::4] = pred_ctr_y - 0.5 * pred_h
    out[:, 2::4] = pred_ctr_x + 0.5 * pred_w
    out[:, 3::4] = pred_ctr_y + 0.5 * pred_h
    return out


def ref_clip_boxes(boxes: np.ndarray, im_shape: np.ndarray) -> np.ndarray:
    boxes[:, 0::4] = np.maximum(np.minimum(boxes[:, 0::4], im_shape[1] - 1), 0)
    boxes[:, 1::4] = np.maximum(np.minimum(boxes[:, 1::4], im_shape[0] - 1), 0)
    boxes[:, 2::4] = np.maximum(np.minimum(boxes[:, 2::4], im_shape[1] - 1), 0)
    boxes[:, 3::4] = np.maximum(np.minimum(boxes[:, 3::4], im_shape[0] - 1), 0)
    return boxes


def ref_filter_boxes(boxes: np.ndarray, min_size) -> np.ndarray:
    ws = boxes[:, 2] - boxes[:, 0] + 1
    hs = boxes[:, 3] - boxes[:, 1] + 1
    return np.where((ws >= min_size) & (hs >= min_size))[0]


def ref_cpu_nms(dets: np.ndarray, thresh: float) -> list[int]:
    """cpu_nms: float32 IoU with +1 areas, compared as a double; suppress at >= thresh."""
    x1, y1, x2, y2, scores = (dets[:, k] for k in range(5))
    areas = (x2 - x1 + 1) * (y2 - y1 + 1)
    order = introsort_argsort(scores)[::-1]
    keep = []
    while order.size > 0:
        i = order[0]
        keep.append(int(i))
        rest = order[1:]
        w = np.maximum(
            np.float32(0.0), np.minimum(x2[i], x2[rest]) - np.maximum(x1[i], x1[rest]) + 1
        )
        h = np.maximum(
            np.float32(0.0), np.minimum(y2[i], y2[rest]) - np.maximum(y1[i], y1[rest]) + 1
        )
        inter = w * h
        ovr = inter / (areas[i] + areas[rest] - inter)
        order = rest[ovr.astype(np.float64) < float(thresh)]
    return keep


def ref_proposal_layer(fg_prob, bbox_deltas, im_info, cell_anchors, *, pre, post, nms, stride=16):
    """ProposalLayer.forward at test time on Caffe blobs; returns (rois [R, 4], scores [R])."""
    num_anchors = cell_anchors.shape[0]
    height, width = fg_prob.shape[-2:]
    shift_x, shift_y = np.meshgrid(np.arange(0, width) * stride, np.arange(0, height) * stride)
    shifts = np.vstack((shift_x.ravel(), shift_y.ravel(), shift_x.ravel(), shift_y.ravel())).T
    anchors = cell_anchors.reshape((1, num_anchors, 4)) + shifts.reshape((1, -1, 4)).transpose(
        (1, 0, 2)
    )
    anchors = anchors.reshape((-1, 4))
    deltas = bbox_deltas.transpose((0, 2, 3, 1)).reshape((-1, 4))
    scores = fg_prob.transpose((0, 2, 3, 1)).reshape((-1, 1))
    proposals = ref_bbox_transform_inv(anchors, deltas)
    proposals = ref_clip_boxes(proposals, im_info[:2])
    keep = ref_filter_boxes(proposals, 16 * im_info[2])
    proposals, scores = proposals[keep, :], scores[keep]
    order = introsort_argsort(scores.ravel())[::-1][:pre]
    proposals, scores = proposals[order, :], scores[order]
    keep = ref_cpu_nms(np.hstack((proposals, scores)), nms)[:post]
    return proposals[keep, :].astype(np.float32), scores[keep].ravel()


# --- our layout -> Caffe's --------------------------------------------------------------------
def run_both(
    logits,
    deltas,
    *,
    image_size,
    im_scale,
    sizes=VG_SIZES,
    ratios=VG_RATIOS,
    pre=6000,
    post=300,
    nms=0.7,
):
    """``logits`` [H, W, S, R] (fg - bg) and ``deltas`` [H, W, S, R, 4] in our RPN's layout
    (cell, then anchor size-major). Returns ((ours boxes, ours fg prob), (ref rois, ref scores))."""
    height, width, num_sizes, num_ratios = logits.shape
    cell = caffe_cell_anchors(base_size=16, sizes=sizes, ratios=ratios)
    grid = AnchorGenerator(sizes=sizes, ratios=ratios, stride=16)(height, width, cell=cell)
    boxes, kept_logits = caffe_proposals(
        torch.from_numpy(logits.reshape(-1)),
        torch.from_numpy(deltas.reshape(-1, 4)),
        grid,
        image_size=image_size,
        im_scale=im_scale,
        num_sizes=num_sizes,
        num_ratios=num_ratios,
        pre_nms_topk=pre,
        post_nms_topk=post,
        nms_thresh=nms,
    )
    # Caffe's channels: anchor a = r * S + s (ratio-major); a 2-way softmax with bg logit 0.
    fg_logit = logits.transpose(3, 2, 0, 1).reshape(1, num_ratios * num_sizes, height, width)
    fg_prob = ref_softmax_fg(np.zeros_like(fg_logit), fg_logit)
    blob = deltas.transpose(3, 2, 4, 0, 1).reshape(1, 4 * num_ratios * num_sizes, height, width)
    scales = np.array(sizes) / 16
    ref = ref_proposal_layer(
        fg_prob,
        np.ascontiguousarray(blob),
        np.array([image_size[0], image_size[1], im_scale], dtype=np.float32),
        ref_generate_anchors(16, np.array(ratios), scales),
        pre=pre,
        post=post,
        nms=nms,
    )
    zero = np.zeros_like(kept_logits.numpy())
    return (boxes.numpy(), ref_softmax_fg(zero, kept_logits.numpy())), ref


def assert_same(ours, ref) -> None:
    (boxes, scores), (ref_boxes, ref_scores) = ours, ref
    assert boxes.dtype == np.float32 and boxes.shape == ref_boxes.shape
    np.testing.assert_array_equal(boxes, ref_boxes)
    np.testing.assert_array_equal(scores, ref_scores)


# --- anchors ------------------------------------------------------------------------------------
def test_vg_anchors_are_generate_anchors_in_size_major_order() -> None:
    ours = caffe_cell_anchors(base_size=16, sizes=VG_SIZES, ratios=VG_RATIOS).numpy()
    ref = ref_generate_anchors(16, np.array(VG_RATIOS), np.array([4, 8, 16, 32]))
    for s in range(4):
        for r in range(3):
            np.testing.assert_array_equal(ours[s * 3 + r], ref[r * 4 + s])
    # The values py-faster-rcnn prints for scales 8, 16, 32 (ratio 0.5 row), centred at 7.5.
    np.testing.assert_array_equal(ours[3], [-84, -40, 99, 55])
    np.testing.assert_array_equal(ours[6], [-176, -88, 191, 103])
    np.testing.assert_array_equal(ours[9], [-360, -184, 375, 199])
    assert ((ours[:, 0] + ours[:, 2]) / 2 == 7.5).all()


def test_anchors_the_rule_cannot_make_are_refused() -> None:
    with pytest.raises(ValueError, match="empty anchor"):
        caffe_cell_anchors(base_size=16, sizes=(64.0,), ratios=(0.0001,))
    with pytest.raises(ValueError, match="integer >= 1"):
        caffe_cell_anchors(base_size=0, sizes=(64.0,), ratios=(1.0,))
    with pytest.raises(ValueError, match="preset 'odd' cannot run caffe proposals"):
        DetectorConfig(name="odd", anchor_ratios=(0.0001, 1.0))
    # The same preset runs detectron2 proposals, and max-class selection picks them by default.
    assert DetectorConfig(name="odd", anchor_ratios=(0.0001, 1.0), proposals="detectron2")
    assert DetectorConfig(name="odd", anchor_ratios=(0.0001, 1.0), selection="max-class")


# --- the layer against the reference ----------------------------------------------------------
@pytest.mark.parametrize(
    ("image_size", "im_scale", "seed"),
    [
        ((600, 1000), 600 / 480, 0),
        ((600, 800), 1.25, 1),
        ((1000, 562), 1000 / 1920, 2),
        ((96, 160), 0.24, 3),
        ((160, 96), 3.0, 4),
        ((600, 600), 0.3, 5),
    ],
)
def test_random_rpn_outputs_match_the_reference(image_size, im_scale, seed) -> None:
    rng = np.random.default_rng(seed)
    height, width = (math.ceil(side / 16) for side in image_size)
    logits = (rng.normal(0, 4, (height, width, 4, 3))).astype(np.float32)
    deltas = rng.normal(0, 0.4, (height, width, 4, 3, 4)).astype(np.float32)
    ours, ref = run_both(logits, deltas, image_size=image_size, im_scale=im_scale)
    assert len(ref[0]) > 20
    assert_same(ours, ref)


def test_ties_break_as_caffe_ordered_them() -> None:
    """Few distinct logits, many saturated to p = 1.0: the sort meets exact ties everywhere,
    and Caffe's ratio-major order decides which of two overlapping anchors is kept."""
    rng = np.random.default_rng(7)
    logits = rng.choice(np.float32([-1.0, 0.0, 2.0, 17.0, 20.0, 30.0]), size=(20, 30, 4, 3))
    deltas = rng.choice(np.float32([0.0, 0.05]), size=(20, 30, 4, 3, 4))
    ours, ref = run_both(logits, deltas, image_size=(320, 480), im_scale=0.5, pre=2000, post=300)
    _, scores = ours
    assert (scores == 1.0).sum() > 50  # saturated: ties are really there
    assert_same(ours, ref)
    # The same rows sorted in our size-major order (a 1 x 12 layout is not permuted) keep
    # other boxes: the Caffe order is what reproduces the reference.
    cell = caffe_cell_anchors(base_size=16, sizes=VG_SIZES, ratios=VG_RATIOS)
    unpermuted, _ = caffe_proposals(
        torch.from_numpy(logits.reshape(-1)),
        torch.from_numpy(deltas.reshape(-1, 4)),
        AnchorGenerator(sizes=VG_SIZES, ratios=VG_RATIOS, stride=16)(20, 30, cell=cell),
        image_size=(320, 480),
        im_scale=0.5,
        num_sizes=1,
        num_ratios=12,
        pre_nms_topk=2000,
        post_nms_topk=300,
        nms_thresh=0.7,
    )
    assert not np.array_equal(unpermuted.numpy(), ours[0])


@pytest.mark.parametrize(("seed", "pre"), [(11, 6000), (12, 1500), (13, 400)])
def test_saturated_objectness_ties_break_as_numpy_1_sorted(seed, pre) -> None:
    """Logits from a few values either side of ~16.6, where float32 fg probabilities saturate
    to 1.0, on a photo-sized grid: the pre-NMS top-N cuts through a block of ties and cpu_nms
    visits tied boxes in numpy 1.x's order. Today's numpy sorts those ties in another order on
    an AVX2 or AVX-512 machine, so this fails unless the layer sorts as numpy 1.x did."""
    rng = np.random.default_rng(seed)
    values = np.float32([-3.0, 0.0, 15.0, 16.5, 16.7, 17.0, 18.0, 25.0])
    logits = rng.choice(values, size=(38, 50, 4, 3))
    deltas = rng.choice(np.float32([-0.1, 0.0, 0.05, 0.2]), size=(38, 50, 4, 3, 4))
    ours, ref = run_both(logits, deltas, image_size=(600, 800), im_scale=1.25, pre=pre, post=300)
    assert (ours[1] == 1.0).sum() > 100  # ties among the kept boxes
    assert_same(ours, ref)


@pytest.mark.parametrize(
    ("im_scale", "kept_widths"), [(0.75 + 1e-9, {24.0, 17.0, 12.0}), (0.7500001, {24.0, 17.0})]
)
def test_min_size_edge_uses_im_scale_as_float32(im_scale, kept_widths) -> None:
    """Size-16 anchors (+1 sides 23 x 12, 16 x 16, 11 x 22) and zero deltas: Caffe's decoding
    moves x2 and y2 by +1, so the boxes are 24 x 13, 17 x 17 and 12 x 23. The threshold
    16 * float32(im_scale) is exactly 12 for the first scale (the 12-px side is kept: >=) and
    just above 12 for the second (float32(0.7500001) > 0.75), which drops it."""
    logits = np.linspace(-2, 2, 10 * 12 * 3, dtype=np.float32).reshape(10, 12, 1, 3)
    deltas = np.zeros((10, 12, 1, 3, 4), dtype=np.float32)
    ours, ref = run_both(
        logits, deltas, image_size=(400, 400), im_scale=im_scale, sizes=(16.0,), nms=0.99
    )
    assert_same(ours, ref)
    boxes = ours[0]
    widths, heights = boxes[:, 2] - boxes[:, 0] + 1, boxes[:, 3] - boxes[:, 1] + 1
    inside = (boxes[:, :2] > 0).all(axis=1)  # the first row and column are clipped at 0
    assert set(widths[inside].tolist()) == kept_widths
    assert min(widths.min(), heights.min()) >= 16 * np.float32(im_scale)


def test_boxes_crossing_the_border_are_clipped_to_w_minus_1() -> None:
    rng = np.random.default_rng(3)
    logits = rng.normal(0, 2, (19, 25, 4, 3)).astype(np.float32)
    deltas = rng.normal(0, 0.3, (19, 25, 4, 3, 4)).astype(np.float32)
    deltas[:3, :, :, :, 2:] = 100.0  # exp overflows to inf: the box spans the whole image
    logits[:3] += 10.0  # and scores high enough to be kept
    deltas[:, -2:, :, :, 0] = 3.0  # pushed right, out of the image
    ours, ref = run_both(logits, deltas, image_size=(300, 400), im_scale=0.5)
    assert_same(ours, ref)
    boxes = ours[0]
    assert boxes.min() >= 0 and boxes[:, 2].max() == 399 and boxes[:, 3].max() == 299
    assert ((boxes == [0, 0, 399, 299]).all(axis=1)).any()
    # Detectron2's layer clips to [0, W] instead: its boxes reach 400.
    d2, _ = detectron2_proposals(
        torch.from_numpy(logits.reshape(-1)),
        torch.from_numpy(np.clip(deltas, None, 4.0).reshape(-1, 4)),
        AnchorGenerator(sizes=VG_SIZES, ratios=VG_RATIOS, stride=16)(19, 25),
        image_size=(300, 400),
        pre_nms_topk=6000,
        post_nms_topk=300,
        nms_thresh=0.7,
        min_box_size=0.0,
    )
    assert float(d2[:, 2].max()) == 400.0


def test_nms_threshold_is_compared_as_a_double() -> None:
    """IoU 70/100 is 0.69999999 in float32: below 0.7 as a double (cpu_nms keeps the box),
    though not below float32(0.7). 80/100 is suppressed; 50/100 = 0.5 exactly at thresh 0.5 too."""
    boxes = np.float32([[0, 0, 9, 9], [0, 0, 9, 6], [0, 0, 9, 7]])
    scores = np.float32([0.9, 0.8, 0.7])
    assert caffe_nms(boxes, scores, thresh=0.7).tolist() == [0, 1]
    assert ref_cpu_nms(np.hstack((boxes, scores[:, None])), 0.7) == [0, 1]
    half = np.float32([[0, 0, 9, 9], [0, 0, 9, 4]])
    assert caffe_nms(half, np.float32([0.9, 0.8]), thresh=0.5).tolist() == [0]
    # Equal scores: numpy 1.x's argsort()[::-1] decides, here the later index first.
    same = np.float32([[0, 0, 9, 9], [0, 0, 9, 9]])
    assert caffe_nms(same, np.float32([0.5, 0.5]), thresh=0.7).tolist() == [1]


def test_rpn_module_in_caffe_mode_matches_the_reference() -> None:
    """The RPN's own head outputs (our channel layout) through the module's caffe path."""
    torch.manual_seed(0)
    rpn = RPN(
        in_channels=8,
        hidden_channels=8,
        anchor_sizes=VG_SIZES,
        anchor_ratios=VG_RATIOS,
        stride=16,
        pre_nms_topk=6000,
        post_nms_topk=300,
        nms_thresh=0.7,
        min_box_size=0.0,
        proposal_mode="caffe",
    ).eval()
    with torch.no_grad():
        for conv in (rpn.rpn_head.objectness_logits, rpn.rpn_head.anchor_deltas):
            conv.weight.normal_(0, 0.5)
        features = torch.randn(2, 8, 24, 32)
        out = rpn(features, (384, 512), image_scales=[0.8, 1.6])
    for index, scale in enumerate((0.8, 1.6)):
        logits = out.logits[index].numpy().reshape(24, 32, 4, 3)
        deltas = out.deltas[index].numpy().reshape(24, 32, 4, 3, 4)
        _, ref = run_both(logits, deltas, image_size=(384, 512), im_scale=scale)
        np.testing.assert_array_equal(out.proposals[index].numpy(), ref[0])
    assert not torch.equal(out.proposals[0], out.proposals[1])  # the min size differs


# --- the setting ----------------------------------------------------------------------------------
def test_auto_follows_the_selection_and_presets_pin_what_they_were_made_with() -> None:
    assert get_preset("vg-r101-c4-attr").proposal_mode == "caffe"
    assert get_preset("vg-r101-c4-attr-maxclass").proposal_mode == "detectron2"
    assert get_preset("shapes").proposal_mode == "detectron2"
    assert get_preset("shapes").replace(selection="max-class").proposal_mode == "detectron2"
    vg = get_preset("vg-r101-c4-attr")
    assert vg.replace(selection="max-class").proposal_mode == "detectron2"
    assert vg.replace(selection="max-class", proposals="caffe").proposal_mode == "caffe"
    assert vg.replace(proposals="detectron2").proposal_mode == "detectron2"
    with pytest.raises(ValueError, match="'auto', 'detectron2' or 'caffe'"):
        vg.replace(proposals="torchvision")


def test_stored_configs_and_manifests_without_the_field_ran_detectron2() -> None:
    vg = get_preset("vg-r101-c4-attr")
    assert config_from_dict(vg.to_dict()) == vg  # "auto" round-trips as "auto"
    old = {k: v for k, v in vg.to_dict().items() if k not in ("proposals", "anchor_base_size")}
    assert config_from_dict(old).proposal_mode == "detectron2"
    settings = record_settings(
        vg.to_dict(), detector_sha256=None, precision="fp32", deterministic=True
    )
    assert settings["proposals"] == "caffe"
    assert (
        record_settings(old, detector_sha256=None, precision="fp32", deterministic=True)[
            "proposals"
        ]
        == "detectron2"
    )
    maxclass = vg.replace(selection="max-class").to_dict()
    assert (
        record_settings(maxclass, detector_sha256=None, precision="fp32", deterministic=True)[
            "proposals"
        ]
        == "detectron2"
    )
