"""How each detector actor of the Ray engine gets the driver's weights.

An actor first resolves ``--detector`` on its own node: a registry name through the registry
(shipped models, ``$LXMERT_PIPELINE_WEIGHTS``, the Hugging Face cache; a download only when
nothing is shipped), a path as the same absolute path. It uses what it finds only if the
file's sha256 is the driver's: the manifest records the driver's digest, and a node holding
another file under that name or path would otherwise write other features without a word.

The fallback, when the run joins a cluster, is the driver's own weights file, put once per run
into Ray's object store (:func:`ship_checkpoint`). An actor that needs it checks its digest
and keeps it in its node's cache under that digest (:func:`shipped_cache_dir`), where later
actors on the node (restarted ones too) find it without fetching it again. Nothing else
travels: the actors' outputs are ids, never label names. With ``--no-ship-weights`` every
node is checked before the run starts (:func:`nodes_without`).

Ray is imported inside functions only: the extra is optional.
"""

from __future__ import annotations

import hashlib
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from detector.structures import CheckpointInfo
from weights import (
    CheckpointNotFoundError,
    ChecksumError,
    explicit_path,
    locate_checkpoint,
    sha256_file,
)
from weights.defaults import cache_dir
from weights.files import atomic_write_bytes


class WeightsUnavailableError(RuntimeError):
    """An actor's node has no copy of the driver's weights, and none was shipped (or the
    shipped copy could not be kept there)."""


@dataclass(frozen=True)
class ShippedCheckpoint:
    """The driver's weights file in Ray's object store.

    Attributes:
        name: the file's name (its suffix picks the reader).
        sha256: its hex digest, the manifest's ``detector_sha256``.
        data: ``ray.ObjectRef`` of its bytes as a uint8 array; fetched by an actor only
            when its node has no copy.
    """

    name: str
    sha256: str
    data: Any


@dataclass(frozen=True)
class ActorWeights:
    """Which weights every actor must load.

    Attributes:
        detector: ``--detector`` as the actors resolve it: a registry name, or the driver's
            checkpoint file by its absolute path.
        sha256: hex digest of the driver's weights file (the one the manifest records).
        shipped: the driver's copy in the object store, or None (``--no-ship-weights``, or
            a Ray instance started on the driver's machine, where it cannot help).
    """

    detector: str
    sha256: str
    shipped: ShippedCheckpoint | None


def actor_weights(detector: str, checkpoint: CheckpointInfo, *, ship: bool) -> ActorWeights:
    """The weights of a run whose ``--detector`` is ``detector`` and whose driver loaded
    ``checkpoint``; with ``ship``, the driver's file is put into the object store of the
    cluster this process has joined."""
    if checkpoint.path is None or checkpoint.sha256 is None:
        raise ValueError(f"the Ray engine needs a checkpoint file, not {checkpoint.name}")
    path = explicit_path(detector)
    return ActorWeights(
        detector=detector if path is None else str(path.absolute()),
        sha256=checkpoint.sha256,
        shipped=ship_checkpoint(Path(checkpoint.path), checkpoint.sha256) if ship else None,
    )


def shipped_cache_dir() -> Path:
    """Where an actor keeps shipped weights: ``shipped/`` in the project's cache
    (:func:`weights.defaults.cache_dir`), one folder per sha256. Never cleaned by us."""
    return cache_dir() / "shipped"


def ship_checkpoint(path: Path, sha256: str) -> ShippedCheckpoint:
    """Put the weights file ``path`` (whose digest is ``sha256``) into the object store of
    the cluster this process has joined. The file is mapped, not read into this process's
    memory first."""
    import ray

    data = ray.put(np.memmap(path, dtype=np.uint8, mode="r"))
    return ShippedCheckpoint(name=path.name, sha256=sha256, data=data)


