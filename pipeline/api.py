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
encoder="shapes-lxmert"``. Records are named as ``extract_features`` names the same inputs,
and arguments are checked before any model runs, by :mod:`pipeline.api_inputs`.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from collections.abc import Sequence
from pathlib import Path

import torch

from detector import Detector, RegionFeatures, load_detector
from detector.image import DEFAULT_MAX_BYTES, ChannelOrder, ImageError, ImageSource, load_image
from detector.model import GivenBoxes
from detector.options import InferenceOptions
from detector.precision import Precision
from detector.preprocess import PreparedImage, preprocess_for
from encoder.build import Encoder, load_encoder
from encoder.config import EncoderConfig
from encoder.explain import (
    Explanation,
    Method,
    PairExplanation,
    explain_answer,
    explain_judgement,
)
from pipeline.api_inputs import (
    check_distinct_ids,
    check_image_list,
    check_pair_count,
    check_question,
    check_question_count,
    check_verdict_top_k,
    checked_questions,
    default_image_ids,
    distinct_images,
    image_label,
    questions_of,
    regroup,
    statements_of,
)
from weights.defaults import (
    DEFAULT_DETECTOR,
    DEFAULT_DEVICE,
    DEFAULT_ENCODER,
    NO_NLVR2_CHECKPOINT,
    resolve_device,
)

#: One answer: the string (``top_k == 1``) or ``[(answer, probability), ...]`` best first.
Answer = str | list[tuple[str, float]]
#: One NLVR2 verdict: ``True``/``False`` (``top_k == 1``) or ``[(verdict, probability),
#: (other, 1 - probability)]`` best first (``top_k == 2``).
Judgement = bool | list[tuple[bool, float]]


