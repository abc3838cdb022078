"""Questions per second of ``answer --questions FILE`` against one ``answer`` process per
question, on the shipped shapes-world models.

    python benchmarks/bench_answer_questions.py [--questions 200] [--images 30] [--single 5]

Makes ``--images`` shapes-world scenes and ``--questions`` questions about them (the
generator's own, cycled), answers them all with one ``answer --questions`` process, and
answers the first ``--single`` of them with one process each (the per-question cost is the
median of those; all 200 that way would take half an hour). Prints JSON.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from shapesworld.questions import scene_questions
from shapesworld.scenes import make_split

BIN = Path(sys.executable).parent
SHAPES = ["--detector", "shapes-detector", "--encoder", "shapes-lxmert", "--device", "cpu"]


def _questions(folder: Path, images: int, count: int) -> Path:
    pairs = []
    for scene in make_split("heldout", images):
        name = f"seed-{scene.seed}.png"
        scene.write_png(folder / name)
        pairs += [(name, q.text) for q in scene_questions(scene)]
    rows = [pairs[i % len(pairs)] for i in range(count)]
    file = folder / "questions.jsonl"
    file.write_text("".join(json.dumps({"image": i, "question": q}) + "\n" for i, q in rows))
    return file


def _timed(command: list[str], cwd: Path) -> float:
    start = time.perf_counter()
    subprocess.run(command, cwd=cwd, check=True, capture_output=True)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--questions", type=int, default=200)
    parser.add_argument("--images", type=int, default=30)
    parser.add_argument("--single", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as temp:
        folder = Path(temp)
        file = _questions(folder, args.images, args.questions)
        batch = _timed([str(BIN / "answer"), "--questions", str(file), *SHAPES], folder)
        rows = [json.loads(line) for line in file.read_text().splitlines()][: args.single]
        single = [
            _timed([str(BIN / "answer"), row["image"], row["question"], *SHAPES], folder)
            for row in rows
        ]
    per_process = statistics.median(single)
    print(
        json.dumps(
            {
                "questions": args.questions,
                "images": args.images,
                "file_seconds": round(batch, 2),
                "file_questions_per_second": round(args.questions / batch, 2),
                "one_process_per_question_seconds_median": round(per_process, 2),
                "one_process_per_question_questions_per_second": round(1 / per_process, 3),
                "speedup": round(per_process * args.questions / batch, 1),
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
