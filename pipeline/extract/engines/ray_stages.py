"""The detector stage of the Ray engine, as it runs in the cluster's actors.

:class:`DetectRegions` loads the model once in its ``__init__`` (the weights reach it as
:mod:`~pipeline.extract.engines.ray_weights` says) and detects a batch of decoded images per
``__call__`` with the local engine's :func:`~pipeline.extract.engines.local.detect_or_fail`.
It does not import Ray: Ray Data calls it with the batches the decode stage
(:mod:`~pipeline.extract.engines.ray_decode`, whose docstring lists the columns) returns, and
it returns them with ``outcome`` (RegionFeatures | Failure | NoWeights) and ``seconds``.
"""

from __future__ import annotations

import socket
import time
from dataclasses import dataclass

import numpy as np
import torch

from detector import RegionFeatures, load_detector
from detector.config import DetectorConfig
from detector.model import BatchLimits, auto_batch_size
from detector.options import InferenceOptions
from detector.preprocess import PreparedImage
from pipeline.extract.boxes_file import BoxesFile
from pipeline.extract.engines.local import detect_or_fail
from pipeline.extract.engines.ray_decode import Batch, objects
from pipeline.extract.engines.ray_weights import (
    ActorWeights,
    WeightsUnavailableError,
    file_state,
    weights_for_actor,
)
from pipeline.features.manifest import Failure


@dataclass(frozen=True)
class ActorSpec:
    """How each detector actor loads and runs the model.

    Attributes:
        weights: the driver's weights: resolved on the actor's node (its own weights cache
            or ``LXMERT_PIPELINE_WEIGHTS``) when they are there, else the shipped copy
            (:func:`~pipeline.extract.engines.ray_weights.weights_for_actor`).
        config: the run's detector config (preset + flag overrides).
        options: the run's inference options (``ExtractSettings.inference_options``), on
            the device type only: ``cpu`` or ``cuda`` (the one GPU Ray gives the actor).
        threads: torch threads, set explicitly: Ray would otherwise set them from the
            actor's CPU reservation, and on CPU the features' last bits depend on them.
        batch_size: images per detector call; None chooses by the actor's free memory.
        boxes: the ``--boxes-from`` boxes, or None to detect.
    """

    weights: ActorWeights
    config: DetectorConfig
    options: InferenceOptions
    threads: int
    batch_size: int | None
    boxes: BoxesFile | None


@dataclass(frozen=True)
class NoWeights:
    """The outcome of every image sent to an actor that has no copy of the driver's weights
    (:class:`~pipeline.extract.engines.ray_weights.WeightsUnavailableError`): the driver ends the
    run with ``reason``. A row, not a failed ``__init__``: Ray would retry that in vain and pass
    on only the text of its traceback."""

    reason: str


class DetectRegions:
    """The detector in a Ray actor: loaded once, then a batch of decoded images at a time."""

    def __init__(self, spec: ActorSpec) -> None:
        torch.set_num_threads(spec.threads)
        self.no_weights: NoWeights | None = None
        try:
            weights = weights_for_actor(spec.weights)
        except WeightsUnavailableError as error:
            self.no_weights = NoWeights(reason=str(error))
            return
        before = file_state(weights)
        self.detector = load_detector(
            weights, config=spec.config, device=spec.options.device, options=spec.options
        )
        # Replaced after it was chosen (the digest load_detector took differs) or while
        # it was read (another file state): another run or a fetch was writing it.
        digest = self.detector.checkpoint.sha256
        if digest != spec.weights.sha256 or file_state(weights) != before:
            self.no_weights = NoWeights(
                reason=f"node {socket.gethostname()}: {weights} changed while the actor "
                f"loaded it (sha256 {digest} when read, the driver's {spec.weights.sha256}); "
                "run again"
            )
            return
        worst = (spec.config.min_size, spec.config.max_size)
        self.batch_size = spec.batch_size or auto_batch_size(self.detector.device, worst)
        self.boxes = spec.boxes
        self.limits = BatchLimits()  # what out-of-memory taught this actor so far

    def __call__(self, batch: Batch) -> Batch:
        """Regions (or failures) of the batch's decoded images, row for row."""
        rows = len(batch["index"])
        if self.no_weights is not None:
            outcomes = objects([self.no_weights] * rows)
            return {"index": batch["index"], "outcome": outcomes, "seconds": np.zeros(rows)}
        tick = time.monotonic()
        results = self._detect(batch)
        seconds = time.monotonic() - tick
        outcomes = objects(
            [
                results[entry.image_id] if isinstance(entry, PreparedImage) else entry
                for entry in batch["outcome"]
            ]
        )
        return {
            "index": batch["index"],
            "outcome": outcomes,
            "seconds": np.full(rows, seconds / max(rows, 1)),
        }

    def _detect(self, batch: Batch) -> dict[str, RegionFeatures | Failure]:
        """The regions or failure of each decoded image of ``batch``, by image id."""
        paths = dict[str, str]()
        for outcome, path in zip(batch["outcome"], batch["path"], strict=True):
            paths[outcome.image_id] = str(path)
        prepared = [entry for entry in batch["outcome"] if isinstance(entry, PreparedImage)]
        results: dict[str, RegionFeatures | Failure] = {}
        if prepared:
            detected = detect_or_fail(
                self.detector, prepared, paths, self.batch_size, self.boxes, self.limits
            )
            self.limits = detected.limits
            results.update({region.image_id: region for region in detected.regions})
            results.update({failure.image_id: failure for failure in detected.failures})
        return results
