"""``extract_features --engine ray`` on one local Ray cluster (2 CPUs, no dashboard), started
once for this module and stopped at its end, with the shipped shapes-world detector on the
images of ``examples/``. Every Ray run is a subprocess given the cluster's address; the
reference of each is the local engine on the same inputs at the same ``--threads``. Usage
errors found before Ray is joined run ``main(argv)`` in this process and start no cluster."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

pytest.importorskip("ray.data")

from gated_driver import gated_command

from pipeline.commands.extract import main as extract_features
from pipeline.errors import UsageError
from pipeline.extract.engines.ray import InOrder, plan_actors
from pipeline.extract.settings import RaySettings
from pipeline.features.formats.h5 import h5_ids
from pipeline.features.manifest import manifest_path
from weights import sha256_file

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = sorted((ROOT / "examples").glob("scene_*.png"))
DETECTOR = ("--detector", "shapes-detector", "--threads", "1", "--device", "cpu", "--workers", "0")
#: Marks the cluster's processes (they inherit it) so that the module can find and end them.
MARKER = "LXMERT_RAY_TEST_CLUSTER"
ACTOR_TITLE = b"DetectRegions"
#: The cluster's actors import this folder's sitecustomize: a gate a test can close.
ACTOR_GATE = Path(__file__).with_name("ray_gate")
Popen = subprocess.Popen[str]


@dataclass(frozen=True)
class Cluster:
    address: str
    marker: str
    token: str
    """The cluster's own token (RAY_AUTH_TOKEN): whether Ray turns token authentication on
    depends on ~/.ray/auth_token, which any earlier ray.init() on the machine creates."""
    node_cache: Path | None = None
    """The workers' XDG_CACHE_HOME. The cluster's nodes have no weights of their own: no
    $LXMERT_PIPELINE_WEIGHTS, an empty Hugging Face cache and HF_HUB_OFFLINE."""
    gate: Path | None = None
    """While ``gate/hold`` exists, each actor call waits (``ray_gate/sitecustomize.py``)."""


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _environments() -> Iterator[tuple[int, list[bytes]]]:
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                yield int(entry.name), (entry / "environ").read_bytes().split(b"\0")
            except OSError:
                continue


def _parents() -> dict[int, int]:
    """Process id -> parent id, for every process."""
    parents = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError, IndexError, ValueError):
                stat = (entry / "stat").read_text()
                parents[int(entry.name)] = int(stat.rsplit(")", 1)[1].split()[1])
    return parents


def _pids_with(marker: str) -> list[int]:
    """The cluster's processes: those whose environment holds ``MARKER=marker`` (inherited
    from ``ray start``) and all their descendants (a process title as long as the agents'
    overwrites the environment that /proc shows, so the marker alone misses them)."""
    needle = f"{MARKER}={marker}".encode()
    found = {pid for pid, environ in _environments() if needle in environ}
    parents = _parents()
    grew = True
    while grew:
        children = {pid for pid, parent in parents.items() if parent in found} - found
        found |= children
        grew = bool(children)
    return sorted(found)


def _end(pids: Sequence[int], sig: int) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)


def _alive(pids: set[int]) -> set[int]:
    """Those of ``pids`` still running (a zombie has ended)."""
    alive = set()
    for pid in pids:
        with contextlib.suppress(OSError):
            if Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z":
                alive.add(pid)
    return alive


def _stop_cluster(marker: str) -> set[int]:
    """End the cluster's processes by their ids (SIGTERM, then SIGKILL for those that ignore
    it, as the GCS server may); returns those still running after that. The ids are taken
    while the raylet lives: its agents are found as its children."""
    pids = set(_pids_with(marker))
    for sig, seconds in ((signal.SIGTERM, 5.0), (signal.SIGKILL, 10.0)):
        _end(sorted(_alive(pids)), sig)
        deadline = time.monotonic() + seconds
        while _alive(pids) and time.monotonic() < deadline:
            time.sleep(0.2)
    return _alive(pids | set(_pids_with(marker)))


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    """``ray start --head`` on a free port for this module; at the end its processes (found
    by the marker they inherit) are ended by their ids, and none may be left. Not ``ray
    stop``: that ends every Ray process of this user on the machine, other clusters too."""
    marker = uuid.uuid4().hex
    temp = Path(tempfile.mkdtemp(prefix="rt"))  # short: Ray's socket paths must fit 107 bytes
    port = _free_port()
    token = uuid.uuid4().hex + uuid.uuid4().hex
    node_cache, gate = temp / "cache", temp / "gate"
    gate.mkdir()
    env = {**_env(token), MARKER: marker, **_bare_node(temp)}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ACTOR_GATE), env.get("PYTHONPATH")]))
    env["LXMERT_TEST_RAY_GATE"] = str(gate)
    env.pop("LXMERT_PIPELINE_WEIGHTS", None)
    ray = Path(sys.executable).with_name("ray")
    command = [str(ray), "start", "--head", f"--port={port}", "--num-cpus=2"]
    command += ["--include-dashboard=false", f"--temp-dir={temp}", "--disable-usage-stats"]
    started = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    try:
        assert started.returncode == 0, started.stderr[-2000:]
        yield Cluster(
            address=f"127.0.0.1:{port}",
            marker=marker,
            token=token,
            node_cache=node_cache,
            gate=gate,
        )
    finally:
        left = _stop_cluster(marker)
        shutil.rmtree(temp, ignore_errors=True)
        assert not left, f"Ray processes left after the module: {left}"


def _bare_node(folder: Path) -> dict[str, str]:
    """The environment of a machine whose caches (under ``folder``) hold no weights."""
    return {
        "HF_HOME": str(folder / "hf"),
        "HF_HUB_OFFLINE": "1",
        "XDG_CACHE_HOME": str(folder / "cache"),
    }


def _ray_command(cluster: Cluster, *args: object) -> list[str]:
    words = [str(arg) for arg in args]
    engine = ["--engine", "ray", "--ray-address", cluster.address]
    # The defaults first: a flag of the test's own comes later and wins.
    return [sys.executable, "-m", "pipeline.commands.extract", *DETECTOR, *engine, *words]


def _env(token: str) -> dict[str, str]:
    """The environment of the cluster and of every driver: one thread, the cluster's token."""
    ray = {"RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": token}
    return {**os.environ, "OMP_NUM_THREADS": "1", **ray}


