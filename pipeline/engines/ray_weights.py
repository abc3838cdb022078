"""How each detector actor of the Ray engine gets the driver's weights.

An actor first resolves ``--detector`` on its own node: a registry name through the registry
(shipped models, ``$LXMERT_PIPELINE_WEIGHTS``, the Hugging Face cache, a download), a path
as the same absolute path. It uses what it finds only if the file's sha256 is the driver's:
the manifest records the driver's digest, and a node holding another file under that name or
path would otherwise write other features without a word.

The fallback is the driver's own copy, put once per run into Ray's object store
(:func:`ship_checkpoint`; ``--no-ship-weights`` turns it off). An actor that needs it checks
its digest and keeps it in its node's cache under that digest (:func:`shipped_cache_dir`),
where later actors on the node (restarted ones too) find it without fetching it again.

Ray is imported inside functions only: the extra is optional.
"""

from __future__ import annotations

import hashlib
import os
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from detector.vocab import ATTRIBUTES_FILE, OBJECTS_FILE
from weights import CheckpointNotFoundError, ChecksumError, locate_checkpoint, sha256_file
from weights.files import atomic_write_bytes

#: Files beside the weights file that travel with it: the label names ``load_names`` reads.
COMPANION_FILES = (OBJECTS_FILE, ATTRIBUTES_FILE)


class WeightsUnavailableError(RuntimeError):
    """An actor's node has no copy of the driver's weights, and none was shipped (or the
    shipped copy could not be kept)."""


@dataclass(frozen=True)
class ShippedCheckpoint:
    """The driver's checkpoint in Ray's object store.

    Attributes:
        name: the weights file's name (its suffix picks the reader).
        sha256: its hex digest, the manifest's ``detector_sha256``.
        files: ``ray.ObjectRef`` of ``{file name: uint8 array}``: the weights file and the
            :data:`COMPANION_FILES` found beside it. Fetched by an actor only when needed.
    """

    name: str
    sha256: str
    files: Any


@dataclass(frozen=True)
class ActorWeights:
    """Which weights every actor must load.

    Attributes:
        detector: ``--detector`` as the actors resolve it: a registry name, or the driver's
            checkpoint file by its absolute path.
        sha256: hex digest of the driver's weights file (the one the manifest records).
        shipped: the driver's copy in the object store, or None (``--no-ship-weights``).
    """

    detector: str
    sha256: str
    shipped: ShippedCheckpoint | None


def shipped_cache_dir() -> Path:
    """Where an actor keeps shipped checkpoints, from its environment as it is now:
    ``$XDG_CACHE_HOME/lxmert-pipeline/shipped``, else ``~/.cache/lxmert-pipeline/shipped``
    (one folder per sha256)."""
    xdg = os.environ.get("XDG_CACHE_HOME") or os.path.join("~", ".cache")
    return Path(xdg).expanduser() / "lxmert-pipeline" / "shipped"


def ship_checkpoint(path: Path, sha256: str) -> ShippedCheckpoint:
    """Put the checkpoint file ``path`` (whose digest is ``sha256``) and its companion files
    into the object store of the cluster this process has joined. The weights are mapped,
    not read into this process's memory first."""
    import ray

    files: dict[str, np.ndarray] = {path.name: np.memmap(path, dtype=np.uint8, mode="r")}
    for name in COMPANION_FILES:
        if (path.parent / name).is_file():
            files[name] = np.frombuffer((path.parent / name).read_bytes(), dtype=np.uint8)
    return ShippedCheckpoint(name=path.name, sha256=sha256, files=ray.put(files))


def weights_for_actor(weights: ActorWeights, *, cache_dir: Path | None = None) -> Path:
    """The local weights file this actor loads: its node's own copy when that is the
    driver's file, else the shipped copy, kept in ``cache_dir`` (default
    :func:`shipped_cache_dir`).

    Raises:
        WeightsUnavailableError: not on this node (or another file there) and not shipped,
            or the shipped copy could not be checked or kept; the message names the node.
    """
    local, reason = _on_this_node(weights)
    if local is not None:
        return local
    node = socket.gethostname()
    if weights.shipped is None:
        raise WeightsUnavailableError(
            f"node {node}: --detector {weights.detector}: {reason}; and --no-ship-weights "
            "was given. Put the checkpoint on every node (the registry's cache or "
            "$LXMERT_PIPELINE_WEIGHTS) or drop --no-ship-weights to send the driver's copy"
        )
    try:
        return _unpack(weights.shipped, cache_dir or shipped_cache_dir())
    except OSError as error:
        raise WeightsUnavailableError(
            f"node {node}: --detector {weights.detector}: {reason}; and the driver's copy "
            f"could not be kept there ({error}). Set XDG_CACHE_HOME on that node to a "
            "writable folder, or put the checkpoint there"
        ) from error


def _on_this_node(weights: ActorWeights) -> tuple[Path | None, str]:
    """This node's copy of the driver's weights file, or None and why there is none."""
    try:
        located = locate_checkpoint(weights.detector)
    except (CheckpointNotFoundError, ChecksumError) as error:
        return None, f"not usable on this node ({error})"
    digest = located.sha256()
    if digest != weights.sha256:
        return None, (
            f"this node's {located.path} has sha256 {digest}, the driver's file {weights.sha256}"
        )
    return located.path, ""


def _unpack(shipped: ShippedCheckpoint, cache_dir: Path) -> Path:
    """The shipped weights file in ``cache_dir/<sha256>/``: reused when already there and
    whole, else fetched from the object store, checked and written (companions first, so a
    whole weights file means its companions are there too)."""
    folder = cache_dir / shipped.sha256
    target = folder / shipped.name
    if target.is_file() and sha256_file(target) == shipped.sha256:
        return target
    import ray

    files: dict[str, np.ndarray] = ray.get(shipped.files)
    digest = hashlib.sha256(files[shipped.name].data).hexdigest()
    if digest != shipped.sha256:
        raise WeightsUnavailableError(
            f"the shipped {shipped.name} has sha256 {digest}, not the driver's {shipped.sha256}"
        )
    folder.mkdir(parents=True, exist_ok=True)
    for name in sorted(files, key=lambda name: name == shipped.name):
        atomic_write_bytes(folder / name, files[name].data)
    return target
