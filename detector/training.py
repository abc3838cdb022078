"""Training losses of the detector: anchor and proposal matching, sampling, RPN and RoI losses.

The recipe is Detectron2's for a C4 Faster R-CNN (``modeling/matcher.py``, ``sampling.py``,
``proposal_generator/rpn.py``, ``roi_heads/roi_heads.py``, ``fast_rcnn.py``) plus the
bottom-up-attention attribute loss:

* RPN: anchors matched to ground truth at IoU 0.3 / 0.7 (below: background, between: ignored,
  above: foreground), with *low-quality matches* (each ground-truth box's best anchors are
  foreground whatever their IoU); 256 anchors sampled per image, at most half foreground;
  binary cross-entropy on objectness and smooth-L1 (L1 at ``beta=0``) on the deltas of
  foreground anchors, both summed and divided by ``batch_size_per_image * num_images``.
* RoI heads: ground-truth boxes appended to the (detached) proposals, matched at IoU 0.5,
  ``batch_size_per_image`` sampled with at most ``positive_fraction`` foreground; cross-entropy
  over C + 1 classes (background index C, last), class-specific smooth-L1 on the foreground
  deltas (weights 10, 10, 5, 5) summed and divided by the number of sampled proposals, and an
  attribute cross-entropy over A + 1 on the foreground, with the attribute head fed the
  ground-truth class (as bottom-up-attention trained it).

All boxes here are xyxy in resized-image pixels (the frame the network sees).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from detector.backbone import FrozenBatchNorm2d
from detector.boxes import BOX_HEAD_WEIGHTS, encode_deltas, pairwise_iou
from detector.model import Detector
from detector.rpn import RPN_BOX_WEIGHTS

#: Matcher labels.
BACKGROUND, IGNORE, FOREGROUND = 0, -1, 1


@dataclass(frozen=True)
class TrainingConfig:
    """Matching, sampling and loss settings (Detectron2 defaults unless stated)."""

    rpn_iou_thresholds: tuple[float, float] = (0.3, 0.7)
    """(low, high): anchors with IoU < low are background, >= high foreground, else ignored."""
    rpn_batch_size_per_image: int = 256
    """Anchors sampled per image for the RPN losses."""
    rpn_positive_fraction: float = 0.5
    """Largest share of foreground among the sampled anchors."""
    rpn_smooth_l1_beta: float = 0.0
    """smooth-L1 beta of the RPN deltas (0: plain L1, Detectron2's default)."""
    roi_iou_threshold: float = 0.5
    """Proposals with IoU >= this with a ground-truth box are foreground."""
    roi_batch_size_per_image: int = 128
    """Proposals sampled per image for the RoI losses (Detectron2: 512)."""
    roi_positive_fraction: float = 0.25
    """Largest share of foreground among the sampled proposals."""
    roi_smooth_l1_beta: float = 0.0
    """smooth-L1 beta of the box-head deltas (0: plain L1)."""
    attr_loss_weight: float = 1.0
    """Weight of the attribute cross-entropy in the total."""

    def __post_init__(self) -> None:
        low, high = self.rpn_iou_thresholds
        if not 0.0 <= low <= high <= 1.0:
            raise ValueError(f"need 0 <= low <= high <= 1 in rpn_iou_thresholds, got {low, high}")
        for name in ("rpn_positive_fraction", "roi_positive_fraction", "roi_iou_threshold"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {getattr(self, name)}")
        if self.rpn_batch_size_per_image < 1 or self.roi_batch_size_per_image < 1:
            raise ValueError("batch sizes per image must be >= 1")


@dataclass(frozen=True, eq=False)
class Targets:
    """Ground truth of one image, in the frame the network sees.

    Attributes:
        boxes: float32 ``Tensor[G, 4]`` xyxy, resized-image pixels, positive width and height.
        classes: int64 ``Tensor[G]`` object class ids in ``[0, C)``.
        attributes: int64 ``Tensor[G]`` attribute ids in ``[0, A)``.
    """

    boxes: Tensor
    classes: Tensor
    attributes: Tensor

    def __post_init__(self) -> None:
        count = self.boxes.shape[0]
        if self.boxes.ndim != 2 or self.boxes.shape[1] != 4:
            raise ValueError(f"Targets.boxes must be [G, 4], got {tuple(self.boxes.shape)}")
        if self.classes.shape != (count,) or self.attributes.shape != (count,):
            raise ValueError(
                f"Targets.classes and .attributes must be [{count}], got "
                f"{tuple(self.classes.shape)} and {tuple(self.attributes.shape)}"
            )


@dataclass(frozen=True, eq=False)
class DetectorLosses:
    """Scalar loss terms of one training step; ``total`` is their (weighted) sum."""

    total: Tensor
    rpn_objectness: Tensor
    rpn_box: Tensor
    roi_class: Tensor
    roi_box: Tensor
    roi_attr: Tensor

    def as_floats(self) -> dict[str, float]:
        """Every term as a Python float, for logging."""
        names = ("total", "rpn_objectness", "rpn_box", "roi_class", "roi_box", "roi_attr")
        return {name: float(getattr(self, name).detach()) for name in names}


def match(
    iou: Tensor, *, thresholds: Sequence[float], allow_low_quality_matches: bool
) -> tuple[Tensor, Tensor]:
    """Detectron2's ``Matcher``: the best ground truth of each prediction and its label.

    Args:
        iou: ``Tensor[G, N]`` IoU of G ground-truth boxes with N predictions (anchors or
            proposals), ``G >= 1``.
        thresholds: increasing IoU cut points. With one value ``t``: IoU < t is
            :data:`BACKGROUND`, >= t :data:`FOREGROUND`. With two ``(low, high)``: < low
            background, [low, high) :data:`IGNORE`, >= high foreground.
        allow_low_quality_matches: also make foreground every prediction whose IoU with some
            ground truth equals that ground truth's highest IoU (ties included), so each
            ground truth gets at least one match (the RPN does this).

    Returns:
        ``(matches, labels)``: int64 ``[N]`` index of the best ground truth (ties: lowest
        index), int8 ``[N]`` labels.
    """
    if iou.ndim != 2 or iou.shape[0] == 0:
        raise ValueError(f"iou must be [G, N] with G >= 1, got {tuple(iou.shape)}")
    cuts = [float(t) for t in thresholds]
    if not cuts or cuts != sorted(cuts) or len(cuts) > 2:
        raise ValueError(f"thresholds must be 1 or 2 increasing values, got {thresholds}")
    best_iou, matches = iou.max(dim=0)
    labels = torch.full(matches.shape, FOREGROUND, dtype=torch.int8, device=iou.device)
    labels[best_iou < cuts[0]] = BACKGROUND
    if len(cuts) == 2:
        labels[(best_iou >= cuts[0]) & (best_iou < cuts[1])] = IGNORE
    if allow_low_quality_matches:
        best_per_gt = iou.max(dim=1, keepdim=True).values
        # Detectron2 keeps the prediction's own best match; it only flips the label.
        _, pred_index = torch.nonzero(iou == best_per_gt, as_tuple=True)
        labels[pred_index] = FOREGROUND
    return matches, labels


def subsample_labels(
    labels: Tensor,
    *,
    num_samples: int,
    positive_fraction: float,
    background_label: int,
    generator: torch.Generator,
) -> tuple[Tensor, Tensor]:
    """Detectron2's ``subsample_labels``: random foreground and background indices.

    Args:
        labels: int ``Tensor[N]``: ``-1`` ignored, ``background_label`` background, anything
            else foreground.
        num_samples: total to draw.
        positive_fraction: at most ``int(num_samples * positive_fraction)`` foreground; the
            background fills the rest as far as it goes.
        background_label: the background value (0 for the RPN, C for the RoI heads).
        generator: CPU generator drawing the permutations (seeded by the caller).

    Returns:
        ``(foreground_index, background_index)`` int64, each in random order.
    """
    positive = torch.nonzero((labels != -1) & (labels != background_label)).flatten()
    negative = torch.nonzero(labels == background_label).flatten()
    num_pos = min(positive.numel(), int(num_samples * positive_fraction))
    num_neg = min(negative.numel(), num_samples - num_pos)
    perm_pos = torch.randperm(positive.numel(), generator=generator)[:num_pos]
    perm_neg = torch.randperm(negative.numel(), generator=generator)[:num_neg]
    return positive[perm_pos.to(positive.device)], negative[perm_neg.to(negative.device)]


def _smooth_l1_sum(input: Tensor, target: Tensor, beta: float) -> Tensor:
    if beta < 1e-5:  # torch's smooth_l1 at beta 0 is L1 but slower; Detectron2 does the same
        return (input - target).abs().sum()
    return F.smooth_l1_loss(input, target, beta=beta, reduction="sum")


def rpn_losses(
    *,
    anchors: Tensor,
    logits: Tensor,
    deltas: Tensor,
    targets: Sequence[Targets],
    config: TrainingConfig,
    generator: torch.Generator,
) -> tuple[Tensor, Tensor]:
    """RPN objectness and box losses of a batch.

    Args:
        anchors: ``Tensor[M, 4]`` xyxy, resized pixels (shared by the batch).
        logits: ``Tensor[B, M]`` objectness logits.
        deltas: ``Tensor[B, M, 4]`` anchor deltas (weights 1, 1, 1, 1).
        targets: B ground truths.
        config: thresholds and sampling.
        generator: draws the samples.

    Returns:
        ``(objectness, box)`` scalars, each divided by ``rpn_batch_size_per_image * B``.
    """
    if logits.shape[0] != len(targets):
        raise ValueError(f"got {logits.shape[0]} images of logits but {len(targets)} targets")
    objectness = logits.new_zeros(())
    box = logits.new_zeros(())
    for image_logits, image_deltas, target in zip(logits, deltas, targets, strict=True):
        iou = pairwise_iou(target.boxes.to(anchors), anchors)
        matches, labels = match(
            iou, thresholds=config.rpn_iou_thresholds, allow_low_quality_matches=True
        )
        pos, neg = subsample_labels(
            labels,
            num_samples=config.rpn_batch_size_per_image,
            positive_fraction=config.rpn_positive_fraction,
            background_label=BACKGROUND,
            generator=generator,
        )
        sampled = torch.cat([pos, neg])
        goal = torch.cat([torch.ones_like(pos), torch.zeros_like(neg)]).to(image_logits.dtype)
        objectness = objectness + F.binary_cross_entropy_with_logits(
            image_logits[sampled], goal, reduction="sum"
        )
        target_deltas = encode_deltas(
            anchors[pos], target.boxes.to(anchors)[matches[pos]], weights=RPN_BOX_WEIGHTS
        )
        box = box + _smooth_l1_sum(image_deltas[pos], target_deltas, config.rpn_smooth_l1_beta)
    normalizer = float(config.rpn_batch_size_per_image * len(targets))
    return objectness / normalizer, box / normalizer


@dataclass(frozen=True, eq=False)
class SampledProposals:
    """Proposals of one image chosen for the RoI losses, with their targets.

    Attributes:
        boxes: float32 ``[S, 4]`` xyxy, resized pixels (foreground first).
        classes: int64 ``[S]`` ground-truth class, ``C`` (background) for background.
        attributes: int64 ``[S]`` ground-truth attribute (meaningful on foreground only).
        target_boxes: float32 ``[S, 4]`` the matched ground-truth box.
        num_foreground: how many of the S come first as foreground.
    """

    boxes: Tensor
    classes: Tensor
    attributes: Tensor
    target_boxes: Tensor
    num_foreground: int


def sample_proposals(
    proposals: Tensor,
    target: Targets,
    *,
    num_classes: int,
    config: TrainingConfig,
    generator: torch.Generator,
) -> SampledProposals:
    """Detectron2's ``label_and_sample_proposals`` for one image.

    Ground-truth boxes are appended to the (detached) ``proposals`` so every object has a
    perfect foreground example even when the RPN is still poor. Matched at
    ``roi_iou_threshold`` without low-quality matches; background gets class ``num_classes``.
    """
    gt_boxes = target.boxes.to(proposals)
    boxes = torch.cat([proposals.detach(), gt_boxes])
    iou = pairwise_iou(gt_boxes, boxes)
    matches, labels = match(
        iou, thresholds=(config.roi_iou_threshold,), allow_low_quality_matches=False
    )
    classes = target.classes.to(proposals.device)[matches].clone()
    classes[labels == BACKGROUND] = num_classes
    pos, neg = subsample_labels(
        classes,
        num_samples=config.roi_batch_size_per_image,
        positive_fraction=config.roi_positive_fraction,
        background_label=num_classes,
        generator=generator,
    )
    chosen = torch.cat([pos, neg])
    return SampledProposals(
        boxes=boxes[chosen],
        classes=classes[chosen],
        attributes=target.attributes.to(proposals.device)[matches[chosen]],
        target_boxes=gt_boxes[matches[chosen]],
        num_foreground=int(pos.numel()),
    )


def roi_losses(
    detector: Detector,
    *,
    features: Tensor,
    samples: Sequence[SampledProposals],
    config: TrainingConfig,
) -> tuple[Tensor, Tensor, Tensor]:
    """Classification, box and attribute losses of the RoI heads.

    Args:
        detector: supplies ``roi_heads`` (pool, res5, box predictor).
        features: res4 ``[B, C4, h/16, w/16]`` with gradients.
        samples: B sampled proposal sets (see :func:`sample_proposals`).
        config: loss settings.

    Returns:
        ``(class, box, attr)`` scalars: mean cross-entropy over all sampled proposals;
        class-specific smooth-L1 summed over the foreground and divided by the number sampled;
        mean attribute cross-entropy over the foreground (0 when there is none).
    """
    heads = detector.roi_heads
    num_classes = detector.config.num_classes
    pooled = heads.pool(features, [s.boxes for s in samples])
    region = heads.region_features(pooled, chunk_size=detector.options.res5_chunk)
    classes = torch.cat([s.classes for s in samples])
    class_logits, deltas, attr_logits = heads.box_predictor(region, attr_classes=classes)
    class_loss = F.cross_entropy(class_logits, classes)

    foreground = classes < num_classes
    fg_index = torch.nonzero(foreground).flatten()
    proposals = torch.cat([s.boxes for s in samples])
    target_boxes = torch.cat([s.target_boxes for s in samples])
    attributes = torch.cat([s.attributes for s in samples])
    if fg_index.numel() == 0:
        zero = class_logits.sum() * 0.0
        return class_loss, zero + deltas.sum() * 0.0, zero + attr_logits.sum() * 0.0
    fg_classes = classes[fg_index]
    fg_deltas = deltas.view(-1, num_classes, 4)[fg_index, fg_classes]
    goal = encode_deltas(proposals[fg_index], target_boxes[fg_index], weights=BOX_HEAD_WEIGHTS)
    box_loss = _smooth_l1_sum(fg_deltas, goal, config.roi_smooth_l1_beta) / max(classes.numel(), 1)
    attr_loss = F.cross_entropy(attr_logits[fg_index], attributes[fg_index])
    return class_loss, box_loss, attr_loss


def detector_losses(
    detector: Detector,
    images: Tensor,
    targets: Sequence[Targets],
    *,
    config: TrainingConfig,
    generator: torch.Generator,
) -> DetectorLosses:
    """All losses of one training step on ``images`` ``[B, 3, h, w]`` (same size).

    Runs backbone and RPN with gradients, takes the RPN's proposals (detached, selected with
    the detector's own pre/post-NMS settings) for the RoI heads, adds the ground truth, and
    samples. No backward or optimiser step is taken.
    """
    if images.ndim != 4 or images.shape[0] != len(targets):
        raise ValueError(
            f"images must be [B, 3, h, w] with B = {len(targets)} targets, got "
            f"{tuple(images.shape)}"
        )
    features = detector.backbone(images)
    image_size = (int(images.shape[2]), int(images.shape[3]))
    rpn = detector.proposal_generator(features, image_size)
    rpn_objectness, rpn_box = rpn_losses(
        anchors=rpn.anchors,
        logits=rpn.logits,
        deltas=rpn.deltas,
        targets=targets,
        config=config,
        generator=generator,
    )
    samples = [
        sample_proposals(
            proposals,
            target,
            num_classes=detector.config.num_classes,
            config=config,
            generator=generator,
        )
        for proposals, target in zip(rpn.proposals, targets, strict=True)
    ]
    roi_class, roi_box, roi_attr = roi_losses(
        detector, features=features, samples=samples, config=config
    )
    total = rpn_objectness + rpn_box + roi_class + roi_box + config.attr_loss_weight * roi_attr
    return DetectorLosses(
        total=total,
        rpn_objectness=rpn_objectness,
        rpn_box=rpn_box,
        roi_class=roi_class,
        roi_box=roi_box,
        roi_attr=roi_attr,
    )


def trainable_parameters(detector: Detector, *, train_norm: bool = True) -> list[nn.Parameter]:
    """Make every weight trainable and return them.

    ``train_norm``: also train the affine ``weight``/``bias`` of the frozen batch norms (their
    statistics stay fixed); needed when training from scratch, where no pretrained BN exists.
    """
    if detector.bn_folded:
        raise ValueError("cannot train a detector whose batch norm was folded for inference")
    params = []
    for module in detector.modules():
        for name, param in module.named_parameters(recurse=False):
            trainable = train_norm or not isinstance(module, FrozenBatchNorm2d)
            param.requires_grad_(trainable)
            if trainable:
                params.append(param)
            del name
    return params