def _judgement(probability: float, *, top_k: int) -> Judgement:
    """A :data:`Judgement` from the probability that the statement is true. Ties go to
    False, as the argmax of the two logits does."""
    verdict = probability > 0.5
    if top_k == 1:
        return verdict
    best = probability if verdict else 1.0 - probability
    return [(verdict, best), (not verdict, 1.0 - best)]


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
        precision: the detector's ``fp32``/``bf16``/``fp16`` (:mod:`detector.precision`;
            LXMERT stays fp32). None: fp32, or a given detector's own. Raises ``ValueError``
            before any model loads where the device cannot run it.
    """

    def __init__(
        self,
        *,
        detector: Detector | str | os.PathLike[str] = DEFAULT_DETECTOR,
        encoder: Encoder | EncoderConfig | str | os.PathLike[str] = DEFAULT_ENCODER,
        device: str | torch.device = DEFAULT_DEVICE,
        detector_preset: str | None = None,
        batch_size: int = 1,
        precision: Precision | None = None,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.device = resolve_device(device)
        if isinstance(detector, Detector):
            request = detector.requested_options.on(self.device)
            if precision is not None:
                request = dataclasses.replace(request, precision=precision)
            self.detector = detector.apply_options(request)
        else:
            options = InferenceOptions(device=self.device, precision=precision or "fp32")
            options.resolve()  # a precision the device cannot run: before any model loads
            self.detector = load_detector(str(detector), preset=detector_preset, options=options)
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
        max_bytes: int = DEFAULT_MAX_BYTES,
        boxes: Sequence[GivenBoxes] | None = None,
    ) -> list[RegionFeatures]:
        """Detect the regions of each image, in input order.

        Args:
            images: paths, encoded bytes, PIL images or numpy arrays (``[H, W, 3]`` uint8,
                RGB unless ``channel_order="bgr"``).
            image_ids: ids stored in the results. Default: as ``extract_features`` names
                the same inputs, a path by its file name without the extension
                (``"photos/cat.jpg"`` -> ``"cat"``); bytes, arrays and PIL images by their
                0-based position in ``images`` (``"0"``, ``"1"``, ...).
            max_bytes: refuse an encoded image (file or bytes) larger than this, before
                reading it (:func:`detector.image.load_image`).
            boxes: one ``[K_i, 4]`` xyxy set per image in raw-image pixels (Tensor or array)
                to get the features and labels of exactly those boxes, in that order, clipped
                to the image, instead of detected ones (:meth:`detector.Detector.detect`).

        Returns:
            One :class:`RegionFeatures` per image: boxes xyxy in raw-image pixels.

        Raises:
            detector.image.ImageError: an image cannot be decoded. The message names a path
                by itself and anything else by position and kind: ``"image 2 (bytes)"``.
            ValueError: ``boxes`` is not one set per image, or a set is unusable (none, NaN,
                degenerate, wholly outside its image); the message names the image and box.
            pipeline.extract.inputs.DuplicateIdError: (a ``ValueError``) without ``image_ids``, two
                different files of one name (``a/x.png``, ``b/x.png``), which
                ``extract_features`` refuses too; before any image is read. The same file
                twice is one image: two records of one id.
        """
        check_image_list(images, "Pipeline.regions")
        sources = list(images)
        if image_ids is None:
            ids = default_image_ids(sources)
            check_distinct_ids(sources, ids)
        else:
            ids = list(image_ids)
        return self._regions(
            sources,
            ids,
            named=image_ids is not None,
            channel_order=channel_order,
            max_bytes=max_bytes,
            boxes=boxes,
        )

    def _regions(
        self,
        sources: Sequence[ImageSource],
        ids: Sequence[str],
        *,
        named: bool = False,
        channel_order: ChannelOrder,
        max_bytes: int,
        boxes: Sequence[GivenBoxes] | None = None,
    ) -> list[RegionFeatures]:
        """:meth:`regions` with the records' ``ids`` chosen; ``named``: the caller chose
        them, and errors show them beside each image."""
        if len(ids) != len(sources):
            raise ValueError(f"got {len(sources)} images but {len(ids)} image_ids")
        prepared = [
            self._prepare(
                image,
                image_id=image_id,
                label=image_label(number, image, image_id if named else None),
                channel_order=channel_order,
                max_bytes=max_bytes,
            )
            for number, (image, image_id) in enumerate(zip(sources, ids, strict=True), start=1)
        ]
        return self.detector.detect(prepared, batch_size=self.batch_size, boxes=boxes)

    def _prepare(
        self,
        image: ImageSource,
        *,
        image_id: str,
        label: str,
        channel_order: ChannelOrder,
        max_bytes: int,
    ) -> PreparedImage:
        """Decode and preprocess one image for this detector; errors name it by ``label``."""
        bgr = load_image(image, channel_order=channel_order, max_bytes=max_bytes, name=label)
        try:
            return preprocess_for(bgr, self.detector.config, image_id=image_id)
        except ImageError as error:  # preprocess knows only the id; say which image it was
            raise ImageError(label, error.reason) from error

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
        check_question_count(regions, questions)
        if top_k < 1:
            raise ValueError(f"top_k must be >= 1, got {top_k}")
        pair_regions: list[RegionFeatures] = []
        pair_questions: list[str] = []
        for region, asked in zip(regions, checked_questions(questions), strict=True):
            pair_regions.extend([region] * len(asked))
            pair_questions.extend(asked)
        scored = (
            self.encoder.answer(pair_regions, pair_questions, k=top_k) if pair_questions else []
        )
        decoded: list[Answer] = [
            best[0].answer if top_k == 1 else [(a.answer, a.probability) for a in best]
            for best in scored
        ]
        return regroup(decoded, questions)

    def answer(
        self,
        images: Sequence[ImageSource],
        questions: Sequence[str | Sequence[str]],
        *,
        top_k: int = 1,
        channel_order: ChannelOrder = "rgb",
        max_bytes: int = DEFAULT_MAX_BYTES,
        boxes: Sequence[GivenBoxes] | None = None,
    ) -> list[Answer | list[Answer]]:
        """Answer ``questions[i]`` (one question or a list) about ``images[i]``.

        The detector runs once per image, whatever the number of questions; LXMERT runs once on
        all (image, question) pairs. ``max_bytes`` is :meth:`regions`' cap; ``boxes`` (one
        ``[K_i, 4]`` xyxy set per image, raw pixels) makes LXMERT see exactly those regions.

        Returns:
            Per image: an :data:`Answer` for a single question, a list of them for a list.

        Raises:
            ValueError: a question is ``None``, bytes, empty or only whitespace (the message
                says which: ``"question 2 is empty"``), before any image is decoded.
            detector.image.ImageError: as :meth:`regions`.
        """
        check_image_list(images, "Pipeline.answer")
        check_question_count(images, questions)
        checked_questions(questions)
        # Records named as regions() names them; two files of one name are no error here,
        # where the records stay inside this call and the answers come back by position.
        regions = self._regions(
            images,
            default_image_ids(images),
            channel_order=channel_order,
            max_bytes=max_bytes,
            boxes=boxes,
        )
        return self.answer_regions(regions, questions, top_k=top_k)

    def explain(
        self,
        image: ImageSource,
        question: str,
        answer: str | None = None,
        *,
        method: Method = "chefer",
        channel_order: ChannelOrder = "rgb",
        max_bytes: int = DEFAULT_MAX_BYTES,
    ) -> Explanation:
        """Why this answer: the relevance of each region and question word for ``answer``
        (default: the top answer) to ``question`` about one ``image``
        (:mod:`encoder.explain`; ``method="attention"`` is the raw-attention baseline).

        Returns:
            An :class:`~encoder.explain.Explanation`: per region a score (summing to 1), its
            box in raw pixels and its label; per question word a score (summing to 1).

        Raises:
            ValueError: a blank question, an answer outside the encoder's answer set, or an
                encoder without a QA head; detector.image.ImageError as :meth:`regions`.
        """
        check_question(question, "question")
        region = self._regions(
            [image], default_image_ids([image]), channel_order=channel_order, max_bytes=max_bytes
        )[0]
        return self.explain_regions(region, question, answer, method=method)

    def explain_regions(
        self,
        region: RegionFeatures,
        question: str,
        answer: str | None = None,
        *,
        method: Method = "chefer",
    ) -> Explanation:
        """:meth:`explain` for a picture whose regions are already known; labelled with this
        pipeline's detector vocabulary (``"attribute object"``)."""
        from pipeline.extract.visualize import region_labels  # OpenCV only when explaining

        labels = region_labels(region, self.detector.object_names, self.detector.attribute_names)
        return explain_answer(
            self.encoder,
            region,
            check_question(question, "question"),
            answer=answer,
            method=method,
            labels=labels,
        )

    def explain_judgement(
        self,
        left: ImageSource,
        right: ImageSource,
        statement: str,
        verdict: bool | None = None,
        *,
        method: Method = "chefer",
        channel_order: ChannelOrder = "rgb",
        max_bytes: int = DEFAULT_MAX_BYTES,
    ) -> PairExplanation:
        """NLVR2: why ``verdict`` (default: the model's own) for ``statement`` about the pair:
        relevance per region of each picture (each summing to 1, with the picture's share)
        and per word (:func:`encoder.explain.explain_judgement`). Needs an NLVR2 encoder."""
        from pipeline.extract.visualize import region_labels  # OpenCV only when explaining

        self._check_nlvr2(1)
        check_question(statement, "statement")
        found = self._regions(
            [left, right],
            default_image_ids([left, right]),
            channel_order=channel_order,
            max_bytes=max_bytes,
        )
        names = (self.detector.object_names, self.detector.attribute_names)
        labels = (region_labels(found[0], *names), region_labels(found[1], *names))
        return explain_judgement(
            self.encoder,
            found[0],
            found[1],
            statement,
            verdict=verdict,
            method=method,
            labels=labels,
        )

    def judge_regions(
        self,
        lefts: Sequence[RegionFeatures],
        rights: Sequence[RegionFeatures],
        statements: Sequence[str | Sequence[str]],
        *,
        top_k: int = 1,
    ) -> list[Judgement | list[Judgement]]:
        """NLVR2 on image pairs whose regions are already known: is ``statements[i]`` (one
        statement or a list) true of (``lefts[i]``, ``rights[i]``)? Every (pair, statement)
        triple goes through the NLVR2 model in one batch.

        Returns:
            Per pair: a :data:`Judgement` for a single statement, a list of them for a list.
        """
        check_pair_count(lefts, rights, statements)
        self._check_nlvr2(top_k)
        flat_left: list[RegionFeatures] = []
        flat_right: list[RegionFeatures] = []
        flat_statements: list[str] = []
        for number, (left, right, entry) in enumerate(
            zip(lefts, rights, statements, strict=True), start=1
        ):
            said = statements_of(entry, pair=number if len(statements) > 1 else None)
            flat_left.extend([left] * len(said))
            flat_right.extend([right] * len(said))
            flat_statements.extend(said)
        probabilities = (
            self.encoder.judge(flat_left, flat_right, flat_statements) if flat_statements else []
        )
        decoded = [_judgement(p, top_k=top_k) for p in probabilities]
        return regroup(decoded, statements)

    def judge(
        self,
        lefts: Sequence[ImageSource],
        rights: Sequence[ImageSource],
        statements: Sequence[str | Sequence[str]],
        *,
        top_k: int = 1,
        channel_order: ChannelOrder = "rgb",
        max_bytes: int = DEFAULT_MAX_BYTES,
    ) -> list[Judgement | list[Judgement]]:
        """NLVR2: is ``statements[i]`` (one statement or a list) true of the image pair
        (``lefts[i]``, ``rights[i]``)? Needs an NLVR2 encoder (e.g. ``shapes-nlvr2``).

        The detector runs once per distinct image (the same path, bytes or object given
        twice is detected once), whatever the number of pairs and statements; the NLVR2 model
        runs once on all (pair, statement) triples.

        Returns:
            Per pair: a :data:`Judgement` for a single statement, a list of them for a list.

        Raises:
            ValueError: the encoder is not an NLVR2 model, ``top_k`` is not 1 or 2, or a
                statement is ``None``, bytes or blank (named), before any image is decoded.
            detector.image.ImageError: as :meth:`regions` (a missing file is named).
        """
        check_image_list(lefts, "Pipeline.judge")
        check_image_list(rights, "Pipeline.judge")
        check_pair_count(lefts, rights, statements)
        self._check_nlvr2(top_k)
        for number, entry in enumerate(statements, start=1):
            statements_of(entry, pair=number if len(statements) > 1 else None)
        images, slots = distinct_images([*lefts, *rights])
        regions = self._regions(
            images, default_image_ids(images), channel_order=channel_order, max_bytes=max_bytes
        )
        pairs = len(lefts)
        left_regions = [regions[slot] for slot in slots[:pairs]]
        right_regions = [regions[slot] for slot in slots[pairs:]]
        return self.judge_regions(left_regions, right_regions, statements, top_k=top_k)

    def _check_nlvr2(self, top_k: int) -> None:
        check_verdict_top_k(top_k)
        if self.encoder.config.head != "nlvr2":
            raise ValueError(
                f"this Pipeline's encoder {self.encoder.config.checkpoint!r} is not an NLVR2 "
                f"model (head {self.encoder.config.head!r}). {NO_NLVR2_CHECKPOINT}"
            )


