"""Names registered for original LXMERT checkpoint files (``python -m weights register``): a
local ``.pth``, or a URL with its sha256 downloaded from a real local HTTP server into the hub
cache, checked, then resolved like any other name."""

from __future__ import annotations

import hashlib
import json
import threading
from collections.abc import Iterator
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import torch

from weights.__main__ import main as weights_main
from weights.download import download_path
from weights.registered import (
    Registration,
    all_records,
    original_kind,
    register,
    registrations,
    registry_file,
    unregister,
)
from weights.registry import REGISTRY
from weights.resolve import (
    CheckpointNotFoundError,
    ChecksumError,
    locate_checkpoint,
    resolve_checkpoint,
)

TASK = "lxrt_encoder.model."


@pytest.fixture(autouse=True)
def config_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Registrations go to <tmp>/config/lxmert-pipeline/registry.json."""
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    return tmp_path / "config"


def _task_state(answers: int, *, nlvr2: bool = False) -> dict[str, torch.Tensor]:
    """The keys a task checkpoint's kind is read from (hidden size 4)."""
    first = (8, 8) if nlvr2 else (8, 4)
    return {
        TASK + "bert.embeddings.word_embeddings.weight": torch.zeros(10, 4),
        "logit_fc.0.weight": torch.zeros(*first),
        "logit_fc.3.weight": torch.zeros(2 if nlvr2 else answers, 8),
    }


def _save(state: dict[str, torch.Tensor], path: Path) -> Path:
    torch.save(state, path)
    return path


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """A real HTTP server (a thread) serving <tmp>/www; yields its base URL and the folder."""
    root = tmp_path / "www"
    root.mkdir()
    handler = partial(SimpleHTTPRequestHandler, directory=str(root))
    handler.log_message = lambda *args: None  # type: ignore[attr-defined]
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}", root
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


def test_the_kind_is_read_from_names_and_shapes() -> None:
    shapes = {key: tuple(value.shape) for key, value in _task_state(3129).items()}
    assert original_kind(shapes) == "vqa"
    shapes["logit_fc.3.weight"] = (1842, 8)
    assert original_kind(shapes) == "gqa"
    shapes["logit_fc.3.weight"] = (7, 8)
    assert original_kind(shapes) is None  # a QA head of another size: --kind says which
    nlvr2 = {key: tuple(value.shape) for key, value in _task_state(2, nlvr2=True).items()}
    assert original_kind(nlvr2) == "nlvr2"
    assert original_kind({"module.bert.pooler.dense.weight": (4, 4)}) == "pretraining"
    assert original_kind({"encoder.layer.0.weight": (4, 4)}) is None


