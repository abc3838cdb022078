"""The original LXMERT's checkpoints (airsplay/lxmert): key mapping to and from transformers'
LXMERT (``keys``), files in and out (``load``), and its rule for seeding a task's answer head
from the pretrained one (``answers``)."""

from encoder.original.answers import (
    convert_answer,
    lxmert_qa_rows,
    transfer_answer_head_lxmert_qa,
)
from encoder.original.keys import (
    ANSWER_HEAD_KEYS,
    PRETRAINING_HEAD_KEYS,
    TASK_HEAD_KEYS,
    Layout,
    MappedState,
    OriginalCheckpointError,
    add_data_parallel,
    check_against_model,
    from_original,
    original_layout,
    strip_data_parallel,
    to_original,
)
from encoder.original.load import (
    ANSWERS_SUFFIX,
    BERT_HEAD_WIDTH,
    CONFIG_SUFFIX,
    OriginalModel,
    config_from_original,
    load_original,
    model_from_original,
    original_checkpoint_file,
    save_original,
    sidecar,
    sidecar_heads,
    write_sidecars,
)

__all__ = [
    "ANSWERS_SUFFIX",
    "ANSWER_HEAD_KEYS",
    "BERT_HEAD_WIDTH",
    "CONFIG_SUFFIX",
    "PRETRAINING_HEAD_KEYS",
    "TASK_HEAD_KEYS",
    "Layout",
    "MappedState",
    "OriginalCheckpointError",
    "OriginalModel",
    "add_data_parallel",
    "check_against_model",
    "config_from_original",
    "convert_answer",
    "from_original",
    "load_original",
    "lxmert_qa_rows",
    "model_from_original",
    "original_checkpoint_file",
    "original_layout",
    "save_original",
    "sidecar",
    "sidecar_heads",
    "strip_data_parallel",
    "to_original",
    "transfer_answer_head_lxmert_qa",
    "write_sidecars",
]
