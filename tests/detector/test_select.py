"""Both box-selection modes against deliberately plain re-implementations of the references.

bottom-up: tools/generate_tsv.py of the Caffe bottom-up-attention (a loop over classes, numpy,
the Caffe "+1" IoU, py-faster-rcnn's greedy NMS, background FIRST as Caffe had it), sorting with
numpy 1.x's introsort as written out in introsort_helpers (today's numpy sorts ties otherwise).
max-class: py-bottom-up-attention's / the HF demo's per-image loop (a loop over classes for the
best class, hand-written torchvision-convention NMS).
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from introsort_helpers import introsort_argsort

from detector.boxes import BOX_HEAD_WEIGHTS, apply_deltas, clip_boxes
from detector.config import get_preset
from detector.preprocess import PreparedImage
from detector.select import (
    Selection,
    attributes_from_probs,
    select,
    select_bottom_up,
    select_max_class,
    select_regions,
)

NUM_CLASSES = 7
NUM_PROPOSALS = 40

# ---------------------------------------------------------------------------------------------
# Plain references
# ---------------------------------------------------------------------------------------------


def plain_caffe_nms(dets: np.ndarray, thresh: float) -> list[int]:
    """py-faster-rcnn's greedy NMS in float32 with +1 areas; IoU >= thresh suppresses."""
    x1, y1, x2, y2, scores = (dets[:, k] for k in range(5))
    areas = (x2 - x1 + 1) * (y2 - y1 + 1)
    order = introsort_argsort(scores)[::-1]
    keep = []
    while order.size > 0:
        i, rest = order[0], order[1:]
        keep.append(int(i))
        w = np.maximum(np.float32(0), np.minimum(x2[i], x2[rest]) - np.maximum(x1[i], x1[rest]) + 1)
        h = np.maximum(np.float32(0), np.minimum(y2[i], y2[rest]) - np.maximum(y1[i], y1[rest]) + 1)
        inter = w * h
        ovr = inter / (areas[i] + areas[rest] - inter)
        # Cython compares the C float with a Python (double) threshold.
        order = rest[ovr.astype(np.float64) < thresh]
    return keep


def plain_max_conf(boxes: np.ndarray, caffe_scores: np.ndarray, nms_thresh: float) -> np.ndarray:
    """generate_tsv's class loop on ``caffe_scores`` [R, 1 + C], background FIRST."""
    max_conf = np.zeros(boxes.shape[0])
    for cls_ind in range(1, caffe_scores.shape[1]):
        cls_scores = caffe_scores[:, cls_ind]
        dets = np.hstack((boxes, cls_scores[:, np.newaxis])).astype(np.float32)
        keep = np.array(plain_caffe_nms(dets, nms_thresh), dtype=np.int64)
        max_conf[keep] = np.where(
            cls_scores[keep] > max_conf[keep], cls_scores[keep], max_conf[keep]
        )
    return max_conf


def plain_keep_boxes(
    max_conf: np.ndarray, conf_thresh: float, min_boxes: int, max_boxes: int
) -> np.ndarray:
    """generate_tsv's threshold and min/max clamp, in its order."""
    keep_boxes = np.where(max_conf >= conf_thresh)[0]
    if len(keep_boxes) < min_boxes:
        keep_boxes = introsort_argsort(max_conf)[::-1][:min_boxes]
    elif len(keep_boxes) > max_boxes:
        keep_boxes = introsort_argsort(max_conf)[::-1][:max_boxes]
    return keep_boxes


