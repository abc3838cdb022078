"""Box selection: which proposals of one image become its regions.

Two modes, each reproducing a reference extractor:

``bottom-up`` (:func:`select_bottom_up`)
    tools/generate_tsv.py of the original Caffe bottom-up-attention, which made LXMERT's
    features: per-class greedy NMS over the unregressed proposals with the Caffe "+1" IoU, each
    proposal keeping the best class score at which it survived, then a confidence threshold
    clamped to ``min_boxes..max_boxes``.
``max-class`` (:func:`select_max_class`)
    py-bottom-up-attention's LXMERT script and the Hugging Face demo port: each proposal takes
    its best class and that class's regressed box, then class-agnostic torchvision NMS with a
    rising threshold until enough boxes survive.

Given boxes skip selection (:mod:`detector.given_boxes`): every given box is a region, in order.

Class probabilities are always ``[R, C + 1]`` softmax outputs with background LAST (Detectron2
layout; the Caffe model had it first, so the reference's class loop ``range(1, C + 1)`` is our
``range(C)``).

Exact on every machine: every sort is numpy 1.x's introsort (:mod:`detector.reference_sort`),
the class and attribute softmax is :func:`detector.exact_math.softmax_float32`, and the rest
(Caffe IoU, comparisons, maxima) is correctly rounded float32 arithmetic, so the same network
outputs give the same regions whatever SIMD numpy or torch finds.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import Tensor

from detector import reference_sort
from detector.boxes import (
    BOX_HEAD_WEIGHTS,
    apply_deltas,
    clip_boxes,
    pairwise_iou_caffe,
    scale_boxes,
    unscale_boxes,
)
from detector.config import DetectorConfig
from detector.exact_math import softmax_float32
from detector.native_ops import nms
from detector.structures import RegionFeatures

if TYPE_CHECKING:
    from detector.preprocess import PreparedImage


@dataclass(frozen=True, eq=False)
class Selection:
    """The regions chosen for one image.

    Attributes:
        indices: int64 ``[K]`` rows of the proposals chosen, in output order.
        boxes: float32 ``[K, 4]`` xyxy, in the frame of the boxes given to the selector.
        object_ids: int64 ``[K]`` best object class (background excluded).
        object_conf: float32 ``[K]`` its probability (``bottom-up``: not renormalised).
    """

    indices: Tensor
    boxes: Tensor
    object_ids: Tensor
    object_conf: Tensor

    def __len__(self) -> int:
        return int(self.indices.shape[0])

    def to(self, device: torch.device) -> Selection:
        """The same selection with every tensor on ``device``."""
        return Selection(
            indices=self.indices.to(device),
            boxes=self.boxes.to(device),
            object_ids=self.object_ids.to(device),
            object_conf=self.object_conf.to(device),
        )


def _check_probs(class_probs: Tensor, num_rows: int, name: str) -> int:
    """Validate ``[R, C + 1]`` class probabilities; return C."""
    if not isinstance(class_probs, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(class_probs).__name__}")
    if class_probs.ndim != 2 or class_probs.shape[0] != num_rows or class_probs.shape[1] < 2:
        raise ValueError(
            f"{name} must have shape [{num_rows}, C + 1] (background last, C >= 1), "
            f"got {tuple(class_probs.shape)}"
        )
    return int(class_probs.shape[1]) - 1


def _check_counts(min_boxes: int, max_boxes: int) -> None:
    if not 1 <= min_boxes <= max_boxes:
        raise ValueError(f"need 1 <= min_boxes <= max_boxes, got {min_boxes}..{max_boxes}")


def _visiting_orders(scores: np.ndarray) -> np.ndarray:
    """int64 ``[C, R]``: each class's ``cpu_nms`` visiting order, ``scores.argsort()[::-1]``
    by numpy 1.x's argsort (:func:`detector.reference_sort.argsort`) wherever the order can
    change a ``max_conf``.

    A box scoring <= 0 can neither raise a ``max_conf`` (which starts at 0) nor suppress a box
    that could (it is visited after every positive score), so ties among such boxes may fall in
    any order; a class whose scores have no tie above 0 has one order that matters, which any
    correct sort gives. Only classes with a positive tie (or a NaN) pay for the reference sort:
    a confident model's probabilities underflow to exactly 0 in many places.
    """
    order = np.argsort(scores, axis=1)
    # Gathered through flat indices: cheaper than take_along_axis, and this runs per image.
    starts = np.arange(scores.shape[0])[:, None] * scores.shape[1]
    ordered = np.take(scores.reshape(-1), order + starts)
    tied = ((ordered[:, 1:] == ordered[:, :-1]) & (ordered[:, 1:] > 0)).any(axis=1)
    tied |= np.isnan(ordered[:, -1:]).any(axis=1)  # NaNs sort last; no boxes, no NaN
    if tied.any():
        order[tied] = reference_sort.argsort(scores[tied], axis=1)
    return order[:, ::-1]


def _greedy_nms_all_classes(
    overlap: np.ndarray, scores: np.ndarray, depth: int | None = None
) -> np.ndarray:
    """Greedy NMS for every class at once; bool ``[C, R]``, True where a proposal survives.

    ``overlap[i, j]`` says whether box ``i`` suppresses box ``j``; ``scores`` is float32
    ``[C, R]``. For each class this is py-faster-rcnn's ``cpu_nms``: visit boxes in the order
    ``scores.argsort()[::-1]`` (numpy 1.x's argsort row by row, :func:`_visiting_orders`, so
    exact ties fall where the reference put them), keep a box unless an
    earlier kept box suppressed it, and let it suppress all boxes it overlaps. The loop runs
    over rank positions (R steps), each step advancing all C classes together. ``depth``:
    visit only each class's first ``depth`` boxes in that order (a box's fate depends only on
    the boxes before it); the others stay False.
    """
    num_classes, num_boxes = scores.shape
    order = _visiting_orders(scores)
    suppressed = np.zeros((num_classes, num_boxes), dtype=bool)
    kept = np.zeros((num_classes, num_boxes), dtype=bool)
    classes = np.arange(num_classes)
    for rank in range(num_boxes if depth is None else min(depth, num_boxes)):
        current = order[:, rank]
        alive = ~suppressed[classes, current]
        kept[classes, current] = alive
        # Boxes already visited may be marked too; their fate was recorded when visited.
        rows = np.flatnonzero(alive)
        suppressed[rows] |= overlap[current[rows]]
    return kept


def _surviving_max_conf(boxes32: Tensor, scores: np.ndarray, nms_thresh: float) -> np.ndarray:
    """float64 ``[R]``: each box's highest score (float32 ``[C, R]``) at which it survived its
    class's greedy Caffe NMS over ``boxes32`` (float32 ``[R, 4]``); 0 where it never did."""
    # One Caffe IoU matrix serves every class; compare in float64 as Cython's float-vs-double
    # comparison does, so a float32 IoU sitting at the threshold is treated as the reference.
    iou = pairwise_iou_caffe(boxes32, boxes32).numpy()
    overlap = iou.astype(np.float64) >= float(nms_thresh)
    kept = _greedy_nms_all_classes(overlap, scores)
    # Scores are probabilities (>= 0), so the reference's running max from 0 equals this.
    max_conf: np.ndarray = np.where(kept, scores, np.float32(0)).max(axis=0, initial=0.0)
    return max_conf.astype(np.float64)


