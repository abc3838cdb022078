"""weights.resolve: explicit paths, shipped models, $LXMERT_PIPELINE_WEIGHTS, the Hugging Face
cache layout, downloads from a local fake hub, the not-found message and sha256 checks."""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import socket
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

# Its constants are frozen at import, before the env is patched: resolution must not care.
# Imported by name, since weights no longer imports huggingface_hub just to resolve a name.
import huggingface_hub.constants
import pytest

from weights import (
    ENV_VAR,
    LOCK_FILE_NAME,
    REGISTRY,
    CheckpointNotFoundError,
    ChecksumError,
    fetch,
    locate_checkpoint,
    resolve_checkpoint,
    sha256_file,
    verify,
)
from weights import resolve as resolve_module
from weights.registry import CheckpointRecord, UnknownCheckpointError

DETECTOR = "vg-r101-c4-attr"
DETECTOR_REPO = "unc-nlp/frcnn-vg-finetuned"
WEIGHTS_BYTES = b"detector weights " * 64
CONFIG_BYTES = b'{"model_type": "lxmert"}'

MakeCache = Callable[..., Path]


TEST_RECORD = CheckpointRecord(
    name="test-detector",
    kind="detector",
    preset="vg-r101-c4-attr",
    license="test",
    description="test record",
    hf_repo="test-org/test-detector",
    files=("pytorch_model.bin",),
)


def record_with(**changes: Any) -> CheckpointRecord:
    """A detector record for tests: name ``test-detector``, one file, changed by ``changes``
    (validated again, like any record)."""
    return dataclasses.replace(TEST_RECORD, **changes)


def _lock(cache: Path) -> dict[str, str]:
    return json.loads((cache / LOCK_FILE_NAME).read_text())["checksums"]


# -- explicit paths -------------------------------------------------------------------------


def test_explicit_file_and_directory_are_returned_as_they_are(tmp_path: Path) -> None:
    file = tmp_path / "my.bin"
    file.write_bytes(b"x")
    assert resolve_checkpoint(file) == file
    assert resolve_checkpoint(str(file)) == file
    assert resolve_checkpoint(tmp_path) == tmp_path


def test_missing_path_that_is_no_name_lists_the_names(tmp_path: Path) -> None:
    with pytest.raises(CheckpointNotFoundError) as info:
        resolve_checkpoint(tmp_path / "nothing.bin")
    message = str(info.value)
    assert "nothing.bin" in message
    assert all(name in message for name in REGISTRY)


def test_registry_name_wins_over_same_named_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / DETECTOR).mkdir()
    with pytest.raises(CheckpointNotFoundError, match="was not found"):
        resolve_checkpoint(DETECTOR, download=False)
    assert resolve_checkpoint(f"./{DETECTOR}") == Path(f"./{DETECTOR}")


# -- Hugging Face cache ---------------------------------------------------------------------


@pytest.mark.parametrize("variable", ["HF_HOME", "HF_HUB_CACHE"])
def test_hub_cache_layout_resolves_offline(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, make_hub_cache: MakeCache, variable: str
) -> None:
    base = tmp_path / "elsewhere"
    cache = base / "hub" if variable == "HF_HOME" else base
    monkeypatch.setenv(variable, str(base))
    assert str(cache) != huggingface_hub.constants.HF_HUB_CACHE  # frozen at import
    snapshot = make_hub_cache(cache, DETECTOR_REPO, {"pytorch_model.bin": WEIGHTS_BYTES})

    found = locate_checkpoint(DETECTOR)
    assert found.source == "hf-cache"
    assert found.path == snapshot / "pytorch_model.bin"
    assert found.path.read_bytes() == WEIGHTS_BYTES
    # The first use pins the sha256 in the lock file next to the cache.
    assert _lock(cache) == {
        f"{DETECTOR}/pytorch_model.bin": hashlib.sha256(WEIGHTS_BYTES).hexdigest()
    }


