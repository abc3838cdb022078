"""detector.image: decoding to BGR uint8, checked against cv2.imread and plain numpy."""

from __future__ import annotations

import io
import pickle
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image, ImageFile, ImageOps
from skimage import data
from skimage.util import img_as_float

from detector.image import DEFAULT_MAX_PIXELS, ImageError, image_size, load_image

# A non-square photo (H=300, W=451) so any swap of height and width shows.
CHELSEA = data.chelsea()


def _rgb_to_bgr(rgb: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(rgb[:, :, ::-1])


def _save(path: Path, rgb: np.ndarray, **kwargs: object) -> Path:
    Image.fromarray(rgb).save(path, **kwargs)
    return path


def _exif(orientation: int) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation
    return exif.tobytes()


# --- parity with cv2.imread ----------------------------------------------------------------


@pytest.mark.parametrize("ext", ["jpg", "png", "webp", "bmp"])
def test_files_decode_like_cv2_imread(tmp_path: Path, ext: str) -> None:
    path = _save(tmp_path / f"cat.{ext}", CHELSEA)
    expected = cv2.imread(str(path))
    got = load_image(path)
    assert got.dtype == np.uint8 and got.flags.c_contiguous
    np.testing.assert_array_equal(got, expected)
    np.testing.assert_array_equal(load_image(path.read_bytes()), expected)
    np.testing.assert_array_equal(load_image(str(path)), expected)


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_jpeg_matches_cv2_imread(tmp_path: Path, orientation: int) -> None:
    path = _save(tmp_path / "o.jpg", CHELSEA, quality=95, exif=_exif(orientation))
    got = load_image(path)
    np.testing.assert_array_equal(got, cv2.imread(str(path)))
    # Independent statement of the EXIF semantics: Pillow's exif_transpose.
    upright = np.asarray(ImageOps.exif_transpose(Image.open(path)).convert("RGB"))
    np.testing.assert_array_equal(got, _rgb_to_bgr(upright))
    raw_h, raw_w = CHELSEA.shape[:2]
    expected_size = (raw_w, raw_h) if orientation >= 5 else (raw_h, raw_w)
    assert got.shape == (*expected_size, 3)
    assert image_size(path) == expected_size
    assert image_size(path.read_bytes()) == expected_size


def test_exif_rotated_png_and_tiff_are_upright(tmp_path: Path) -> None:
    # Orientation 6: the stored pixels must be turned 90 degrees clockwise. PNG and TIFF are
    # lossless, so the result is exactly the rotated photo.
    expected = _rgb_to_bgr(np.rot90(CHELSEA, k=-1))
    png = _save(tmp_path / "o6.png", CHELSEA, exif=_exif(6))
    np.testing.assert_array_equal(load_image(png), expected)
    np.testing.assert_array_equal(load_image(png), cv2.imread(str(png)))
    tiff = _save(tmp_path / "o6.tif", CHELSEA, exif=_exif(6))
    np.testing.assert_array_equal(load_image(tiff), expected)


# --- colour modes and bit depths -----------------------------------------------------------


def test_gray_palette_rgba_la_png_match_cv2_imread(tmp_path: Path) -> None:
    pil = Image.fromarray(CHELSEA)
    rgba = np.dstack([CHELSEA, np.arange(CHELSEA.shape[1], dtype=np.uint8)[None].repeat(300, 0)])
    files = {
        "gray": _save(tmp_path / "gray.png", np.asarray(pil.convert("L"))),
        "palette": tmp_path / "palette.png",
        "rgba": _save(tmp_path / "rgba.png", rgba),
        "la": tmp_path / "la.png",
    }
    pil.convert("P", palette=Image.Palette.ADAPTIVE, colors=64).save(files["palette"])
    pil.convert("LA").save(files["la"])
    for kind, path in files.items():
        got = load_image(path)
        assert got.shape == (300, 451, 3), kind
        np.testing.assert_array_equal(got, cv2.imread(str(path)), err_msg=kind)
    # Plain statements: gray replicates, alpha is dropped without compositing.
    gray = np.asarray(pil.convert("L"))
    np.testing.assert_array_equal(load_image(files["gray"]), np.repeat(gray[:, :, None], 3, 2))
    np.testing.assert_array_equal(load_image(files["rgba"]), _rgb_to_bgr(CHELSEA))
    palette_rgb = np.asarray(Image.open(files["palette"]).convert("RGB"))
    np.testing.assert_array_equal(load_image(files["palette"]), _rgb_to_bgr(palette_rgb))


def _sixteen_bit() -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.integers(0, 65536, size=(37, 53, 3), dtype=np.uint16)


def test_16bit_png_keeps_high_byte_like_cv2(tmp_path: Path) -> None:
    bgr16 = _sixteen_bit()
    color = tmp_path / "c16.png"
    gray = tmp_path / "g16.png"
    cv2.imwrite(str(color), bgr16)
    cv2.imwrite(str(gray), bgr16[:, :, 0])
    np.testing.assert_array_equal(load_image(color), (bgr16 >> 8).astype(np.uint8))
    np.testing.assert_array_equal(load_image(color), cv2.imread(str(color)))
    gray8 = (bgr16[:, :, 0] >> 8).astype(np.uint8)
    np.testing.assert_array_equal(load_image(gray), np.repeat(gray8[:, :, None], 3, 2))
    np.testing.assert_array_equal(load_image(gray), cv2.imread(str(gray)))
    # The Pillow path (16-bit gray PIL image, mode I;16) follows the same rule.
    pil16 = Image.open(gray)
    assert pil16.mode.startswith("I")
    np.testing.assert_array_equal(load_image(pil16), np.repeat(gray8[:, :, None], 3, 2))


def test_16bit_tiff_matches_cv2_imread(tmp_path: Path) -> None:
    path = tmp_path / "c16.tif"
    cv2.imwrite(str(path), _sixteen_bit())
    np.testing.assert_array_equal(load_image(path), cv2.imread(str(path)))


def test_cmyk_jpeg(tmp_path: Path) -> None:
    path = tmp_path / "cmyk.jpg"
    Image.fromarray(CHELSEA).convert("CMYK").save(path, quality=95)
    assert Image.open(path).mode == "CMYK"
    got = load_image(path)
    assert got.shape == (300, 451, 3) and got.dtype == np.uint8
    np.testing.assert_array_equal(got, cv2.imread(str(path)))
    # Close to the photo it came from (JPEG loss only).
    assert np.abs(got.astype(int) - _rgb_to_bgr(CHELSEA)).mean() < 3.0


# --- numpy and PIL inputs ------------------------------------------------------------------


def test_numpy_channel_order() -> None:
    rgb = data.astronaut()
    bgr = _rgb_to_bgr(rgb)
    np.testing.assert_array_equal(load_image(rgb), bgr)
    np.testing.assert_array_equal(load_image(rgb, channel_order="rgb"), bgr)
    np.testing.assert_array_equal(load_image(bgr, channel_order="bgr"), bgr)
    rgba = np.dstack([rgb, np.full(rgb.shape[:2], 7, np.uint8)])
    np.testing.assert_array_equal(load_image(rgba), bgr)
    bgra = np.dstack([bgr, np.full(rgb.shape[:2], 7, np.uint8)])
    np.testing.assert_array_equal(load_image(bgra, channel_order="bgr"), bgr)
    # A strided view comes back as a new contiguous array that does not alias the input.
    view = rgb[::2, ::3]
    got = load_image(view)
    assert got.flags.c_contiguous
    got[...] = 0
    assert rgb.any()


def test_numpy_gray_and_dtypes() -> None:
    gray = data.camera()
    expected = np.repeat(gray[:, :, None], 3, 2)
    np.testing.assert_array_equal(load_image(gray), expected)
    np.testing.assert_array_equal(load_image(gray[:, :, None]), expected)
    np.testing.assert_array_equal(load_image(gray.astype(np.uint16) * 257), expected)
    np.testing.assert_array_equal(load_image(img_as_float(gray)), expected)
    np.testing.assert_array_equal(
        load_image(img_as_float(data.astronaut()).astype(np.float32)), _rgb_to_bgr(data.astronaut())
    )
    mask = gray > 128
    np.testing.assert_array_equal(load_image(mask)[:, :, 0], mask.astype(np.uint8) * 255)


@pytest.mark.parametrize(
    ("array", "reason"),
    [
        (np.full((4, 4, 3), np.nan, np.float32), "NaN"),
        (np.full((4, 4, 3), 200.0), "[0, 1]"),
        (np.zeros((4, 4, 3), np.int64), "dtype"),
        (np.zeros((4, 4, 2), np.uint8), "shape"),
        (np.zeros((0, 4, 3), np.uint8), "empty"),
    ],
)
def test_numpy_bad_arrays(array: np.ndarray, reason: str) -> None:
    with pytest.raises(ImageError, match=r"^frame7: ") as info:
        load_image(array, name="frame7")
    assert reason in info.value.reason or reason in str(info.value)


def test_pil_inputs(tmp_path: Path) -> None:
    pil = Image.fromarray(CHELSEA)
    bgr = _rgb_to_bgr(CHELSEA)
    np.testing.assert_array_equal(load_image(pil), bgr)
    np.testing.assert_array_equal(load_image(pil.convert("RGBA")), bgr)
    gray = np.asarray(pil.convert("L"))
    np.testing.assert_array_equal(load_image(pil.convert("L")), np.repeat(gray[:, :, None], 3, 2))
    # A PIL image opened from a rotated JPEG is turned upright, like the file itself.
    path = _save(tmp_path / "o8.jpg", CHELSEA, quality=95, exif=_exif(8))
    np.testing.assert_array_equal(load_image(Image.open(path)), load_image(path))
    assert image_size(Image.open(path)) == (451, 300)
    assert image_size(CHELSEA) == (300, 451)


# --- bad inputs ----------------------------------------------------------------------------


def _jpeg_bytes() -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(CHELSEA).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def _png_bytes() -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(CHELSEA).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.mark.parametrize(
    ("filename", "content", "reason"),
    [
        ("truncated.jpg", _jpeg_bytes()[:4000], "decode"),
        ("no_eoi.jpg", _jpeg_bytes()[:-2], "decode"),
        ("truncated.png", _png_bytes()[:5000], "decode"),
        ("notes.jpg", b"this is a text file, not a picture\n" * 20, "not a recognised image"),
        ("empty.jpg", b"", "empty"),
    ],
)
def test_bad_files_raise_image_error_naming_the_file(
    tmp_path: Path, filename: str, content: bytes, reason: str
) -> None:
    path = tmp_path / filename
    path.write_bytes(content)
    with pytest.raises(ImageError) as info:
        load_image(path)
    assert str(path) in str(info.value)
    assert reason in info.value.reason
    with pytest.raises(ImageError, match=r"^<bytes>: "):
        load_image(content)


def test_missing_path_and_directory(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere.jpg"
    with pytest.raises(ImageError, match=r"nowhere\.jpg: no such file"):
        load_image(missing)
    with pytest.raises(ImageError, match=r"nowhere\.jpg: no such file"):
        image_size(missing)
    with pytest.raises(ImageError, match="directory"):
        load_image(tmp_path)


@pytest.fixture
def no_decoding(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make any pixel decoding fail the test: bombs must be refused from the header alone."""

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("pixels were decoded")

    monkeypatch.setattr(cv2, "imdecode", refuse)
    monkeypatch.setattr(ImageFile.ImageFile, "load", refuse)


@pytest.mark.usefixtures("no_decoding")
def test_png_bomb_header_is_refused_before_decoding(tmp_path: Path, png_header_only) -> None:
    # 10^10 pixels: beyond Pillow's own hard limit too, still an ImageError naming the file.
    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(png_header_only(100_000, 100_000))
    with pytest.raises(ImageError, match=r"bomb\.png: ") as info:
        load_image(bomb)
    assert "pixels" in info.value.reason
    with pytest.raises(ImageError, match="pixels"):
        image_size(bomb)
    with pytest.raises(ImageError, match="pixels"):
        load_image(bomb.read_bytes())


@pytest.mark.usefixtures("no_decoding")
@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
def test_max_pixels_cap_is_checked_on_the_header(tmp_path: Path, png_header_only) -> None:
    # 144 MP: under Pillow's hard limit, over our default cap of 100 MP.
    big = tmp_path / "big.png"
    big.write_bytes(png_header_only(12_000, 12_000))
    assert DEFAULT_MAX_PIXELS < 12_000 * 12_000
    with pytest.raises(ImageError, match=r"big\.png: image is 12000x12000 = 144000000 pixels"):
        load_image(big)
    assert image_size(big) == (12_000, 12_000)


def test_max_pixels_for_ordinary_images(tmp_path: Path) -> None:
    path = _save(tmp_path / "cat.png", CHELSEA)
    limit = 300 * 451 - 1
    for source in (path, path.read_bytes(), CHELSEA, Image.fromarray(CHELSEA)):
        with pytest.raises(ImageError, match="max_pixels=135299"):
            load_image(source, max_pixels=limit)
        assert load_image(source, max_pixels=limit + 1).shape == (300, 451, 3)


def test_one_pixel_image(tmp_path: Path) -> None:
    path = _save(tmp_path / "dot.png", np.array([[[10, 20, 30]]], np.uint8))
    np.testing.assert_array_equal(load_image(path), [[[30, 20, 10]]])


def test_image_error_pickles_and_reads_well() -> None:
    error = ImageError("photos/a.jpg", "not a recognised image format")
    assert str(error) == "photos/a.jpg: not a recognised image format"
    assert isinstance(error, ValueError)
    copy = pickle.loads(pickle.dumps(error))
    assert (copy.source, copy.reason, str(copy)) == (error.source, error.reason, str(error))


def test_wrong_argument_types() -> None:
    with pytest.raises(TypeError, match="int"):
        load_image(42)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="channel_order"):
        load_image(CHELSEA, channel_order="rbg")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="max_pixels"):
        load_image(CHELSEA, max_pixels=0)
