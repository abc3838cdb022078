"""What the page does, as plain functions of (image, text, settings) -> values.

No gradio here: :mod:`pipeline.web.app` wires these to components, and tests call them
directly. Every problem the user can fix is a :class:`DemoError` whose message says what to
do; the page shows it and keeps serving.

Frames: boxes are xyxy in raw-image pixels (after EXIF orientation), as in
:class:`detector.RegionFeatures`; pictures are uint8 ``[H, W, 3]``.
"""

from __future__ import annotations

import dataclasses
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, cast

import numpy as np

from detector.image import DEFAULT_MAX_PIXELS, ImageError, load_image
from detector.structures import RegionFeatures
from pipeline.extract.visualize import draw_regions, enlarged, region_labels
from pipeline.web import DEFAULT_MAX_UPLOAD_BYTES
from pipeline.web.models import ModelCache, ModelSettings, StartModels
from weights import sha256_file

if TYPE_CHECKING:
    from encoder.explain import Explanation, PairExplanation
    from pipeline.api import Pipeline

#: Answers shown per question.
TOP_K = 5
#: Questions per request (one per line).
MAX_QUESTIONS = 8
#: Images whose regions are kept, so more questions about one image never rerun the detector.
REGION_CACHE_SIZE = 16
#: Bytes of decoded images the region cache holds at most (the newest is always kept): 16
#: images at the pixel cap would be several GB.
REGION_CACHE_BYTES = 1 << 30
#: Brightness left outside a picked box.
_DIM = 0.35


class DemoError(ValueError):
    """Bad input the user can fix; the message is shown on the page as it is."""


@dataclass(frozen=True)
class Limits:
    """What a request may send.

    Attributes:
        max_bytes: largest image file accepted, in bytes.
        max_pixels: largest image accepted, width x height (decompression bombs stop here,
            before their pixels are decoded).
        max_questions: questions per request.
    """

    max_bytes: int = DEFAULT_MAX_UPLOAD_BYTES
    max_pixels: int = DEFAULT_MAX_PIXELS
    max_questions: int = MAX_QUESTIONS


@dataclass(frozen=True)
class Detection:
    """One image and its regions.

    Attributes:
        key: (sha256 of the image file, detector settings): its place in the service's
            region cache (:meth:`DemoService.known`), all a page session keeps of it.
        image_bgr: uint8 ``[H, W, 3]`` BGR, the raw image the boxes refer to.
        regions: its regions (boxes xyxy, raw-image pixels).
        object_names, attribute_names: the detector's vocabularies (index = id).
    """

    key: tuple[str, tuple[object, ...]]
    image_bgr: np.ndarray
    regions: RegionFeatures
    object_names: tuple[str, ...]
    attribute_names: tuple[str, ...]


@dataclass(frozen=True)
class QuestionAnswers:
    """The best answers to one question, best first: ``(answer, probability)``."""

    question: str
    answers: tuple[tuple[str, float], ...]

    def as_json(self) -> dict[str, object]:
        """``{"question": ..., "answers": [{"answer": ..., "probability": ...}]}``, the shape
        ``answer --json`` prints."""
        return {
            "question": self.question,
            "answers": [{"answer": a, "probability": p} for a, p in self.answers],
        }


@dataclass(frozen=True)
class Timing:
    """Seconds one request spent in each model (wall clock, models already loaded).

    Attributes:
        detector_s: the detector, over all images of the request; None when every image's
            regions came from the region cache.
        encoder_s: LXMERT answering (or judging); None when it did not run.
        explain_s: the explanation (a forward and a backward pass); None when none was asked.
    """

    detector_s: float | None
    encoder_s: float | None = None
    explain_s: float | None = None

    def describe(self) -> str:
        """``"time: detector 0.41 s, encoder 0.03 s"`` (``detector cached``)."""
        parts = [
            "detector " + ("cached" if self.detector_s is None else f"{self.detector_s:.2f} s")
        ]
        if self.encoder_s is not None:
            parts.append(f"encoder {self.encoder_s:.2f} s")
        if self.explain_s is not None:
            parts.append(f"explanation {self.explain_s:.2f} s")
        return "time: " + ", ".join(parts)

    def as_json(self) -> dict[str, float | None]:
        """Seconds per stage, null for a stage that did not run (the detector: cached)."""
        return {
            "detector_s": self.detector_s,
            "encoder_s": self.encoder_s,
            "explain_s": self.explain_s,
        }


