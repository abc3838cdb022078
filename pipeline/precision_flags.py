"""``--precision fp32|bf16|fp16`` (and the deprecated ``--autocast``) of every command.

Imports no torch, so that ``answer --help`` and its usage errors stay quick. The names are
:data:`detector.precision.PRECISION_NAMES` (a test keeps them equal); whether a device can run
one is decided by :func:`detector.precision.check_precision` when the options are resolved.
"""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING

from pipeline.exits import UsageError

if TYPE_CHECKING:
    from detector.precision import Precision

PRECISION_CHOICES: tuple[Precision, ...] = ("fp32", "bf16", "fp16")

#: ``--autocast`` value -> the precision it means (``none`` was fp32).
AUTOCAST_ALIASES: dict[str, Precision] = {"none": "fp32", "bf16": "bf16", "fp16": "fp16"}

PRECISION_HELP = (
    "fp32 (exact, the default); bf16 (CUDA, or a CPU with avx512_bf16/AMX: refused on other "
    "CPUs, where bf16 is emulated and slower); fp16 (CUDA only, for GPUs without bf16). In "
    "bf16/fp16 only the convolutions of trunk, RPN head and res5 run in low precision; RoI "
    "pooling, proposal decoding, NMS, mean pool, the class/box/attribute heads and box "
    "selection stay fp32. Recorded in the manifest: --resume and merge refuse a different "
    "precision"
)


def add_precision_flags(
    group: argparse.ArgumentParser | argparse._ArgumentGroup, *, deprecated_autocast: bool
) -> None:
    """Add ``--precision`` (default None: fp32) and, if asked, the ``--autocast`` alias."""
    group.add_argument("--precision", choices=PRECISION_CHOICES, default=None, help=PRECISION_HELP)
    if deprecated_autocast:
        group.add_argument(
            "--autocast",
            choices=tuple(AUTOCAST_ALIASES),
            default=None,
            help="deprecated alias of --precision (none = fp32)",
        )


def precision_from_args(args: argparse.Namespace, *, prog: str) -> Precision:
    """The precision the flags ask for; says on stderr that ``--autocast`` is deprecated.

    Raises:
        UsageError: ``--autocast`` and ``--precision`` ask for different precisions.
    """
    asked: str | None = args.precision
    alias: str | None = getattr(args, "autocast", None)
    if alias is not None:
        meant = AUTOCAST_ALIASES[alias]
        print(f"{prog}: --autocast is deprecated; use --precision {meant}", file=sys.stderr)
        if asked is not None and asked != meant:
            raise UsageError(
                f"--autocast {alias} (= --precision {meant}) contradicts --precision {asked}; "
                "give --precision only"
            )
        asked = meant
    for name in PRECISION_CHOICES:
        if name == asked:
            return name
    return "fp32"
