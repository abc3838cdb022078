"""The one sort of the reference code: numpy 1.x's default ``argsort``, on every machine.

The original bottom-up-attention code ran on numpy 1.x, whose ``argsort()`` (kind
``quicksort``) is numpy's generic introsort from numpy 1.12 to 1.24: median-of-three
quicksort, insertion sort for partitions of 16 items or fewer, heapsort past a depth of
``2 * floor(log2(n))``. Exact ties come out in whatever order that algorithm leaves them, and
that order decides which boxes win wherever scores tie (float32 probabilities saturate to
exactly 1.0). numpy 1.25-1.26 on AVX-512 and numpy 2.x sort float32 and float64 with SIMD
kernels (x86-simd-sort, Highway) whose tie order differs from the introsort's and between
machines (AVX2, AVX-512, ARM).

numpy 2.4 still sorts ``longdouble`` with the generic introsort (no SIMD kernel exists for
it), and casting float32 or float64 to ``longdouble`` is exact and keeps every ``<`` and
``==`` between values, so ``np.argsort(values.astype(np.longdouble))`` is the introsort's
order of ``values``. This needs numpy >= 2.4 (requirements.txt pins 2.4.6), where that
holds and is tested; a numpy that adds a SIMD kernel for ``longdouble`` would break it, which
these tests would catch: tests/detector/test_reference_sort.py checks it against an introsort
written from the algorithm's description, and tests/detector/test_simd_independence.py with
numpy's SIMD dispatch switched off. Along an axis of a 2-D or larger array, slices without a
tie (or NaN) have one ascending order only, so numpy's own fast sort gives them first; only
slices with ties pay for the long double sort.
"""

from __future__ import annotations

import numpy as np

#: The dtypes the reference sorted: float32 scores (``cpu_nms``, the proposal layer) and
#: float64 ``max_conf`` (generate_tsv's clamp).
_SORTED_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


def argsort(values: np.ndarray, *, axis: int = -1) -> np.ndarray:
    """int64 indices that sort ``values`` ascending as numpy 1.12-1.24's ``argsort()`` did.

    Args:
        values: float32 or float64 array; sorted along ``axis`` (each 1-D slice on its own, as
            ``np.argsort(values, axis=axis)`` does). NaNs go last, as numpy 1.x put them.
        axis: the axis to sort along.

    Returns:
        int64 array of ``values``' shape. The reference's descending orders are this reversed,
        ``argsort(values)[::-1]``, exactly as the reference wrote them (not a descending sort:
        reversal also reverses the order of ties).

    Raises:
        TypeError: ``values`` is not float32 or float64 (other dtypes were never sorted by the
            reference, and ``longdouble`` cannot hold every int64 exactly).
        ValueError: a 0-d array.
    """
    array = np.asarray(values)
    if array.dtype not in _SORTED_DTYPES:
        raise TypeError(f"the reference sort takes float32 or float64 values, got {array.dtype}")
    if array.ndim == 0:
        raise ValueError("the reference sort needs an array of at least one dimension")
    if array.ndim == 1:  # one slice, with ties where the reference sorted (scores, max_conf)
        return np.argsort(array.astype(np.longdouble), kind="quicksort").astype(np.int64)
    slices = np.moveaxis(array, axis, -1)
    # Any correct sort first (numpy's SIMD one: fast). A slice whose sorted values strictly
    # increase has no ties and no NaN, so it has one ascending order only, which is also the
    # introsort's. Only the other slices pay for the long double sort.
    order = np.argsort(slices, axis=-1)
    ordered = np.take_along_axis(slices, order, axis=-1)
    tied = ~np.all(ordered[..., 1:] > ordered[..., :-1], axis=-1)
    if tied.any():
        order[tied] = np.argsort(slices[tied].astype(np.longdouble), axis=-1, kind="quicksort")
    return np.moveaxis(order, -1, axis).astype(np.int64, copy=False)