def _max_conf_above(
    boxes32: Tensor, scores: np.ndarray, nms_thresh: float, conf_thresh: float
) -> np.ndarray:
    """:func:`_surviving_max_conf`, exact wherever the true value is ``>= conf_thresh`` and
    below ``conf_thresh`` everywhere else, so ``max_conf >= conf_thresh`` picks the same boxes.

    Only classes with a score ``>= conf_thresh`` can give such a value, and within one only
    its boxes scored ``>= conf_thresh``, which its greedy order visits first: NMS runs for
    those classes and ranks only (about 100 classes and 50 ranks of 1600 x 300 on a photo).
    """
    above = scores.astype(np.float64) >= conf_thresh
    strong = np.flatnonzero(above.any(axis=1))
    if strong.size == 0:
        return np.zeros(scores.shape[1], dtype=np.float64)
    iou = pairwise_iou_caffe(boxes32, boxes32).numpy()
    overlap = iou.astype(np.float64) >= float(nms_thresh)
    sub = np.ascontiguousarray(scores[strong])
    kept = _greedy_nms_all_classes(overlap, sub, depth=int(above[strong].sum(axis=1).max()))
    max_conf: np.ndarray = np.where(kept, sub, np.float32(0)).max(axis=0, initial=0.0)
    return max_conf.astype(np.float64)


