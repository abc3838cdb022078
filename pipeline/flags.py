"""The flags every model-running command shares, defined once: ``--detector``,
``--encoder``, ``--device`` and ``--precision`` (with the deprecated ``--autocast``), the one
usage error for a device that cannot be used, and the checks a command makes before it imports
torch (:func:`check_models`, :func:`check_image_file`). The precision names are
:data:`detector.precision.PRECISION_NAMES` (a test keeps them equal); whether a device can run
one is decided by :func:`detector.precision.check_precision` when the options are resolved.

Imports nothing heavy (safetensors' reader is small): a command's parser is built, and its
files and model names are checked, before torch is imported, so a usage error is said at once.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING

from safetensors import SafetensorError

from weights.command import UsageError
from weights.defaults import DEFAULT_DETECTOR, DEFAULT_DEVICE, DeviceError, resolve_device
from weights.registry import UnknownCheckpointError
from weights.resolve import CheckpointNotFoundError, locate_checkpoint

if TYPE_CHECKING:
    import torch

    from detector.precision import Precision

DEVICE_HELP = "cpu, cuda, cuda:N, or auto (cuda when available) (default: %(default)s)"

#: What loading a model raises when the device cannot be used or the model's files are wrong
#: (missing, unknown, corrupt, a damaged safetensors header): a usage error, exit 2 ("models
#: not loadable"), never an unexpected error.
MODEL_LOAD_ERRORS: tuple[type[Exception], ...] = (
    DeviceError,
    FileNotFoundError,
    KeyError,
    ValueError,
    TypeError,
    SafetensorError,
)


def add_detector_flag(parser: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    """``--detector NAME|PATH`` (default: the real bottom-up detector)."""
    parser.add_argument(
        "--detector",
        default=DEFAULT_DETECTOR,
        metavar="NAME|PATH",
        help="detector registry name or checkpoint file (default: %(default)s)",
    )


def add_encoder_flag(
    parser: argparse.ArgumentParser | argparse._ArgumentGroup, *, default: str | None, help: str
) -> None:
    """``--encoder NAME|DIR`` with the command's own default and help."""
    parser.add_argument("--encoder", default=default, metavar="NAME|DIR", help=help)


def add_device_flag(parser: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    """``--device`` (default ``auto``)."""
    parser.add_argument("--device", default=DEFAULT_DEVICE, metavar="DEV", help=DEVICE_HELP)


def device_from_args(args: argparse.Namespace, *, prog: str) -> torch.device:
    """``args.device`` resolved by the one device rule (:func:`weights.defaults.
    resolve_device`); a device that cannot be used is a :class:`UsageError` naming the flag.
    A GPU that cannot be used is said on stderr; the CPU of a machine without one only under
    ``-v``."""

    def say(message: str) -> None:
        print(f"{prog}: {message}", file=sys.stderr)

    try:
        device = resolve_device(
            args.device, on_fallback=say, on_cpu=say if getattr(args, "verbose", False) else None
        )
    except DeviceError as error:
        raise UsageError(f"--device {args.device}: {error}") from None
    return device


def device_and_precision(args: argparse.Namespace, *, prog: str) -> tuple[str, Precision]:
    """``--device`` and ``--precision``, checked together (a precision the device cannot run
    is a usage error naming the flag), before any model loads; imports torch."""

    device = device_from_args(args, prog=prog)
    precision = precision_from_args(args, prog=prog)
    from detector.precision import check_precision

    try:
        check_precision(precision, device)
    except ValueError as error:
        raise UsageError(f"--precision {precision}: {error}") from None
    return str(device), precision


def check_image_file(path: str, *, role: str = "") -> None:
    """``path`` names an existing file; else a :class:`UsageError` in the decoder's words
    (``PATH: no such file``, with `` (ROLE)`` when given), said before any model loads. What
    the file holds is the decoder's to judge."""
    if os.path.isfile(path):
        return
    what = "is a directory" if os.path.isdir(path) else "no such file"
    if os.path.islink(path) and not os.path.exists(path):
        what = "broken symbolic link"
    raise UsageError(f"{path}: {what}{f' ({role})' if role else ''}")


def check_models(models: Sequence[tuple[str, str]], *, download: bool) -> None:
    """Every ``(flag, name or path)`` of ``models`` resolves (:func:`weights.
    locate_checkpoint`: no weights read or hashed, no torch); a download happens here when
    ``download`` allows one, as the loader would make it.

    Raises:
        UsageError: one message naming every model that does not resolve, each with where it
            looked and how to get it. The lines every such message ends with (how to run the
            shipped models instead) are said once, at the end.
    """
    missing: list[tuple[str, list[str]]] = []
    for flag, name in models:
        try:
            locate_checkpoint(name, download=download, verify_checksums=False)
        except (CheckpointNotFoundError, UnknownCheckpointError) as error:
            missing.append((f"{flag} {name}", str(error).splitlines()))
        except ValueError as error:  # e.g. a damaged registry of names: the message names it
            raise UsageError(f"{flag} {name}: {error}") from None
    if not missing:
        return
    if len(missing) == 1:
        named, lines = missing[0]
        raise UsageError(f"{named}: " + "\n".join(lines))
    common = _common_tail([lines for _, lines in missing])
    parts = [f"{len(missing)} models are not on this machine:"]
    parts += [f"{named}: " + "\n".join(lines[: len(lines) - common]) for named, lines in missing]
    tail = missing[0][1][len(missing[0][1]) - common :]
    raise UsageError("\n".join(parts + tail))


def _common_tail(messages: Sequence[list[str]]) -> int:
    """How many last lines all ``messages`` share, leaving each its first line (two flags
    naming one missing model still say which model each is)."""
    shortest = min(len(lines) for lines in messages)
    count = 0
    while count < shortest - 1 and len({lines[-1 - count] for lines in messages}) == 1:
        count += 1
    return count


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
