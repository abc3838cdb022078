"""``extract_features compare REFERENCE --features CANDIDATE``: two feature files, no model.

Either file may be anything :class:`~pipeline.features.store.FeatureStore` reads (an obj36
TSV, ours or LXMERT's, our HDF5, or a format of docs/formats.md: ban-h5, npz-dir, lmdb,
parquet): two machines' outputs, a re-run against an old run, a conversion against its source,
or ours against LXMERT's released files. Per image in both files:

- **Box matching**, as the full check does it (:func:`~pipeline.compare.metrics.compare_full`:
  greedy one-to-one IoU): the fraction of the reference's boxes matched at IoU >= 0.99, 0.9 and
  0.5, and object agreement and cosine on the pairs at IoU >= 0.5. It passes by
  :class:`~pipeline.compare.metrics.ReproduceRule`.
- **Features of the same boxes**: on the pairs matched at IoU >= :data:`SAME_BOX_IOU`, the
  given-box check's figures and limits (:class:`~pipeline.compare.metrics.GivenBoxTolerances`),
  since only where the boxes are the same must the features be.
- **Rounding of the same boxes' features**: ``equal`` (every value equal), ``float16`` (not
  equal, but every value of one file is the other's rounded to float16: a float16 round trip,
  as ``convert --feature-dtype float16`` or UNITER's lmdb makes) or ``other``
  (:func:`feature_rounding`). Reported, not a pass condition.
- ``--exact``: every record byte-equal (each field's dtype, shape and bytes); the first that
  differs, in id order, is named with its first differing field.

Images in only one file are listed; they fail the comparison only with ``--same-images``.
Exit codes: 0 passes, 1 fails (or an image in both could not be read, named), 2 usage.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np

from pipeline.compare.metrics import (
    MATCHING,
    FullStats,
    FullSummary,
    GivenBoxStats,
    GivenBoxSummary,
    compare_full,
    feature_cosine,
    feature_differences,
    match_boxes,
    scale_difference,
    summarize_full,
    summarize_given,
)
from pipeline.compare.report import (
    given_lines,
    json_safe,
    percent,
    reproduce_figures,
)
from pipeline.compare.settings import REPORT_KIND, FileCompareSettings
from pipeline.errors import EXIT_OK, EXIT_SOME_FAILED, UsageError
from pipeline.features.manifest import Failure

if TYPE_CHECKING:
    from detector import RegionFeatures
    from pipeline.features.store import FeatureStore

#: Pairs matched at or above this IoU hold the same box: their features are held to the
#: given-box check's limits.
SAME_BOX_IOU = 0.99
#: The fields ``--exact`` compares, in the order a difference is named.
RECORD_FIELDS = (
    "image_h",
    "image_w",
    "boxes",
    "features",
    "objects_id",
    "objects_conf",
    "attrs_id",
    "attrs_conf",
)
#: How the same boxes' features of two files relate (:func:`feature_rounding`).
Rounding = Literal["equal", "float16", "other"]
#: Images only in one file shown in the printed report (all of them are in the JSON one).
SHOWN_ONLY = 10


# --- per image -------------------------------------------------------------------------------


def first_difference(reference: RegionFeatures, candidate: RegionFeatures) -> str | None:
    """The first field (:data:`RECORD_FIELDS`) whose dtype, shape or bytes differ, or None
    when the two records are byte-equal."""
    for name in RECORD_FIELDS:
        a, b = getattr(reference, name), getattr(candidate, name)
        if isinstance(a, np.ndarray):
            same = a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()
        else:
            same = a == b
        if not same:
            return name
    return None


def same_box_pairs(
    reference: RegionFeatures, candidate: RegionFeatures, *, min_iou: float
) -> tuple[np.ndarray, np.ndarray]:
    """``(rows, cols)``: the reference and candidate boxes matched at IoU >= ``min_iou``."""
    match = match_boxes(reference.boxes, candidate.boxes)
    keep = match.iou >= min_iou
    return match.reference[keep], match.ours[keep]


def feature_rounding(reference: np.ndarray, candidate: np.ndarray) -> Rounding:
    """``equal`` when every value is equal; ``float16`` when not, but both round to the same
    float16 everywhere (one file holds the other's values rounded to float16, whichever way the
    round trip went); ``other`` else. ``reference`` and ``candidate`` are ``[K, D]``, paired
    row by row."""
    ref, cand = reference.astype(np.float32), candidate.astype(np.float32)
    if np.array_equal(ref, cand):
        return "equal"
    with np.errstate(over="ignore"):  # beyond float16's range both are inf: still "rounded"
        rounded = np.array_equal(ref.astype(np.float16), cand.astype(np.float16))
    return "float16" if rounded else "other"


def same_box_stats(
    reference: RegionFeatures, candidate: RegionFeatures, rows: np.ndarray, cols: np.ndarray
) -> GivenBoxStats:
    """The given-box figures of the pairs ``(rows, cols)`` (:func:`same_box_pairs`), each row
    named by its reference box (``box_index``)."""
    ours, ref = candidate.features[cols], reference.features[rows]
    largest, relative = feature_differences(ours, ref)
    return GivenBoxStats(
        image_id=reference.image_id,
        cosine=feature_cosine(ours, ref),
        scale_difference=scale_difference(ours, ref),
        largest_difference=largest,
        relative_difference=relative,
        objects_agree=candidate.objects_id[cols] == reference.objects_id[rows],
        attrs_agree=candidate.attrs_id[cols] == reference.attrs_id[rows],
        box_index=rows,
    )


@dataclass(frozen=True)
class RecordComparison:
    """One image in both files: box matching, same-box features and how they round, and its
    first byte difference (None: byte-equal)."""

    image_id: str
    full: FullStats
    same_boxes: GivenBoxStats
    rounding: Rounding
    difference: str | None


def compare_records(reference: RegionFeatures, candidate: RegionFeatures) -> RecordComparison:
    """Both records of one image (:class:`ValueError` if they are of other image sizes)."""
    if (reference.image_h, reference.image_w) != (candidate.image_h, candidate.image_w):
        raise ValueError(
            f"the reference records a {reference.image_h}x{reference.image_w} (h x w) image, "
            f"the candidate {candidate.image_h}x{candidate.image_w}: another image"
        )
    rows, cols = same_box_pairs(reference, candidate, min_iou=SAME_BOX_IOU)
    return RecordComparison(
        image_id=reference.image_id,
        full=compare_full(candidate, reference),
        same_boxes=same_box_stats(reference, candidate, rows, cols),
        rounding=feature_rounding(reference.features[rows], candidate.features[cols]),
        difference=first_difference(reference, candidate),
    )


# --- plan and run ------------------------------------------------------------------------------


def _open(path: Path, role: str) -> FeatureStore:
    from pipeline.features.store import FeatureStore

    try:
        return FeatureStore.open(path)
    except (OSError, ValueError) as error:
        raise UsageError(f"cannot read the {role} {path}: {error}") from error


@dataclass(frozen=True)
class FilePlan:
    """The two files and their ids: in both (id order, after ``--limit``), and in only one."""

    reference: FeatureStore
    candidate: FeatureStore
    common: tuple[str, ...]
    in_both: int
    only_reference: tuple[str, ...]
    only_candidate: tuple[str, ...]


def plan_files(settings: FileCompareSettings) -> FilePlan:
    """Open both files; :class:`UsageError` when one is unreadable or no image is in both."""
    reference = _open(settings.reference, "reference")
    candidate = _open(settings.candidate, "candidate (--features)")
    ref_ids, cand_ids = set(reference.ids()), set(candidate.ids())
    common = sorted(ref_ids & cand_ids)
    if not common:
        raise UsageError(
            f"no image in common: the reference {settings.reference} holds "
            f"{sorted(ref_ids)[:3]}..., --features {settings.candidate} holds "
            f"{sorted(cand_ids)[:3]}...; both must be records of the same images"
        )
    return FilePlan(
        reference=reference,
        candidate=candidate,
        common=tuple(common[: settings.limit]),
        in_both=len(common),
        only_reference=tuple(sorted(ref_ids - cand_ids)),
        only_candidate=tuple(sorted(cand_ids - ref_ids)),
    )


def compare_files(plan: FilePlan) -> tuple[list[RecordComparison], list[Failure]]:
    """Every image in both: its comparison, or a failure naming it and why."""
    done: list[RecordComparison] = []
    failures: list[Failure] = []
    for image_id in plan.common:
        try:
            reference, candidate = plan.reference.get(image_id), plan.candidate.get(image_id)
            if reference.features.shape[1:] != candidate.features.shape[1:]:
                raise ValueError(
                    f"{reference.features.shape[-1]}-d features in the reference, "
                    f"{candidate.features.shape[-1]}-d in the candidate"
                )
            done.append(compare_records(reference, candidate))
        except ValueError as error:  # a bad record never ends the report
            failures.append(Failure(image_id, image_id, str(error)))
    return done, failures


# --- finish ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FileResult:
    """Everything the report says; ``first_difference`` is ``(image id, field)`` or None."""

    boxes: FullSummary
    same_boxes: GivenBoxSummary
    images: Sequence[RecordComparison]
    failures: Sequence[Failure]
    first_difference: tuple[str, str] | None
    rounding: Rounding
    verdict: str
    exit_code: int


def _coverage(demands: dict[str, bool], failures: int, code: int) -> str:
    """The verdict's last words: which checks the exit code covers, and how each went."""
    checks = [f"{name} ({'passed' if ok else 'failed'})" for name, ok in demands.items()]
    if failures:
        checks.append(f"{failures} image{'' if failures == 1 else 's'} not compared")
    return f"; exit code {code} covers {', '.join(checks)}"


