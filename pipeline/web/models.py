"""Which models the page offers, and loading each one once.

A model is offered when it resolves on this machine without a download
(:func:`weights.locate_checkpoint` with ``download=False``): the registry's records and the
``--detector`` / ``--encoder`` values. The others are listed with the reason they do not.
Loaded models are kept: a detector per (name, selection, box count), an encoder per name.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING

from weights import CheckpointNotFoundError, UnknownCheckpointError, locate_checkpoint
from weights.defaults import SHAPES_DETECTOR, SHAPES_ENCODER
from weights.registry import REGISTRY, CheckpointKind

if TYPE_CHECKING:
    import torch

    from detector import Detector
    from detector.config import Selection
    from encoder.build import Encoder
    from pipeline.api import Pipeline

#: Detector variants (selection, box count) kept loaded; the oldest is dropped past this.
MAX_DETECTOR_VARIANTS = 3


@dataclass(frozen=True)
class ModelChoice:
    """One model the page lists.

    Attributes:
        name: registry name, or the path given on the command line.
        kind: ``detector`` or ``encoder``.
        reason: why it cannot be used here (the resolver's message: where it looked, how to
            get it); ``""`` when it resolves.
        description: the registry's description (``""`` for a path).
    """

    name: str
    kind: CheckpointKind
    reason: str
    description: str

    @property
    def available(self) -> bool:
        """Whether it resolves on this machine."""
        return not self.reason

    @property
    def summary(self) -> str:
        """The first line of :attr:`reason`."""
        return self.reason.splitlines()[0] if self.reason else ""


def _checkpoint_of(name: str, kind: CheckpointKind) -> str:
    """The checkpoint an encoder name means (a preset names its checkpoint); detectors: name."""
    if kind == "encoder":
        from encoder.config import config_for

        return config_for(name).checkpoint
    return name


def check_model(name: str, kind: CheckpointKind) -> ModelChoice:
    """Whether ``name`` (registry name or path) resolves here, without downloading or hashing."""
    record = REGISTRY.get(name)
    description = record.description if record is not None else ""
    if record is not None and record.kind != kind:
        return ModelChoice(name, kind, f"{name} is a {record.kind}, not a {kind}", description)
    try:
        locate_checkpoint(_checkpoint_of(name, kind), download=False, verify_checksums=False)
    except (CheckpointNotFoundError, UnknownCheckpointError, KeyError, ValueError) as error:
        message = str(error.args[0]) if isinstance(error, KeyError) and error.args else str(error)
        return ModelChoice(name, kind, message.strip(), description)
    return ModelChoice(name, kind, "", description)


def model_choices(kind: CheckpointKind, extra: Sequence[str] = ()) -> list[ModelChoice]:
    """Every registry model of ``kind``, then the ``extra`` names or paths, each checked."""
    names = [record.name for record in REGISTRY.values() if record.kind == kind]
    names += [name for name in extra if name not in names]
    return [check_model(name, kind) for name in names]


def nlvr2_choices(extra: Sequence[str] = ()) -> list[ModelChoice]:
    """The encoder presets with an NLVR2 head, then the ``extra`` names or paths, checked."""
    from encoder.config import PRESETS

    names = [name for name, config in PRESETS.items() if config.head == "nlvr2"]
    names += [name for name in extra if name not in names]
    return [check_model(name, "encoder") for name in names]


@dataclass(frozen=True)
class StartModels:
    """The models the page starts with.

    Attributes:
        detector, encoder: names to select first (``""`` when nothing resolves).
        notice: why these are not the ones asked for (``""`` when they are), for the page.
    """

    detector: str
    encoder: str
    notice: str


def start_models(
    detector: str, encoder: str, detectors: Sequence[ModelChoice], encoders: Sequence[ModelChoice]
) -> StartModels:
    """``detector`` and ``encoder`` when both resolve; else the shipped shapes pair (else the
    first that resolve), with a notice that names what did not resolve and why."""
    wanted = {choice.name: choice for choice in (*detectors, *encoders)}
    missing = [wanted[name] for name in (detector, encoder) if not wanted[name].available]
    if not missing:
        return StartModels(detector, encoder, "")

    def fallback(choices: Sequence[ModelChoice], shapes: str) -> str:
        usable = [choice.name for choice in choices if choice.available]
        return shapes if shapes in usable else (usable[0] if usable else "")

    start_detector = fallback(detectors, SHAPES_DETECTOR)
    start_encoder = fallback(encoders, SHAPES_ENCODER)
    why = "; ".join(choice.summary for choice in missing)
    offered = (
        f"offering {start_detector} + {start_encoder} instead"
        if start_detector and start_encoder
        else "and no other pair resolves either"
    )
    fetch = " ".join(f"python -m weights fetch {choice.name};" for choice in missing)
    return StartModels(
        start_detector,
        start_encoder,
        f"The models asked for are not on this machine ({why}); {offered}. "
        f"To get them on a machine with internet: {fetch.rstrip(';')} (where this machine "
        "looked, and other ways: Settings, below).",
    )


@dataclass(frozen=True)
class ModelSettings:
    """What a request runs with.

    Attributes:
        detector: registry name or checkpoint path.
        encoder: registry name, preset or ``save_pretrained`` directory.
        selection: box selection (``bottom-up``/``max-class``); None: the checkpoint's own.
        boxes: exactly this many regions per image (like ``--boxes``); None: the checkpoint's
            own range.
    """

    detector: str
    encoder: str
    selection: Selection | None = None
    boxes: int | None = None

    def detector_key(self) -> tuple[str, str | None, int | None]:
        """What makes one loaded detector differ from another."""
        return (self.detector, self.selection, self.boxes)


class ModelCache:
    """Loads each model once on ``device`` and hands out :class:`Pipeline` objects over them.

    Thread-safe: two requests never load the same model twice. On the CPU, :meth:`using`
    lets one request at a time run a given pipeline (torch already uses every core).
    """

    def __init__(self, *, device: torch.device, max_detectors: int = MAX_DETECTOR_VARIANTS):
        self.device = device
        self._max_detectors = max_detectors
        self._load_lock = threading.Lock()
        self._detectors: OrderedDict[tuple[str, str | None, int | None], Detector] = OrderedDict()
        self._encoders: dict[str, Encoder] = {}
        self._pipelines: dict[tuple[str, str | None, int | None, str], Pipeline] = {}
        self._run_locks: dict[tuple[str, str | None, int | None, str], threading.Lock] = {}

    def pipeline(self, settings: ModelSettings) -> Pipeline:
        """The pipeline for ``settings``, loading what is not loaded yet.

        Raises what :func:`detector.load_detector` and :func:`encoder.build.load_encoder`
        raise (not found, checksum, bad settings).
        """
        from pipeline.api import Pipeline

        key = (*settings.detector_key(), settings.encoder)
        with self._load_lock:
            known = self._pipelines.get(key)
            if known is not None:
                return known
            detector = self._detector(settings)
            encoder = self._encoders.get(settings.encoder)
            if encoder is None:
                from encoder.build import load_encoder

                encoder = load_encoder(settings.encoder, device=self.device)
                self._encoders[settings.encoder] = encoder
            built = Pipeline(detector=detector, encoder=encoder, device=self.device)
            self._pipelines[key] = built
            return built

    def _detector(self, settings: ModelSettings) -> Detector:
        key = settings.detector_key()
        if key in self._detectors:
            self._detectors.move_to_end(key)
            return self._detectors[key]
        from detector import InferenceOptions, load_detector

        overrides: dict[str, object] = {}
        if settings.selection is not None:
            overrides["selection"] = settings.selection
        if settings.boxes is not None:
            overrides["min_boxes"] = overrides["max_boxes"] = settings.boxes
        detector = load_detector(
            settings.detector,
            overrides=overrides or None,
            options=InferenceOptions(device=self.device),
        )
        self._detectors[key] = detector
        while len(self._detectors) > self._max_detectors:
            dropped, _ = self._detectors.popitem(last=False)
            for stale in [k for k in self._pipelines if k[:3] == dropped]:
                del self._pipelines[stale]
        return detector

    @contextmanager
    def using(self, settings: ModelSettings) -> Iterator[None]:
        """Hold the run lock of ``settings``' models while running them (CPU only)."""
        if self.device.type != "cpu":
            yield
            return
        key = (*settings.detector_key(), settings.encoder)
        with self._load_lock:
            lock = self._run_locks.setdefault(key, threading.Lock())
        with lock:
            yield

    def loaded(self) -> list[str]:
        """One line per loaded model, e.g. ``"detector shapes-detector (bottom-up, 4..16
        boxes)"``, for the page."""
        with self._load_lock:
            lines = [
                f"detector {name} ({det.config.selection}, {det.config.min_boxes}.."
                f"{det.config.max_boxes} boxes)"
                for (name, _, _), det in self._detectors.items()
            ]
            lines += [f"encoder {name}" for name in self._encoders]
        return lines
