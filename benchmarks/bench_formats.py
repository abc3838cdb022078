"""Feature-file formats at scale: convert throughput, reader memory, random access, file size.

On a synthetic store of ``--images`` images x ``--boxes`` boxes x ``--dim`` features (the issue's
figure is 10,000 x 36 x 2048, about 4 GB as TSV), it measures:

- ``baseline_read_tsv_rps``: reading and decoding the TSV alone (records/s), the reference;
- per format (and precision): ``convert_rps`` TSV -> format with ``extract_features convert``'s
  library path (``pipeline.convert.run_convert``), and ``vs_baseline`` = convert / baseline;
- ``size_mb`` of the output (file, companions, or folder);
- ``reader_peak_rss_mb``: a fresh process opens the output with ``FeatureStore.open`` and reads
  every record; its peak RSS, and ``reader_rss_after_import_mb`` (the interpreter, torch and
  numpy before any record), so the growth is what the reader holds;
- ``random_access_ms``: mean time of ``store.get(id)`` over ``--probes`` random ids;
- ``load_everything``: LXMERT's ``load_obj_tsv`` way (every record decoded into one list), in a
  subprocess capped at ``--cap-mb`` of address space; its peak RSS, or that it hit the cap.

Each output is deleted after it is measured. Prints one JSON object; never asserts on time.

Usage: ``python benchmarks/bench_formats.py [--images 10000] [--work DIR]``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from detector.structures import RegionFeatures  # noqa: E402
from pipeline.convert import ConvertSettings, run_convert  # noqa: E402
from pipeline.features.output import encode_tsv_line, iter_tsv  # noqa: E402

#: (format, feature dtype, output name): what is measured.
TARGETS = (
    ("h5", "float32", "out.h5"),
    ("parquet", "float32", "out.parquet"),
    ("parquet", "float16", "out16.parquet"),
    ("npz-dir", "float32", "out_npz"),
    ("npz-dir", "float16", "out16_npz"),
    ("ban-h5", "float32", "out_ban.hdf5"),
    ("ban-h5", "float16", "out16_ban.hdf5"),
    ("lmdb", "float16", "out_lmdb"),
    ("lmdb-msgpack", "float16", "out_lmdb_msgpack"),
)

READER = """
import sys, time, random
from pipeline.features.store import FeatureStore
def status(field):  # VmHWM: this process's peak since exec (ru_maxrss counts the parent's)
    for line in open("/proc/self/status"):
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
base, anon_base = status("VmHWM"), status("RssAnon")
anon = anon_base
store = FeatureStore.open(sys.argv[1])
ids = list(store.ids())
for index in range(len(store)):
    store[index]
    if index % 100 == 0:  # private memory, sampled: what the reader holds
        anon = max(anon, status("RssAnon"))
full, anon = status("VmHWM"), max(anon, status("RssAnon"))
random.seed(0)
probes = random.sample(ids, min(int(sys.argv[2]), len(ids)))
start = time.perf_counter()
for image_id in probes:
    store.get(image_id)
per = (time.perf_counter() - start) / max(len(probes), 1)
print(base, full, per * 1000, anon_base, anon)
"""

LOAD_ALL = """
import resource, sys
cap = int(sys.argv[2]) << 20
resource.setrlimit(resource.RLIMIT_AS, (cap, cap))
def rss():
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
from pipeline.features.output import iter_tsv
base = rss()
try:
    data = [r.to_record() for r in iter_tsv(sys.argv[1])]
    print("ok", rss(), base)
except MemoryError:
    print("cap", rss(), base)
