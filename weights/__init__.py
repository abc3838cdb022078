"""Named checkpoints: the registry, resolution to local files, and safe checkpoint reading.

``python -m weights list`` prints the registry; see ``weights.resolve`` for where checkpoints
are looked for (including the ``LXMERT_PIPELINE_WEIGHTS`` directory) and ``weights.io`` for
the formats read, ``weights.files`` for the one way files are replaced atomically. This
package imports none of detector/encoder/pipeline. ``weights.io`` (which imports torch) is
loaded only when one of its names is first used.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from weights.registry import (
    REGISTRY,
    REVISION_UNKNOWN,
    CheckpointRecord,
    UnknownCheckpointError,
    get_record,
)
from weights.resolve import (
    ENV_VAR,
    LOCK_FILE_NAME,
    CheckpointNotFoundError,
    ChecksumError,
    ResolvedCheckpoint,
    explicit_path,
    fetch,
    hub_cache_dir,
    locate_checkpoint,
    resolve_checkpoint,
    sha256_file,
    verify,
)

if TYPE_CHECKING:
    from weights.io import (
        UnsafeCheckpointError,
        load_state_dict,
        read_detectron2_pickle,
        save_safetensors,
    )

_IO_NAMES = (
    "UnsafeCheckpointError",
    "load_state_dict",
    "read_detectron2_pickle",
    "save_safetensors",
)

__all__ = [
    "ENV_VAR",
    "LOCK_FILE_NAME",
    "REGISTRY",
    "REVISION_UNKNOWN",
    "CheckpointNotFoundError",
    "CheckpointRecord",
    "ChecksumError",
    "ResolvedCheckpoint",
    "UnknownCheckpointError",
    "UnsafeCheckpointError",
    "explicit_path",
    "fetch",
    "get_record",
    "hub_cache_dir",
    "load_state_dict",
    "locate_checkpoint",
    "read_detectron2_pickle",
    "resolve_checkpoint",
    "save_safetensors",
    "sha256_file",
    "verify",
]


def __getattr__(name: str) -> Any:
    # Lazy so that `python -m weights list` and the resolver do not pay for importing torch.
    if name in _IO_NAMES:
        from weights import io

        return getattr(io, name)
    raise AttributeError(f"module 'weights' has no attribute {name!r}")
