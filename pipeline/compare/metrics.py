"""The figures of ``extract_features compare``: pure functions of two records, and their
summaries over all images (no torch, no files)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from detector import RegionFeatures


#: IoU thresholds of the full check's matched fractions.
IOU_LEVELS: tuple[float, ...] = (0.99, 0.9, 0.5)
#: What the full check's matching is, in the report's words.
MATCHING = (
    "greedy one-to-one: pairs in descending IoU (continuous IoU, no +1, raw-image pixels), "
    "each reference box and each of ours used once"
)


@dataclass(frozen=True)
class GivenBoxTolerances:
    """When the given-box check passes (over all boxes of all images)."""

    median_cosine: float = 0.999
    """Median per-box feature cosine at least this."""
    worst_cosine: float = 0.99
    """Smallest per-box feature cosine at least this."""
    objects_agree: float = 0.98
    """Fraction of boxes whose ``objects_id`` equals the reference's, at least this."""
    median_scale_difference: float = 0.01
    """Median per-box ``|norm(ours) / norm(ref) - 1|`` at most this: cosine cannot see scale,
    so features scaled by 7, or L2-normalised, pass every cosine limit."""
    median_relative_difference: float = 0.05
    """Median per-box ``||ours - ref||_2 / ||ref||_2`` at most this (with equal norms, what a
    cosine of 0.999 allows: ``sqrt(2 * (1 - 0.999))`` = 0.045)."""


@dataclass(frozen=True)
class ReproduceRule:
    """When a proposal layer reproduces the reference (over all boxes of all images)."""

    iou: float = 0.9
    """The IoU a reference box must be matched at to count as reproduced."""
    matched_fraction: float = 0.95
    """Fraction of reference boxes matched at ``iou``, at least this."""
    match_iou: float = 0.5
    """Pairs at or above this IoU are "matched": object agreement and cosine are over them."""
    objects_agree: float = 0.95
    """Fraction of matched pairs whose ``objects_id`` agree, at least this."""


# --- per image: pure functions of two records ---------------------------------------------------


