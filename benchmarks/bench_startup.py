"""Where start-up time goes: each figure from fresh interpreters, the median of ``--repeat`` runs.

Prints one JSON object:

- ``import_torch_s``: wall time of ``python -c "import torch"`` (the reference: machines differ,
  so the goals are stated beyond it);
- ``imports_beyond_torch_s``: for each module, the seconds its import takes in a process that
  has already imported torch (``perf_counter`` around the import, in the child);
- ``extract_features``: a whole ``extract_features`` run on ``examples/`` with the shipped shapes
  detector: process wall time, the manifest's ``seconds.detector``, and ``outside_detector_s``
  = wall - detector, also given beyond ``import torch``;
- ``answer``: ``answer examples/scene_000.png "what color is the circle?"`` on the shapes models,
  seconds from start to its first answer line on stdout, also beyond ``import torch``;
- the machine: CPU model, cores, load averages before and after, torch version.

Usage: ``python benchmarks/bench_startup.py [--repeat 3]``. Never asserts on time.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
#: Modules whose import cost is reported, each measured after ``import torch``.
MODULES = (
    "pipeline",
    "pipeline.commands.extract",
    "pipeline.commands.answer",
    "pipeline.api",
    "detector",
    "encoder",
    "torchvision",
    "transformers.models.lxmert.modeling_lxmert",
    "h5py",
    "cv2",
    "tqdm",
)
QUESTION = "what color is the circle?"


def wall_of(argv: Sequence[str]) -> float:
    """Wall seconds of one child process (output discarded); raises if it fails."""
    start = time.perf_counter()
    subprocess.run(argv, cwd=ROOT, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    return time.perf_counter() - start


def import_beyond_torch(module: str) -> float:
    """Seconds ``import module`` takes in a fresh interpreter that has imported torch."""
    code = (
        "import time, torch\n"
        "start = time.perf_counter()\n"
        f"import {module}\n"
        "print(time.perf_counter() - start)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, check=True, capture_output=True, text=True
    )
    return float(done.stdout.strip().splitlines()[-1])


def extract_features_run() -> tuple[float, float]:
    """(process wall seconds, manifest ``seconds.detector``) of one run on ``examples/``."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "examples.h5"
        argv = [sys.executable, "-m", "pipeline.commands.extract", "examples/", "--out", str(out)]
        wall = wall_of([*argv, "--detector", "shapes-detector", "--device", "cpu"])
        manifest = json.loads(Path(f"{out}.manifest.json").read_text())
    return wall, float(manifest["seconds"]["detector"])


def first_answer_seconds() -> float:
    """Seconds from starting ``answer`` (shapes models, CPU) to its first answer line."""
    argv = [sys.executable, "-m", "pipeline.commands.answer", "examples/scene_000.png", QUESTION]
    argv += ["--detector", "shapes-detector", "--encoder", "shapes-lxmert", "--device", "cpu"]
    start = time.perf_counter()
    with subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.PIPE, text=True) as child:
        assert child.stdout is not None  # stdout=PIPE above
        line = child.stdout.readline()
        seconds = time.perf_counter() - start
        child.stdout.read()
    if child.returncode != 0 or not line.startswith(QUESTION):
        raise RuntimeError(f"answer failed (exit {child.returncode}): {line!r}")
    return seconds


def median_of(measure: Callable[[], float], repeat: int) -> float:
    """Median of ``repeat`` calls, rounded to milliseconds."""
    return round(statistics.median(measure() for _ in range(repeat)), 3)


def cpu_model() -> str:
    """The CPU's model name (Linux ``/proc/cpuinfo``), else what ``platform`` says."""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def measure(repeat: int) -> dict[str, object]:
    """Every figure of the module docstring, as one JSON-ready record."""
    load_before = os.getloadavg()
    torch_s = median_of(lambda: wall_of([sys.executable, "-c", "import torch"]), repeat)
    imports = {m: median_of(functools.partial(import_beyond_torch, m), repeat) for m in MODULES}
    runs = [extract_features_run() for _ in range(repeat)]
    outside = statistics.median(wall - detector for wall, detector in runs)
    answer_s = median_of(first_answer_seconds, repeat)
    return {
        "import_torch_s": torch_s,
        "imports_beyond_torch_s": imports,
        "extract_features": {
            "wall_s": round(statistics.median(w for w, _ in runs), 3),
            "detector_s": round(statistics.median(d for _, d in runs), 3),
            "outside_detector_s": round(outside, 3),
            "outside_detector_beyond_torch_s": round(outside - torch_s, 3),
        },
        "answer": {
            "first_answer_s": answer_s,
            "first_answer_beyond_torch_s": round(answer_s - torch_s, 3),
        },
        "machine": {
            "cpu": cpu_model(),
            "cores": os.cpu_count(),
            "load_before": [round(x, 2) for x in load_before],
            "load_after": [round(x, 2) for x in os.getloadavg()],
            "python": platform.python_version(),
            "torch": _torch_version(),
        },
        "repeat": repeat,
    }


def _torch_version() -> str:
    done = subprocess.run(
        [sys.executable, "-c", "import torch; print(torch.__version__)"],
        check=True,
        capture_output=True,
        text=True,
    )
    return done.stdout.strip()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--repeat", type=int, default=3, help="runs per figure (median)")
    args = parser.parse_args(argv)
    if args.repeat < 1:
        parser.error("--repeat must be >= 1")
    print(json.dumps(measure(args.repeat), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
