"""The manifest: a JSON file beside each output saying how it was made.

``out.tsv`` gets ``out.tsv.manifest.json``. It holds the detector (name, checkpoint path and
sha256, full config), the versions of Python and the libraries, the command, the engine that ran
it (``engine``: ``local`` or ``ray``, the torch thread count, and for Ray the cluster's address,
nodes and resources and the actor pool), the counts and every failed input with its reason. It
is written atomically (:mod:`weights.files`): once when the run starts (``"status":
"running"``) and again when it ends (``"finished"`` or ``"interrupted"``), so a killed run
leaves a manifest that says so.
"""

from __future__ import annotations

import datetime
import importlib.metadata
import json
import os
import platform
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from detector.config import PROPOSALS_BEFORE_THE_FIELD, resolve_proposals
from weights.files import atomic_write_text, longest_temporary_name

#: Version of the manifest's own layout.
MANIFEST_VERSION = 1

#: A run's state as its manifest says it (``merged`` for the output of ``merge``).
Status = Literal["running", "finished", "interrupted", "error", "merged"]


@dataclass(frozen=True)
class Failure:
    """One input that produced no record.

    Attributes:
        image_id: its id.
        path: the file (or ``""`` for in-memory sources).
        reason: why, in words (the decoder's or the detector's message).
    """

    image_id: str
    path: str
    reason: str

    def to_dict(self) -> dict[str, str]:
        """Plain dict for JSON."""
        return {"image_id": self.image_id, "path": self.path, "reason": self.reason}


#: The settings that change a record, as (name in the manifest's ``"settings"``, meaning). The
#: one list: ``--resume`` and ``merge`` compare exactly these, and the README prints them. A new
#: setting that changes records is added here, nowhere else. The torch thread count changes
#: only the last bits of CPU features, so it is recorded in the ``engine`` section instead and
#: runs at different counts may be resumed and merged.
RECORD_SETTINGS: tuple[tuple[str, str], ...] = (
    ("detector_sha256", "sha256 of the detector checkpoint file"),
    ("preset", "detector config preset"),
    ("selection", "box selection mode (bottom-up, max-class)"),
    ("proposals", "proposal layer"),
    ("min_boxes", "fewest boxes per image"),
    ("max_boxes", "most boxes per image"),
    ("conf_thresh", "bottom-up confidence threshold"),
    ("nms_thresh", "bottom-up per-class NMS IoU"),
    ("max_class_nms_thresholds", "max-class NMS IoU thresholds"),
    ("min_size", "short side after resizing"),
    ("max_size", "cap on the long side after resizing"),
    ("feature_dim", "feature dimension D"),
    ("precision", "numeric precision of the detector"),
    ("deterministic", "exact mode: batch-invariant, deterministic numerics (always on CPU)"),
    ("boxes_sha256", "sha256 of a given-boxes file"),
    ("coco_boxes", "COCO bbox to xyxy of a given-boxes file: exclusive x + w, inclusive x + w - 1"),
    ("clip", "given boxes clipped to the image (false: --no-clip, pooled as given)"),
)


def record_settings(
    config: Mapping[str, Any],
    *,
    detector_sha256: str | None,
    precision: str,
    deterministic: bool,
    boxes_sha256: str | None = None,
    coco_boxes: str | None = None,
    clip: bool | None = None,
) -> dict[str, Any]:
    """The :data:`RECORD_SETTINGS` of a run, from its detector config (``DetectorConfig.
    to_dict()``), checkpoint digest, precision, resolved exact mode
    (``ResolvedOptions.deterministic``) and given-boxes file digest (None: boxes were
    detected) and, for a COCO boxes file, its ``--coco-boxes`` (None otherwise), and whether
    given boxes were clipped to the image (None: boxes were detected)."""
    values: dict[str, Any] = {
        "detector_sha256": detector_sha256,
        "preset": config["name"],
        # The config's mode, auto resolved by its selection; a config recorded before the
        # field existed ran Detectron2's layer (detector.config, one rule for both).
        "proposals": resolve_proposals(
            config.get("proposals", PROPOSALS_BEFORE_THE_FIELD), config["selection"]
        ),
        "feature_dim": config["res2_channels"] * 8,
        "precision": precision,
        "deterministic": deterministic,
        "boxes_sha256": boxes_sha256,
        "coco_boxes": coco_boxes,
        "clip": clip,
    }
    for name, _ in RECORD_SETTINGS:
        if name not in values:
            value = config[name]
            values[name] = list(value) if isinstance(value, tuple) else value
    return {name: values[name] for name, _ in RECORD_SETTINGS}


def settings_differences(ours: Mapping[str, Any], theirs: Mapping[str, Any]) -> list[str]:
    """One line per :data:`RECORD_SETTINGS` entry whose values differ: ``name: A vs B``. A
    setting missing from ``theirs`` (an older manifest) counts as a difference."""
    lines = []
    missing = object()
    for name, meaning in RECORD_SETTINGS:
        mine, other = ours.get(name, missing), theirs.get(name, missing)
        if mine != other:
            shown = "(not recorded)" if other is missing else json.dumps(other, default=str)
            lines.append(f"{name} ({meaning}): {json.dumps(mine, default=str)} vs {shown}")
    return lines


