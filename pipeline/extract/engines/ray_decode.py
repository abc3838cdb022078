"""The decode stage of the Ray engine, as it runs in Ray Data CPU tasks on the cluster's
workers, and the batches both stages pass on.

:class:`DecodeImages` decodes and resizes images with :class:`~pipeline.extract.decode.
PrepareImage`, as the local engine's threads do. This module imports no torch, nor does
anything it imports (a test checks it): a decode worker costs about 3 s of CPU where it cost
6-7 (``benchmarks/bench_ray_cpu.py``), and holds no torch. Only ``--boxes-from`` loads torch
there, to check each image's boxes. Neither stage imports Ray:
Ray Data calls them with batches, dicts of equal-length numpy columns:

    index    int64 [B]   position of the image in the plan's ``todo`` (the driver's order)
    image_id str   [B]   its id (before decode)
    path     str   [B]   the image file as listed (messages name it so)
    file     str   [B]   the same, absolute: readable at this path on every node (before decode)
    outcome  object[B]   after decode: PreparedImage | Failure;
                         after detect (:mod:`~pipeline.extract.engines.ray_stages`):
                         RegionFeatures | Failure | NoWeights
    seconds  float64[B]  after detect: this batch's detector seconds, shared out per image
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from detector.config import DetectorConfig
from pipeline.extract.boxes_file import BoxesFile
from pipeline.extract.decode import Prepared, PrepareImage
from pipeline.extract.inputs import InputItem
from pipeline.features.manifest import Failure

#: One batch as Ray Data hands it over (``batch_format="numpy"``).
Batch = dict[str, np.ndarray]


def objects(values: Sequence[object]) -> np.ndarray:
    """``values`` as a 1-D object array (element by element: numpy would otherwise try to
    unpack any value that looks like a sequence)."""
    array = np.empty(len(values), dtype=object)
    for index, value in enumerate(values):
        array[index] = value
    return array


@dataclass(frozen=True)
class DecodeImages:
    """The decode stage (Ray Data CPU tasks): the run's decode settings, sent once with the
    dataset, applied to a batch of rows at a time."""

    config: DetectorConfig
    max_pixels: int
    max_bytes: int
    boxes: BoxesFile | None

    def __call__(self, batch: Batch) -> Batch:
        """Decode and resize the images of ``batch`` (columns ``index``, ``image_id``,
        ``path``, ``file``); a bad file becomes a :class:`Failure` with its reason, as
        locally, naming the file as listed."""
        items = [
            InputItem(image_id=str(image_id), path=Path(str(file)))
            for image_id, file in zip(batch["image_id"], batch["file"], strict=True)
        ]
        prepare_one = PrepareImage(
            items=items,
            config=self.config,
            max_pixels=self.max_pixels,
            max_bytes=self.max_bytes,
            boxes=self.boxes,
        )
        outcomes: list[Prepared] = [
            _as_listed(prepare_one(index), str(path)) for index, path in enumerate(batch["path"])
        ]
        return {"index": batch["index"], "path": batch["path"], "outcome": objects(outcomes)}


def _as_listed(outcome: Prepared, path: str) -> Prepared:
    """A failure names the file as the driver listed it (the worker read its absolute path)."""
    return dataclasses.replace(outcome, path=path) if isinstance(outcome, Failure) else outcome
