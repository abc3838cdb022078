"""Draw an image's regions (boxes with "attribute object" labels) with OpenCV, and save them
as pictures that never replace anything else.

Safety rules of ``--visualize DIR`` (a picture is ``DIR/<image id>.png``):

- :func:`check_visualize_dir`, before any work: DIR is neither an input root nor inside one
  (pictures there could replace input images, and a later run would list them as inputs), and
  no picture path falls inside an input root that lies inside DIR.
- :func:`save_visualization`, per picture: it replaces only a PNG this tool wrote, known by its
  text chunk :data:`PICTURE_MARK`; anything else at the path (another file, a folder, a symbolic
  link, a folder link on the way below DIR) is left alone and the picture is refused with
  :class:`ForeignFileError`. Pictures are written atomically (:mod:`weights.files`).
"""

from __future__ import annotations

import dataclasses
import os
import stat
import struct
import zlib
from collections.abc import Iterable, Sequence
from pathlib import Path, PurePosixPath

import cv2
import numpy as np

from detector.structures import RegionFeatures
from weights.files import atomic_write_bytes

#: The ``tEXt`` chunk (keyword, text) that marks a PNG as written by ``--visualize``.
PICTURE_MARK: tuple[str, str] = ("Software", "lxmert-pipeline visualize")

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
#: Chunks read, at most, when looking for the mark (it is written right after IHDR).
_MAX_HEAD_CHUNKS = 64
#: Pictures are drawn on a copy enlarged to at least this short side (pixels): on a small
#: image (shapes scenes are 96 to 320 px) a label would otherwise not fit beside its box.
MIN_PICTURE_SIDE = 512


class ForeignFileError(ValueError):
    """A picture's path holds something this tool did not write, or is reached through a
    symbolic link below the visualisation folder; nothing there is changed."""


def _colour(class_id: int) -> tuple[int, int, int]:
    # A fixed, well-spread colour per class (golden-ratio hue steps), BGR for OpenCV.
    hue = int((class_id * 0.618033988749895 % 1.0) * 180)
    hsv = np.array([[[hue, 200, 255]]], dtype=np.uint8)
    b, g, r = cv2.cvtColor(hsv, cv2.COLOR_HSV2BGR)[0, 0]
    return int(b), int(g), int(r)


def _name(names: Sequence[str], index: int) -> str:
    return names[index] if 0 <= index < len(names) else str(index)


def region_labels(
    region: RegionFeatures, object_names: Sequence[str], attribute_names: Sequence[str]
) -> list[str]:
    """``"attribute object"`` for each box of ``region`` (ids shown for unknown names)."""
    return [
        f"{_name(attribute_names, int(a))} {_name(object_names, int(o))}"
        for o, a in zip(region.objects_id, region.attrs_id, strict=True)
    ]


def enlarge_image(
    image_bgr: np.ndarray, *, min_side: int = MIN_PICTURE_SIDE
) -> tuple[np.ndarray, float, float]:
    """``image_bgr`` scaled up (bilinear) so that its short side is at least ``min_side``
    pixels, and the x and y factors from its pixels to the new ones; unchanged (factors 1)
    when it already is."""
    height, width = image_bgr.shape[:2]
    short = min(height, width)
    if short >= min_side or short <= 0:
        return image_bgr, 1.0, 1.0
    factor = min_side / short
    size = (max(min_side, round(width * factor)), max(min_side, round(height * factor)))
    bigger = cv2.resize(image_bgr, size, interpolation=cv2.INTER_LINEAR)
    return bigger, size[0] / width, size[1] / height


def enlarged(
    image_bgr: np.ndarray, region: RegionFeatures, *, min_side: int = MIN_PICTURE_SIDE
) -> tuple[np.ndarray, RegionFeatures]:
    """``image_bgr`` and ``region`` scaled up together (:func:`enlarge_image`; the boxes by
    the same factors, so they still frame their objects); both unchanged when the short
    side is already ``min_side`` or more."""
    bigger, sx, sy = enlarge_image(image_bgr, min_side=min_side)
    if bigger is image_bgr:
        return image_bgr, region
    scale = np.array([sx, sy, sx, sy], dtype=np.float32)
    scaled = dataclasses.replace(
        region,
        boxes=(region.boxes * scale).astype(np.float32),
        image_w=bigger.shape[1],
        image_h=bigger.shape[0],
    )
    return bigger, scaled


