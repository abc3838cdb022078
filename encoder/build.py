"""The package's builder: one call from a preset, a registry name or a directory to a ready
encoder (model, tokenizer, answer set), and question answering on RegionFeatures."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import LxmertPreTrainedModel

from detector.structures import RegionFeatures
from encoder.answers import AnswerTable, ScoredAnswer, answer_table_for, top_k_answers
from encoder.config import EncoderConfig, config_for
from encoder.inputs import build_visual_inputs
from encoder.model import build_model, checkpoint_directory, saved_head
from encoder.nlvr2 import LxmertForNLVR2, build_pair_inputs, true_probability
from encoder.original.load import (
    ANSWERS_SUFFIX,
    load_original,
    original_checkpoint_file,
    sidecar,
    sidecar_heads,
)
from encoder.tokenizer import VOCAB_PATH, LxmertTokenizer, encode_text, load_tokenizer
from weights.defaults import DEFAULT_DEVICE, resolve_device

#: Optional files of a checkpoint directory that override the shipped defaults: the answer
#: set (JSON list, label order) and the WordPiece vocabulary.
ANSWERS_FILE = "label2ans.json"
VOCAB_FILE = "vocab.txt"

logger = logging.getLogger(__name__)
#: The hidden size of every LXMERT airsplay/lxmert released (12 heads of 64).
ORIGINAL_HIDDEN_SIZE = 768


@dataclass(frozen=True, eq=False)
class Encoder:
    """A loaded LXMERT with what it needs to read questions and name answers.

    Attributes:
        config: the settings it was built from.
        model: transformers' model (eval mode) with the head ``config.head``.
        tokenizer: the uncased WordPiece tokenizer.
        answers: the QA head's answer set (None for ``head="base"`` and ``head="nlvr2"``).
    """

    config: EncoderConfig
    model: LxmertPreTrainedModel
    tokenizer: LxmertTokenizer
    answers: AnswerTable | None

    def model_inputs(
        self, regions: Sequence[RegionFeatures], questions: Sequence[str]
    ) -> dict[str, torch.Tensor]:
        """Keyword arguments of the model's forward for B (image, question) pairs, on the
        model's device; ``regions[i]`` is the image of ``questions[i]``."""
        if len(regions) != len(questions):
            raise ValueError(
                f"got {len(regions)} RegionFeatures for {len(questions)} questions; "
                "pass one RegionFeatures per question (repeat it for several questions)"
            )
        text = encode_text(self.tokenizer, questions, max_length=self.config.max_question_length)
        visual = build_visual_inputs(regions)
        device = self.model.device
        return {
            **{k: v.to(device) for k, v in vars(text).items()},
            **{k: v.to(device) for k, v in vars(visual).items()},
        }

    @torch.inference_mode()
    def answer(
        self, regions: Sequence[RegionFeatures], questions: Sequence[str], *, k: int = 1
    ) -> list[list[ScoredAnswer]]:
        """The ``k`` most probable answers per question (softmax; see ``encoder.answers``)."""
        if self.answers is None or self.config.head == "base":
            raise ValueError(
                f"encoder {self.config.checkpoint!r} has no QA head (head={self.config.head!r}); "
                "load it with head='qa' or 'pretraining'"
            )
        output = self.model(**self.model_inputs(regions, questions))
        return top_k_answers(output.question_answering_score, self.answers, k=k)

    def pair_inputs(
        self,
        lefts: Sequence[RegionFeatures],
        rights: Sequence[RegionFeatures],
        statements: Sequence[str],
    ) -> dict[str, torch.Tensor]:
        """Keyword arguments of :class:`~encoder.nlvr2.LxmertForNLVR2`'s forward for B
        (left, right, statement) triples, on the model's device (boxes padded and masked,
        :func:`~encoder.nlvr2.build_pair_inputs`)."""
        if not len(lefts) == len(rights) == len(statements):
            raise ValueError(
                f"got {len(lefts)} left images, {len(rights)} right images and "
                f"{len(statements)} statements; pass one pair of images per statement"
            )
        text = encode_text(self.tokenizer, statements, max_length=self.config.max_question_length)
        visual = build_pair_inputs(lefts, rights)
        device = self.model.device
        return {
            **{k: v.to(device) for k, v in vars(text).items()},
            **{k: v.to(device) for k, v in vars(visual).items()},
        }

    @torch.inference_mode()
    def judge(
        self,
        lefts: Sequence[RegionFeatures],
        rights: Sequence[RegionFeatures],
        statements: Sequence[str],
    ) -> list[float]:
        """Probability that ``statements[i]`` is true of (``lefts[i]``, ``rights[i]``)."""
        if not isinstance(self.model, LxmertForNLVR2):
            raise ValueError(
                f"encoder {self.config.checkpoint!r} has no NLVR2 head (head="
                f"{self.config.head!r}); judge needs an NLVR2 model, e.g. shapes-nlvr2"
            )
        output = self.model(**self.pair_inputs(lefts, rights, statements))
        return [float(p) for p in true_probability(output.logits)]