def default_pipeline(
    detector: str = DEFAULT_DETECTOR,
    encoder: str = DEFAULT_ENCODER,
    device: str = DEFAULT_DEVICE,
    precision: Precision = "fp32",
) -> Pipeline:
    """The pipeline :func:`answer` uses, built once per (detector, encoder, device, precision)
    and reused, so repeated calls do not reload weights. ``default_pipeline.cache_clear()``
    frees it."""
    # One cache key per combination however it is spelt (positional, keywords, defaults).
    return _cached_pipeline(detector, encoder, str(resolve_device(device)), precision)


@functools.lru_cache(maxsize=4)
def _cached_pipeline(detector: str, encoder: str, device: str, precision: Precision) -> Pipeline:
    return Pipeline(detector=detector, encoder=encoder, device=device, precision=precision)


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
    max_bytes: int = DEFAULT_MAX_BYTES,
    pipeline: Pipeline | None = None,
    precision: Precision = "fp32",
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
        max_bytes: refuse an encoded image (file or bytes) larger than this, before reading
            it (default 200 MB).
        pipeline: use this :class:`Pipeline` instead of the cached default.
        precision: the detector's precision in the cached default pipeline (``fp32``,
            ``bf16``, ``fp16``; see :class:`Pipeline`); ignored with ``pipeline``.

    Returns:
        For one question an :data:`Answer`; for a list, a list of them in the same order.

    Raises:
        ValueError: ``question`` (or one in the list) is ``None``, bytes, empty or only
            whitespace; checked before any model loads. The message says which question.
        detector.image.ImageError: the image cannot be used; a path is named by itself,
            bytes and arrays as ``"image 1 (bytes)"`` / ``"image 1 (numpy array)"``.
    """
    questions_of(question, image=None)
    if pipeline is None:
        pipeline = default_pipeline(str(detector), str(encoder), device, precision)
    return pipeline.answer(
        [image], [question], top_k=top_k, channel_order=channel_order, max_bytes=max_bytes
    )[0]


def judge(
    left: ImageSource,
    right: ImageSource,
    statement: str | Sequence[str],
    *,
    detector: str | os.PathLike[str] | None = None,
    encoder: str | os.PathLike[str] | None = None,
    device: str = DEFAULT_DEVICE,
    top_k: int = 1,
    channel_order: ChannelOrder = "rgb",
    max_bytes: int = DEFAULT_MAX_BYTES,
    pipeline: Pipeline | None = None,
    precision: Precision = "fp32",
) -> Judgement | list[Judgement]:
    """NLVR2: is ``statement`` true of the pair (``left``, ``right``)?

    >>> judge("examples/scene_007.png", "examples/scene_002.png", "both images have a star",
    ...       detector="shapes-detector", encoder="shapes-nlvr2")         # doctest: +SKIP
    True

    Args:
        left, right: the two images, as :func:`answer` takes one (path, bytes, PIL image,
            numpy array); the same image twice is detected once.
        statement: one statement, or a list of them (then a list comes back).
        detector: registry name or file; default the real one (:data:`DEFAULT_DETECTOR`).
        encoder: an NLVR2 model: a registry name (``shapes-nlvr2``) or a directory written by
            ``lxmert-finetune train --task nlvr2``. Required: LXMERT released no NLVR2
            checkpoint, so there is no default.
        device: ``auto`` (default), ``cpu``, ``cuda`` or ``cuda:N``.
        top_k: 1 gives ``True``/``False``; 2 gives ``[(True, p), (False, 1 - p)]`` best first.
        pipeline: use this :class:`Pipeline` (with an NLVR2 encoder) instead of the cached one.
        precision: the detector's precision in the cached default pipeline, as :func:`answer`.

    Raises:
        ValueError: no ``encoder`` (the message names ``shapes-nlvr2``), ``top_k`` not 1 or 2,
            or a blank statement; all before any model loads.
        detector.image.ImageError: an image cannot be used; a missing file is named before
            any model loads.
    """
    if pipeline is None and encoder is None:
        raise ValueError(NO_NLVR2_CHECKPOINT)
    check_verdict_top_k(top_k)
    statements_of(statement, pair=None)
    for side, image in (("left", left), ("right", right)):
        if isinstance(image, (str, os.PathLike)) and not os.path.isfile(image):
            what = "is a directory" if os.path.isdir(image) else "no such file"
            raise ImageError(os.fsdecode(image), f"{what} ({side} image)")
    if pipeline is None:
        chosen = DEFAULT_DETECTOR if detector is None else str(detector)
        pipeline = default_pipeline(chosen, str(encoder), device, precision)
    return pipeline.judge(
        [left], [right], [statement], top_k=top_k, channel_order=channel_order, max_bytes=max_bytes
    )[0]
