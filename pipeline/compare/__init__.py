"""``extract_features compare REFERENCE IMAGES...``: how close our features come to a reference.

The reference is any obj36 TSV (LXMERT's ``val2014_obj36.tsv``, or one of ours) or one of our
HDF5 files, read by image id (:class:`~pipeline.features.store.FeatureStore`). Images are the inputs
whose id (the project's id rule, :func:`~pipeline.extract.inputs.list_inputs`) has a record in it.
Two checks per image:

- **Given-box check.** Our features, objects and attributes for the reference's own boxes (no
  RPN, no selection; :meth:`~detector.model.Detector.detect` with ``boxes``). It tests the
  weights, the preprocessing and the heads. Per box: the cosine of the two features, the
  largest absolute difference of one dimension, the relative difference
  ``||ours - ref||_2 / ||ref||_2``, and whether ``objects_id`` and ``attrs_id`` agree. It passes
  when, over all boxes of all images, the median cosine is >= 0.999, the worst >= 0.99, the
  median ``|norm(ours) / norm(ref) - 1|`` <= 0.01 and the median relative difference <= 0.05
  (cosine cannot see scale: features scaled by 7 or L2-normalised keep cosine 1), and
  ``objects_id`` agrees on >= 98% (:class:`GivenBoxTolerances`). The worst cosine is reported
  with its image and box, beside the 1st percentile. The released features came
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

``extract_features compare REFERENCE --features CANDIDATE`` compares two feature files
instead, without images or a model (:mod:`~pipeline.compare.files`).

Exit codes: 0 the given-box check passes on every image in common (or in ``--limit``); 1 it
fails, or an image in common could not be checked (named); 2 usage (bad flags, unreadable
reference, no image in common, a feature size the detector cannot make). ``--require full``
also demands that one proposal layer reproduces the reference; the verdict says which checks
the exit code covers.

The package, by concern: :mod:`~pipeline.compare.metrics` (pure figures of two records and
their summaries), :mod:`~pipeline.compare.settings` (flags), :mod:`~pipeline.compare.run` (plan
and per-image checks), :mod:`~pipeline.compare.report` (verdict, printed and JSON report, exit
code), :mod:`~pipeline.compare.files` (two feature files); the command (flags, wiring, exit code)
is :mod:`pipeline.commands.compare`.
"""

from __future__ import annotations

from pipeline.compare.files import SAME_BOX_IOU, compare_records, first_difference, run_files
from pipeline.compare.metrics import (
    IOU_LEVELS,
    MATCHING,
    BoxMatch,
    FullStats,
    FullSummary,
    GivenBoxStats,
    GivenBoxSummary,
    GivenBoxTolerances,
    ReproduceRule,
    box_iou,
    compare_full,
    compare_given,
    feature_cosine,
    feature_differences,
    match_boxes,
    summarize_full,
    summarize_given,
)
from pipeline.compare.report import (
    CompareResult,
    format_report,
    report_json,
    summarize,
    verdict_line,
)
from pipeline.compare.run import (
    ComparePlan,
    ImageComparison,
    compare_image,
    compare_images,
    detect_with_count,
    load_detectors,
    plan_compare,
)
from pipeline.compare.settings import (
    PROPOSAL_MODES,
    REFERENCE_SUFFIXES,
    REPORT_KIND,
    BoxCount,
    CompareSettings,
    FileCompareSettings,
    Require,
    build_compare_parser,
    validate_compare,
)

__all__ = [
    "IOU_LEVELS",
    "MATCHING",
    "PROPOSAL_MODES",
    "REFERENCE_SUFFIXES",
    "REPORT_KIND",
    "SAME_BOX_IOU",
    "BoxCount",
    "BoxMatch",
    "ComparePlan",
    "CompareResult",
    "CompareSettings",
    "FileCompareSettings",
    "FullStats",
    "FullSummary",
    "GivenBoxStats",
    "GivenBoxSummary",
    "GivenBoxTolerances",
    "ImageComparison",
    "ReproduceRule",
    "Require",
    "box_iou",
    "build_compare_parser",
    "compare_full",
    "compare_given",
    "compare_image",
    "compare_images",
    "compare_records",
    "detect_with_count",
    "feature_cosine",
    "feature_differences",
    "first_difference",
    "format_report",
    "load_detectors",
    "match_boxes",
    "plan_compare",
    "report_json",
    "run_files",
    "summarize",
    "summarize_full",
    "summarize_given",
    "validate_compare",
    "verdict_line",
]
