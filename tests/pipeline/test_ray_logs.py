"""Ray's own output goes to ``OUT.ray.log`` beside the manifest, not to the terminal
(pipeline.extract.engines.ray_logs): checked on the mechanism alone (a subprocess whose stderr is a
real file descriptor 2, no Ray), and on one real ``extract_features --engine ray`` run that starts
Ray on this machine, as a user's does."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from pipeline.features.manifest import manifest_path, ray_log_path

ROOT = Path(__file__).resolve().parents[2]
#: Marks the processes of the Ray run (they inherit it), so that any left are ended by id.
MARKER = "LXMERT_RAY_LOGS_TEST"

#: Writes by each of Ray's roads while ray_output_to is on, then by ours after it.
SCRIPT = """
import logging, os, sys
from pathlib import Path
from weights.command import configure_logging
from pipeline.extract.engines.ray_logs import ray_output_to

configure_logging(quiet=False, verbose=False)
# As Ray's own handler of its loggers (ray._private.log.PlainRayHandler): sys.stderr at emit time.
logging.getLogger("ray").addHandler(logging._StderrHandler())
logging.getLogger("ray").propagate = False
with ray_output_to(Path(sys.argv[1]), joined=sys.argv[2] == "joined") as log:
    os.write(2, b"[2026-01-01 E 1 1] core_worker.cc:1: from C++\\n")
    print("(MapWorker pid=11) a worker's stdout")
    print("(MapWorker pid=12) a worker's stderr", file=sys.stderr)
    auth = "ray._private.authentication.authentication_token_setup"
    logging.getLogger(auth).warning("Token authentication is enabled for this Ray cluster.")
    logging.getLogger("ray").warning("a warning of Ray's")
    logging.getLogger("pipeline.extract").info("our message")
    log.terminal.write("our progress bar\\n")
print("ours after the session", file=sys.stderr)
print("stdout after the session")
"""


@pytest.mark.parametrize("joined", [False, True])
def test_ray_s_roads_go_to_the_log_and_ours_to_the_terminal(tmp_path: Path, joined: bool) -> None:
    log = tmp_path / "out.tsv.ray.log"
    mode = "joined" if joined else "local"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(log), mode],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    token = ["ray: Token authentication is enabled for this Ray cluster."] if joined else []
    ours = [*token, "our message", "our progress bar", "ours after the session"]
    assert done.stderr.splitlines() == ours
    assert done.stdout == "stdout after the session\n"
    written = log.read_text(encoding="utf-8").splitlines()
    assert written[0].startswith("--- Ray session of ") and "(pid " in written[0]
    assert written[1:] == [
        "[2026-01-01 E 1 1] core_worker.cc:1: from C++",
        "(MapWorker pid=11) a worker's stdout",
        "(MapWorker pid=12) a worker's stderr",
        "Token authentication is enabled for this Ray cluster.",
        "a warning of Ray's",
    ]


def _pids_with(marker: str) -> set[int]:
    """Processes whose environment holds ``MARKER=marker``, and their descendants."""
    needle, found, parents = f"{MARKER}={marker}".encode(), set(), {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError, IndexError, ValueError):
                if needle in (entry / "environ").read_bytes().split(b"\0"):
                    found.add(int(entry.name))
                stat = (entry / "stat").read_text()
                parents[int(entry.name)] = int(stat.rsplit(")", 1)[1].split()[1])
    while children := {p for p, parent in parents.items() if parent in found} - found:
        found |= children
    return found


def test_a_local_ray_run_keeps_ray_s_lines_off_the_terminal(tmp_path: Path) -> None:
    pytest.importorskip("ray.data")
    out = tmp_path / "feats.tsv"
    marker = uuid.uuid4().hex
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env.update(
        {
            MARKER: marker,
            "OMP_NUM_THREADS": "1",
            "RAY_USAGE_STATS_ENABLED": "0",
            "HF_HOME": str(tmp_path / "hf"),
            "XDG_CACHE_HOME": str(tmp_path / "cache"),
        }
    )
    command = [
        sys.executable,
        "-m",
        "pipeline.commands.extract",
        str(ROOT / "examples" / "scene_000.png"),
    ]
    command += ["--out", str(out), "--engine", "ray", "--detector", "shapes-detector"]
    command += ["--device", "cpu", "--threads", "1", "--workers", "0"]
    try:
        done = subprocess.run(
            command, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=900
        )
    finally:
        for pid in sorted(_pids_with(marker)):  # a run that went wrong leaves nothing behind
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    assert done.returncode == 0, done.stderr[-3000:]
    log = ray_log_path(out)
    for ray_s in ("core_worker", "pid=", "Token authentication", "authentication_token"):
        assert ray_s not in done.stderr, done.stderr[-3000:]
    assert f"Ray's own log: {log}" in done.stderr
    assert "1 selected: 1 written" in done.stderr
    written = log.read_text(encoding="utf-8")
    # The three roads: Ray's Python logger, its C++ core worker, the workers' forwarded lines.
    assert "Token authentication is enabled" in written
    assert "core_worker.cc" in written
    assert "pid=" in written and "\x1b[" not in written  # plain prefixes, no colour codes
    manifest = json.loads(manifest_path(out).read_text(encoding="utf-8"))
    assert manifest["engine"]["log"] == str(log)