def run_ray(
    cluster: Cluster, *args: object, cwd: Path = ROOT, env: Mapping[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        _ray_command(cluster, *args),
        env={**_env(cluster.token), **(env or {})},
        cwd=cwd,
        capture_output=True,
        text=True,
    )


def run_local(*args: object) -> int:
    return extract_features([*DETECTOR, "--engine", "local", "-q", *(str(arg) for arg in args)])


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The example scenes plus two bad files: garbage named .png and an empty .jpg."""
    folder = tmp_path_factory.mktemp("ray_inputs")
    for path in EXAMPLES:
        shutil.copyfile(path, folder / path.name)
    (folder / "broken.png").write_bytes(b"not an image at all" * 20)
    (folder / "empty.jpg").write_bytes(b"")
    return folder


@pytest.fixture(scope="module")
def reference(inputs: Path, tmp_path_factory: pytest.TempPathFactory) -> bytes:
    """The local engine's TSV of ``inputs``."""
    out = tmp_path_factory.mktemp("local") / "local.tsv"
    assert run_local(inputs, "--out", out) == 1  # the two bad files fail
    return out.read_bytes()


#: Each format once and each actor count once, here TSV with 2 actors and in
#: test_shard_and_limit HDF5 with 1: the driver alone writes the file (the same sink as the
#: local engine), so the format does not depend on the actors, nor they on it.
def test_ray_output_is_byte_identical_to_local(
    cluster: Cluster, inputs: Path, reference: bytes, tmp_path: Path
) -> None:
    out, actors = tmp_path / "ray.tsv", 2
    done = run_ray(cluster, inputs, "--out", out, "--actors", actors)
    assert done.returncode == 1, done.stderr[-3000:]
    assert out.read_bytes() == reference
    # The bad files are per-image failures named with their reasons, as locally.
    manifest = json.loads(manifest_path(out).read_text())
    failed = {failure["image_id"]: failure["reason"] for failure in manifest["failures"]}
    assert set(failed) == {"broken", "empty"}
    for name in ("broken.png", "empty.jpg"):
        assert str(inputs / name) in done.stderr
    assert "empty" in failed["empty"] or "0 bytes" in failed["empty"]
    engine = manifest["engine"]
    assert (engine["name"], engine["actors"], engine["threads"]) == ("ray", actors, 1)
    assert engine["cluster"]["resources"]["CPU"] == 2.0
    assert manifest["counts"]["written"] == len(EXAMPLES)
    assert f"{len(EXAMPLES) + 2} selected: {len(EXAMPLES)} written" in done.stderr


def test_shard_and_limit(cluster: Cluster, tmp_path: Path) -> None:
    """In HDF5 with one actor (the byte-identity test above writes TSV with two)."""
    local, ray = tmp_path / "local.h5", tmp_path / "ray.h5"
    flags = ("--shard", "2/3", "--limit", "2")
    assert run_local(ROOT / "examples", "--out", local, *flags) == 0
    # A relative input: the workers (started from this test's directory) must not read it
    # relative to their own working directory.
    done = run_ray(cluster, ".", "--out", ray, *flags, "--actors", 1, "-q", cwd=ROOT / "examples")
    assert done.returncode == 0, done.stderr[-3000:]
    shard = tmp_path / "ray.shard-2-of-3.h5"
    expected = [path.stem for path in EXAMPLES[1::3][:2]]
    assert h5_ids(shard) == expected
    assert shard.read_bytes() == (tmp_path / "local.shard-2-of-3.h5").read_bytes()
    engine = json.loads(manifest_path(shard).read_text())["engine"]
    assert (engine["name"], engine["actors"]) == ("ray", 1)


#: A registry name that only the driver resolves here: the shapes detector's weights as
#: vg-r101-c4-attr's pytorch_model.bin, in the driver's $LXMERT_PIPELINE_WEIGHTS alone.
DRIVER_ONLY = ("--detector", "vg-r101-c4-attr", "--preset", "shapes")


@dataclass(frozen=True)
class DriverWeights:
    env: dict[str, str]
    sha256: str


@pytest.fixture(scope="module")
def driver_weights(tmp_path_factory: pytest.TempPathFactory) -> DriverWeights:
    """The environment of a driver that has :data:`DRIVER_ONLY`'s weights (with the label
    files beside them), and their sha256."""
    home = tmp_path_factory.mktemp("driver")
    folder = home / "weights" / "vg-r101-c4-attr"
    folder.mkdir(parents=True)
    shapes = ROOT / "weights" / "shipped" / "shapes-detector"
    torch.save(load_file(shapes / "model.safetensors"), folder / "pytorch_model.bin")
    for name in ("objects_vocab.txt", "attributes_vocab.txt"):
        shutil.copyfile(shapes / name, folder / name)
    env = {**_bare_node(home), "LXMERT_PIPELINE_WEIGHTS": str(home / "weights")}
    return DriverWeights(env=env, sha256=sha256_file(folder / "pytorch_model.bin"))


def test_nodes_without_the_weights_load_the_drivers_shipped_copy(
    cluster: Cluster,
    driver_weights: DriverWeights,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    inputs, local = [str(path) for path in EXAMPLES[:3]], tmp_path / "local.tsv"
    with monkeypatch.context() as driver:  # the reference: this process as the driver
        for name, value in driver_weights.env.items():
            driver.setenv(name, value)
        assert run_local(*DRIVER_ONLY, *inputs, "--out", local) == 0
    # A damaged copy in the node's cache is not trusted: fetched again and replaced.
    assert cluster.node_cache is not None
    kept = cluster.node_cache / "lxmert-pipeline" / "shipped" / driver_weights.sha256
    kept.mkdir(parents=True)
    (kept / "pytorch_model.bin").write_bytes(b"half a checkpoint")
    out = tmp_path / "ray.tsv"
    flags = (*DRIVER_ONLY, *inputs, "-q")
    done = run_ray(cluster, *flags, "--out", out, "--actors", 2, env=driver_weights.env)
    assert done.returncode == 0, done.stderr[-3000:]
    assert out.read_bytes() == local.read_bytes()
    assert sha256_file(kept / "pytorch_model.bin") == driver_weights.sha256
    assert [path.name for path in kept.iterdir()] == ["pytorch_model.bin"]
    manifest = json.loads(manifest_path(out).read_text())
    assert manifest["detector"]["sha256"] == driver_weights.sha256
    assert manifest["engine"]["ship_weights"] is True
    # The next actor on the node finds the kept copy and does not write it again.
    inode = (kept / "pytorch_model.bin").stat().st_ino
    again = run_ray(cluster, *flags, "--out", tmp_path / "again.tsv", env=driver_weights.env)
    assert again.returncode == 0, again.stderr[-3000:]
    assert (tmp_path / "again.tsv").read_bytes() == local.read_bytes()
    assert (kept / "pytorch_model.bin").stat().st_ino == inode
    # A resume with nothing left to do neither ships nor checks the nodes.
    resumed = run_ray(
        cluster, *flags, "--out", out, "--resume", "--no-ship-weights", env=driver_weights.env
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert out.read_bytes() == local.read_bytes()


def test_no_ship_weights_on_nodes_without_them_is_a_usage_error(
    cluster: Cluster, driver_weights: DriverWeights, tmp_path: Path
) -> None:
    """Every node is checked before anything is written."""
    out = tmp_path / "x.tsv"
    flags = (*DRIVER_ONLY, EXAMPLES[0], "--out", out, "--no-ship-weights")
    done = run_ray(cluster, *flags, env=driver_weights.env)
    assert done.returncode == 2, done.stderr[-3000:]
    assert f"weights (sha256 {driver_weights.sha256}) are not on every node" in done.stderr
    node = f"node {socket.gethostname()}: not usable on this node"
    assert node in done.stderr and "$LXMERT_PIPELINE_WEIGHTS: not set" in done.stderr
    assert "drop --no-ship-weights to send this machine's copy" in done.stderr
    assert "Traceback" not in done.stderr
    assert not out.exists() and not manifest_path(out).exists()


def test_a_node_that_cannot_keep_the_shipped_copy_ends_the_run_naming_it(
    cluster: Cluster, driver_weights: DriverWeights, tmp_path: Path
) -> None:
    assert cluster.node_cache is not None
    shipped = cluster.node_cache / "lxmert-pipeline" / "shipped"
    aside = shipped.with_name("shipped.aside")
    if shipped.exists():
        shipped.rename(aside)
    shipped.parent.mkdir(parents=True, exist_ok=True)
    shipped.write_bytes(b"a file where the node keeps shipped weights")
    try:
        out = tmp_path / "x.tsv"
        done = run_ray(cluster, *DRIVER_ONLY, EXAMPLES[0], "--out", out, env=driver_weights.env)
    finally:
        shipped.unlink()
        if aside.exists():
            aside.rename(shipped)
    assert done.returncode == 4, done.stderr[-3000:]
    assert f"WeightsUnavailableError: node {socket.gethostname()}: " in done.stderr
    assert "this machine's copy could not be kept there" in done.stderr
    assert "set XDG_CACHE_HOME to a writable folder on that node" in done.stderr
    manifest = json.loads(manifest_path(out).read_text())
    assert (manifest["status"], manifest["engine"]["ship_weights"]) == ("error", True)
    assert _records(out) == 0


def _records(path: Path) -> int:
    return path.read_bytes().count(b"\n") if path.exists() else 0


def _wait_for(condition: Callable[[], bool], what: str, timeout: float = 600) -> None:
    """Until ``condition`` holds. Each caller's condition is certain to come (a gated run, or
    its end), so ``timeout`` only guards against a hang: generous, whatever the load."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def _start(cluster: Cluster, *args: object, gate: tuple[Path, int] | None = None) -> Popen:
    """A Ray run in the background; with ``gate=(fifo, k)`` its driver waits after its
    ``k``-th record until one byte is written to ``fifo`` (``gated_driver.py``)."""
    command = _ray_command(cluster, *args)
    if gate is not None:  # the same arguments, to the gated driver
        command = gated_command(gate[0], gate[1], *command[3:])
    return subprocess.Popen(
        command,
        env=_env(cluster.token),
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _actor_titles(cluster: Cluster) -> dict[int, bytes]:
    """The detector actors' processes and their titles (``ray::MapWorker(...)``)."""
    titles = {}
    for pid in _pids_with(cluster.marker):
        try:
            title = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        if ACTOR_TITLE in title:
            titles[pid] = title
    return titles


#: Copies of the example scenes in :func:`many`: enough for two actors to have work each, and
#: for a run to be stopped midway (its gate holds it there; the number of images does not).
COPIES = 2


@pytest.fixture(scope="module")
def many(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, bytes]:
    """16 images (the example scenes, :data:`COPIES` times) and the local engine's TSV of
    them."""
    folder = tmp_path_factory.mktemp("many")
    for copy in range(COPIES):
        for path in EXAMPLES:
            shutil.copyfile(path, folder / f"{path.stem}_{copy}.png")
    out = tmp_path_factory.mktemp("many_local") / "local.tsv"
    assert run_local(folder, "--out", out) == 0
    return folder, out.read_bytes()


#: Records a gated run writes before its driver waits for the test.
GATED_AFTER = 5


def _stopped_midway(
    cluster: Cluster, folder: Path, out: Path, stop: Callable[[Popen], None], gate: Path
) -> tuple[Popen, str]:
    """Start a Ray run whose driver waits after :data:`GATED_AFTER` records (a named pipe
    at ``gate`` is its gate), ``stop`` it there, and wait for it to end; returns it and its
    stderr. Midway is certain: the run cannot write more until the gate opens."""
    run = _start(cluster, folder, "--out", out, "--batch-size", 1, gate=(gate, GATED_AFTER))
    _wait_for(lambda: _records(out) >= GATED_AFTER or run.poll() is not None, "the records")
    assert run.poll() is None, run.communicate()[1][-3000:]
    stop(run)
    _, stderr = run.communicate(timeout=300)
    assert _records(out) == GATED_AFTER
    return run, stderr


def test_killed_actor_is_replaced_and_every_image_written_once(
    cluster: Cluster, many: tuple[Path, bytes], tmp_path: Path
) -> None:
    """One of two actors is killed mid-batch: both are held by the cluster's gate until
    the kill, so the killed one certainly had work."""
    folder, expected = many
    out, gate = tmp_path / "ray.tsv", cluster.gate
    assert gate is not None
    hold = gate / "hold"

    def held() -> set[str]:
        return {path.name for path in gate.glob("held-*")}

    hold.write_text("")
    try:
        run = _start(cluster, folder, "--out", out, "--actors", 2, "--batch-size", 1)
        _wait_for(lambda: len(held()) == 2 or run.poll() is not None, "both actors held")
        # This run's actors are the held ones: an earlier test's actors may still be on their
        # way out (Ray reaps a finished job's workers in its own time).
        held_pids = {int(name.removeprefix("held-")) for name in held()}
        titles = {p: t for p, t in _actor_titles(cluster).items() if p in held_pids}
        assert len(titles) == 2 and run.poll() is None
        # Two actors at 0.5 CPU and decode tasks at 0.5: stages of equal resources, which Ray
        # Data would fuse; the actors must only detect (decoding is its own CPU stage).
        assert all(b"DecodeImages" not in title for title in titles.values())
        killed = min(titles)
        assert f"held-{killed}" in held()
        os.kill(killed, signal.SIGKILL)
    finally:
        hold.unlink()
        for marker in gate.glob("held-*"):
            marker.unlink()
    _, stderr = run.communicate(timeout=300)
    assert run.returncode == 0, stderr[-3000:]
    assert out.read_bytes() == expected  # every image once, in order, same bytes
    assert killed not in _actor_titles(cluster)


def test_ctrl_c_exits_130_and_local_resume_finishes(
    cluster: Cluster, many: tuple[Path, bytes], tmp_path: Path
) -> None:
    folder, expected = many
    out = tmp_path / "ray.tsv"
    gate = tmp_path / "gate"
    run, stderr = _stopped_midway(
        cluster, folder, out, lambda run: run.send_signal(signal.SIGINT), gate
    )
    assert run.returncode == 130, stderr[-3000:]
    partial = out.read_bytes()
    assert expected.startswith(partial) and len(partial) < len(expected)
    assert json.loads(manifest_path(out).read_text())["status"] == "interrupted"
    # A clean shutdown: the job's actors end with it (the cluster's own actors stay).
    _wait_for(lambda: not _actor_titles(cluster), "the actors to end")
    assert run_local(folder, "--out", out, "--resume") == 0
    assert out.read_bytes() == expected


def test_killed_driver_then_ray_resume_finishes(
    cluster: Cluster, many: tuple[Path, bytes], tmp_path: Path
) -> None:
    folder, expected = many
    out = tmp_path / "ray.tsv"
    run, _ = _stopped_midway(cluster, folder, out, lambda run: run.kill(), tmp_path / "gate")
    assert run.returncode == -signal.SIGKILL
    assert json.loads(manifest_path(out).read_text())["status"] == "running"
    done = run_ray(cluster, folder, "--out", out, "--resume", "-q")
    assert done.returncode == 0, done.stderr[-3000:]
    manifest = json.loads(manifest_path(out).read_text())
    assert 0 < manifest["counts"]["already_done"] < COPIES * len(EXAMPLES)
    assert manifest["engine"]["name"] == "ray"
    assert out.read_bytes() == expected


def test_gpu_actors_on_a_cluster_without_gpus_is_a_usage_error(
    cluster: Cluster, tmp_path: Path
) -> None:
    """This process needs no GPU for --device cuda (the actors hold them), and fp16 is not
    refused here for want of one; the cluster's lack of GPUs is, before anything is written."""
    out = tmp_path / "x.tsv"
    done = run_ray(cluster, EXAMPLES[0], "--out", out, "--device", "cuda", "--precision", "fp16")
    assert done.returncode == 2, done.stderr[-2000:]
    assert "--device cuda: the Ray cluster has no GPUs" in done.stderr
    assert not out.exists() and not manifest_path(out).exists()


def test_an_address_nobody_listens_at_is_a_usage_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Found before ``ray.init``: in this process, no Ray started."""
    out = tmp_path / "x.tsv"
    address = f"127.0.0.1:{_free_port()}"
    argv = [*DETECTOR, "--engine", "ray", "--ray-address", address, str(EXAMPLES[0])]
    assert extract_features([*argv, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert f"--ray-address {address}: could not join the Ray cluster" in err
    assert "RAY_AUTH_MODE=token" in err
    assert not out.exists()


def test_missing_ray_is_a_usage_error_naming_the_extra(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # None in sys.modules: the next `import ray` raises ImportError, as without the extra.
    monkeypatch.setitem(sys.modules, "ray", None)
    monkeypatch.setitem(sys.modules, "ray.data", None)
    out = tmp_path / "x.tsv"
    argv = [str(EXAMPLES[0]), "--out", str(out), "--engine", "ray", *DETECTOR]
    assert extract_features(argv) == 2
    assert "pip install -e '.[ray]'" in capsys.readouterr().err
    assert not out.exists() and not manifest_path(out).exists()


def test_cluster_flags_need_the_ray_engine(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "x.tsv"
    assert run_local(EXAMPLES[0], "--out", out, "--actors", "2") == 2
    assert "--actors only apply with --engine ray" in capsys.readouterr().err
    assert run_local(EXAMPLES[0], "--out", out, "--no-ship-weights") == 2
    assert "--no-ship-weights only apply with --engine ray" in capsys.readouterr().err
    assert not out.exists()


def test_actor_plan_leaves_a_cpu_for_decoding() -> None:
    default = RaySettings(address=None, actors=None, actor_cpus=None)
    two_cpus = {"CPU": 2.0}
    # 2 CPUs: one actor of 1 CPU, or two of 0.5; either way 1 CPU stays free.
    one = plan_actors(two_cpus, ray=default, threads=2, on_gpu=False)
    assert (one.actors, one.cpus, one.gpus) == (1, 1.0, 0)
    pair = RaySettings(address=None, actors=2, actor_cpus=None)
    two = plan_actors(two_cpus, ray=pair, threads=1, on_gpu=False)
    assert (two.actors, two.cpus) == (2, 0.5)
    assert two.actors * two.cpus <= 2.0 - 1.0
    # 64 CPUs at 8 threads: 63 // 8 = 7 actors of 8 CPUs.
    big = plan_actors({"CPU": 64.0}, ray=default, threads=8, on_gpu=False)
    assert (big.actors, big.cpus) == (7, 8.0)
    # GPUs: one actor per GPU, one GPU each.
    gpus = plan_actors({"CPU": 16.0, "GPU": 4.0}, ray=default, threads=4, on_gpu=True)
    assert (gpus.actors, gpus.cpus, gpus.gpus) == (4, 3.75, 1)
    given = RaySettings(address="auto", actors=3, actor_cpus=0.75)
    assert plan_actors(two_cpus, ray=given, threads=1, on_gpu=False).cpus == 0.75
    with pytest.raises(UsageError, match="no GPUs"):
        plan_actors(two_cpus, ray=default, threads=1, on_gpu=True)


def test_in_order_releases_each_image_once_in_plan_order() -> None:
    order = InOrder[str](count=4)
    assert order.add(2, "c") == []
    assert order.add(1, "b") == []
    assert order.add(0, "a") == ["a", "b", "c"]
    assert order.add(1, "b") == [] and order.add(2, "c") == []
    with pytest.raises(RuntimeError, match="3 of 4"):
        order.check_complete()
    assert order.add(3, "d") == ["d"]
    order.check_complete()
