"""Reading and writing checkpoint files without ever running code from them.

Supported formats, chosen by file suffix:

- ``.bin`` / ``.pth`` / ``.pt`` / ``.ckpt``: ``torch.load(weights_only=True)``, which only
  rebuilds tensors and plain containers.
- ``.safetensors``: ``safetensors.torch.load_file`` (a header plus raw bytes; no pickle at all).
- ``.pkl``: a Detectron2-style pickle, ``{"model": {name: numpy array}, "__author__": ...}``,
  read by a restricted unpickler that admits numpy arrays, dtypes and numpy scalars and plain
  containers only. Anything else in the pickle is refused *before* it is called, so a crafted
  payload never runs. (A ``.pkl`` that is really a torch zip archive goes to ``torch.load``.)
"""

from __future__ import annotations

import collections
import os
import pickle
import zipfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch

from weights.files import atomic_path

_TORCH_SUFFIXES = (".bin", ".pth", ".pt", ".ckpt")
_SUPPORTED = (*_TORCH_SUFFIXES, ".safetensors", ".pkl")
# Keys under which training checkpoints nest the model's state dict.
_WRAPPER_KEYS = ("model", "state_dict", "blobs")


class UnsafeCheckpointError(ValueError):
    """A checkpoint asked to load something other than tensors/arrays and plain containers."""