def feature_cosine(ours: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """Row-wise cosine of ``[K, D]`` features, float64 ``[K]``; two zero rows count as 1, one
    zero row against a non-zero one as 0."""
    a, b = ours.astype(np.float64), reference.astype(np.float64)
    norms = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    both_zero = ~a.any(axis=1) & ~b.any(axis=1)
    cosine = np.divide((a * b).sum(axis=1), norms, out=np.zeros(len(a)), where=norms > 0)
    return np.where(both_zero, 1.0, cosine)


def scale_difference(ours: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """Row-wise ``|norm(ours) / norm(ref) - 1|`` of ``[K, D]`` features, float64 ``[K]``; 0 when
    both rows are zero, inf when only ``ref`` is."""
    ours_norm = np.linalg.norm(ours.astype(np.float64), axis=1)
    ref_norm = np.linalg.norm(reference.astype(np.float64), axis=1)
    ratio = np.divide(
        ours_norm, ref_norm, out=np.where(ours_norm > 0, np.inf, 1.0), where=ref_norm > 0
    )
    return np.abs(ratio - 1.0)


def feature_differences(ours: np.ndarray, reference: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per row of ``[K, D]`` features: the largest absolute difference of one dimension, and
    ``||ours - ref||_2 / ||ref||_2`` (0 when both are zero, inf when only ``ref`` is). Float64
    ``[K]`` each."""
    delta = ours.astype(np.float64) - reference.astype(np.float64)
    largest = np.abs(delta).max(axis=1) if delta.shape[1] else np.zeros(len(delta))
    error = np.linalg.norm(delta, axis=1)
    scale = np.linalg.norm(reference.astype(np.float64), axis=1)
    relative = np.divide(error, scale, out=np.where(error > 0, np.inf, 0.0), where=scale > 0)
    return largest, relative


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of every box of ``a`` ``[N, 4]`` with every box of ``b`` ``[M, 4]`` (xyxy, one frame),
    continuous areas (no +1), float64 ``[N, M]``; 0 where the union is empty."""
    a, b = a.astype(np.float64), b.astype(np.float64)
    area_a = (a[:, 2] - a[:, 0]).clip(min=0) * (a[:, 3] - a[:, 1]).clip(min=0)
    area_b = (b[:, 2] - b[:, 0]).clip(min=0) * (b[:, 3] - b[:, 1]).clip(min=0)
    wh = np.minimum(a[:, None, 2:], b[None, :, 2:]) - np.maximum(a[:, None, :2], b[None, :, :2])
    inter = wh.clip(min=0).prod(axis=2)
    union = area_a[:, None] + area_b[None, :] - inter
    return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)


@dataclass(frozen=True, eq=False)
class BoxMatch:
    """A one-to-one matching: reference box ``reference[k]`` with our box ``ours[k]`` at IoU
    ``iou[k]`` (int64, int64, float64 ``[M]``, by descending IoU)."""

    reference: np.ndarray
    ours: np.ndarray
    iou: np.ndarray


def match_boxes(reference: np.ndarray, ours: np.ndarray) -> BoxMatch:
    """Greedy one-to-one matching of ``reference`` ``[N, 4]`` and ``ours`` ``[M, 4]`` boxes
    (xyxy, raw-image pixels): repeatedly the free pair with the highest IoU (ties: lower
    reference index, then lower index of ours), pairs with IoU 0 never. Not the matching of
    highest total IoU (Hungarian), but its pairs at IoU >= t are the same whichever t a
    matching would stop at, which the thresholded fractions need."""
    iou = box_iou(reference, ours)
    order = np.argsort(-iou, axis=None, kind="stable")
    used_ref = np.zeros(iou.shape[0], dtype=bool)
    used_ours = np.zeros(iou.shape[1], dtype=bool)
    pairs: list[tuple[int, int]] = []
    for flat in order.tolist():
        r, o = divmod(flat, iou.shape[1])
        if iou[r, o] <= 0.0:
            break
        if not used_ref[r] and not used_ours[o]:
            used_ref[r] = used_ours[o] = True
            pairs.append((r, o))
    rows = np.array([p[0] for p in pairs], dtype=np.int64)
    cols = np.array([p[1] for p in pairs], dtype=np.int64)
    return BoxMatch(reference=rows, ours=cols, iou=iou[rows, cols])


@dataclass(frozen=True, eq=False)
class GivenBoxStats:
    """One image's given-box check, per box ``[K]`` (float64, bools); ``image_id`` names the
    image, so that a summary over many can name its worst box. ``box_index`` (int64 ``[K]``)
    is each row's box in the reference record where the rows are a subset (matched pairs);
    None: row k is box k."""

    image_id: str
    cosine: np.ndarray
    scale_difference: np.ndarray
    largest_difference: np.ndarray
    relative_difference: np.ndarray
    objects_agree: np.ndarray
    attrs_agree: np.ndarray
    box_index: np.ndarray | None = None


def compare_given(ours: RegionFeatures, reference: RegionFeatures) -> GivenBoxStats:
    """Our regions for the reference's boxes against the reference record, box by box."""
    largest, relative = feature_differences(ours.features, reference.features)
    return GivenBoxStats(
        image_id=reference.image_id,
        cosine=feature_cosine(ours.features, reference.features),
        scale_difference=scale_difference(ours.features, reference.features),
        largest_difference=largest,
        relative_difference=relative,
        objects_agree=ours.objects_id == reference.objects_id,
        attrs_agree=ours.attrs_id == reference.attrs_id,
    )


@dataclass(frozen=True, eq=False)
class FullStats:
    """One image's full check with one proposal layer: box counts, and per matched pair
    (:func:`match_boxes`) its IoU, object agreement and feature cosine ``[M]``."""

    reference_boxes: int
    our_boxes: int
    iou: np.ndarray
    objects_agree: np.ndarray
    cosine: np.ndarray


def compare_full(ours: RegionFeatures, reference: RegionFeatures) -> FullStats:
    """Our detected regions against the reference record, matched by IoU."""
    match = match_boxes(reference.boxes, ours.boxes)
    return FullStats(
        reference_boxes=reference.num_boxes,
        our_boxes=ours.num_boxes,
        iou=match.iou,
        objects_agree=ours.objects_id[match.ours] == reference.objects_id[match.reference],
        cosine=feature_cosine(ours.features[match.ours], reference.features[match.reference]),
    )


# --- over all images -----------------------------------------------------------------------------


def _median(values: np.ndarray) -> float | None:
    return float(np.median(values)) if len(values) else None


def _fraction(flags: np.ndarray) -> float | None:
    return float(np.mean(flags)) if len(flags) else None


@dataclass(frozen=True)
class GivenBoxSummary:
    """The given-box check over all boxes; None where there is no box.

    ``cosine_1st_percentile`` stands beside the worst cosine, so that one outlier box can be
    told from many bad ones; ``worst_cosine_image`` and ``worst_cosine_box`` (its index in that
    image's record) name where the worst one is."""

    boxes: int
    median_cosine: float | None
    cosine_1st_percentile: float | None
    worst_cosine: float | None
    worst_cosine_image: str | None
    worst_cosine_box: int | None
    median_scale_difference: float | None
    worst_scale_difference: float | None
    median_largest_difference: float | None
    worst_largest_difference: float | None
    median_relative_difference: float | None
    worst_relative_difference: float | None
    objects_agree: float | None
    attrs_agree: float | None
    passed: bool


def _worst_box(stats: Sequence[GivenBoxStats]) -> tuple[str, int] | None:
    """The image and box index of the smallest cosine (the first one on ties)."""
    candidates = [(float(s.cosine.min()), i) for i, s in enumerate(stats) if len(s.cosine)]
    if not candidates:
        return None
    _, index = min(candidates)
    worst = stats[index]
    row = int(np.argmin(worst.cosine))
    return worst.image_id, row if worst.box_index is None else int(worst.box_index[row])


def given_passes(
    cosine: np.ndarray,
    scale: np.ndarray,
    relative: np.ndarray,
    objects: np.ndarray,
    tolerances: GivenBoxTolerances,
) -> bool:
    """Every limit of ``tolerances`` on pooled per-box figures (no box: not passed)."""
    return bool(
        len(cosine)
        and np.median(cosine) >= tolerances.median_cosine
        and cosine.min() >= tolerances.worst_cosine
        and np.median(scale) <= tolerances.median_scale_difference
        and np.median(relative) <= tolerances.median_relative_difference
        and objects.mean() >= tolerances.objects_agree
    )


def summarize_given(
    stats: Sequence[GivenBoxStats], tolerances: GivenBoxTolerances
) -> GivenBoxSummary:
    """Pool the boxes of every image and apply ``tolerances`` (no box: not passed)."""

    def pooled(name: str) -> np.ndarray:
        return np.concatenate([getattr(s, name) for s in stats]) if stats else np.zeros(0)

    cosine, largest = pooled("cosine"), pooled("largest_difference")
    relative, objects = pooled("relative_difference"), pooled("objects_agree")
    scale, worst = pooled("scale_difference"), _worst_box(stats)
    return GivenBoxSummary(
        boxes=len(cosine),
        median_cosine=_median(cosine),
        cosine_1st_percentile=float(np.percentile(cosine, 1)) if len(cosine) else None,
        worst_cosine=float(cosine.min()) if len(cosine) else None,
        worst_cosine_image=None if worst is None else worst[0],
        worst_cosine_box=None if worst is None else worst[1],
        median_scale_difference=_median(scale),
        worst_scale_difference=float(scale.max()) if len(scale) else None,
        median_largest_difference=_median(largest),
        worst_largest_difference=float(largest.max()) if len(largest) else None,
        median_relative_difference=_median(relative),
        worst_relative_difference=float(relative.max()) if len(relative) else None,
        objects_agree=_fraction(objects),
        attrs_agree=_fraction(pooled("attrs_agree")),
        passed=given_passes(cosine, scale, relative, objects, tolerances),
    )


@dataclass(frozen=True)
class FullSummary:
    """The full check of one proposal layer over all images; None where undefined.

    ``matched`` maps each IoU level (as text, ``"0.9"``) to the fraction of reference boxes
    matched at it; agreement and cosine are over the pairs at ``rule.match_iou``.
    """

    reference_boxes: int
    our_boxes: int
    matched: dict[str, float | None]
    matched_pairs: int
    objects_agree: float | None
    median_cosine: float | None
    worst_cosine: float | None
    reproduces: bool


def summarize_full(stats: Sequence[FullStats], rule: ReproduceRule) -> FullSummary:
    """Pool every image's pairs and apply ``rule``."""
    reference_boxes = sum(s.reference_boxes for s in stats)
    iou = np.concatenate([s.iou for s in stats]) if stats else np.zeros(0)
    keep = iou >= rule.match_iou
    agree = np.concatenate([s.objects_agree for s in stats])[keep] if stats else np.zeros(0, bool)
    cosine = np.concatenate([s.cosine for s in stats])[keep] if stats else np.zeros(0)
    levels = sorted({*IOU_LEVELS, rule.iou}, reverse=True)
    matched = {
        f"{t:g}": (float((iou >= t).sum()) / reference_boxes if reference_boxes else None)
        for t in levels
    }
    at_rule, objects = matched[f"{rule.iou:g}"], _fraction(agree)
    return FullSummary(
        reference_boxes=reference_boxes,
        our_boxes=sum(s.our_boxes for s in stats),
        matched=matched,
        matched_pairs=int(keep.sum()),
        objects_agree=objects,
        median_cosine=_median(cosine),
        worst_cosine=float(cosine.min()) if len(cosine) else None,
        reproduces=bool(
            at_rule is not None
            and objects is not None
            and at_rule >= rule.matched_fraction
            and objects >= rule.objects_agree
        ),
    )
