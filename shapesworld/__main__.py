"""Command line of the shapes world.

    python -m shapesworld render --split test --count 8 --out examples/

writes ``scene_000.png`` ... (RGB PNG, lossless) and ``scenes.json`` (the ground truth of every
scene, see ``records.scene_record``, plus the class, attribute and answer vocabularies).
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path
from typing import cast

from shapesworld.records import scene_record
from shapesworld.scenes import Split, make_scene, split_seeds
from shapesworld.vocab import ANSWERS, COLORS, SHAPES, SPLIT_SEED_BASE
from weights.files import atomic_write_text


def render(*, split: str, count: int, out: Path, offset: int = 0) -> list[Path]:
    """Write scenes ``offset .. offset + count - 1`` of ``split`` into ``out``; return the PNGs.

    Each file is replaced atomically (``weights.files``), so no half-written file is left.
    """
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} exists and is not a directory; pass a directory path")
    seeds = split_seeds(cast(Split, split), count, offset=offset)
    out.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    records = []
    for index, seed in enumerate(seeds):
        scene = make_scene(seed)
        name = f"scene_{index:03d}.png"
        scene.write_png(out / name)
        written.append(out / name)
        records.append({"file": name, **scene_record(scene)})
    meta = {
        "split": split,
        "offset": offset,
        "classes": list(SHAPES),
        "attributes": list(COLORS),
        "answers": list(ANSWERS),
        "scenes": records,
    }
    atomic_write_text(out / "scenes.json", json.dumps(meta, indent=1) + "\n")
    return written


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the process exit status."""
    parser = argparse.ArgumentParser(
        prog="python -m shapesworld", description="Shapes-world scene generator."
    )
    sub = parser.add_subparsers(dest="command", required=True)
    cmd = sub.add_parser("render", help="write example scenes as PNG plus scenes.json")
    cmd.add_argument("--split", choices=sorted(SPLIT_SEED_BASE), default="test")
    cmd.add_argument("--count", type=int, default=8, help="number of scenes (default 8)")
    cmd.add_argument("--offset", type=int, default=0, help="index of the first scene (default 0)")
    cmd.add_argument("--out", type=Path, required=True, help="output directory")
    args = parser.parse_args(argv)
    try:
        paths = render(split=args.split, count=args.count, out=args.out, offset=args.offset)
    except (ValueError, TypeError) as err:
        parser.error(str(err))
    print(f"wrote {len(paths)} scenes and scenes.json to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
