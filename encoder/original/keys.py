"""State-dict names of the original LXMERT checkpoints <-> transformers' LXMERT, as pure
functions on ``{name: Tensor}`` dicts (nothing here builds a model or reads a file).

The original repository (airsplay/lxmert) saves ``torch.save(model.state_dict())`` of:

* ``LXRTPretraining`` (``model_LXRT.pth``): the encoder under ``bert.``, the masked-LM and
  match heads under ``cls.``, the object head under ``obj_predict_head.`` and the 9500-way
  answer head under ``answer_head.logit_fc.{0,2,3}``;
* ``VQAModel`` / ``GQAModel`` (``snap/vqa/BEST.pth``): the encoder under
  ``lxrt_encoder.model.bert.`` and the answer head under ``logit_fc.{0,2,3}``;
* ``NLVR2Model``: the same names, its head reading two pooled outputs (``logit_fc.0`` is
  ``[2H, 2H]``).

``nn.DataParallel`` adds ``module.``: at the start of every key of a multi-GPU pretraining
run, after ``lxrt_encoder.model.`` in a task fine-tuned with ``--multiGPU``.

Below the prefix the encoder's names are transformers' names already (transformers ported
this very code), so the encoder maps by prefix: ``bert.`` <-> ``lxmert.`` (nothing for
``LxmertModel``). The heads keep their names in ``LxmertForPreTraining``; a task's
``logit_fc.`` is ``answer_head.logit_fc.`` of ``LxmertForQuestionAnswering`` and
``logit_fc.`` of our ``LxmertForNLVR2``.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

import torch

from encoder.config import Head

logger = logging.getLogger(__name__)

#: Which original module saved a checkpoint: ``LXRTPretraining`` ("pretraining"),
#: ``VQAModel``/``GQAModel`` ("qa") or ``NLVR2Model`` ("nlvr2").
Layout = Literal["pretraining", "qa", "nlvr2"]

DATA_PARALLEL = "module."
PRETRAINING_ENCODER = "bert."
TASK_WRAPPER = "lxrt_encoder.model."
TASK_ENCODER = TASK_WRAPPER + "bert."
#: The encoder's sub-modules; every encoder key continues with one of them.
_ENCODER_PARTS = ("embeddings.", "encoder.", "pooler.")

#: ``model_LXRT.pth``'s pretraining heads: for a QA, NLVR2 or encoder-only target these are
#: ignored, by name, and nothing else is.
PRETRAINING_HEAD_KEYS: tuple[str, ...] = (
    "cls.predictions.bias",
    "cls.predictions.transform.dense.weight",
    "cls.predictions.transform.dense.bias",
    "cls.predictions.transform.LayerNorm.weight",
    "cls.predictions.transform.LayerNorm.bias",
    "cls.predictions.decoder.weight",
    "cls.seq_relationship.weight",
    "cls.seq_relationship.bias",
    "obj_predict_head.transform.dense.weight",
    "obj_predict_head.transform.dense.bias",
    "obj_predict_head.transform.LayerNorm.weight",
    "obj_predict_head.transform.LayerNorm.bias",
    "obj_predict_head.decoder_dict.obj.weight",
    "obj_predict_head.decoder_dict.obj.bias",
    "obj_predict_head.decoder_dict.attr.weight",
    "obj_predict_head.decoder_dict.attr.bias",
    "obj_predict_head.decoder_dict.feat.weight",
    "obj_predict_head.decoder_dict.feat.bias",
)
#: A task's head: Linear, GeLU (no weights), LayerNorm, Linear.
TASK_HEAD_KEYS: tuple[str, ...] = tuple(
    f"logit_fc.{index}.{kind}" for index in (0, 2, 3) for kind in ("weight", "bias")
)
#: ``model_LXRT.pth``'s answer head: the same module under ``answer_head.``.
ANSWER_HEAD_KEYS: tuple[str, ...] = tuple(f"answer_head.{key}" for key in TASK_HEAD_KEYS)

#: The tied pair of transformers' ``LxmertForPreTraining`` (and of the original, which
#: saved one Parameter under both names).
DECODER_KEY = "cls.predictions.decoder.weight"
WORD_EMBEDDINGS = "embeddings.word_embeddings.weight"


class OriginalCheckpointError(ValueError):
    """An original LXMERT state dict that does not map: the message names every key."""


@dataclass(frozen=True)
class MappedState:
    """An original state dict in transformers' names.

    Attributes:
        layout: the original module that saved it.
        data_parallel: whether its keys carried DataParallel's ``module.``.
        state: ``{our name: tensor}``, the tensors themselves (not copies).
        sources: ``{our name: original name}`` (``module.`` removed), for error messages.
        ignored: original names left out on purpose (heads the target has no place for).
        fresh: our names the checkpoint cannot give (a new NLVR2 head); they start from
            the model's own initialisation.
    """

    layout: Layout
    data_parallel: bool
    state: dict[str, torch.Tensor]
    sources: dict[str, str]
    ignored: tuple[str, ...]
    fresh: tuple[str, ...]


def strip_data_parallel(state: Mapping[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], bool]:
    """``state`` without DataParallel's ``module.`` (at the start, or after
    ``lxrt_encoder.model.``), and whether any key had it.

    Raises:
        OriginalCheckpointError: a key is there both with and without ``module.``.
    """
    out: dict[str, torch.Tensor] = {}
    found = False
    for key, value in state.items():
        name = key
        if name.startswith(DATA_PARALLEL):
            name = name[len(DATA_PARALLEL) :]
        if name.startswith(TASK_WRAPPER + DATA_PARALLEL):
            name = TASK_WRAPPER + name[len(TASK_WRAPPER + DATA_PARALLEL) :]
        found = found or name != key
        if name in out:
            raise OriginalCheckpointError(
                f"key {key!r} is {name!r} once DataParallel's 'module.' is removed, and that "
                "key is also in the checkpoint"
            )
        out[name] = value
    return out, found


def original_layout(state: Mapping[str, torch.Tensor]) -> Layout:
    """Which original module saved ``state`` (names without ``module.``): ``bert.*`` keys are
    ``LXRTPretraining``; ``lxrt_encoder.model.bert.*`` keys a task, NLVR2 when its head reads
    two pooled outputs (``logit_fc.0.weight`` is ``[2H, 2H]``), else VQA/GQA."""
    pretraining = any(key.startswith(PRETRAINING_ENCODER) for key in state)
    task = any(key.startswith(TASK_ENCODER) for key in state)
    if pretraining == task:
        sample = ", ".join(list(state)[:3])
        raise OriginalCheckpointError(
            "not an original LXMERT checkpoint: expected keys under 'bert.' (model_LXRT.pth) "
            f"or under 'lxrt_encoder.model.bert.' (a task), not both nor neither; first keys: "
            f"{sample}"
        )
    if pretraining:
        return "pretraining"
    words = state.get(TASK_ENCODER + WORD_EMBEDDINGS)
    head = state.get("logit_fc.0.weight")
    if words is not None and head is not None and head.shape[-1] == 2 * words.shape[-1]:
        return "nlvr2"
    return "qa"


def _encoder_prefix(head: Head) -> str:
    return "" if head == "base" else "lxmert."


def _head_target(key: str, *, layout: Layout, head: Head) -> str | None:
    """Our name of an original head key, or None when ``head`` has no place for it."""
    if layout == "pretraining":
        if key in PRETRAINING_HEAD_KEYS:
            return key if head == "pretraining" else None
        return key if head in ("pretraining", "qa") else None
    if layout == "nlvr2":
        if head in ("qa", "pretraining"):
            raise OriginalCheckpointError(
                f"{key!r} belongs to an NLVR2 head (two images, True/False), which is no "
                f"question-answering head; load this checkpoint with head 'nlvr2' or 'base', "
                f"not {head!r}"
            )
        return key if head == "nlvr2" else None
    return "answer_head." + key if head in ("qa", "pretraining") else None


def from_original(state: Mapping[str, torch.Tensor], *, head: Head) -> MappedState:
    """Map an original state dict (any of the four layouts, with or without ``module.``) to
    the names of transformers' model for ``head`` (``encoder.config.Head``).

    Every key is consumed or ignored by name: for a target without a place for them, the
    18 :data:`PRETRAINING_HEAD_KEYS` and the answer head (``answer_head.*`` of
    ``model_LXRT.pth``, ``logit_fc.*`` of a task) are ignored. Any other key is an error.

    ``cls.predictions.decoder.weight`` is tied to the word embeddings in transformers (and
    was one Parameter in the original, so both names hold the same values in any file it
    saved). When they differ the word embeddings win: they are what the encoder reads, and
    the decoder becomes them; a warning names the key.

    Raises:
        OriginalCheckpointError: an unknown key (all of them named), or an NLVR2 head asked
            to serve as a QA head.
    """
    plain, data_parallel = strip_data_parallel(state)
    layout = original_layout(plain)
    encoder = PRETRAINING_ENCODER if layout == "pretraining" else TASK_ENCODER
    heads = PRETRAINING_HEAD_KEYS + ANSWER_HEAD_KEYS if layout == "pretraining" else TASK_HEAD_KEYS
    mapped: dict[str, torch.Tensor] = {}
    sources: dict[str, str] = {}
    ignored: list[str] = []
    unknown: list[str] = []
    for key, value in plain.items():
        rest = key[len(encoder) :] if key.startswith(encoder) else None
        if rest is not None and rest.startswith(_ENCODER_PARTS):
            target: str | None = _encoder_prefix(head) + rest
        elif key in heads:
            target = _head_target(key, layout=layout, head=head)
        else:
            unknown.append(key)
            continue
        if target is None:
            ignored.append(key)
        else:
            mapped[target], sources[target] = value, key
    if unknown:
        raise OriginalCheckpointError(
            f"{len(unknown)} key(s) of this {layout} checkpoint have no place in transformers' "
            f"LXMERT: {', '.join(unknown)}"
        )
    if head == "pretraining":
        _tie_decoder(mapped)
    # Our NLVR2 head has the original task head's names; from another layout it starts new.
    fresh = TASK_HEAD_KEYS if head == "nlvr2" and layout != "nlvr2" else ()
    return MappedState(
        layout=layout,
        data_parallel=data_parallel,
        state=mapped,
        sources=sources,
        ignored=tuple(ignored),
        fresh=fresh,
    )


def _tie_decoder(mapped: dict[str, torch.Tensor]) -> None:
    """Make the masked-LM decoder the word embeddings (in place), warning when they differ."""
    words = mapped.get("lxmert." + WORD_EMBEDDINGS)
    decoder = mapped.get(DECODER_KEY)
    if words is None or decoder is None:
        return  # reported as missing by check_against_model
    if decoder.shape == words.shape and not torch.equal(decoder, words):
        logger.warning(
            "%s differs from bert.%s; transformers ties them, and the word embeddings win "
            "(the encoder reads them): the decoder's own values are dropped",
            DECODER_KEY,
            WORD_EMBEDDINGS,
        )
    if decoder.shape == words.shape:
        mapped[DECODER_KEY] = words


def check_against_model(mapped: MappedState, expected: Mapping[str, torch.Size]) -> None:
    """Refuse unless ``mapped.state`` fills exactly the model's state dict ``expected``
    (``{name: shape}``), apart from ``mapped.fresh``.

    Raises:
        OriginalCheckpointError: naming every missing key, every key the model lacks and
            every wrong shape (with the original key it came from).
    """
    problems = []
    missing = [key for key in expected if key not in mapped.state and key not in mapped.fresh]
    if missing:
        problems.append(f"missing from the checkpoint: {', '.join(missing)}")
    extra = [mapped.sources[key] for key in mapped.state if key not in expected]
    if extra:
        problems.append(f"not in the model: {', '.join(extra)}")
    for key, tensor in mapped.state.items():
        if key in expected and tuple(tensor.shape) != tuple(expected[key]):
            problems.append(
                f"{mapped.sources[key]} has shape {list(tensor.shape)}, the model's {key} "
                f"{list(expected[key])}"
            )
    if problems:
        raise OriginalCheckpointError(
            f"the {mapped.layout} checkpoint does not fit the model: " + "; ".join(problems)
        )


def to_original(
    state: Mapping[str, torch.Tensor], *, head: Head, data_parallel: bool = False
) -> dict[str, torch.Tensor]:
    """Our model's state dict in the original layout: ``pretraining`` -> ``model_LXRT.pth``'s
    names, ``qa`` -> ``VQAModel``/``GQAModel``'s, ``nlvr2`` -> ``NLVR2Model``'s; with
    ``data_parallel``, DataParallel's ``module.`` where the original puts it. The inverse of
    :func:`from_original` (tensors are not copied).

    Raises:
        OriginalCheckpointError: ``head`` is ``base`` (the original saved no bare encoder), or
            a key has no original name.
    """
    if head == "base":
        raise OriginalCheckpointError(
            "a bare LxmertModel has no original layout; export a pretraining, QA or NLVR2 model"
        )
    encoder = PRETRAINING_ENCODER if head == "pretraining" else TASK_ENCODER
    out: dict[str, torch.Tensor] = {}
    unknown = []
    for key, value in state.items():
        if key.startswith("lxmert."):
            name = encoder + key[len("lxmert.") :]
        elif head == "pretraining" and key in PRETRAINING_HEAD_KEYS + ANSWER_HEAD_KEYS:
            name = key
        elif head == "qa" and key.startswith("answer_head.logit_fc."):
            name = key[len("answer_head.") :]
        elif head == "nlvr2" and key in TASK_HEAD_KEYS:
            name = key
        else:
            unknown.append(key)
            continue
        out[name] = value
    if unknown:
        raise OriginalCheckpointError(
            f"no original name for {', '.join(unknown)} (exporting a {head!r} model)"
        )
    return add_data_parallel(out) if data_parallel else out


def add_data_parallel(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Original names as a DataParallel run saves them: ``module.`` at the start of a
    pretraining checkpoint's keys, after ``lxrt_encoder.model.`` in a task's."""
    out = {}
    for key, value in state.items():
        if key.startswith(TASK_WRAPPER):
            out[TASK_WRAPPER + DATA_PARALLEL + key[len(TASK_WRAPPER) :]] = value
        elif key.startswith("logit_fc."):
            out[key] = value  # the task head sits outside the DataParallel wrapper
        else:
            out[DATA_PARALLEL + key] = value
    return out
