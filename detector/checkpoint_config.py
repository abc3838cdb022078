"""The config a detector checkpoint runs with, from names and file headers, without torch.

:func:`detector_config` is what ``extract_features`` checks its flags against before any
weights are read; it and :func:`read_config_metadata` import no torch (the safetensors header
is read with the numpy framework, which gives the same metadata), so a usage error is said
before torch is loaded (issue 29). :mod:`detector.checkpoint` re-exports these names.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from detector.config import PROPOSALS_BEFORE_THE_FIELD, DetectorConfig, get_preset

if TYPE_CHECKING:
    from weights import CheckpointRecord

CONFIG_METADATA_KEY = "lxmert_pipeline.detector_config"


def read_config_metadata(path: str | os.PathLike[str]) -> DetectorConfig | None:
    """The :class:`DetectorConfig` stored in our safetensors' metadata, if any."""
    if Path(path).suffix != ".safetensors":
        return None
    from safetensors import SafetensorError, safe_open

    try:
        # The header only: "numpy" reads the same metadata as "pt" without importing torch.
        with safe_open(str(path), framework="numpy") as handle:
            metadata = handle.metadata() or {}
    except SafetensorError as error:
        raise ValueError(f"{path}: not a readable safetensors file ({error})") from None
    if CONFIG_METADATA_KEY not in metadata:
        return None
    return config_from_dict(json.loads(metadata[CONFIG_METADATA_KEY]))


def config_from_dict(fields: Mapping[str, Any]) -> DetectorConfig:
    """Inverse of :meth:`DetectorConfig.to_dict` (lists become tuples).

    A config stored before the ``proposals`` field existed ran Detectron2's proposal layer
    (the only one then), so it gets ``proposals="detectron2"``, not the field's ``auto``:
    the shipped shapes-detector's metadata is such a config.
    """
    known = DetectorConfig.__dataclass_fields__
    unknown = set(fields) - set(known)
    if unknown:
        raise ValueError(f"unknown detector config fields: {sorted(unknown)}")
    values: dict[str, Any] = {k: tuple(v) if isinstance(v, list) else v for k, v in fields.items()}
    values.setdefault("proposals", PROPOSALS_BEFORE_THE_FIELD)
    return DetectorConfig(**values)


def detector_config(
    name_or_path: str | os.PathLike[str],
    *,
    preset: str | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> DetectorConfig:
    """The config :func:`detector.checkpoint.load_detector` builds for these arguments, from
    names and file headers only: no weights are read or hashed and nothing is downloaded.

    A registry checkpoint not on this machine yet gets its record's preset (downloaded
    checkpoints carry no stored config).

    Raises:
        weights.CheckpointNotFoundError: a path that does not exist or an unknown name.
        KeyError: an unknown preset. ValueError: overrides that make an invalid config.
    """
    from weights import CheckpointNotFoundError, locate_checkpoint

    try:
        located = locate_checkpoint(name_or_path, download=False, verify_checksums=False)
    except CheckpointNotFoundError:
        record = _registry_record(name_or_path)
        if record is None:
            raise
        return config_for(None, record, preset=preset, overrides=overrides)
    return config_for(located.path, located.record, preset=preset, overrides=overrides)


def _registry_record(name_or_path: str | os.PathLike[str]) -> CheckpointRecord | None:
    from weights import UnknownCheckpointError, get_record

    if not isinstance(name_or_path, str):
        return None
    try:
        return get_record(name_or_path)
    except UnknownCheckpointError:
        return None


def config_for(
    path: Path | None,
    record: CheckpointRecord | None,
    *,
    preset: str | None,
    overrides: Mapping[str, Any] | None,
) -> DetectorConfig:
    """``preset`` if given, else the config stored in our safetensors at ``path``, else the
    registry record's preset, else ``vg-r101-c4-attr``; then ``overrides``."""
    if preset is not None:
        config = get_preset(preset)
    else:
        stored = read_config_metadata(path) if path is not None else None
        default = record.preset if record is not None else "vg-r101-c4-attr"
        config = stored if stored is not None else get_preset(default)
    return config.replace(**overrides) if overrides else config
