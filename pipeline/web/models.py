"""Which models the page offers, and loading each one once.

A model is offered when it resolves on this machine without a download
(:func:`weights.locate_checkpoint` with ``download=False``): the registry's records, the names
registered with ``python -m weights register`` (original LXMERT checkpoints) and the
``--detector`` / ``--encoder`` values. The others are listed with the reason they do not.
Loaded models are kept by identity (real path and sha256 of what a name resolves to), a
bounded number of each, the least recently used dropped first.
"""

from __future__ import annotations

import dataclasses
import hashlib
import html
import os
import threading
from collections import OrderedDict
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from weights import CheckpointNotFoundError, UnknownCheckpointError, locate_checkpoint
from weights.command import UsageError
from weights.defaults import SHAPES_DETECTOR, SHAPES_ENCODER
from weights.registered import all_records
from weights.registry import CheckpointKind, CheckpointRecord

if TYPE_CHECKING:
    import torch

    from detector import Detector
    from detector.config import Selection
    from encoder.build import Encoder
    from pipeline.api import Pipeline

#: Detector variants (selection, box count) kept loaded; the oldest is dropped past this.
MAX_DETECTOR_VARIANTS = 3
#: Encoders kept loaded (a QA model and an NLVR2 model, and one more); the least recently
#: used is dropped past this.
MAX_ENCODERS = 3


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
        """The first line of :attr:`reason`, without a closing sentence that only introduces
        the lines after it (the resolver's "... was not found. Looked in:")."""
        first = self.reason.splitlines()[0].strip() if self.reason else ""
        if first.endswith(":"):
            first = first.rsplit(". ", 1)[0] if ". " in first else first.rstrip(":")
        return first


def _is_original(record: CheckpointRecord | None) -> bool:
    """Whether a name's record is one original LXMERT ``.pth`` (registered by you): no preset
    of its own, its kind's ``lxmert-original-*`` preset instead."""
    return record is not None and record.original is not None


def _checkpoint_of(name: str, kind: CheckpointKind, record: CheckpointRecord | None) -> str:
    """The checkpoint an encoder name means (a preset names its checkpoint); detectors and
    original ``.pth`` names: the name. ``record``: the name's registry record, if any."""
    if kind == "encoder" and not _is_original(record):
        from encoder.config import config_for

        return config_for(name).checkpoint
    return name


def check_model(
    name: str, kind: CheckpointKind, records: Mapping[str, CheckpointRecord] | None = None
) -> ModelChoice:
    """Whether ``name`` (registry name or path) resolves here, without downloading or hashing.
    ``records``: the registry as already read (default: read it now)."""
    record = (_records() if records is None else records).get(name)
    description = record.description if record is not None else ""
    if record is not None and record.kind != kind:
        return ModelChoice(name, kind, f"{name} is a {record.kind}, not a {kind}", description)
    try:
        checkpoint = _checkpoint_of(name, kind, record)
        locate_checkpoint(checkpoint, download=False, verify_checksums=False)
    except (CheckpointNotFoundError, UnknownCheckpointError, KeyError, ValueError) as error:
        message = str(error.args[0]) if isinstance(error, KeyError) and error.args else str(error)
        return ModelChoice(name, kind, message.strip(), description)
    return ModelChoice(name, kind, "", description)


def _records() -> Mapping[str, CheckpointRecord]:
    """The built-in and the registered names; a damaged registry file is a usage error."""
    try:
        return all_records()
    except ValueError as error:  # names the file and the remedy
        raise UsageError(str(error)) from error


def model_choices(kind: CheckpointKind, extra: Sequence[str] = ()) -> list[ModelChoice]:
    """Every registry model of ``kind`` (built in, then registered by you), then the ``extra``
    names or paths, each checked."""
    records = _records()
    names = [record.name for record in records.values() if record.kind == kind]
    names += [name for name in extra if name not in names]
    return [check_model(name, kind, records) for name in names]