def draw_regions(
    image_bgr: np.ndarray,
    region: RegionFeatures,
    *,
    object_names: Sequence[str],
    attribute_names: Sequence[str],
) -> np.ndarray:
    """A copy of ``image_bgr`` (uint8 ``[H, W, 3]``, the raw image the boxes refer to) with
    every box of ``region`` (xyxy, raw-image pixels) outlined and labelled
    ``"attribute object confidence"``; boxes are drawn weakest first so strong ones stay on top.
    """
    if image_bgr.shape[:2] != (region.image_h, region.image_w):
        raise ValueError(
            f"image {region.image_id!r}: picture is {image_bgr.shape[1]}x{image_bgr.shape[0]} "
            f"but the regions were found on {region.image_w}x{region.image_h}"
        )
    canvas = np.ascontiguousarray(image_bgr.copy())
    # Line and font sizes follow the image size so labels stay legible on large photos.
    thickness = max(1, round(max(region.image_h, region.image_w) / 400))
    font_scale = max(0.35, max(region.image_h, region.image_w) / 1200)
    labels = region_labels(region, object_names, attribute_names)
    for index in np.argsort(region.objects_conf, kind="stable"):
        x1, y1, x2, y2 = (round(float(v)) for v in region.boxes[index])
        colour = _colour(int(region.objects_id[index]))
        cv2.rectangle(canvas, (x1, y1), (x2, y2), colour, thickness)
        text = f"{labels[index]} {float(region.objects_conf[index]):.2f}"
        (width, height), baseline = cv2.getTextSize(
            text, cv2.FONT_HERSHEY_SIMPLEX, font_scale, thickness
        )
        top = max(0, y1 - height - baseline)
        # Shifted left when it would run past the right edge (a box near it), never past x=0.
        left = max(0, min(x1, canvas.shape[1] - width))
        cv2.rectangle(canvas, (left, top), (left + width, top + height + baseline), colour, -1)
        cv2.putText(
            canvas,
            text,
            (left, top + height),
            cv2.FONT_HERSHEY_SIMPLEX,
            font_scale,
            (0, 0, 0),
            thickness,
            cv2.LINE_AA,
        )
    return canvas


def _real(path: str | os.PathLike[str]) -> Path:
    # realpath resolves what exists and keeps the rest as given, so a folder that does not
    # exist yet is compared by the path it will have.
    return Path(os.path.realpath(path))


def check_visualize_dir(
    directory: str | os.PathLike[str], roots: Sequence[Path], *, image_ids: Iterable[str] = ()
) -> None:
    """Refuse a visualisation folder whose pictures could replace inputs or become inputs.

    Args:
        directory: the ``--visualize`` folder (it may not exist yet).
        roots: the input roots (:func:`pipeline.extract.inputs.input_roots`).
        image_ids: the ids that will get a picture; needed only when a root lies inside
            ``directory``, where a picture ``DIR/<id>.png`` may land inside that root.

    Raises:
        ValueError: ``directory`` is not a folder, or is (inside) an input root, or a picture
            would land inside one; the message names both and the remedy.
    """
    folder = _real(directory)
    if os.path.lexists(folder) and not folder.is_dir():
        raise ValueError(f"--visualize {directory} is not a folder; give a folder for pictures")
    real_roots = [_real(root) for root in roots]
    remedy = (
        "its pictures could replace input images, and a later run (--resume) would read them "
        "as inputs; choose a folder outside every input folder"
    )
    for root in real_roots:
        if folder.is_relative_to(root):
            where = "is the input folder" if folder == root else "is inside the input folder"
            raise ValueError(f"--visualize {directory} ({folder}) {where} {root}: {remedy}")
    inner = [root for root in real_roots if root.is_relative_to(folder)]
    if not inner:
        return
    for image_id in image_ids:
        picture = folder / f"{image_id}.png"
        for root in inner:
            if picture.is_relative_to(root):
                raise ValueError(
                    f"--visualize {directory}: the picture of {image_id!r} would be {picture}, "
                    f"inside the input folder {root}: {remedy}"
                )


def _chunk(kind: bytes, data: bytes) -> bytes:
    """One PNG chunk: length, type, data, CRC-32 of type + data (all big-endian)."""
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _mark_bytes() -> bytes:
    keyword, text = PICTURE_MARK
    return keyword.encode("latin-1") + b"\0" + text.encode("latin-1")