def test_encoder_resolves_to_snapshot_directory(
    isolated_env: Path, make_hub_cache: MakeCache
) -> None:
    snapshot = make_hub_cache(
        isolated_env,
        "unc-nlp/lxmert-vqa-uncased",
        {"config.json": CONFIG_BYTES, "pytorch_model.bin": WEIGHTS_BYTES},
    )
    path = resolve_checkpoint("lxmert-vqa")
    assert path == snapshot
    assert (path / "config.json").read_bytes() == CONFIG_BYTES


def test_encoder_with_a_missing_file_is_not_found(
    isolated_env: Path, make_hub_cache: MakeCache
) -> None:
    make_hub_cache(isolated_env, "unc-nlp/lxmert-gqa-uncased", {"config.json": CONFIG_BYTES})
    with pytest.raises(CheckpointNotFoundError, match=r"without pytorch_model\.bin"):
        resolve_checkpoint("lxmert-gqa")


def test_empty_cache_offline_gives_the_actionable_error(isolated_env: Path) -> None:
    with pytest.raises(CheckpointNotFoundError) as info:
        resolve_checkpoint(DETECTOR)
    message = str(info.value)
    assert DETECTOR in message
    assert f"${ENV_VAR}: not set" in message
    assert f"Hugging Face cache {isolated_env}" in message
    assert "HF_HUB_OFFLINE" in message  # the download step, and why it was skipped
    assert f"python -m weights fetch {DETECTOR}" in message
    assert "--detector PATH" in message
    assert REGISTRY[DETECTOR].urls["faster_rcnn_from_caffe_attr.pkl"] in message
    assert isinstance(info.value, FileNotFoundError)


def test_encoder_error_names_the_encoder_flag(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv(ENV_VAR, str(tmp_path / "w"))
    with pytest.raises(CheckpointNotFoundError) as info:
        resolve_checkpoint("lxmert-base", download=False)
    message = str(info.value)
    assert str(tmp_path / "w" / "lxmert-base") in message
    assert "encoder=PATH" in message
    assert "lxmert-finetune: --from PATH to train, --model PATH to evaluate" in message
    assert "download=False" in message


def test_unknown_name_lists_valid_names() -> None:
    with pytest.raises(UnknownCheckpointError) as info:
        verify("no-such-model")
    assert all(name in str(info.value) for name in REGISTRY)


# -- $LXMERT_PIPELINE_WEIGHTS ---------------------------------------------------------------


def test_env_directory_resolves_before_the_hub_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, isolated_env: Path, make_hub_cache: MakeCache
) -> None:
    make_hub_cache(isolated_env, DETECTOR_REPO, {"pytorch_model.bin": b"cached copy"})
    directory = tmp_path / "weights-dir" / DETECTOR
    directory.mkdir(parents=True)
    (directory / "pytorch_model.bin").write_bytes(WEIGHTS_BYTES)
    monkeypatch.setenv(ENV_VAR, str(tmp_path / "weights-dir"))
    found = locate_checkpoint(DETECTOR)
    assert (found.source, found.path) == ("env", directory / "pytorch_model.bin")


