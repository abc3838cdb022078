#!/usr/bin/env python3
"""Memory of the web page under many distinct large images (issue 26, item 3).

    python benchmarks/bench_web_memory.py --requests 200 --early 20 --size 2500

Serves ``lxmert-demo`` with the shapes models (a real process, as the tests do), then sends
``--requests`` distinct ``--size`` x ``--size`` images through ``/gradio_api/call/detect``
(upload, then detect; every API call is a new gradio session). Prints the server's resident
memory (VmRSS of its process) after start, after ``--early`` requests and after all of them,
and the files left in its temporary folder after it stops. The claim: the last figure is within
10% of the early one (the region cache and the session store are bounded; sessions keep no
image). ``--server-path DIR`` runs the server from another checkout (``git worktree add``) to
compare against older code; the client stays this one.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "pipeline"))
from web_helpers import CONTROLS, Page  # noqa: E402  # the tests' HTTP client of the page

from pipeline.web.browser import serve_demo  # noqa: E402


def rss_mib(pid: int) -> float:
    """Resident memory of process ``pid`` in MiB (``VmRSS`` of /proc)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for process {pid}")


def distinct_image(index: int, size: int, path: Path) -> Path:
    """A ``size`` x ``size`` PNG unlike every other index (so no cache hit): a background
    shade and a square placed by ``index``; flat colours keep the file small."""
    pixels = np.full((size, size, 3), (40 + index % 200, 90, 160 - index % 150), dtype=np.uint8)
    side = size // 5
    x = (index * 37) % (size - side)
    y = (index * 91) % (size - side)
    pixels[y : y + side, x : x + side] = (230, 200, 30)
    Image.fromarray(pixels).save(path, compress_level=1)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--early", type=int, default=20)
    parser.add_argument("--size", type=int, default=2500)
    parser.add_argument("--server-path", type=Path, default=None)
    args = parser.parse_args()
    if args.server_path is not None:
        os.environ["PYTHONPATH"] = str(args.server_path.resolve())
    figures: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(scratch)
        started = time.perf_counter()
        with serve_demo(log=folder / "server.log", cwd=folder) as served:
            page, pid = Page(served=served), served.process.pid
            figures["rss_start_mib"] = rss_mib(pid)
            for index in range(args.requests):
                image = distinct_image(index, args.size, folder / "image.png")
                kind, outputs = page.call("detect", [page.upload(image), *CONTROLS])
                if kind != "complete":
                    raise RuntimeError(f"request {index}: {outputs}")
                if index + 1 == args.early:
                    figures["rss_early_mib"] = rss_mib(pid)
            figures["rss_last_mib"] = rss_mib(pid)
            files = [p for p in served.temp_dir.rglob("*") if p.is_file()]
            figures["files_while_serving"] = len(files)
            served.process.terminate()  # SIGTERM: the server stops as it does in a container
            served.process.wait(timeout=120)
            figures["files_after_stop"] = sum(p.is_file() for p in served.temp_dir.rglob("*"))
        figures["seconds"] = time.perf_counter() - started
    figures["growth_early_to_last"] = figures["rss_last_mib"] / figures["rss_early_mib"] - 1
    print(
        json.dumps({"requests": args.requests, "early": args.early, "size": args.size, **figures})
    )
    print(
        f"RSS: start {figures['rss_start_mib']:.0f} MiB, after {args.early} requests "
        f"{figures['rss_early_mib']:.0f} MiB, after {args.requests} "
        f"{figures['rss_last_mib']:.0f} MiB ({figures['growth_early_to_last']:+.1%}); "
        f"files in the temporary folder: {figures['files_while_serving']:.0f} while serving, "
        f"{figures['files_after_stop']:.0f} after it stopped"
    )


if __name__ == "__main__":
    main()
