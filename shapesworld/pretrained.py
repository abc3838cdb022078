"""The shapes LXMERT after pretraining only: the starting point of ``lxmert-finetune``.

    python -m shapesworld.pretrained --out weights/shipped --seed 0

writes ``<out>/shapes-lxmert-pretrained/`` (``config.json``, ``model.safetensors`` of the
``LxmertForPreTraining`` model, ``label2ans.json``: the 22 answers its pretraining QA head was
trained on). It runs the first half of :func:`shapesworld.train.train_lxmert` unchanged (same
seed, same scenes, same recipe, same order of random draws), i.e. the pretraining stage of the
shipped ``shapes-lxmert``, and stops before question-answering fine-tuning. The detector is
read from ``<out>/shapes-detector/``.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from detector.model import Detector
from shapesworld.models import DETECTOR_DIR, load_trained_detector, write_lxmert
from shapesworld.schedule import log
from shapesworld.train import LxmertRecipe, pretrain_stage

if TYPE_CHECKING:
    from transformers import LxmertForPreTraining

PRETRAINED_DIR = "shapes-lxmert-pretrained"


def pretrain_lxmert(
    detector: Detector, *, seed: int, recipe: LxmertRecipe | None = None
) -> LxmertForPreTraining:
    """The pretraining stage of :func:`shapesworld.train.train_lxmert`, draw for draw (eval
    mode). Its QA head is the 22-answer head that pretraining trained (``vocab.ANSWERS``)."""
    stage = pretrain_stage(detector, seed=seed, recipe=recipe or LxmertRecipe())
    return stage.model.eval()


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the process exit status."""
    parser = argparse.ArgumentParser(
        prog="python -m shapesworld.pretrained", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--out", type=Path, required=True, help="directory of the shipped models")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--lxmert-scenes", type=int, default=LxmertRecipe.scenes)
    parser.add_argument("--pretrain-steps", type=int, default=LxmertRecipe.pretrain_steps)
    args = parser.parse_args(argv)
    if args.threads < 1:
        parser.error(f"--threads must be >= 1, got {args.threads}")
    try:
        recipe = LxmertRecipe(scenes=args.lxmert_scenes, pretrain_steps=args.pretrain_steps)
    except ValueError as err:
        parser.error(str(err))
    torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)  # as shapesworld.train: subnormal Adam moments are slow
    start = time.perf_counter()
    detector = load_trained_detector(args.out / DETECTOR_DIR)
    model = pretrain_lxmert(detector, seed=args.seed, recipe=recipe)
    path = write_lxmert(model, args.out / PRETRAINED_DIR)
    log(f"wrote {path} in {time.perf_counter() - start:.0f}s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
