"""Reading and writing detector checkpoints in their real layouts.

Supported layouts, all with Detectron2's key names (``backbone.res2.0.conv1.norm.weight`` ...):

- Hugging Face ``unc-nlp/frcnn-vg-finetuned`` ``pytorch_model.bin`` (640 tensors, with
  ``num_batches_tracked`` and ``proposal_generator.anchor_generator.cell_anchors.0``);
- Detectron2 ``faster_rcnn_from_caffe_attr.pkl``: ``{"model": {name: ndarray}}``, no
  ``num_batches_tracked``, read with the restricted unpickler of :mod:`weights.io`;
- our own safetensors, whose metadata records the full :class:`DetectorConfig`.

Key remapping is a pure function; every tensor must be consumed and match in shape.
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from detector.checkpoint_config import CONFIG_METADATA_KEY, config_for

# Re-exported: the config from names and headers lives where torch is not needed.
from detector.checkpoint_config import config_from_dict as config_from_dict
from detector.checkpoint_config import detector_config as detector_config
from detector.checkpoint_config import read_config_metadata as read_config_metadata
from detector.config import DetectorConfig
from detector.model import Detector, build_detector
from detector.options import InferenceOptions
from detector.structures import CheckpointInfo
from detector.vocab import load_names
from weights.defaults import DEFAULT_DEVICE, resolve_device

ANCHORS_KEY = "proposal_generator.anchor_generator.cell_anchors.0"
#: Keys a checkpoint may omit: the model computes them itself.
OPTIONAL_KEYS = frozenset({ANCHORS_KEY})

_ALIASES = ((re.compile(r"\.gamma$"), ".weight"), (re.compile(r"\.beta$"), ".bias"))
LOG = logging.getLogger("detector")


class CheckpointMismatchError(ValueError):
    """A checkpoint's keys or shapes do not match the model built from its preset."""