def mark_png(encoded: bytes) -> bytes:
    """``encoded`` (a PNG) with the :data:`PICTURE_MARK` ``tEXt`` chunk right after IHDR; the
    pixels are untouched."""
    ihdr_end = len(_PNG_SIGNATURE) + 8 + 13 + 4  # IHDR: length, type, 13 bytes of data, CRC
    if not encoded.startswith(_PNG_SIGNATURE) or encoded[12:16] != b"IHDR":
        raise ValueError("not a PNG with its IHDR first")
    return encoded[:ihdr_end] + _chunk(b"tEXt", _mark_bytes()) + encoded[ihdr_end:]


def is_marked_png(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` is a regular file holding a PNG marked by :func:`mark_png`.

    Reads the signature and the chunks before the first IDAT only (skipping their data), never
    the whole file; a symbolic link, a FIFO or a device is not opened for reading at all.
    """
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | os.O_NONBLOCK)
    except OSError:
        return False
    with os.fdopen(fd, "rb") as stream:
        if not stat.S_ISREG(os.fstat(fd).st_mode) or stream.read(8) != _PNG_SIGNATURE:
            return False
        wanted = _mark_bytes()
        for _ in range(_MAX_HEAD_CHUNKS):
            head = stream.read(8)
            if len(head) < 8:
                return False
            length, kind = struct.unpack(">I", head[:4])[0], head[4:]
            if kind in (b"IDAT", b"IEND"):
                return False
            if kind == b"tEXt" and length == len(wanted):
                data, crc = stream.read(length), stream.read(4)
                if data == wanted and crc == struct.pack(">I", zlib.crc32(kind + data)):
                    return True
            else:
                stream.seek(length + 4, os.SEEK_CUR)
    return False


def picture_path(directory: str | os.PathLike[str], image_id: str) -> Path:
    """``directory/<image_id>.png``; an id that would leave ``directory`` is a ``ValueError``
    (ids never hold ``..`` or absolute parts; this keeps the picture inside regardless)."""
    parts = PurePosixPath(image_id).parts
    if not parts or PurePosixPath(image_id).is_absolute() or ".." in parts:
        raise ValueError(f"image id {image_id!r} would put its picture outside {directory}")
    return Path(directory, *parts[:-1], f"{parts[-1]}.png")


def check_picture_target(directory: str | os.PathLike[str], path: Path) -> None:
    """Raise :class:`ForeignFileError` unless writing ``path`` (below ``directory``) replaces
    nothing but a picture of ours, through no symbolic link below ``directory``."""
    relative = path.relative_to(directory)
    current = Path(directory)
    for part in relative.parts:
        current = current / part
        if os.path.islink(current):
            raise ForeignFileError(
                f"{current} is a symbolic link; a picture is never written through one "
                "(remove the link, or choose another --visualize folder)"
            )
        if not os.path.lexists(current):
            return
    if not stat.S_ISREG(os.lstat(path).st_mode):
        raise ForeignFileError(
            f"{path} exists and is not a file (a folder, FIFO, socket or device); it is left "
            "alone (move it away, or choose another --visualize folder)"
        )
    if not is_marked_png(path):
        raise ForeignFileError(
            f"{path} exists and is not a picture this tool wrote; it is left unchanged "
            "(move it away, or choose another --visualize folder)"
        )


def encode_picture(canvas: np.ndarray) -> bytes:
    """``canvas`` (uint8 ``[H, W, 3]`` BGR) as PNG bytes: OpenCV's encoding plus the mark."""
    ok, encoded = cv2.imencode(".png", canvas)
    if not ok:
        raise ValueError("OpenCV could not encode the picture as PNG")
    return mark_png(encoded.tobytes())


def save_visualization(
    directory: str | os.PathLike[str],
    image_bgr: np.ndarray,
    region: RegionFeatures,
    *,
    object_names: Sequence[str],
    attribute_names: Sequence[str],
) -> Path:
    """Write ``directory/<image_id>.png`` (sub-folders follow the id) atomically; returns the
    path. An image whose short side is under :data:`MIN_PICTURE_SIDE` is drawn enlarged
    (:func:`enlarged`), so its labels fit.

    Raises:
        ForeignFileError: the path holds a file this tool did not write, or a symbolic link is
            on the way; nothing is changed.
        ValueError: the picture cannot be drawn or encoded.
        OSError: the folder cannot be made or written.
    """
    path = picture_path(directory, region.image_id)
    check_picture_target(directory, path)
    bigger, scaled = enlarged(image_bgr, region)
    canvas = draw_regions(
        bigger, scaled, object_names=object_names, attribute_names=attribute_names
    )
    data = encode_picture(canvas)
    path.parent.mkdir(parents=True, exist_ok=True)
    return atomic_write_bytes(path, data)