def _added(first: float | None, second: float | None) -> float | None:
    """Two detector times summed, None (cached) only when both are."""
    return None if first is None and second is None else (first or 0.0) + (second or 0.0)


@dataclass(frozen=True)
class PageView:
    """What the page shows after a request.

    Attributes:
        detection: the image and its regions (kept by the page to redraw without a rerun).
        picture: RGB uint8 ``[H, W, 3]``, the image with its strongest boxes labelled.
        rows: the region table (:data:`REGION_COLUMNS`).
        answers: per question, the best :data:`TOP_K` answers (empty for boxes only).
        status: one line: the image, the regions, the time taken, the models and the device.
        timing: seconds in the detector (None: cached) and the encoder.
    """

    detection: Detection
    picture: np.ndarray
    rows: list[list[object]]
    answers: list[QuestionAnswers]
    status: str
    timing: Timing


@dataclass(frozen=True)
class Verdict:
    """NLVR2's reading of one statement about an image pair."""

    statement: str
    true_probability: float

    def as_json(self) -> dict[str, object]:
        """``{"statement": ..., "true": bool, "probability_true": p}``."""
        return {
            "statement": self.statement,
            "true": self.true_probability > 0.5,
            "probability_true": self.true_probability,
        }


def parse_questions(
    text: str | None, *, limit: int = MAX_QUESTIONS, what: str = "question"
) -> list[str]:
    """The questions (or statements: ``what``) in ``text``, one per line, blank lines skipped.

    Raises:
        DemoError: none at all, or more than ``limit``.
    """
    questions = [line.strip() for line in (text or "").splitlines() if line.strip()]
    for number, question in enumerate(questions, start=1):
        _check_text(question, what=f"{what} {number}")
    if not questions:
        raise DemoError(f"The {what} is empty: write a {what} (one per line), then ask.")
    if len(questions) > limit:
        raise DemoError(f"{len(questions)} {what}s: ask at most {limit} at a time.")
    return questions


