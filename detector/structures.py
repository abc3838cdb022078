"""Typed records of the detector: what one image turns into, and where the weights came from.

:class:`RegionFeatures`: the field names and dtypes are exactly those of LXMERT's obj36 TSV
(``img_id, img_h, img_w, objects_id, objects_conf, attrs_id, attrs_conf, num_boxes, boxes,
features``), so a record we write loads unchanged in the original LXMERT training code.
:class:`CheckpointInfo`: the provenance of a detector's weights.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

#: :attr:`CheckpointInfo.name` of a detector whose weights were not loaded from a file.
RANDOM_INIT = "random-init"


@dataclass(frozen=True)
class CheckpointInfo:
    """Where a detector's weights came from (recorded in every output's manifest).

    Attributes:
        name: registry name (``vg-r101-c4-attr`` ...), the file name for a checkpoint given by
            path, or ``random-init`` for weights built in memory.
        path: the local weights file that was read; None for ``random-init``.
        sha256: hex digest of that file; None for ``random-init``.
        preset: name of the :class:`~detector.config.DetectorConfig` preset the model was
            built from.
    """

    name: str
    path: str | None
    sha256: str | None
    preset: str

    @classmethod
    def random_init(cls, preset: str) -> CheckpointInfo:
        """The record of a detector built with in-memory weights from ``preset``."""
        return cls(name=RANDOM_INIT, path=None, sha256=None, preset=preset)


#: Field order of LXMERT's obj36 TSV (src/utils.py, FIELDNAMES).
TSV_FIELDNAMES: tuple[str, ...] = (
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
)

#: dtype of every array field, as LXMERT's ``load_obj_tsv`` decodes it.
ARRAY_DTYPES: dict[str, np.dtype] = {
    "objects_id": np.dtype("<i8"),
    "objects_conf": np.dtype("<f4"),
    "attrs_id": np.dtype("<i8"),
    "attrs_conf": np.dtype("<f4"),
    "boxes": np.dtype("<f4"),
    "features": np.dtype("<f4"),
}


@dataclass(frozen=True, eq=False)
class RegionFeatures:
    """The regions of one image, as LXMERT consumes them.

    Attributes:
        image_id: file stem (or path relative to the input root, no extension) or the caller's id.
        image_h: height of the raw image in pixels, after EXIF orientation.
        image_w: width of the raw image in pixels, after EXIF orientation.
        boxes: float32 ``[N, 4]`` xyxy, raw-image pixels.
        features: float32 ``[N, D]`` (D = 2048 for the real model), mean-pooled res5 output.
        objects_id: int64 ``[N]`` argmax over the object classes (background excluded).
        objects_conf: float32 ``[N]`` the probability of ``objects_id``.
        attrs_id: int64 ``[N]`` argmax over the attributes ("no attribute" excluded).
        attrs_conf: float32 ``[N]`` the probability of ``attrs_id``.
    """

    image_id: str
    image_h: int
    image_w: int
    boxes: np.ndarray
    features: np.ndarray
    objects_id: np.ndarray
    objects_conf: np.ndarray
    attrs_id: np.ndarray
    attrs_conf: np.ndarray

    def __post_init__(self) -> None:
        n = self.boxes.shape[0]
        if self.boxes.ndim != 2 or self.boxes.shape[1] != 4:
            raise ValueError(f"{self.image_id}: boxes must be [N, 4], got {self.boxes.shape}")
        if self.features.ndim != 2 or self.features.shape[0] != n:
            raise ValueError(
                f"{self.image_id}: features must be [{n}, D], got {self.features.shape}"
            )
        for name in ("objects_id", "objects_conf", "attrs_id", "attrs_conf"):
            shape = getattr(self, name).shape
            if shape != (n,):
                raise ValueError(f"{self.image_id}: {name} must be [{n}], got {shape}")
        for name, dtype in ARRAY_DTYPES.items():
            if getattr(self, name).dtype != dtype:
                raise ValueError(
                    f"{self.image_id}: {name} must be {dtype}, got {getattr(self, name).dtype}"
                )

    @property
    def num_boxes(self) -> int:
        """N, the number of regions."""
        return int(self.boxes.shape[0])

    @property
    def normalized_boxes(self) -> np.ndarray:
        """float32 ``[N, 4]`` xyxy divided by (w, h, w, h): LXMERT's ``visual_pos``, in [0, 1].

        Float excess of at most 1e-5 outside [0, 1] is clipped; a box further outside the image
        raises ``ValueError`` naming the image.
        """
        scale = np.array([self.image_w, self.image_h, self.image_w, self.image_h], np.float32)
        normalized = self.boxes.astype(np.float32) / scale
        tolerance = 1e-5
        if normalized.size and (
            normalized.min() < -tolerance or normalized.max() > 1.0 + tolerance
        ):
            raise ValueError(
                f"image {self.image_id!r}: a box lies outside the {self.image_w}x{self.image_h} "
                f"image (normalized range {normalized.min():.6f}..{normalized.max():.6f}); "
                "boxes must be xyxy in raw-image pixels"
            )
        return np.clip(normalized, 0.0, 1.0)

    def to_record(self) -> dict[str, object]:
        """The record as LXMERT's ``load_obj_tsv`` returns it (same keys and dtypes)."""
        record: dict[str, object] = {
            "img_id": self.image_id,
            "img_h": self.image_h,
            "img_w": self.image_w,
            "num_boxes": self.num_boxes,
        }
        for name in ARRAY_DTYPES:
            record[name] = getattr(self, name)
        return record

    @classmethod
    def from_record(cls, record: dict[str, object]) -> RegionFeatures:
        """Inverse of :meth:`to_record`; arrays are cast to the contract's dtypes."""
        n = int(record["num_boxes"])  # type: ignore[call-overload]
        arrays = {}
        for name, dtype in ARRAY_DTYPES.items():
            array = np.asarray(record[name]).astype(dtype, copy=False)
            arrays[name] = array.reshape(n, -1) if name in ("boxes", "features") else array
        return cls(
            image_id=str(record["img_id"]),
            image_h=int(record["img_h"]),  # type: ignore[call-overload]
            image_w=int(record["img_w"]),  # type: ignore[call-overload]
            **arrays,
        )
