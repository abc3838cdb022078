"""``lxmert-finetune train --resume`` continues only the run it was given: the checkpoint
records the run's inputs (train and valid files, feature stores, ``--answers``, ``--from``,
``--tiny``/``--limit-questions``), each file as a
:class:`~pipeline.features.fingerprint.Fingerprint`, and its recipe; a resume with any difference is
refused (exit 2) naming the field and both values, before any model loads."""

from __future__ import annotations

import sys
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING

from pipeline.errors import UsageError
from pipeline.features.fingerprint import fingerprint

if TYPE_CHECKING:
    from pipeline.commands.finetune.command import TrainSettings

#: The inputs a checkpoint records, by field, with the flag that gives each.
INPUT_FLAGS: dict[str, str] = {
    "train": "--train",
    "valid": "--valid",
    "features": "--features",
    "answers": "--answers",
    "from": "--from",
    "subset": "--tiny/--limit-questions",
}


def _files(paths: Sequence[Path]) -> list[dict[str, object]]:
    # Resolved: the same files resumed from another working directory are the same inputs.
    return [fingerprint(path.resolve()).to_dict() for path in paths]


def _source(source: str) -> list[dict[str, object]]:
    """A model folder's top-level files, a model file, or a registry name (its files are
    pinned by sha256 in the registry, so the name is its identity)."""
    path = Path(source)
    if path.is_dir():
        return _files(sorted(p for p in path.iterdir() if p.is_file()))
    if path.is_file():
        return _files([path])
    return [{"name": source}]


def run_inputs(settings: TrainSettings) -> dict[str, object]:
    """What the checkpoint records of the run's inputs (JSON-ready), by field of
    :data:`INPUT_FLAGS`."""
    return {
        "train": _files(settings.train),
        "valid": _files([settings.valid] if settings.valid else []),
        "features": _files(settings.features),
        "answers": _files([settings.answers] if settings.answers else []),
        "from": _source(settings.source),
        # [] for all the data, which is what a checkpoint from before these flags holds.
        "subset": settings.subset.recorded(),
    }


def _shown(value: object) -> str:
    """Recorded files as one line: path, size, mtime and edge hash of each."""
    if not isinstance(value, list) or not value:
        return "none"
    parts = []
    for item in value:
        if isinstance(item, dict) and "path" in item:
            parts.append(
                f"{item['path']} ({item.get('size')} bytes, mtime_ns {item.get('mtime_ns')}, "
                f"edges sha256 {str(item.get('edges_sha256'))[:12]})"
            )
        else:
            parts.append(str(item.get("name") if isinstance(item, dict) else item))
    return ", ".join(parts)


def _recipe_difference(
    recorded: Mapping[str, object], recipe: Mapping[str, object], *, out: Path
) -> str | None:
    """The refusal for the first setting of ``recipe`` that the checkpoint holds otherwise."""
    for name, value in recipe.items():
        old = recorded.get(name)
        if old == value:
            continue
        if name == "epochs":
            return (
                f"epochs: {old} -> {value}; a run's learning-rate schedule ends at its last "
                f"epoch, so it is not extended. To train further, start a new run with "
                f"--from {out} and another --out"
            )
        return f"{name}: {old} -> {value}; resume with the same flags, or start afresh"
    return None


def check_resume(
    settings: TrainSettings, *, checkpoint: Path, inputs: Mapping[str, object]
) -> None:
    """Refuse (:class:`UsageError`, exit 2) a ``--resume`` whose recipe or inputs differ from
    those ``checkpoint`` was written with; nothing to check without ``--resume`` or a
    checkpoint. A checkpoint from before inputs were recorded is resumed with a warning."""
    if not settings.resume or not checkpoint.is_file():
        return
    from encoder.finetune import load_checkpoint

    try:
        state = load_checkpoint(checkpoint, mmap=True)
    except (OSError, RuntimeError, ValueError) as error:
        raise UsageError(
            f"--resume: {checkpoint} cannot be read ({error}); start afresh in another --out"
        ) from None
    refusal = _recipe_difference(state.config, asdict(settings.recipe), out=settings.out)
    if refusal is not None:
        raise UsageError(f"--resume: {checkpoint} was written with other settings: {refusal}")
    if not state.inputs:
        print(
            f"warning: {checkpoint} records no inputs (an older version wrote it); the data "
            "is not checked against the first run's",
            file=sys.stderr,
        )
        return
    for name, flag in INPUT_FLAGS.items():
        old, new = state.inputs.get(name, []), inputs.get(name, [])
        if old != new:
            raise UsageError(
                f"--resume: {flag} is not what {checkpoint} was trained on: {name}: "
                f"{_shown(old)} -> {_shown(new)}; resume with the same files, unchanged, or "
                "start a new run in another --out"
            )