def test_env_directory_accepts_the_alternative_detectron2_pickle(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    directory = tmp_path / DETECTOR
    directory.mkdir()
    (directory / "faster_rcnn_from_caffe_attr.pkl").write_bytes(b"pickle bytes")
    monkeypatch.setenv(ENV_VAR, str(tmp_path))
    assert resolve_checkpoint(DETECTOR) == directory / "faster_rcnn_from_caffe_attr.pkl"


def test_env_directory_for_an_encoder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    directory = tmp_path / "lxmert-vqa"
    directory.mkdir()
    (directory / "config.json").write_bytes(CONFIG_BYTES)
    (directory / "pytorch_model.bin").write_bytes(WEIGHTS_BYTES)
    monkeypatch.setenv(ENV_VAR, str(tmp_path))
    assert resolve_checkpoint("lxmert-vqa") == directory


# -- shipped models -------------------------------------------------------------------------


def test_shipped_model_resolves_from_the_shipped_root(tmp_path: Path) -> None:
    data = b"tiny shipped detector"
    record = record_with(
        name="tiny-shipped",
        hf_repo=None,
        files=("model.safetensors",),
        shipped_dir="tiny",
        sha256={"model.safetensors": hashlib.sha256(data).hexdigest()},
    )
    registry = {**REGISTRY, record.name: record}
    (tmp_path / "tiny").mkdir()
    (tmp_path / "tiny" / "model.safetensors").write_bytes(data)
    found = locate_checkpoint("tiny-shipped", registry=registry, shipped_root=tmp_path)
    assert (found.source, found.path) == ("shipped", tmp_path / "tiny" / "model.safetensors")
    assert verify("tiny-shipped", registry=registry, shipped_root=tmp_path) == {
        "model.safetensors": hashlib.sha256(data).hexdigest()
    }


def test_missing_shipped_model_says_where_it_looked(tmp_path: Path) -> None:
    record = record_with(name="tiny-shipped", hf_repo=None, shipped_dir="tiny")
    with pytest.raises(CheckpointNotFoundError) as info:
        resolve_checkpoint("tiny-shipped", registry={record.name: record}, shipped_root=tmp_path)
    assert f"shipped with the package: {tmp_path / 'tiny'}" in str(info.value)


# -- sha256 checks --------------------------------------------------------------------------


def test_known_sha256_mismatch_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    record = record_with(sha256={"pytorch_model.bin": "0" * 64})
    directory = tmp_path / record.name
    directory.mkdir()
    (directory / "pytorch_model.bin").write_bytes(WEIGHTS_BYTES)
    monkeypatch.setenv(ENV_VAR, str(tmp_path))
    with pytest.raises(ChecksumError) as info:
        resolve_checkpoint(record.name, registry={record.name: record})
    message = str(info.value)
    assert "0" * 64 in message
    assert hashlib.sha256(WEIGHTS_BYTES).hexdigest() in message
    assert str(directory / "pytorch_model.bin") in message
    assert f"python -m weights fetch {record.name}" in message
    # A matching digest passes, and never touches the lock file.
    good = record_with(sha256={"pytorch_model.bin": hashlib.sha256(WEIGHTS_BYTES).hexdigest()})
    assert resolve_checkpoint(good.name, registry={good.name: good}).is_file()


def test_lock_file_pins_the_first_copy_and_refuses_a_changed_one(
    isolated_env: Path, make_hub_cache: MakeCache
) -> None:
    snapshot = make_hub_cache(isolated_env, DETECTOR_REPO, {"pytorch_model.bin": WEIGHTS_BYTES})
    assert verify(DETECTOR) == {"pytorch_model.bin": hashlib.sha256(WEIGHTS_BYTES).hexdigest()}
    assert (isolated_env / LOCK_FILE_NAME).is_file()

    # Someone replaces the blob behind the snapshot link.
    blob = (snapshot / "pytorch_model.bin").resolve()
    blob.write_bytes(b"tampered" + WEIGHTS_BYTES)
    for check in (lambda: resolve_checkpoint(DETECTOR), lambda: verify(DETECTOR)):
        with pytest.raises(ChecksumError) as info:
            check()
        message = str(info.value)
        assert str(isolated_env / LOCK_FILE_NAME) in message
        assert f"{DETECTOR}/pytorch_model.bin" in message
        assert hashlib.sha256(WEIGHTS_BYTES).hexdigest() in message
    # verify_checksums=False is the explicit way round it.
    assert resolve_checkpoint(DETECTOR, verify_checksums=False) == snapshot / "pytorch_model.bin"


def test_corrupt_lock_file_is_reported(isolated_env: Path, make_hub_cache: MakeCache) -> None:
    make_hub_cache(isolated_env, DETECTOR_REPO, {"pytorch_model.bin": WEIGHTS_BYTES})
    (isolated_env / LOCK_FILE_NAME).write_text("{not json")
    with pytest.raises(ChecksumError, match="delete it"):
        resolve_checkpoint(DETECTOR)


def test_sha256_file_matches_hashlib(tmp_path: Path) -> None:
    data = bytes(range(256)) * 9000  # > 1 MiB, several chunks
    (tmp_path / "f").write_bytes(data)
    assert sha256_file(tmp_path / "f") == hashlib.sha256(data).hexdigest()


# -- downloads from a local fake hub ---------------------------------------------------------


def test_fetch_downloads_into_the_cache_and_pins(isolated_env: Path, fake_hub) -> None:
    fake_hub.files[(DETECTOR_REPO, "pytorch_model.bin")] = WEIGHTS_BYTES
    path = fetch(DETECTOR)
    assert path.read_bytes() == WEIGHTS_BYTES
    assert path.is_relative_to(isolated_env / "models--unc-nlp--frcnn-vg-finetuned")
    assert _lock(isolated_env)[f"{DETECTOR}/pytorch_model.bin"] == sha256_file(path)
    requests = len(fake_hub.requests)
    # Later resolution is served by the cache, even online.
    assert locate_checkpoint(DETECTOR).source == "hf-cache"
    assert len(fake_hub.requests) == requests


def test_failed_download_ends_in_the_actionable_error(isolated_env: Path, fake_hub) -> None:
    with pytest.raises(CheckpointNotFoundError) as info:
        resolve_checkpoint("lxmert-vqa")
    message = str(info.value)
    assert "lxmert-vqa" in message
    assert "download of unc-nlp/lxmert-vqa-uncased" in message
    assert "failed" in message
    assert "python -m weights fetch lxmert-vqa" in message
    assert fake_hub.requests  # it did try


def test_download_false_never_contacts_the_hub(fake_hub) -> None:
    fake_hub.files[(DETECTOR_REPO, "pytorch_model.bin")] = WEIGHTS_BYTES
    with pytest.raises(CheckpointNotFoundError, match="download=False"):
        resolve_checkpoint(DETECTOR, download=False)
    assert fake_hub.requests == []


def test_offline_mode_never_contacts_the_hub(
    fake_hub, monkeypatch: pytest.MonkeyPatch, isolated_env: Path
) -> None:
    fake_hub.files[(DETECTOR_REPO, "pytorch_model.bin")] = WEIGHTS_BYTES
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(CheckpointNotFoundError, match="HF_HUB_OFFLINE is set"):
        resolve_checkpoint(DETECTOR)
    assert fake_hub.requests == []


def test_download_asks_for_the_records_revision(isolated_env: Path, fake_hub) -> None:
    fake_hub.files[(DETECTOR_REPO, "pytorch_model.bin")] = WEIGHTS_BYTES
    record = dataclasses.replace(REGISTRY[DETECTOR], name="pinned", revision="v1.0")
    assert fetch("pinned", registry={"pinned": record}).read_bytes() == WEIGHTS_BYTES
    assert fake_hub.requests
    assert all("/resolve/v1.0/pytorch_model.bin" in line for line in fake_hub.requests)


def test_unknown_revision_downloads_the_default_branch(isolated_env: Path, fake_hub) -> None:
    assert REGISTRY[DETECTOR].revision == "unknown"
    fake_hub.files[(DETECTOR_REPO, "pytorch_model.bin")] = WEIGHTS_BYTES
    fetch(DETECTOR)
    assert all("/resolve/main/pytorch_model.bin" in line for line in fake_hub.requests)


def test_hub_cache_is_read_at_the_records_revision(
    isolated_env: Path, make_hub_cache: MakeCache
) -> None:
    old, new = "a" * 40, "b" * 40
    pinned_snapshot = make_hub_cache(
        isolated_env, DETECTOR_REPO, {"pytorch_model.bin": b"old"}, commit=old
    )
    main_snapshot = make_hub_cache(  # refs/main now names the newer commit
        isolated_env, DETECTOR_REPO, {"pytorch_model.bin": b"new"}, commit=new
    )
    pinned = dataclasses.replace(REGISTRY[DETECTOR], name="pinned", revision=old)
    assert resolve_checkpoint("pinned", registry={"pinned": pinned}) == (
        pinned_snapshot / "pytorch_model.bin"
    )
    assert resolve_checkpoint(DETECTOR) == main_snapshot / "pytorch_model.bin"


def test_a_hub_that_does_not_answer_is_tried_once_with_a_short_timeout(
    isolated_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A server that accepts connections and never answers: what a filtered network looks like
    # (a closed port answers at once; see test_offline_error.py).
    server = socket.create_server(("127.0.0.1", 0))
    accepted: list[socket.socket] = []
    done = threading.Event()

    def accept() -> None:
        server.settimeout(0.05)
        while not done.is_set():
            with contextlib.suppress(TimeoutError):
                accepted.append(server.accept()[0])

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{server.getsockname()[1]}")
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(resolve_module, "PROBE_TIMEOUT_S", 0.5)
    try:
        with pytest.raises(CheckpointNotFoundError) as info:
            resolve_checkpoint(DETECTOR)
    finally:
        done.set()
        thread.join(timeout=5)
        for connection in accepted:
            connection.close()
        server.close()
    assert "one try, 0.5 s timeout" in str(info.value)
    assert "Timeout" in str(info.value)
    assert len(accepted) == 1  # no retries


# -- digests: each file hashed once per load -------------------------------------------------


def test_located_checkpoint_carries_the_digest_of_every_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    directory = tmp_path / "lxmert-vqa"
    directory.mkdir()
    (directory / "config.json").write_bytes(CONFIG_BYTES)
    (directory / "pytorch_model.bin").write_bytes(WEIGHTS_BYTES)
    monkeypatch.setenv(ENV_VAR, str(tmp_path))
    hashed: list[Path] = []
    real_sha256_file = resolve_module.sha256_file

    def counting_sha256_file(path: str | os.PathLike[str]) -> str:
        hashed.append(Path(path))
        return real_sha256_file(path)

    monkeypatch.setattr(resolve_module, "sha256_file", counting_sha256_file)
    found = locate_checkpoint("lxmert-vqa")
    assert dict(found.digests) == {
        directory / "config.json": hashlib.sha256(CONFIG_BYTES).hexdigest(),
        directory / "pytorch_model.bin": hashlib.sha256(WEIGHTS_BYTES).hexdigest(),
    }
    assert sorted(hashed) == sorted(found.files.values())  # each file once
    # Asking again is free: the digest recorded while resolving is returned.
    assert (
        found.sha256(directory / "pytorch_model.bin") == hashlib.sha256(WEIGHTS_BYTES).hexdigest()
    )
    assert len(hashed) == 2


def test_sha256_of_a_detector_defaults_to_its_weights_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    directory = tmp_path / DETECTOR
    directory.mkdir()
    (directory / "pytorch_model.bin").write_bytes(WEIGHTS_BYTES)
    monkeypatch.setenv(ENV_VAR, str(tmp_path))
    found = locate_checkpoint(DETECTOR)
    assert found.sha256() == hashlib.sha256(WEIGHTS_BYTES).hexdigest()
    # Without verification nothing was hashed; sha256() then reads the file itself.
    unverified = locate_checkpoint(DETECTOR, verify_checksums=False)
    assert dict(unverified.digests) == {}
    assert unverified.sha256() == hashlib.sha256(WEIGHTS_BYTES).hexdigest()


def test_shipped_checkpoint_digests_match_the_registry() -> None:
    found = locate_checkpoint("shapes-detector")
    assert found.source == "shipped"
    assert set(found.digests) == set(found.files.values())
    assert found.sha256() == REGISTRY["shapes-detector"].sha256["model.safetensors"]


def test_a_cache_where_no_lock_can_be_written_warns_and_still_resolves(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    blocked = tmp_path / "not-a-directory"
    blocked.write_text("a file where the hub cache should be")
    monkeypatch.setenv("HF_HUB_CACHE", str(blocked))
    directory = tmp_path / "weights-dir" / DETECTOR
    directory.mkdir(parents=True)
    (directory / "pytorch_model.bin").write_bytes(WEIGHTS_BYTES)
    monkeypatch.setenv(ENV_VAR, str(directory.parent))
    with pytest.warns(UserWarning, match="could not record checksums.*files stay unpinned"):
        found = locate_checkpoint(DETECTOR)
    assert found.path == directory / "pytorch_model.bin"
    assert blocked.read_text() == "a file where the hub cache should be"