def nlvr2_choices(extra: Sequence[str] = ()) -> list[ModelChoice]:
    """The encoder presets with an NLVR2 head, then the ``extra`` names or paths, checked."""
    from encoder.config import PRESETS

    names = [name for name, config in PRESETS.items() if config.head == "nlvr2"]
    names += [name for name in extra if name not in names]
    records = _records()
    return [check_model(name, "encoder", records) for name in names]


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


#: A loaded model's identity: (kind, real path, sha256, settings a name adds). Two
#: spellings of one file, or a registry name and the path it resolves to, are one model.
Identity = tuple[str, str, str, str]
#: A loaded detector: its identity, selection and box count.
DetectorKey = tuple[Identity, "Selection | None", "int | None"]
#: Names whose identity is remembered (with the files' sizes and times, so an unchanged
#: checkpoint is hashed once); past this the memory starts again.
MAX_REMEMBERED_NAMES = 64


def _files_of(path: Path) -> list[Path]:
    """The files that make a checkpoint: the file itself, or a directory's regular files."""
    if path.is_dir():
        return sorted(child for child in path.iterdir() if child.is_file())
    return [path]


def _signature(files: Sequence[Path]) -> tuple[tuple[str, int, int], ...]:
    return tuple((str(file), (stat := file.stat()).st_size, stat.st_mtime_ns) for file in files)


