#!/usr/bin/env python3
"""What the Ray engine's weights fallback costs: the driver's checkpoint through the object store.

    python benchmarks/bench_ship_weights.py --megabytes 260

A checkpoint file of ``--megabytes`` random bytes (the real R101 detector is ~260 MB) is put
into the object store of a Ray instance started here, as ``--engine ray`` does at the start of
every run on a joined cluster unless ``--no-ship-weights``; then a Ray task plays an actor
whose node lacks the weights. Printed as one JSON record:

- ``hash_s``: sha256 of the file (an actor hashes its node's copy, or the kept one, to choose
  it, and again as it loads it);
- ``put_s``: :func:`~pipeline.extract.engines.ray_weights.ship_checkpoint` on the driver;
- ``first_actor_s``: an actor without the file: fetch, check the digest, keep it in the node's
  cache (written and fsynced);
- ``next_actor_s``: a later actor on that node: finds the kept copy and hashes it.

One machine: the object store's copy is read from shared memory, so ``first_actor_s`` has no
network in it; across machines add the transfer (260 MB is ~0.2 s at 10 Gbit/s).
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

from bench_startup import cpu_model

from pipeline.extract.engines.ray_weights import ActorWeights, ship_checkpoint, weights_for_actor
from weights import sha256_file


def seconds_of_actor(weights: ActorWeights, cache: Path) -> float:
    """Seconds a Ray task (a worker process, as an actor) takes to get ``weights``."""
    import ray

    @ray.remote(num_cpus=0.5)
    def get_weights() -> float:
        tick = time.perf_counter()
        weights_for_actor(weights, cache=cache)
        return time.perf_counter() - tick

    return float(ray.get(get_weights.remote()))


def measure(megabytes: int, folder: Path) -> dict[str, object]:
    """Every figure of the module docstring, as one JSON-ready record."""
    import ray

    checkpoint = folder / "pytorch_model.bin"
    with checkpoint.open("wb") as stream:
        for _ in range(megabytes):
            stream.write(os.urandom(1 << 20))
    tick = time.perf_counter()
    digest = sha256_file(checkpoint)
    hashed = time.perf_counter() - tick
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        tick = time.perf_counter()
        shipped = ship_checkpoint(checkpoint, digest)
        put = time.perf_counter() - tick
        # A path no worker has: every actor must take the shipped copy.
        weights = ActorWeights(detector=str(folder / "absent.bin"), sha256=digest, shipped=shipped)
        first = seconds_of_actor(weights, folder / "cache")
        following = seconds_of_actor(weights, folder / "cache")
    finally:
        ray.shutdown()
    return {
        "megabytes": megabytes,
        "hash_s": round(hashed, 3),
        "put_s": round(put, 3),
        "first_actor_s": round(first, 3),
        "next_actor_s": round(following, 3),
        "cpu": cpu_model(),
        "load": [round(value, 2) for value in os.getloadavg()],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("--megabytes", type=int, default=260, help="checkpoint size (MiB)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="ship-") as folder:
        print(json.dumps(measure(args.megabytes, Path(folder)), indent=2))


if __name__ == "__main__":
    main()
