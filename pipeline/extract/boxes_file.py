"""Given-box files (``extract_features --boxes-from FILE``): read once, checked, hashed.

Every format maps image ids to ``[K, 4]`` xyxy boxes in raw-image pixels, in file order:

- JSON (``.json``) ``{"img_id": [[x1, y1, x2, y2], ...], ...}``;
- a COCO-style annotation file (``.json`` with ``images`` and ``annotations`` lists): the id
  of ``images[i]`` is the stem of its ``file_name`` (``val2014/COCO_val2014_000000000042.jpg``
  -> ``COCO_val2014_000000000042``, as the id of a file given by itself); each
  ``annotations[j].bbox`` ``[x, y, w, h]`` becomes ``[x, y, x + w, y + h]`` (``--coco-boxes
  exclusive``, the default: COCO's own reading, continuous pixel edges) or ``[x, y, x + w - 1,
  y + h - 1]`` (``inclusive``: the original bottom-up code's ``lib/datasets/coco.py``, whose
  boxes name the last pixel inside), grouped per ``image_id`` in file order; an image without
  annotations has no boxes;
- an LXMERT obj36 TSV (``.tsv``): its ``img_id`` and ``boxes`` fields;
- an HDF5 output of this tool (``.h5``/``.hdf5``): its ``img_id`` and ``boxes``.

Ids follow the id rule of the inputs (path below the input root, without extension).

Two kinds of error, kept apart:

- the file itself is unreadable or malformed (bad JSON, wrong structure, a value that is not a
  number, a TSV line that does not parse, two entries for one id, a COCO box of negative size or
  an annotation of an unknown image): :func:`read_boxes_file` raises ``ValueError`` naming the
  file and the entry, and the command stops before any model loads;
- one image's boxes are unusable (none, a NaN or infinite coordinate, a degenerate box, a box
  wholly outside the image, a recorded image size that is not the image's, no entry at all):
  :meth:`BoxesFile.boxes_for` raises ``ValueError`` naming the file and the entry, and that
  image fails alone.

Boxes reaching outside the image are clipped to it (``clip``, the default), or with
``--no-clip`` kept as given and pooled unclipped, as the original bottom-up code did (see
:func:`detector.given_boxes.check_given_boxes`). A box wholly outside the image is refused
either way.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, replace
from pathlib import Path, PurePosixPath, PureWindowsPath
from types import MappingProxyType
from typing import TYPE_CHECKING, Literal

import numpy as np

from pipeline.features.output import decode_tsv_line, iter_h5
from pipeline.features.suffixes import OUTPUT_SUFFIXES
from weights import sha256_file

if TYPE_CHECKING:
    from torch import Tensor

#: What a boxes file is: plain JSON, COCO annotations, an obj36 TSV, our HDF5 output.
BoxesKind = Literal["json", "coco", "obj36-tsv", "hdf5"]
#: How a COCO ``[x, y, w, h]`` becomes ``x2``: ``x + w`` (exclusive) or ``x + w - 1``.
CocoBoxes = Literal["inclusive", "exclusive"]

#: How many example ids a message lists.
_EXAMPLES = 3


@dataclass(frozen=True, eq=False)
class BoxesFile:
    """The boxes of a given-box file, by image id.

    Attributes:
        path: the file as given.
        sha256: hex digest of its bytes (computed once, while reading it).
        kind: its format.
        boxes: image id -> float32 ``[K, 4]`` xyxy, raw-image pixels, in file order (read-only;
            not yet checked: see :meth:`boxes_for`).
        image_sizes: image id -> ``(h, w)`` the file records for the image (obj36 TSV, HDF5,
            COCO ``height``/``width``); absent for plain JSON.
        coco_boxes: how COCO boxes were converted (:data:`CocoBoxes`); None for other kinds.
        clip: clip the boxes to the image (default) or keep them as given (``--no-clip``).
    """

    path: Path
    sha256: str
    kind: BoxesKind
    boxes: Mapping[str, np.ndarray]
    image_sizes: Mapping[str, tuple[int, int]]
    coco_boxes: CocoBoxes | None = None
    clip: bool = True

    def __len__(self) -> int:
        return len(self.boxes)

    def __contains__(self, image_id: object) -> bool:
        return image_id in self.boxes

    def ids_not_among(self, image_ids: Iterable[str]) -> list[str]:
        """The file's ids that are not in ``image_ids``, sorted."""
        return sorted(set(self.boxes) - set(image_ids))

    def boxes_for(self, image_id: str, *, image_h: int, image_w: int) -> Tensor:
        """The checked boxes of one image of ``image_h x image_w`` raw pixels: float32
        ``Tensor[K, 4]`` xyxy, raw-image pixels, clipped to the image (unless ``clip`` is
        False), in file order.

        Raises:
            ValueError: no entry for ``image_id``, a recorded image size that differs, or
                boxes :func:`detector.given_boxes.check_given_boxes` refuses; the message names the
                file and the entry.
        """
        where = f"boxes file {self.path}, entry {image_id!r}"
        if image_id not in self.boxes:
            raise ValueError(self.no_entry(image_id))
        recorded = self.image_sizes.get(image_id)
        if recorded is not None and recorded != (image_h, image_w):
            raise ValueError(
                f"{where}: the file records a {recorded[1]}x{recorded[0]} image, but this image "
                f"is {image_w}x{image_h} (width x height, after EXIF orientation); its boxes "
                "belong to another picture or orientation"
            )
        # torch: imported when a run pools boxes, not when the file is read and checked
        from detector.given_boxes import check_given_boxes

        try:
            return check_given_boxes(
                self.boxes[image_id], image_h=image_h, image_w=image_w, clip=self.clip
            )
        except ValueError as error:
            raise ValueError(f"{where}: {error}") from None

    def clipped_count(self, image_id: str, *, image_h: int, image_w: int) -> int:
        """How many of ``image_id``'s boxes clipping changed in its record, for an image of
        ``image_h x image_w`` raw pixels: 0 with ``clip`` False (nothing is clipped) or
        without an entry. Recounted from the file, so a record written by an earlier run (a
        ``--resume``) counts the same as a new one."""
        given = self.boxes.get(image_id)
        if not self.clip or given is None or len(given) == 0:
            return 0
        inside = np.clip(given, 0, np.array([image_w, image_h, image_w, image_h], np.float32))
        return int(np.count_nonzero((inside != given).any(axis=1)))

    def no_entry(self, image_id: str) -> str:
        """The reason of an image that has no entry in the file."""
        return (
            f"boxes file {self.path} has no entry for {image_id!r} ({len(self.boxes)} ids, "
            f"e.g. {_examples(sorted(self.boxes))}; ids are input paths below their root, "
            "without extension)"
        )

    def to_manifest(self) -> dict[str, object]:
        """What the manifest records about the file."""
        return {
            "path": str(self.path),
            "sha256": self.sha256,
            "kind": self.kind,
            "images": len(self.boxes),
            "boxes": sum(len(b) for b in self.boxes.values()),
            "coco_boxes": self.coco_boxes,
            "clip": self.clip,
        }


