"""numpy 1.12-1.24's default argsort, written out in Python from the algorithm's description,
and a correctly rounded float32 ``exp``: the tests' own references, independent of numpy's sort
kernels and of the project's code.

The introsort works on an index array over the values. While a partition ``[lo, hi]`` holds
more than 16 items it is split around a median-of-three pivot; partitions of 16 items or fewer
are insertion-sorted; the larger half of each split goes on a stack (the left one when the
halves are equal), and a partition taken from the stack once the depth budget
``2 * floor(log2(n))`` is spent is heapsorted instead.
"""

from __future__ import annotations

import math

import numpy as np

SMALL = 16  # partitions of at most this many items are insertion-sorted


def introsort_argsort(values: np.ndarray) -> np.ndarray:
    """int64 ``[n]``: the order numpy 1.x's ``argsort()`` gives a 1-D float array."""
    v = [float(x) for x in np.asarray(values).ravel()]
    idx = list(range(len(v)))
    if len(v) < 2:
        return np.array(idx, dtype=np.int64)
    lo, hi = 0, len(v) - 1
    depth = 2 * (len(v).bit_length() - 1)
    stack: list[tuple[int, int, int]] = []
    while True:
        if depth < 0:
            _heapsort(v, idx, lo, hi)
        else:
            while hi - lo + 1 > SMALL:
                i = _partition(v, idx, lo, hi)
                depth -= 1
                if i - lo < hi - i:  # right half larger: push it, go on with the left
                    stack.append((i + 1, hi, depth))
                    hi = i - 1
                else:
                    stack.append((lo, i - 1, depth))
                    lo = i + 1
            _insertion_sort(v, idx, lo, hi)
        if not stack:
            return np.array(idx, dtype=np.int64)
        lo, hi, depth = stack.pop()


def _less(a: float, b: float) -> bool:
    """numpy's float ``<`` for sorting: NaN is larger than every number."""
    return a < b or (b != b and a == a)


def _partition(v: list[float], idx: list[int], lo: int, hi: int) -> int:
    mid = lo + (hi - lo) // 2
    if _less(v[idx[mid]], v[idx[lo]]):
        idx[mid], idx[lo] = idx[lo], idx[mid]
    if _less(v[idx[hi]], v[idx[mid]]):
        idx[hi], idx[mid] = idx[mid], idx[hi]
    if _less(v[idx[mid]], v[idx[lo]]):
        idx[mid], idx[lo] = idx[lo], idx[mid]
    pivot = v[idx[mid]]
    idx[mid], idx[hi - 1] = idx[hi - 1], idx[mid]
    i, j = lo, hi - 1
    while True:
        i += 1
        while _less(v[idx[i]], pivot):
            i += 1
        j -= 1
        while _less(pivot, v[idx[j]]):
            j -= 1
        if i >= j:
            break
        idx[i], idx[j] = idx[j], idx[i]
    idx[i], idx[hi - 1] = idx[hi - 1], idx[i]
    return i


def _insertion_sort(v: list[float], idx: list[int], lo: int, hi: int) -> None:
    for i in range(lo + 1, hi + 1):
        item = idx[i]
        j = i
        while j > lo and _less(v[item], v[idx[j - 1]]):
            idx[j] = idx[j - 1]
            j -= 1
        idx[j] = item


def _heapsort(v: list[float], idx: list[int], lo: int, hi: int) -> None:
    """Heapsort of ``idx[lo..hi]`` with 1-based heap positions (``a[k]`` is ``idx[lo + k - 1]``)."""
    n = hi - lo + 1

    def sift(start: int, item: int, size: int) -> None:
        i, j = start, 2 * start
        while j <= size:
            if j < size and _less(v[idx[lo + j - 1]], v[idx[lo + j]]):
                j += 1
            if not _less(v[item], v[idx[lo + j - 1]]):
                break
            idx[lo + i - 1] = idx[lo + j - 1]
            i, j = j, 2 * j
        idx[lo + i - 1] = item

    for start in range(n // 2, 0, -1):
        sift(start, idx[lo + start - 1], n)
    while n > 1:
        item = idx[lo + n - 1]
        idx[lo + n - 1] = idx[lo]
        n -= 1
        sift(1, item, n)


def introsort_rows(values: np.ndarray) -> np.ndarray:
    """:func:`introsort_argsort` of each row of a 2-D array."""
    return np.stack([introsort_argsort(row) for row in values]) if len(values) else values


def exp32(values: np.ndarray) -> np.ndarray:
    """float32 ``exp``: Python's double ``math.exp`` rounded once to float32 (inf on overflow)."""
    flat = np.asarray(values, dtype=np.float64).ravel()
    out = [math.exp(x) if not x >= 709.0 else math.inf for x in flat.tolist()]
    with np.errstate(over="ignore"):
        return np.array(out, dtype=np.float64).astype(np.float32).reshape(np.shape(values))
