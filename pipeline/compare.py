"""``extract_features compare REFERENCE IMAGES...``: how close our features come to a reference.

The reference is any obj36 TSV (LXMERT's ``val2014_obj36.tsv``, or one of ours) or one of our
HDF5 files, read by image id (:class:`~pipeline.store.FeatureStore`). Images are the inputs
whose id (the project's id rule, :func:`~pipeline.inputs.list_inputs`) has a record in it.
Two checks per image:

- **Given-box check.** Our features, objects and attributes for the reference's own boxes (no
  RPN, no selection; :meth:`~detector.model.Detector.detect` with ``boxes``). It tests the
  weights, the preprocessing and the heads. Per box: the cosine of the two features, the
  largest absolute difference of one dimension, the relative difference
  ``||ours - ref||_2 / ||ref||_2``, and whether ``objects_id`` and ``attrs_id`` agree. It passes
  when, over all boxes of all images, the median cosine is >= 0.999, the worst >= 0.99 and
  ``objects_id`` agrees on >= 98% (:class:`GivenBoxTolerances`). The released features came
  from Caffe on a GPU, so rounding differs and near-ties can flip an argmax.
- **Full check, once per proposal layer** (``caffe``, ``detectron2``). Detection with
  ``--selection`` (default bottom-up, as LXMERT's features were made) keeping, per image, as
  many boxes as the reference record holds (``--box-count reference``; with bottom-up selection
  that is the same set the reference's own min/max rule kept) or the preset's min/max. Our
  boxes are matched one-to-one to the reference's by greedy IoU (:func:`match_boxes`: the
  highest-IoU pair first; continuous IoU, raw-image pixels). A greedy matching visits pairs in
  descending IoU, so its pairs at IoU >= t are exactly those a matching stopped at t would
  make: one matching serves every threshold. Reported: the fraction of reference boxes matched
  at IoU >= 0.99, 0.9 and 0.5, and on the pairs matched at IoU >= 0.5, object-id agreement
  and feature cosine. A proposal layer **reproduces** the reference when >= 95% of the
  reference boxes are matched at IoU >= 0.9 and objects agree on >= 95% of the pairs matched
  at IoU >= 0.5 (:class:`ReproduceRule`).

Exit codes: 0 the given-box check passes on every image in common (or in ``--limit``); 1 it
fails, or an image in common could not be checked (named); 2 usage (bad flags, unreadable
reference, no image in common, a feature size the detector cannot make).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
import textwrap
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np

from pipeline.command import Command, configure_logging, positive_int, run_command
from pipeline.exits import EXIT_OK, EXIT_SOME_FAILED, UsageError
from pipeline.inputs import InputItem
from pipeline.manifest import Failure
from weights.defaults import DEFAULT_DETECTOR, DEFAULT_DEVICE

if TYPE_CHECKING:  # torch and the detector load only when the command runs
    import torch

    from detector import Detector, DetectorConfig, RegionFeatures
    from detector.config import ProposalMode
    from detector.preprocess import PreparedImage
    from pipeline.store import FeatureStore

LOG = logging.getLogger("pipeline.compare")

BoxCount = Literal["reference", "preset"]

#: The proposal layers the full check runs, in the order reported.
PROPOSAL_MODES: tuple[ProposalMode, ...] = ("caffe", "detectron2")
#: IoU thresholds of the full check's matched fractions.
IOU_LEVELS: tuple[float, ...] = (0.99, 0.9, 0.5)
#: ``kind`` of every JSON report (an existing ``--report`` file is replaced only if it has it).
REPORT_KIND = "extract_features compare report"
#: File names the reference may have (the formats :class:`~pipeline.store.FeatureStore` reads).
REFERENCE_SUFFIXES = (".tsv", ".h5", ".hdf5")
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
    """One image's given-box check, per box ``[K]`` (float64, bools)."""

    cosine: np.ndarray
    largest_difference: np.ndarray
    relative_difference: np.ndarray
    objects_agree: np.ndarray
    attrs_agree: np.ndarray


