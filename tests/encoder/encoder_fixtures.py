"""Helpers of the encoder tests (a unique module name: test directories are not packages)."""

from __future__ import annotations

from typing import Any

import numpy as np
from transformers import LxmertConfig

from detector.structures import RegionFeatures

FEAT_DIM = 16
NUM_OBJECTS = 10
NUM_ATTRS = 7
NUM_ANSWERS = 5

_WORDS = [
    "a",
    "an",
    "the",
    "is",
    "are",
    "on",
    "in",
    "near",
    "above",
    "below",
    "of",
    "and",
    "what",
    "color",
    "shape",
    "how",
    "many",
    "there",
    "ball",
    "cube",
    "circle",
    "square",
    "wall",
    "grass",
    "red",
    "blue",
    "green",
    "small",
    "big",
    "two",
    "three",
    "caption",
    "?",
    ".",
    ",",
    "0",
    "1",
    "2",
    "3",
    "4",
    "5",
    "6",
    "7",
    "8",
    "9",
    "##s",
    "##e",
    "x",
    "y",
]
#: A small vocabulary for tiny models (the special tokens first, as BERT's ids differ).
SMALL_VOCAB: tuple[str, ...] = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *_WORDS)


def make_regions(
    image_id: str,
    num_boxes: int,
    *,
    seed: int,
    feat_dim: int = FEAT_DIM,
    image_w: int = 640,
    image_h: int = 480,
) -> RegionFeatures:
    """Random but valid regions of one ``image_w`` x ``image_h`` image."""
    rng = np.random.default_rng(seed)
    x1 = rng.uniform(0, image_w / 2, num_boxes)
    y1 = rng.uniform(0, image_h / 2, num_boxes)
    x2 = x1 + rng.uniform(1, image_w / 2, num_boxes)
    y2 = y1 + rng.uniform(1, image_h / 2, num_boxes)
    return RegionFeatures(
        image_id=image_id,
        image_h=image_h,
        image_w=image_w,
        boxes=np.stack([x1, y1, x2, y2], axis=1).astype(np.float32),
        features=rng.normal(size=(num_boxes, feat_dim)).astype(np.float32),
        objects_id=rng.integers(0, NUM_OBJECTS, num_boxes).astype(np.int64),
        objects_conf=rng.uniform(0.1, 1.0, num_boxes).astype(np.float32),
        attrs_id=rng.integers(0, NUM_ATTRS, num_boxes).astype(np.int64),
        attrs_conf=rng.uniform(0.1, 1.0, num_boxes).astype(np.float32),
    )


def tiny_config(**overrides: Any) -> LxmertConfig:
    """A seconds-fast LXMERT: hidden 32, 2 heads, one layer per encoder, no dropout."""
    settings: dict[str, Any] = {
        "vocab_size": len(SMALL_VOCAB),
        "hidden_size": 32,
        "num_attention_heads": 2,
        "intermediate_size": 64,
        "l_layers": 1,
        "x_layers": 1,
        "r_layers": 1,
        "visual_feat_dim": FEAT_DIM,
        "num_object_labels": NUM_OBJECTS,
        "num_attr_labels": NUM_ATTRS,
        "num_qa_labels": NUM_ANSWERS,
        "hidden_dropout_prob": 0.0,
        "attention_probs_dropout_prob": 0.0,
        "max_position_embeddings": 64,
    }
    settings.update(overrides)
    return LxmertConfig(**settings)