class ModelCache:
    """Loads each model once on ``device`` and hands out :class:`Pipeline` objects over them.

    Models are kept by identity (:data:`Identity`: the resolved file's real path and sha256),
    never by the name a request spelt, and at most ``max_detectors`` detector variants and
    ``max_encoders`` encoders are loaded: the least recently used is dropped when a new one
    is needed. Thread-safe: two requests never load the same model twice. On the CPU,
    :meth:`using` lets one request at a time run a given pipeline (torch already uses every
    core).
    """

    def __init__(
        self,
        *,
        device: torch.device,
        max_detectors: int = MAX_DETECTOR_VARIANTS,
        max_encoders: int = MAX_ENCODERS,
    ):
        self.device = device
        self._max_detectors = max_detectors
        self._max_encoders = max_encoders
        self._load_lock = threading.Lock()
        self._identities: dict[tuple[str, str], tuple[object, Identity]] = {}
        self._detectors: OrderedDict[DetectorKey, tuple[str, Detector]] = OrderedDict()
        self._encoders: OrderedDict[Identity, tuple[str, Encoder]] = OrderedDict()
        self._pipelines: dict[tuple[DetectorKey, Identity], Pipeline] = {}
        self._run_locks: dict[tuple[DetectorKey, Identity], threading.Lock] = {}

    def identity(self, name: str, kind: CheckpointKind) -> Identity:
        """What ``name`` loads, without downloading: kind, real path, sha256 (of a
        directory: of its files' names and digests) and, for encoders, the preset's settings.

        Raises:
            CheckpointNotFoundError: ``name`` does not resolve on this machine.
        """
        from weights import sha256_file

        record = _records().get(name)
        found = locate_checkpoint(
            _checkpoint_of(name, kind, record), download=False, verify_checksums=False
        )
        real = Path(os.path.realpath(found.path))
        files = _files_of(real)
        signature = _signature(files)
        remembered = self._identities.get((kind, name))
        if remembered is not None and remembered[0] == signature:
            return remembered[1]
        digest = hashlib.sha256()
        for file in files:
            digest.update(f"{file.name}\0{sha256_file(file)}\n".encode())
        settings = ""
        if kind == "encoder":
            from encoder.config import config_for

            preset = record.preset if record is not None and _is_original(record) else name
            settings = repr(dataclasses.replace(config_for(preset), checkpoint=""))
        identity = (kind, str(real), digest.hexdigest(), settings)
        if len(self._identities) >= MAX_REMEMBERED_NAMES:
            self._identities.clear()
        self._identities[(kind, name)] = (signature, identity)
        return identity

    def pipeline(self, settings: ModelSettings) -> Pipeline:
        """The pipeline for ``settings``, loading what is not loaded yet.

        Raises what :meth:`identity`, :func:`detector.load_detector` and
        :func:`encoder.build.load_encoder` raise (not found, checksum, bad settings).
        """
        from pipeline.api import Pipeline

        with self._load_lock:
            key = self._key(settings)
            known = self._pipelines.get(key)
            if known is not None:
                self._detectors.move_to_end(key[0])
                self._encoders.move_to_end(key[1])
                return known
            detector = self._detector(settings, key[0])
            encoder = self._encoder(settings, key[1])
            built = Pipeline(detector=detector, encoder=encoder, device=self.device)
            self._pipelines[key] = built
            return built

    def _key(self, settings: ModelSettings) -> tuple[DetectorKey, Identity]:
        detector = self.identity(settings.detector, "detector")
        return (detector, settings.selection, settings.boxes), self.identity(
            settings.encoder, "encoder"
        )

    def _detector(self, settings: ModelSettings, key: DetectorKey) -> Detector:
        if key in self._detectors:
            self._detectors.move_to_end(key)
            return self._detectors[key][1]
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
        self._detectors[key] = (settings.detector, detector)
        while len(self._detectors) > self._max_detectors:
            dropped, _ = self._detectors.popitem(last=False)
            self._forget(detector=dropped)
        return detector

    def _encoder(self, settings: ModelSettings, key: Identity) -> Encoder:
        if key in self._encoders:
            self._encoders.move_to_end(key)
            return self._encoders[key][1]
        from encoder.build import load_encoder

        encoder = load_encoder(settings.encoder, device=self.device)
        self._encoders[key] = (settings.encoder, encoder)
        while len(self._encoders) > self._max_encoders:
            dropped, _ = self._encoders.popitem(last=False)
            self._forget(encoder=dropped)
        return encoder

    def _forget(
        self, *, detector: DetectorKey | None = None, encoder: Identity | None = None
    ) -> None:
        """Drop the pipelines (and run locks) over a detector or encoder that was dropped."""
        for pair in [p for p in self._pipelines if detector == p[0] or encoder == p[1]]:
            del self._pipelines[pair]
            self._run_locks.pop(pair, None)

    @contextmanager
    def using(self, settings: ModelSettings) -> Iterator[None]:
        """Hold the run lock of ``settings``' models while running them (CPU only)."""
        if self.device.type != "cpu":
            yield
            return
        with self._load_lock:
            lock = self._run_locks.setdefault(self._key(settings), threading.Lock())
        with lock:
            yield

    def loaded(self) -> list[str]:
        """One line per loaded model, e.g. ``"detector shapes-detector (bottom-up, 4..16
        boxes)"``, for the page."""
        with self._load_lock:
            lines = [
                f"detector {name} ({det.config.selection}, {det.config.min_boxes}.."
                f"{det.config.max_boxes} boxes)"
                for name, det in self._detectors.values()
            ]
            lines += [f"encoder {name}" for name, _ in self._encoders.values()]
        return lines


def unique_choices(choices: Sequence[ModelChoice]) -> list[ModelChoice]:
    """``choices`` without repeats (an NLVR2 preset is both an encoder and an NLVR2 model)."""
    seen: set[tuple[str, str]] = set()
    kept = []
    for choice in choices:
        if (choice.name, choice.kind) not in seen:
            seen.add((choice.name, choice.kind))
            kept.append(choice)
    return kept


def models_html(choices: Sequence[ModelChoice]) -> str:
    """The model list: usable ones plain, the others greyed out with the reason."""
    items = []
    for choice in choices:
        name = html.escape(choice.name)
        if choice.available:
            description = html.escape(choice.description)
            items.append(f"<li><b>{name}</b> ({choice.kind}): {description}</li>")
        else:
            items.append(
                f'<li style="color:#999"><b>{name}</b> ({choice.kind}): not usable here: '
                f"<details><summary>{html.escape(choice.summary)}</summary>"
                f'<pre style="white-space:pre-wrap">{html.escape(choice.reason)}</pre>'
                "</details></li>"
            )
    return "<ul>" + "".join(items) + "</ul>"