def weights_for_actor(weights: ActorWeights, *, cache: Path | None = None) -> Path:
    """The local weights file this actor loads: its node's own copy when that is the
    driver's file, else the shipped copy, kept in ``cache`` (default
    :func:`shipped_cache_dir`).

    Raises:
        WeightsUnavailableError: not on this node (or another file there) and not shipped,
            or the shipped copy could not be checked or kept; the message names the node.
    """
    local, reason = on_this_node(weights)
    if local is not None:
        return local
    node = socket.gethostname()
    if weights.shipped is None:
        raise WeightsUnavailableError(
            f"node {node}: --detector {weights.detector}: {reason}. Put the checkpoint on "
            "every node (the registry's cache or $LXMERT_PIPELINE_WEIGHTS), or join the "
            "cluster without --no-ship-weights to send this machine's copy"
        )
    try:
        return _unpack(weights.shipped, cache or shipped_cache_dir())
    except OSError as error:
        raise WeightsUnavailableError(
            f"node {node}: --detector {weights.detector}: {reason}; and this machine's copy "
            f"could not be kept there ({error}). Free space or set XDG_CACHE_HOME to a "
            "writable folder on that node, or put the checkpoint there"
        ) from error


def file_state(path: Path) -> tuple[int, int, int] | None:
    """Inode, size and modification time of ``path`` (None if it is gone): a file replaced
    or rewritten in place shows another state."""
    try:
        info = path.stat()
    except OSError:
        return None
    return info.st_ino, info.st_size, info.st_mtime_ns


def on_this_node(weights: ActorWeights) -> tuple[Path | None, str]:
    """This node's copy of the driver's weights file, or None and why there is none. A
    download from the hub is tried only when nothing was shipped."""
    try:
        located = locate_checkpoint(weights.detector, download=weights.shipped is None)
        digest = located.sha256()
    except (CheckpointNotFoundError, ChecksumError, OSError, ValueError) as error:
        looked = str(error).split("\nTo get it:")[0]  # not the advice for a single machine
        return None, f"not usable on this node ({looked})"
    if digest != weights.sha256:
        return None, (
            f"this node's {located.path} has sha256 {digest}, the driver's file {weights.sha256}"
        )
    return located.path, ""


def _unpack(shipped: ShippedCheckpoint, cache: Path) -> Path:
    """The shipped weights file in ``cache/<sha256>/``: reused when already there and
    whole, else fetched from the object store, checked and written atomically."""
    target = cache / shipped.sha256 / shipped.name
    if target.is_file() and sha256_file(target) == shipped.sha256:
        return target
    import ray

    data: np.ndarray = ray.get(shipped.data)
    digest = hashlib.sha256(data.data).hexdigest()
    if digest != shipped.sha256:
        raise WeightsUnavailableError(
            f"node {socket.gethostname()}: the copy of {shipped.name} fetched from the object "
            f"store has sha256 {digest}, not the driver's {shipped.sha256}; run again"
        )
    target.parent.mkdir(parents=True, exist_ok=True)
    return atomic_write_bytes(target, data.data)


def nodes_without(weights: ActorWeights, *, cpus: float, gpus: int) -> list[str]:
    """Why each live node of the joined cluster with the resources of one actor (``cpus``,
    ``gpus``) lacks the driver's weights file (one line per such node; empty: all have it),
    checked by a task pinned to each node. Nodes no actor fits on (a head started with
    ``--num-cpus=0``, CPU nodes of a GPU run) are not asked."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    @ray.remote(num_cpus=0, max_retries=0)
    def check() -> str:
        local, reason = on_this_node(weights)
        return "" if local is not None else f"node {socket.gethostname()}: {reason}"

    nodes = [
        node["NodeID"]
        for node in ray.nodes()
        if node.get("Alive")
        and node["Resources"].get("CPU", 0.0) >= cpus
        and node["Resources"].get("GPU", 0.0) >= gpus
    ]
    pending = [
        check.options(scheduling_strategy=NodeAffinitySchedulingStrategy(node, soft=False)).remote()
        for node in nodes
    ]
    return [reason for reason in ray.get(pending) if reason]
