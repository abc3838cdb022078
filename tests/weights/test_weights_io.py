"""weights.io: safe reading of .pkl/.bin/.safetensors checkpoints, round trips, refusals."""

from __future__ import annotations

import builtins
import os
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open

from weights.io import (
    UnsafeCheckpointError,
    load_state_dict,
    read_detectron2_pickle,
    save_safetensors,
)

# A few real parameter names and shapes of the detector (data/checkpoints/*.keys.tsv), shrunk.
_NAMES = (
    "backbone.stem.conv1.weight",
    "backbone.stem.conv1.norm.weight",
    "roi_heads.box_predictor.cls_score.bias",
    "roi_heads.attribute_predictor.cls_embedding.weight",
)


def _detectron2_arrays(seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        _NAMES[0]: rng.standard_normal((4, 3, 7, 7)).astype(np.float32),
        _NAMES[1]: rng.standard_normal(4).astype(np.float32),
        _NAMES[2]: np.asfortranarray(rng.standard_normal((3, 5))),  # float64, Fortran order
        _NAMES[3]: rng.integers(-5, 5, size=(6, 2)).astype(np.int64),
        "counter": np.int64(7),  # a numpy scalar, as some Detectron2 files carry
    }


class _WritesFile:
    """Unpickling this object would create ``target`` (via builtins.open)."""

    def __init__(self, target: Path) -> None:
        self.target = target

    def __reduce__(self) -> tuple[object, tuple[str, str]]:
        return (builtins.open, (str(self.target), "w"))


class _RunsShell:
    """Unpickling this object would run ``touch target`` through os.system."""

    def __init__(self, target: Path) -> None:
        self.target = target

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (os.system, (f"touch {self.target}",))


# -- Detectron2 pickles ---------------------------------------------------------------------


@pytest.mark.parametrize("protocol", [2, 4, pickle.HIGHEST_PROTOCOL])
def test_detectron2_pickle_round_trip(tmp_path: Path, protocol: int) -> None:
    arrays = _detectron2_arrays()
    path = tmp_path / "model_final.pkl"
    with path.open("wb") as f:
        pickle.dump({"model": arrays, "__author__": "test"}, f, protocol=protocol)

    loaded = read_detectron2_pickle(path)
    assert sorted(loaded) == sorted(arrays)
    for name, expected in arrays.items():
        assert loaded[name].dtype == np.asarray(expected).dtype
        np.testing.assert_array_equal(loaded[name], expected)

    tensors = load_state_dict(path)
    for name, expected in arrays.items():
        assert isinstance(tensors[name], torch.Tensor)
        assert tensors[name].numpy().dtype == np.asarray(expected).dtype
        np.testing.assert_array_equal(tensors[name].numpy(), expected)


def _py2_pickle(arrays: dict[str, np.ndarray]) -> bytes:
    """Opcodes as Python 2's cPickle (protocol 2) writes numpy arrays: byte strings
    (SHORT_BINSTRING/BINSTRING) rather than unicode, ``numpy.core.multiarray`` globals."""

    def string(b: bytes) -> bytes:
        return b"U" + bytes([len(b)]) + b

    items = b""
    for name, array in arrays.items():
        data = array.tobytes()
        shape = b"(" + b"".join(b"K" + bytes([d]) for d in array.shape) + b"t"
        dtype = (
            b"cnumpy\ndtype\n" + string(array.dtype.str[1:].encode()) + b"K\x00K\x01\x87R"
            b"(K\x03" + string(b"<") + b"NNNJ\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00tb"
        )
        items += string(name.encode())
        items += b"cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\nK\x00\x85"
        items += string(b"b") + b"\x87R"
        items += b"(K\x01" + shape + dtype + b"\x89T" + struct.pack("<I", len(data)) + data + b"tb"
    return (
        b"\x80\x02}("
        + string(b"model")
        + b"}("
        + items
        + b"u"
        + string(b"__author__")
        + string(b"Detectron")
        + b"u."
    )


