"""Inference settings of a :class:`~detector.model.Detector`: one request, one resolved record.

:class:`InferenceOptions` is what a caller asks for; ``None`` fields mean "the per-device
default". :meth:`InferenceOptions.resolve` turns it into :class:`ResolvedOptions`, with every
choice made for the device, which the detector keeps as its single source of truth
(``Detector.options``). Moving a detector re-resolves the same request on the new device.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch

from detector.precision import PRECISION_NAMES, Precision, check_precision, precision_dtype


def default_channels_last(device: torch.device, precision: Precision) -> bool:
    """channels_last on CUDA (cuDNN's tensor-core kernels want NHWC), and for bf16/fp16 on
    the CPU, where oneDNN's AMX/AVX-512 bf16 convs run NHWC natively and reorder NCHW at every
    conv (a res5 block 1.6x faster NHWC, benchmarks/RESULTS.md). fp32 on CPU stays NCHW: within
    the noise of channels_last here and bit-reproducible across processes, which --resume
    relies on."""
    return device.type == "cuda" or precision != "fp32"


def default_res5_chunk(device: torch.device) -> int:
    """Regions per res5 pass. On CPU 8: a chunk's activations (8 x 2048 x 14 x 14 fp32, 13 MB)
    stay in the L3 cache, which took res5 from ~140 to ~175 GFLOP/s here (chunks of 50 spill;
    benchmarks/RESULTS.md). On CUDA 100: big enough to fill the GPU, 160 MB of activations."""
    return 100 if device.type == "cuda" else 8


def default_batch_invariant(device: torch.device) -> bool:
    """True on CPU: oneDNN picks conv algorithms by batch size, so a batched CPU trunk differs
    from a single-image one in the last float bits. On CPU batching buys no speed (one image
    already fills the cores), so each image runs alone and batches are exact. False elsewhere."""
    return device.type == "cpu"


def parse_device(device: str | torch.device) -> torch.device:
    """``torch.device(device)``, with ``ValueError`` (not ``RuntimeError``) for a bad name."""
    if isinstance(device, torch.device):
        return device
    try:
        return torch.device(device)
    except (RuntimeError, TypeError) as error:
        raise ValueError(f"unknown device {device!r}: {error}") from None


@dataclass(frozen=True)
class ResolvedOptions:
    """The inference settings a detector runs with, every per-device choice made."""

    device: torch.device
    """Where the weights live and the images are sent."""
    precision: Precision
    """``fp32`` (exact), or ``bf16``/``fp16`` for the convolutions of trunk, RPN head and res5;
    RoI pooling, decoding, NMS, mean pool, the predictor and selection stay fp32
    (:mod:`detector.precision`)."""
    channels_last: bool
    """Convs and their inputs in NHWC (True) or NCHW (False) layout."""
    res5_chunk: int
    """Regions per res5 pass (>= 1); changes speed and memory, not the features."""
    batch_invariant: bool
    """Run each image of a batch alone through the network, so batched = one at a time."""
    compile: bool
    """Trunk and res5 are ``torch.compile``-d (compiling takes minutes per input shape)."""
    deterministic: bool
    """Records do not depend on batching or run: each image alone, and on CUDA cuDNN's
    deterministic algorithms with TF32 off (:func:`detector.precision.exact_numerics`). True on
    CPU whenever ``batch_invariant`` is (its fp32 path has no TF32 or autotuning)."""

    @property
    def precision_dtype(self) -> torch.dtype | None:
        """``torch.bfloat16``/``torch.float16`` for the autocast convolutions, None for fp32."""
        return precision_dtype(self.precision)


@dataclass(frozen=True)
class InferenceOptions:
    """Inference settings a caller asks for; ``None`` means "the per-device default".

    Raises ``ValueError`` on construction for an unknown device or precision name, or a
    ``res5_chunk`` below 1; :meth:`resolve` raises it for a precision the device cannot run
    (:func:`detector.precision.check_precision`).
    """

    device: str | torch.device = "cpu"
    """``cpu``, ``cuda``, ``cuda:i`` or a ``torch.device``."""
    precision: Precision = "fp32"
    """``fp32`` (exact), ``bf16`` (CUDA, or a CPU with bf16 instructions) or ``fp16`` (CUDA)."""
    allow_emulated_bf16: bool = False
    """Run ``bf16`` on a CPU without bf16 instructions (emulated, slower than fp32): for
    measuring the drift of bf16 on any machine, never for speed."""
    channels_last: bool | None = None
    """None: :func:`default_channels_last` (CUDA yes, CPU only for bf16/fp16)."""
    res5_chunk: int | None = None
    """None: :func:`default_res5_chunk` (CPU 8, CUDA 100)."""
    batch_invariant: bool | None = None
    """None: :func:`default_batch_invariant` (on CPU only)."""
    compile: bool = False
    """``torch.compile`` the trunk and res5 (opt-in; cannot be undone on a detector)."""
    deterministic: bool = False
    """Exact mode: batch invariance, and on CUDA deterministic cuDNN with TF32 off, so shards
    and batches give the same bits as one run on the same machine (slower on CUDA)."""

    def __post_init__(self) -> None:
        parse_device(self.device)
        if self.precision not in PRECISION_NAMES:
            raise ValueError(
                f"precision must be one of {', '.join(PRECISION_NAMES)}, got {self.precision!r}"
            )
        chunk = self.res5_chunk
        if chunk is not None and (isinstance(chunk, bool) or not isinstance(chunk, int)):
            raise ValueError(f"res5_chunk must be an int >= 1 or None, got {chunk!r}")
        if chunk is not None and chunk < 1:
            raise ValueError(f"res5_chunk must be >= 1, got {chunk}")

    def on(self, device: str | torch.device) -> InferenceOptions:
        """The same request for another device (its per-device defaults are resolved anew)."""
        return dataclasses.replace(self, device=device)

    def resolve(self) -> ResolvedOptions:
        """Every ``None`` replaced by its default for :attr:`device`.

        Raises:
            ValueError: :attr:`precision` cannot run on the device (fp16 off CUDA, bf16 on a
                CPU without bf16 instructions unless :attr:`allow_emulated_bf16`).
        """
        device = parse_device(self.device)
        check_precision(self.precision, device, allow_emulated_bf16=self.allow_emulated_bf16)
        if self.deterministic and self.batch_invariant is False:
            raise ValueError("deterministic needs batch_invariant (each image alone); got False")
        batch_invariant = (
            self.deterministic or default_batch_invariant(device)
            if self.batch_invariant is None
            else self.batch_invariant
        )
        return ResolvedOptions(
            device=device,
            precision=self.precision,
            channels_last=(
                default_channels_last(device, self.precision)
                if self.channels_last is None
                else self.channels_last
            ),
            res5_chunk=default_res5_chunk(device) if self.res5_chunk is None else self.res5_chunk,
            batch_invariant=batch_invariant,
            compile=self.compile,
            deterministic=self.deterministic or (device.type == "cpu" and batch_invariant),
        )
