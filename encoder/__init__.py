"""LXMERT on the detector's regions: inputs, answers, pretraining targets and losses.

The models are transformers' ``LxmertModel``, ``LxmertForQuestionAnswering`` and
``LxmertForPreTraining`` as they are; this package adapts at their boundary.

The names below are imported when first asked for (PEP 562), so that a torch-free submodule
(``encoder.finetune.config``) is imported without torch or transformers: the commands build
their parsers and check their arguments before those are loaded (issue 29).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from weights.lazy import lazy_exports

if TYPE_CHECKING:
    from encoder.answers import (
        AnswerTable,
        ScoredAnswer,
        answer_labels,
        answer_table_for,
        load_answer_table,
        top_k_answers,
    )
    from encoder.build import Encoder, load_encoder
    from encoder.config import PRESETS, EncoderConfig, PretrainingConfig, get_preset
    from encoder.inputs import VisualInputs, build_visual_inputs
    from encoder.losses import soft_score_loss
    from encoder.model import build_model, checkpoint_directory
    from encoder.pretrain import (
        PretrainingBatch,
        PretrainingExample,
        PretrainingLosses,
        build_pretraining_batch,
        pretraining_losses,
        pretraining_step,
    )
    from encoder.tokenizer import TextInputs, encode_text, load_tokenizer

#: Each exported name and the submodule that defines it.
_EXPORTS = {
    "PRESETS": "encoder.config",
    "AnswerTable": "encoder.answers",
    "Encoder": "encoder.build",
    "EncoderConfig": "encoder.config",
    "PretrainingBatch": "encoder.pretrain",
    "PretrainingConfig": "encoder.config",
    "PretrainingExample": "encoder.pretrain",
    "PretrainingLosses": "encoder.pretrain",
    "ScoredAnswer": "encoder.answers",
    "TextInputs": "encoder.tokenizer",
    "VisualInputs": "encoder.inputs",
    "answer_labels": "encoder.answers",
    "answer_table_for": "encoder.answers",
    "build_model": "encoder.model",
    "build_pretraining_batch": "encoder.pretrain",
    "build_visual_inputs": "encoder.inputs",
    "checkpoint_directory": "encoder.model",
    "encode_text": "encoder.tokenizer",
    "get_preset": "encoder.config",
    "load_answer_table": "encoder.answers",
    "load_encoder": "encoder.build",
    "load_tokenizer": "encoder.tokenizer",
    "pretraining_losses": "encoder.pretrain",
    "pretraining_step": "encoder.pretrain",
    "soft_score_loss": "encoder.losses",
    "top_k_answers": "encoder.answers",
}

__all__ = [
    "PRESETS",
    "AnswerTable",
    "Encoder",
    "EncoderConfig",
    "PretrainingBatch",
    "PretrainingConfig",
    "PretrainingExample",
    "PretrainingLosses",
    "ScoredAnswer",
    "TextInputs",
    "VisualInputs",
    "answer_labels",
    "answer_table_for",
    "build_model",
    "build_pretraining_batch",
    "build_visual_inputs",
    "checkpoint_directory",
    "encode_text",
    "get_preset",
    "load_answer_table",
    "load_encoder",
    "load_tokenizer",
    "pretraining_losses",
    "pretraining_step",
    "soft_score_loss",
    "top_k_answers",
]


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, __all__)
