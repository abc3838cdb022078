"""Decode and resize of one listed image at a time, never raising: a bad file becomes a
:class:`~pipeline.features.manifest.Failure` named with its reason.

The local engine runs it on its decode threads, the Ray engine in its decode tasks
(:mod:`~pipeline.extract.engines.ray_decode`). It imports no torch, nor does anything it
imports: a Ray decode worker then runs without it (about 3 s of CPU less each, and torch's
memory). With ``--boxes-from`` checking an image's boxes still loads torch
(:meth:`~pipeline.extract.boxes_file.BoxesFile.boxes_for`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from detector.config import DetectorConfig
from detector.image import DEFAULT_MAX_BYTES, ImageError
from detector.preprocess import PreparedImage, prepare
from pipeline.extract.boxes_file import BoxesFile
from pipeline.extract.inputs import InputItem
from pipeline.features.manifest import Failure

#: What decoding hands to the model: an image ready for it, or why there is none.
Prepared = PreparedImage | Failure


@dataclass(frozen=True)
class PrepareImage:
    """Decode + resize of one listed image, never raising: a bad file becomes a Failure.

    With ``boxes`` (``--boxes-from``), an image without an entry fails before it is decoded,
    and one whose boxes are unusable for it fails after (:meth:`BoxesFile.boxes_for`).
    """

    items: Sequence[InputItem]
    config: DetectorConfig
    max_pixels: int
    max_bytes: int = DEFAULT_MAX_BYTES
    boxes: BoxesFile | None = None

    def __call__(self, index: int) -> Prepared:
        item = self.items[index]
        if self.boxes is not None and item.image_id not in self.boxes:
            return Failure(item.image_id, str(item.path), self.boxes.no_entry(item.image_id))
        prepared = self._prepare(item)
        if self.boxes is not None and isinstance(prepared, PreparedImage):
            try:
                self.boxes.boxes_for(item.image_id, image_h=prepared.raw_h, image_w=prepared.raw_w)
            except ValueError as error:  # the message names the boxes file and the entry
                return Failure(item.image_id, str(item.path), str(error))
        return prepared

    def _prepare(self, item: InputItem) -> Prepared:
        try:
            return prepare(
                str(item.path),
                config=self.config,
                image_id=item.image_id,
                max_pixels=self.max_pixels,
                max_bytes=self.max_bytes,
            )
        except ImageError as error:
            return Failure(item.image_id, str(item.path), error.reason)
        except Exception as error:  # a bad file must never end the run; report it instead
            return Failure(item.image_id, str(item.path), f"{type(error).__name__}: {error}")
