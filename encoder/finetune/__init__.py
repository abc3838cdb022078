"""Fine-tuning LXMERT on question files (VQA/GQA-style LXMERT JSON) and NLVR2 statement files
over any source of regions, answer-table surgery, and the VQA/GQA/NLVR2 metrics. A whole run
into a folder, as ``lxmert-finetune train`` does it: :func:`fit_and_write`
(:mod:`encoder.finetune.run`).

Nothing here imports ``pipeline``: regions come through :class:`RegionSource`, which a
``pipeline.store.FeatureStore`` satisfies.
"""

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