def plain_torchvision_nms(boxes: np.ndarray, scores: np.ndarray, thresh: float) -> list[int]:
    """Greedy NMS, no +1, IoU > thresh suppresses, stable descending score order."""
    x1, y1, x2, y2 = (boxes[:, k] for k in range(4))
    areas = (x2 - x1) * (y2 - y1)
    order = np.argsort(-scores, kind="stable")
    keep = []
    while order.size > 0:
        i, rest = order[0], order[1:]
        keep.append(int(i))
        w = np.maximum(np.float32(0), np.minimum(x2[i], x2[rest]) - np.maximum(x1[i], x1[rest]))
        h = np.maximum(np.float32(0), np.minimum(y2[i], y2[rest]) - np.maximum(y1[i], y1[rest]))
        inter = w * h
        with np.errstate(invalid="ignore"):  # two empty boxes: 0 / 0 is NaN, never suppresses
            ovr = inter / (areas[i] + areas[rest] - inter)
        order = rest[~(ovr.astype(np.float64) > thresh)]
    return keep


def plain_max_class(
    pred_boxes: np.ndarray,
    probs: np.ndarray,
    image_size: tuple[int, int],
    thresholds: list[float],
    min_boxes: int,
    max_boxes: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Best class per proposal (first on ties), its clipped box, NMS with rising thresholds."""
    h, w = image_size
    num_rows, num_classes = probs.shape[0], probs.shape[1] - 1
    best_class = np.zeros(num_rows, dtype=np.int64)
    best_score = np.zeros(num_rows, dtype=np.float32)
    best_box = np.zeros((num_rows, 4), dtype=np.float32)
    for r in range(num_rows):
        best_class[r], best_score[r] = 0, probs[r, 0]
        for c in range(1, num_classes):
            if probs[r, c] > best_score[r]:
                best_class[r], best_score[r] = c, probs[r, c]
        x1, y1, x2, y2 = pred_boxes[r, 4 * best_class[r] : 4 * best_class[r] + 4]
        best_box[r] = [
            min(max(x1, 0), w),
            min(max(y1, 0), h),
            min(max(x2, 0), w),
            min(max(y2, 0), h),
        ]
    results = []
    for t in thresholds:
        keep = plain_torchvision_nms(best_box, best_score, t)[:max_boxes]
        results.append(keep)
        if len(keep) >= min_boxes:
            break
    else:
        most = max(len(k) for k in results)
        results.append([k for k in results if len(k) == most][-1])
    keep = np.array(results[-1], dtype=np.int64)
    return keep, best_box[keep], best_class[keep], best_score[keep]


# ---------------------------------------------------------------------------------------------
# Random cases
# ---------------------------------------------------------------------------------------------


def random_case(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Proposals float32 [R, 4] raw-pixel-like and probabilities float32 [R, C + 1], bg LAST.

    Some trials use integer boxes with duplicates and quantised scores, so IoU and score ties
    (including exact ties in the final ranking) occur.
    """
    kind = rng.integers(3)
    xy = rng.uniform(0, 200, (NUM_PROPOSALS, 2))
    wh = rng.uniform(5, 120, (NUM_PROPOSALS, 2))
    boxes = np.concatenate([xy, xy + wh], axis=1)
    logits = rng.normal(size=(NUM_PROPOSALS, NUM_CLASSES + 1)) * rng.uniform(0.5, 4.0)
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    if kind >= 1:
        boxes = np.round(boxes)
        dup = rng.integers(0, NUM_PROPOSALS, size=8)
        boxes[dup[:4]] = boxes[dup[4:]]
    if kind == 2:
        probs = np.round(probs * 8) / 8  # many exact ties; rows need not sum to 1
    return boxes.astype(np.float32), probs.astype(np.float32)


def caffe_layout(probs: np.ndarray) -> np.ndarray:
    """Background last (ours) -> background first (Caffe)."""
    return np.concatenate([probs[:, -1:], probs[:, :-1]], axis=1)


def test_bottom_up_matches_generate_tsv_on_random_cases() -> None:
    rng = np.random.default_rng(1234)
    regimes = {"below_min": 0, "between": 0, "above_max": 0}
    for trial in range(300):
        boxes, probs = random_case(rng)
        conf_thresh = float(rng.choice([0.05, 0.125, 0.2, 0.3, 0.5]))
        nms_thresh = float(rng.choice([0.3, 0.5, 0.7]))
        max_conf = plain_max_conf(boxes, caffe_layout(probs), nms_thresh)
        # Pick min/max so that every branch of the clamp is exercised.
        survivors = int((max_conf >= conf_thresh).sum())
        regime = ("below_min", "between", "above_max")[trial % 3]
        if regime == "above_max" and survivors >= 2:
            max_boxes = int(rng.integers(1, survivors))
            min_boxes = int(rng.integers(1, max_boxes + 1))
        elif regime == "between" and survivors >= 1:
            min_boxes = int(rng.integers(1, survivors + 1))
            max_boxes = int(rng.integers(survivors, survivors + 5))
        else:
            min_boxes = int(rng.integers(survivors + 1, survivors + 8))
            max_boxes = int(rng.integers(min_boxes, min_boxes + 5))
        expected = plain_keep_boxes(max_conf, conf_thresh, min_boxes, max_boxes)
        got = select_bottom_up(
            torch.from_numpy(boxes),
            torch.from_numpy(probs),
            conf_thresh=conf_thresh,
            nms_thresh=nms_thresh,
            min_boxes=min_boxes,
            max_boxes=max_boxes,
        )
        np.testing.assert_array_equal(got.indices.numpy(), expected)  # order, not just set
        np.testing.assert_array_equal(got.boxes.numpy(), boxes[expected])
        object_probs = probs[expected, :NUM_CLASSES]
        np.testing.assert_array_equal(got.object_ids.numpy(), object_probs.argmax(axis=1))
        np.testing.assert_array_equal(got.object_conf.numpy(), object_probs.max(axis=1))
        assert got.indices.dtype == torch.int64 and got.object_ids.dtype == torch.int64
        assert got.boxes.dtype == torch.float32 and got.object_conf.dtype == torch.float32
        if survivors < min_boxes:
            regimes["below_min"] += 1
        elif survivors > max_boxes:
            regimes["above_max"] += 1
        else:
            regimes["between"] += 1
    assert all(count >= 80 for count in regimes.values()), regimes


def test_bottom_up_matches_generate_tsv_with_many_proposals_and_ties() -> None:
    # 300 proposals (217 survive 0.2): numpy sorts long rows differently from short ones; quantised
    # scores make its (unstable) tie order matter for both the NMS order and the final ranking.
    rng = np.random.default_rng(11)
    num_rows, num_classes = 300, 20
    xy = rng.uniform(0, 600, (num_rows, 2))
    boxes = np.round(np.concatenate([xy, xy + rng.uniform(8, 300, (num_rows, 2))], axis=1))
    boxes = boxes.astype(np.float32)
    probs = (np.round(rng.dirichlet(np.full(num_classes + 1, 0.3), num_rows) * 16) / 16).astype(
        np.float32
    )
    max_conf = plain_max_conf(boxes, caffe_layout(probs), 0.3)
    for min_boxes, max_boxes in [(10, 100), (36, 36), (200, 250), (250, 280)]:
        got = select_bottom_up(
            torch.from_numpy(boxes),
            torch.from_numpy(probs),
            conf_thresh=0.2,
            nms_thresh=0.3,
            min_boxes=min_boxes,
            max_boxes=max_boxes,
        )
        expected = plain_keep_boxes(max_conf, 0.2, min_boxes, max_boxes)
        np.testing.assert_array_equal(got.indices.numpy(), expected)


@pytest.mark.parametrize("seed", [21, 22, 23])
def test_saturated_class_probabilities_break_ties_as_numpy_1_sorted(seed) -> None:
    """Many boxes score exactly 1.0 or 0.5 in several classes, on 300 proposals: per-class NMS
    visits tied boxes, and the min/max clamp ranks tied max_conf values, in numpy 1.x's order.
    Today's numpy sorts those ties in another order on an AVX2 or AVX-512 machine, so this
    fails unless selection sorts as numpy 1.x did."""
    rng = np.random.default_rng(seed)
    num_rows, num_classes = 300, 12
    xy = rng.uniform(0, 500, (num_rows, 2))
    boxes = np.round(np.concatenate([xy, xy + rng.uniform(20, 200, (num_rows, 2))], axis=1))
    probs = rng.dirichlet(np.full(num_classes + 1, 0.5), num_rows)
    confident = rng.random(num_rows) < 0.5
    classes = rng.integers(0, 4, num_rows)  # few classes, many boxes each
    probs[confident] = 0.0
    probs[confident, classes[confident]] = rng.choice([1.0, 0.5], confident.sum())
    probs[confident, num_classes] = 1.0 - probs[confident, classes[confident]]
    boxes, probs = boxes.astype(np.float32), probs.astype(np.float32)
    max_conf = plain_max_conf(boxes, caffe_layout(probs), 0.3)
    assert (max_conf == 1.0).sum() > 20 and (max_conf == 0.5).sum() > 20
    for min_boxes, max_boxes in [(36, 36), (10, 30), (100, 150)]:
        got = select_bottom_up(
            torch.from_numpy(boxes),
            torch.from_numpy(probs),
            conf_thresh=0.2,
            nms_thresh=0.3,
            min_boxes=min_boxes,
            max_boxes=max_boxes,
        )
        expected = plain_keep_boxes(max_conf, 0.2, min_boxes, max_boxes)
        np.testing.assert_array_equal(got.indices.numpy(), expected)  # same boxes, same order


def test_the_strong_class_shortcut_answers_exactly_or_not_at_all() -> None:
    # select_bottom_up first tries NMS on the classes and ranks that can reach the threshold
    # (or a lower floor); every answer it gives must be generate_tsv's, and each way of
    # answering (and of declining) must occur, so none of them goes untested.
    from detector.select import _keep_from_strong_classes

    rng = np.random.default_rng(77)
    outcomes = {"between": 0, "ranked": 0, "declined": 0}
    for trial in range(240):
        boxes, probs = random_case(rng)
        survivors = int((plain_max_conf(boxes, caffe_layout(probs), 0.3) >= 0.2).sum())
        min_boxes, max_boxes = [
            (max(1, survivors - 2), survivors + 2),  # between: the count settles it
            (1, max(1, survivors - 3)),  # above max: top max_boxes, ranked
            (survivors + 3, survivors + 6),  # below min: lower floors, ranked
        ][trial % 3]
        keep = _keep_from_strong_classes(
            torch.from_numpy(boxes),
            np.ascontiguousarray(probs[:, :NUM_CLASSES].T),
            nms_thresh=0.3,
            conf_thresh=0.2,
            min_boxes=min_boxes,
            max_boxes=max_boxes,
        )
        if keep is None:
            outcomes["declined"] += 1
            continue
        expected = plain_keep_boxes(
            plain_max_conf(boxes, caffe_layout(probs), 0.3), 0.2, min_boxes, max_boxes
        )
        np.testing.assert_array_equal(keep, expected)
        outcomes["between" if min_boxes <= survivors <= max_boxes else "ranked"] += 1
    assert all(count >= 20 for count in outcomes.values()), outcomes


def test_bottom_up_iou_exactly_at_threshold_is_suppressed() -> None:
    # Caffe IoU of these two is exactly 0.5; the reference suppresses at IoU >= thresh.
    boxes = torch.tensor([[0.0, 0.0, 9.0, 9.0], [0.0, 0.0, 9.0, 4.0], [50.0, 50.0, 60.0, 60.0]])
    probs = torch.tensor([[0.9, 0.1], [0.8, 0.2], [0.3, 0.7]])
    out = select_bottom_up(boxes, probs, conf_thresh=0.25, nms_thresh=0.5, min_boxes=1, max_boxes=3)
    # Box 1 is suppressed by box 0 for the only class, so it keeps max_conf 0 and drops out.
    assert out.indices.tolist() == [0, 2]
    out = select_bottom_up(
        boxes, probs, conf_thresh=0.25, nms_thresh=0.51, min_boxes=1, max_boxes=3
    )
    assert out.indices.tolist() == [0, 1, 2]


def test_bottom_up_full_size_runs() -> None:
    rng = np.random.default_rng(7)
    num_rows, num_classes = 300, 1600
    xy = rng.uniform(0, 800, (num_rows, 2))
    boxes = np.concatenate([xy, xy + rng.uniform(8, 400, (num_rows, 2))], axis=1)
    logits = rng.normal(size=(num_rows, num_classes + 1)) * 3
    probs = torch.from_numpy(logits).float().softmax(dim=1)
    out = select_bottom_up(
        torch.from_numpy(boxes).float(),
        probs,
        conf_thresh=0.2,
        nms_thresh=0.3,
        min_boxes=10,
        max_boxes=100,
    )
    assert 10 <= len(out) <= 100
    assert len(set(out.indices.tolist())) == len(out)
    assert out.boxes.shape == (len(out), 4)
    assert int(out.object_ids.max()) < num_classes


def test_bottom_up_fewer_proposals_than_min() -> None:
    boxes = torch.tensor([[0.0, 0.0, 10.0, 10.0], [1.0, 1.0, 10.0, 10.0]])
    probs = torch.tensor([[0.2, 0.3, 0.5], [0.6, 0.3, 0.1]])
    out = select_bottom_up(boxes, probs, conf_thresh=0.2, nms_thresh=0.3, min_boxes=5, max_boxes=5)
    assert sorted(out.indices.tolist()) == [0, 1]
    empty = select_bottom_up(
        torch.zeros(0, 4),
        torch.zeros(0, 3),
        conf_thresh=0.2,
        nms_thresh=0.3,
        min_boxes=1,
        max_boxes=2,
    )
    assert len(empty) == 0 and empty.boxes.shape == (0, 4)


def random_max_class_case(
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray, tuple[int, int]]:
    boxes, probs = random_case(rng)
    image_size = (int(rng.integers(120, 260)), int(rng.integers(120, 260)))
    # Class-specific boxes: jitter each class's copy, some spilling past the image.
    jitter = rng.normal(scale=15.0, size=(NUM_PROPOSALS, NUM_CLASSES, 4))
    if rng.random() < 0.4:
        # A few tight clusters: even NMS at 0.9 leaves only a handful, so min_boxes can fail.
        boxes = boxes[rng.integers(0, 6, size=NUM_PROPOSALS)]
        jitter *= 0.02
    pred = (boxes[:, None, :] + jitter).reshape(NUM_PROPOSALS, NUM_CLASSES * 4)
    return pred.astype(np.float32), probs, image_size


def test_max_class_matches_plain_reference_on_random_cases() -> None:
    rng = np.random.default_rng(99)
    thresholds = [0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9]
    warned = accepted = 0
    for _ in range(200):
        pred, probs, image_size = random_max_class_case(rng)
        min_boxes = int(rng.integers(1, 40))
        max_boxes = int(rng.integers(min_boxes, 45))
        keep, boxes, classes, scores = plain_max_class(
            pred, probs, image_size, thresholds, min_boxes, max_boxes
        )
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            got = select_max_class(
                torch.from_numpy(pred),
                torch.from_numpy(probs),
                image_size,
                nms_thresholds=thresholds,
                min_boxes=min_boxes,
                max_boxes=max_boxes,
            )
        np.testing.assert_array_equal(got.indices.numpy(), keep)
        np.testing.assert_array_equal(got.boxes.numpy(), boxes)
        np.testing.assert_array_equal(got.object_ids.numpy(), classes)
        np.testing.assert_array_equal(got.object_conf.numpy(), scores)
        if len(keep) < min_boxes:
            warned += 1
            assert len(caught) == 1 and f"found only {len(keep)} boxes" in str(caught[0].message)
        else:
            accepted += 1
            assert not caught
    assert warned >= 10 and accepted >= 10, (warned, accepted)


def test_max_class_warns_instead_of_crashing() -> None:
    # Three identical boxes: NMS keeps one at every threshold below 1.
    pred = torch.tensor([[0.0, 0.0, 10.0, 10.0]]).repeat(3, 2)
    probs = torch.tensor([[0.5, 0.3, 0.2], [0.1, 0.6, 0.3], [0.2, 0.2, 0.6]])
    with pytest.warns(RuntimeWarning, match="found only 1 boxes"):
        out = select_max_class(
            pred, probs, (20, 20), nms_thresholds=[0.3, 0.5], min_boxes=2, max_boxes=3
        )
    assert out.indices.tolist() == [1] and out.object_ids.tolist() == [1]


def test_max_class_iou_at_threshold_is_kept() -> None:
    # torchvision convention (no +1): IoU exactly 0.5 survives NMS at 0.5.
    pred = torch.tensor([[0.0, 0.0, 10.0, 10.0], [0.0, 0.0, 10.0, 5.0]])
    probs = torch.tensor([[0.9, 0.1], [0.8, 0.2]])
    out = select_max_class(pred, probs, (20, 20), nms_thresholds=[0.5], min_boxes=2, max_boxes=2)
    assert out.indices.tolist() == [0, 1]


def numpy_softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x.astype(np.float64) - x.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


@pytest.mark.parametrize("renormalize", [True, False])
def test_attributes_from_probs(renormalize: bool) -> None:
    rng = np.random.default_rng(5)
    logits = rng.normal(size=(50, 401)).astype(np.float32) * 3
    logits[:10, -1] = 20.0  # "no attribute" dominates: renormalising changes the confidences
    probs = numpy_softmax(logits[:, :-1]) if renormalize else numpy_softmax(logits)[:, :-1]
    ids, conf = attributes_from_probs(torch.from_numpy(logits), renormalize=renormalize)
    assert ids.dtype == torch.int64 and conf.dtype == torch.float32
    np.testing.assert_array_equal(ids.numpy(), probs.argmax(axis=1))
    np.testing.assert_allclose(conf.numpy(), probs.max(axis=1), rtol=1e-5, atol=1e-7)
    assert (ids < 400).all()
    if not renormalize:
        assert float(conf[:10].max()) < 1e-3


def test_select_dispatches_on_config() -> None:
    rng = np.random.default_rng(3)
    pred, probs, image_size = random_max_class_case(rng)
    proposals = torch.from_numpy(pred[:, :4].copy())
    config = get_preset("tiny").replace(num_classes=NUM_CLASSES, min_boxes=3, max_boxes=8)
    kwargs = {
        "proposals": proposals,
        "pred_boxes": torch.from_numpy(pred),
        "class_probs": torch.from_numpy(probs),
        "image_size": image_size,
    }
    bottom_up = select(config, **kwargs)
    direct = select_bottom_up(
        proposals,
        torch.from_numpy(probs),
        conf_thresh=config.conf_thresh,
        nms_thresh=config.nms_thresh,
        min_boxes=3,
        max_boxes=8,
    )
    assert bottom_up.indices.tolist() == direct.indices.tolist()
    max_class = select(config.replace(selection="max-class"), **kwargs)
    assert isinstance(max_class, Selection) and 3 <= len(max_class) <= 8
    with pytest.raises(ValueError, match="pred_boxes"):
        select(config.replace(selection="max-class"), **{**kwargs, "pred_boxes": None})


@pytest.mark.parametrize("selection", ["bottom-up", "max-class"])
def test_select_regions_maps_selection_to_raw_pixels(selection: str) -> None:
    """bottom-up selects among proposals / im_scale and returns them; max-class selects in
    the resized frame and scales x and y by raw / resized size."""
    rng = np.random.default_rng(8)
    config = get_preset("tiny").replace(
        num_classes=NUM_CLASSES, min_boxes=3, max_boxes=8, selection=selection
    )
    resized_h, resized_w = 150, 200
    image = PreparedImage(
        image_id="img",
        pixels=np.zeros((3, resized_h, resized_w), dtype=np.float32),
        scale=0.4,
        raw_h=375,
        raw_w=500,
    )
    xy = rng.uniform(0, 150, (NUM_PROPOSALS, 2))
    proposals = torch.from_numpy(
        np.concatenate([xy, xy + rng.uniform(5, 60, (NUM_PROPOSALS, 2))], axis=1)
    ).float()
    class_logits = torch.from_numpy(rng.normal(size=(NUM_PROPOSALS, NUM_CLASSES + 1))).float()
    deltas = torch.from_numpy(rng.normal(size=(NUM_PROPOSALS, 4 * NUM_CLASSES)) * 0.5).float()
    attr_logits = torch.from_numpy(rng.normal(size=(NUM_PROPOSALS, 5))).float()
    features = torch.arange(NUM_PROPOSALS, dtype=torch.float32)[:, None].repeat(1, 3)

    regions = select_regions(
        config,
        image=image,
        proposals=proposals,
        features=features,
        class_logits=class_logits,
        deltas=deltas,
        attr_logits=attr_logits,
    )
    raw_proposals = proposals / 0.4
    chosen = select(
        config,
        proposals=raw_proposals,
        pred_boxes=apply_deltas(deltas, proposals, weights=BOX_HEAD_WEIGHTS),
        class_probs=torch.softmax(class_logits, dim=1),
        image_size=(resized_h, resized_w),
    )
    if selection == "bottom-up":
        expected_boxes = raw_proposals[chosen.indices]
    else:
        expected_boxes = chosen.boxes * torch.tensor([2.5, 2.5, 2.5, 2.5])
    expected_boxes = clip_boxes(expected_boxes, (375, 500))
    assert (regions.image_id, regions.image_h, regions.image_w) == ("img", 375, 500)
    np.testing.assert_array_equal(regions.features[:, 0], chosen.indices.numpy())
    np.testing.assert_allclose(regions.boxes, expected_boxes.numpy(), rtol=1e-6)
    np.testing.assert_array_equal(regions.objects_id, chosen.object_ids.numpy())
    attr_ids, _ = attributes_from_probs(
        attr_logits[chosen.indices], renormalize=selection == "max-class"
    )
    np.testing.assert_array_equal(regions.attrs_id, attr_ids.numpy())


def test_bad_inputs_raise() -> None:
    boxes, probs = torch.zeros(4, 4), torch.full((4, 3), 1 / 3)
    common = {"conf_thresh": 0.2, "nms_thresh": 0.3}
    with pytest.raises(ValueError, match=r"Tensor\[R, 4\]"):
        select_bottom_up(torch.zeros(4, 5), probs, min_boxes=1, max_boxes=2, **common)
    with pytest.raises(ValueError, match=r"\[4, C \+ 1\]"):
        select_bottom_up(boxes, torch.zeros(3, 3), min_boxes=1, max_boxes=2, **common)
    with pytest.raises(ValueError, match="min_boxes"):
        select_bottom_up(boxes, probs, min_boxes=3, max_boxes=2, **common)
    with pytest.raises(ValueError, match=r"\[4, 8\]"):
        select_max_class(
            torch.zeros(4, 12), probs, (10, 10), nms_thresholds=[0.3], min_boxes=1, max_boxes=2
        )
    with pytest.raises(ValueError, match="nms_thresholds"):
        select_max_class(
            torch.zeros(4, 8), probs, (10, 10), nms_thresholds=[], min_boxes=1, max_boxes=2
        )
    with pytest.raises(ValueError, match="attr_logits"):
        attributes_from_probs(torch.zeros(4), renormalize=True)
