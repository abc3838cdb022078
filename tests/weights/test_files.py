"""weights.files: a file is replaced whole or not at all, durably, with ordinary permissions."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from weights import files
from weights.files import atomic_path, atomic_write_bytes, atomic_write_text, fsync_directory

needs_proc_fd = pytest.mark.skipif(
    not Path("/proc/self/fd").is_dir(), reason="names fsynced descriptors through /proc/self/fd"
)


class WriterFailed(RuntimeError):
    """Raised by a test's writer in the middle of writing."""


def _entries(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


def test_write_replaces_the_content_and_leaves_no_temporary_file(tmp_path: Path) -> None:
    target = tmp_path / "out.json"
    target.write_bytes(b"old content, longer than the new one")
    assert atomic_write_bytes(target, b"new") == target
    assert target.read_bytes() == b"new"
    assert atomic_write_text(target, "h\u00e9 \u2713\n") == target
    assert target.read_bytes() == "h\u00e9 \u2713\n".encode()
    assert _entries(tmp_path) == ["out.json"]


def test_atomic_path_gives_a_fresh_temporary_beside_the_target(tmp_path: Path) -> None:
    target = tmp_path / "model.safetensors"
    with atomic_path(target) as tmp:
        assert tmp.parent == tmp_path  # same folder: the rename cannot cross filesystems
        assert tmp.is_file() and tmp.read_bytes() == b""
        assert not target.exists()  # nothing visible before the block ends
        tmp.write_bytes(b"weights")
    assert target.read_bytes() == b"weights"
    assert _entries(tmp_path) == ["model.safetensors"]


def test_a_writer_that_raises_leaves_the_old_file_and_no_temporary(tmp_path: Path) -> None:
    target = tmp_path / "lock.json"
    target.write_bytes(b"the old file")
    with pytest.raises(WriterFailed), atomic_path(target) as tmp:
        tmp.write_bytes(b"half of the new")
        raise WriterFailed
    assert target.read_bytes() == b"the old file"
    assert _entries(tmp_path) == ["lock.json"]


def test_a_writer_that_raises_creates_nothing(tmp_path: Path) -> None:
    with pytest.raises(WriterFailed), atomic_path(tmp_path / "new.bin") as tmp:
        tmp.write_bytes(b"partial")
        raise WriterFailed
    assert _entries(tmp_path) == []


@pytest.mark.parametrize("umask", [0o022, 0o027, 0o002])
def test_permissions_follow_the_umask_like_a_plain_open(tmp_path: Path, umask: int) -> None:
    old = os.umask(umask)
    try:
        atomic_write_bytes(tmp_path / "atomic", b"x")
        (tmp_path / "plain").write_bytes(b"x")
    finally:
        os.umask(old)
    mode = stat.S_IMODE((tmp_path / "atomic").stat().st_mode)
    assert mode == 0o666 & ~umask  # not 0o600 as a mkstemp file would be
    assert mode == stat.S_IMODE((tmp_path / "plain").stat().st_mode)


@needs_proc_fd
def test_file_is_fsynced_before_the_rename_and_the_folder_after(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    events: list[tuple[str, str]] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd: int) -> None:
        events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        real_fsync(fd)

    def replace(src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> None:
        events.append(("replace", os.fspath(dst)))
        real_replace(src, dst)

    monkeypatch.setattr(files.os, "fsync", fsync)
    monkeypatch.setattr(files.os, "replace", replace)
    target = tmp_path / "out.bin"
    with atomic_path(target) as tmp:
        tmp.write_bytes(b"payload")
        temporary = str(tmp.resolve())
    assert events == [
        ("fsync", temporary),  # the content is on disk before it gets the name
        ("replace", str(target)),
        ("fsync", str(tmp_path.resolve())),  # and the new name is on disk before we return
    ]


@needs_proc_fd
def test_a_failed_writer_is_neither_fsynced_nor_renamed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[str] = []
    monkeypatch.setattr(files.os, "fsync", lambda fd: calls.append("fsync"))
    monkeypatch.setattr(files.os, "replace", lambda src, dst: calls.append("replace"))
    with pytest.raises(WriterFailed), atomic_path(tmp_path / "x") as tmp:
        tmp.write_bytes(b"partial")
        raise WriterFailed
    assert calls == []


def test_fsync_directory_ignores_a_folder_it_cannot_open(tmp_path: Path) -> None:
    fsync_directory(tmp_path / "does-not-exist")  # no error: durability is best effort
    fsync_directory(tmp_path)


def test_a_writer_that_recreates_the_file_privately_still_gets_the_umask_mode(tmp_path) -> None:
    # safetensors' save_file does this; the replaced file must not end up 0600.
    target = tmp_path / "model.bin"
    old = os.umask(0o022)
    try:
        with atomic_path(target) as tmp:
            tmp.unlink()
            os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    finally:
        os.umask(old)
    assert target.stat().st_mode & 0o777 == 0o644


def test_the_temporary_name_is_made_and_recognised_in_one_place() -> None:
    from weights.files import is_temporary_name, longest_temporary_name, temporary_name

    made = temporary_name("out.h5")
    assert made.startswith(".out.h5.") and made.endswith(".tmp")
    assert is_temporary_name(made, "out.h5")
    assert len(longest_temporary_name("out.h5")) >= len(made)
    assert is_temporary_name(longest_temporary_name("out.h5"), "out.h5")
    # Only exactly that shape, of exactly that file, is a writer's leftover.
    for other in (".out.h5.12.zzzzzzzz.tmp", ".out.h5.x.0123abcd.tmp", ".other.h5.12.0123abcd.tmp"):
        assert not is_temporary_name(other, "out.h5")
    assert not is_temporary_name(made, "out.h")