def load_encoder(
    source: str | Path | EncoderConfig, *, device: torch.device | str = DEFAULT_DEVICE
) -> Encoder:
    """Build an :class:`Encoder`.

    Args:
        source: a preset name (``lxmert-vqa``, ``lxmert-gqa``, ``lxmert-base``,
            ``shapes-lxmert``), an :class:`EncoderConfig`, or a checkpoint directory / other
            registry name (head ``qa``, answer set by ``num_qa_labels``; head ``nlvr2`` for a
            checkpoint saved by ``LxmertForNLVR2``); see ``encoder.config.config_for``.
        device: where the model runs: ``auto`` (default), ``cpu``, ``cuda`` or ``cuda:N``, by
            the one device rule (:func:`weights.defaults.resolve_device`).

    A checkpoint directory may carry ``label2ans.json`` (answers in label order) and
    ``vocab.txt``; they are used instead of the shipped answer set and vocabulary unless the
    config names an answer set.

    ``source`` (or the config's checkpoint) may also be a ``.pth`` file of the original LXMERT
    (airsplay/lxmert): ``model_LXRT.pth`` or a VQA/GQA/NLVR2 task's ``BEST.pth``
    (:mod:`encoder.original`); see :func:`_load_original_encoder`.
    """
    if isinstance(source, EncoderConfig):
        config = source
    elif isinstance(source, (str, Path)):
        config = config_for(source)
    else:
        raise TypeError(
            f"source must be a preset name, a path or an EncoderConfig, got {type(source).__name__}"
        )
    original = original_checkpoint_file(config.checkpoint)
    if original is not None:
        return _load_original_encoder(
            original, config, head_given=isinstance(source, EncoderConfig), device=device
        )
    directory = checkpoint_directory(config.checkpoint)
    if not isinstance(source, EncoderConfig) and saved_head(directory) == "nlvr2":
        config = dataclasses.replace(config, head="nlvr2")  # its own head, never a QA one
    model = build_model(directory, head=config.head)
    # Called through the nn.Module type: transformers' functools.wraps on .to hides its
    # signature from the type checker; the call still runs transformers' own .to.
    module: torch.nn.Module = model
    module.to(resolve_device(device))
    vocab = directory / VOCAB_FILE
    tokenizer = load_tokenizer(vocab if vocab.is_file() else VOCAB_PATH)
    answers = None
    if config.head not in ("base", "nlvr2"):
        answer_set: str | Path | None = config.answer_set
        if answer_set is None and (directory / ANSWERS_FILE).is_file():
            answer_set = directory / ANSWERS_FILE
        answers = answer_table_for(model.config.num_qa_labels, answer_set)
    return Encoder(config=config, model=model, tokenizer=tokenizer, answers=answers)


def _load_original_encoder(
    path: Path, config: EncoderConfig, *, head_given: bool, device: torch.device | str
) -> Encoder:
    """An :class:`Encoder` from an original LXMERT ``.pth`` (:func:`encoder.original.
    load_original`), with the shipped uncased BERT vocabulary that LXMERT used.

    The head is ``config.head`` when the caller gave an :class:`EncoderConfig`; else the
    file's own: NLVR2 for an NLVR2 checkpoint, QA otherwise (``model_LXRT.pth`` then answers
    over its 9500 pretraining answers). The files record no head count: it is
    ``config.num_attention_heads``, else that of ``X.config.json`` beside ``X.pth`` (written
    by ``lxmert-finetune export``), else hidden size / 64 (logged unless the hidden size is
    the released 768). The files carry no answer names: the answer table is
    ``config.answer_set`` (a name, or a file such as LXMERT's ``trainval_label2ans.json`` or
    ``trainval_ans2label.json``), else ``X.label2ans.json`` beside it, else the shipped table
    of the head's size, with a warning in the log saying which was assumed.
    """
    given_heads = config.num_attention_heads or sidecar_heads(path)
    loaded = load_original(
        path, head=config.head if head_given else None, num_attention_heads=given_heads
    )
    answers_beside = sidecar(path, ANSWERS_SUFFIX)
    if config.answer_set is None and answers_beside.is_file():
        config = dataclasses.replace(config, answer_set=str(answers_beside))
    config = dataclasses.replace(config, head=loaded.head)
    model = loaded.model
    hidden, heads = model.config.hidden_size, model.config.num_attention_heads
    if given_heads is None and hidden != ORIGINAL_HIDDEN_SIZE:
        # A wrong head count runs without error and gives other outputs: say what was chosen.
        logger.warning(
            "%s: hidden size %d is not the released LXMERT's; assuming %d attention head(s) "
            "(BERT's width of 64). Set EncoderConfig.num_attention_heads if it had others",
            path,
            hidden,
            heads,
        )
    module: torch.nn.Module = model  # see load_encoder: transformers hides .to's signature
    module.to(resolve_device(device))
    tokenizer = load_tokenizer(VOCAB_PATH)
    if model.config.vocab_size != len(tokenizer):
        raise ValueError(
            f"{path}: its word embeddings have {model.config.vocab_size} rows but LXMERT's "
            f"vocabulary has {len(tokenizer)} words"
        )
    answers = None
    if config.head not in ("base", "nlvr2"):
        answers = _original_answers(path, model.config.num_qa_labels, config.answer_set)
    return Encoder(config=config, model=model, tokenizer=tokenizer, answers=answers)


def _original_answers(path: Path, size: int, answer_set: str | None) -> AnswerTable:
    """``answer_set`` (checked against the head's ``size``), else the shipped table of that
    size, saying so in the log: an original file carries no answer names."""
    answers = answer_table_for(size, answer_set)
    if answer_set is None:
        logger.warning(
            "%s carries no answer names; assuming the shipped %r answer table (%d answers) "
            "by the size of its answer head. Give the file it was trained with (--answers "
            "FILE, answer_set=) if it was another",
            path,
            answers.name,
            len(answers),
        )
    return answers