def test_a_local_file_registered_by_command_resolves_to_itself(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pth = _save(_task_state(3129), tmp_path / "BEST.pth")
    assert weights_main(["register", "my-vqa", str(pth)]) == 0
    digest = hashlib.sha256(pth.read_bytes()).hexdigest()
    assert f"my-vqa: vqa checkpoint {pth} (sha256 {digest})" in capsys.readouterr().out
    stored = json.loads(registry_file().read_text(encoding="utf-8"))["checkpoints"]
    assert stored == {
        "my-vqa": {"kind": "vqa", "sha256": digest, "file": "BEST.pth", "path": str(pth)}
    }
    found = locate_checkpoint("my-vqa")
    assert (found.path, found.source, found.record and found.record.original) == (
        pth,
        "registered",
        "vqa",
    )
    assert weights_main(["list", "--json"]) == 0
    listed = {entry["name"]: entry for entry in json.loads(capsys.readouterr().out)}
    assert listed["my-vqa"]["local_path"] == str(pth) and set(REGISTRY) < set(listed)
    assert weights_main(["verify", "my-vqa"]) == 0
    assert f"{digest}  BEST.pth  (matches registry)" in capsys.readouterr().out


def test_a_local_file_changed_after_registration_is_refused(tmp_path: Path) -> None:
    pth = _save(_task_state(1842), tmp_path / "BEST.pth")
    register("my-gqa", str(pth))
    _save(_task_state(1842, nlvr2=False) | {"logit_fc.3.bias": torch.ones(1842)}, pth)
    with pytest.raises(ChecksumError, match=r"python -m weights register my-gqa"):
        resolve_checkpoint("my-gqa")
    register("my-gqa", str(pth))  # registered again: trusted again
    assert resolve_checkpoint("my-gqa") == pth
    pth.unlink()
    with pytest.raises(
        CheckpointNotFoundError, match=r"(?s)BEST\.pth \(missing\).*register my-gqa again"
    ):
        resolve_checkpoint("my-gqa")


def test_a_url_is_downloaded_into_the_cache_checked_and_kept(
    served: tuple[str, Path], isolated_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("HF_HUB_OFFLINE")
    base, root = served
    pth = _save(_task_state(2, nlvr2=True), root / "nlvr2_BEST.pth")
    digest = hashlib.sha256(pth.read_bytes()).hexdigest()
    url = f"{base}/nlvr2_BEST.pth"
    args = ["register", "my-nlvr2", url, "--sha256", digest.upper(), "--kind", "nlvr2"]
    assert weights_main(args) == 0
    cached = download_path(isolated_env, digest, "nlvr2_BEST.pth")
    assert not cached.exists()  # registering does not download
    first = locate_checkpoint("my-nlvr2")
    assert (first.path, first.source) == (cached, "download")
    assert cached.read_bytes() == pth.read_bytes()
    pth.unlink()  # the server no longer has it: the copy in the cache is used
    again = locate_checkpoint("my-nlvr2")
    assert (again.path, again.source) == (cached, "cache")
    assert again.sha256() == digest


def test_a_download_with_another_sha256_is_not_kept(
    served: tuple[str, Path], isolated_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("HF_HUB_OFFLINE")
    base, root = served
    _save(_task_state(3129), root / "BEST.pth")
    wrong = "0" * 64
    register("my-vqa", f"{base}/BEST.pth", sha256=wrong, kind="vqa")
    with pytest.raises(
        CheckpointNotFoundError, match=f"not the expected {wrong}; nothing was kept"
    ):
        resolve_checkpoint("my-vqa")
    folder = download_path(isolated_env, wrong, "BEST.pth").parent
    assert list(folder.iterdir()) == []  # neither the file nor its temporary copy


def test_offline_or_unreachable_url_names_are_models_not_loadable(
    served: tuple[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    base, _ = served
    register("gone", f"{base}/missing.pth", sha256="a" * 64, kind="pretraining")
    assert weights_main(["path", "gone"]) == 2  # offline (the fixture's HF_HUB_OFFLINE=1)
    err = capsys.readouterr().err
    assert "download not attempted: download=False" in err and f"{base}/missing.pth" in err
    with pytest.raises(CheckpointNotFoundError, match="HF_HUB_OFFLINE is set"):
        resolve_checkpoint("gone")


def test_a_missing_url_is_not_found(
    served: tuple[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("HF_HUB_OFFLINE")
    base, _ = served
    register("gone", f"{base}/missing.pth", sha256="a" * 64, kind="pretraining")
    with pytest.raises(CheckpointNotFoundError, match=r"missing\.pth: failed \(HTTPError: .*404"):
        resolve_checkpoint("gone")


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["lxmert-vqa", "BEST.pth"], "is a built-in checkpoint name"),
        (["a/b", "BEST.pth"], "is not a usable name"),
        (["x", "https://h/BEST.pth", "--kind", "vqa"], "registered with its sha256"),
        (["x", "https://h/BEST.pth", "--sha256", "a" * 64], "say what the file holds"),
        (["x", "https://h/BEST.pth", "--sha256", "abc", "--kind", "vqa"], "64 hex digits"),
        (["x", "https://h/model.safetensors", "--sha256", "a" * 64, "--kind", "vqa"], "torch.save"),
        (["x", "ftp://h/BEST.pth"], "http://, https:// or file:// URL"),
        (["x", "nowhere.pth"], "no such file to register"),
        (["x", "other.pth"], "not an original LXMERT checkpoint"),
        (["x", "odd.pth"], "say which it is with --kind"),
        (["x", "odd.pth", "--kind", "nlvr2"], None),
        (["x", "BEST.pth", "--kind", "gqa"], "holds a vqa checkpoint, not gqa"),
    ],
)
def test_bad_registrations_are_usage_errors(
    argv: list[str],
    message: str | None,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.chdir(tmp_path)
    _save(_task_state(3129), tmp_path / "BEST.pth")
    _save(_task_state(7), tmp_path / "odd.pth")
    _save({"encoder.weight": torch.zeros(2)}, tmp_path / "other.pth")
    code = weights_main(["register", *argv])
    if message is None:
        assert code == 0 and registrations()["x"].kind == "nlvr2"
        return
    assert code == 2
    assert message in capsys.readouterr().err
    assert registrations() == {}


def test_unregister_and_a_broken_registry_file(tmp_path: Path) -> None:
    pth = _save(_task_state(3129), tmp_path / "BEST.pth")
    register("a", str(pth))
    register("b", str(pth))
    assert set(all_records()) == set(REGISTRY) | {"a", "b"}
    unregister("a")
    assert list(registrations()) == ["b"]
    assert weights_main(["unregister", "a"]) == 2
    registry_file().write_text("{", encoding="utf-8")
    with pytest.raises(ValueError, match=r"registry\.json: not a readable registry"):
        resolve_checkpoint("b")


def test_a_registration_round_trips_to_its_record() -> None:
    entry = Registration("n", "gqa", "b" * 64, "BEST.pth", url="https://h/BEST.pth")
    record = entry.record()
    assert (record.kind, record.original, record.files, record.resolves_to_file) == (
        "encoder",
        "gqa",
        ("BEST.pth",),
        True,
    )
    assert record.urls == {"BEST.pth": "https://h/BEST.pth"} and record.local_path is None
