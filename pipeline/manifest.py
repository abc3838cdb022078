"""The manifest: a JSON file beside each output saying how it was made.

``out.tsv`` gets ``out.tsv.manifest.json``. It holds the detector (name, checkpoint path and
sha256, full config), the versions of Python and the libraries, the command, the counts and every
failed input with its reason. It is written atomically (:mod:`weights.files`):
once when the run starts (``"status": "running"``) and again when it ends (``"finished"`` or
``"interrupted"``), so a killed run leaves a manifest that says so.
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

from weights.files import atomic_write_text

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


def manifest_path(output: str | os.PathLike[str]) -> Path:
    """``out.tsv`` -> ``out.tsv.manifest.json``."""
    output = Path(output)
    return output.with_name(output.name + ".manifest.json")


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


def read_manifest(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The manifest at ``path`` as a dict."""
    with open(path, encoding="utf-8") as stream:
        return json.load(stream)


def command_line() -> list[str]:
    """The command as the user typed it (program name and arguments)."""
    return [Path(sys.argv[0]).name, *sys.argv[1:]]
