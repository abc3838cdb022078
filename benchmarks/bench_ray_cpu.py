#!/usr/bin/env python3
"""CPU seconds of one Ray run, by role: the driver, the detector actors, the decode workers and
Ray's own processes, on a Ray instance started for the measurement (``ray start --head``).

One ``extract_features examples/ --engine ray --ray-address ...`` run on the shipped shapes
detector; every process of the cluster and the driver carries a marker in its environment, and
``/proc`` is read every 0.1 s for their user + system CPU time (a process's last 0.1 s before it
exits is not counted). Decode tasks run in Ray's task workers (``ray::IDLE`` between tasks):
before they imported no torch, each cost as much as an actor's start.

    python benchmarks/bench_ray_cpu.py            # prints one JSON document
    python benchmarks/bench_ray_cpu.py --actors 1
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MARKER = "LXMERT_BENCH_RAY_CPU"
TICKS = os.sysconf("SC_CLK_TCK")
#: Process titles (``ray::NAME``) of Ray's own actors and agents.
RAY_OWN = ("_StatsActor", "Autoscaling", "ActorLocation", "DashboardAgent", "RuntimeEnvAgent")


def _marked(marker: str) -> dict[int, tuple[str, float]]:
    """Every process whose environment holds ``marker``: its command line and CPU seconds."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if f"{MARKER}={marker}".encode() not in (entry / "environ").read_bytes():
                continue
            title = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        found[int(entry.name)] = (title, (int(fields[11]) + int(fields[12])) / TICKS)
    return found


def _role(pid: int, titles: set[str], driver: int) -> str:
    """What a process was, by the titles it showed (a Ray worker's title is its command line
    until Ray names it ``ray::...``)."""
    named = {title for title in titles if title.startswith("ray::")}
    if pid == driver:
        return "driver"
    if any(part in title for title in named for part in RAY_OWN) or not named:
        return "ray_own"  # its actors and agents, or a daemon (raylet, gcs_server, monitors)
    if any("DetectRegions" in title for title in named):
        return "detector_actors"
    return "decode_workers"  # ray::IDLE between Ray Data's decode tasks


def measure(actors: int) -> dict[str, object]:
    marker, temp = uuid.uuid4().hex, Path(tempfile.mkdtemp(prefix="rb"))
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    token = uuid.uuid4().hex * 2
    env = {**os.environ, MARKER: marker, "OMP_NUM_THREADS": "1", "RAY_USAGE_STATS_ENABLED": "0"}
    env |= {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": token}
    ray = Path(sys.executable).with_name("ray")
    start = [str(ray), "start", "--head", f"--port={port}", "--num-cpus=2"]
    start += ["--include-dashboard=false", f"--temp-dir={temp}", "--disable-usage-stats"]
    subprocess.run(start, env=env, check=True, capture_output=True)
    before = {pid: cpu for pid, (_, cpu) in _marked(marker).items()}
    seen: dict[int, tuple[set[str], float]] = defaultdict(lambda: (set(), 0.0))
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            for pid, (title, cpu) in _marked(marker).items():
                seen[pid] = (seen[pid][0] | {title}, cpu - before.get(pid, 0.0))
            time.sleep(0.1)

    sampler = threading.Thread(target=sample)
    sampler.start()
    command = [sys.executable, "-m", "pipeline.commands.extract", str(ROOT / "examples")]
    command += ["--detector", "shapes-detector", "--engine", "ray", "--ray-address"]
    command += [f"127.0.0.1:{port}", "--actors", str(actors), "--out", str(temp / "out.tsv")]
    tick = time.monotonic()
    run = subprocess.Popen(command, env=env, stderr=subprocess.PIPE, text=True)
    _, stderr = run.communicate()
    wall = time.monotonic() - tick
    time.sleep(1.0)  # the job's workers end after the driver
    done.set()
    sampler.join()
    for pid in _marked(marker):  # this instance only: `ray stop` would end every one here
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    shutil.rmtree(temp, ignore_errors=True)
    if run.returncode != 0:
        sys.exit(f"the run failed ({run.returncode}):\n{stderr[-2000:]}")
    roles: dict[str, list[float]] = defaultdict(list)
    for pid, (titles, cpu) in seen.items():
        if cpu > 0.05:
            roles[_role(pid, titles, run.pid)].append(round(cpu, 2))
    return {
        "cpu": platform.processor() or platform.machine(),
        "actors": actors,
        "wall_s": round(wall, 1),
        "cpu_s_total": round(sum(sum(values) for values in roles.values()), 1),
        "cpu_s_by_role": {role: sorted(values, reverse=True) for role, values in roles.items()},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--actors", type=int, default=2)
    print(json.dumps(measure(parser.parse_args().actors), indent=2))


if __name__ == "__main__":
    main()
