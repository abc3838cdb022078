"""``extract_features compare``'s flags: the parser and their validation into one typed
:class:`CompareSettings` (no weights read, no image opened)."""

from __future__ import annotations

import argparse
import errno
import json
import os
import textwrap
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from pipeline.compare.metrics import IOU_LEVELS, GivenBoxTolerances, ReproduceRule
from pipeline.errors import UsageError
from pipeline.features.suffixes import FILE_SUFFIXES
from pipeline.flags import add_detector_flag, add_device_flag, check_models
from weights.command import positive_int

if TYPE_CHECKING:  # torch and the detector load only when the command runs
    import torch

    from detector import DetectorConfig
    from detector.config import ProposalMode

BoxCount = Literal["reference", "preset"]
#: The checks the exit code covers: the given-box check alone, or with the full check too.
Require = Literal["given", "full"]


#: The proposal layers the full check runs, in the order reported.
PROPOSAL_MODES: tuple[ProposalMode, ...] = ("caffe", "detectron2")
#: ``kind`` of every JSON report (an existing ``--report`` file is replaced only if it has it).
REPORT_KIND = "extract_features compare report"
#: File names a compared file may have: every single-file format
#: :class:`~pipeline.features.store.FeatureStore` reads (folder formats are told by contents).
REFERENCE_SUFFIXES = FILE_SUFFIXES

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
        require: ``given`` (the exit code covers the given-box check) or ``full`` (also
            demands that one proposal layer reproduces the reference).
        deterministic: exact numerics on CUDA (deterministic cuDNN, no TF32); on by default,
            since TF32 alone moves features by about 1e-3. CPU runs are always exact.
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
    require: Require = "given"
    deterministic: bool = True
    tolerances: GivenBoxTolerances = field(default_factory=GivenBoxTolerances)
    rule: ReproduceRule = field(default_factory=ReproduceRule)


@dataclass(frozen=True)
class FileCompareSettings:
    """What ``extract_features compare REFERENCE --features CANDIDATE`` was asked to do.

    Attributes:
        reference, candidate: the two feature files.
        same_images: images in only one file fail the comparison.
        exact: every record in both must be byte-equal.
        report: the JSON report to write, or None.
        limit: only the first N images in both (id order), or None.
        quiet, verbose: how much to print.
        tolerances, rule: the feature limits on the same boxes, and the box-matching rule.
    """

    reference: Path
    candidate: Path
    same_images: bool
    exact: bool
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
        f"the worst >= {given.worst_cosine}, the median |norm(ours) / norm(ref) - 1| is <= "
        f"{given.median_scale_difference} (cosine cannot see scale), the median relative L2 "
        f"difference is <= {given.median_relative_difference} and objects_id agrees on >= "
        f"{given.objects_agree:.0%} of boxes. The exit code covers this check, and with "
        "--require full also the full check.",
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
        + "\n\nexit codes:\n  0  the given-box check passes (with --require full: and a "
        "proposal layer reproduces the reference)\n  1  it fails, or an image in "
        "common could not be checked (named)\n  2  usage: bad flags, unreadable reference, no "
        "image in common, a detector that cannot be loaded",
    )
    _add_compare_flags(parser)
    return parser


def _add_compare_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("reference", type=Path, metavar="REFERENCE", help="obj36 .tsv or .h5")
    parser.add_argument(
        "inputs", nargs="*", metavar="IMAGES", help="image files, folders, globs or @list.txt"
    )
    _add_file_flags(parser)
    add_detector_flag(parser)
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
    add_device_flag(parser)
    parser.add_argument(
        "--require",
        choices=("given", "full"),
        default="given",
        help="what the exit code covers: the given-box check, or also the full check (one "
        "proposal layer must reproduce the reference by the rule above) (default: %(default)s)",
    )
    parser.add_argument(
        "--deterministic",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="on CUDA, exact numerics: deterministic cuDNN and no TF32, which alone moves "
        "features by about 1e-3 (default: on; CPU runs are always exact)",
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


def _add_file_flags(parser: argparse.ArgumentParser) -> None:
    """The flags of the two-file comparison (``--features CANDIDATE``)."""
    files = parser.add_argument_group(
        "two feature files (no images, no model)",
        "compare REFERENCE with another feature file instead of with our detector: box "
        "matching and same-box features per image and overall; images in only one file are "
        "listed",
    )
    files.add_argument(
        "--features",
        type=Path,
        metavar="CANDIDATE",
        help="the other feature file (.tsv or .h5, ours or LXMERT's); replaces IMAGES",
    )
    files.add_argument(
        "--same-images",
        action="store_true",
        help="with --features: an image in only one of the files fails the comparison",
    )
    files.add_argument(
        "--exact",
        action="store_true",
        help="with --features: every record in both files must be byte-equal (the first that "
        "differs is named)",
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
    from detector.checkpoint_config import detector_config

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


def _check_feature_file(path: Path, what: str) -> None:
    if path.suffix.lower() not in REFERENCE_SUFFIXES and not path.is_dir():
        raise UsageError(
            f"{what} {path}: give a feature file: an obj36 .tsv (LXMERT's or ours), an .h5 "
            "output of extract_features, a .parquet, or an npz-dir or UNITER lmdb folder "
            "(docs/formats.md)"
        )


def _check_exists(path: Path, role: str) -> None:
    """A file that is not there, said as the reader says it, but before torch is imported
    (the device check and :mod:`pipeline.features.store` need it)."""
    if not os.path.lexists(path):
        error = FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), str(path))
        raise UsageError(f"cannot read the {role} {path}: {error}")


def _check_mode(args: argparse.Namespace) -> None:
    """IMAGES or --features, never both; the flags of one mode not given to the other."""
    if args.features is not None:
        _check_feature_file(args.features, "--features")
        if args.inputs:
            raise UsageError(
                f"--features {args.features} compares two files: give no IMAGES with it "
                f"(got {args.inputs[0]!r}); to check our detector, leave out --features"
            )
        if args.require == "full":
            raise UsageError(
                "--require full needs IMAGES (the full check runs our detector); with "
                "--features the box matching is always covered"
            )
        return
    for flag, given in (("--same-images", args.same_images), ("--exact", args.exact)):
        if given:
            raise UsageError(f"{flag} applies to --features CANDIDATE only")
    if not args.inputs:
        raise UsageError("give IMAGES to check our detector, or --features CANDIDATE")


def validate_compare(args: argparse.Namespace) -> CompareSettings | FileCompareSettings:
    """Check every flag (no weights read, no image opened); :class:`UsageError` otherwise."""
    from pipeline.flags import device_from_args

    _check_feature_file(args.reference, "reference")
    _check_mode(args)
    _check_exists(args.reference, "reference")
    if args.features is not None:
        _check_exists(args.features, "candidate (--features)")
    if args.report is not None:
        _check_report_path(args.report)
    if args.features is not None:
        return FileCompareSettings(
            reference=args.reference,
            candidate=args.features,
            same_images=args.same_images,
            exact=args.exact,
            report=args.report,
            limit=args.limit,
            quiet=args.quiet,
            verbose=args.verbose,
        )
    check_models([("--detector", args.detector)], download=True)  # before torch is imported
    configs, unavailable = _configs(args)
    device = device_from_args(args, prog="extract_features compare")
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
        require=args.require,
        deterministic=args.deterministic,
    )
