"""``extract_features compare``'s plan and run: the images in common with the reference, and
both checks of each image with our detector."""

from __future__ import annotations

import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from pipeline.compare.metrics import FullStats, GivenBoxStats, compare_full, compare_given
from pipeline.compare.settings import BoxCount, CompareSettings
from pipeline.errors import UsageError
from pipeline.extract.inputs import InputItem
from pipeline.features.manifest import Failure

if TYPE_CHECKING:  # torch and the detector load only when the command runs
    from detector import Detector, RegionFeatures
    from detector.config import ProposalMode
    from detector.preprocess import PreparedImage
    from pipeline.features.store import FeatureStore


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
    from pipeline.features.store import FeatureStore

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
    from pipeline.extract.inputs import list_inputs

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
    from detector.options import InferenceOptions

    detectors: dict[ProposalMode, Detector] = {}
    for mode, config in settings.configs.items():
        try:
            detectors[mode] = load_detector(
                settings.detector,
                config=config,
                device=settings.device,
                options=InferenceOptions(
                    device=settings.device, deterministic=settings.deterministic
                ),
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