def check_name_length(output: str | os.PathLike[str]) -> None:
    """Refuse an output whose name leaves no room for the files written beside it (the
    manifest's temporary file is the longest), before anything is created.

    Raises:
        ValueError: naming the output, the longest name and the folder's limit.
    """
    output = Path(output)
    folder = output.parent if output.parent.is_dir() else Path(".")
    try:
        limit = os.pathconf(folder, "PC_NAME_MAX")
    except (OSError, ValueError):
        limit = 255
    longest = longest_temporary_name(manifest_path(output).name)
    if len(os.fsencode(longest)) > limit:
        raise ValueError(
            f"--out {output}: the name is too long for the files written beside it (the "
            f"manifest's temporary name is {len(os.fsencode(longest))} bytes; this folder "
            f"allows {limit}); choose a shorter name"
        )


def manifest_path(output: str | os.PathLike[str]) -> Path:
    """``out.tsv`` -> ``out.tsv.manifest.json``."""
    output = Path(output)
    return output.with_name(output.name + ".manifest.json")


def ray_log_path(output: str | os.PathLike[str]) -> Path:
    """``out.tsv`` -> ``out.tsv.ray.log``: Ray's own output during an ``--engine ray`` run
    (appended run after run; not an input of merge or convert, which read the manifest)."""
    output = Path(output)
    return output.with_name(output.name + ".ray.log")


def _version(distribution: str) -> str | None:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


def library_versions() -> dict[str, str | None]:
    """Versions of Python, the libraries that shape the numbers, and this package.

    ``None`` means not installed (this package when run from a source checkout).
    """
    versions: dict[str, str | None] = {
        "python": platform.python_version(),
        "lxmert-pipeline": _version("lxmert-pipeline"),
    }
    for name in ("torch", "torchvision", "transformers", "numpy", "opencv-python-headless"):
        versions[name] = _version(name)
    versions["pillow"] = _version("pillow") or _version("Pillow")
    versions["h5py"] = _version("h5py")
    return versions


def now_utc() -> str:
    """The current time, ISO 8601 in UTC, to the second."""
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def write_manifest(path: str | os.PathLike[str], data: Mapping[str, Any]) -> Path:
    """Write ``data`` as indented JSON to ``path`` atomically; returns ``path``."""
    text = json.dumps(
        {"manifest_version": MANIFEST_VERSION, **data}, indent=2, sort_keys=False, default=str
    )
    return atomic_write_text(path, text + "\n")


#: A manifest as read back (JSON object).
Manifest = dict[str, Any]


def own_manifest(output: str | os.PathLike[str]) -> Manifest | None:
    """The manifest beside ``output`` if it is one this tool wrote (a JSON object with our
    ``manifest_version`` and ``status``), else None (absent, unreadable, or foreign)."""
    try:
        data = read_manifest(manifest_path(output))
    except (OSError, ValueError):
        return None
    ours = isinstance(data, dict) and data.get("manifest_version") == MANIFEST_VERSION
    return data if ours and "status" in data else None


def recorded_settings(manifest: Mapping[str, Any]) -> dict[str, Any] | None:
    """The :data:`RECORD_SETTINGS` a manifest records: its ``settings``, or for a manifest
    written before they were recorded, those derived from its detector section and its
    ``--autocast`` flag. None when it records neither (a merge of foreign files)."""
    if isinstance(manifest.get("settings"), dict):
        settings = dict(manifest["settings"])
        settings.setdefault("deterministic", _deterministic_before_it_was_recorded(manifest))
        settings.setdefault("coco_boxes", _coco_boxes_before_it_was_recorded(manifest))
        settings.setdefault("clip", _clip_before_it_was_recorded(manifest))
        return settings
    detector = manifest.get("detector")
    if not isinstance(detector, dict) or not isinstance(detector.get("config"), dict):
        return None
    return record_settings(
        detector["config"],
        detector_sha256=detector.get("sha256"),
        precision=_precision_before_it_was_recorded(manifest),
        deterministic=_deterministic_before_it_was_recorded(manifest),
    )


def _coco_boxes_before_it_was_recorded(manifest: Mapping[str, Any]) -> str | None:
    """A run from before ``--coco-boxes`` existed converted COCO boxes as ``x + w``."""
    given = manifest.get("given_boxes")
    return "exclusive" if isinstance(given, dict) and given.get("kind") == "coco" else None


def _clip_before_it_was_recorded(manifest: Mapping[str, Any]) -> bool | None:
    """A run from before ``--no-clip`` existed clipped its given boxes (None: detected)."""
    return True if isinstance(manifest.get("given_boxes"), dict) else None


def _deterministic_before_it_was_recorded(manifest: Mapping[str, Any]) -> bool:
    """Whether a run from before ``--deterministic`` existed was exact: every CPU run was
    (each image alone, fp32), no CUDA run was (TF32, batches)."""
    return not str(manifest.get("device", "")).startswith("cuda")


def _precision_before_it_was_recorded(manifest: Mapping[str, Any]) -> str:
    """The precision of a run from before manifests recorded it: its ``--autocast`` flag,
    which applied on CUDA only (``none`` and every CPU run were fp32)."""
    command = manifest.get("command")
    words = [str(word) for word in command] if isinstance(command, list) else []
    value = "none"
    for index, word in enumerate(words):
        if word == "--autocast" and index + 1 < len(words):
            value = words[index + 1]
        elif word.startswith("--autocast="):
            value = word.split("=", 1)[1]
    on_cuda = str(manifest.get("device", "")).startswith("cuda")
    return value if on_cuda and value in ("bf16", "fp16") else "fp32"


def read_manifest(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The manifest at ``path`` as a dict."""
    with open(path, encoding="utf-8") as stream:
        return json.load(stream)


def command_line() -> list[str]:
    """The command as the user typed it (program name and arguments)."""
    return [Path(sys.argv[0]).name, *sys.argv[1:]]