def load_state_dict(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """Read a checkpoint file into a flat ``{name: Tensor}`` dict on the CPU.

    A top-level ``{"model": {...}}``, ``{"state_dict": {...}}`` or ``{"blobs": {...}}`` wrapper
    is unwrapped; other top-level entries (``"__author__"``, optimizer state...) are dropped.
    Tensors keep the dtype and shape stored in the file; numpy arrays from a ``.pkl`` become
    tensors with the same dtype and shape.

    Args:
        path: a ``.bin``/``.pth``/``.pt``/``.ckpt``, ``.safetensors`` or ``.pkl`` file.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        UnsafeCheckpointError: the file asks for anything beyond tensors/arrays and plain
            containers; the message names the file and the refused global.
        ValueError: unsupported suffix, or the file does not hold a dict of tensors.
    """
    file = _existing_file(path)
    suffix = file.suffix.lower()
    if suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return dict(load_file(str(file), device="cpu"))
        except SafetensorError as error:
            raise ValueError(f"{file}: not a readable safetensors file ({error})") from None
    if suffix in _TORCH_SUFFIXES or (suffix == ".pkl" and zipfile.is_zipfile(file)):
        return _load_torch(file)
    if suffix == ".pkl":
        return {name: _to_tensor(array) for name, array in read_detectron2_pickle(file).items()}
    raise ValueError(
        f"{file}: unsupported checkpoint suffix {file.suffix!r}; expected one of "
        f"{', '.join(_SUPPORTED)}"
    )


def read_detectron2_pickle(path: str | os.PathLike[str]) -> dict[str, np.ndarray]:
    """Read a Detectron2-style pickle of numpy arrays without executing anything from it.

    The file may be written by Python 2 or 3, any pickle protocol; strings are decoded as
    latin-1 like Detectron2 itself does. The arrays under ``"model"`` (or ``"blobs"``, or the
    top level when neither exists) are returned; numpy scalars and numbers become 0-d arrays.

    Args:
        path: the ``.pkl`` file, e.g. ``faster_rcnn_from_caffe_attr.pkl``.

    Returns:
        ``{parameter name: array}`` with dtypes and shapes as stored.

    Raises:
        UnsafeCheckpointError: the pickle references any global outside the numpy allow-list
            (or a persistent id, or an object dtype); names the file and the global.
        ValueError: the pickle is corrupt or is not a dict of arrays.
    """
    file = _existing_file(path)
    with file.open("rb") as handle:
        try:
            obj = _RestrictedUnpickler(handle, source=file).load()
        except UnsafeCheckpointError:
            raise
        except (pickle.UnpicklingError, EOFError, ValueError, TypeError, LookupError) as err:
            raise ValueError(f"{file}: not a readable Detectron2 pickle ({err})") from err
    if not isinstance(obj, Mapping):
        raise ValueError(f"{file}: expected a dict at the top of the pickle, got {type(obj)}")
    arrays = _unwrap(obj)
    out: dict[str, np.ndarray] = {}
    for key, value in arrays.items():
        name = key.decode("utf-8") if isinstance(key, bytes) else key
        if not isinstance(name, str):
            raise ValueError(f"{file}: parameter names must be strings, got {key!r}")
        if isinstance(value, np.ndarray | np.generic | int | float):
            array = np.asarray(value)
        else:
            raise ValueError(
                f"{file}: entry {name!r} is a {type(value).__name__}, not a numpy array"
            )
        if array.dtype.hasobject:  # the unpickler refuses these; keep the guarantee local
            raise UnsafeCheckpointError(f"{file}: entry {name!r} has an object dtype")
        out[name] = array
    return out


def save_safetensors(
    state_dict: Mapping[str, torch.Tensor],
    path: str | os.PathLike[str],
    metadata: Mapping[str, str] | None = None,
) -> None:
    """Write ``{name: Tensor}`` as a ``.safetensors`` file, atomically.

    Tensors are moved to the CPU and made contiguous; tensors that share storage (tied
    weights) are copied so each is stored on its own. The file appears complete or not at all
    (``weights.files.atomic_path``: temporary file beside it, fsync, rename, fsync of the folder).

    Args:
        state_dict: tensors of any shape and dtype.
        path: destination file; its directory must exist.
        metadata: optional ``str -> str`` pairs stored in the header (e.g. the source file).

    Raises:
        TypeError: a value is not a tensor, or metadata is not ``str -> str``.
    """
    from safetensors.torch import save_file

    if metadata is not None and not all(
        isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()
    ):
        raise TypeError("save_safetensors: metadata must map str to str")
    seen: set[int] = set()
    tensors: dict[str, torch.Tensor] = {}
    for name, value in state_dict.items():
        if not isinstance(value, torch.Tensor):
            raise TypeError(f"save_safetensors: {name!r} is a {type(value).__name__}, not a Tensor")
        tensor = value.detach().to("cpu").contiguous()
        pointer = tensor.untyped_storage().data_ptr()
        if pointer in seen and tensor.numel() > 0:
            tensor = tensor.clone()  # safetensors refuses shared storage
        seen.add(pointer)
        tensors[name] = tensor
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=dict(metadata) if metadata else None)


def _existing_file(path: str | os.PathLike[str]) -> Path:
    file = Path(path).expanduser()
    if not file.is_file():
        raise FileNotFoundError(f"checkpoint file not found: {file}")
    return file