def remap_keys(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Map a checkpoint's keys onto our module names.

    Drops ``num_batches_tracked`` (statistics of no use to frozen BN), strips a DataParallel
    ``module.`` prefix, and renames BN ``gamma``/``beta`` aliases to ``weight``/``bias``.
    """
    remapped: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if key.endswith("num_batches_tracked"):
            continue
        new_key = key.removeprefix("module.")
        for pattern, replacement in _ALIASES:
            new_key = pattern.sub(replacement, new_key)
        if new_key in remapped:
            raise CheckpointMismatchError(
                f"two checkpoint keys map to {new_key!r} (one is {key!r})"
            )
        remapped[new_key] = value
    return remapped


def _listing(keys: set[str], limit: int = 30) -> str:
    ordered = sorted(keys)
    shown = "\n  ".join(ordered[:limit])
    more = f"\n  ... and {len(ordered) - limit} more" if len(ordered) > limit else ""
    return f"\n  {shown}{more}"


def load_into(model: Detector, state: Mapping[str, torch.Tensor], *, source: str) -> None:
    """Copy every tensor of ``state`` (already remapped) into ``model``, strictly.

    Raises:
        CheckpointMismatchError: listing missing keys, unexpected keys or shape mismatches,
            naming ``source`` and the preset the model was built from.
    """
    if model.bn_folded:
        raise CheckpointMismatchError("load checkpoints before folding batch norm")
    own = model.state_dict()
    if ANCHORS_KEY in state:
        _check_stored_anchors(model.config, state[ANCHORS_KEY], source=source)
    missing = set(own) - set(state) - OPTIONAL_KEYS
    unexpected = set(state) - set(own)
    hint = (
        f"\nThe model was built from preset {model.config.name!r}; pick the preset that matches "
        "the checkpoint with --preset."
    )
    if missing or unexpected:
        parts = [f"checkpoint {source} does not match the detector:"]
        if missing:
            parts.append(f"missing keys ({len(missing)}):{_listing(missing)}")
        if unexpected:
            parts.append(f"unexpected keys ({len(unexpected)}):{_listing(unexpected)}")
        raise CheckpointMismatchError("\n".join(parts) + hint)
    wrong = {
        f"{key}: checkpoint {tuple(value.shape)} vs model {tuple(own[key].shape)}"
        for key, value in state.items()
        if tuple(value.shape) != tuple(own[key].shape)
    }
    if wrong:
        raise CheckpointMismatchError(
            f"checkpoint {source} has tensors of the wrong shape:{_listing(wrong)}{hint}"
        )
    if ANCHORS_KEY in state:
        _log_stored_anchors(model.config, state[ANCHORS_KEY], own[ANCHORS_KEY], source=source)
    with torch.no_grad():
        for key, value in state.items():
            own[key].copy_(torch.as_tensor(value).to(own[key].dtype))


def _check_stored_anchors(config: DetectorConfig, stored: torch.Tensor, *, source: str) -> None:
    """Refuse stored cell anchors the preset's RPN cannot use: not ``[A, 4]`` with the
    preset's A (its RPN head has one logit and four deltas per anchor). Other values are
    fine: the stored ones are used (see :func:`_log_stored_anchors`)."""
    shape = tuple(stored.shape)
    expected = config.num_anchors
    made = f"{len(config.anchor_sizes)} sizes x {len(config.anchor_ratios)} ratios"
    if len(shape) != 2 or shape[1] != 4:
        raise CheckpointMismatchError(
            f"checkpoint {source} stores cell anchors ({ANCHORS_KEY}) of shape {list(shape)}; "
            f"expected [{expected}, 4] (xyxy per anchor) for preset {config.name!r}"
        )
    if shape[0] != expected:
        raise CheckpointMismatchError(
            f"checkpoint {source} stores {shape[0]} cell anchors per location, but preset "
            f"{config.name!r} makes {expected} ({made}); pick the preset that matches the "
            "checkpoint with --preset"
        )


def _log_stored_anchors(
    config: DetectorConfig, stored: torch.Tensor, preset: torch.Tensor, *, source: str
) -> None:
    """Log, once per load, stored anchors that differ from the preset's (they are used in
    detectron2 mode, as the Hugging Face port uses them) or that caffe mode overrides."""
    stored = stored.detach().float().cpu()
    preset = preset.detach().float().cpu()
    differ = not torch.allclose(stored, preset, atol=1e-3)
    both = f"\n  stored: {stored.tolist()}\n  preset: {preset.tolist()}" if differ else ""
    if config.proposal_mode == "caffe":
        LOG.info(
            "checkpoint %s stores cell anchors%s; caffe proposals override them with "
            "generate_anchors' (base %d, sizes %s, ratios %s)%s",
            source,
            f" that differ from preset {config.name!r}'s" if differ else "",
            config.anchor_base_size,
            list(config.anchor_sizes),
            list(config.anchor_ratios),
            both,
        )
    elif differ:
        LOG.warning(
            "checkpoint %s stores cell anchors that differ from preset %r's; using the "
            "stored ones.%s",
            source,
            config.name,
            both,
        )


def save_detector(detector: Detector, path: str | os.PathLike[str]) -> Path:
    """Write ``detector`` as safetensors with its full config in the metadata.

    The file is replaced atomically (``weights.io.save_safetensors`` writes through
    ``weights.files``): a reader sees the old file or the new one, never half of either.
    """
    from weights.io import save_safetensors

    if detector.bn_folded:
        raise ValueError("save the detector before optimize_for_inference() folds its batch norm")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in detector.state_dict().items()}
    save_safetensors(
        state, path, metadata={CONFIG_METADATA_KEY: json.dumps(detector.config.to_dict())}
    )
    return path


def load_detector(
    name_or_path: str | os.PathLike[str],
    *,
    preset: str | None = None,
    device: str | torch.device | None = None,
    overrides: Mapping[str, Any] | None = None,
    config: DetectorConfig | None = None,
    options: InferenceOptions | None = None,
    optimize: bool = True,
) -> Detector:
    """A detector from a registry name or a checkpoint file in any supported layout.

    The weights file is hashed once (by checksum verification for registry checkpoints, else
    here) and read once; :attr:`Detector.checkpoint` records its name, path, sha256, preset.

    Args:
        name_or_path: registry name (``vg-r101-c4-attr``, ``shapes-detector``) or a path to a
            ``.bin``/``.pth``/``.pkl``/``.safetensors`` checkpoint.
        preset: config preset; default: the one stored in the checkpoint, else the registry's,
            else ``vg-r101-c4-attr``.
        device: ``auto``, ``cpu``, ``cuda`` or ``cuda:i``, checked by the project's one device
            rule (:func:`weights.defaults.resolve_device`: only ``auto`` falls back to the
            CPU; an explicit device that cannot be used raises ``DeviceError``); replaces
            ``options.device`` when given (default: ``options.device``, else ``auto``).
        overrides: :class:`DetectorConfig` fields to change (selection, box counts, sizes...).
        config: the finished config (e.g. from :func:`detector_config`, validated before any
            weights were read), instead of ``preset`` and ``overrides``.
        options: inference settings (precision, layout, res5 chunk, compile ...); default: the
            per-device defaults.
        optimize: fold BN (:meth:`Detector.optimize_for_inference`); False only applies the
            options, leaving the weights as stored (for training or re-saving).

    Raises ``ValueError`` for ``config`` given with ``preset`` or ``overrides`` and for bad
    options, besides ``weights``' not-found/checksum errors and CheckpointMismatchError.
    """
    from weights import locate_checkpoint
    from weights.io import load_state_dict

    if config is not None and (preset is not None or overrides):
        raise ValueError("give load_detector either config or preset/overrides, not both")
    if device is None and options is not None:
        resolve_device(options.device)  # the one device rule: an unusable device fails here
        requested = options
    else:
        spec = DEFAULT_DEVICE if device is None else device
        requested = (options or InferenceOptions()).on(resolve_device(spec))
    requested.resolve()  # a precision the device cannot run fails before any weights are read
    located = locate_checkpoint(name_or_path)
    path, record = located.path, located.record
    if config is None:
        config = config_for(path, record, preset=preset, overrides=overrides)
    object_names, attribute_names = load_names(path.parent, config)
    detector = build_detector(
        config,
        seed=None,
        object_names=object_names,
        attribute_names=attribute_names,
        checkpoint=CheckpointInfo(
            name=record.name if record is not None else path.name,
            path=str(path),
            sha256=located.sha256(),  # the digest verification computed, if it ran
            preset=config.name,
        ),
    )
    load_into(detector, remap_keys(load_state_dict(path)), source=str(path))
    if optimize:
        return detector.optimize_for_inference(requested)
    return detector.apply_options(requested).eval()
