"""Raw image in, answer out: :class:`Pipeline` and :func:`answer`.

>>> from pipeline import answer
>>> answer("examples/scene_000.png", "what color is the circle?")          # doctest: +SKIP
'red'
>>> answer("examples/scene_000.png", ["is there a square?", "how many circles?"], top_k=2)
... # doctest: +SKIP
[[('yes', 0.97), ('no', 0.03)], [('2', 0.88), ('1', 0.09)]]

The default models are the real ones (:data:`DEFAULT_DETECTOR` ``vg-r101-c4-attr``,
:data:`DEFAULT_ENCODER` ``lxmert-vqa``, from :mod:`weights.defaults`); the shapes-world pair
shipped in ``weights/`` runs offline when named: ``detector="shapes-detector",
encoder="shapes-lxmert"``.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from detector import Detector, RegionFeatures, load_detector
from detector.image import ChannelOrder, ImageSource
from encoder.build import Encoder, load_encoder
from encoder.config import EncoderConfig
from weights.defaults import DEFAULT_DETECTOR, DEFAULT_DEVICE, DEFAULT_ENCODER, resolve_device

#: One answer: the string (``top_k == 1``) or ``[(answer, probability), ...]`` best first.
Answer = str | list[tuple[str, float]]

_SINGLE_IMAGE_TYPES = (str, os.PathLike, bytes, bytearray, memoryview, np.ndarray, Image.Image)


def _check_image_list(images: object, what: str) -> None:
    if isinstance(images, _SINGLE_IMAGE_TYPES):
        raise TypeError(
            f"{what} takes a list of images, got one {type(images).__name__}; wrap it: [image]"
        )


class Pipeline:
    """A detector and an LXMERT encoder on one device.

    Args:
        detector: a :class:`~detector.Detector`, or a registry name / checkpoint file for
            :func:`detector.load_detector`.
        encoder: an :class:`~encoder.build.Encoder`, an :class:`~encoder.config.EncoderConfig`,
            or a preset / registry name / ``save_pretrained`` directory for
            :func:`encoder.build.load_encoder`.
        device: where both run: ``auto`` (default: CUDA when available, else the CPU, saying
            so), ``cpu``, ``cuda`` or ``cuda:N`` (:func:`weights.defaults.resolve_device`; an
            explicit device that cannot be used raises ``DeviceError`` before any model loads).
            Given models are moved there, with their inference settings re-applied.
        detector_preset: config preset when ``detector`` is a name or path (default: the
            checkpoint's own).
        batch_size: images per detector call (same-shape images are batched, never padded).
    """

    def __init__(
        self,
        *,
        detector: Detector | str | os.PathLike[str] = DEFAULT_DETECTOR,
        encoder: Encoder | EncoderConfig | str | os.PathLike[str] = DEFAULT_ENCODER,
        device: str | torch.device = DEFAULT_DEVICE,
        detector_preset: str | None = None,
        batch_size: int = 1,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.device = resolve_device(device)
        if isinstance(detector, Detector):
            self.detector = detector.move_to(self.device)
        else:
            self.detector = load_detector(str(detector), preset=detector_preset, device=self.device)
        if isinstance(encoder, Encoder):
            encoder.model.to(self.device)  # type: ignore[arg-type]  # transformers wraps .to
            self.encoder = encoder
        elif isinstance(encoder, (EncoderConfig, str, Path)):
            self.encoder = load_encoder(encoder, device=self.device)
        else:
            raise TypeError(
                "encoder must be an Encoder, an EncoderConfig, a name or a directory, "
                f"got {type(encoder).__name__}"
            )
        self.batch_size = batch_size

    def __repr__(self) -> str:
        return (
            f"Pipeline(detector={self.detector.checkpoint.name!r}, "
            f"encoder={self.encoder.config.checkpoint!r}, device={str(self.device)!r})"
        )

    def regions(
        self,
        images: Sequence[ImageSource],
        image_ids: Sequence[str] | None = None,
        *,
        channel_order: ChannelOrder = "rgb",
    ) -> list[RegionFeatures]:
        """Detect the regions of each image, in input order.

        Args:
            images: paths, encoded bytes, PIL images or numpy arrays (``[H, W, 3]`` uint8,
                RGB unless ``channel_order="bgr"``).
            image_ids: ids stored in the results (default ``"0"``, ``"1"``, ...).

        Returns:
            One :class:`RegionFeatures` per image: boxes xyxy in raw-image pixels.

        Raises:
            detector.image.ImageError: an image cannot be decoded (the message names it).
        """
        _check_image_list(images, "Pipeline.regions")
        return self.detector.regions(
            list(images), image_ids, channel_order=channel_order, batch_size=self.batch_size
        )

    def answer_regions(
        self,
        regions: Sequence[RegionFeatures],
        questions: Sequence[str | Sequence[str]],
        *,
        top_k: int = 1,
    ) -> list[Answer | list[Answer]]:
        """Answer questions about images whose regions are already known (e.g. from a feature
        file). ``questions[i]`` is one question or a list of questions about ``regions[i]``;
        every (image, question) pair goes through LXMERT in one batch.

        Returns:
            Per image: an :data:`Answer` for a single question, a list of them for a list.
        """
        if len(regions) != len(questions):
            raise ValueError(
                f"got {len(regions)} images but {len(questions)} question entries; pass one "
                "question (or one list of questions) per image"
            )
        if top_k < 1:
            raise ValueError(f"top_k must be >= 1, got {top_k}")
        pair_regions: list[RegionFeatures] = []
        pair_questions: list[str] = []
        for region, entry in zip(regions, questions, strict=True):
            asked = [entry] if isinstance(entry, str) else list(entry)
            for question in asked:
                if not isinstance(question, str):
                    raise TypeError(f"questions must be strings, got {type(question).__name__}")
            pair_regions.extend([region] * len(asked))
            pair_questions.extend(asked)
        scored = (
            self.encoder.answer(pair_regions, pair_questions, k=top_k) if pair_questions else []
        )
        decoded: list[Answer] = [
            best[0].answer if top_k == 1 else [(a.answer, a.probability) for a in best]
            for best in scored
        ]
        results: list[Answer | list[Answer]] = []
        position = 0
        for entry in questions:
            if isinstance(entry, str):
                results.append(decoded[position])
                position += 1
            else:
                results.append(decoded[position : position + len(entry)])
                position += len(entry)
        return results

    def answer(
        self,
        images: Sequence[ImageSource],
        questions: Sequence[str | Sequence[str]],
        *,
        top_k: int = 1,
        channel_order: ChannelOrder = "rgb",
    ) -> list[Answer | list[Answer]]:
        """Answer ``questions[i]`` (one question or a list) about ``images[i]``.

        The detector runs once per image, whatever the number of questions; LXMERT runs once on
        all (image, question) pairs.

        Returns:
            Per image: an :data:`Answer` for a single question, a list of them for a list.
        """
        _check_image_list(images, "Pipeline.answer")
        if len(images) != len(questions):
            raise ValueError(
                f"got {len(images)} images but {len(questions)} question entries; pass one "
                "question (or one list of questions) per image"
            )
        regions = self.regions(images, channel_order=channel_order)
        return self.answer_regions(regions, questions, top_k=top_k)


def default_pipeline(
    detector: str = DEFAULT_DETECTOR,
    encoder: str = DEFAULT_ENCODER,
    device: str = DEFAULT_DEVICE,
) -> Pipeline:
    """The pipeline :func:`answer` uses, built once per (detector, encoder, device) and reused,
    so repeated calls do not reload weights. ``default_pipeline.cache_clear()`` frees it."""
    # One cache key per triple however it is spelt (positional, keywords, defaults).
    return _cached_pipeline(detector, encoder, str(resolve_device(device)))


@functools.lru_cache(maxsize=4)
def _cached_pipeline(detector: str, encoder: str, device: str) -> Pipeline:
    return Pipeline(detector=detector, encoder=encoder, device=device)


default_pipeline.cache_clear = _cached_pipeline.cache_clear  # type: ignore[attr-defined]
default_pipeline.cache_info = _cached_pipeline.cache_info  # type: ignore[attr-defined]


def answer(
    image: ImageSource,
    question: str | Sequence[str],
    *,
    top_k: int = 1,
    detector: str | os.PathLike[str] = DEFAULT_DETECTOR,
    encoder: str | os.PathLike[str] = DEFAULT_ENCODER,
    device: str = DEFAULT_DEVICE,
    channel_order: ChannelOrder = "rgb",
    pipeline: Pipeline | None = None,
) -> Answer | list[Answer]:
    """Answer a question (or several) about one image.

    Args:
        image: a path, encoded bytes, a PIL image or a numpy array (``[H, W, 3]`` uint8 RGB, or
            BGR with ``channel_order="bgr"``).
        question: one question, or a list of questions (the detector then runs once for all).
        top_k: 1 gives the answer string; more gives ``[(answer, probability), ...]`` best
            first (probabilities are a softmax over the model's answer set).
        detector, encoder, device: which models to use (registry names or paths); the pipeline
            for each combination is built on first use and cached (:func:`default_pipeline`).
        pipeline: use this :class:`Pipeline` instead of the cached default.

    Returns:
        For one question an :data:`Answer`; for a list, a list of them in the same order.
    """
    if pipeline is None:
        pipeline = default_pipeline(str(detector), str(encoder), device)
    return pipeline.answer([image], [question], top_k=top_k, channel_order=channel_order)[0]