def summarize_files(
    settings: FileCompareSettings,
    plan: FilePlan,
    images: Sequence[RecordComparison],
    failures: Sequence[Failure],
) -> FileResult:
    """Pool every image's figures; decide the verdict and the exit code."""
    boxes = summarize_full([c.full for c in images], settings.rule)
    same = summarize_given([c.same_boxes for c in images], settings.tolerances)
    first = next(((c.image_id, c.difference) for c in images if c.difference), None)
    demands = {"the same-box feature check": same.passed, "the box matching": boxes.reproduces}
    if settings.exact:
        demands["byte-equal records"] = first is None
    if settings.same_images:
        demands["the same images"] = not (plan.only_reference or plan.only_candidate)
    passed = all(demands.values())
    code = EXIT_OK if passed and not failures else EXIT_SOME_FAILED
    rounding = pooled_rounding([c.rounding for c in images])
    verdict = (
        f"verdict: the candidate {'matches' if passed else 'does not match'} the reference "
        f"({reproduce_figures(boxes, settings.rule)}; same-box features: median cosine "
        f"{_fixed(same.median_cosine)}"
        + ("; values within float16 rounding" if rounding == "float16" else "")
        + (f"; first difference: image {first[0]!r} field {first[1]}" if first else "")
        + ")"
        + _coverage(demands, len(failures), code)
    )
    return FileResult(boxes, same, images, failures, first, rounding, verdict, code)