def _check_text(text: str, *, what: str) -> None:
    """Refuse text that cannot be encoded as UTF-8 (a lone surrogate, which JSON can carry):
    the tokenizer would fail on it with a ``TypeError`` far from here."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as error:
        raise DemoError(
            f"The {what} is not valid text (a lone surrogate at character {error.start + 1}); "
            "retype it."
        ) from None


def read_image(path: str | os.PathLike[str], *, limits: Limits, name: str) -> np.ndarray:
    """Decode the uploaded file at ``path`` (EXIF-oriented BGR uint8 ``[H, W, 3]``).

    Raises:
        DemoError: not an image, too many bytes or pixels; names the upload ``name``.
    """
    try:
        return load_image(path, max_bytes=limits.max_bytes, max_pixels=limits.max_pixels, name=name)
    except ImageError as error:
        raise DemoError(f"Cannot use this image: {error}") from error
    except OSError as error:  # the upload vanished from the server's cache
        raise DemoError(f"Cannot read the upload {name}: {error.strerror or error}") from error


class DemoService:
    """The page's work over one :class:`ModelCache`.

    The detector runs once per (image bytes, detector settings): the regions are kept for
    the last :data:`REGION_CACHE_SIZE` images (and at most ``cache_bytes`` of their decoded
    pixels), so any number of questions, asked at once or one after another, reuse them.
    """

    def __init__(
        self,
        *,
        models: ModelCache,
        limits: Limits = Limits(),
        cache_bytes: int = REGION_CACHE_BYTES,
    ) -> None:
        self.models = models
        self.limits = limits
        self._cache_bytes = cache_bytes
        self._lock = threading.Lock()
        self._regions: OrderedDict[tuple[str, tuple[object, ...]], Detection] = OrderedDict()

    def detect(
        self, path: str | os.PathLike[str] | None, settings: ModelSettings, *, name: str
    ) -> Detection:
        """The regions of the image at ``path`` with ``settings``' detector.

        Raises:
            DemoError: the image cannot be used, or the models cannot be loaded.
        """
        return self.detect_timed(path, settings, name=name)[0]

    def detect_timed(
        self, path: str | os.PathLike[str] | None, settings: ModelSettings, *, name: str
    ) -> tuple[Detection, float | None]:
        """:meth:`detect`, and the seconds the detector ran (None: the regions were cached)."""
        if path is None or not os.fspath(path):
            raise DemoError("No image: upload one, paste one, or pick an example first.")
        bgr = read_image(path, limits=self.limits, name=name)
        key = (sha256_file(path), settings.detector_key())  # the image's identity in the cache
        with self._lock:
            known = self._regions.get(key)
            if known is not None:
                self._regions.move_to_end(key)
                return known, None
        pipeline = self._pipeline(settings)
        with self.models.using(settings):
            started = time.perf_counter()
            try:
                regions = pipeline.regions([bgr], [Path(name).stem], channel_order="bgr")[0]
            except ImageError as error:  # e.g. too thin to resize (20000x20)
                raise DemoError(f"Cannot use this image: {name}: {error.reason}") from error
            seconds = time.perf_counter() - started
        found = Detection(
            key=key,
            image_bgr=bgr,
            regions=regions,
            object_names=tuple(pipeline.detector.object_names),
            attribute_names=tuple(pipeline.detector.attribute_names),
        )
        with self._lock:
            self._regions[key] = found
            while len(self._regions) > 1 and (
                len(self._regions) > REGION_CACHE_SIZE
                or sum(d.image_bgr.nbytes for d in self._regions.values()) > self._cache_bytes
            ):
                self._regions.popitem(last=False)
        return found, seconds

    def known(self, key: object) -> Detection | None:
        """The cached detection whose :attr:`Detection.key` is ``key`` (None once it has
        left the cache: the page then asks for a new run)."""
        with self._lock:
            return self._regions.get(key) if isinstance(key, tuple) else None  # type: ignore[arg-type]

    def ask(
        self, detection: Detection, questions: Sequence[str], settings: ModelSettings
    ) -> list[QuestionAnswers]:
        """The :data:`TOP_K` best answers to each question about ``detection``'s image: one
        LXMERT batch, no detector run."""
        pipeline = self._pipeline(settings)
        if pipeline.encoder.answers is None:
            raise DemoError(
                f"The encoder {settings.encoder} has no question-answering head "
                f"({pipeline.encoder.config.head}); choose one that answers questions."
            )
        with self.models.using(settings):
            results = pipeline.answer_regions([detection.regions], [list(questions)], top_k=TOP_K)
        # A list of questions gives a list of answers; top_k > 1 gives (answer, p) lists.
        ranked = cast("list[list[tuple[str, float]]]", results[0])
        return [
            QuestionAnswers(question, tuple((str(a), float(p)) for a, p in answers))
            for question, answers in zip(questions, ranked, strict=True)
        ]

    def respond(
        self,
        path: str | os.PathLike[str] | None,
        questions: str | None,
        settings: ModelSettings,
        *,
        name: str,
        shown: int,
    ) -> PageView:
        """Everything the page shows for one request: regions (detected once per image and
        settings), the picture with the ``shown`` strongest boxes, the table, and the answers
        to ``questions`` (one per line; None: boxes only).

        Raises:
            DemoError: empty or too many questions (checked before any image is read), bad
                image, models that cannot be loaded.
        """
        asked = (
            [] if questions is None else parse_questions(questions, limit=self.limits.max_questions)
        )
        detection, detector_s = self.detect_timed(path, settings, name=name)
        started = time.perf_counter()
        answers = self.ask(detection, asked, settings) if asked else []
        timing = Timing(detector_s, time.perf_counter() - started if asked else None)
        regions = detection.regions
        said = f"{len(asked)} question(s) answered by {settings.encoder}; " if asked else ""
        return PageView(
            detection=detection,
            picture=boxes_picture(detection, shown=shown),
            rows=region_rows(detection),
            answers=answers,
            status=(
                f"{name}: {regions.image_w}x{regions.image_h} pixels, {regions.num_boxes} "
                f"regions from {settings.detector}; {said}{timing.describe()}; "
                f"{self.describe_models()}"
            ),
            timing=timing,
        )

    def explain(
        self, detection: Detection, question: str, answer: str | None, settings: ModelSettings
    ) -> tuple[Explanation, float]:
        """Why ``settings``' encoder would give ``answer`` (None or ``""``: its top answer) to
        ``question`` about ``detection``'s image (:meth:`pipeline.api.Pipeline.
        explain_regions`, Chefer et al.'s relevance), and the seconds it took.

        Raises:
            DemoError: not one question, an encoder without a QA head, or an answer that is
                not one of the encoder's answers.
        """
        (asked,) = parse_questions(question, limit=1)
        pipeline = self._pipeline(settings)
        table = pipeline.encoder.answers
        if table is None or pipeline.encoder.config.head == "nlvr2":
            raise DemoError(
                f"The encoder {settings.encoder} has no question-answering head "
                f"({pipeline.encoder.config.head}); choose one that answers questions."
            )
        if answer and table.label(answer) is None:
            raise DemoError(
                f"Answer must be one of {settings.encoder}'s {len(table)} answers; "
                "pick one of its answers (the chart's), or leave it empty for the top one."
            )
        with self.models.using(settings):
            started = time.perf_counter()
            found = pipeline.explain_regions(detection.regions, asked, answer or None)
            return found, time.perf_counter() - started

    def judge(
        self,
        left: tuple[str | os.PathLike[str] | None, str],
        right: tuple[str | os.PathLike[str] | None, str],
        statements: str | None,
        settings: ModelSettings,
    ) -> tuple[Detection, Detection, list[Verdict], Timing]:
        """NLVR2: is each statement (one per line) true of the pair of images? ``left`` and
        ``right`` are (path, display name). Each image's regions come from :meth:`detect`
        (once per image and settings); the NLVR2 model runs once on all statements
        (:meth:`pipeline.api.Pipeline.judge_regions`). Also the seconds each model took.

        Raises:
            DemoError: no statement, a bad image, or an encoder that is not an NLVR2 model.
        """
        said = parse_questions(statements, limit=self.limits.max_questions, what="statement")
        first, first_s = self.detect_timed(left[0], settings, name=left[1])
        second, second_s = self.detect_timed(right[0], settings, name=right[1])
        pipeline = self._pipeline(settings)
        with self.models.using(settings):
            started = time.perf_counter()
            try:
                results = pipeline.judge_regions([first.regions], [second.regions], [said], top_k=2)
            except ValueError as error:  # not an NLVR2 model: the message says which to use
                raise DemoError(str(error)) from error
            timing = Timing(_added(first_s, second_s), time.perf_counter() - started)
        verdicts = cast("list[list[tuple[bool, float]]]", results[0])
        return (
            first,
            second,
            [
                Verdict(statement, dict(pairs)[True])
                for statement, pairs in zip(said, verdicts, strict=True)
            ],
            timing,
        )

    def explain_pair(
        self,
        pair: tuple[Detection, Detection],
        statement: str,
        verdict: bool | None,
        settings: ModelSettings,
    ) -> tuple[PairExplanation, float]:
        """Why the NLVR2 model would judge ``statement`` ``verdict`` (None: its own verdict)
        about ``pair`` (:func:`encoder.explain.explain_judgement`, regions labelled as on
        the page), and the seconds it took.

        Raises:
            DemoError: not one statement, or an encoder that is not an NLVR2 model.
        """
        from encoder.explain import explain_judgement

        (said,) = parse_questions(statement, limit=1, what="statement")
        pipeline = self._pipeline(settings)
        left, right = pair
        labels = tuple(
            region_labels(d.regions, d.object_names, d.attribute_names) for d in (left, right)
        )
        with self.models.using(settings):
            started = time.perf_counter()
            try:
                found = explain_judgement(
                    pipeline.encoder,
                    left.regions,
                    right.regions,
                    said,
                    verdict=verdict,
                    labels=(labels[0], labels[1]),
                )
            except ValueError as error:  # not an NLVR2 model: the message says which to use
                raise DemoError(str(error)) from error
            return found, time.perf_counter() - started

    def preload(self, start: StartModels) -> str:
        """Load ``start``'s models now, so the first request does not wait; returns why they
        could not be loaded (``""`` when they were, or when none are selected)."""
        if not start.detector or not start.encoder:
            return ""
        try:
            self._pipeline(ModelSettings(detector=start.detector, encoder=start.encoder))
        except DemoError as error:
            return str(error)
        return ""

    def describe_models(self) -> str:
        """Which models are loaded, and the device: for the page."""
        loaded = ", ".join(self.models.loaded()) or "none yet"
        return f"device {self.models.device}; loaded: {loaded}."

    def _pipeline(self, settings: ModelSettings) -> Pipeline:
        if not settings.detector or not settings.encoder:
            raise DemoError("No models are selected: choose a detector and an encoder.")
        try:
            return self.models.pipeline(settings)
        except (FileNotFoundError, KeyError, ValueError) as error:
            message = error.args[0] if isinstance(error, KeyError) and error.args else error
            raise DemoError(
                f"Cannot load {settings.detector} + {settings.encoder}: {message}"
            ) from error


def take_regions(regions: RegionFeatures, indices: Sequence[int]) -> RegionFeatures:
    """The regions at ``indices`` (in that order), every per-box array taken alike."""
    rows = np.asarray(indices, dtype=np.int64)
    return dataclasses.replace(
        regions,
        boxes=regions.boxes[rows],
        features=regions.features[rows],
        objects_id=regions.objects_id[rows],
        objects_conf=regions.objects_conf[rows],
        attrs_id=regions.attrs_id[rows],
        attrs_conf=regions.attrs_conf[rows],
    )


def strongest(regions: RegionFeatures, count: int) -> list[int]:
    """Indices of the ``count`` most confident regions (object confidence), strongest first;
    ties keep the detector's order."""
    order = np.argsort(-regions.objects_conf, kind="stable")
    return [int(i) for i in order[: max(0, count)]]


def boxes_picture(detection: Detection, *, shown: int, picked: int | None = None) -> np.ndarray:
    """The image with its ``shown`` most confident boxes labelled "attribute object
    confidence" (:func:`pipeline.extract.visualize.draw_regions`), RGB uint8 ``[H, W, 3]``; a small
    image is drawn enlarged (:func:`pipeline.extract.visualize.enlarged`) so its labels fit.

    ``picked`` (a region id, shown or not) is highlighted: everything outside its box is
    dimmed and its label is drawn last, on top.
    """
    names = {
        "object_names": detection.object_names,
        "attribute_names": detection.attribute_names,
    }
    image, regions = enlarged(detection.image_bgr, detection.regions)
    canvas = draw_regions(image, take_regions(regions, strongest(regions, shown)), **names)
    if picked is not None and 0 <= picked < regions.num_boxes:
        x1, y1, x2, y2 = (round(float(v)) for v in regions.boxes[picked])
        dimmed = (canvas.astype(np.float32) * _DIM).astype(np.uint8)
        dimmed[y1 : y2 + 1, x1 : x2 + 1] = canvas[y1 : y2 + 1, x1 : x2 + 1]
        canvas = draw_regions(dimmed, take_regions(regions, [picked]), **names)
    return np.ascontiguousarray(canvas[:, :, ::-1])


#: Column names of :func:`region_rows`.
REGION_COLUMNS = (
    "id",
    "object",
    "object conf",
    "attribute",
    "attribute conf",
    "x1",
    "y1",
    "x2",
    "y2",
)


def region_rows(detection: Detection) -> list[list[object]]:
    """One row per region in the detector's order: id, object, its confidence, attribute,
    its confidence, box x1 y1 x2 y2 (raw-image pixels, 1 decimal)."""
    regions = detection.regions

    def name(names: tuple[str, ...], index: int) -> str:
        return names[index] if 0 <= index < len(names) else str(index)

    return [
        [
            i,
            name(detection.object_names, int(regions.objects_id[i])),
            round(float(regions.objects_conf[i]), 4),
            name(detection.attribute_names, int(regions.attrs_id[i])),
            round(float(regions.attrs_conf[i]), 4),
            *(round(float(v), 1) for v in regions.boxes[i]),
        ]
        for i in range(regions.num_boxes)
    ]


def region_choices(detection: Detection) -> list[tuple[str, int]]:
    """``(label, id)`` per region for the "highlight" picker: ``"3: yellow circle 0.99"``."""
    regions = detection.regions
    labels = region_labels(regions, detection.object_names, detection.attribute_names)
    return [
        (f"{i}: {label} {float(regions.objects_conf[i]):.2f}", i) for i, label in enumerate(labels)
    ]
