"""The model side of fine-tuning: a QA encoder over a new answer table from a registry name
or directory, and the output directory that ``load_encoder`` (and so ``answer()`` and
``Pipeline``) reads back."""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path

import torch
from transformers import LxmertForQuestionAnswering

from encoder.answers import AnswerTable
from encoder.build import ANSWERS_FILE, VOCAB_FILE, Encoder, load_encoder
from encoder.config import config_for
from encoder.finetune.config import FinetuneConfig
from encoder.finetune.layout import FINETUNE_FILE as FINETUNE_FILE  # re-exported
from encoder.finetune.surgery import transfer_answer_head
from encoder.model import quiet_progress_bars
from encoder.original import original_checkpoint_file, transfer_answer_head_lxmert_qa
from weights.files import atomic_path, atomic_write_text


def prepare_encoder(
    source: str | Path,
    *,
    answers: AnswerTable,
    config: FinetuneConfig,
    device: torch.device | str,
) -> tuple[Encoder, int]:
    """A QA :class:`Encoder` from ``source`` (registry name or ``save_pretrained`` directory)
    whose head answers over ``answers``; returns it and the number of answers that kept their
    pretrained output row (:func:`~encoder.finetune.surgery.transfer_answer_head`; for an
    original LXMERT ``.pth``, LXMERT's rule :func:`~encoder.original.
    transfer_answer_head_lxmert_qa`).

    The source's own answer table is its preset's, else its ``label2ans.json``, else the
    shipped table of its head size (``load_encoder``'s rules). Seeds torch's generator with
    ``config.seed`` first, so the new rows are the same in a resumed run.
    """
    settings = replace(
        config_for(source), head="qa", max_question_length=config.max_question_length
    )
    torch.manual_seed(config.seed)
    loaded = load_encoder(settings, device=device)
    model = loaded.model
    if not isinstance(model, LxmertForQuestionAnswering) or loaded.answers is None:
        raise TypeError(f"{source}: expected a question-answering LXMERT with an answer table")
    # An original LXMERT file starts the new head by LXMERT's own rule (--loadLXMERTQA).
    original = original_checkpoint_file(source) is not None
    transfer = transfer_answer_head_lxmert_qa if original else transfer_answer_head
    kept = transfer(model, old=loaded.answers, new=answers)
    encoder = Encoder(config=settings, model=model, tokenizer=loaded.tokenizer, answers=answers)
    return encoder, kept


def prepare_nlvr2_encoder(
    source: str | Path, *, config: FinetuneConfig, device: torch.device | str
) -> Encoder:
    """An NLVR2 :class:`Encoder` (:class:`~encoder.nlvr2.LxmertForNLVR2`) whose LXMERT comes
    from ``source`` (any LXMERT checkpoint: a registry name such as ``lxmert-base`` or
    ``shapes-lxmert-pretrained``, or a directory; an NLVR2 one keeps its head too). Seeds
    torch's generator with ``config.seed`` first, so a new head is the same in a resumed run.
    """
    settings = replace(
        config_for(source), head="nlvr2", max_question_length=config.max_question_length
    )
    torch.manual_seed(config.seed)
    return load_encoder(settings, device=device)


def write_model_dir(encoder: Encoder, directory: Path, *, record: Mapping[str, object]) -> Path:
    """``save_pretrained`` files, ``vocab.txt`` (the tokenizer's), ``label2ans.json`` (QA
    models; an NLVR2 model has none) and ``finetune.json`` (``record``: the recipe, the
    command, the history) into ``directory``; returns it.

    ``save_pretrained`` writes in place, so it writes into a scratch folder beside
    ``directory`` whose files then replace the old ones one by one, atomically.
    """
    if encoder.answers is None and encoder.config.head != "nlvr2":
        raise ValueError("the encoder has no answer table to write")
    directory.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=directory.parent, prefix=f".{directory.name}.") as tmp:
        with quiet_progress_bars():
            encoder.model.save_pretrained(tmp, safe_serialization=True)
        # The vocabulary travels with the weights (a model may use its own vocab.txt).
        vocab = encoder.tokenizer.get_vocab()
        words = sorted(vocab, key=vocab.__getitem__)
        atomic_write_text(Path(tmp) / VOCAB_FILE, "\n".join(words) + "\n")
        for source in sorted(Path(tmp).iterdir()):
            with atomic_path(directory / source.name) as target:
                shutil.copyfile(source, target)
    if encoder.answers is not None:
        answers = json.dumps(list(encoder.answers.answers)) + "\n"
        atomic_write_text(directory / ANSWERS_FILE, answers)
    atomic_write_text(directory / FINETUNE_FILE, json.dumps(dict(record), indent=1) + "\n")
    return directory