#: Floors tried by :func:`_keep_from_strong_classes`, as fractions of ``conf_thresh``.
_FLOOR_FRACTIONS = (1.0, 0.25, 0.0625)


def _keep_from_strong_classes(
    boxes32: Tensor,
    scores: np.ndarray,
    *,
    nms_thresh: float,
    conf_thresh: float,
    min_boxes: int,
    max_boxes: int,
) -> np.ndarray | None:
    """The boxes :func:`select_bottom_up` keeps, from :func:`_max_conf_above` (fast), or None
    where only every box's exact ``max_conf`` can tell (then the full NMS decides).

    Exact whenever it answers: between ``min_boxes`` and ``max_boxes`` survive the threshold
    (a count the strong classes settle), or the clamp's top ``want`` boxes are among those
    known exactly (``max_conf >= floor``) and those values are pairwise distinct, so that no
    tie order, and no box below the floor, can change the reference's ranking.
    """
    for fraction in _FLOOR_FRACTIONS:
        floor = conf_thresh * fraction
        max_conf = _max_conf_above(boxes32, scores, nms_thresh, floor)
        above = np.where(max_conf >= conf_thresh)[0]
        if min_boxes <= len(above) <= max_boxes:
            return above
        want = max_boxes if len(above) > max_boxes else min_boxes
        known = max_conf[max_conf >= floor]
        if len(known) >= want and np.unique(known).size == known.size:
            return reference_sort.argsort(max_conf)[::-1][:want]
        if len(above) > max_boxes:
            return None  # ties among the survivors: a lower floor cannot help
    return None


def _bottom_up_selection(keep_boxes: np.ndarray, boxes32: Tensor, scores: np.ndarray) -> Selection:
    """The :class:`Selection` (on the CPU) of rows ``keep_boxes`` of ``boxes32`` ``[R, 4]``,
    each with its best class by ``scores`` (float32 ``[C, R]``)."""
    # copy(): the reversed argsort view has negative strides, which torch refuses.
    indices = torch.from_numpy(keep_boxes.astype(np.int64, copy=True))
    # numpy's argmax takes the first of equal maxima, as torch's does.
    chosen_scores = scores[:, keep_boxes]
    best = chosen_scores.argmax(axis=0)
    return Selection(
        indices=indices,
        boxes=boxes32[indices],
        object_ids=torch.from_numpy(best.astype(np.int64)),
        object_conf=torch.from_numpy(chosen_scores[best, np.arange(len(best))].astype(np.float32)),
    )


def select_bottom_up(
    proposals: Tensor,
    class_probs: Tensor,
    *,
    conf_thresh: float,
    nms_thresh: float,
    min_boxes: int,
    max_boxes: int,
) -> Selection:
    """Bottom-up-attention's selection (tools/generate_tsv.py), vectorised over classes.

    For each object class: greedy NMS over the (unregressed) proposals scored by that class,
    Caffe IoU with +1 areas in float32, a box suppressed when IoU >= ``nms_thresh``. Each
    proposal's ``max_conf`` is the highest score at which it survived (0 if none). Proposals
    with ``max_conf >= conf_thresh`` are kept in index order; if fewer than ``min_boxes``, or
    more than ``max_boxes``, the top ``min_boxes`` / ``max_boxes`` by ``max_conf`` instead, in
    the order ``argsort(max_conf)[::-1]`` gives on float64 with numpy 1.x's argsort
    (:func:`detector.reference_sort.argsort`), as the reference computed it, so ties break
    identically.

    The Caffe IoU is not scale invariant and the reference ran it on ``rois / im_scale``: pass
    proposals in raw-image pixels to reproduce its choices exactly.

    Args:
        proposals: ``Tensor[R, 4]`` xyxy proposal boxes (the RPN output, not regressed), in the
            frame the NMS should run in (raw-image pixels for parity with the reference).
        class_probs: ``Tensor[R, C + 1]`` softmax over all classes, background last; cast to
            float32.
        conf_thresh: smallest ``max_conf`` kept before the min/max clamp (0.2).
        nms_thresh: per-class Caffe-IoU threshold (0.3).
        min_boxes: fewest regions returned (fewer only if ``R < min_boxes``).
        max_boxes: most regions returned.

    Returns:
        :class:`Selection` on the device of ``proposals``; ``boxes`` are the chosen proposals
        as given; ``object_ids``/``object_conf`` are argmax/max of ``class_probs[:, :C]``.
    """
    if not isinstance(proposals, Tensor) or proposals.ndim != 2 or proposals.shape[1] != 4:
        shape = tuple(proposals.shape) if isinstance(proposals, Tensor) else type(proposals)
        raise ValueError(f"proposals must be a Tensor[R, 4] (xyxy), got {shape}")
    num_classes = _check_probs(class_probs, proposals.shape[0], "class_probs")
    _check_counts(min_boxes, max_boxes)
    device = proposals.device

    boxes32 = proposals.detach().to("cpu", torch.float32)
    probs32 = class_probs.detach().to("cpu", torch.float32)[:, :num_classes]
    scores = np.ascontiguousarray(probs32.numpy().T)
    keep_boxes = _keep_from_strong_classes(
        boxes32,
        scores,
        nms_thresh=nms_thresh,
        conf_thresh=conf_thresh,
        min_boxes=min_boxes,
        max_boxes=max_boxes,
    )
    if keep_boxes is not None:
        return _bottom_up_selection(keep_boxes, boxes32, scores).to(device)
    max_conf = _surviving_max_conf(boxes32, scores, nms_thresh)
    keep_boxes = np.where(max_conf >= conf_thresh)[0]
    if len(keep_boxes) < min_boxes:
        keep_boxes = reference_sort.argsort(max_conf)[::-1][:min_boxes]
    elif len(keep_boxes) > max_boxes:
        keep_boxes = reference_sort.argsort(max_conf)[::-1][:max_boxes]
    return _bottom_up_selection(keep_boxes, boxes32, scores).to(device)


