"""``--visualize`` never overwrites inputs (issue 15, item 2): its folder is refused when it lies
in an input root, and a picture never replaces a file the tool did not write."""

from __future__ import annotations

import hashlib
import logging
import os
import re
import shutil
import struct
import zlib
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image
from pipeline_helpers import make_region

from pipeline.commands.extract import main
from pipeline.extract.inputs import input_roots
from pipeline.extract.visualize import (
    MIN_PICTURE_SIDE,
    PICTURE_MARK,
    ForeignFileError,
    check_visualize_dir,
    draw_regions,
    encode_picture,
    enlarged,
    is_marked_png,
    mark_png,
    save_visualization,
)
from pipeline.features.manifest import manifest_path
from pipeline.features.output import read_features

IDS = ["astronaut", "cats/chelsea", "coffee", "gray/camera"]
NAMES = {"object_names": ["thing"], "attribute_names": ["red"]}


def extract(*args: object) -> int:
    return main([str(arg) for arg in args])


def snapshot(root: Path) -> dict[str, str]:
    """Every file and link under ``root`` (relative path -> sha256, or the link's target)."""
    seen = {}
    for path in sorted(root.rglob("*")):
        key = path.relative_to(root).as_posix()
        if path.is_symlink():
            seen[key] = "-> " + os.readlink(path)
        elif path.is_file():
            seen[key] = hashlib.sha256(path.read_bytes()).hexdigest()
    return seen


def real(path: Path) -> str:
    return os.path.realpath(path)


@pytest.fixture
def own_photos(photos: Path, tmp_path: Path) -> Path:
    """A private copy of the photos: these tests try to write into their inputs."""
    return Path(shutil.copytree(photos, tmp_path / "photos"))


