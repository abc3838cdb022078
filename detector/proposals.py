"""The two test-time proposal layers, as pure functions on one image's RPN outputs.

Both take the RPN's outputs for every anchor of one image, in the RPN's flattened order
(feature-map row, column, then cell anchor), and return proposals in resized-image pixels:

- :func:`detectron2_proposals`: Detectron2's ``find_top_rpn_proposals`` (what
  py-bottom-up-attention and the Hugging Face port run): top ``pre_nms_topk`` by objectness,
  decode without +1, clip to ``[0, W] x [0, H]``, drop empty boxes, torchvision NMS
  (suppress IoU > thresh), keep ``post_nms_topk``.
- :func:`caffe_proposals`: the original bottom-up-attention Caffe model's test-time
  ``lib/rpn/proposal_layer.py``, which made LXMERT's released features: anchors from
  ``generate_anchors.py`` (:func:`caffe_cell_anchors`), decoding with the +1 width of
  ``bbox_transform_inv``, clipping to ``[0, W - 1] x [0, H - 1]``, dropping sides below
  ``16 * im_scale``, top ``pre_nms_topk`` by score, then ``cpu_nms`` (+1 areas, float32,
  suppress IoU >= thresh), keep ``post_nms_topk``. It runs in numpy on the CPU, step for step
  as the reference did, on the anchors in Caffe's own order (ratio-major within a cell, where
  our checkpoint's channels are size-major), and sorts with numpy 1.x's introsort
  (:func:`detector.reference_sort.argsort`), so exact score ties (probabilities saturate to
  1.0) are broken as the reference broke them. Its output is the same on every machine: the
  sorts are the introsort, ``exp`` is :func:`detector.exact_math.exp_float32`, and every other
  step is a correctly rounded float32 operation.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

from detector import reference_sort
from detector.anchors import caffe_cell_anchor_rows
from detector.boxes import apply_deltas, clip_boxes, nonempty
from detector.exact_math import exp_float32
from detector.native_ops import nms

#: (wx, wy, ww, wh) of the RPN's anchor deltas (both layers: no scaling).
RPN_BOX_WEIGHTS = (1.0, 1.0, 1.0, 1.0)
#: Caffe ``cfg.TEST.RPN_MIN_SIZE``: smallest proposal side kept, in raw-image pixels (the layer
#: compares it, times ``im_scale``, with sides in resized pixels).
CAFFE_RPN_MIN_SIZE = 16.0


def detectron2_proposals(
    logits: Tensor,
    deltas: Tensor,
    anchors: Tensor,
    *,
    image_size: tuple[int, int],
    pre_nms_topk: int,
    post_nms_topk: int,
    nms_thresh: float,
    min_box_size: float,
) -> tuple[Tensor, Tensor]:
    """Detectron2's test-time proposals of one image.

    Args:
        logits: float32 ``Tensor[M]`` objectness logits, one per anchor.
        deltas: float32 ``Tensor[M, 4]`` anchor deltas (weights 1, 1, 1, 1).
        anchors: ``Tensor[M, 4]`` xyxy, resized-image pixels.
        image_size: ``(h, w)`` of the resized image.
        pre_nms_topk, post_nms_topk: proposals kept before / after NMS.
        nms_thresh: torchvision NMS IoU (suppress IoU > thresh).
        min_box_size: sides <= this (resized pixels) are dropped after clipping.

    Returns:
        (``Tensor[R, 4]`` xyxy resized pixels, ``Tensor[R]`` their logits), by logit
        descending, on the device of ``logits``.
    """
    topk = min(pre_nms_topk, logits.numel())
    top_logits, top_index = logits.topk(topk, sorted=True)
    boxes = apply_deltas(deltas[top_index], anchors[top_index], weights=RPN_BOX_WEIGHTS)
    boxes = clip_boxes(boxes, image_size)
    keep = nonempty(boxes, min_box_size)
    boxes, top_logits = boxes[keep], top_logits[keep]
    keep = nms(boxes, top_logits, nms_thresh)[:post_nms_topk]
    return boxes[keep], top_logits[keep]


def caffe_cell_anchors(
    *, base_size: int, sizes: Sequence[float], ratios: Sequence[float]
) -> Tensor:
    """``generate_anchors.py``'s cell anchors, laid out size-major like our RPN's channels.

    The reference box ``[0, 0, base - 1, base - 1]`` (centre ``(base - 1) / 2``, 7.5 for 16)
    is reshaped per ratio (h / w) to ``w = round(sqrt(base**2 / ratio))``, ``h = round(w *
    ratio)`` (numpy's round, half to even), then each of those is scaled by
    ``size / base`` around the same centre; a box of width ``w`` spans ``ctr +- (w - 1) / 2``.
    Caffe enumerates ratio-major; the checkpoint's channels are size-major (anchor ``s * R +
    r`` has size ``s`` and ratio ``r``), so the rows follow that order.

    Args:
        base_size: side of the reference box (16 for the VG model: its feature stride).
        sizes: anchor sizes in resized pixels; scales are ``size / base_size`` (VG: 64 ... 512
            give 4, 8, 16, 32).
        ratios: h / w (VG: 0.5, 1, 2).

    Returns:
        float32 ``Tensor[len(sizes) * len(ratios), 4]`` xyxy, resized pixels, cell at (0, 0).

    Raises:
        ValueError: a base size that is not a positive integer, a size or ratio that is not
            positive, or a ratio whose rounded reference box has a side of 0.
    """
    rows = caffe_cell_anchor_rows(base_size=base_size, sizes=sizes, ratios=ratios)
    return torch.tensor(rows, dtype=torch.float32)


def caffe_anchor_order(num_sizes: int, num_ratios: int) -> list[int]:
    """Our cell-anchor index (size-major: ``s * R + r``) at each of Caffe's positions
    (ratio-major: ``generate_anchors`` enumerates ratios, then scales within each)."""
    return [s * num_ratios + r for r in range(num_ratios) for s in range(num_sizes)]


def caffe_fg_probability(logits: np.ndarray) -> np.ndarray:
    """float32 ``[M]`` foreground probability of float32 objectness ``logits`` ``[M]``.

    The Caffe model has two logits per anchor (background, foreground) and a softmax; our
    checkpoint has their difference ``x = fg - bg``. Caffe's softmax subtracts the larger
    logit first, so its foreground probability is ``1 / (1 + exp(-x))`` for ``x >= 0`` and
    ``exp(x) / (1 + exp(x))`` otherwise, computed here in that form in float32: monotone in
    ``x``, and saturating to exactly 1.0 where Caffe's did (x > ~16.6), so ties among
    confident anchors arise as they did there. (``x`` itself comes from one merged conv, so
    it can differ from Caffe's ``fg - bg`` in the last bits.) Exact on every machine: the
    ``exp`` is :func:`~detector.exact_math.exp_float32` (float64, rounded once to float32; numpy's
    own float32 ``exp`` rounds differently with and without AVX2), the rest is correctly rounded
    float32 arithmetic.
    """
    logits = np.asarray(logits, dtype=np.float32)
    small = exp_float32(-np.abs(logits))  # exp(smaller logit - larger logit), in (0, 1]
    one = np.float32(1.0)
    return np.where(logits >= 0, one / (one + small), small / (one + small)).astype(np.float32)


def caffe_decode(anchors: np.ndarray, deltas: np.ndarray) -> np.ndarray:
    """``bbox_transform_inv``: float32 ``[M, 4]`` xyxy boxes from float32 anchors and deltas.

    Widths are ``x2 - x1 + 1``, centres ``x1 + 0.5 * w``; the box is ``ctr +- 0.5 * w'``
    with ``w' = exp(dw) * w``. No clamp on ``dw`` (the reference has none): an overflowing
    ``exp`` gives infinite sides, which clipping turns into the image border. The same bits on
    every machine (:func:`~detector.exact_math.exp_float32`, then float32 arithmetic).
    """
    boxes = np.asarray(anchors, dtype=np.float32)
    deltas = np.asarray(deltas, dtype=np.float32)
    widths = boxes[:, 2] - boxes[:, 0] + np.float32(1.0)
    heights = boxes[:, 3] - boxes[:, 1] + np.float32(1.0)
    ctr_x = boxes[:, 0] + np.float32(0.5) * widths
    ctr_y = boxes[:, 1] + np.float32(0.5) * heights
    pred_ctr_x = deltas[:, 0] * widths + ctr_x
    pred_ctr_y = deltas[:, 1] * heights + ctr_y
    with np.errstate(over="ignore"):  # inf * a positive width stays inf
        pred_w = exp_float32(deltas[:, 2]) * widths
        pred_h = exp_float32(deltas[:, 3]) * heights
    half = np.float32(0.5)
    return np.stack(
        (
            pred_ctr_x - half * pred_w,
            pred_ctr_y - half * pred_h,
            pred_ctr_x + half * pred_w,
            pred_ctr_y + half * pred_h,
        ),
        axis=1,
    )


def caffe_clip(boxes: np.ndarray, image_size: tuple[int, int]) -> np.ndarray:
    """``clip_boxes``: float32 ``[N, 4]`` xyxy clamped to ``[0, W - 1] x [0, H - 1]``
    (``image_size`` is ``(H, W)`` of the resized image)."""
    height, width = image_size
    zero = np.float32(0.0)
    x = np.maximum(np.minimum(boxes[:, 0::2], np.float32(width - 1)), zero)
    y = np.maximum(np.minimum(boxes[:, 1::2], np.float32(height - 1)), zero)
    return np.stack((x[:, 0], y[:, 0], x[:, 1], y[:, 1]), axis=1)


def caffe_large_enough(boxes: np.ndarray, min_size: np.float32) -> np.ndarray:
    """``_filter_boxes``: int64 indices of float32 ``[N, 4]`` boxes whose ``x2 - x1 + 1`` and
    ``y2 - y1 + 1`` are both ``>= min_size``, in index order."""
    widths = boxes[:, 2] - boxes[:, 0] + np.float32(1.0)
    heights = boxes[:, 3] - boxes[:, 1] + np.float32(1.0)
    return np.flatnonzero((widths >= min_size) & (heights >= min_size))


def caffe_nms(
    boxes: np.ndarray, scores: np.ndarray, *, thresh: float, max_keep: int | None = None
) -> np.ndarray:
    """py-faster-rcnn's ``cpu_nms``: int64 indices of the kept boxes, in visiting order.

    Boxes (float32 ``[N, 4]`` xyxy) are visited in ``scores.argsort()[::-1]`` order, the
    argsort being numpy 1.x's (:func:`detector.reference_sort.argsort`), so exact ties fall
    where the reference put them on every machine; a box not yet suppressed is kept and
    suppresses every later box whose IoU with it is ``>= thresh``. IoU uses +1 areas, every
    step in float32 as in the Cython code, compared with ``thresh`` in float64 as Cython
    compares a float with a double. ``max_keep`` stops after that many kept boxes: the same as
    taking the first ``max_keep`` of the full result, since kept boxes come in visiting order.
    """
    order = reference_sort.argsort(np.asarray(scores, dtype=np.float32))[::-1]
    # Coordinates in visiting order once, so each step reads the later boxes as slices (the
    # same float32 values and operations as gathering them by index every step).
    x1, y1, x2, y2 = (np.ascontiguousarray(boxes[order, k], dtype=np.float32) for k in range(4))
    one, zero = np.float32(1.0), np.float32(0.0)
    areas = (x2 - x1 + one) * (y2 - y1 + one)
    suppressed = np.zeros(len(order), dtype=bool)
    keep: list[int] = []
    limit = len(order) if max_keep is None else max_keep
    for rank in range(len(order)):
        if len(keep) >= limit:
            break
        if suppressed[rank]:
            continue
        keep.append(rank)
        nxt = rank + 1
        width = np.maximum(
            zero, np.minimum(x2[rank], x2[nxt:]) - np.maximum(x1[rank], x1[nxt:]) + one
        )
        height = np.maximum(
            zero, np.minimum(y2[rank], y2[nxt:]) - np.maximum(y1[rank], y1[nxt:]) + one
        )
        inter = width * height
        iou = inter / (areas[rank] + areas[nxt:] - inter)
        suppressed[nxt:] |= iou.astype(np.float64) >= float(thresh)
    return order[np.array(keep, dtype=np.int64)].astype(np.int64)


def caffe_proposals(
    logits: Tensor,
    deltas: Tensor,
    anchors: Tensor,
    *,
    image_size: tuple[int, int],
    im_scale: float,
    num_sizes: int,
    num_ratios: int,
    pre_nms_topk: int,
    post_nms_topk: int,
    nms_thresh: float,
    min_size: float = CAFFE_RPN_MIN_SIZE,
) -> tuple[Tensor, Tensor]:
    """The Caffe ``ProposalLayer.forward`` at test time, for one image.

    The rows are first put in Caffe's order (cell, then anchor ratio-major:
    :func:`caffe_anchor_order`), since numpy's sort breaks exact ties by position. Then the
    steps of the reference: fg probability (:func:`caffe_fg_probability`), decode every
    anchor (:func:`caffe_decode`), clip (:func:`caffe_clip`), drop sides below ``min_size *
    im_scale`` with ``im_scale`` rounded to float32 as Caffe's ``im_info`` blob holds it
    (:func:`caffe_large_enough`), order by ``argsort()[::-1]`` (numpy 1.x's argsort:
    :func:`detector.reference_sort.argsort`) and keep ``pre_nms_topk``,
    :func:`caffe_nms`, keep ``post_nms_topk``.

    Args:
        logits: ``Tensor[M]`` objectness logits (fg - bg), one per anchor, in our RPN's order:
            feature-map row, column, then cell anchor size-major.
        deltas: ``Tensor[M, 4]`` anchor deltas (dx, dy, dw, dh), same order.
        anchors: ``Tensor[M, 4]`` xyxy, resized pixels: :func:`caffe_cell_anchors` shifted by
            the stride per feature-map cell, same order.
        image_size: ``(H, W)`` of the resized image.
        im_scale: resized size / raw size (``PreparedImage.scale``).
        num_sizes, num_ratios: the cell anchors' layout (``M`` is cells x sizes x ratios).
        pre_nms_topk, post_nms_topk: proposals kept before / after NMS (6000 / 300).
        nms_thresh: +1-pixel IoU at which a box is suppressed (0.7).
        min_size: smallest side in raw-image pixels (16).

    Returns:
        (float32 ``Tensor[R, 4]`` xyxy resized pixels, ``Tensor[R]`` their logits), in NMS
        visiting order (score descending), on the device of ``logits``.

    Raises:
        ValueError: NaN or infinite logits or deltas, or mismatched shapes.
    """
    num, per_cell = logits.shape[0], num_sizes * num_ratios
    if (
        logits.ndim != 1
        or deltas.shape != (num, 4)
        or anchors.shape != (num, 4)
        or per_cell < 1
        or num % per_cell
    ):
        raise ValueError(
            f"need logits [M], deltas [M, 4] and anchors [M, 4] with M a multiple of "
            f"{num_sizes} x {num_ratios} anchors, got {tuple(logits.shape)}, "
            f"{tuple(deltas.shape)}, {tuple(anchors.shape)}"
        )
    order = caffe_anchor_order(num_sizes, num_ratios)
    logits32 = _caffe_rows(logits.reshape(-1, 1), order)[:, 0]
    deltas32 = _caffe_rows(deltas, order)
    if not (np.isfinite(logits32).all() and np.isfinite(deltas32).all()):
        raise ValueError("the RPN's logits or deltas contain NaN or infinite values")
    scores = caffe_fg_probability(logits32)
    boxes = caffe_clip(caffe_decode(_caffe_rows(anchors, order), deltas32), image_size)
    keep = caffe_large_enough(boxes, np.float32(min_size) * np.float32(im_scale))
    boxes, scores, logits32 = boxes[keep], scores[keep], logits32[keep]
    top = reference_sort.argsort(scores)[::-1][:pre_nms_topk]
    boxes, scores, logits32 = boxes[top], scores[top], logits32[top]
    keep = caffe_nms(boxes, scores, thresh=nms_thresh, max_keep=post_nms_topk)
    device = logits.device
    return torch.from_numpy(boxes[keep]).to(device), torch.from_numpy(logits32[keep]).to(device)


def _caffe_rows(values: Tensor, order: list[int]) -> np.ndarray:
    """float32 ``[M, k]`` numpy copy of ``values`` ``[M, k]`` (cell-major rows, ``len(order)``
    per cell) with each cell's rows permuted to ``order``."""
    array = values.detach().to("cpu", torch.float32).numpy()
    per_cell = array.reshape(-1, len(order), array.shape[1])[:, order, :]
    return np.ascontiguousarray(per_cell.reshape(-1, array.shape[1]))
