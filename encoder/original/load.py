"""Original LXMERT checkpoint files (``model_LXRT.pth``, ``snap/vqa/BEST.pth``...) in and
out: transformers' model from the file, the file from a model.

The architecture is read from the tensors' shapes (vocabulary, hidden size, layer counts,
visual feature size, answers, object and attribute classes), except the number of attention
heads, which no tensor records: BERT's head width of 64 (12 heads at hidden 768, the only
size airsplay/lxmert ever trained) unless given.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import LxmertConfig, LxmertPreTrainedModel

from encoder.config import Head
from encoder.model import build_model
from encoder.original.keys import (
    PRETRAINING_ENCODER,
    TASK_ENCODER,
    Layout,
    OriginalCheckpointError,
    check_against_model,
    from_original,
    original_layout,
    strip_data_parallel,
    to_original,
)
from weights import explicit_path, resolve_checkpoint
from weights.files import atomic_path, atomic_write_text
from weights.io import load_state_dict
from weights.registered import all_records

#: Suffixes of ``torch.save`` files; a file (not a directory) with one of them is read as an
#: original checkpoint wherever a model is named.
TORCH_SUFFIXES = (".pth", ".pt", ".bin", ".ckpt")
#: BERT-base's attention head width: hidden 768 / 12 heads.
BERT_HEAD_WIDTH = 64
#: Files beside ``X.pth`` that ``lxmert-finetune export`` writes and loading reads: the
#: answers in label order (``X.label2ans.json``) and transformers' config of the model
#: (``X.config.json``, for its head count, which the state dict cannot hold). The ``.pth``
#: itself stays exactly the original layout.
ANSWERS_SUFFIX = ".label2ans.json"
CONFIG_SUFFIX = ".config.json"


@dataclass(frozen=True, eq=False)
class OriginalModel:
    """A model built from an original checkpoint.

    Attributes:
        model: transformers' model (eval mode) with head ``head``.
        head: ``qa``, ``pretraining``, ``base`` or ``nlvr2``.
        layout: the original module that saved the file (``encoder.original.keys.Layout``).
        data_parallel: whether the keys carried DataParallel's ``module.``.
        ignored: original keys left out by name (heads the target has no place for).
    """

    model: LxmertPreTrainedModel
    head: Head
    layout: Layout
    data_parallel: bool
    ignored: tuple[str, ...]


def original_checkpoint_file(source: str | os.PathLike[str]) -> Path | None:
    """The original LXMERT file ``source`` names, or None (a directory, another registry name).

    A name registered for an original checkpoint (``python -m weights register``: a local
    file, or a URL downloaded here on first use) resolves to its file, checked against its
    sha256; other names are not original files. Else ``source`` is a path: an existing
    ``torch.save`` file (``.pth``, ``.pt``, ``.bin``, ``.ckpt``) is one.

    Raises:
        CheckpointNotFoundError: a registered name whose file is missing and cannot be
            downloaded (a ``FileNotFoundError``: the message says where it looked).
        ChecksumError: its file is not the one registered (a ``ValueError``).
    """
    records = all_records()
    if explicit_path(source, registry=records) is None:  # a registry name
        record = records[str(source)]
        return resolve_checkpoint(str(source), registry=records) if record.original else None
    path = Path(source)
    return path if path.suffix.lower() in TORCH_SUFFIXES and path.is_file() else None


def _layer_count(state: Mapping[str, torch.Tensor], prefix: str) -> int:
    """1 + the highest layer index under ``prefix`` (0 without any): a gap then shows up as
    missing keys rather than as a silently shorter model."""
    pattern = re.compile(re.escape(prefix) + r"(\d+)\.")
    indices = [int(m.group(1)) for key in state if (m := pattern.match(key))]
    return max(indices) + 1 if indices else 0


def config_from_original(
    state: Mapping[str, torch.Tensor], *, layout: Layout, num_attention_heads: int | None = None
) -> LxmertConfig:
    """The :class:`LxmertConfig` of an original state dict (names without ``module.``).

    Raises:
        OriginalCheckpointError: a tensor the architecture is read from is missing, or the
            hidden size does not split into ``num_attention_heads`` heads.
    """
    encoder = PRETRAINING_ENCODER if layout == "pretraining" else TASK_ENCODER

    def shape(name: str) -> torch.Size:
        if name not in state:
            raise OriginalCheckpointError(f"the {layout} checkpoint has no {name}")
        return state[name].shape

    vocab, hidden = shape(encoder + "embeddings.word_embeddings.weight")
    heads = num_attention_heads or max(hidden // BERT_HEAD_WIDTH, 1)
    if hidden % heads:
        raise OriginalCheckpointError(
            f"hidden size {hidden} does not split into {heads} attention heads; pass "
            "num_attention_heads"
        )
    ffn_names = ("intermediate.dense.weight", "_inter.dense.weight")
    ffn = next((key for key in state if key.endswith(ffn_names)), None)
    visual = encoder + "encoder.visn_fc."
    settings: dict[str, Any] = {
        "vocab_size": vocab,
        "hidden_size": hidden,
        "num_attention_heads": heads,
        "intermediate_size": shape(ffn)[0] if ffn else 4 * hidden,
        "max_position_embeddings": shape(encoder + "embeddings.position_embeddings.weight")[0],
        "type_vocab_size": shape(encoder + "embeddings.token_type_embeddings.weight")[0],
        "visual_feat_dim": shape(visual + "visn_fc.weight")[1],
        "visual_pos_dim": shape(visual + "box_fc.weight")[1],
        "l_layers": _layer_count(state, encoder + "encoder.layer."),
        "x_layers": _layer_count(state, encoder + "encoder.x_layers."),
        "r_layers": _layer_count(state, encoder + "encoder.r_layers."),
    }
    answers = "answer_head.logit_fc.3.weight" if layout == "pretraining" else "logit_fc.3.weight"
    if layout != "nlvr2" and answers in state:
        settings["num_qa_labels"] = shape(answers)[0]
    for field, name in (("num_object_labels", "obj"), ("num_attr_labels", "attr")):
        key = f"obj_predict_head.decoder_dict.{name}.weight"
        if key in state:
            settings[field] = shape(key)[0]
    return LxmertConfig(**settings)


def model_from_original(
    state: Mapping[str, torch.Tensor],
    *,
    head: Head | None = None,
    num_attention_heads: int | None = None,
) -> OriginalModel:
    """transformers' model (eval mode) holding an original state dict.

    Args:
        state: any of the four original layouts, with or without ``module.``.
        head: the target (``encoder.config.Head``); None: ``nlvr2`` for an NLVR2
            checkpoint, else ``qa`` (a ``model_LXRT.pth`` then answers over its 9500 answers).
        num_attention_heads: default hidden size / 64, as BERT.

    Every model tensor comes from ``state`` (checked name by name and shape by shape, see
    :func:`~encoder.original.keys.check_against_model`), except a new NLVR2 head, which is
    initialised as transformers initialises one.
    """
    plain, _ = strip_data_parallel(state)
    layout = original_layout(plain)
    target: Head = head or ("nlvr2" if layout == "nlvr2" else "qa")
    mapped = from_original(state, head=target)
    config = config_from_original(plain, layout=layout, num_attention_heads=num_attention_heads)
    # A skeleton on the meta device costs no memory and no random initialisation (7 s for
    # the 200M-parameter base model); its tensors are then the checkpoint's own.
    with torch.device("meta"):
        model = build_model(config, head=target)
    check_against_model(mapped, {k: v.shape for k, v in model.state_dict().items()})
    tensors = {k: v.float() if v.is_floating_point() else v for k, v in mapped.state.items()}
    if mapped.fresh:
        model = build_model(config, head=target)  # the new head needs real initial values
        model.load_state_dict(tensors, strict=False)
    else:
        model.load_state_dict(tensors, strict=True, assign=True)
        model.tie_weights()  # assign gave the tied pair two Parameters; make them one again
    return OriginalModel(
        model=model.eval(),
        head=target,
        layout=layout,
        data_parallel=mapped.data_parallel,
        ignored=mapped.ignored,
    )


def load_original(
    path: str | os.PathLike[str],
    *,
    head: Head | None = None,
    num_attention_heads: int | None = None,
) -> OriginalModel:
    """:func:`model_from_original` of a file, read by ``weights.io.load_state_dict``
    (``torch.load(weights_only=True)``: tensors and plain containers only, nothing run).

    Raises:
        OriginalCheckpointError: the file's keys or shapes do not map; the message names
            the file and the keys.
    """
    state = load_state_dict(path)
    try:
        return model_from_original(state, head=head, num_attention_heads=num_attention_heads)
    except OriginalCheckpointError as error:
        raise OriginalCheckpointError(f"{path}: {error}") from None


def save_original(
    model: LxmertPreTrainedModel,
    path: str | os.PathLike[str],
    *,
    head: Head,
    data_parallel: bool = False,
) -> Path:
    """Write ``model`` as ``torch.save(state_dict)`` in the original layout of ``head``
    (:func:`~encoder.original.keys.to_original`), atomically, so that airsplay/lxmert's
    loaders read it (``--load`` for a task, ``--loadLXMERTQA`` for a pretraining model)."""
    state = {
        key: value.detach().to("cpu")
        for key, value in to_original(
            model.state_dict(), head=head, data_parallel=data_parallel
        ).items()
    }
    target = Path(path)
    with atomic_path(target) as tmp:
        torch.save(state, tmp)
    return target


def sidecar(path: str | os.PathLike[str], suffix: str) -> Path:
    """``X.label2ans.json`` / ``X.config.json`` beside ``X.pth`` (``suffix``: one of
    :data:`ANSWERS_SUFFIX`, :data:`CONFIG_SUFFIX`)."""
    return Path(path).with_suffix(suffix)


def sidecar_heads(path: str | os.PathLike[str]) -> int | None:
    """``num_attention_heads`` of the ``X.config.json`` beside ``path``, or None without one.

    Raises:
        ValueError: the file is there but holds no positive ``num_attention_heads``.
    """
    config = sidecar(path, CONFIG_SUFFIX)
    if not config.is_file():
        return None
    try:
        heads = json.loads(config.read_text(encoding="utf-8")).get("num_attention_heads")
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, AttributeError) as error:
        raise ValueError(f"{config}: not a readable model config ({error})") from None
    if not isinstance(heads, int) or isinstance(heads, bool) or heads < 1:
        raise ValueError(f"{config}: num_attention_heads must be a positive integer, got {heads!r}")
    return heads


def write_sidecars(
    model: LxmertPreTrainedModel, path: str | os.PathLike[str], *, answers: tuple[str, ...] | None
) -> tuple[Path, ...]:
    """Write ``X.config.json`` (the model's config) and, for a QA model, ``X.label2ans.json``
    (a JSON list in label order, as LXMERT's ``trainval_label2ans.json``) beside ``X.pth``,
    atomically; returns the files written."""
    written = [sidecar(path, CONFIG_SUFFIX)]
    atomic_write_text(written[0], model.config.to_json_string())
    if answers is not None:
        written.append(sidecar(path, ANSWERS_SUFFIX))
        atomic_write_text(written[1], json.dumps(list(answers)) + "\n")
    return tuple(written)