@pytest.fixture
def no_model(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail the test if the run gets as far as loading the detector."""
    import pipeline.extract.steps

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("the detector was loaded")

    monkeypatch.setattr(pipeline.extract.steps, "load_model", refuse)


@pytest.fixture
def run_log(caplog: pytest.LogCaptureFixture) -> Iterator[pytest.LogCaptureFixture]:
    """The run's log: the ``pipeline`` logger does not propagate, so listen to it directly."""
    logger = logging.getLogger("pipeline")
    logger.addHandler(caplog.handler)
    try:
        yield caplog
    finally:
        logger.removeHandler(caplog.handler)


def png_chunks(data: bytes) -> list[bytes]:
    """The chunk types of a PNG, in order (an independent reader for the tests)."""
    kinds, offset = [], 8
    while offset < len(data):
        (length,) = struct.unpack(">I", data[offset : offset + 4])
        kinds.append(data[offset + 4 : offset + 8])
        offset += 12 + length
    return kinds


# ---- the folder rule, end to end -------------------------------------------------------------


@pytest.mark.parametrize(
    ("inputs", "vis"),
    [
        (["{photos}"], "{photos}"),  # the reproduction: DIR is the input folder
        (["{photos}"], "{photos}/cats"),
        (["{photos}"], "{photos}/new/pictures"),  # does not exist yet
        (["{photos}"], "{alias}/pictures"),  # the input folder under another name
        (["{photos}/*.jpg"], "{photos}/out"),  # a glob's root is before the wildcard
        (["{photos}/coffee.jpg"], "{photos}"),  # a file's root is its folder
        (["@{list}"], "{photos}/gray"),
    ],
)
def test_visualize_dir_in_an_input_folder_is_refused_before_any_work(
    own_photos: Path,
    tiny_checkpoint: Path,
    tmp_path: Path,
    no_model: None,
    capsys: pytest.CaptureFixture[str],
    inputs: list[str],
    vis: str,
) -> None:
    (tmp_path / "alias").symlink_to(own_photos)
    (tmp_path / "list.txt").write_text(f"{own_photos / 'gray' / 'camera.png'}\n")
    names = {"photos": own_photos, "alias": tmp_path / "alias", "list": tmp_path / "list.txt"}
    before = snapshot(own_photos)
    out = tmp_path / "out.tsv"
    args = [spec.format(**names) for spec in inputs]
    folder = vis.format(**names)
    code = extract(*args, "--out", out, "--detector", tiny_checkpoint, "--visualize", folder, "-q")
    assert code == 2
    err = capsys.readouterr().err
    assert f"--visualize {folder}" in err
    root = own_photos / "gray" if inputs == ["@{list}"] else own_photos
    assert real(root) in err
    assert snapshot(own_photos) == before  # input PNGs unchanged byte for byte, nothing added
    assert not out.exists() and not manifest_path(out).exists()


def test_pictures_that_would_land_in_an_input_folder_inside_dir_are_refused(
    own_photos: Path, tiny_checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # DIR holds the input folder `work/imgs`; the id `imgs/cat` (file work/imgs/imgs/cat.jpg)
    # would put its picture at work/imgs/cat.png, inside the input folder.
    work = tmp_path / "work"
    imgs = work / "imgs"
    shutil.copytree(own_photos, imgs / "imgs")
    shutil.copy(own_photos / "coffee.jpg", imgs / "coffee.jpg")
    before = snapshot(work)
    out = tmp_path / "out.tsv"
    code = extract(imgs, "--out", out, "--detector", tiny_checkpoint, "--visualize", work, "-q")
    assert code == 2
    err = capsys.readouterr().err
    assert "'imgs/astronaut'" in err and real(imgs) in err
    assert snapshot(work) == before


def test_an_input_folder_inside_dir_is_fine_when_no_picture_lands_in_it(
    own_photos: Path, tiny_checkpoint: Path, tmp_path: Path
) -> None:
    work = tmp_path / "work"
    imgs = Path(shutil.copytree(own_photos, work / "imgs"))
    before = snapshot(imgs)
    out = tmp_path / "out.tsv"
    code = extract(imgs, "--out", out, "--detector", tiny_checkpoint, "--visualize", work, "-q")
    assert code == 0
    assert snapshot(imgs) == before
    assert all(is_marked_png(work / f"{image_id}.png") for image_id in IDS)


def test_glob_with_dotdot_after_a_wildcard_writes_nothing_outside_dir(
    own_photos: Path, tiny_checkpoint: Path, tmp_path: Path
) -> None:
    # The reproduction: `data/*/../../imgs/*.png` gave the id `b/../../imgs/scene_000`,
    # and its picture DIR/b/../../imgs/scene_000.png replaced the input.
    (tmp_path / "data" / "b").mkdir(parents=True)
    (tmp_path / "imgs").mkdir()
    shutil.copy(own_photos / "cats" / "chelsea.png", tmp_path / "imgs" / "scene_000.png")
    vis = tmp_path / "vis"
    outside = {path: snapshot(path) for path in (own_photos, tmp_path / "imgs", tmp_path / "data")}
    out = tmp_path / "out.tsv"
    pattern = f"{tmp_path}/data/*/../../imgs/*.png"
    code = extract(
        pattern, own_photos, "--out", out, "--detector", tiny_checkpoint, "--visualize", vis, "-q"
    )
    assert code == 1  # the '..' file failed, named; the photos were written
    assert {path: snapshot(path) for path in outside} == outside
    assert sorted(snapshot(vis)) == sorted(f"{image_id}.png" for image_id in IDS)
    assert not (vis / "b").exists() and not list(tmp_path.glob("*.png"))


def test_pictures_are_never_inputs_of_the_next_resume(
    own_photos: Path,
    tiny_checkpoint: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # The reproduction wrote pictures under the input folder, and the next --resume
    # listed them as new inputs. That folder is refused, so nothing is written there.
    out = tmp_path / "out.tsv"
    flags = ["--detector", tiny_checkpoint, "--workers", 0, "-q"]
    assert extract(own_photos, "--out", out, "--limit", 2, *flags) == 0
    text = out.read_bytes()
    import pipeline.extract.steps

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("the detector was loaded")

    monkeypatch.setattr(pipeline.extract.steps, "load_model", refuse)
    vis = own_photos / "vis"
    code = extract(own_photos, "--out", out, "--resume", "--visualize", vis, *flags)
    assert code == 2
    assert f"--visualize {vis}" in capsys.readouterr().err
    assert not vis.exists() and out.read_bytes() == text


def test_resume_after_a_visualized_run_lists_the_same_inputs(
    own_photos: Path, tiny_checkpoint: Path, tmp_path: Path
) -> None:
    vis, out = tmp_path / "vis", tmp_path / "out.tsv"
    flags = ["--detector", tiny_checkpoint, "--visualize", vis, "--workers", 0, "-q"]
    assert extract(own_photos, "--out", out, *flags) == 0
    pictures = snapshot(vis)
    assert sorted(pictures) == sorted(f"{image_id}.png" for image_id in IDS)
    text = out.read_bytes()
    assert extract(own_photos, "--out", out, "--resume", *flags) == 0
    assert out.read_bytes() == text  # nothing new was taken as an input
    assert [region.image_id for region in read_features(out)] == IDS


# ---- pictures never replace what the tool did not write, end to end --------------------------


def test_foreign_files_at_picture_paths_are_never_replaced(
    own_photos: Path, tiny_checkpoint: Path, tmp_path: Path, run_log: pytest.LogCaptureFixture
) -> None:
    vis = tmp_path / "vis"
    (vis / "gray").mkdir(parents=True)
    # A PNG someone else wrote (OpenCV writes no mark), and a file that is no picture at all.
    assert cv2.imwrite(str(vis / "coffee.png"), np.zeros((8, 8, 3), np.uint8))
    (vis / "gray" / "camera.png").write_text("my notes")
    before = snapshot(vis)
    out = tmp_path / "out.tsv"
    flags = ["--detector", tiny_checkpoint, "--visualize", vis, "--workers", 0, "-q"]
    code = extract(own_photos, "--out", out, *flags)
    assert code == 0  # a refused picture is a warning: every record is written
    assert [region.image_id for region in read_features(out)] == IDS
    after = snapshot(vis)
    for name in ("coffee.png", "gray/camera.png"):
        assert after[name] == before[name]
        assert f"{vis / name} exists and is not a picture this tool wrote" in run_log.text
    assert is_marked_png(vis / "astronaut.png") and is_marked_png(vis / "cats" / "chelsea.png")


def test_symbolic_links_below_dir_are_never_followed(
    own_photos: Path, tiny_checkpoint: Path, tmp_path: Path, run_log: pytest.LogCaptureFixture
) -> None:
    vis, elsewhere = tmp_path / "vis", tmp_path / "elsewhere"
    vis.mkdir()
    elsewhere.mkdir()
    victim = tmp_path / "victim.png"
    assert cv2.imwrite(str(victim), np.zeros((8, 8, 3), np.uint8))
    (vis / "astronaut.png").symlink_to(victim)  # a link to a file
    (vis / "cats").symlink_to(elsewhere)  # a link to a folder on the way
    # Even a link to one of our own pictures is not followed.
    own = tmp_path / "own.png"
    own.write_bytes(encode_picture(np.zeros((8, 8, 3), np.uint8)))
    (vis / "coffee.png").symlink_to(own)
    before = {path: snapshot(path) for path in (vis, elsewhere)}
    victim_bytes, own_bytes = victim.read_bytes(), own.read_bytes()
    out = tmp_path / "out.tsv"
    flags = ["--detector", tiny_checkpoint, "--visualize", vis, "--workers", 0, "-q"]
    assert extract(own_photos, "--out", out, *flags) == 0
    assert victim.read_bytes() == victim_bytes and own.read_bytes() == own_bytes
    after = snapshot(vis)
    assert {key: after[key] for key in before[vis]} == before[vis]
    assert snapshot(elsewhere) == before[elsewhere] == {}
    for link in ("astronaut.png", "cats", "coffee.png"):
        assert f"{vis / link} is a symbolic link" in run_log.text
    assert is_marked_png(vis / "gray" / "camera.png")


def test_our_own_picture_is_replaced_on_a_rerun(
    own_photos: Path, tiny_checkpoint: Path, tmp_path: Path, run_log: pytest.LogCaptureFixture
) -> None:
    vis, out = tmp_path / "vis", tmp_path / "out.tsv"
    vis.mkdir()
    # An earlier picture of ours (say from a run with other settings), here a black one.
    stale = encode_picture(np.zeros((8, 8, 3), np.uint8))
    (vis / "coffee.png").write_bytes(stale)
    flags = ["--detector", tiny_checkpoint, "--visualize", vis, "--workers", 0, "-q"]
    assert extract(own_photos, "--out", out, *flags) == 0
    first = snapshot(vis)
    fresh = vis / "coffee.png"
    assert fresh.read_bytes() != stale and is_marked_png(fresh)
    drawn, photo = cv2.imread(str(fresh)), cv2.imread(str(own_photos / "coffee.jpg"))
    assert drawn is not None and photo is not None
    # A small photo is drawn enlarged to a short side of MIN_PICTURE_SIDE, aspect kept.
    assert photo.shape[0] < MIN_PICTURE_SIDE
    assert drawn.shape[0] == MIN_PICTURE_SIDE
    assert drawn.shape[1] == round(photo.shape[1] * MIN_PICTURE_SIDE / photo.shape[0])
    assert extract(own_photos, "--out", out, "--overwrite", *flags) == 0
    assert snapshot(vis) == first  # the same pictures again, written over our own
    assert "not a picture this tool wrote" not in run_log.text
    assert "symbolic link" not in run_log.text


# ---- the pieces ---------------------------------------------------------------------------------


def test_marked_png_has_opencvs_pixels_and_a_readable_mark(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, size=(60, 80, 3), dtype=np.uint8)
    region = make_region("a/b", n=4)
    path = save_visualization(tmp_path, image, region, **NAMES)
    assert path == tmp_path / "a" / "b.png"
    data = path.read_bytes()
    bigger, scaled = enlarged(image, region)
    canvas = draw_regions(bigger, scaled, **NAMES)
    assert min(canvas.shape[:2]) == MIN_PICTURE_SIDE  # 60x80: drawn enlarged
    assert not np.array_equal(canvas, bigger)  # the boxes are drawn
    np.testing.assert_array_equal(cv2.imread(str(path), cv2.IMREAD_UNCHANGED), canvas)
    ok, plain = cv2.imencode(".png", canvas)
    assert ok
    # OpenCV's bytes with one tEXt chunk after IHDR, nothing else changed.
    assert png_chunks(data) == [b"IHDR", b"tEXt", *png_chunks(plain.tobytes())[1:]]
    text_chunk = data[33 : len(data) - len(plain) + 33]
    assert data[:33] + data[33 + len(text_chunk) :] == plain.tobytes()
    (crc,) = struct.unpack(">I", text_chunk[-4:])
    assert crc == zlib.crc32(text_chunk[4:-4])
    with Image.open(path) as picture:  # an independent reader sees the mark
        picture.load()
        assert picture.info[PICTURE_MARK[0]] == PICTURE_MARK[1]
    assert is_marked_png(path)


@pytest.mark.parametrize(
    "content",
    [
        b"",
        b"not a png at all",
        b"\x89PNG\r\n\x1a\n",  # a signature only
        "opencv",  # a PNG without the mark
        "mark after IDAT",  # the mark must come before the pixels
        "bad crc",
    ],
)
def test_only_marked_pngs_are_ours(tmp_path: Path, content: bytes | str) -> None:
    plain = cv2.imencode(".png", np.zeros((4, 4, 3), np.uint8))[1].tobytes()
    marked = mark_png(plain)
    text = marked[33 : len(marked) - len(plain) + 33]
    if content == "opencv":
        data = plain
    elif content == "mark after IDAT":
        data = plain[:-12] + text + plain[-12:]  # before IEND, after IDAT
    elif content == "bad crc":
        data = marked[:33] + text[:-1] + bytes([text[-1] ^ 1]) + marked[33 + len(text) :]
    else:
        assert isinstance(content, bytes)
        data = content
    path = tmp_path / "x.png"
    path.write_bytes(data)
    assert not is_marked_png(path)
    with pytest.raises(ForeignFileError, match="not a picture this tool wrote"):
        save_visualization(tmp_path, np.zeros((60, 80, 3), np.uint8), make_region("x"), **NAMES)
    assert path.read_bytes() == data


def test_a_fifo_at_the_picture_path_is_refused_without_blocking(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "x.png")
    assert not is_marked_png(tmp_path / "x.png")
    with pytest.raises(ForeignFileError, match="is not a file"):
        save_visualization(tmp_path, np.zeros((60, 80, 3), np.uint8), make_region("x"), **NAMES)


@pytest.mark.parametrize("image_id", ["../x", "a/../../x", "/abs/x"])
def test_an_id_never_puts_a_picture_outside_dir(tmp_path: Path, image_id: str) -> None:
    vis = tmp_path / "vis"
    with pytest.raises(ValueError, match="outside"):
        save_visualization(vis, np.zeros((60, 80, 3), np.uint8), make_region(image_id), **NAMES)
    assert snapshot(tmp_path) == {}


def test_check_visualize_dir(tmp_path: Path) -> None:
    inputs = tmp_path / "in"
    (inputs / "sub").mkdir(parents=True)
    (tmp_path / "alias").symlink_to(inputs)
    (tmp_path / "file").write_text("x")
    for refused in (inputs, inputs / "sub", inputs / "new" / "x", tmp_path / "alias" / "v"):
        with pytest.raises(ValueError, match=re.escape(f"input folder {real(inputs)}")):
            check_visualize_dir(refused, [inputs])
    with pytest.raises(ValueError, match="is not a folder"):
        check_visualize_dir(tmp_path / "file", [inputs])
    check_visualize_dir(tmp_path / "vis", [inputs])  # a sibling
    check_visualize_dir(tmp_path / "input", [inputs])  # a prefix of the name is not a parent
    check_visualize_dir(tmp_path, [inputs], image_ids=["in2/a", "sub/a", "a"])
    with pytest.raises(ValueError, match="'in/sub/a' would be"):
        check_visualize_dir(tmp_path, [inputs], image_ids=["a", "in/sub/a"])


def test_input_roots(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    photos = tmp_path / "photos"
    (photos / "sub").mkdir(parents=True)
    (photos / "sub" / "a.jpg").write_bytes(b"x")
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "elsewhere" / "b.jpg").write_bytes(b"x")
    (photos / "b.jpg").symlink_to(tmp_path / "elsewhere" / "b.jpg")
    (tmp_path / "link").symlink_to(photos)
    (tmp_path / "list.txt").write_text(f"# a comment\n\n{photos}/sub/a.jpg\n{tmp_path}/link\n")
    (tmp_path / "nested.txt").write_text(f"@{tmp_path}/list.txt\n")
    monkeypatch.chdir(tmp_path)
    assert input_roots([str(photos)]) == (photos,)
    assert input_roots(["photos/sub/a.jpg"]) == (photos / "sub",)
    assert input_roots(["photos/*/*.jpg", "photos/sub/**"]) == (photos, photos / "sub")
    assert input_roots(["*.jpg"]) == (tmp_path,)  # a glob without a folder: here
    assert input_roots(["link"]) == (photos,)  # resolved
    # A file reached through a link: its folder, and the real file's folder.
    assert input_roots(["photos/b.jpg"]) == (photos, tmp_path / "elsewhere")
    assert input_roots(["@list.txt", "photos"]) == (photos / "sub", photos)
    with pytest.raises(ValueError, match="cannot name other lists"):
        input_roots(["@nested.txt"])
