"""The flags every model-running command shares, defined once: ``--detector``,
``--encoder`` and ``--device``, and the one usage error for a device that cannot be used.

Imports nothing heavy (safetensors' reader is small): a command's parser is built before torch
is imported.
"""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING

from safetensors import SafetensorError

from weights.command import UsageError
from weights.defaults import DEFAULT_DETECTOR, DEFAULT_DEVICE, DeviceError, resolve_device

if TYPE_CHECKING:
    import torch

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
