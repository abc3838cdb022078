"""State dicts in the original LXMERT layouts (airsplay/lxmert), named exactly as
encoder/data/lxmert-original.keys.json lists them: full size with random values that cost no
memory, or scaled down with the same names."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

import torch

KEYS_FILE = Path(__file__).parents[2] / "encoder" / "data" / "lxmert-original.keys.json"
#: The key file's four checkpoints, by our short name.
LAYOUT_TITLES = {
    "pretraining": "model_LXRT.pth",
    "vqa": "VQAModel",
    "gqa": "GQAModel",
    "nlvr2": "NLVR2Model",
}


def key_file(layout: str) -> dict[str, tuple[int, ...]]:
    """``{key: shape}`` of one layout of the key file (``pretraining``, ``vqa``, ``gqa``,
    ``nlvr2``), in the file's order."""
    checkpoints = json.loads(KEYS_FILE.read_text(encoding="utf-8"))["checkpoints"]
    (title,) = [t for t in checkpoints if t.startswith(LAYOUT_TITLES[layout])]
    return {key: tuple(shape) for key, shape in checkpoints[title].items()}


def full_size_state(layout: str, *, seed: int = 0) -> dict[str, torch.Tensor]:
    """The layout at its real size (bert-base, ~200M values) with random values, each tensor
    one random row broadcast to its shape: the names and shapes are the real ones while the
    memory is a few megabytes. The decoder shares the word embeddings, as in any file the
    original saved (one Parameter under both names)."""
    generator = torch.Generator().manual_seed(seed)
    state = {
        key: torch.randn(shape[-1], generator=generator).expand(*shape)
        for key, shape in key_file(layout).items()
    }
    if "cls.predictions.decoder.weight" in state:
        state["cls.predictions.decoder.weight"] = state["bert.embeddings.word_embeddings.weight"]
    return state


def scaled_state(
    layout: str,
    *,
    hidden: int = 16,
    vocab: int = 40,
    feat: int = 12,
    answers: int | None = None,
    objects: int = 9,
    attrs: int = 5,
    positions: int = 24,
    seed: int = 0,
) -> dict[str, torch.Tensor]:
    """The layout with the key file's names (9 language, 5 object, 5 cross layers) and each
    dimension scaled down: 768 -> hidden, 3072 -> 4 hidden, 1536 -> 2 hidden, 30522 ->
    vocab, 2048 -> feat, 512 -> positions, 1600/400 -> objects/attrs, the answers -> answers
    (default: unchanged). Random values: weights ~ N(0, 0.3), LayerNorm weights ~ 1 + N(0, 0.1)."""
    size_of = {
        768: hidden,
        3072: 4 * hidden,
        1536: 2 * hidden,
        30522: vocab,
        2048: feat,
        512: positions,
        1600: objects,
        400: attrs,
    }
    generator = torch.Generator().manual_seed(seed)
    state = {}
    for key, shape in key_file(layout).items():
        head_out = key.endswith(("logit_fc.3.weight", "logit_fc.3.bias"))
        dims = [
            (answers or d) if head_out and i == 0 else size_of.get(d, d)
            for i, d in enumerate(shape)
        ]
        values = torch.randn(*dims, generator=generator)
        is_norm = "LayerNorm" in key or "layer_norm" in key or key.endswith("logit_fc.2.weight")
        state[key] = 1.0 + 0.1 * values if is_norm and key.endswith("weight") else 0.3 * values
    if "cls.predictions.decoder.weight" in state:
        state["cls.predictions.decoder.weight"] = state["bert.embeddings.word_embeddings.weight"]
    return state


def with_data_parallel(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The names a DataParallel run gives (written here from the key file's description,
    independently of encoder.original): ``module.`` at the start of pretraining keys, after
    ``lxrt_encoder.model.`` in task keys; a task's ``logit_fc`` stays outside."""
    out = {}
    for key, value in state.items():
        if key.startswith("lxrt_encoder.model."):
            out[key.replace("lxrt_encoder.model.", "lxrt_encoder.model.module.", 1)] = value
        elif key.startswith("logit_fc."):
            out[key] = value
        else:
            out["module." + key] = value
    return out
