"""Fine-tuning LXMERT on question files (VQA/GQA-style LXMERT JSON) and NLVR2 statement files
over any source of regions, answer-table surgery, and the VQA/GQA/NLVR2 metrics. A whole run
into a folder, as ``lxmert-finetune train`` does it: :func:`fit_and_write`
(:mod:`encoder.finetune.run`).

Nothing here imports ``pipeline``: regions come through :class:`RegionSource`, which a
``pipeline.features.store.FeatureStore`` satisfies.

The names below are imported when first asked for (PEP 562), so that ``encoder.finetune.config``
(the recipe's defaults, which ``lxmert-finetune train --help`` shows) imports no torch or
transformers (issue 29).
"""

from __future__ import annotations

import sys
import types
from typing import TYPE_CHECKING

from weights.lazy import lazy_exports

if TYPE_CHECKING:
    from encoder.finetune.config import TRAIN_PRECISIONS, FinetuneConfig, TrainPrecision
    from encoder.finetune.data import (
        DataError,
        QADataset,
        QAExample,
        QuestionEntry,
        RegionSource,
        answer_table_from_labels,
        read_question_files,
        read_questions,
        with_regions,
    )
    from encoder.finetune.evaluation import (
        TASKS,
        HumanAnswers,
        Task,
        prediction_records,
        question_scores,
        read_vqa_annotations,
    )
    from encoder.finetune.fit import FitResult, ResumeError, fit
    from encoder.finetune.loop import (
        EpochRecord,
        Progress,
        TrainingState,
        evaluate,
        load_checkpoint,
        predict,
        train_epoch,
    )
    from encoder.finetune.metrics import (
        AccuracyReport,
        exact_match,
        normalize_vqa_answer,
        soft_score,
        summarize,
        vqa_human_accuracy,
    )
    from encoder.finetune.model import (
        FINETUNE_FILE,
        prepare_encoder,
        prepare_nlvr2_encoder,
        write_model_dir,
    )
    from encoder.finetune.pair_loop import evaluate_pairs, predict_pairs, train_pair_epoch
    from encoder.finetune.pairs import (
        PairDataset,
        PairEntry,
        PairExample,
        PairReport,
        pair_scores,
        pairs_with_regions,
        prediction_csv,
        read_pair_files,
        statement_group,
    )
    from encoder.finetune.run import answer_table, check_out_is_ours, fit_and_write
    from encoder.finetune.surgery import transfer_answer_head

#: Each exported name and the submodule that defines it.
_EXPORTS = {
    "FINETUNE_FILE": "encoder.finetune.layout",
    "TASKS": "encoder.finetune.evaluation",
    "TRAIN_PRECISIONS": "encoder.finetune.config",
    "AccuracyReport": "encoder.finetune.metrics",
    "DataError": "encoder.finetune.data",
    "EpochRecord": "encoder.finetune.loop",
    "FinetuneConfig": "encoder.finetune.config",
    "FitResult": "encoder.finetune.fit",
    "HumanAnswers": "encoder.finetune.evaluation",
    "PairDataset": "encoder.finetune.pairs",
    "PairEntry": "encoder.finetune.pairs",
    "PairExample": "encoder.finetune.pairs",
    "PairReport": "encoder.finetune.pairs",
    "Progress": "encoder.finetune.loop",
    "QADataset": "encoder.finetune.data",
    "QAExample": "encoder.finetune.data",
    "QuestionEntry": "encoder.finetune.data",
    "RegionSource": "encoder.finetune.data",
    "ResumeError": "encoder.finetune.fit",
    "Task": "encoder.finetune.evaluation",
    "TrainPrecision": "encoder.finetune.config",
    "TrainingState": "encoder.finetune.loop",
    "answer_table": "encoder.finetune.run",
    "answer_table_from_labels": "encoder.finetune.data",
    "check_out_is_ours": "encoder.finetune.layout",
    "evaluate": "encoder.finetune.loop",
    "evaluate_pairs": "encoder.finetune.pair_loop",
    "exact_match": "encoder.finetune.metrics",
    "fit": "encoder.finetune.fit",
    "fit_and_write": "encoder.finetune.run",
    "load_checkpoint": "encoder.finetune.loop",
    "normalize_vqa_answer": "encoder.finetune.metrics",
    "pair_scores": "encoder.finetune.pairs",
    "pairs_with_regions": "encoder.finetune.pairs",
    "predict": "encoder.finetune.loop",
    "predict_pairs": "encoder.finetune.pair_loop",
    "prediction_csv": "encoder.finetune.pairs",
    "prediction_records": "encoder.finetune.evaluation",
    "prepare_encoder": "encoder.finetune.model",
    "prepare_nlvr2_encoder": "encoder.finetune.model",
    "question_scores": "encoder.finetune.evaluation",
    "read_pair_files": "encoder.finetune.pairs",
    "read_question_files": "encoder.finetune.data",
    "read_questions": "encoder.finetune.data",
    "read_vqa_annotations": "encoder.finetune.evaluation",
    "soft_score": "encoder.finetune.metrics",
    "statement_group": "encoder.finetune.pairs",
    "summarize": "encoder.finetune.metrics",
    "train_epoch": "encoder.finetune.loop",
    "train_pair_epoch": "encoder.finetune.pair_loop",
    "transfer_answer_head": "encoder.finetune.surgery",
    "vqa_human_accuracy": "encoder.finetune.metrics",
    "with_regions": "encoder.finetune.data",
    "write_model_dir": "encoder.finetune.model",
}

__all__ = [
    "FINETUNE_FILE",
    "TASKS",
    "TRAIN_PRECISIONS",
    "AccuracyReport",
    "DataError",
    "EpochRecord",
    "FinetuneConfig",
    "FitResult",
    "HumanAnswers",
    "PairDataset",
    "PairEntry",
    "PairExample",
    "PairReport",
    "Progress",
    "QADataset",
    "QAExample",
    "QuestionEntry",
    "RegionSource",
    "ResumeError",
    "Task",
    "TrainPrecision",
    "TrainingState",
    "answer_table",
    "answer_table_from_labels",
    "check_out_is_ours",
    "evaluate",
    "evaluate_pairs",
    "exact_match",
    "fit",
    "fit_and_write",
    "load_checkpoint",
    "normalize_vqa_answer",
    "pair_scores",
    "pairs_with_regions",
    "predict",
    "predict_pairs",
    "prediction_csv",
    "prediction_records",
    "prepare_encoder",
    "prepare_nlvr2_encoder",
    "question_scores",
    "read_pair_files",
    "read_question_files",
    "read_questions",
    "read_vqa_annotations",
    "soft_score",
    "statement_group",
    "summarize",
    "train_epoch",
    "train_pair_epoch",
    "transfer_answer_head",
    "vqa_human_accuracy",
    "with_regions",
    "write_model_dir",
]


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, __all__)


class _Package(types.ModuleType):
    """This package, keeping :func:`fit` the function: the submodule ``encoder.finetune.fit``
    shares its name, and importing it binds the module here (as the eager ``from
    encoder.finetune.fit import fit`` this package used to run replaced it at once)."""

    def __setattr__(self, name: str, value: object) -> None:
        if name == "fit" and isinstance(value, types.ModuleType):
            value = value.fit  # the submodule has run: its function is there
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package
