"""Numeric precision of the detector: the names, where each runs, and the CPU's bf16 check.

``fp32`` is exact and the default. ``bf16`` and ``fp16`` run only the convolutions of the trunk,
the RPN head and res5 in that dtype (autocast regions in :mod:`detector.model` and
:mod:`detector.roi_heads`); RoI pooling, proposal decoding, NMS, the res5 mean pool, the box
predictor's Linear layers and selection stay fp32 (:func:`fp32_region`).

Where each runs (:func:`check_precision`, the one place that decides):

- ``bf16`` on CUDA, and on a CPU with bf16 instructions (``avx512_bf16`` or AMX ``amx_bf16``
  on x86, ``bf16`` on Arm). Elsewhere oneDNN emulates bf16, slower than fp32, so it is
  refused rather than run slower in silence; ``allow_emulated_bf16`` forces it (for measuring
  the drift on any machine).
- ``fp16`` on CUDA only, for GPUs without bf16 (T4 and older).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Literal

import torch

Precision = Literal["fp32", "bf16", "fp16"]
PRECISION_NAMES: tuple[Precision, ...] = ("fp32", "bf16", "fp16")

#: /proc/cpuinfo flags that make bf16 convolutions fast (AVX-512 BF16 dot products, AMX tiles;
#: ``bf16`` is the Arm feature name).
BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16", "bf16")

CPUINFO = Path("/proc/cpuinfo")


def precision_dtype(precision: Precision) -> torch.dtype | None:
    """The dtype of the low-precision convolutions; None for ``fp32`` (no autocast)."""
    return {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]


def cpu_bf16_instructions(cpuinfo: Path = CPUINFO) -> tuple[str, ...]:
    """The bf16 instruction sets of this CPU (names from :data:`BF16_CPU_FLAGS`), () if none.

    Read from ``cpuinfo``'s ``flags`` (x86) or ``Features`` (Arm) lines; where that file does
    not exist (macOS, Windows), from torch's own CPU probes.
    """
    try:
        text = cpuinfo.read_text(errors="replace")
    except OSError:
        return _torch_bf16_probes()
    flags: set[str] = set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            flags.update(value.split())
    return tuple(flag for flag in BF16_CPU_FLAGS if flag in flags)


def _torch_bf16_probes() -> tuple[str, ...]:
    # Private torch helpers (present in torch 2.x); absent ones count as "no".
    probes = {"avx512_bf16": "_is_avx512_bf16_supported", "amx_bf16": "_is_amx_tile_supported"}
    found = []
    for flag, name in probes.items():
        probe = getattr(torch.cpu, name, None)
        if probe is not None and probe():
            found.append(flag)
    return tuple(found)


def cuda_bf16_native(device: torch.device) -> bool:
    """Whether the CUDA device computes bf16 natively (Ampere, compute capability 8.0, or
    newer); older cards emulate it. Without a visible GPU the options resolve by name (the
    device rule, :func:`weights.defaults.resolve_device`, refuses such a device itself)."""
    if not torch.cuda.is_available():
        return True
    return torch.cuda.get_device_capability(device) >= (8, 0)


def check_precision(
    precision: Precision, device: torch.device, *, allow_emulated_bf16: bool = False
) -> None:
    """Refuse a precision ``device`` cannot run as promised (see the module docstring).

    Raises:
        ValueError: ``fp16`` off CUDA; ``bf16`` on a device other than CPU or CUDA; ``bf16``
            on a CPU without bf16 instructions or a GPU below compute capability 8.0 unless
            ``allow_emulated_bf16``. The message
            names the precision and says what to use instead.
    """
    if precision == "fp32":
        return
    if precision == "fp16" and device.type != "cuda":
        raise ValueError(
            f"precision fp16 runs on CUDA only (for GPUs without bf16); on {device} use "
            "bf16 or fp32"
        )
    if device.type == "cuda":
        if precision == "bf16" and not allow_emulated_bf16 and not cuda_bf16_native(device):
            raise ValueError(
                f"precision bf16: {device} has no native bf16 (compute capability below 8.0, "
                "e.g. a T4), so bf16 would be emulated and slower; use fp16 or fp32"
            )
        return
    if device.type != "cpu":
        raise ValueError(f"precision {precision} runs on cpu or cuda, not {device}; use fp32")
    if not allow_emulated_bf16 and not cpu_bf16_instructions():
        raise ValueError(
            "precision bf16: this CPU has no bf16 instructions (neither avx512_bf16 nor "
            "amx_bf16 among its flags), so bf16 would be emulated and slower than fp32; "
            "use fp32"
        )


def low_precision(
    device: torch.device, dtype: torch.dtype | None
) -> contextlib.AbstractContextManager[None]:
    """Autocast to ``dtype`` on ``device`` (CPU autocast for bf16 on the CPU); nothing for
    None (fp32)."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)


def fp32_region(device: torch.device) -> contextlib.AbstractContextManager[None]:
    """Autocast switched off on ``device`` (an fp32 island inside a low-precision region);
    nothing when no autocast is on, so fp32 runs take exactly the path they always took."""
    if device.type in ("cpu", "cuda") and torch.is_autocast_enabled(device.type):
        return torch.autocast(device.type, enabled=False)
    return contextlib.nullcontext()


@contextlib.contextmanager
def exact_numerics(device: torch.device, *, deterministic: bool) -> Iterator[None]:
    """On CUDA with ``deterministic``: cuDNN's deterministic algorithms, no autotuning, no TF32
    for convolutions or matmuls, restored on exit. Nothing otherwise: the CPU path is exact
    already (fp32 everywhere, each image alone), and a plain CUDA run keeps its speed."""
    if not (deterministic and device.type == "cuda"):
        yield
        return
    matmul = torch.backends.cuda.matmul
    was_tf32 = matmul.allow_tf32
    matmul.allow_tf32 = False
    try:
        with torch.backends.cudnn.flags(
            enabled=True, benchmark=False, deterministic=True, allow_tf32=False
        ):
            yield
    finally:
        matmul.allow_tf32 = was_tf32
