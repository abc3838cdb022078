"""Draw an image's regions (boxes with "attribute object" labels) with OpenCV."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np

from detector.structures import RegionFeatures


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
        cv2.rectangle(canvas, (x1, top), (x1 + width, top + height + baseline), colour, -1)
        cv2.putText(
            canvas,
            text,
            (x1, top + height),
            cv2.FONT_HERSHEY_SIMPLEX,
            font_scale,
            (0, 0, 0),
            thickness,
            cv2.LINE_AA,
        )
    return canvas


def save_visualization(
    directory: str | os.PathLike[str],
    image_bgr: np.ndarray,
    region: RegionFeatures,
    *,
    object_names: Sequence[str],
    attribute_names: Sequence[str],
) -> Path:
    """Write ``directory/<image_id>.png`` (sub-folders follow the id); returns the path."""
    path = Path(directory) / f"{region.image_id}.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    canvas = draw_regions(
        image_bgr, region, object_names=object_names, attribute_names=attribute_names
    )
    ok, encoded = cv2.imencode(".png", canvas)
    if not ok:
        raise ValueError(f"could not encode the visualisation of {region.image_id!r} as PNG")
    path.write_bytes(encoded.tobytes())
    return path
