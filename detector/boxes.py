"""Box geometry: pure functions on ``Tensor[N, 4]`` boxes in xyxy format.

Every function keeps the coordinate frame of its input (raw-image pixels, resized-image pixels
or normalised); each docstring says which frame it expects when that matters. Two IoU
conventions live here on purpose: Detectron2/torchvision (areas ``(x2 - x1) * (y2 - y1)``) and
Caffe/py-faster-rcnn (areas ``(x2 - x1 + 1) * (y2 - y1 + 1)``), which the original
bottom-up-attention box selection used.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from detector.exact_math import exp_float32_tensor

#: Largest log-scale a delta may apply: turns a 16 px box into at most a 1000 px box.
DEFAULT_SCALE_CLAMP: float = math.log(1000.0 / 16)
#: (wx, wy, ww, wh) the box head's class-specific deltas are scaled by (Detectron2's
#: ROI_BOX_HEAD.BBOX_REG_WEIGHTS of the bottom-up-attention model).
BOX_HEAD_WEIGHTS: tuple[float, float, float, float] = (10.0, 10.0, 5.0, 5.0)


def _check_boxes(boxes: Tensor, name: str) -> None:
    if not isinstance(boxes, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(boxes).__name__}")
    if boxes.ndim != 2 or boxes.shape[1] != 4:
        raise ValueError(f"{name} must have shape [N, 4] (xyxy), got {tuple(boxes.shape)}")


def _check_weights(weights: tuple[float, float, float, float]) -> tuple[float, ...]:
    values = tuple(float(w) for w in weights)
    if len(values) != 4 or any(w <= 0 for w in values):
        raise ValueError(f"weights must be 4 positive numbers (wx, wy, ww, wh), got {weights}")
    return values


def apply_deltas(
    deltas: Tensor,
    boxes: Tensor,
    *,
    weights: tuple[float, float, float, float],
    scale_clamp: float = DEFAULT_SCALE_CLAMP,
) -> Tensor:
    """Move and rescale ``boxes`` by regression ``deltas`` (Detectron2 ``Box2BoxTransform``).

    Width is ``x2 - x1`` (no +1). ``dw``/``dh`` are clamped to ``scale_clamp`` before ``exp``.
    Decoding runs in float32 whatever the input dtypes (both are cast), as Detectron2 does
    to keep decoding precise under autocast. The ``exp`` is
    :func:`~detector.exact_math.exp_float32_tensor` (torch's own changes last bits with the
    CPU's SIMD level), so the same deltas give the same boxes on every machine.

    Args:
        deltas: ``Tensor[N, k*4]`` (dx, dy, dw, dh) per box, ``k >= 1`` class-specific sets.
        boxes: ``Tensor[N, 4]`` xyxy reference boxes (anchors or proposals), any pixel frame.
        weights: (wx, wy, ww, wh) the deltas were scaled by: (1, 1, 1, 1) for the RPN,
            (10, 10, 5, 5) for the box head.
        scale_clamp: upper bound on ``dw`` and ``dh`` after dividing by the weights.

    Returns:
        float32 ``Tensor[N, k*4]`` xyxy boxes in the frame of ``boxes``.
    """
    _check_boxes(boxes, "boxes")
    wx, wy, ww, wh = _check_weights(weights)
    if deltas.ndim != 2 or deltas.shape[1] % 4 != 0 or deltas.shape[0] != boxes.shape[0]:
        raise ValueError(
            f"deltas must have shape [{boxes.shape[0]}, k*4], got {tuple(deltas.shape)}"
        )
    deltas = deltas.float()
    boxes = boxes.float()

    widths = boxes[:, 2] - boxes[:, 0]
    heights = boxes[:, 3] - boxes[:, 1]
    ctr_x = boxes[:, 0] + 0.5 * widths
    ctr_y = boxes[:, 1] + 0.5 * heights

    dx = deltas[:, 0::4] / wx
    dy = deltas[:, 1::4] / wy
    dw = torch.clamp(deltas[:, 2::4] / ww, max=scale_clamp)
    dh = torch.clamp(deltas[:, 3::4] / wh, max=scale_clamp)

    pred_ctr_x = dx * widths[:, None] + ctr_x[:, None]
    pred_ctr_y = dy * heights[:, None] + ctr_y[:, None]
    pred_w = exp_float32_tensor(dw) * widths[:, None]
    pred_h = exp_float32_tensor(dh) * heights[:, None]

    out = torch.empty_like(deltas)
    out[:, 0::4] = pred_ctr_x - 0.5 * pred_w
    out[:, 1::4] = pred_ctr_y - 0.5 * pred_h
    out[:, 2::4] = pred_ctr_x + 0.5 * pred_w
    out[:, 3::4] = pred_ctr_y + 0.5 * pred_h
    return out


def encode_deltas(
    src_boxes: Tensor, target_boxes: Tensor, *, weights: tuple[float, float, float, float]
) -> Tensor:
    """Deltas that move ``src_boxes`` onto ``target_boxes`` (Detectron2 ``get_deltas``).

    The inverse of :func:`apply_deltas` (up to the ``scale_clamp``): for boxes of positive size,
    ``apply_deltas(encode_deltas(s, t, weights=w), s, weights=w) == t``.

    Args:
        src_boxes: ``Tensor[N, 4]`` xyxy with positive width and height (proposals, anchors).
        target_boxes: ``Tensor[N, 4]`` xyxy, same frame as ``src_boxes`` (ground truth).
        weights: (wx, wy, ww, wh) the deltas are scaled by.

    Returns:
        float32 ``Tensor[N, 4]`` (dx, dy, dw, dh).
    """
    _check_boxes(src_boxes, "src_boxes")
    _check_boxes(target_boxes, "target_boxes")
    if src_boxes.shape[0] != target_boxes.shape[0]:
        raise ValueError(
            f"src_boxes and target_boxes differ in length: "
            f"{src_boxes.shape[0]} vs {target_boxes.shape[0]}"
        )
    wx, wy, ww, wh = _check_weights(weights)
    src = src_boxes.float()
    tgt = target_boxes.float()

    src_w = src[:, 2] - src[:, 0]
    src_h = src[:, 3] - src[:, 1]
    if src.shape[0] and not bool(((src_w > 0) & (src_h > 0)).all()):
        raise ValueError("src_boxes must all have positive width and height to encode deltas")
    src_cx = src[:, 0] + 0.5 * src_w
    src_cy = src[:, 1] + 0.5 * src_h

    tgt_w = tgt[:, 2] - tgt[:, 0]
    tgt_h = tgt[:, 3] - tgt[:, 1]
    tgt_cx = tgt[:, 0] + 0.5 * tgt_w
    tgt_cy = tgt[:, 1] + 0.5 * tgt_h

    dx = wx * (tgt_cx - src_cx) / src_w
    dy = wy * (tgt_cy - src_cy) / src_h
    dw = ww * torch.log(tgt_w / src_w)
    dh = wh * torch.log(tgt_h / src_h)
    return torch.stack((dx, dy, dw, dh), dim=1)


def clip_boxes(boxes: Tensor, image_size: tuple[int, int]) -> Tensor:
    """Clamp boxes to the image: x to ``[0, w]``, y to ``[0, h]`` (Detectron2 ``Boxes.clip``).

    Args:
        boxes: ``Tensor[N, 4]`` xyxy in the pixel frame of ``image_size`` (usually the resized
            image the network saw).
        image_size: ``(h, w)`` of that image.

    Returns:
        A new ``Tensor[N, 4]`` (same dtype); the input is not modified.

    Raises:
        ValueError: if a coordinate is NaN or infinite (a diverged regression).
    """
    _check_boxes(boxes, "boxes")
    h, w = image_size
    if boxes.numel() and not bool(torch.isfinite(boxes).all()):
        raise ValueError("boxes contain NaN or infinite coordinates; cannot clip them")
    x = boxes[:, 0::2].clamp(min=0, max=w)
    y = boxes[:, 1::2].clamp(min=0, max=h)
    return torch.stack((x[:, 0], y[:, 0], x[:, 1], y[:, 1]), dim=1)


def nonempty(boxes: Tensor, threshold: float = 0.0) -> Tensor:
    """Which boxes have width and height both strictly greater than ``threshold``.

    Args:
        boxes: ``Tensor[N, 4]`` xyxy, any frame (``threshold`` is in the same units).
        threshold: smallest side that still counts as empty.

    Returns:
        bool ``Tensor[N]``.
    """
    _check_boxes(boxes, "boxes")
    widths = boxes[:, 2] - boxes[:, 0]
    heights = boxes[:, 3] - boxes[:, 1]
    return (widths > threshold) & (heights > threshold)


def box_area(boxes: Tensor) -> Tensor:
    """Areas ``(x2 - x1) * (y2 - y1)`` of ``Tensor[N, 4]`` xyxy boxes, any frame; ``Tensor[N]``."""
    _check_boxes(boxes, "boxes")
    return (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])


def pairwise_iou(a: Tensor, b: Tensor) -> Tensor:
    """IoU of every box in ``a`` with every box in ``b``, torchvision/Detectron2 convention.

    Areas are ``(x2 - x1) * (y2 - y1)`` (no +1). Pairs whose union is zero get IoU 0.

    Args:
        a: ``Tensor[N, 4]`` xyxy.
        b: ``Tensor[M, 4]`` xyxy in the same frame.

    Returns:
        ``Tensor[N, M]`` in [0, 1].
    """
    _check_boxes(a, "a")
    _check_boxes(b, "b")
    area_a = box_area(a)
    area_b = box_area(b)
    lt = torch.maximum(a[:, None, :2], b[None, :, :2])
    rb = torch.minimum(a[:, None, 2:], b[None, :, 2:])
    wh = (rb - lt).clamp(min=0)
    inter = wh[..., 0] * wh[..., 1]
    union = area_a[:, None] + area_b[None, :] - inter
    return torch.where(union > 0, inter / union.clamp(min=torch.finfo(union.dtype).tiny), 0.0)


def pairwise_iou_caffe(a: Tensor, b: Tensor) -> Tensor:
    """IoU with the Caffe/py-faster-rcnn "+1 pixel" convention, in the input's float dtype.

    Areas are ``(x2 - x1 + 1) * (y2 - y1 + 1)``; the intersection's sides are
    ``max(0, min(x2) - max(x1) + 1)``; IoU is ``inter / (area_a + area_b - inter)``. The
    operations run in this order, element-wise, so with float32 input every value equals the
    one py-faster-rcnn's ``cpu_nms`` computes. The convention is not scale invariant: use the
    frame the reference used (bottom-up-attention ran it on raw-image pixels).

    Args:
        a: ``Tensor[N, 4]`` xyxy, integer-ish pixel coordinates.
        b: ``Tensor[M, 4]`` xyxy in the same frame.

    Returns:
        ``Tensor[N, M]``.
    """
    _check_boxes(a, "a")
    _check_boxes(b, "b")
    area_a = (a[:, 2] - a[:, 0] + 1) * (a[:, 3] - a[:, 1] + 1)
    area_b = (b[:, 2] - b[:, 0] + 1) * (b[:, 3] - b[:, 1] + 1)
    iw = torch.minimum(a[:, None, 2], b[None, :, 2]) - torch.maximum(a[:, None, 0], b[None, :, 0])
    ih = torch.minimum(a[:, None, 3], b[None, :, 3]) - torch.maximum(a[:, None, 1], b[None, :, 1])
    inter = (iw + 1).clamp(min=0) * (ih + 1).clamp(min=0)
    return inter / (area_a[:, None] + area_b[None, :] - inter)


def scale_boxes(boxes: Tensor, scale_x: float, scale_y: float) -> Tensor:
    """Multiply x coordinates by ``scale_x`` and y by ``scale_y``; a new ``Tensor[N, 4]``.

    Use it to move between frames, e.g. resized-image pixels to raw-image pixels with
    ``scale_x = raw_w / resized_w`` (or ``1 / scale`` of the Caffe resize).
    """
    _check_boxes(boxes, "boxes")
    factors = torch.tensor(
        [scale_x, scale_y, scale_x, scale_y], dtype=boxes.dtype, device=boxes.device
    )
    return boxes * factors


def rescale_to_float32(boxes: Tensor, scale: float) -> Tensor:
    """``boxes * scale`` as float32, recovering the integer that :func:`unscale_boxes` mapped
    to each coordinate; a new float32 ``Tensor[N, 4]``.

    The rule: let ``n`` be the integer nearest to ``boxes * scale`` (taken in float64). If
    ``unscale_boxes(n, scale)`` gives exactly the float32 coordinate we were given, the
    coordinate is ``n``; otherwise the float64 product rounded to float32.

    Why: a bottom-up run writes each proposal coordinate ``p`` (resized frame) as
    ``b = unscale_boxes(p, scale)``, torch's float32 ``p / float32(scale)``, about two ulps
    from ``p / scale``. Multiplying back lands within two ulps of ``p``, and rounding can stop
    one ulp short: at a Caffe proposal's far edge ``W - 1`` with ``(W - 1) / 16 = k + 1/2``,
    RoIPool's ``round`` then takes cell ``k`` instead of ``k + 1`` and the features change.
    Every clipped edge (0, ``W - 1``, ``H - 1``, detectron2's ``W``) is an integer, so a run's
    own boxes fed back pool exactly its RoIs. A coordinate that is not such an image of an
    integer is unchanged from the plain product; one that is, is indistinguishable from it.
    """
    _check_boxes(boxes, "boxes")
    product = boxes.double() * scale
    nearest = torch.round(product).float()
    recovered = unscale_boxes(nearest, scale) == boxes.float()
    return torch.where(recovered, nearest, product.float())


def unscale_boxes(boxes: Tensor, scale: float) -> Tensor:
    """Divide every coordinate by ``scale``; a new ``Tensor[N, 4]``.

    Resized-image pixels to raw-image pixels with the Caffe ``im_scale`` (raw = resized /
    scale), computed as the reference's ``rois / im_scale``: a division, which can differ in
    the last bit from :func:`scale_boxes` by ``1 / scale``.
    """
    _check_boxes(boxes, "boxes")
    if not scale > 0:
        raise ValueError(f"scale must be positive, got {scale}")
    return boxes / scale
