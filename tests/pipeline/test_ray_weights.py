"""Which weights file a Ray actor loads (:func:`pipeline.engines.ray_weights.weights_for_actor`),
in this process as on a node: its node's own copy only when it is the driver's file, else the
shipped copy (kept per sha256). Fetching from the object store is tested on a real cluster in
``test_ray_engine.py``; nothing here imports Ray."""

from __future__ import annotations

import shutil
import socket
from pathlib import Path

import pytest

from pipeline.engines.ray_weights import (
    ActorWeights,
    ShippedCheckpoint,
    WeightsUnavailableError,
    shipped_cache_dir,
    weights_for_actor,
)
from weights import resolve_checkpoint, sha256_file

SHAPES = resolve_checkpoint("shapes-detector")


def _not_shipped(sha256: str) -> ShippedCheckpoint:
    """A shipped checkpoint whose object store copy must not be needed (files=None: fetching
    it would fail)."""
    return ShippedCheckpoint(name=SHAPES.name, sha256=sha256, files=None)


def test_the_nodes_own_copy_is_used_when_it_is_the_drivers_file(tmp_path: Path) -> None:
    digest = sha256_file(SHAPES)
    for detector in ("shapes-detector", str(SHAPES)):
        weights = ActorWeights(detector=detector, sha256=digest, shipped=_not_shipped(digest))
        assert weights_for_actor(weights, cache_dir=tmp_path) == SHAPES
    assert not any(tmp_path.iterdir())


def test_another_file_at_the_path_without_a_shipped_copy_names_node_and_digests(
    tmp_path: Path,
) -> None:
    other = tmp_path / "model.safetensors"
    other.write_bytes(b"another checkpoint")
    weights = ActorWeights(detector=str(other), sha256="ab" * 32, shipped=None)
    with pytest.raises(WeightsUnavailableError) as raised:
        weights_for_actor(weights, cache_dir=tmp_path / "cache")
    message = str(raised.value)
    assert message.startswith(f"node {socket.gethostname()}: --detector {other}: ")
    assert sha256_file(other) in message and "ab" * 32 in message
    assert "drop --no-ship-weights" in message


def test_a_name_the_node_cannot_resolve_without_a_shipped_copy_says_where_it_looked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("LXMERT_PIPELINE_WEIGHTS", raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    weights = ActorWeights(detector="vg-r101-c4-attr", sha256="ab" * 32, shipped=None)
    with pytest.raises(WeightsUnavailableError, match="not usable on this node") as raised:
        weights_for_actor(weights, cache_dir=tmp_path / "cache")
    assert "$LXMERT_PIPELINE_WEIGHTS: not set" in str(raised.value)


def test_a_whole_kept_copy_is_used_without_fetching(tmp_path: Path) -> None:
    digest = sha256_file(SHAPES)
    kept = tmp_path / digest / SHAPES.name
    kept.parent.mkdir()
    shutil.copyfile(SHAPES, kept)
    missing = tmp_path / "elsewhere" / SHAPES.name  # not on this node
    weights = ActorWeights(detector=str(missing), sha256=digest, shipped=_not_shipped(digest))
    assert weights_for_actor(weights, cache_dir=tmp_path) == kept


def test_the_cache_follows_xdg_cache_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert shipped_cache_dir() == tmp_path / "lxmert-pipeline" / "shipped"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert shipped_cache_dir() == Path.home() / ".cache" / "lxmert-pipeline" / "shipped"
