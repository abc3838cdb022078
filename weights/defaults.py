"""The project's defaults: which models run when none is named, and on which device.

One place for both, used by every command (``extract_features``, ``answer``), by ``Pipeline``
and ``answer()``, and by the checkpoint loaders (``load_detector``, ``load_encoder``). It lives
in ``weights`` because every package may import ``weights`` and ``weights`` imports none of them.

The defaults are the real models. The shapes-world pair ships inside the package and runs
offline; name it explicitly (:data:`SHAPES_DETECTOR`, :data:`SHAPES_ENCODER`) to use it.

Device rule, one for every entry point: only ``"auto"`` (or ``None``, which means the same) may
fall back, to the CPU, saying so once. An explicit device that cannot be used is a
:class:`DeviceError`, raised before any model is loaded.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

#: Registry name of the default detector: the Visual Genome bottom-up-attention Faster R-CNN.
DEFAULT_DETECTOR = "vg-r101-c4-attr"
#: Registry name of the default LXMERT: fine-tuned on VQA v2.
DEFAULT_ENCODER = "lxmert-vqa"
#: The shapes-world models shipped in ``weights/shipped/`` (offline, toy world, 22 answers).
SHAPES_DETECTOR = "shapes-detector"
SHAPES_ENCODER = "shapes-lxmert"
#: The device every entry point uses unless told otherwise.
DEFAULT_DEVICE = "auto"

#: What every entry point says when ``auto`` finds no GPU.
CPU_FALLBACK_MESSAGE = "no CUDA device visible (in Docker: run with --gpus all); running on the CPU"


class DeviceError(ValueError):
    """An explicitly requested device that cannot be used here (a usage error)."""


def _warn_fallback(message: str) -> None:
    # Python shows a given warning once per call site, so a long session says it once.
    warnings.warn(message, RuntimeWarning, stacklevel=3)


def resolve_device(
    spec: str | torch.device | None = DEFAULT_DEVICE,
    *,
    on_fallback: Callable[[str], None] | None = _warn_fallback,
) -> torch.device:
    """The ``torch.device`` that ``spec`` names, checked to be usable now.

    Args:
        spec: ``"auto"`` or ``None`` (CUDA when available, else the CPU), ``"cpu"``,
            ``"cuda"``, ``"cuda:N"``, or a ``torch.device``.
        on_fallback: called with :data:`CPU_FALLBACK_MESSAGE` when ``auto`` falls back to the
            CPU (default: a ``RuntimeWarning``); ``None`` says nothing.

    Raises:
        DeviceError: an unknown name, ``cuda`` without a usable CUDA device, or ``cuda:N``
            past the last device. The message says what is available.
    """
    import torch

    if spec is None or (isinstance(spec, str) and spec.strip().lower() == "auto"):
        if torch.cuda.is_available():
            return torch.device("cuda")
        if on_fallback is not None:
            on_fallback(CPU_FALLBACK_MESSAGE)
        return torch.device("cpu")
    try:
        device = torch.device(spec.strip() if isinstance(spec, str) else spec)
    except (RuntimeError, TypeError, ValueError):
        raise DeviceError(f"unknown device {spec!r}: use cpu, cuda, cuda:N or auto") from None
    if device.type == "cpu":
        return device
    if device.type != "cuda":
        raise DeviceError(f"device {spec!r} is not supported: use cpu, cuda, cuda:N or auto")
    if not torch.cuda.is_available():
        raise DeviceError(
            f"device {str(spec)!r}: no CUDA device is usable here (no NVIDIA driver, or no GPU "
            "visible; in Docker run with --gpus all); use cpu, or auto to fall back"
        )
    count = torch.cuda.device_count()
    if device.index is not None and device.index >= count:
        raise DeviceError(
            f"device {str(spec)!r}: there are {count} CUDA device(s), numbered 0..{count - 1}"
        )
    return device
