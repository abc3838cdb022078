"""Helpers of the fine-tuning tests: a dict as region source, a tiny QA model directory with a
shapes-world vocabulary, and shapes-world questions with the shipped detector's regions."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path

from transformers import LxmertConfig, LxmertForQuestionAnswering

from detector.structures import RegionFeatures
from encoder.finetune import QuestionEntry
from encoder.finetune.data import read_questions
from shapesworld.scenes import Split
from shapesworld.vocab import ANSWERS, QUESTION_WORDS

#: WordPiece vocabulary of the tiny models: special tokens, then every question word and
#: answer of the shapes world, so that questions tokenise into whole words.
SHAPES_VOCAB: tuple[str, ...] = (
    "[PAD]",
    "[UNK]",
    "[CLS]",
    "[SEP]",
    "[MASK]",
    "?",
    ",",
    ".",
    *sorted(set(QUESTION_WORDS) | set(ANSWERS)),
)


class DictSource:
    """Regions by image id from a dict (the RegionSource protocol)."""

    def __init__(self, regions: Mapping[str, RegionFeatures]) -> None:
        self.regions = dict(regions)

    def get(self, image_id: str) -> RegionFeatures:
        return self.regions[image_id]

    def __contains__(self, image_id: object) -> bool:
        return image_id in self.regions


def write_tiny_model(
    directory: Path, *, answers: Sequence[str], feat_dim: int, dropout: float = 0.0, seed: int = 0
) -> Path:
    """A random tiny LxmertForQuestionAnswering (hidden 32, one layer per encoder) saved with
    ``label2ans.json`` and ``vocab.txt`` (:data:`SHAPES_VOCAB`); returns ``directory``."""
    import torch

    torch.manual_seed(seed)
    config = LxmertConfig(
        vocab_size=len(SHAPES_VOCAB),
        hidden_size=32,
        num_attention_heads=2,
        intermediate_size=64,
        l_layers=1,
        x_layers=1,
        r_layers=1,
        visual_feat_dim=feat_dim,
        num_qa_labels=len(answers),
        hidden_dropout_prob=dropout,
        attention_probs_dropout_prob=dropout,
        max_position_embeddings=32,
        initializer_range=0.1,
    )
    LxmertForQuestionAnswering(config).save_pretrained(directory, safe_serialization=True)
    (directory / "label2ans.json").write_text(json.dumps(list(answers)), encoding="utf-8")
    (directory / "vocab.txt").write_text("\n".join(SHAPES_VOCAB) + "\n", encoding="utf-8")
    return directory


def write_questions(path: Path, entries: Sequence[Mapping[str, object]]) -> Path:
    """``entries`` as an LXMERT JSON question file."""
    path.write_text(json.dumps(list(entries)), encoding="utf-8")
    return path


def shapes_split(
    split: Split, count: int, folder: Path
) -> tuple[dict[str, RegionFeatures], tuple[QuestionEntry, ...], Path]:
    """``count`` scenes of a shapes-world split: the shipped detector's regions by image id,
    their questions (read back from the LXMERT JSON written to ``folder``) and that file."""
    import torch

    from shapesworld.dataset import question_entries
    from shapesworld.models import load_trained_detector, prepare_scene
    from shapesworld.scenes import make_split
    from weights import resolve_checkpoint

    detector = load_trained_detector(resolve_checkpoint("shapes-detector").parent)
    # One thread: on a busy 2-core machine more threads made detection 50x slower.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    regions: dict[str, RegionFeatures] = {}
    raw: list[dict[str, object]] = []
    for scene in make_split(split, count):
        found = detector.detect([prepare_scene(scene, detector.config)])[0]
        regions[found.image_id] = found
        raw.extend(question_entries(scene))
    torch.set_num_threads(threads)
    path = write_questions(folder / f"{split}.json", raw)
    return regions, read_questions(path), path