def pooled_rounding(each: Sequence[Rounding]) -> Rounding:
    """Of all images: ``equal`` if every image's are, ``float16`` if every image's are equal
    or within float16 rounding, ``other`` else."""
    if all(r == "equal" for r in each):
        return "equal"
    return "float16" if all(r in ("equal", "float16") for r in each) else "other"


#: The report's line for each pooled :data:`Rounding`.
ROUNDING_LINES: dict[Rounding, str] = {
    "equal": "equal on every same box",
    "float16": "within float16 rounding on every same box (a float16 round trip)",
    "other": "differ beyond float16 rounding",
}


def _fixed(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.6f}"


def _only_lines(name: str, ids: Sequence[str]) -> list[str]:
    shown = ", ".join(repr(i) for i in ids[:SHOWN_ONLY])
    more = f", ... ({len(ids) - SHOWN_ONLY} more)" if len(ids) > SHOWN_ONLY else ""
    return [f"only in the {name} ({len(ids)}): {shown}{more}"] if ids else []


def format_files_report(settings: FileCompareSettings, plan: FilePlan, result: FileResult) -> str:
    """The printed report: the two files, box matching, same-box features, the verdict last."""
    rule, s = settings.rule, result.boxes
    limit = f", --limit {settings.limit}" if settings.limit else ""
    matched = ", ".join(f"IoU >= {t} {percent(v)}" for t, v in s.matched.items())
    lines = [
        f"reference  {settings.reference}: {len(plan.reference)} records",
        f"candidate  {settings.candidate}: {len(plan.candidate)} records; {plan.in_both} "
        f"images in both ({len(result.images)} compared, {len(result.failures)} failed{limit})",
        *_only_lines("reference", plan.only_reference),
        *_only_lines("candidate", plan.only_candidate),
        "",
        f"box matching ({s.reference_boxes} reference / {s.our_boxes} candidate boxes; greedy "
        "one-to-one IoU)",
        f"  matched               {matched}",
        f"  objects agree         {percent(s.objects_agree)} of {s.matched_pairs} pairs at IoU "
        f">= {rule.match_iou:g}; cosine median {_fixed(s.median_cosine)}",
        f"  reproduces            {'yes' if s.reproduces else 'no'}   need >= "
        f"{rule.matched_fraction:.0%} matched at IoU >= {rule.iou:g} and >= "
        f"{rule.objects_agree:.0%} object agreement",
        "",
        *given_lines(
            result.same_boxes,
            settings.tolerances,
            title=f"same-box features (pairs matched at IoU >= {SAME_BOX_IOU}",
        ),
        f"  values                {ROUNDING_LINES[result.rounding]}",
    ]
    if settings.verbose:
        lines += ["", "per image: matched at IoU >= 0.9 / same-box worst cosine / bytes"]
        for c in result.images:
            one = summarize_given([c.same_boxes], settings.tolerances)
            at = summarize_full([c.full], rule).matched[f"{rule.iou:g}"]
            state = "equal" if c.difference is None else f"differ ({c.difference})"
            lines.append(f"  {c.image_id}: {percent(at)}/{_fixed(one.worst_cosine)}/{state}")
    if result.failures:
        lines += ["", f"not compared ({len(result.failures)}):"]
        lines += [f"  {f.image_id}: {f.reason}" for f in result.failures]
    return "\n".join([*lines, "", result.verdict])


