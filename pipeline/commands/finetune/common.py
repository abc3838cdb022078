"""What the sub-commands of ``lxmert-finetune`` (``train``, ``evaluate``) share: the flags of
both, the check that input files exist, and the feature stores and question files read
before any model loads (each fault a :class:`UsageError` naming the flag and the file)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from pipeline.errors import UsageError
from pipeline.flags import DEVICE_HELP
from weights.command import non_negative_int, positive_int
from weights.defaults import DEFAULT_DEVICE

if TYPE_CHECKING:
    from encoder.finetune import QuestionEntry, RegionSource
    from pipeline.features.store import FeatureStore

PROG = "lxmert-finetune"

#: ``--precision`` of lxmert-finetune: how the encoder trains and predicts. The names are
#: :data:`encoder.finetune.config.TRAIN_PRECISIONS` (a test keeps them equal; written out here
#: so that ``--help`` imports no torch).
TRAIN_PRECISION_CHOICES = ("fp32", "bf16")
TRAIN_PRECISION_HELP = (
    "mixed-precision training and prediction of the encoder: bf16 runs its forward under "
    "torch.autocast in bfloat16 (weights, gradients and optimiser state stay fp32; CUDA or "
    "CPU); fp32 (default) runs all in fp32. Not the detector precision of extract_features "
    "and answer: this command reads regions from feature files and runs no detector"
)


def say(message: str) -> None:
    """How every command tells that ``auto`` fell back to the CPU: one line on stderr."""
    print(f"{PROG}: {message}", file=sys.stderr)


def add_common_flags(parser: argparse.ArgumentParser) -> None:
    """The flags of both ``train`` and ``evaluate``."""
    parser.add_argument(
        "--features",
        nargs="+",
        type=Path,
        required=True,
        metavar="STORE",
        help="feature files (TSV or HDF5 from extract_features, or obj36 TSVs), joined",
    )
    parser.add_argument("--device", default=DEFAULT_DEVICE, metavar="DEV", help=DEVICE_HELP)
    parser.add_argument(
        "--precision",
        choices=TRAIN_PRECISION_CHOICES,
        default="fp32",
        help=TRAIN_PRECISION_HELP,
    )
    # --boxes: the region count's one name, as extract_features spells it.
    parser.add_argument(
        "--boxes",
        dest="num_boxes",
        type=positive_int,
        default=36,
        metavar="N",
        help="regions per image, at most: the first N, best-scored, of each record (default 36)",
    )
    # Hidden alias for one release: the flag's name before --boxes.
    parser.add_argument(
        "--num-boxes", dest="num_boxes", type=positive_int, default=36, help=argparse.SUPPRESS
    )
    parser.add_argument(
        "--skip-missing",
        action="store_true",
        help="skip (and count) questions whose image is not in the stores",
    )
    parser.add_argument(
        "--workers", type=non_negative_int, default=0, help="DataLoader workers (default 0)"
    )
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress lines")
    parser.add_argument(
        "-v",
        "--verbose",
        action="store_true",
        help="tracebacks of errors, and transformers' full report of a model load",
    )


def existing(paths: Sequence[Path], flag: str) -> tuple[Path, ...]:
    """``paths``, each an existing file; :class:`UsageError` naming ``flag`` otherwise."""
    for path in paths:
        if not path.is_file():
            raise UsageError(f"{flag} {path}: no such file")
    return tuple(paths)


def open_stores(paths: Sequence[Path]) -> FeatureStore:
    """The joined feature stores; :class:`UsageError` naming the file when one cannot open."""
    from pipeline.features.store import FeatureStore

    try:
        return FeatureStore.open(*paths)
    except (OSError, ValueError, KeyError) as err:
        raise UsageError(f"--features: cannot open {', '.join(map(str, paths))}: {err}") from None


def read_entries(
    paths: Sequence[Path], store: RegionSource, *, skip_missing: bool, flag: str
) -> tuple[tuple[QuestionEntry, ...], int]:
    """Questions of ``paths`` whose image is in ``store`` and the count skipped (bad data and
    missing images without ``--skip-missing`` are :class:`UsageError`\\s naming the entry)."""
    from encoder.finetune import DataError, read_question_files, with_regions

    try:
        entries = read_question_files(paths)
        kept, skipped = with_regions(entries, store, skip_missing=skip_missing)
    except DataError as err:
        raise UsageError(str(err)) from None
    if not kept:
        raise UsageError(f"{flag}: no question left to use in {', '.join(map(str, paths))}")
    if skipped:
        print(
            f"{flag}: skipped {skipped} question(s) whose image is not in --features",
            file=sys.stderr,
        )
    return kept, skipped
