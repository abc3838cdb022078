"""Shared helpers of the pipeline tests: synthetic records and an independent obj36 reader."""

from __future__ import annotations

import base64
import csv
import sys
from pathlib import Path

import cv2
import numpy as np
from skimage import data as skdata

from detector.structures import RegionFeatures

LXMERT_FIELDS = [
    "img_id",
    "img_h",
    "img_w",
    "objects_id",
    "objects_conf",
    "attrs_id",
    "attrs_conf",
    "num_boxes",
    "boxes",
    "features",
]


def make_region(image_id: str, *, n: int = 5, dim: int = 16, seed: int = 0) -> RegionFeatures:
    """A valid random record: boxes inside a 60x80 (h x w) image."""
    rng = np.random.default_rng(seed)
    xy = rng.uniform(0, 30, size=(n, 2))
    wh = rng.uniform(1, 30, size=(n, 2))
    boxes = np.concatenate([xy, xy + wh], axis=1).astype(np.float32)
    return RegionFeatures(
        image_id=image_id,
        image_h=60,
        image_w=80,
        boxes=boxes,
        features=rng.standard_normal((n, dim)).astype(np.float32),
        objects_id=rng.integers(0, 1600, n).astype(np.int64),
        objects_conf=rng.uniform(0, 1, n).astype(np.float32),
        attrs_id=rng.integers(0, 400, n).astype(np.int64),
        attrs_conf=rng.uniform(0, 1, n).astype(np.float32),
    )


def lxmert_read_tsv(path: Path) -> list[dict]:
    """Read an obj36 TSV the way LXMERT's ``load_obj_tsv`` does (text mode, csv.DictReader,
    base64 -> numpy.frombuffer with fixed dtypes), written here independently of pipeline/."""
    csv.field_size_limit(sys.maxsize)
    items = []
    with open(path) as stream:
        for item in csv.DictReader(stream, LXMERT_FIELDS, delimiter="\t"):
            for key in ("img_h", "img_w", "num_boxes"):
                item[key] = int(item[key])
            n = item["num_boxes"]
            for key, shape, dtype in (
                ("objects_id", (n,), np.int64),
                ("objects_conf", (n,), np.float32),
                ("attrs_id", (n,), np.int64),
                ("attrs_conf", (n,), np.float32),
                ("boxes", (n, 4), np.float32),
                ("features", (n, -1), np.float32),
            ):
                item[key] = np.frombuffer(base64.b64decode(item[key]), dtype=dtype).reshape(shape)
            items.append(item)
    return items


def assert_same_region(a: RegionFeatures, b: RegionFeatures) -> None:
    """Bit-identical records."""
    assert a.image_id == b.image_id
    assert (a.image_h, a.image_w, a.num_boxes) == (b.image_h, b.image_w, b.num_boxes)
    for name in ("boxes", "features", "objects_id", "objects_conf", "attrs_id", "attrs_conf"):
        x, y = getattr(a, name), getattr(b, name)
        assert x.dtype == y.dtype, name
        np.testing.assert_array_equal(x, y, err_msg=f"{a.image_id}: {name}")


def photo_bgr(name: str) -> np.ndarray:
    """A scikit-image sample photo as BGR uint8, long side 200 px."""
    image = getattr(skdata, name)()
    image = cv2.cvtColor(image, cv2.COLOR_GRAY2BGR if image.ndim == 2 else cv2.COLOR_RGB2BGR)
    scale = 200 / max(image.shape[:2])
    return cv2.resize(image, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