def select_max_class(
    pred_boxes: Tensor,
    class_probs: Tensor,
    image_size: tuple[int, int],
    *,
    nms_thresholds: Sequence[float],
    min_boxes: int,
    max_boxes: int,
) -> Selection:
    """py-bottom-up-attention / Hugging Face demo selection ("max-class").

    The background column is dropped; each proposal takes its best class (first on ties, as
    ``Tensor.max``) and that class's regressed box, clipped to ``image_size``. For each
    threshold in order: torchvision class-agnostic NMS (suppress IoU > threshold) by that best
    score, truncated to ``max_boxes``; the first result with at least ``min_boxes`` wins. If no
    threshold gives enough, the result with the most boxes (the last such threshold on ties,
    as py-bottom-up-attention falls through to its last threshold) is returned with a warning.

    Args:
        pred_boxes: ``Tensor[R, C*4]`` class-specific regressed boxes xyxy, resized-image
            pixels (``Tensor[R, 4]`` class-agnostic boxes are accepted too).
        class_probs: ``Tensor[R, C + 1]`` softmax over all classes, background last.
        image_size: ``(h, w)`` of the resized image, for clipping.
        nms_thresholds: IoU thresholds tried in order, e.g. 0.3, 0.4, ..., 0.9.
        min_boxes: fewest boxes a threshold's result must have to be accepted.
        max_boxes: most boxes returned.

    Returns:
        :class:`Selection` on the device of ``pred_boxes``; ``boxes`` are resized-image pixels,
        ``object_conf`` is the best class probability (not renormalised).
    """
    if not isinstance(pred_boxes, Tensor) or pred_boxes.ndim != 2:
        raise ValueError("pred_boxes must be a Tensor[R, C*4] of class-specific xyxy boxes")
    num_rows = pred_boxes.shape[0]
    num_classes = _check_probs(class_probs, num_rows, "class_probs")
    if pred_boxes.shape[1] not in (4, 4 * num_classes):
        raise ValueError(
            f"pred_boxes must have shape [{num_rows}, {4 * num_classes}] (or [{num_rows}, 4]), "
            f"got {tuple(pred_boxes.shape)}"
        )
    _check_counts(min_boxes, max_boxes)

    scores = class_probs.detach().float()[:, :num_classes].to(pred_boxes.device)
    best_scores, best_classes = scores.max(dim=1)
    best_boxes = _best_class_boxes(pred_boxes, best_classes, image_size)
    keep = _nms_until_enough(
        best_boxes,
        best_scores,
        nms_thresholds=nms_thresholds,
        min_boxes=min_boxes,
        max_boxes=max_boxes,
    )
    return Selection(
        indices=keep.to(torch.int64),
        boxes=best_boxes[keep],
        object_ids=best_classes[keep],
        object_conf=best_scores[keep],
    )


