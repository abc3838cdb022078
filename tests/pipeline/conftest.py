"""Fixtures of the pipeline tests: a tiny detector checkpoint and a folder of real photos."""

from __future__ import annotations

from pathlib import Path

import cv2
import pytest
from pipeline_helpers import photo_bgr

from detector import build_detector, get_preset, save_detector

#: scikit-image photos used as inputs, with the relative path (= image id + extension) each
#: is written to. Downscaled so that decoding stays fast; the tiny preset resizes anyway.
PHOTOS = {
    "astronaut": "astronaut.jpg",
    "chelsea": "cats/chelsea.png",
    "coffee": "coffee.jpg",
    "camera": "gray/camera.png",
}


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The ``tiny`` preset with seeded random weights, saved as safetensors."""
    path = tmp_path_factory.mktemp("detector") / "tiny.safetensors"
    save_detector(build_detector(get_preset("tiny"), seed=0), path)
    return path


@pytest.fixture(scope="session")
def photos(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Real photos in sub-folders; ids astronaut, cats/chelsea, coffee, gray/camera."""
    root = tmp_path_factory.mktemp("photos")
    for name, relative in PHOTOS.items():
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        image = photo_bgr(name)
        if name == "camera":
            image = image[:, :, 0]  # stored as a true gray PNG
        assert cv2.imwrite(str(path), image)
    return root
