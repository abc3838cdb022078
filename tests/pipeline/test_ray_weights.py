"""Which weights file a Ray actor loads
(:func:`pipeline.extract.engines.ray_weights.weights_for_actor`), in this process as on a node: its
node's own copy only when it is the driver's file, else the shipped copy (kept per sha256). Fetching
from the object store is tested on a real cluster in ``test_ray_engine.py``; nothing here starts
Ray."""

from __future__ import annotations

import shutil
import socket
from pathlib import Path

import pytest

from detector.structures import CheckpointInfo
from pipeline.commands.extract import build_parser
from pipeline.extract.engines.ray import ActorPlan, RayEngine
from pipeline.extract.engines.ray_weights import (
    ActorWeights,
    ShippedCheckpoint,
    WeightsUnavailableError,
    actor_weights,
    file_state,
    shipped_cache_dir,
    weights_for_actor,
)
from pipeline.extract.settings import validate
from weights import resolve_checkpoint, sha256_file

SHAPES = resolve_checkpoint("shapes-detector")


def _not_shipped(sha256: str) -> ShippedCheckpoint:
    """A shipped checkpoint whose object store copy must not be needed (files=None: fetching
    it would fail)."""
    return ShippedCheckpoint(name=SHAPES.name, sha256=sha256, data=None)


def test_the_nodes_own_copy_is_used_when_it_is_the_drivers_file(tmp_path: Path) -> None:
    digest = sha256_file(SHAPES)
    for detector in ("shapes-detector", str(SHAPES)):
        weights = ActorWeights(detector=detector, sha256=digest, shipped=_not_shipped(digest))
        assert weights_for_actor(weights, cache=tmp_path) == SHAPES
    assert not any(tmp_path.iterdir())


def test_another_file_at_the_path_without_a_shipped_copy_names_node_and_digests(
    tmp_path: Path,
) -> None:
    other = tmp_path / "model.safetensors"
    other.write_bytes(b"another checkpoint")
    weights = ActorWeights(detector=str(other), sha256="ab" * 32, shipped=None)
    with pytest.raises(WeightsUnavailableError) as raised:
        weights_for_actor(weights, cache=tmp_path / "cache")
    message = str(raised.value)
    assert message.startswith(f"node {socket.gethostname()}: --detector {other}: ")
    assert sha256_file(other) in message and "ab" * 32 in message
    assert "without --no-ship-weights to send this machine's copy" in message


def test_a_name_the_node_cannot_resolve_without_a_shipped_copy_says_where_it_looked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for variable in ("LXMERT_PIPELINE_WEIGHTS", "HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
        monkeypatch.delenv(variable, raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    weights = ActorWeights(detector="vg-r101-c4-attr", sha256="ab" * 32, shipped=None)
    with pytest.raises(WeightsUnavailableError, match="not usable on this node") as raised:
        weights_for_actor(weights, cache=tmp_path / "cache")
    assert "$LXMERT_PIPELINE_WEIGHTS: not set" in str(raised.value)


def test_a_whole_kept_copy_is_used_without_fetching(tmp_path: Path) -> None:
    digest, kept = _kept(tmp_path)
    missing = tmp_path / "elsewhere" / SHAPES.name  # not on this node
    weights = ActorWeights(detector=str(missing), sha256=digest, shipped=_not_shipped(digest))
    assert weights_for_actor(weights, cache=tmp_path) == kept


def _kept(cache: Path) -> tuple[str, Path]:
    """A whole kept copy of the shapes detector in ``cache``: its digest and path."""
    digest = sha256_file(SHAPES)
    kept = cache / digest / SHAPES.name
    kept.parent.mkdir(parents=True)
    shutil.copyfile(SHAPES, kept)
    return digest, kept


@pytest.mark.parametrize("what", ["another file", "a folder"])
def test_something_else_at_the_path_falls_back_to_the_kept_copy(tmp_path: Path, what: str) -> None:
    digest, kept = _kept(tmp_path / "cache")
    here = tmp_path / "model.safetensors"
    if what == "a folder":
        here.mkdir()
    else:
        here.write_bytes(b"another checkpoint")
    weights = ActorWeights(detector=str(here), sha256=digest, shipped=_not_shipped(digest))
    assert weights_for_actor(weights, cache=tmp_path / "cache") == kept


def test_the_actors_get_a_registry_name_as_a_name_and_a_path_absolute(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    Path("shapes-detector").write_bytes(b"a file named like a registry checkpoint")
    shutil.copyfile(SHAPES, "model.safetensors")
    info = CheckpointInfo(name="x", path=str(SHAPES), sha256="ab" * 32, preset="shapes")
    by_name = actor_weights("shapes-detector", info, ship=False)
    assert by_name == ActorWeights(detector="shapes-detector", sha256="ab" * 32, shipped=None)
    assert actor_weights("model.safetensors", info, ship=False).detector == str(
        tmp_path / "model.safetensors"
    )
    monkeypatch.setenv("HOME", str(tmp_path))
    assert actor_weights("~/model.safetensors", info, ship=False).detector == str(
        tmp_path / "model.safetensors"
    )


def test_a_ray_instance_started_here_ships_nothing(tmp_path: Path) -> None:
    """Without --ray-address the actors run on this machine, in this environment."""
    pytest.importorskip("ray.data")  # --engine ray is refused without the extra
    argv = [str(tmp_path), "--out", str(tmp_path / "x.tsv"), "--detector", str(SHAPES)]
    settings = validate(build_parser().parse_args([*argv, "--engine", "ray"]))
    engine = RayEngine(
        settings=settings,
        address="127.0.0.1:1",
        resources={"CPU": 2.0},
        nodes=1,
        pool=ActorPlan(actors=1, cpus=1.0, gpus=0),
    )
    info = CheckpointInfo(name="x", path=str(SHAPES), sha256=sha256_file(SHAPES), preset="shapes")
    ready = engine.prepare(info)
    assert ready.weights == ActorWeights(
        detector=str(SHAPES), sha256=sha256_file(SHAPES), shipped=None
    )
    assert ready.describe()["ship_weights"] is False


def test_a_file_replaced_or_rewritten_shows_another_state(tmp_path: Path) -> None:
    path = tmp_path / "model.safetensors"
    path.write_bytes(b"weights")
    before = file_state(path)
    assert before is not None and file_state(path) == before
    replacement = tmp_path / "new"
    replacement.write_bytes(b"weights")
    replacement.replace(path)  # what an atomic write does
    assert file_state(path) != before
    path.unlink()
    assert file_state(path) is None


def test_the_cache_follows_xdg_cache_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert shipped_cache_dir() == tmp_path / "lxmert-pipeline" / "shipped"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert shipped_cache_dir() == Path.home() / ".cache" / "lxmert-pipeline" / "shipped"
