"""Given boxes: the user's own regions, checked, turned into RoIs and labelled (no selection).

``extract_features --boxes-from`` and ``Detector.detect(boxes=...)`` pool exactly the boxes
given, in their order. The rule at the image's edges is :func:`check_given_boxes`'s and
:func:`given_box_rois`'s (clip by default; ``clip=False`` as the original bottom-up code). The
labels follow :func:`detector.select.select_regions`'s conventions.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import Tensor

from detector.boxes import clip_boxes, rescale_to_float32
from detector.config import DetectorConfig
from detector.exact_math import softmax_float32
from detector.select import _check_probs, _numpy, attributes_from_probs
from detector.structures import RegionFeatures

if TYPE_CHECKING:
    from detector.preprocess import PreparedImage


@dataclass(frozen=True, eq=False)
class CheckedBoxes:
    """One image's given boxes as :func:`check_given_boxes` returned them, with the rule that
    made them, which :func:`given_box_rois` follows too.

    Attributes:
        boxes: float32 CPU ``Tensor[K, 4]`` xyxy, raw-image pixels (the records' boxes).
        clip: whether they were clipped to the image (False: kept as given).
    """

    boxes: Tensor
    clip: bool = True


def check_given_boxes(
    boxes: Tensor | np.ndarray, *, image_h: int, image_w: int, clip: bool = True
) -> Tensor:
    """One image's given boxes, checked and (by default) clipped to the image.

    The rule at the edges: with ``clip`` (the default) each box is clamped to ``[0, w] x
    [0, h]``, since a box reaching outside the image is most likely a mistake in the box file.
    With ``clip=False`` the boxes are returned as given, as the original bottom-up code
    (``tools/generate_tsv.py`` -> ``im_detect``) pooled them: RoIPool then clamps each cell to
    the feature map and gives 0 for a cell wholly outside it. Either way a box wholly outside
    the image is refused: the original would have pooled it to zeros, but such a box is
    surely a mistake (the one place ``clip=False`` differs from the original).

    Args:
        boxes: ``[K, 4]`` xyxy, raw-image pixels (a Tensor or an array; cast to float32).
        image_h: height of the raw image in pixels.
        image_w: width of the raw image in pixels.
        clip: clamp the boxes to the image (True) or keep them as given (False).

    Returns:
        float32 CPU ``Tensor[K, 4]`` xyxy, raw-image pixels, in the given order: clipped to
        ``[0, w] x [0, h]`` with ``clip``, else the given coordinates.

    Raises:
        ValueError: no boxes, not ``[K, 4]``, a NaN or infinite coordinate, a degenerate box
            (``x2 <= x1`` or ``y2 <= y1``), or a box wholly outside the image. The message
            names the box by its 0-based position and its coordinates.
    """
    if isinstance(boxes, Tensor):
        tensor = boxes.detach().to("cpu", torch.float32)
    else:  # a copy: the caller's array may be read-only
        tensor = torch.from_numpy(np.array(boxes, dtype=np.float32))
    if tensor.ndim != 2 or tensor.shape[1] != 4:
        raise ValueError(f"boxes must be [K, 4] (x1, y1, x2, y2), got shape {tuple(tensor.shape)}")
    if tensor.shape[0] == 0:
        raise ValueError("no boxes given")
    problems = (
        (~torch.isfinite(tensor).all(dim=1), "has a NaN or infinite coordinate"),
        (
            (tensor[:, 2] <= tensor[:, 0]) | (tensor[:, 3] <= tensor[:, 1]),
            "is degenerate (x2 <= x1 or y2 <= y1)",
        ),
    )
    for bad, what in problems:
        _raise_for_box(bad, tensor, what)
    clipped = clip_boxes(tensor, (image_h, image_w))
    empty = (clipped[:, 2] <= clipped[:, 0]) | (clipped[:, 3] <= clipped[:, 1])
    _raise_for_box(empty, tensor, f"lies wholly outside the {image_w}x{image_h} image")
    return clipped if clip else tensor


def _raise_for_box(bad: Tensor, boxes: Tensor, what: str) -> None:
    """``ValueError`` naming the first box flagged in ``bad`` (bool ``[K]``), if any."""
    flagged = torch.nonzero(bad).flatten()
    if len(flagged):
        index = int(flagged[0])
        coords = ", ".join(f"{v:g}" for v in boxes[index].tolist())
        more = f" (and {len(flagged) - 1} more)" if len(flagged) > 1 else ""
        raise ValueError(f"box {index} [{coords}] {what}{more}")


def given_box_rois(boxes: Tensor, image: PreparedImage, *, clip: bool = True) -> Tensor:
    """The RoIs of checked given boxes: float32 ``Tensor[K, 4]`` xyxy, resized-image pixels.

    Each box is scaled by the image's ``scale`` (Caffe's ``im_rois * im_scale``), the inverse
    of how bottom-up selection maps its proposals back (``proposals / scale``). The product is
    taken in float64 and a product within one float32 ulp of an integer is that integer
    (:func:`detector.boxes.rescale_to_float32`), so a box that came from a proposal lands on
    that proposal's float32 coordinates and RoIPool cells exactly, Caffe's far edge ``W - 1``
    included.

    With ``clip`` (the default), a coordinate on the raw image's far edge goes to the resized
    image's far edge (the detectron2 RPN clips proposals there, and ``raw_w * scale`` can miss
    it by up to half a pixel) and the RoIs are clipped to the resized image. With
    ``clip=False`` the RoIs are the scaled boxes and nothing else, as the original's
    ``_project_im_rois`` made them: not clipped, no far-edge rule; RoIPool clamps each cell to
    the feature map (a cell wholly outside pools to 0).

    Args:
        boxes: float32 ``Tensor[K, 4]`` xyxy, raw-image pixels, checked
            (:func:`check_given_boxes` with the same ``clip``).
        image: the prepared image (its ``scale``, raw and resized sizes).
        clip: clip to the image (True) or pool the boxes as given (False).
    """
    rois = rescale_to_float32(boxes, image.scale)
    if not clip:
        return rois
    resized_h, resized_w = image.resized_size
    far_x = torch.tensor(float(resized_w), dtype=rois.dtype)
    far_y = torch.tensor(float(resized_h), dtype=rois.dtype)
    rois[:, 0::2] = torch.where(boxes[:, 0::2] >= image.raw_w, far_x, rois[:, 0::2])
    rois[:, 1::2] = torch.where(boxes[:, 1::2] >= image.raw_h, far_y, rois[:, 1::2])
    return clip_boxes(rois, image.resized_size)


def given_regions(
    config: DetectorConfig,
    *,
    image: PreparedImage,
    boxes: Tensor,
    features: Tensor,
    class_logits: Tensor,
    attr_logits: Tensor,
) -> RegionFeatures:
    """The regions of given boxes: every box, in order, with the heads' labels (no selection).

    Objects are the argmax/max of the class softmax with background sliced off, as both
    selections report them; attributes as :func:`attributes_from_probs`, renormalised only
    in ``max-class`` mode, as :func:`select_regions` does.

    Args:
        config: ``selection`` decides the attribute convention.
        image: the prepared image (its id and raw size).
        boxes: ``Tensor[K, 4]`` xyxy, raw-image pixels, as :func:`check_given_boxes` returned
            them (clipped unless ``clip=False``); the records' boxes.
        features: ``Tensor[K, D]`` pooled res5 features of the boxes' RoIs.
        class_logits: ``Tensor[K, C + 1]``, background last.
        attr_logits: ``Tensor[K, A + 1]``, "no attribute" last.
    """
    num_classes = _check_probs(class_logits, int(boxes.shape[0]), "class_logits")
    probs = softmax_float32(class_logits, last_first=True)[:, :num_classes]
    object_conf, object_ids = probs.max(dim=1)
    attr_ids, attr_conf = attributes_from_probs(
        attr_logits, renormalize=config.selection == "max-class"
    )
    return RegionFeatures(
        image_id=image.image_id,
        image_h=image.raw_h,
        image_w=image.raw_w,
        boxes=_numpy(boxes, np.float32),
        features=_numpy(features, np.float32),
        objects_id=_numpy(object_ids, np.int64),
        objects_conf=_numpy(object_conf, np.float32),
        attrs_id=_numpy(attr_ids, np.int64),
        attrs_conf=_numpy(attr_conf, np.float32),
    )
