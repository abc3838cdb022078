"""The project's defaults: which models run when none is named, and on which device.

One place for both, used by every command (``extract_features``, ``answer``), by ``Pipeline``
and ``answer()``, and by the checkpoint loaders (``load_detector``, ``load_encoder``). It lives
in ``weights`` because every package may import ``weights`` and ``weights`` imports none of them.

The defaults are the real models. The shapes-world pair ships inside the package and runs
offline; name it explicitly (:data:`SHAPES_DETECTOR`, :data:`SHAPES_ENCODER`) to use it.

Device rule, one for every entry point: only ``"auto"`` (or ``None``, which means the same) may
fall back, to the CPU, saying so once. An explicit device that cannot be used is a
:class:`DeviceError`, raised before any model is loaded. A CUDA card older than
:data:`MIN_CUDA_CAPABILITY` counts as unusable (this torch has no kernels for it), so it is
caught here rather than by a "no kernel image" error in the middle of a run.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable
from pathlib import Path
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
#: The shipped shapes-world NLVR2 model (two images, one statement). There is no default NLVR2
#: model: LXMERT released no NLVR2 checkpoint, so ``judge`` needs one named.
SHAPES_NLVR2 = "shapes-nlvr2"
#: Why ``judge`` (function and command) needs an encoder named; the one wording.
NO_NLVR2_CHECKPOINT = (
    "judge needs an NLVR2 model, and there is no default: LXMERT released no NLVR2 checkpoint. "
    f"Try the shipped shapes-world one: encoder {SHAPES_NLVR2!r} with detector "
    f"{SHAPES_DETECTOR!r} (or train one with lxmert-finetune train --task nlvr2)"
)


def extra_install_hint(extra: str) -> str:
    """How to install the optional extra ``extra`` (``ray``, ``web``, ``formats``). The one
    wording: the package is on no index yet, so it is installed from its folder."""
    return (
        f"install the [{extra}] extra: pip install -e '.[{extra}]' in the lxmert-pipeline "
        "folder (the Docker image has [ray] and [web])"
    )


#: The device every entry point uses unless told otherwise.
DEFAULT_DEVICE = "auto"

#: What ``auto`` says (only when asked: ``-v``) when the machine has no GPU at all.
CPU_FALLBACK_MESSAGE = "no CUDA device visible (in Docker: run with --gpus all); running on the CPU"


#: The oldest CUDA compute capability this torch's CUDA wheels have kernels for (Turing, sm_75;
#: a V100 is 7.0, a T4 7.5).
MIN_CUDA_CAPABILITY = (7, 5)


class DeviceError(ValueError):
    """An explicitly requested device that cannot be used here (a usage error)."""


def user_cache_root() -> Path:
    """The user's cache root, from the environment as it is now (not at import):
    ``$XDG_CACHE_HOME``, else ``~/.cache``. The one reading of ``XDG_CACHE_HOME``."""
    xdg = os.environ.get("XDG_CACHE_HOME") or os.path.join("~", ".cache")
    return Path(xdg).expanduser()


def cache_dir() -> Path:
    """The project's own cache folder: ``$XDG_CACHE_HOME/lxmert-pipeline``, else
    ``~/.cache/lxmert-pipeline``. Model weights are cached by the registry in the Hugging Face
    cache instead (:mod:`weights.resolve`)."""
    return user_cache_root() / "lxmert-pipeline"


def _warn_fallback(message: str) -> None:
    # Python shows a given warning once per call site, so a long session says it once.
    warnings.warn(message, RuntimeWarning, stacklevel=3)


def resolve_device(
    spec: str | torch.device | None = DEFAULT_DEVICE,
    *,
    on_fallback: Callable[[str], None] | None = _warn_fallback,
    on_cpu: Callable[[str], None] | None = None,
) -> torch.device:
    """The ``torch.device`` that ``spec`` names, checked to be usable now.

    Args:
        spec: ``"auto"`` or ``None`` (CUDA when available, else the CPU), ``"cpu"``,
            ``"cuda"``, ``"cuda:N"``, or a ``torch.device``.
        on_fallback: called, with a message naming the card, when ``auto`` falls back to
            the CPU because the CUDA device is older than :data:`MIN_CUDA_CAPABILITY`: a GPU
            the user has and cannot use deserves a word (default: a ``RuntimeWarning``;
            ``None`` says nothing).
        on_cpu: called with :data:`CPU_FALLBACK_MESSAGE` when ``auto`` runs on the CPU of a
            machine without CUDA. Default ``None``: that is the normal case on a CPU machine,
            and says nothing (the commands say it under ``-v``).

    Raises:
        DeviceError: an unknown name, ``cuda`` without a usable CUDA device, ``cuda:N``
            past the last device, or a card older than :data:`MIN_CUDA_CAPABILITY`. The
            message says what is available.
    """
    import torch

    if spec is None or (isinstance(spec, str) and spec.strip().lower() == "auto"):
        why_not = cuda_too_old(torch.device("cuda")) if torch.cuda.is_available() else ""
        if torch.cuda.is_available() and not why_not:
            return torch.device("cuda")
        if why_not and on_fallback is not None:
            on_fallback(f"{why_not}; running on the CPU")
        elif not why_not and on_cpu is not None:
            on_cpu(CPU_FALLBACK_MESSAGE)
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
    too_old = cuda_too_old(device)
    if too_old:
        raise DeviceError(f"device {str(spec)!r}: {too_old}; use cpu, or auto to fall back")
    return device


def cuda_too_old(device: torch.device) -> str:
    """Why the visible CUDA ``device`` (index None: the current one) cannot run this torch's
    kernels, naming the card and its compute capability; ``""`` when it can."""
    import torch

    capability = torch.cuda.get_device_capability(device)
    if tuple(capability) >= MIN_CUDA_CAPABILITY:
        return ""
    need = ".".join(map(str, MIN_CUDA_CAPABILITY))
    return (
        f"the CUDA device {torch.cuda.get_device_name(device)} has compute capability "
        f"{capability[0]}.{capability[1]}, and this torch's CUDA build needs {need} or newer"
    )