def files_report_json(
    settings: FileCompareSettings, plan: FilePlan, result: FileResult
) -> dict[str, object]:
    """The JSON report of a file-to-file comparison."""
    report = {
        "kind": REPORT_KIND,
        "mode": "files",
        "reference": {"path": str(settings.reference), "records": len(plan.reference)},
        "candidate": {"path": str(settings.candidate), "records": len(plan.candidate)},
        "images": {
            "in_both": plan.in_both,
            "compared": len(result.images),
            "failed": len(result.failures),
            "limit": settings.limit,
            "only_reference": list(plan.only_reference),
            "only_candidate": list(plan.only_candidate),
        },
        "matching": MATCHING,
        "same_box_iou": SAME_BOX_IOU,
        "same_images": settings.same_images,
        "exact": settings.exact,
        "tolerances": {"same_boxes": asdict(settings.tolerances), "boxes": asdict(settings.rule)},
        "boxes": asdict(result.boxes),
        "same_boxes": asdict(result.same_boxes),
        "feature_rounding": result.rounding,
        "first_difference": (
            None
            if result.first_difference is None
            else {"image_id": result.first_difference[0], "field": result.first_difference[1]}
        ),
        "per_image": [_image_json(c, settings) for c in result.images],
        "failures": [f.to_dict() for f in result.failures],
        "verdict": result.verdict,
        "exit_code": result.exit_code,
    }
    return {key: json_safe(value) for key, value in report.items()}


def _image_json(c: RecordComparison, settings: FileCompareSettings) -> dict[str, object]:
    return {
        "image_id": c.image_id,
        "boxes": asdict(summarize_full([c.full], settings.rule)),
        "same_boxes": asdict(summarize_given([c.same_boxes], settings.tolerances)),
        "feature_rounding": c.rounding,
        "byte_equal": c.difference is None,
        "first_difference": c.difference,
    }


def run_files(settings: FileCompareSettings) -> int:
    """plan -> compare -> report; returns the exit code."""
    import json

    from weights.files import atomic_write_text

    plan = plan_files(settings)
    try:
        images, failures = compare_files(plan)
        result = summarize_files(settings, plan, images, failures)
        if settings.report is not None:
            text = json.dumps(files_report_json(settings, plan, result), indent=2) + "\n"
            atomic_write_text(settings.report, text)
        print(result.verdict if settings.quiet else format_files_report(settings, plan, result))
    finally:
        plan.reference.close()
        plan.candidate.close()
    sys.stdout.flush()
    return result.exit_code