def _best_class_boxes(
    pred_boxes: Tensor, best_classes: Tensor, image_size: tuple[int, int]
) -> Tensor:
    """float32 ``[R, 4]``: each row's box of its ``best_classes`` class from ``pred_boxes``
    (``[R, C*4]``, or ``[R, 4]`` class-agnostic), clipped to ``image_size`` ``(h, w)``."""
    boxes = clip_boxes(pred_boxes.detach().float().reshape(-1, 4), image_size)
    if pred_boxes.shape[1] == 4:
        return boxes
    num_rows = pred_boxes.shape[0]
    return boxes.view(num_rows, -1, 4)[torch.arange(num_rows, device=boxes.device), best_classes]


def _nms_until_enough(
    boxes: Tensor,
    scores: Tensor,
    *,
    nms_thresholds: Sequence[float],
    min_boxes: int,
    max_boxes: int,
) -> Tensor:
    """Indices kept by class-agnostic NMS at the first threshold leaving ``min_boxes``
    (truncated to ``max_boxes``); failing that, the largest result, with a warning."""
    thresholds = [float(t) for t in nms_thresholds]
    if not thresholds:
        raise ValueError("nms_thresholds must not be empty")
    results: list[Tensor] = []
    for threshold in thresholds:
        results.append(nms(boxes, scores, threshold)[:max_boxes])
        if len(results[-1]) >= min_boxes:
            return results[-1]
    most = max(len(r) for r in results)
    warnings.warn(
        f"max-class selection found only {most} boxes (min_boxes={min_boxes}) at every NMS "
        f"threshold {thresholds}; returning those {most}",
        RuntimeWarning,
        stacklevel=4,  # the caller of select_max_class
    )
    return next(r for r in reversed(results) if len(r) == most)


def attributes_from_probs(attr_logits: Tensor, *, renormalize: bool) -> tuple[Tensor, Tensor]:
    """Best attribute of each region from the attribute head's logits.

    Args:
        attr_logits: ``Tensor[R, A + 1]`` logits, "no attribute" last.
        renormalize: True (max-class, as the HF port): softmax over the first A logits only.
            False (bottom-up): softmax over all A + 1, then drop the last column, so
            probabilities are not renormalised. Either way
            :func:`~detector.exact_math.softmax_float32`: the same bits on every machine.

    Returns:
        ``(ids, conf)``: int64 ``[R]`` argmax over the A attributes, float32 ``[R]`` its
        probability.
    """
    if not isinstance(attr_logits, Tensor) or attr_logits.ndim != 2 or attr_logits.shape[1] < 2:
        shape = tuple(attr_logits.shape) if isinstance(attr_logits, Tensor) else attr_logits
        raise ValueError(f"attr_logits must be a Tensor[R, A + 1] with A >= 1, got {shape}")
    logits = attr_logits.detach().float()
    if renormalize:
        probs = softmax_float32(logits[:, :-1], last_first=False)
    else:  # Caffe's attribute softmax, "no attribute" (our last column) its column 0
        probs = softmax_float32(logits, last_first=True)[:, :-1]
    conf, ids = probs.max(dim=-1)
    return ids, conf


def select(
    config: DetectorConfig,
    *,
    proposals: Tensor,
    pred_boxes: Tensor | None,
    class_probs: Tensor,
    image_size: tuple[int, int],
) -> Selection:
    """Run the selection ``config.selection`` names with the config's thresholds and counts.

    Args:
        config: supplies ``selection``, ``min_boxes``, ``max_boxes``, ``conf_thresh``,
            ``nms_thresh`` and ``max_class_nms_thresholds``.
        proposals: ``Tensor[R, 4]`` unregressed proposals (used by ``bottom-up``; see
            :func:`select_bottom_up` for the frame).
        pred_boxes: ``Tensor[R, C*4]`` regressed boxes, resized-image pixels (``max-class``).
        class_probs: ``Tensor[R, C + 1]`` softmax, background last.
        image_size: ``(h, w)`` of the resized image (``max-class`` clips to it).
    """
    if config.selection == "bottom-up":
        return select_bottom_up(
            proposals,
            class_probs,
            conf_thresh=config.conf_thresh,
            nms_thresh=config.nms_thresh,
            min_boxes=config.min_boxes,
            max_boxes=config.max_boxes,
        )
    if pred_boxes is None:
        raise ValueError("max-class selection needs pred_boxes (the regressed class boxes)")
    return select_max_class(
        pred_boxes,
        class_probs,
        image_size,
        nms_thresholds=config.max_class_nms_thresholds,
        min_boxes=config.min_boxes,
        max_boxes=config.max_boxes,
    )


