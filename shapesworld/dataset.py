"""A shapes-world question-answering dataset in the formats of real data, for ``lxmert-finetune``.

    python -m shapesworld.dataset --out data/shapes-qa [--train 2000] [--valid 200] [--test 200] \
        [--spatial-aids]

writes, for each split (``train``: the first scenes of the ``train`` seed range, the ones the
shipped ``shapes-lxmert`` was trained on; ``valid``: the ``val`` range; ``test``: the
``heldout`` range, the README's held-out scenes)::

    <out>/images/<split>/seed-<seed>.png   the scene (lossless PNG)
    <out>/<split>.json                     questions as LXMERT JSON
    <out>/features/<split>.tsv             regions by ``extract_features`` (obj36 TSV)

Question entries: ``{"question_id": "seed-<seed>-<k>", "img_id": "seed-<seed>", "sent": ...,
"label": {answer: 1.0}, "question_type": color|shape|count|exist|spatial, "answer_type":
yes/no|number|other}``. With ``--spatial-aids``, ``train`` also has the training-only
``position`` and ``relation`` questions (``questions.training_questions``; an experiment: they
have not yet made spatial questions learnable). The regions are made by our own
``extract_features`` command with the shipped ``shapes-detector`` (its preset's selection),
image id = file stem.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path

from shapesworld.questions import Question, scene_questions, training_questions
from shapesworld.scenes import Scene, Split, make_scene, split_seeds
from weights.files import atomic_write_text

#: Dataset split -> the scene seed range it is drawn from.
SPLITS: dict[str, Split] = {"train": "train", "valid": "val", "test": "heldout"}


def answer_type(question: Question) -> str:
    """VQA's answer type of a question: ``yes/no``, ``number`` or ``other``."""
    if question.answer in ("yes", "no"):
        return "yes/no"
    return "number" if question.answer.isdigit() else "other"


def question_entries(scene: Scene, *, training: bool = False) -> list[dict[str, object]]:
    """The scene's questions as LXMERT JSON entries (one gold answer, score 1.0):
    ``questions.training_questions`` with ``training``, else ``questions.scene_questions``."""
    image_id = f"seed-{scene.seed}"
    questions = training_questions(scene) if training else scene_questions(scene)
    return [
        {
            "question_id": f"{image_id}-{k}",
            "img_id": image_id,
            "sent": question.text,
            "label": {question.answer: 1.0},
            "question_type": question.kind,
            "answer_type": answer_type(question),
        }
        for k, question in enumerate(questions)
    ]


def write_split(out: Path, name: str, count: int, *, spatial_aids: bool = False) -> Path:
    """Images and questions of ``count`` scenes of dataset split ``name`` (with
    ``spatial_aids``, the train split's questions are ``questions.training_questions``);
    returns the image folder. Each file is replaced atomically."""
    folder = out / "images" / name
    folder.mkdir(parents=True, exist_ok=True)
    entries: list[dict[str, object]] = []
    for seed in split_seeds(SPLITS[name], count):
        scene = make_scene(seed)
        scene.write_png(folder / f"seed-{seed}.png")
        entries.extend(question_entries(scene, training=spatial_aids and name == "train"))
    atomic_write_text(out / f"{name}.json", json.dumps(entries, indent=0) + "\n")
    return folder


def extract_split(images: Path, features: Path, *, detector: str) -> int:
    """Run ``extract_features`` on one split's images; returns its exit code."""
    from pipeline.commands.extract import main as extract_features  # the command itself, in process

    features.parent.mkdir(parents=True, exist_ok=True)
    argv = [str(images), "--out", str(features), "--detector", detector, "--overwrite", "-q"]
    return extract_features(argv)


def write_dataset(
    out: Path, *, counts: dict[str, int], detector: str, spatial_aids: bool = False
) -> dict[str, Path]:
    """Every split with a positive count: images, questions, features. Returns split -> TSV.

    Raises:
        RuntimeError: ``extract_features`` did not finish a split (its exit code is named).
    """
    written: dict[str, Path] = {}
    for name, count in counts.items():
        if count <= 0:
            continue
        images = write_split(out, name, count, spatial_aids=spatial_aids)
        tsv = out / "features" / f"{name}.tsv"
        code = extract_split(images, tsv, detector=detector)
        if code != 0:
            raise RuntimeError(f"extract_features exited {code} on {images}")
        written[name] = tsv
    return written


def add_split_flags(parser: argparse.ArgumentParser) -> None:
    """``--out`` and the scene count of each split (``--train``, ``--valid``, ``--test``)."""
    parser.add_argument("--out", type=Path, required=True, help="dataset folder")
    parser.add_argument("--train", type=int, default=2000, help="train scenes (default 2000)")
    parser.add_argument("--valid", type=int, default=200, help="valid scenes (default 200)")
    parser.add_argument("--test", type=int, default=200, help="held-out scenes (default 200)")


def split_counts(args: argparse.Namespace) -> dict[str, int]:
    """Scenes per split, from the flags of :func:`add_split_flags`."""
    return {"train": args.train, "valid": args.valid, "test": args.test}


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the process exit status."""
    parser = argparse.ArgumentParser(
        prog="python -m shapesworld.dataset", description=__doc__.split("\n")[0]
    )
    add_split_flags(parser)
    parser.add_argument("--detector", default="shapes-detector", help="registry name or file")
    parser.add_argument(
        "--spatial-aids",
        action="store_true",
        help="add the training-only position and relation questions to the train split",
    )
    args = parser.parse_args(argv)
    counts = split_counts(args)
    if any(count < 0 for count in counts.values()):
        parser.error("scene counts must be >= 0")
    if args.out.exists() and not args.out.is_dir():
        parser.error(f"--out {args.out} exists and is not a directory")
    written = write_dataset(
        args.out, counts=counts, detector=args.detector, spatial_aids=args.spatial_aids
    )
    for name, tsv in written.items():
        print(f"{name}: {args.out / (name + '.json')} and {tsv}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
