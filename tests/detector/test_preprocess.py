"""detector.preprocess: the Caffe extractor's mean subtraction, scale rule and resize."""

from __future__ import annotations

import math
import pickle
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from PIL import Image
from skimage import data

from detector.config import get_preset
from detector.image import ImageError, load_image
from detector.preprocess import PreparedImage, compute_scale, prepare, preprocess

REAL = get_preset("vg-r101-c4-attr")
MEAN = (102.9801, 115.9465, 122.7717)


def _caffe_blob(image_bgr: np.ndarray, *, min_size: int, max_size: int) -> tuple[np.ndarray, float]:
    """The steps of Caffe's _get_image_blob for one scale, restated plainly."""
    im = image_bgr.astype(np.float32, copy=True)
    im -= np.array([[list(MEAN)]])  # float64 [1, 1, 3], as cfg.PIXEL_MEANS
    short_side, long_side = np.min(im.shape[0:2]), np.max(im.shape[0:2])
    scale = float(min_size) / float(short_side)
    if np.round(scale * long_side) > max_size:
        scale = float(max_size) / float(long_side)
    im = cv2.resize(im, None, None, fx=scale, fy=scale, interpolation=cv2.INTER_LINEAR)
    return im, scale


def _bilinear(image: np.ndarray, scale: float, out_h: int, out_w: int) -> np.ndarray:
    """Half-pixel-centre bilinear sampling with edge clamping, in float64 (OpenCV's
    INTER_LINEAR for float images, sampling positions from the factor itself)."""

    def axis(n_out: int, n_in: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        src = (np.arange(n_out) + 0.5) / scale - 0.5
        low = np.floor(src).astype(np.int64)
        frac = src - low
        frac[low < 0] = 0.0
        low = np.clip(low, 0, n_in - 1)
        frac[low >= n_in - 1] = 0.0
        return low, np.minimum(low + 1, n_in - 1), frac

    y0, y1, fy = axis(out_h, image.shape[0])
    x0, x1, fx = axis(out_w, image.shape[1])
    img = image.astype(np.float64)
    top = img[y0][:, x0] * (1 - fx)[None, :, None] + img[y0][:, x1] * fx[None, :, None]
    bottom = img[y1][:, x0] * (1 - fx)[None, :, None] + img[y1][:, x1] * fx[None, :, None]
    return top * (1 - fy)[:, None, None] + bottom * fy[:, None, None]


def _photos() -> dict[str, np.ndarray]:
    astronaut = data.astronaut()
    return {
        "astronaut 512x512": astronaut,
        "coffee 400x600": data.coffee(),
        "chelsea 300x451": data.chelsea(),
        "rocket 427x640": data.rocket(),
        "tall strip 512x100 (max_size rule)": np.ascontiguousarray(astronaut[:, 200:300]),
        "wide strip 60x512 (max_size rule)": np.ascontiguousarray(astronaut[100:160]),
    }


@pytest.mark.parametrize("name", list(_photos()))
def test_preprocess_matches_caffe_steps(name: str) -> None:
    bgr = np.ascontiguousarray(_photos()[name][:, :, ::-1])
    expected, expected_scale = _caffe_blob(bgr, min_size=600, max_size=1000)
    prepared = preprocess(bgr, min_size=600, max_size=1000, pixel_mean=MEAN, image_id=name)

    assert prepared.scale == expected_scale
    assert (prepared.raw_h, prepared.raw_w) == bgr.shape[:2]
    assert prepared.tensor.dtype == torch.float32 and prepared.tensor.is_contiguous()
    assert prepared.resized_size == expected.shape[:2]
    # OpenCV rounds each side times the factor to nearest for the output size.
    assert expected.shape[:2] == tuple(round(side * expected_scale) for side in bgr.shape[:2])
    assert max(expected.shape[:2]) <= 1000
    np.testing.assert_array_equal(prepared.tensor.permute(1, 2, 0).numpy(), expected)
    # And INTER_LINEAR is what we think it is: plain half-pixel bilinear, no antialiasing.
    reference = _bilinear(bgr - np.array(MEAN), expected_scale, *expected.shape[:2])
    np.testing.assert_allclose(prepared.tensor.permute(1, 2, 0).numpy(), reference, atol=2e-3)


@pytest.mark.parametrize(
    ("raw_h", "raw_w", "expected"),
    [
        (480, 640, 600 / 480),  # 4:3 -> 600x800
        (640, 480, 600 / 480),
        (600, 1000, 1.0),  # exactly at the long-side limit: no lowering
        (599, 999, 1000 / 999),  # round(1000.67) = 1001 > 1000: lowered
        (1200, 2001, 0.5),  # 1000.5 rounds half to even -> 1000: not lowered
        (1200, 2003, 1000 / 2003),  # 1001.5 -> 1002 > 1000: lowered
        (100, 1000, 1.0),  # 10:1 -> long side decides
        (1, 1, 600.0),
        (3000, 4000, 0.2),
    ],
)
def test_compute_scale_table(raw_h: int, raw_w: int, expected: float) -> None:
    assert compute_scale(raw_h, raw_w, min_size=600, max_size=1000) == expected


def test_compute_scale_rejects_nonsense() -> None:
    with pytest.raises(ValueError, match="positive"):
        compute_scale(0, 10, min_size=600, max_size=1000)
    with pytest.raises(ValueError, match="positive"):
        compute_scale(10, 10, min_size=0, max_size=1000)


def test_pixel_std_divides_after_resize() -> None:
    bgr = np.ascontiguousarray(data.chelsea()[:, :, ::-1])
    std = (2.0, 4.0, 8.0)
    plain = preprocess(bgr, min_size=96, max_size=160, pixel_mean=MEAN)
    scaled = preprocess(bgr, min_size=96, max_size=160, pixel_mean=MEAN, pixel_std=std)
    expected = plain.tensor / torch.tensor(std, dtype=torch.float32)[:, None, None]
    torch.testing.assert_close(scaled.tensor, expected, rtol=1e-6, atol=0)


def test_one_pixel_image_becomes_600x600(tmp_path: Path) -> None:
    path = tmp_path / "dot.png"
    Image.fromarray(np.array([[[10, 20, 30]]], np.uint8)).save(path)
    prepared = prepare(path, config=REAL, image_id="dot")
    assert prepared.resized_size == (600, 600)
    assert (prepared.raw_h, prepared.raw_w, prepared.scale) == (1, 1, 600.0)
    bgr_minus_mean = torch.tensor([30.0, 20.0, 10.0]) - torch.tensor(MEAN)
    expected = bgr_minus_mean.float()[:, None, None].expand(3, 600, 600)
    torch.testing.assert_close(prepared.tensor, expected, rtol=0, atol=1e-5)


def test_prepare_equals_load_then_preprocess(tmp_path: Path) -> None:
    path = tmp_path / "rocket.jpg"
    Image.fromarray(data.rocket()).save(path, quality=92)
    prepared = prepare(path, config=REAL, image_id="rocket")
    direct = preprocess(
        cv2.imread(str(path)), min_size=600, max_size=1000, pixel_mean=MEAN, image_id="rocket"
    )
    assert prepared.image_id == "rocket"
    assert (prepared.raw_h, prepared.raw_w, prepared.scale) == (427, 640, 600 / 427)
    assert prepared.resized_size == (600, round(640 * 600 / 427))
    torch.testing.assert_close(prepared.tensor, direct.tensor, rtol=0, atol=0)
    # numpy input: RGB by default, BGR on request.
    rgb = data.rocket()
    from_rgb = prepare(rgb, config=REAL, image_id="r")
    from_bgr = prepare(
        np.ascontiguousarray(rgb[:, :, ::-1]), config=REAL, image_id="r", channel_order="bgr"
    )
    torch.testing.assert_close(from_rgb.tensor, from_bgr.tensor, rtol=0, atol=0)


def test_prepare_uses_exif_orientation_for_raw_size(tmp_path: Path) -> None:
    exif = Image.Exif()
    exif[0x0112] = 6
    path = tmp_path / "turned.jpg"
    Image.fromarray(data.chelsea()).save(path, quality=92, exif=exif.tobytes())
    prepared = prepare(path, config=REAL, image_id="turned")
    assert (prepared.raw_h, prepared.raw_w) == (451, 300)
    assert prepared.resized_size == (round(451 * 2.0), 600)


def test_prepared_image_pickles() -> None:
    prepared = prepare(data.coffee(), config=get_preset("tiny"), image_id="coffee")
    copy = pickle.loads(pickle.dumps(prepared))
    assert isinstance(copy, PreparedImage)
    assert (copy.image_id, copy.scale, copy.raw_h, copy.raw_w) == ("coffee", 96 / 400, 400, 600)
    assert copy.resized_size == prepared.resized_size == (96, 144)
    torch.testing.assert_close(copy.tensor, prepared.tensor, rtol=0, atol=0)


def test_bad_inputs() -> None:
    bgr = np.zeros((8, 8, 3), np.uint8)
    with pytest.raises(TypeError, match="uint8"):
        preprocess(bgr.astype(np.float32), min_size=600, max_size=1000, pixel_mean=MEAN)
    with pytest.raises(ValueError, match=r"\[H, W, 3\]"):
        preprocess(bgr[:, :, 0], min_size=600, max_size=1000, pixel_mean=MEAN)
    with pytest.raises(ValueError, match="3 values"):
        preprocess(bgr, min_size=600, max_size=1000, pixel_mean=(1.0, 2.0))
    with pytest.raises(ValueError, match="non-zero"):
        preprocess(bgr, min_size=600, max_size=1000, pixel_mean=MEAN, pixel_std=(1, 0, 1))
    # 1 x 3000: the long side caps the scale at 1/3, so the short side would become 0 pixels.
    with pytest.raises(ImageError, match=r"^thin: aspect ratio"):
        preprocess(
            np.zeros((1, 3000, 3), np.uint8),
            min_size=600,
            max_size=1000,
            pixel_mean=MEAN,
            image_id="thin",
        )
    assert math.isclose(compute_scale(1, 3000, min_size=600, max_size=1000), 1 / 3)
    with pytest.raises(ImageError, match=r"^sample: "):
        prepare(b"not an image", config=REAL, image_id="sample")
    assert load_image(bgr, channel_order="bgr").shape == (8, 8, 3)
