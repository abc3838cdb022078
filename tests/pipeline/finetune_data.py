"""The tiny shapes dataset of the ``lxmert-finetune`` command tests: PNGs, LXMERT JSON
question files, one TSV of their regions and a tiny random QA model to start from."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import torch
from transformers import LxmertConfig, LxmertForQuestionAnswering

from pipeline.features.output import encode_tsv_line
from shapesworld.dataset import question_entries
from shapesworld.models import load_trained_detector, prepare_scene
from shapesworld.scenes import make_split
from shapesworld.vocab import ANSWERS, QUESTION_WORDS
from weights import resolve_checkpoint

VOCAB = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "?", *sorted(QUESTION_WORDS | set(ANSWERS)))


def make_finetune_data(folder: Path) -> dict[str, Path]:
    """Eight train and four held-out scenes in ``folder``: PNGs, LXMERT JSON, one TSV of their
    regions (train scenes first), and a tiny random QA model (hidden 32, 256-d features as
    the shapes detector gives). Returns the paths by role."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a busy 2-core machine: more threads are far slower
    detector = load_trained_detector(resolve_checkpoint("shapes-detector").parent)
    lines = []
    for split, count in (("train", 8), ("heldout", 4)):
        entries = []
        for scene in make_split(split, count):
            regions = detector.detect([prepare_scene(scene, detector.config)])[0]
            lines.append(encode_tsv_line(regions))
            cv2.imwrite(str(folder / f"{regions.image_id}.png"), scene.image_bgr())
            entries.extend(question_entries(scene))
        (folder / f"{split}.json").write_text(json.dumps(entries), encoding="utf-8")
    (folder / "features.tsv").write_bytes(b"".join(lines))
    torch.manual_seed(0)
    config = LxmertConfig(
        vocab_size=len(VOCAB),
        hidden_size=32,
        num_attention_heads=2,
        intermediate_size=64,
        l_layers=1,
        x_layers=1,
        r_layers=1,
        visual_feat_dim=256,
        num_qa_labels=2,
        max_position_embeddings=32,
    )
    start = folder / "start"
    LxmertForQuestionAnswering(config).save_pretrained(start, safe_serialization=True)
    (start / "label2ans.json").write_text(json.dumps(["yes", "no"]), encoding="utf-8")
    (start / "vocab.txt").write_text("\n".join(VOCAB) + "\n", encoding="utf-8")
    torch.set_num_threads(threads)
    return {
        "train": folder / "train.json",
        "test": folder / "heldout.json",
        "features": folder / "features.tsv",
        "start": start,
        "image": folder / f"seed-{make_split('heldout', 1)[0].seed}.png",
    }


def train_argv(data: dict[str, Path], out: Path, *extra: str) -> list[str]:
    """``train`` of the tiny QA model on ``data`` into ``out``, two epochs, quiet."""
    return [
        "train",
        "--task",
        "vqa",
        "--train",
        str(data["train"]),
        "--valid",
        str(data["test"]),
        "--features",
        str(data["features"]),
        "--from",
        str(data["start"]),
        "--out",
        str(out),
        "--epochs",
        "2",
        "--batch-size",
        "16",
        "--lr",
        "1e-3",
        "-q",
        *extra,
    ]
