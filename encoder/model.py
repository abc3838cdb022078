"""Build transformers' LXMERT models, unchanged, from a registry name, a directory or a config."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from transformers import (
    LxmertConfig,
    LxmertForPreTraining,
    LxmertForQuestionAnswering,
    LxmertModel,
    LxmertPreTrainedModel,
)
from transformers.utils import logging as transformers_logging

from encoder.config import Head, config_for
from encoder.nlvr2 import LxmertForNLVR2
from weights import resolve_checkpoint

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
        directory = path
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
    with quiet_progress_bars():
        model = model_class.from_pretrained(directory, local_files_only=True, weights_only=True)
    return model.eval()


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
