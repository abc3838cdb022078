"""detector.reference_sort.argsort against the tests' own introsort (introsort_helpers), and
detector.exact_math against Python's double exp: the orders and bits the reference had."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from introsort_helpers import exp32, introsort_argsort, introsort_rows

from detector import reference_sort
from detector.exact_math import exp_float32, exp_float32_tensor, softmax_float32

SIZES = (0, 1, 2, 3, 15, 16, 17, 18, 31, 32, 33, 63, 64, 65, 127, 128, 129, 255, 256, 257, 1000)


def tie_heavy_arrays(rng: np.random.Generator) -> dict[str, np.ndarray]:
    few = np.float32([0.25, 0.5, 1.0])
    sorted_ties = np.sort(rng.choice(few, 3000))
    return {
        "few values repeated thousands of times": rng.choice(few, 6000),
        "saturated probabilities": np.where(rng.random(4000) < 0.3, 1.0, rng.random(4000)),
        "already sorted with ties": sorted_ties,
        "reversed with ties": sorted_ties[::-1].copy(),
        "already sorted, distinct": np.arange(2048, dtype=np.float32),
        "reversed, distinct": np.arange(2049, dtype=np.float64)[::-1].copy(),
        "all equal": np.ones(5000, dtype=np.float32),
        "two values alternating": np.tile(np.float64([1.0, 0.0]), 1500),
        "NaNs among ties": rng.choice(np.float32([np.nan, 1.0, 0.5]), 777),
    }


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_random_arrays_of_every_size_sort_as_the_introsort(dtype) -> None:
    rng = np.random.default_rng(0)
    for size in SIZES:
        for values in (rng.random(size), rng.integers(0, 4, size)):
            values = values.astype(dtype)
            got = reference_sort.argsort(values)
            assert got.dtype == np.int64
            np.testing.assert_array_equal(got, introsort_argsort(values), err_msg=f"n={size}")


def test_tie_heavy_arrays_sort_as_the_introsort() -> None:
    rng = np.random.default_rng(1)
    for name, values in tie_heavy_arrays(rng).items():
        got = reference_sort.argsort(values)
        np.testing.assert_array_equal(got, introsort_argsort(values), err_msg=name)


@pytest.mark.parametrize("size", [15, 16, 17, 32, 33, 300])
def test_rows_sort_one_by_one(size) -> None:
    """Per-class NMS sorts the rows of a [C, R] score matrix."""
    rng = np.random.default_rng(size)
    scores = rng.choice(np.float32([0.0, 0.5, 1.0, 0.75]), (40, size))
    np.testing.assert_array_equal(reference_sort.argsort(scores, axis=1), introsort_rows(scores))


def test_only_the_dtypes_the_reference_sorted() -> None:
    with pytest.raises(TypeError, match="float32 or float64"):
        reference_sort.argsort(np.arange(5))


def test_exp_is_python_exp_rounded_to_float32() -> None:
    rng = np.random.default_rng(2)
    values = np.concatenate(
        [
            rng.normal(0, 8, 200_000).astype(np.float32),
            rng.uniform(-104, 89, 50_000).astype(np.float32),
            np.float32([0.0, -0.0, 16.6, -16.6, 88.72, 88.73, -103.9, -104.0, -1e-30]),
        ]
    )
    np.testing.assert_array_equal(exp_float32(values), exp32(values))
    edges = exp_float32(np.float32([np.inf, -np.inf, np.nan, 1000.0, -1000.0]))
    assert edges.dtype == np.float32
    np.testing.assert_array_equal(edges, np.float32([np.inf, 0.0, np.nan, np.inf, 0.0]))


def test_tensor_exp_has_the_same_bits_and_a_gradient() -> None:
    rng = np.random.default_rng(4)
    values = np.concatenate(
        [rng.normal(0, 8, 100_000), [np.inf, -np.inf, np.nan, 100.0, -200.0]]
    ).astype(np.float32)
    got = exp_float32_tensor(torch.from_numpy(values))
    assert got.dtype == torch.float32
    np.testing.assert_array_equal(got.numpy(), exp_float32(values))
    x = torch.tensor([0.3, -2.0, 5.0], requires_grad=True)
    exp_float32_tensor(x).sum().backward()
    torch.testing.assert_close(x.grad, torch.exp(x.detach()))


def plain_caffe_softmax(logits: np.ndarray) -> np.ndarray:
    """Caffe's SoftmaxLayer on rows with the Caffe column 0 moved last: float32 max, exp, a
    sum from Caffe's column 0 onward, one term at a time, and a division."""
    out = np.empty_like(logits)
    for r, row in enumerate(logits):
        e = exp32(row - row.max())
        total = np.float32(0.0)
        for term in [e[-1], *e[:-1]]:
            total = np.float32(total + term)
        out[r] = e / total
    return out


def test_softmax_is_caffe_s_float32_steps() -> None:
    rng = np.random.default_rng(3)
    logits = rng.normal(0, 6, (30, 401)).astype(np.float32)
    logits[:5, 7] = 40.0  # saturated rows: probability exactly 1.0, as in Caffe
    got = softmax_float32(torch.from_numpy(logits), last_first=True)
    assert got.dtype == torch.float32
    np.testing.assert_array_equal(got.numpy(), plain_caffe_softmax(logits))
    assert (got[:5, 7] == 1.0).all()
    np.testing.assert_allclose(got.numpy(), torch.softmax(torch.from_numpy(logits), 1), atol=1e-6)