def test_python2_pickle_reads_with_latin1_strings(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    arrays = {
        _NAMES[0]: rng.standard_normal((2, 3, 7, 7)).astype(np.float32),
        _NAMES[3]: rng.integers(0, 9, size=(4, 2)).astype(np.int64),
    }
    path = tmp_path / "faster_rcnn_from_caffe_attr.pkl"
    path.write_bytes(_py2_pickle(arrays))
    loaded = load_state_dict(path)
    assert sorted(loaded) == sorted(arrays)
    for name, expected in arrays.items():
        np.testing.assert_array_equal(loaded[name].numpy(), expected)


def test_detectron2_pickle_without_model_wrapper(tmp_path: Path) -> None:
    arrays = {"a.weight": np.arange(6, dtype=np.float32).reshape(2, 3)}
    path = tmp_path / "plain.pkl"
    path.write_bytes(pickle.dumps(arrays, protocol=2))
    np.testing.assert_array_equal(read_detectron2_pickle(path)["a.weight"], arrays["a.weight"])


@pytest.mark.parametrize("payload_class", [_WritesFile, _RunsShell])
@pytest.mark.parametrize("protocol", [0, 2, pickle.HIGHEST_PROTOCOL])
def test_malicious_pickle_is_refused_and_never_runs(
    tmp_path: Path, payload_class: type, protocol: int
) -> None:
    target = tmp_path / "pwned"
    path = tmp_path / "evil.pkl"
    # The payload hides inside an otherwise valid checkpoint, after real arrays.
    model = {**_detectron2_arrays(), "zz.payload": payload_class(target)}
    path.write_bytes(pickle.dumps({"model": model}, protocol=protocol))

    with pytest.raises(UnsafeCheckpointError) as info:
        load_state_dict(path)
    message = str(info.value)
    assert str(path) in message
    function = builtins.open if payload_class is _WritesFile else os.system
    assert f"{function.__module__}.{function.__name__}" in message
    assert not target.exists()

    # Control: the same payload through plain pickle really does create its file.
    control = tmp_path / "control"
    result = pickle.loads(pickle.dumps(payload_class(control), protocol=protocol))
    if hasattr(result, "close"):
        result.close()
    assert control.exists()


def test_hand_written_global_is_refused(tmp_path: Path) -> None:
    target = tmp_path / "pwned"
    path = tmp_path / "evil.pkl"
    # Protocol 0 by hand: GLOBAL builtins.exec, then call it with a script that writes a file.
    script = f"open({str(target)!r}, 'w').close()"
    path.write_bytes(b"cbuiltins\nexec\n(V" + script.encode() + b"\ntR.")
    with pytest.raises(UnsafeCheckpointError, match=r"builtins\.exec"):
        read_detectron2_pickle(path)
    assert not target.exists()


def test_numpy_global_outside_allow_list_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "evil.pkl"
    path.write_bytes(b"cnumpy\nload\n(Vsomething.npy\ntR.")
    with pytest.raises(UnsafeCheckpointError, match=r"numpy\.load"):
        read_detectron2_pickle(path)


def test_object_arrays_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "objects.pkl"
    path.write_bytes(pickle.dumps({"model": {"x": np.array([1, "a"], dtype=object)}}, 2))
    with pytest.raises(UnsafeCheckpointError, match="object"):
        read_detectron2_pickle(path)


def test_persistent_ids_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "persistent.pkl"
    path.write_bytes(b"Pstorage0\n.")
    with pytest.raises(UnsafeCheckpointError, match="persistent"):
        read_detectron2_pickle(path)


def test_corrupt_pickle_is_a_value_error_naming_the_file(tmp_path: Path) -> None:
    path = tmp_path / "truncated.pkl"
    path.write_bytes(pickle.dumps({"model": _detectron2_arrays()}, 4)[:200])
    with pytest.raises(ValueError, match=r"truncated\.pkl"):
        read_detectron2_pickle(path)


def test_pickle_of_non_arrays_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "strings.pkl"
    path.write_bytes(pickle.dumps({"model": {"a": "not an array"}}, 4))
    with pytest.raises(ValueError, match="'a'"):
        read_detectron2_pickle(path)


# -- torch files and safetensors ------------------------------------------------------------


def _state_dict() -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    return {
        "backbone.res2.0.conv1.weight": torch.randn(8, 4, 1, 1, generator=generator),
        "backbone.res2.0.conv1.norm.num_batches_tracked": torch.tensor(3, dtype=torch.int64),
        "roi_heads.box_predictor.bbox_pred.bias": torch.randn(12, generator=generator).half(),
    }


@pytest.mark.parametrize("wrapper", [None, "model", "state_dict"])
@pytest.mark.parametrize("suffix", [".bin", ".pth", ".pt"])
def test_torch_checkpoint_round_trip(tmp_path: Path, wrapper: str | None, suffix: str) -> None:
    state = _state_dict()
    path = tmp_path / f"pytorch_model{suffix}"
    torch.save(state if wrapper is None else {wrapper: state, "iteration": 5}, path)
    loaded = load_state_dict(path)
    assert sorted(loaded) == sorted(state)
    for name, tensor in state.items():
        assert loaded[name].dtype == tensor.dtype
        assert torch.equal(loaded[name], tensor)


def test_torch_pickle_in_pkl_suffix_goes_to_torch_load(tmp_path: Path) -> None:
    state = _state_dict()
    path = tmp_path / "model.pkl"
    torch.save(state, path)
    loaded = load_state_dict(path)
    assert all(torch.equal(loaded[k], v) for k, v in state.items())


def test_torch_checkpoint_with_code_is_refused(tmp_path: Path) -> None:
    target = tmp_path / "pwned"
    path = tmp_path / "pytorch_model.bin"
    torch.save({"w": torch.zeros(2), "evil": _WritesFile(target)}, path)
    with pytest.raises(UnsafeCheckpointError, match=r"pytorch_model\.bin"):
        load_state_dict(path)
    assert not target.exists()


def test_safetensors_round_trip_with_metadata_and_shared_tensors(tmp_path: Path) -> None:
    state = _state_dict()
    shared = torch.randn(4, 3, generator=torch.Generator().manual_seed(1))
    state["tied.a"] = shared
    state["tied.b"] = shared  # same storage: safetensors alone would refuse
    state["view"] = shared.t()  # non-contiguous
    path = tmp_path / "model.safetensors"
    save_safetensors(state, path, metadata={"source": "test"})

    loaded = load_state_dict(path)
    assert sorted(loaded) == sorted(state)
    for name, tensor in state.items():
        assert loaded[name].dtype == tensor.dtype
        assert torch.equal(loaded[name], tensor)
    with safe_open(str(path), framework="pt") as handle:
        assert handle.metadata() == {"source": "test"}
    assert [p.name for p in tmp_path.iterdir()] == ["model.safetensors"]  # no temp file left


def test_pickle_converts_to_safetensors(tmp_path: Path) -> None:
    arrays = _detectron2_arrays()
    pkl = tmp_path / "model.pkl"
    pkl.write_bytes(pickle.dumps({"model": arrays}, 2))
    out = tmp_path / "model.safetensors"
    save_safetensors(load_state_dict(pkl), out)
    loaded = load_state_dict(out)
    for name, expected in arrays.items():
        np.testing.assert_array_equal(loaded[name].numpy(), expected)


def test_bad_inputs(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"missing\.bin"):
        load_state_dict(tmp_path / "missing.bin")
    other = tmp_path / "weights.h5"
    other.write_bytes(b"\x89HDF")
    with pytest.raises(ValueError, match=r"weights\.h5.*\.safetensors"):
        load_state_dict(other)
    with pytest.raises(TypeError, match="metadata"):
        save_safetensors({"a": torch.zeros(1)}, tmp_path / "x.safetensors", metadata={"n": 1})  # type: ignore[dict-item]
    with pytest.raises(TypeError, match="'a'"):
        save_safetensors({"a": np.zeros(1)}, tmp_path / "x.safetensors")  # type: ignore[dict-item]
