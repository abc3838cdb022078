"""The work folder of a conversion that has not finished: ``OUT.partial``.

``extract_features convert`` writes its output inside ``OUT.partial/`` (beside ``OUT``, under
``OUT``'s lock) and moves it into place only when it is complete. The folder holds
``convert.json``, which marks it as ours (``"tool": "extract_features convert"``) and says
``"status": "running"``, what is being written (format and settings) and every input's
fingerprint (path, format, sha256). An interrupted conversion (Ctrl-C, a kill, a full disk)
leaves the folder; ``--resume`` continues it only when the inputs and settings are the same
(:func:`partial_differences`), ``--overwrite`` starts again, and a run with neither is refused.

Standard library only; what each format keeps of a partial output is the registry's
(``FormatSpec.resume``).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

#: What marks a work folder as a conversion's (``convert.json``'s ``tool``).
PARTIAL_TOOL = "extract_features convert"
#: The marker file inside the work folder.
PARTIAL_MARKER = "convert.json"


@dataclass(frozen=True)
class Fingerprint:
    """One input as a conversion saw it.

    Attributes:
        path: as given on the command line.
        format: the format it was read as (``pipeline.features.formats.registry.FORMATS``).
        sha256: of the file; of a folder, over each file's relative path and sha256.
    """

    path: str
    format: str
    sha256: str


def partial_path(output: str | os.PathLike[str]) -> Path:
    """``out.h5`` -> ``out.h5.partial`` (a folder), the work folder of its conversion."""
    output = Path(output)
    return output.with_name(output.name + ".partial")


def partial_record(
    *, output: Path, settings: Mapping[str, Any], inputs: Sequence[Fingerprint], started: str
) -> dict[str, Any]:
    """What ``convert.json`` says while a conversion runs."""
    return {
        "tool": PARTIAL_TOOL,
        "status": "running",
        "output": str(output),
        "started": started,
        "settings": dict(settings),
        "inputs": [{"path": x.path, "format": x.format, "sha256": x.sha256} for x in inputs],
    }


def read_partial(folder: Path) -> dict[str, Any] | None:
    """``convert.json`` of a work folder this tool made, else None (no marker, unreadable, or
    another tool's folder)."""
    try:
        data = json.loads((folder / PARTIAL_MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or data.get("tool") != PARTIAL_TOOL:
        return None
    return data


def partial_differences(
    recorded: Mapping[str, Any], settings: Mapping[str, Any], inputs: Sequence[Fingerprint]
) -> list[str]:
    """What differs between an interrupted conversion (its ``convert.json``) and this one:
    one line per setting, per input whose content or format changed, or the input count.
    Input paths may differ (a folder moved, a relative path): only their content counts."""
    lines = []
    old_settings = recorded.get("settings")
    old_settings = old_settings if isinstance(old_settings, dict) else {}
    for name, value in settings.items():
        if old_settings.get(name) != value:
            lines.append(f"{name}: {old_settings.get(name)!r} then, {value!r} now")
    old_inputs = recorded.get("inputs")
    old_inputs = old_inputs if isinstance(old_inputs, list) else []
    if len(old_inputs) != len(inputs):
        lines.append(f"inputs: {len(old_inputs)} then, {len(inputs)} now")
        return lines
    for number, (old, new) in enumerate(zip(old_inputs, inputs, strict=True), start=1):
        old = old if isinstance(old, dict) else {}
        if old.get("format") != new.format:
            lines.append(
                f"input {number} {new.path}: format {old.get('format')} then, {new.format} now"
            )
        elif old.get("sha256") != new.sha256:
            lines.append(
                f"input {number} {new.path}: its content changed (sha256 "
                f"{str(old.get('sha256'))[:12]}... then, {new.sha256[:12]}... now; it was "
                f"{old.get('path')})"
            )
    return lines
