"""What every feature-file format shares: the reader part the store joins, the write options,
the restricted unpickler, and the small array helpers.

Formats are pulled, not pushed: a writer takes an iterable of records and consumes it once,
so a conversion streams record by record and holds one record (or one row group) at a time.
"""

from __future__ import annotations

import io
import os
import pickle
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol

import numpy as np

from detector.structures import ARRAY_DTYPES, RegionFeatures

FeatureDtype = Literal["float32", "float16"]

#: What formats without object/attribute labels put in their place on the way back: LXMERT's
#: pretraining losses ignore label -1 (``CrossEntropyLoss(ignore_index=-1)``).
MISSING_LABEL = -1
MISSING_CONF = 0.0


class FormatDataError(ValueError):
    """A file of a foreign layout holds something it should not (names the file)."""


@dataclass(frozen=True)
class WriteOptions:
    """How a writer stores records.

    Attributes:
        feature_dtype: stored precision of ``features`` where the format allows a choice.
        ban_ids: ban-h5 only: ``strict`` (every id an integer) or ``trailing-digits`` (the
            digits at the end of each id; the table back to the ids is stored beside).
        feature_dim: ``D`` of a file whose records may hold no box at all (an extraction
            knows it from its detector); 0 when unknown, and then a parquet file without
            boxes is refused (its schema fixes ``D``).
    """

    feature_dtype: FeatureDtype = "float32"
    ban_ids: Literal["strict", "trailing-digits"] = "strict"
    feature_dim: int = 0


class RecordPart(Protocol):
    """One store file read by position: what :class:`pipeline.features.store.FeatureStore` joins."""

    path: Path
    ids: tuple[str, ...]

    def read(self, local: int) -> RegionFeatures: ...

    def where(self, local: int) -> str: ...

    def close(self) -> None: ...


def iter_part(part: RecordPart) -> Iterator[RegionFeatures]:
    """Every record of ``part`` in order (closes it at the end)."""
    try:
        for local in range(len(part.ids)):
            yield part.read(local)
    finally:
        part.close()


class PerProcessHandle:
    """A lazily opened handle that a forked or unpickled copy opens again (DataLoader workers)."""

    def __init__(self) -> None:
        self._handle: Any = None
        self._pid: int | None = None

    def get(self, opener: Any) -> Any:
        """The handle of this process, opened with ``opener()`` on first use here."""
        if self._handle is not None and self._pid != os.getpid():
            self._handle = None  # the parent's; never closed here, it is not ours
        if self._handle is None:
            self._handle = opener()
            self._pid = os.getpid()
        return self._handle

    def close(self) -> None:
        """Close this process's handle, if it has one."""
        if self._handle is not None and self._pid == os.getpid():
            self._handle.close()
        self._handle = self._pid = None

    def __getstate__(self) -> dict[str, object]:
        return {"_handle": None, "_pid": None}


def region(
    *,
    image_id: str,
    image_h: int,
    image_w: int,
    boxes: np.ndarray,
    features: np.ndarray,
    objects_id: np.ndarray | None = None,
    objects_conf: np.ndarray | None = None,
    attrs_id: np.ndarray | None = None,
    attrs_conf: np.ndarray | None = None,
) -> RegionFeatures:
    """A record from arrays of any dtype: cast to the contract's, missing labels filled with
    :data:`MISSING_LABEL` and confidences with :data:`MISSING_CONF`."""
    n = int(boxes.shape[0])
    label = np.full(n, MISSING_LABEL, np.int64)
    conf = np.full(n, MISSING_CONF, np.float32)
    arrays = {
        "boxes": np.asarray(boxes).reshape(n, 4),
        "features": np.asarray(features).reshape(n, -1) if n else np.asarray(features),
        "objects_id": label if objects_id is None else objects_id,
        "objects_conf": conf if objects_conf is None else objects_conf,
        "attrs_id": label if attrs_id is None else attrs_id,
        "attrs_conf": conf if attrs_conf is None else attrs_conf,
    }
    if arrays["features"].ndim != 2:
        arrays["features"] = np.zeros((0, 0), np.float32)
    cast = {name: np.ascontiguousarray(a, dtype=ARRAY_DTYPES[name]) for name, a in arrays.items()}
    return RegionFeatures(image_id=image_id, image_h=image_h, image_w=image_w, **cast)


def stored_features(features: np.ndarray, dtype: FeatureDtype) -> np.ndarray:
    """``features`` in the stored precision (float16 rounds to nearest)."""
    return np.ascontiguousarray(features, dtype=np.float16 if dtype == "float16" else np.float32)


# --- restricted unpickling ----------------------------------------------------------------

#: The only globals a pickled ``info`` dict of numpy arrays needs (numpy 1.x and 2.x names).
_NUMPY_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
}


class _Restricted(pickle.Unpickler):
    allowed: frozenset[tuple[str, str]] = frozenset()

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in self.allowed:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refused to load {module}.{name} (not a plain array/dict)")


class _NumpyRestricted(_Restricted):
    allowed = frozenset(_NUMPY_GLOBALS)


def load_plain_pickle(data: bytes, *, source: str) -> Any:
    """Unpickle ``data`` admitting no global at all: dicts, lists, ints, floats, strings only.

    Raises:
        FormatDataError: anything else (a class, a function), naming ``source``.
    """
    try:
        return _Restricted(io.BytesIO(data), encoding="latin1").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError) as error:
        raise FormatDataError(f"{source}: not a plain pickled table ({error})") from None


def load_array_pickle(data: bytes, *, source: str) -> Any:
    """Unpickle ``data`` admitting plain containers and numpy arrays/scalars only."""
    try:
        return _NumpyRestricted(io.BytesIO(data), encoding="latin1").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError) as error:
        raise FormatDataError(f"{source}: refused pickled data ({error})") from None