def _examples(ids: list[str]) -> str:
    shown = ", ".join(repr(i) for i in ids[:_EXAMPLES])
    return shown + (", ..." if len(ids) > _EXAMPLES else "") if ids else "none"


def read_boxes_file(
    path: str | os.PathLike[str], *, coco_boxes: CocoBoxes = "exclusive", clip: bool = True
) -> BoxesFile:
    """Read a given-box file (format by suffix, and for ``.json`` by content); ``coco_boxes``
    says how COCO annotations' ``[x, y, w, h]`` become xyxy (see the module docstring), and
    ``clip`` whether :meth:`BoxesFile.boxes_for` clips them to the image.

    Raises:
        ValueError: the file cannot be read or is malformed; the message names the file and
            the entry (see the module docstring).
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in (".json", *OUTPUT_SUFFIXES):
        raise ValueError(
            f"{path}: unknown boxes file format; give .json ({{img_id: [[x1, y1, x2, y2], ...]}}"
            " or COCO annotations), .tsv (LXMERT obj36) or .h5 (an output of this tool)"
        )
    try:
        if suffix == ".json":
            data = path.read_bytes()
            read = _from_json(path, data, hashlib.sha256(data).hexdigest(), coco_boxes)
        else:
            read = _from_tsv(path) if suffix == ".tsv" else _from_h5(path)
        return replace(read, clip=clip)
    except OSError as error:
        raise ValueError(f"{path}: cannot read the boxes file: {error.strerror or error}") from None


def _frozen(
    path: Path,
    sha256: str,
    kind: BoxesKind,
    boxes: dict[str, np.ndarray],
    sizes: dict[str, tuple[int, int]],
    coco_boxes: CocoBoxes | None = None,
) -> BoxesFile:
    for array in boxes.values():
        array.setflags(write=False)
    return BoxesFile(
        path=path,
        sha256=sha256,
        kind=kind,
        boxes=MappingProxyType(boxes),
        image_sizes=MappingProxyType(sizes),
        coco_boxes=coco_boxes,
    )


# --- JSON and COCO ---------------------------------------------------------------------------


class _DuplicateKeyError(ValueError):
    """A JSON object holds one key twice."""


def _unique_keys(pairs: list[tuple[str, object]]) -> dict[str, object]:
    """``json`` object hook: a key given twice is an error (json keeps the last silently)."""
    result: dict[str, object] = {}
    for key, value in pairs:
        if key in result:
            raise _DuplicateKeyError(f"the key {key!r} appears twice in one object")
        result[key] = value
    return result


def _from_json(path: Path, data: bytes, sha256: str, coco_boxes: CocoBoxes) -> BoxesFile:
    try:
        parsed = json.loads(data, object_pairs_hook=_unique_keys)
    except _DuplicateKeyError as error:
        raise ValueError(f"{path}: {error}") from None
    except json.JSONDecodeError as error:
        raise ValueError(
            f"{path}: not valid JSON: {error.msg} (line {error.lineno}, column {error.colno})"
        ) from None
    except (UnicodeDecodeError, ValueError) as error:
        raise ValueError(f"{path}: not valid JSON: {error}") from None
    if not isinstance(parsed, dict):
        raise ValueError(
            f"{path}: the top level is a JSON {type(parsed).__name__}; expected an object "
            '{"img_id": [[x1, y1, x2, y2], ...]} or COCO annotations {"images": [...], '
            '"annotations": [...]}'
        )
    coco = _coco_lists(parsed)
    if coco is not None:
        boxes, sizes = _coco_boxes(path, *coco, inclusive=coco_boxes == "inclusive")
        return _frozen(path, sha256, "coco", boxes, sizes, coco_boxes)
    boxes = {key: _box_list(path, f"entry {key!r}", value) for key, value in parsed.items()}
    return _frozen(path, sha256, "json", boxes, {})


def _coco_lists(
    parsed: dict[str, object],
) -> tuple[list[dict[str, object]], list[object]] | None:
    """``(images, annotations)`` of COCO annotations: two lists, images as objects (a plain
    box file with an id "images" holds a list of boxes, which are lists); else None."""
    images, annotations = parsed.get("images"), parsed.get("annotations")
    if not isinstance(images, list) or not isinstance(annotations, list):
        return None
    objects = [image for image in images if isinstance(image, dict)]
    return (objects, annotations) if len(objects) == len(images) else None


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _four_numbers(path: Path, where: str, value: object, form: str) -> list[float]:
    if not isinstance(value, list) or len(value) != 4 or not all(map(_is_number, value)):
        raise ValueError(f"{path}: {where} is {_short(value)}; expected {form}")
    return [float(v) for v in value]


def _box_list(path: Path, where: str, value: object) -> np.ndarray:
    """float32 ``[K, 4]`` from a JSON list of ``[x1, y1, x2, y2]``."""
    if not isinstance(value, list):
        raise ValueError(
            f"{path}: {where} is {_short(value)}; expected a list of boxes [[x1, y1, x2, y2], ...]"
        )
    rows = [
        _four_numbers(path, f"{where}, box {index}", box, "[x1, y1, x2, y2] in raw-image pixels")
        for index, box in enumerate(value)
    ]
    return np.asarray(rows, dtype=np.float32).reshape(len(rows), 4)


def _short(value: object) -> str:
    text = json.dumps(value) if not isinstance(value, float) else repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def coco_image_id(file_name: str) -> str:
    """The image id of a COCO ``file_name``: its stem (folders and extension dropped), as the
    id of an image file given by itself."""
    return PurePosixPath(PureWindowsPath(file_name).as_posix()).stem


def _coco_images(path: Path, images: list[dict[str, object]]) -> dict[object, str]:
    """COCO image id -> our image id, checking each ``images[i]``."""
    ours: dict[object, str] = {}
    named: dict[str, int] = {}
    for index, image in enumerate(images):
        where = f"images[{index}]"
        key, file_name = image.get("id"), image.get("file_name")
        if not _is_key(key):
            raise ValueError(f"{path}: {where} has no integer or string 'id'")
        if not isinstance(file_name, str) or not coco_image_id(file_name):
            raise ValueError(f"{path}: {where} (id {key!r}) has no 'file_name'")
        if key in ours:
            raise ValueError(f"{path}: {where}: the image id {key!r} appears twice")
        image_id = coco_image_id(file_name)
        if image_id in named:
            raise ValueError(
                f"{path}: {where} ({file_name!r}) and images[{named[image_id]}] have the same "
                f"image id {image_id!r} (the file name's stem)"
            )
        ours[key] = image_id
        named[image_id] = index
    return ours


def _is_key(value: object) -> bool:
    """A COCO image id: an int or a string (not a bool, which equals 0 or 1)."""
    return isinstance(value, int | str) and not isinstance(value, bool)


def _coco_sizes(
    images: list[dict[str, object]], ids: dict[object, str]
) -> dict[str, tuple[int, int]]:
    """Our image id -> ``(height, width)`` where ``images[i]`` records both as integers."""
    sizes = {}
    for image in images:
        height, width = image.get("height"), image.get("width")
        if isinstance(height, int) and isinstance(width, int) and height > 0 and width > 0:
            sizes[ids[image["id"]]] = (height, width)
    return sizes


def _coco_boxes(
    path: Path, images: list[dict[str, object]], annotations: list[object], *, inclusive: bool
) -> tuple[dict[str, np.ndarray], dict[str, tuple[int, int]]]:
    """Our image id -> float32 ``[K, 4]`` xyxy (``x2 = x + w``, or ``x + w - 1`` when
    ``inclusive``), and -> recorded ``(h, w)``."""
    last = 1.0 if inclusive else 0.0
    ids = _coco_images(path, images)
    rows: dict[str, list[list[float]]] = {image_id: [] for image_id in ids.values()}
    for index, annotation in enumerate(annotations):
        where = f"annotations[{index}]"
        if not isinstance(annotation, dict):
            raise ValueError(f"{path}: {where} is {_short(annotation)}; expected an object")
        if "id" in annotation:
            where += f" (id {annotation['id']!r})"
        image_key = annotation.get("image_id")
        if not _is_key(image_key) or image_key not in ids:
            raise ValueError(
                f"{path}: {where} refers to image_id {_short(image_key)}, which no entry of "
                "'images' has"
            )
        x, y, w, h = _four_numbers(
            path, f"{where}, bbox", annotation.get("bbox"), "[x, y, width, height]"
        )
        if w < 0 or h < 0:
            raise ValueError(
                f"{path}: {where}, bbox [{x:g}, {y:g}, {w:g}, {h:g}] has a negative size; "
                "COCO boxes are [x, y, width, height]"
            )
        rows[ids[image_key]].append([x, y, x + w - last, y + h - last])
    boxes = {
        image_id: np.asarray(r, dtype=np.float32).reshape(len(r), 4) for image_id, r in rows.items()
    }
    return boxes, _coco_sizes(images, ids)


# --- obj36 TSV and HDF5 ----------------------------------------------------------------------


def _lines_hashed(path: Path, digest: hashlib._Hash) -> Iterator[bytes]:
    """The lines of ``path`` in binary, each fed to ``digest`` as it is read."""
    with path.open("rb") as stream:
        for line in stream:
            digest.update(line)
            yield line


def _add_record(
    path: Path,
    where: str,
    record: tuple[str, np.ndarray, tuple[int, int]],
    boxes: dict[str, np.ndarray],
    sizes: dict[str, tuple[int, int]],
) -> None:
    image_id, image_boxes, size = record
    if image_id in boxes:
        raise ValueError(f"{path}: {where}: a second record for the image id {image_id!r}")
    boxes[image_id] = np.array(image_boxes, dtype=np.float32).reshape(-1, 4)
    sizes[image_id] = size


def _from_tsv(path: Path) -> BoxesFile:
    digest = hashlib.sha256()
    boxes: dict[str, np.ndarray] = {}
    sizes: dict[str, tuple[int, int]] = {}
    for number, line in enumerate(_lines_hashed(path, digest), start=1):
        if not line.strip():
            continue
        region = decode_tsv_line(line, source=f"{path}: line {number}")
        record = (region.image_id, region.boxes, (region.image_h, region.image_w))
        _add_record(path, f"line {number}", record, boxes, sizes)
    return _frozen(path, digest.hexdigest(), "obj36-tsv", boxes, sizes)


def _from_h5(path: Path) -> BoxesFile:
    sha256 = sha256_file(path)
    boxes: dict[str, np.ndarray] = {}
    sizes: dict[str, tuple[int, int]] = {}
    try:
        for index, region in enumerate(iter_h5(path)):
            record = (region.image_id, region.boxes, (region.image_h, region.image_w))
            _add_record(path, f"record {index}", record, boxes, sizes)
    except (KeyError, TypeError) as error:  # h5py's errors for a file of another layout
        raise ValueError(f"{path}: not an HDF5 output of this tool ({error})") from None
    return _frozen(path, sha256, "hdf5", boxes, sizes)