def _best_class_decoded(deltas: Tensor, proposals: Tensor, class_probs: Tensor) -> Tensor:
    """float32 ``[R, 4]``: each proposal's box regressed by the deltas of its best class (as
    :func:`select_max_class` picks it: max of ``class_probs[:, :C]``, first on ties).

    max-class uses only that box of each proposal, and decoding is elementwise, so decoding
    these ``R`` boxes gives the very boxes that decoding all ``C`` per proposal would, at
    ``1/C`` of the cost (the exact ``exp`` is dearer than torch's).
    """
    if deltas.shape[1] == 4:  # class-agnostic
        return apply_deltas(deltas, proposals, weights=BOX_HEAD_WEIGHTS)
    num_classes = class_probs.shape[1] - 1
    best = class_probs[:, :num_classes].max(dim=1).indices.to(deltas.device)
    rows = torch.arange(deltas.shape[0], device=deltas.device)
    picked = deltas.reshape(deltas.shape[0], -1, 4)[rows, best]
    return apply_deltas(picked, proposals, weights=BOX_HEAD_WEIGHTS)


def select_regions(
    config: DetectorConfig,
    *,
    image: PreparedImage,
    proposals: Tensor,
    features: Tensor,
    class_logits: Tensor,
    deltas: Tensor,
    attr_logits: Tensor,
) -> RegionFeatures:
    """The regions of one image from its per-proposal network outputs, by :func:`select`.

    Args:
        config: selection mode, thresholds and box counts.
        image: the prepared image (its ``scale``, raw and resized sizes map the frames).
        proposals: ``Tensor[R, 4]`` xyxy RPN proposals, resized-image pixels.
        features: ``Tensor[R, D]`` pooled res5 features of the proposals.
        class_logits: ``Tensor[R, C + 1]``, background last.
        deltas: ``Tensor[R, 4C]`` class-specific box deltas (weights ``BOX_HEAD_WEIGHTS``).
        attr_logits: ``Tensor[R, A + 1]``, "no attribute" last.

    Returns:
        :class:`RegionFeatures` with boxes in raw-image pixels, clipped to the raw image.
    """
    max_class = config.selection == "max-class"
    # Caffe's class softmax (background, our last column, was its column 0).
    class_probs = softmax_float32(class_logits, last_first=True)
    selection = select(
        config,
        # bottom-up: Caffe ran its per-class NMS on rois / im_scale (its +1 IoU depends on the
        # frame), and those unregressed raw-frame proposals are the output boxes.
        proposals=unscale_boxes(proposals, image.scale),
        # max-class only: decoding boxes is wasted work for bottom-up.
        pred_boxes=_best_class_decoded(deltas, proposals, class_probs) if max_class else None,
        class_probs=class_probs,
        image_size=image.resized_size,
    )
    boxes = selection.boxes
    if max_class:
        # Detectron2's detector_postprocess: per-axis ratio of raw to resized size.
        resized_h, resized_w = image.resized_size
        boxes = scale_boxes(boxes, image.raw_w / resized_w, image.raw_h / resized_h)
    # Detectron2 clips proposals to [0, resized size]; mapped back they can exceed the raw
    # image by a fraction of a pixel, which LXMERT's loader rejects.
    boxes = clip_boxes(boxes, (image.raw_h, image.raw_w))
    attr_ids, attr_conf = attributes_from_probs(
        attr_logits[selection.indices], renormalize=max_class
    )
    return RegionFeatures(
        image_id=image.image_id,
        image_h=image.raw_h,
        image_w=image.raw_w,
        boxes=_numpy(boxes, np.float32),
        features=_numpy(features[selection.indices], np.float32),
        objects_id=_numpy(selection.object_ids, np.int64),
        objects_conf=_numpy(selection.object_conf, np.float32),
        attrs_id=_numpy(attr_ids, np.int64),
        attrs_conf=_numpy(attr_conf, np.float32),
    )


def _numpy(tensor: Tensor, dtype: type[np.generic]) -> np.ndarray:
    """A contiguous CPU numpy copy of ``tensor`` as ``dtype``."""
    return np.ascontiguousarray(tensor.detach().cpu().numpy().astype(dtype, copy=False))