"""


def synthetic_tsv(path: Path, *, images: int, boxes: int, dim: int) -> None:
    """ReLU-like features (about half zeros), boxes inside a 640 x 480 image, numeric ids."""
    rng = np.random.default_rng(0)
    with open(path, "wb") as stream:
        for index in range(images):
            features = rng.random((boxes, dim), np.float32) * 4
            features[rng.random((boxes, dim)) < 0.5] = 0
            xy = rng.uniform(0, 400, (boxes, 2)).astype(np.float32)
            wh = rng.uniform(8, 200, (boxes, 2)).astype(np.float32)
            record = RegionFeatures(
                image_id=str(100000 + index),
                image_h=480,
                image_w=640,
                boxes=np.concatenate([xy, xy + wh], 1),
                features=features,
                objects_id=rng.integers(0, 1600, boxes),
                objects_conf=rng.random(boxes, np.float32),
                attrs_id=rng.integers(0, 400, boxes),
                attrs_conf=rng.random(boxes, np.float32),
            )
            stream.write(encode_tsv_line(record))


def size_mb(path: Path) -> float:
    siblings = [p for p in path.parent.glob(path.stem + "_*") if p.suffix in (".pkl", ".json")]
    files = [p for p in path.rglob("*") if p.is_file()] if path.is_dir() else [path, *siblings]
    return sum(p.stat().st_size for p in files) / 2**20


def remove(path: Path) -> None:
    for sibling in path.parent.glob(path.name + "*"):
        shutil.rmtree(sibling) if sibling.is_dir() else sibling.unlink()
    for sibling in path.parent.glob(path.stem + "_*"):
        sibling.unlink()


def measure_reader(path: Path, probes: int) -> dict[str, float]:
    output = subprocess.run(
        [sys.executable, "-c", READER, str(path), str(probes)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    base, full, per, anon_base, anon = (float(v) for v in output)
    return {
        "reader_rss_after_import_mb": round(base, 1),
        "reader_peak_rss_mb": round(full, 1),
        # RSS counts the pages of a memory-mapped file (lmdb) that were read; the private
        # (anonymous) memory is what the reader itself holds.
        "reader_anon_after_import_mb": round(anon_base, 1),
        "reader_anon_peak_mb": round(anon, 1),
        "random_access_ms": round(per, 3),
    }


def measure_target(
    tsv: Path, work: Path, target: tuple[str, str, str], args: argparse.Namespace, baseline: float
) -> dict[str, object]:
    fmt, dtype, name = target
    out = work / name
    settings = ConvertSettings(
        inputs=(tsv,),
        out=out,
        to=fmt,
        feature_dtype=dtype,  # type: ignore[arg-type]
        ban_ids="strict",
        overwrite=False,
        resume=False,
        quiet=True,
    )
    start = time.perf_counter()
    run_convert(settings)
    rps = args.images / (time.perf_counter() - start)
    result: dict[str, object] = {
        "format": fmt,
        "feature_dtype": dtype,
        "convert_rps": round(rps, 1),
        "vs_baseline": round(rps / baseline, 3),
        "size_mb": round(size_mb(out), 1),
    }
    result.update(measure_reader(out, args.probes))
    remove(out)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=10000)
    parser.add_argument("--boxes", type=int, default=36)
    parser.add_argument("--dim", type=int, default=2048)
    parser.add_argument("--probes", type=int, default=200)
    parser.add_argument("--cap-mb", type=int, default=8192)
    parser.add_argument("--work", type=Path, default=None)
    parser.add_argument("--only", nargs="*", default=None, help="formats to measure")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(dir=args.work, prefix="bench_formats_"))
    try:
        tsv = work / "in.tsv"
        synthetic_tsv(tsv, images=args.images, boxes=args.boxes, dim=args.dim)
        start = time.perf_counter()
        for _ in iter_tsv(tsv):
            pass
        baseline = args.images / (time.perf_counter() - start)
        report: dict[str, object] = {
            "images": args.images,
            "boxes": args.boxes,
            "dim": args.dim,
            "tsv_mb": round(size_mb(tsv), 1),
            "baseline_read_tsv_rps": round(baseline, 1),
            "cpu": platform.processor() or platform.machine(),
            "cores": os.cpu_count(),
            "load_before": os.getloadavg(),
        }
        tsv_reader = measure_reader(tsv, args.probes)
        report["tsv_store"] = tsv_reader
        loaded = subprocess.run(
            [sys.executable, "-c", LOAD_ALL, str(tsv), str(args.cap_mb)],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.split()
        report["load_everything"] = {
            "result": loaded[0],
            "peak_rss_mb": float(loaded[1]),
            "rss_after_import_mb": float(loaded[2]),
            "cap_mb": args.cap_mb,
        }
        report["formats"] = [
            measure_target(tsv, work, target, args, baseline)
            for target in TARGETS
            if args.only is None or target[0] in args.only
        ]
        report["load_after"] = os.getloadavg()
        print(json.dumps(report, indent=2))
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    random.seed(0)
    main()