def compare_given(ours: RegionFeatures, reference: RegionFeatures) -> GivenBoxStats:
    """Our regions for the reference's boxes against the reference record, box by box."""
    largest, relative = feature_differences(ours.features, reference.features)
    return GivenBoxStats(
        cosine=feature_cosine(ours.features, reference.features),
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
    """The given-box check over all boxes; None where there is no box."""

    boxes: int
    median_cosine: float | None
    worst_cosine: float | None
    median_largest_difference: float | None
    worst_largest_difference: float | None
    median_relative_difference: float | None
    worst_relative_difference: float | None
    objects_agree: float | None
    attrs_agree: float | None
    passed: bool


def summarize_given(
    stats: Sequence[GivenBoxStats], tolerances: GivenBoxTolerances
) -> GivenBoxSummary:
    """Pool the boxes of every image and apply ``tolerances`` (no box: not passed)."""

    def pooled(name: str) -> np.ndarray:
        return np.concatenate([getattr(s, name) for s in stats]) if stats else np.zeros(0)

    cosine, largest = pooled("cosine"), pooled("largest_difference")
    relative, objects = pooled("relative_difference"), pooled("objects_agree")
    passed = bool(
        len(cosine)
        and np.median(cosine) >= tolerances.median_cosine
        and cosine.min() >= tolerances.worst_cosine
        and objects.mean() >= tolerances.objects_agree
    )
    return GivenBoxSummary(
        boxes=len(cosine),
        median_cosine=_median(cosine),
        worst_cosine=float(cosine.min()) if len(cosine) else None,
        median_largest_difference=_median(largest),
        worst_largest_difference=float(largest.max()) if len(largest) else None,
        median_relative_difference=_median(relative),
        worst_relative_difference=float(relative.max()) if len(relative) else None,
        objects_agree=_fraction(objects),
        attrs_agree=_fraction(pooled("attrs_agree")),
        passed=passed,
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


# --- the command: settings -----------------------------------------------------------------------


@dataclass(frozen=True)
class CompareSettings:
    """What ``extract_features compare`` was asked to do, validated.

    Attributes:
        reference: the reference feature file (obj36 TSV, or our HDF5).
        inputs: image specs as given (files, folders, globs, ``@list.txt``).
        detector: registry name or checkpoint path.
        preset: ``--preset`` or None for the checkpoint's own.
        configs: per proposal layer that can run, the detector config of its full check.
        unavailable: per proposal layer that cannot run with this preset, why.
        box_count: ``reference`` (each image keeps as many boxes as its reference record) or
            ``preset`` (the config's min/max boxes).
        device: where the detector runs (``auto`` resolved).
        report: the JSON report to write, or None.
        limit: only the first N images in common (id order), or None.
        quiet, verbose: how much to print.
        tolerances, rule: when the given-box check passes and a proposal layer reproduces.
    """

    reference: Path
    inputs: tuple[str, ...]
    detector: str
    preset: str | None
    configs: Mapping[ProposalMode, DetectorConfig]
    unavailable: Mapping[ProposalMode, str]
    box_count: BoxCount
    device: torch.device
    report: Path | None
    limit: int | None
    quiet: bool
    verbose: bool
    tolerances: GivenBoxTolerances = field(default_factory=GivenBoxTolerances)
    rule: ReproduceRule = field(default_factory=ReproduceRule)


def _describe_rules() -> tuple[str, str]:
    """The two checks and their pass rules, in words (one paragraph each)."""
    given, rule = GivenBoxTolerances(), ReproduceRule()
    return (
        "given-box check: our features for the reference's own boxes (no RPN, no selection). "
        f"Passes when, over all boxes, the median feature cosine is >= {given.median_cosine}, "
        f"the worst >= {given.worst_cosine} and objects_id agrees on >= "
        f"{given.objects_agree:.0%} of boxes.",
        "full check, once per proposal layer (caffe, detectron2): our detected boxes matched "
        "one-to-one to the reference's by greedy IoU (highest pair first; continuous IoU in "
        "raw-image pixels); reported: the fraction of reference boxes matched at IoU >= "
        f"{', '.join(f'{t:g}' for t in IOU_LEVELS)}, and object agreement and feature cosine "
        f"on the pairs at IoU >= {rule.match_iou:g}. A layer reproduces the reference when "
        f">= {rule.matched_fraction:.0%} of reference boxes are matched at IoU >= "
        f"{rule.iou:g} and objects agree on >= {rule.objects_agree:.0%} of the pairs at IoU "
        f">= {rule.match_iou:g}.",
    )


def build_compare_parser() -> argparse.ArgumentParser:
    """The ``extract_features compare`` argument parser."""
    intro = (
        "Compare our features with a reference feature file (e.g. LXMERT's val2014_obj36.tsv) "
        "on the images present in both, and say which proposal layer reproduces it."
    )
    ids = (
        "image ids: as extract_features (the path relative to its input root, without the "
        "extension): give LXMERT's COCO images as the val2014 folder itself, so that ids read "
        "COCO_val2014_000000000042."
    )
    parser = argparse.ArgumentParser(
        prog="extract_features compare",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="\n\n".join(
            textwrap.fill(paragraph, width=88, break_on_hyphens=False)
            for paragraph in (intro, *_describe_rules())
        ),
        epilog=textwrap.fill(ids, width=88)
        + "\n\nexit codes:\n  0  the given-box check passes\n  1  it fails, or an image in "
        "common could not be checked (named)\n  2  usage: bad flags, unreadable reference, no "
        "image in common, a detector that cannot be loaded",
    )
    _add_compare_flags(parser)
    return parser


def _add_compare_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("reference", type=Path, metavar="REFERENCE", help="obj36 .tsv or .h5")
    parser.add_argument(
        "inputs", nargs="+", metavar="IMAGES", help="image files, folders, globs or @list.txt"
    )
    parser.add_argument(
        "--detector",
        default=DEFAULT_DETECTOR,
        metavar="NAME|PATH",
        help="registry name or checkpoint file (default: %(default)s)",
    )
    parser.add_argument(
        "--preset", default=None, help="detector config preset (default: the checkpoint's)"
    )
    parser.add_argument(
        "--selection",
        choices=("bottom-up", "max-class"),
        default="bottom-up",
        help="box selection of the full check (default: %(default)s, as LXMERT's features)",
    )
    parser.add_argument(
        "--box-count",
        choices=("reference", "preset"),
        default="reference",
        help="boxes per image in the full check: as many as the reference record holds "
        "(min = max), or the preset's min/max (default: %(default)s)",
    )
    parser.add_argument(
        "--device",
        default=DEFAULT_DEVICE,
        metavar="DEV",
        help="cpu, cuda, cuda:N or auto (default: %(default)s)",
    )
    parser.add_argument(
        "--report",
        type=Path,
        metavar="FILE.json",
        help="also write the figures, per image too, as JSON",
    )
    parser.add_argument(
        "--limit",
        type=positive_int,
        metavar="N",
        help="only the first N images in common, in id order",
    )
    verbosity = parser.add_mutually_exclusive_group()
    verbosity.add_argument("-q", "--quiet", action="store_true", help="print the verdict only")
    verbosity.add_argument(
        "-v",
        "--verbose",
        action="store_true",
        help="also print each image's figures and the detector's log",
    )


def _check_report_path(report: Path) -> None:
    """A report is a ``.json`` file in an existing folder that, if it exists, is a report."""
    if report.suffix.lower() != ".json":
        raise UsageError(f"--report {report}: give a file name ending in .json")
    if report.is_dir() or not report.parent.is_dir():
        raise UsageError(f"--report {report}: not a file in an existing folder")
    if report.exists():
        try:
            kind = json.loads(report.read_bytes()).get("kind")
        except (OSError, ValueError, AttributeError):
            kind = None
        if kind != REPORT_KIND:
            raise UsageError(
                f"--report {report} exists and is not a report of extract_features compare; "
                "remove it or choose another name"
            )


def _configs(
    args: argparse.Namespace,
) -> tuple[dict[ProposalMode, DetectorConfig], dict[ProposalMode, str]]:
    """Each proposal layer's config; a layer the preset cannot express is left out, named."""
    from detector.checkpoint import detector_config

    configs: dict[ProposalMode, DetectorConfig] = {}
    unavailable: dict[ProposalMode, str] = {}
    for mode in reversed(PROPOSAL_MODES):  # detectron2 first: any preset can run it
        overrides = {"proposals": mode, "selection": args.selection}
        try:
            configs[mode] = detector_config(args.detector, preset=args.preset, overrides=overrides)
        except ValueError as error:
            if not configs:  # not about the proposal layer: the flags are wrong
                raise UsageError(f"--detector {args.detector}: {error}") from error
            unavailable[mode] = str(error)
        except (KeyError, OSError) as error:
            message = error.args[0] if isinstance(error, KeyError) and error.args else error
            raise UsageError(f"--detector {args.detector}: {message}") from error
    return {m: configs[m] for m in PROPOSAL_MODES if m in configs}, unavailable


def validate_compare(args: argparse.Namespace) -> CompareSettings:
    """Check every flag (no weights read, no image opened); :class:`UsageError` otherwise."""
    from weights.defaults import DeviceError, resolve_device

    if args.reference.suffix.lower() not in REFERENCE_SUFFIXES:
        raise UsageError(
            f"reference {args.reference}: give an obj36 .tsv (LXMERT's or ours) or an .h5 "
            "output of extract_features"
        )
    if args.report is not None:
        _check_report_path(args.report)
    configs, unavailable = _configs(args)
    try:
        device = resolve_device(
            args.device,
            on_fallback=lambda m: print(f"extract_features compare: {m}", file=sys.stderr),
        )
    except DeviceError as error:
        raise UsageError(f"--device {args.device}: {error}") from error
    return CompareSettings(
        reference=args.reference,
        inputs=tuple(args.inputs),
        detector=args.detector,
        preset=args.preset,
        configs=configs,
        unavailable=unavailable,
        box_count=args.box_count,
        device=device,
        report=args.report,
        limit=args.limit,
        quiet=args.quiet,
        verbose=args.verbose,
    )


# --- plan: the reference and the images in common --------------------------------------------


@dataclass(frozen=True)
class ComparePlan:
    """The images to compare, found before any model loads.

    Attributes:
        settings: the validated flags.
        store: the reference, by image id.
        items: the listed images whose id is in the reference, id order, after ``--limit``.
        failures: listed inputs in common that cannot be read (named, with the reason).
        in_common: images in common before ``--limit``.
        inputs_only: listed images without a reference record.
        reference_only: reference records without a listed image.
    """

    settings: CompareSettings
    store: FeatureStore
    items: tuple[InputItem, ...]
    failures: tuple[Failure, ...]
    in_common: int
    inputs_only: int
    reference_only: int


def _examples(ids: Sequence[str]) -> str:
    shown = ", ".join(repr(i) for i in ids[:3])
    return shown + (", ..." if len(ids) > 3 else "") if ids else "none"


def _open_reference(path: Path) -> FeatureStore:
    from pipeline.store import FeatureStore

    try:
        return FeatureStore.open(path)
    except (OSError, ValueError) as error:
        raise UsageError(f"cannot read the reference {path}: {error}") from error


def _check_feature_size(plan_store: FeatureStore, image_id: str, settings: CompareSettings) -> None:
    """The reference's feature size must be the detector's (one record read)."""
    try:
        first = plan_store.get(image_id)
    except (OSError, ValueError) as error:
        raise UsageError(f"cannot read the reference {settings.reference}: {error}") from error
    config = next(iter(settings.configs.values()))
    if first.features.ndim != 2 or first.features.shape[1] != config.feature_dim:
        raise UsageError(
            f"the reference {settings.reference} holds {first.features.shape[-1]}-d features "
            f"(image {image_id!r}) but detector {settings.detector} (preset {config.name!r}) "
            f"makes {config.feature_dim}-d ones"
        )


def plan_compare(settings: CompareSettings) -> ComparePlan:
    """Open the reference, list the inputs, keep the ids in both (:class:`UsageError` when
    none is, naming examples of each side's ids)."""
    from pipeline.inputs import list_inputs

    store = _open_reference(settings.reference)
    try:
        listing = list_inputs(settings.inputs)
    except (OSError, ValueError) as error:
        raise UsageError(str(error)) from error
    common = [item for item in listing.items if item.image_id in store]
    failures = tuple(f for f in listing.failures if f.image_id in store)
    if not common and not failures:
        listed_ids = [item.image_id for item in listing.items]
        raise UsageError(
            f"no image in common: the inputs' ids ({_examples(listed_ids)}) "
            f"are not in the reference {settings.reference} ({_examples(store.ids())}); ids are "
            "paths relative to each input root without the extension"
        )
    if common:
        _check_feature_size(store, common[0].image_id, settings)
    listed = {item.image_id for item in listing.items}
    return ComparePlan(
        settings=settings,
        store=store,
        items=tuple(common[: settings.limit]),
        failures=failures,
        in_common=len(common),
        inputs_only=len(listing.items) - len(common),
        reference_only=sum(1 for image_id in store.ids() if image_id not in listed),
    )


# --- run: one image at a time -----------------------------------------------------------------


@dataclass(frozen=True)
class ImageComparison:
    """Both checks of one image (``full`` per proposal layer that ran)."""

    image_id: str
    path: str
    given: GivenBoxStats
    full: Mapping[ProposalMode, FullStats]


def load_detectors(settings: CompareSettings) -> dict[ProposalMode, Detector]:
    """One detector per proposal layer that can run (the weights are read once per layer)."""
    from detector import load_detector

    detectors: dict[ProposalMode, Detector] = {}
    for mode, config in settings.configs.items():
        try:
            detectors[mode] = load_detector(
                settings.detector, config=config, device=settings.device
            )
        except (KeyError, ValueError, TypeError, OSError) as error:
            message = error.args[0] if isinstance(error, KeyError) and error.args else error
            raise UsageError(f"--detector {settings.detector}: {message}") from error
    return detectors


def detect_with_count(
    detector: Detector, image: PreparedImage, *, boxes: int | None
) -> RegionFeatures:
    """``detector``'s regions of ``image`` with its selection keeping exactly ``boxes`` regions
    (min = max; None: the config's min/max), boxes xyxy in raw-image pixels."""
    import torch

    from detector.select import select_regions

    if boxes is None:
        return detector.detect([image])[0]
    config = detector.config.replace(min_boxes=boxes, max_boxes=boxes)
    with torch.inference_mode():
        tensor = image.tensor[None].to(detector.device)
        raw = detector.forward_raw(tensor, image_scales=[image.scale])
    return select_regions(
        config,
        image=image,
        proposals=raw.rpn.proposals[0],
        features=raw.roi.features,
        class_logits=raw.roi.class_logits,
        deltas=raw.roi.deltas,
        attr_logits=raw.roi.attr_logits,
    )


def compare_image(
    item: InputItem,
    reference: RegionFeatures,
    detectors: Mapping[ProposalMode, Detector],
    *,
    box_count: BoxCount,
) -> ImageComparison:
    """Both checks of one image against its reference record.

    Raises:
        ValueError: the image cannot be read (:class:`~detector.image.ImageError`), is not the
            size the reference records, or the reference's boxes are unusable; the message
            says which.
    """
    from detector.preprocess import prepare

    first = next(iter(detectors.values()))
    if reference.num_boxes == 0:
        raise ValueError("the reference record has no boxes")
    image = prepare(str(item.path), config=first.config, image_id=item.image_id)
    if (image.raw_h, image.raw_w) != (reference.image_h, reference.image_w):
        raise ValueError(
            f"the image is {image.raw_h}x{image.raw_w} (h x w) but the reference records "
            f"{reference.image_h}x{reference.image_w}: another image, or another orientation"
        )
    given = first.detect([image], boxes=[reference.boxes])[0]
    count = reference.num_boxes if box_count == "reference" else None
    return ImageComparison(
        image_id=item.image_id,
        path=str(item.path),
        given=compare_given(given, reference),
        full={
            mode: compare_full(detect_with_count(detector, image, boxes=count), reference)
            for mode, detector in detectors.items()
        },
    )


def _reason(error: Exception) -> str:
    from detector.image import ImageError

    return error.reason if isinstance(error, ImageError) else str(error)


def compare_images(
    plan: ComparePlan, detectors: Mapping[ProposalMode, Detector]
) -> tuple[list[ImageComparison], list[Failure]]:
    """Every planned image: its comparison, or a failure naming it and why."""
    from tqdm import tqdm

    done: list[ImageComparison] = []
    failures = list(plan.failures)
    progress = tqdm(plan.items, unit="image", disable=plan.settings.quiet, file=sys.stderr)
    for item in progress:
        try:
            reference = plan.store.get(item.image_id)
            done.append(
                compare_image(item, reference, detectors, box_count=plan.settings.box_count)
            )
        except ValueError as error:  # ImageError included; a bad image never ends the report
            failures.append(Failure(item.image_id, str(item.path), _reason(error)))
    return done, failures


# --- finish: figures, verdict, report, exit code ---------------------------------------------


@dataclass(frozen=True)
class CompareResult:
    """Everything the report says.

    Attributes:
        given: the given-box check over all compared images.
        full: the full check per proposal layer that ran.
        images: each compared image.
        failures: images in common that could not be compared.
        verdict: the last line: which proposal layer reproduces the reference, with figures.
        exit_code: 0 the given-box check passed on every image; 1 otherwise.
    """

    given: GivenBoxSummary
    full: Mapping[ProposalMode, FullSummary]
    images: Sequence[ImageComparison]
    failures: Sequence[Failure]
    verdict: str
    exit_code: int


def _percent(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.1%}"


def _figures(summary: FullSummary, rule: ReproduceRule) -> str:
    return (
        f"{_percent(summary.matched[f'{rule.iou:g}'])} of reference boxes matched at IoU >= "
        f"{rule.iou:g}, objects agree on {_percent(summary.objects_agree)} of "
        f"{summary.matched_pairs} pairs at IoU >= {rule.match_iou:g}"
    )


def verdict_line(
    full: Mapping[ProposalMode, FullSummary],
    unavailable: Mapping[ProposalMode, str],
    rule: ReproduceRule,
) -> str:
    """One line: which proposal layer reproduces the reference (see :class:`ReproduceRule`),
    or that neither does, with each layer's figures."""
    if not full or all(s.reference_boxes == 0 for s in full.values()):
        return "verdict: nothing to compare: no image in common could be checked"
    parts = [f"{mode}: {_figures(summary, rule)}" for mode, summary in full.items()]
    parts += [f"{mode}: not run ({why})" for mode, why in unavailable.items()]
    winners = [mode for mode, summary in full.items() if summary.reproduces]
    if not winners:
        need = (
            f"reproducing needs >= {rule.matched_fraction:.0%} matched at IoU >= {rule.iou:g} "
            f"and objects agreeing on >= {rule.objects_agree:.0%}"
        )
        return (
            f"verdict: neither proposal layer reproduces the reference ({'; '.join(parts)}; {need})"
        )
    names = " and ".join(winners)
    verb = "reproduces" if len(winners) == 1 else "reproduce"
    return f"verdict: {names} {verb} the reference ({'; '.join(parts)})"


def summarize(
    plan: ComparePlan, images: Sequence[ImageComparison], failures: Sequence[Failure]
) -> CompareResult:
    """Pool every image's figures and decide the verdict and the exit code."""
    settings = plan.settings
    given = summarize_given([c.given for c in images], settings.tolerances)
    full = {
        mode: summarize_full([c.full[mode] for c in images], settings.rule)
        for mode in settings.configs
    }
    verdict = verdict_line(full, settings.unavailable, settings.rule)
    code = EXIT_OK if given.passed and not failures else EXIT_SOME_FAILED
    return CompareResult(given, full, images, failures, verdict, code)


def _number(value: float | None, spec: str) -> str:
    return "n/a" if value is None else format(value, spec)


def _given_lines(given: GivenBoxSummary, tolerances: GivenBoxTolerances) -> list[str]:
    return [
        f"given-box check (the reference's own boxes, {given.boxes} in all)",
        f"  feature cosine        median {_number(given.median_cosine, '.6f'):>10}  worst "
        f"{_number(given.worst_cosine, '.6f'):>10}   need median >= "
        f"{tolerances.median_cosine}, worst >= {tolerances.worst_cosine}",
        f"  largest |difference|  median {_number(given.median_largest_difference, '.3g'):>10}  "
        f"worst {_number(given.worst_largest_difference, '.3g'):>10}",
        f"  relative difference   median {_number(given.median_relative_difference, '.3g'):>10}  "
        f"worst {_number(given.worst_relative_difference, '.3g'):>10}",
        f"  objects_id agree      {_percent(given.objects_agree):>17}"
        f"{'':24}need >= {tolerances.objects_agree:.0%}",
        f"  attrs_id agree        {_percent(given.attrs_agree):>17}",
        f"  result                {'PASS' if given.passed else 'FAIL':>17}",
    ]


def _full_lines(plan: ComparePlan, result: CompareResult) -> list[str]:
    settings, rule = plan.settings, plan.settings.rule
    selection = next(iter(settings.configs.values())).selection
    count = "the reference's" if settings.box_count == "reference" else "the preset's"
    levels = list(next(iter(result.full.values())).matched) if result.full else []
    header = "  proposals   boxes ref/ours" + "".join(f"  {'IoU>=' + t:>9}" for t in levels)
    lines = [
        f"full check ({selection} selection; boxes per image: {count}; greedy one-to-one IoU)",
        header + "  objects*  cosine* median/worst  reproduces",
    ]
    for mode, s in result.full.items():
        matched = "".join(f"  {_percent(s.matched[t]):>9}" for t in levels)
        cosine = f"{_number(s.median_cosine, '.5f')}/{_number(s.worst_cosine, '.5f')}"
        lines.append(
            f"  {mode:<10}  {f'{s.reference_boxes}/{s.our_boxes}':>14}{matched}  "
            f"{_percent(s.objects_agree):>8}  {cosine:>20}  {'yes' if s.reproduces else 'no'}"
        )
    lines += [f"  {mode:<10}  not run: {why}" for mode, why in settings.unavailable.items()]
    lines.append(
        f"  * over the pairs matched at IoU >= {rule.match_iou:g}. Reproduces: >= "
        f"{rule.matched_fraction:.0%} of reference boxes matched at IoU >= {rule.iou:g} and "
        f">= {rule.objects_agree:.0%} object agreement"
    )
    return lines


def _image_lines(result: CompareResult, rule: ReproduceRule) -> list[str]:
    lines = [
        "per image: given-box worst cosine / objects agree; per layer: matched at IoU >= "
        f"{rule.iou:g} / objects agree"
    ]
    for c in result.images:
        given = summarize_given([c.given], GivenBoxTolerances())
        layers = "".join(
            f"  {mode} {_percent(s.matched[f'{rule.iou:g}'])}/{_percent(s.objects_agree)}"
            for mode, s in ((m, summarize_full([f], rule)) for m, f in c.full.items())
        )
        lines.append(
            f"  {c.image_id}: {_number(given.worst_cosine, '.5f')}/"
            f"{_percent(given.objects_agree)}{layers}"
        )
    return lines


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" + ("" if n == 1 else "s")


def format_report(plan: ComparePlan, result: CompareResult, checkpoint: str) -> str:
    """The printed report: what was compared, the two checks, failures, the verdict last."""
    settings = plan.settings
    limit = f", --limit {settings.limit}" if settings.limit else ""
    lines = [
        f"reference  {settings.reference}: {_count(len(plan.store), 'record')}; "
        f"{_count(plan.in_common, 'image')} in common ({len(result.images)} compared, "
        f"{len(result.failures)} failed{limit}); {plan.inputs_only} inputs without a record",
        f"detector   {checkpoint} on {settings.device}",
        "",
        *_given_lines(result.given, settings.tolerances),
        "",
        *_full_lines(plan, result),
    ]
    if settings.verbose:
        lines += ["", *_image_lines(result, settings.rule)]
    if result.failures:
        lines += ["", f"not compared ({len(result.failures)}):"]
        lines += [f"  {f.image_id} ({f.path}): {f.reason}" for f in result.failures]
    return "\n".join([*lines, "", result.verdict])


def _json_safe(value: object) -> object:
    """``value`` with every non-finite float as None (JSON has no NaN or Infinity)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {key: _json_safe(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(item) for item in value]
    return value


def report_json(
    plan: ComparePlan, result: CompareResult, checkpoint: Mapping[str, object]
) -> dict[str, object]:
    """The JSON report: settings, rules, both checks overall and per image, failures, verdict."""
    settings, rule = plan.settings, plan.settings.rule
    full: dict[str, object] = {mode: asdict(s) for mode, s in result.full.items()}
    full.update({mode: {"not_run": why} for mode, why in settings.unavailable.items()})
    per_image = [
        {
            "image_id": c.image_id,
            "path": c.path,
            "given_boxes": asdict(summarize_given([c.given], settings.tolerances)),
            "full": {m: asdict(summarize_full([s], rule)) for m, s in c.full.items()},
        }
        for c in result.images
    ]
    report = {
        "kind": REPORT_KIND,
        "reference": {"path": str(settings.reference), "records": len(plan.store)},
        "inputs": list(settings.inputs),
        "images": {
            "in_common": plan.in_common,
            "compared": len(result.images),
            "failed": len(result.failures),
            "limit": settings.limit,
            "inputs_without_record": plan.inputs_only,
            "records_without_input": plan.reference_only,
        },
        "detector": dict(checkpoint),
        "device": str(settings.device),
        "selection": next(iter(settings.configs.values())).selection,
        "box_count": settings.box_count,
        "matching": MATCHING,
        "tolerances": {"given_boxes": asdict(settings.tolerances), "reproduces": asdict(rule)},
        "given_boxes": asdict(result.given),
        "full": full,
        "per_image": per_image,
        "failures": [f.to_dict() for f in result.failures],
        "verdict": result.verdict,
        "exit_code": result.exit_code,
    }
    return {key: _json_safe(value) for key, value in report.items()}


def run_compare(settings: CompareSettings) -> int:
    """validate (done) -> plan -> load -> compare -> report; returns the exit code."""
    from weights.files import atomic_write_text

    configure_logging(quiet=settings.quiet, verbose=settings.verbose)
    plan = plan_compare(settings)
    detectors = load_detectors(settings)
    for mode, detector in detectors.items():
        LOG.debug("%s proposals: config %s", mode, detector.config.to_dict())
    info = next(iter(detectors.values())).checkpoint
    images, failures = compare_images(plan, detectors)
    result = summarize(plan, images, failures)
    if settings.report is not None:
        text = json.dumps(report_json(plan, result, asdict(info)), indent=2) + "\n"
        atomic_write_text(settings.report, text)
    name = f"{info.name} (sha256 {(info.sha256 or 'none')[:12]}, preset {info.preset})"
    print(result.verdict if settings.quiet else format_report(plan, result, name))
    plan.store.close()
    return result.exit_code


COMPARE_COMMAND = Command(
    name="compare",
    summary="compare with a reference feature file (e.g. LXMERT's val2014_obj36.tsv)",
    build_parser=build_compare_parser,
    run=lambda args: run_compare(validate_compare(args)),
    disk_full_remedy="the report is written whole or not at all; free some space and run the "
    "comparison again",
)


def main(argv: Sequence[str] | None = None) -> int:
    """Compare with a reference; see ``extract_features compare --help``."""
    return run_command(COMPARE_COMMAND, sys.argv[1:] if argv is None else argv)


if __name__ == "__main__":
    sys.exit(main())
