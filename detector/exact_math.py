"""float32 ``exp`` and softmax that give the same bits on every CPU.

numpy's float32 ``np.exp`` and torch's CPU ``exp``/``softmax`` pick kernels by the SIMD level
they find (numpy: AVX2/AVX-512 or its baseline; torch: ``ATEN_CPU_CAPABILITY``), and the
kernels round differently: numpy's AVX2 and baseline float32 ``exp`` differ in the last bit on
about 39% of values. Where those values decide which boxes a user gets (the proposal layer's
objectness and decoding, the class softmax of the selection) they must not depend on the
machine.

Here every value is computed with IEEE-754 basic operations only (``+ - * /``, comparisons,
``rint``, scaling by a power of two, conversion), each of which is correctly rounded by
definition, so SIMD and scalar code, x86 and ARM, give the same bits. numpy never fuses two
ufunc calls into one fused multiply-add, so no contraction changes a rounding. The exponential
is a float64 polynomial accurate to a few float64 ulps, rounded once to float32: the correctly
rounded float32 ``exp`` except where the true value lies within about ``1e-15`` relative of a
float32 rounding boundary.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

#: Inputs are clamped to this range first: float32 ``exp`` overflows to inf above ~88.72 and
#: underflows to 0 below ~-103.97, so the clamp changes no float32 result, and it keeps the
#: power-of-two scaling in float64's normal range.
_EXP_RANGE = (-110.0, 100.0)
_LOG2_E = 1.4426950408889634
#: ln 2 split (fdlibm): ``k * _LN2_HI`` is exact for the ``|k| < 2**20`` that occur.
_LN2_HI = 6.93147180369123816490e-01
_LN2_LO = 1.90821492927058770002e-10
#: 1 / n! for n = 13 down to 0: Taylor terms of exp(r) on |r| <= ln(2) / 2, truncation error
#: below 5e-18 relative.
_TAYLOR = tuple(1.0 / math.factorial(n) for n in range(13, -1, -1))


def _exp_float64(x: np.ndarray) -> np.ndarray:
    """float64 ``exp`` of finite float64 ``x`` within ``_EXP_RANGE``, from basic operations:
    ``x = k ln2 + r`` (Cody-Waite), a Horner polynomial in ``r``, then ``* 2**k``. In place on
    temporaries: this runs on every anchor and every class logit of an image."""
    k = x * _LOG2_E
    np.rint(k, out=k)
    r = k * _LN2_HI
    np.subtract(x, r, out=r)
    r -= k * _LN2_LO
    poly = r * _TAYLOR[0]
    for coefficient in _TAYLOR[1:-1]:
        poly += coefficient
        poly *= r
    poly += _TAYLOR[-1]
    result: np.ndarray = np.ldexp(poly, k.astype(np.int32), out=poly)
    return result


def exp_float32(values: np.ndarray) -> np.ndarray:
    """float32 ``exp(values)``, the same bits on every machine.

    Args:
        values: float32 (or float64) array of any shape.

    Returns:
        float32 array of the same shape: ``exp`` evaluated in float64 and rounded once to
        float32; inf above ~88.72, 0 below ~-103.97, NaN where ``values`` is NaN.
    """
    x = np.asarray(values, dtype=np.float64)
    nan = np.isnan(x)
    clamped = np.clip(np.where(nan, 0.0, x), *_EXP_RANGE)
    with np.errstate(over="ignore"):  # float32 overflow to inf is the wanted result
        result = _exp_float64(clamped).astype(np.float32)
    result[nan] = np.float32(np.nan)
    return result


def exp_float32_tensor(values: Tensor) -> Tensor:
    """float32 ``exp`` of a tensor, the same bits on every machine: :func:`exp_float32`'s
    method in torch float64 operations, on the tensor's own device and differentiable (the
    gradient is the polynomial's derivative, ``exp`` to float64 accuracy). For the box
    decoding of :func:`detector.boxes.apply_deltas`, where torch's own ``exp`` changes last
    bits with ``ATEN_CPU_CAPABILITY``.

    Args:
        values: float tensor of any shape.

    Returns:
        float32 tensor of the same shape and device.
    """
    x = values.to(torch.float64)
    nan = torch.isnan(x)
    x = torch.clamp(torch.where(nan, torch.zeros_like(x), x), *_EXP_RANGE)
    k = torch.round(x * _LOG2_E)  # half to even, as np.rint
    r = (x - k * _LN2_HI) - k * _LN2_LO
    poly = r * _TAYLOR[0]
    for coefficient in _TAYLOR[1:-1]:
        poly = (poly + coefficient) * r
    poly = poly + _TAYLOR[-1]
    # 2**k built from its bits: exact, where a pow() kernel need not be.
    scale = ((k.to(torch.int64) + 1023) << 52).view(torch.float64)
    result = (poly * scale).to(torch.float32)
    return torch.where(nan, torch.full_like(result, float("nan")), result)


def softmax_float32(logits: Tensor, *, last_first: bool) -> Tensor:
    """Row-wise float32 softmax of ``logits`` ``[R, K]``, the same bits on every machine.

    The steps of Caffe's ``SoftmaxLayer`` (which made the reference's class and attribute
    probabilities), each in float32: subtract the row's maximum, ``exp`` (:func:`exp_float32`),
    sum the row in a fixed column order, one term at a time, divide. A fixed, sequential sum is
    what makes it machine-independent (a vectorised sum adds in an order that depends on the
    vector width). Like Caffe's, a probability saturates to exactly 1.0 once the other terms
    sum below 2**-24, so confident rows tie at 1.0 as they did there.

    Args:
        logits: ``Tensor[R, K]`` on any device; computed in float32 on the CPU.
        last_first: sum the last column first, then columns ``0 .. K - 2``: Caffe's column 0
            (background, "no attribute") is our last column, and Caffe summed from column 0.

    Returns:
        float32 ``Tensor[R, K]`` on the device of ``logits``.
    """
    x = logits.detach().to("cpu", torch.float32).numpy()
    if x.ndim != 2 or x.shape[1] < 1:
        raise ValueError(f"softmax_float32 needs logits [R, K], got shape {tuple(x.shape)}")
    exps = exp_float32(x - x.max(axis=1, keepdims=True, initial=-np.inf))
    ordered = np.concatenate((exps[:, -1:], exps[:, :-1]), axis=1) if last_first else exps
    # cumsum adds left to right, one term at a time: every partial sum is an output, so no
    # kernel can reassociate it. Its last column is the row's sum.
    sums = np.cumsum(ordered, axis=1, dtype=np.float32)[:, -1:]
    return torch.from_numpy(exps / sums).to(logits.device)