def _load_torch(file: Path) -> dict[str, torch.Tensor]:
    try:
        obj = torch.load(file, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        # torch's message names the refused global; it never ran.
        raise UnsafeCheckpointError(
            f"{file}: refused by torch.load(weights_only=True), the file holds more than "
            f"tensors and plain containers: {err}"
        ) from err
    if not isinstance(obj, Mapping):
        raise ValueError(f"{file}: expected a dict of tensors, got {type(obj).__name__}")
    state = _unwrap(obj)
    tensors = {k: v for k, v in state.items() if isinstance(v, torch.Tensor)}
    others = sorted(str(k) for k in state if k not in tensors)
    if others:
        raise ValueError(f"{file}: entries that are not tensors: {others[:5]}")
    if not tensors:
        raise ValueError(f"{file}: holds no tensors")
    return tensors


def _unwrap(obj: Mapping[Any, Any]) -> Mapping[Any, Any]:
    for key in _WRAPPER_KEYS:
        inner = obj.get(key)
        if isinstance(inner, Mapping):
            return inner
    return {k: v for k, v in obj.items() if not (isinstance(k, str) and k.startswith("__"))}


def _to_tensor(array: np.ndarray) -> torch.Tensor:
    if not array.flags.writeable or not array.flags.c_contiguous:
        array = np.array(array, copy=True, order="C")  # torch wants writable, contiguous memory
    return torch.from_numpy(array)


class _RestrictedUnpickler(pickle.Unpickler):
    """Unpickler that resolves only allow-listed numpy globals and plain containers."""

    def __init__(self, handle: Any, *, source: Path) -> None:
        super().__init__(handle, encoding="latin1")
        self._source = source
        self._allowed = _allowed_globals(source)

    def find_class(self, module: str, name: str) -> Any:
        found = self._allowed.get((module, name))
        if found is None:
            raise UnsafeCheckpointError(
                f"{self._source}: refused to load global {module}.{name}; a Detectron2 "
                "checkpoint may only contain numpy arrays, dtypes, numpy scalars and plain "
                "containers (nothing from this file was executed)"
            )
        return found

    def persistent_load(self, pid: Any) -> Any:
        raise UnsafeCheckpointError(
            f"{self._source}: refused a pickle persistent id {pid!r}; not a Detectron2 "
            "numpy checkpoint (torch files are zip archives: use .pth/.bin)"
        )


def _allowed_globals(source: Path) -> dict[tuple[str, str], Callable[..., Any] | type]:
    """The allow-list: numpy's array/dtype/scalar rebuilders, wrapped to refuse object dtypes."""
    from numpy._core import multiarray  # numpy >= 2 (requirements.txt pins 2.x)

    def refuse_object(dtype: np.dtype) -> np.dtype:
        if not isinstance(dtype, np.dtype) or dtype.hasobject:
            raise UnsafeCheckpointError(f"{source}: refused dtype {dtype!r} (Python objects)")
        return dtype

    def reconstruct(subtype: Any, shape: Any, dtype: Any) -> np.ndarray:
        if subtype is not np.ndarray:
            raise UnsafeCheckpointError(f"{source}: refused array subclass {subtype!r}")
        array = multiarray._reconstruct(np.ndarray, shape, refuse_object(np.dtype(dtype)))
        return cast(np.ndarray, array)

    def make_dtype(*args: Any) -> np.dtype:
        return refuse_object(np.dtype(*args))

    def scalar(dtype: Any, *args: Any) -> Any:
        return multiarray.scalar(refuse_object(dtype), *args)

    def frombuffer(buffer: Any, dtype: Any, shape: Any, order: str) -> np.ndarray:
        # Protocol 5 rebuilds contiguous arrays from one bytes buffer; same checks as above.
        if not isinstance(buffer, bytes | bytearray | memoryview | pickle.PickleBuffer):
            raise UnsafeCheckpointError(f"{source}: refused array buffer of {type(buffer)}")
        array = np.frombuffer(memoryview(buffer), dtype=refuse_object(np.dtype(dtype)))
        return array.reshape(shape, order="F" if order == "F" else "C")

    def encode(text: str, encoding: str = "utf-8") -> bytes:
        # Protocol-2 pickles written by Python 3 spell bytes as _codecs.encode(str, "latin1").
        if not isinstance(text, str) or encoding.lower() not in ("latin1", "latin-1"):
            raise UnsafeCheckpointError(f"{source}: refused _codecs.encode(..., {encoding!r})")
        return text.encode("latin1")

    allowed: dict[tuple[str, str], Callable[..., Any] | type] = {
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): make_dtype,
        ("_codecs", "encode"): encode,
        ("collections", "OrderedDict"): collections.OrderedDict,
    }
    for package in ("numpy.core", "numpy._core"):
        allowed[(f"{package}.multiarray", "_reconstruct")] = reconstruct
        allowed[(f"{package}.multiarray", "scalar")] = scalar
        allowed[(f"{package}.numeric", "_frombuffer")] = frombuffer
    return allowed
