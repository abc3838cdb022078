"""Checksums pinned on first use: ``<hub cache>/lxmert-pipeline-checksums.json``.

The sha256 of a checkpoint file whose digest the registry does not know is recorded the first
time the file is used on a machine; later uses must match it. The file is replaced atomically
and updated under a file lock (``<lock file>.lock``), so processes pinning at the same time keep
all their pins. :mod:`weights.resolve` decides what to pin; this module keeps the pins.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Mapping
from pathlib import Path

from weights.files import atomic_write_text
from weights.registry import CheckpointRecord

#: Seconds to wait for another process that is updating the checksum lock file.
_LOCK_WAIT_S = 60.0


class ChecksumError(ValueError):
    """A checkpoint file's sha256 differs from the registry's or from the pinned one."""


def compare_and_pin(
    record: CheckpointRecord,
    files: Mapping[str, Path],
    digests: Mapping[str, str],
    path: Path,
) -> None:
    """Check ``digests`` (file name -> sha256) against the lock file and add the new ones.

    Readers need no lock (the file is replaced atomically). Writers read, merge and replace it
    while holding ``<lock file>.lock``, so two processes pinning at once both keep their pins.

    Args:
        record: the checkpoint the files belong to (pins are keyed ``<name>/<file>``).
        files: file name -> local path (for messages).
        digests: file name -> sha256 of the files to check and pin.
        path: the lock file (``weights.resolve.lock_file_path``).

    Raises:
        ChecksumError: a file differs from its pin, or the lock file is unreadable.
    """
    keys = {f"{record.name}/{name}": name for name in digests}
    pins = _read_lock(path)
    _compare_pins(record, files, digests, pins, path)
    if all(key in pins for key in keys):
        return
    from filelock import FileLock

    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with FileLock(f"{path}.lock", timeout=_LOCK_WAIT_S):
            pins = _read_lock(path)  # again: another process may have pinned meanwhile
            _compare_pins(record, files, digests, pins, path)
            new = {key: digests[name] for key, name in keys.items() if key not in pins}
            if new:
                _write_lock(path, {**pins, **new})
    except OSError as err:  # read-only cache, or the lock held too long (filelock.Timeout)
        warnings.warn(
            f"could not record checksums in {path} ({err}); files stay unpinned",
            stacklevel=4,
        )


def _compare_pins(
    record: CheckpointRecord,
    files: Mapping[str, Path],
    digests: Mapping[str, str],
    pins: Mapping[str, str],
    lock_path: Path,
) -> None:
    for name, digest in digests.items():
        key = f"{record.name}/{name}"
        pinned = pins.get(key)
        if pinned is not None and pinned != digest:
            raise ChecksumError(
                f"{files[name]}: sha256 {digest} does not match {pinned}, pinned for {key} in "
                f"{lock_path} when it was first used. If the file is corrupt, delete it and "
                f"run `python -m weights fetch {record.name}`; if you trust the new file, "
                f"remove the {key!r} entry from {lock_path}."
            )


def _read_lock(path: Path) -> dict[str, str]:
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        checksums = data["checksums"]
        if not all(isinstance(k, str) and isinstance(v, str) for k, v in checksums.items()):
            raise TypeError("checksums must map str to str")
    except (ValueError, KeyError, TypeError, AttributeError) as err:
        raise ChecksumError(
            f"checksum lock file {path} is unreadable ({err}); delete it to pin the files again"
        ) from err
    return dict(checksums)


def _write_lock(path: Path, checksums: Mapping[str, str]) -> None:
    """Replace the lock file atomically (readers see the old or the new one, never half)."""
    payload = {
        "comment": (
            "sha256 of checkpoint files first used on this machine (lxmert-pipeline, "
            "weights.resolve); later loads must match"
        ),
        "checksums": dict(sorted(checksums.items())),
    }
    atomic_write_text(path, json.dumps(payload, indent=2) + "\n")
