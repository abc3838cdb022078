"""``python -m weights``, offline, against temporary caches: its ``main(argv)`` in this process
with the output captured, and one real ``python -m weights`` process for the entry point."""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from weights import ENV_VAR, LOCK_FILE_NAME, REGISTRY, load_state_dict
from weights.__main__ import main

ROOT = Path(__file__).resolve().parents[2]


def _main(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    """``python -m weights ARGS`` in this process: exit code, stdout, stderr."""
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def test_list_prints_every_entry() -> None:
    """A real ``python -m weights`` process: the module's entry point, not only its main."""
    # The autouse fixture has already set HF_HOME/HF_HUB_OFFLINE in os.environ.
    result = subprocess.run(
        [sys.executable, "-m", "weights", "list"],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        cwd=ROOT,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    for record in REGISTRY.values():
        assert record.name in result.stdout
        assert record.hf_repo is None or record.hf_repo in result.stdout
    assert "faster_rcnn_from_caffe_attr.pkl" in result.stdout
    assert ENV_VAR in result.stdout
    hub_records = [r for r in REGISTRY.values() if r.hf_repo is not None]
    assert result.stdout.count("revision: unknown (") == len(hub_records)
    assert "default branch" in result.stdout


def test_list_json_matches_the_registry(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = _main(capsys, "list", "--json")
    assert code == 0, err
    entries = {entry["name"]: entry for entry in json.loads(out)}
    assert set(entries) == set(REGISTRY)
    for name, record in REGISTRY.items():
        assert entries[name]["files"] == list(record.files)
        assert entries[name]["kind"] == record.kind
        assert entries[name]["preset"] == record.preset
        assert entries[name]["revision"] == record.revision


def test_help_documents_the_commands_and_the_env_var(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:  # argparse's --help exits by itself
        main(["--help"])
    assert exited.value.code == 0
    out = capsys.readouterr().out
    for word in ("list", "fetch", "verify", "path", ENV_VAR, "HF_HUB_OFFLINE"):
        assert word in out


def test_path_not_found_exits_2_without_traceback(capsys: pytest.CaptureFixture[str]) -> None:
    """Models not loadable: exit 2, as every command of the project says it."""
    code, out, err = _main(capsys, "path", "lxmert-vqa")
    assert code == 2
    assert "Traceback" not in err
    assert err.startswith("python -m weights: error: ")
    assert "python -m weights fetch lxmert-vqa" in err
    assert out == ""


def test_unknown_name_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = _main(capsys, "verify", "no-such-model")
    assert code == 2
    assert "Traceback" not in err
    assert "vg-r101-c4-attr" in err


def test_usage_error_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:  # argparse's usage errors exit by themselves
        main(["frobnicate"])
    assert exited.value.code == 2
    assert "frobnicate" in capsys.readouterr().err


def test_path_and_verify_on_a_hub_cache(
    isolated_env: Path, make_hub_cache: Callable[..., Path], capsys: pytest.CaptureFixture[str]
) -> None:
    data = b"weights" * 100
    snapshot = make_hub_cache(
        isolated_env, "unc-nlp/frcnn-vg-finetuned", {"pytorch_model.bin": data}
    )
    code, out, err = _main(capsys, "path", "vg-r101-c4-attr")
    assert code == 0, err
    assert out.strip() == str(snapshot / "pytorch_model.bin")

    code, out, err = _main(capsys, "verify", "vg-r101-c4-attr")
    assert code == 0, err
    assert hashlib.sha256(data).hexdigest() in out

    (snapshot / "pytorch_model.bin").resolve().write_bytes(b"changed")
    code, out, err = _main(capsys, "verify", "vg-r101-c4-attr")
    assert code == 2
    assert "Traceback" not in err
    assert str(isolated_env / LOCK_FILE_NAME) in err


def test_convert_pickle_to_safetensors(tmp_path: Path) -> None:
    arrays = {"a.weight": np.arange(12, dtype=np.float32).reshape(3, 4)}
    src = tmp_path / "model.pkl"
    src.write_bytes(pickle.dumps({"model": arrays}, protocol=2))
    dest = tmp_path / "model.safetensors"
    assert main(["convert", str(src), str(dest)]) == 0
    np.testing.assert_array_equal(load_state_dict(dest)["a.weight"].numpy(), arrays["a.weight"])


def test_convert_refuses_an_unsafe_pickle(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    src = tmp_path / "evil.pkl"
    target = tmp_path / "pwned"
    src.write_bytes(b"cbuiltins\nopen\n(V" + str(target).encode() + b"\nVw\ntR.")
    assert main(["convert", str(src), str(tmp_path / "out.safetensors")]) == 2
    assert "builtins.open" in capsys.readouterr().err
    assert not target.exists()
    assert not (tmp_path / "out.safetensors").exists()
