"""Build transformers' LXMERT models, unchanged, from a registry name, a directory or a config."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any, cast

from transformers import (
    LxmertConfig,
    LxmertForPreTraining,
    LxmertForQuestionAnswering,
    LxmertModel,
    LxmertPreTrainedModel,
)
from transformers.utils import logging as transformers_logging

from encoder.config import Head, config_for
from encoder.finetune.layout import run_model
from encoder.nlvr2 import LxmertForNLVR2
from weights import resolve_checkpoint

LOG = logging.getLogger(__name__)

_HEAD_CLASSES: dict[str, type[LxmertPreTrainedModel]] = {
    "qa": LxmertForQuestionAnswering,
    "pretraining": LxmertForPreTraining,
    "base": LxmertModel,
    "nlvr2": LxmertForNLVR2,
}


def _head_class(head: str) -> type[LxmertPreTrainedModel]:
    if head not in _HEAD_CLASSES:
        raise ValueError(f"head must be one of {', '.join(_HEAD_CLASSES)}, got {head!r}")
    return _HEAD_CLASSES[head]


def checkpoint_directory(source: str | Path) -> Path:
    """The directory holding ``config.json`` + weights for a registry name or a directory.

    Registry names resolve through ``weights.resolve_checkpoint``, which raises
    ``CheckpointNotFoundError`` (places looked, how to fetch) when they are not on this machine.
    """
    path = Path(source)
    if path.is_dir():
        directory = run_model(path)  # a fine-tuning run's folder: its best/ model
    elif path.exists():
        raise ValueError(
            f"{path} is a file; an encoder checkpoint is the directory written by "
            "save_pretrained (config.json and the weights), or an original LXMERT checkpoint "
            "file (.pth, .pt, .bin, .ckpt)"
        )
    else:
        # Names, known or not, go to the registry: it knows every name and says which exist.
        directory = resolve_checkpoint(str(source))
        if directory.is_file():  # a name registered for an original LXMERT .pth
            raise ValueError(
                f"{source!r} names an original LXMERT checkpoint file ({directory}); load it "
                "with encoder.build.load_encoder or encoder.original.load_original"
            )
    if not (directory / "config.json").is_file():
        raise FileNotFoundError(
            f"{directory} has no config.json; point at a directory written by save_pretrained"
        )
    return directory


def saved_head(directory: Path) -> Head | None:
    """``"nlvr2"`` when ``directory``'s ``config.json`` names ``LxmertForNLVR2`` (written by
    its ``save_pretrained``), else None: such a checkpoint only makes sense with its own head,
    so names and directories without an explicit head load it as one."""
    try:
        saved = json.loads((directory / "config.json").read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    architectures = saved.get("architectures") if isinstance(saved, dict) else None
    if isinstance(architectures, list) and LxmertForNLVR2.__name__ in architectures:
        return "nlvr2"
    return None


def build_model(
    source: str | Path | LxmertConfig, *, head: Head | None = None
) -> LxmertPreTrainedModel:
    """An LXMERT model in eval mode.

    Args:
        source: an :class:`LxmertConfig` (random weights, for tests and training from scratch);
            a directory written by ``save_pretrained`` (``config.json`` + weights); or a
            registry name (``lxmert-vqa``, ``lxmert-gqa``, ``lxmert-base``, ``shapes-lxmert``),
            see :func:`checkpoint_directory`.
        head: ``"qa"``, ``"pretraining"``, ``"base"`` or ``"nlvr2"`` (any LXMERT checkpoint
            gives its encoder to a new NLVR2 head, e.g. ``lxmert-base``); default: the
            preset's head for a preset name, ``"nlvr2"`` for a checkpoint saved by
            ``LxmertForNLVR2`` (:func:`saved_head`), ``"qa"`` otherwise
            (``encoder.config.config_for``).

    Nothing is downloaded here: directories load with ``local_files_only=True``.
    """
    if isinstance(source, LxmertConfig):
        return _head_class(head or "qa")(source).eval()
    if not isinstance(source, (str, Path)):
        raise TypeError(
            f"source must be a registry name, a directory or an LxmertConfig, "
            f"got {type(source).__name__}"
        )
    directory = checkpoint_directory(source)
    model_class = _head_class(head or saved_head(directory) or config_for(source).head)
    shown = LOG.isEnabledFor(logging.DEBUG)
    with quiet_progress_bars(), _transformers_load_report(shown=shown):
        loaded: Any = model_class.from_pretrained(
            directory, local_files_only=True, weights_only=True, output_loading_info=True
        )
    model, info = cast("tuple[LxmertPreTrainedModel, Mapping[str, object]]", loaded)
    summary = load_summary(info, source=str(source), head=model_class.__name__)
    if summary is not None:
        LOG.log(summary[0], "%s", summary[1])
    return model.eval()


#: Checkpoint key prefixes of LXMERT's pretraining heads (masked words, masked objects,
#: image-text match), which a task model does not have: expected to go unused.
PRETRAINING_HEAD_PREFIXES = ("cls.", "obj_predict_head.")


def load_summary(info: Mapping[str, object], *, source: str, head: str) -> tuple[int, str] | None:
    """What ``from_pretrained``'s loading info says, in one line, with its logging level:
    pretraining-head weights a task model does not use are expected (INFO); any other unused,
    missing or reshaped weight is a WARNING naming the first few. None when every weight was
    used as saved."""

    def keys(name: str) -> list[str]:
        value = info.get(name) or ()
        return sorted(str(k[0] if isinstance(k, tuple) else k) for k in value)  # type: ignore[attr-defined]

    unused, missing, reshaped = (
        keys("unexpected_keys"),
        keys("missing_keys"),
        keys("mismatched_keys"),
    )
    heads = [k for k in unused if k.startswith(PRETRAINING_HEAD_PREFIXES)]
    others = [k for k in unused if k not in heads]
    if not (others or missing or reshaped):
        if not heads:
            return None
        return logging.INFO, f"{source}: {len(heads)} pretraining-head weights not used by {head}"
    parts = [
        f"{len(found)} {what} ({', '.join(found[:3])}{', ...' if len(found) > 3 else ''})"
        for found, what in (
            (others, "unused"),
            (missing, "newly initialised"),
            (reshaped, "reshaped"),
        )
        if found
    ]
    return logging.WARNING, f"{source} as {head}: weights " + "; ".join(parts)


@contextmanager
def _transformers_load_report(*, shown: bool) -> Iterator[None]:
    """transformers' LOAD REPORT table (a warning with ANSI codes) only when ``shown``
    (``-v``: the ``encoder`` logger at DEBUG); :func:`load_summary` says it in one line.

    A filter on its logger, not a level: transformers checks that logger's level to decide
    whether to warn about tensor-parallel plans (``verify_tp_plan``), so raising it would add
    a warning of its own.
    """

    def not_the_report(record: logging.LogRecord) -> bool:
        return "LOAD REPORT" not in record.getMessage()

    logger = logging.getLogger("transformers.modeling_utils")
    if not shown:
        logger.addFilter(not_the_report)
    try:
        yield
    finally:
        logger.removeFilter(not_the_report)


@contextmanager
def quiet_progress_bars() -> Iterator[None]:
    """Hide transformers' progress bars ("Loading weights", "Writing model shards"),
    restoring the user's setting afterwards.

    Reading or writing a local directory is not a download; the bars only garble ``answer``'s
    stderr and ``lxmert-finetune``'s progress lines.
    """
    was_enabled = transformers_logging.is_progress_bar_enabled()
    transformers_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled:
            transformers_logging.enable_progress_bar()
