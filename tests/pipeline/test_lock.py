"""The output lock (:mod:`weights.lock`): real processes hold and contend for it."""

from __future__ import annotations

import datetime
import errno
import fcntl
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import weights.lock
from weights.lock import (
    LockFileError,
    LockInfo,
    LockUnsupportedError,
    OutputLockedError,
    OutputLockError,
    lock_path,
    output_lock,
    read_holder,
)

REPO = Path(__file__).resolve().parents[2]

#: Takes the lock of argv[1], then creates argv[2] (readiness) and waits until killed.
HOLDER_SCRIPT = """
import signal, sys
from pathlib import Path
from weights.lock import output_lock
with output_lock(Path(sys.argv[1])) as info:
    Path(sys.argv[2]).write_text(str(info.pid))
    while True:
        signal.pause()
"""

#: Tries the lock of argv[1] once; prints the error's holder pid and message, or "taken".
CONTENDER_SCRIPT = """
import sys
from pathlib import Path
from weights.lock import OutputLockedError, output_lock
try:
    with output_lock(Path(sys.argv[1])):
        print("taken")
except OutputLockedError as error:
    assert error.holder is not None
    print(error.holder.pid)
    print(error)
"""


def _python(script: str, *args: Path) -> list[str]:
    return [sys.executable, "-c", script, *map(str, args)]


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO)}


@pytest.fixture
def holder(tmp_path: Path) -> Iterator[subprocess.Popen[bytes]]:
    """Another process holding the lock of ``tmp_path / "out.tsv"`` (killed afterwards)."""
    ready = tmp_path / "ready"
    proc = subprocess.Popen(_python(HOLDER_SCRIPT, tmp_path / "out.tsv", ready), env=_env())
    try:
        deadline = time.monotonic() + 300.0
        while not ready.exists():
            assert proc.poll() is None, "the holder process died before taking the lock"
            assert time.monotonic() < deadline, "the holder process did not take the lock"
            time.sleep(0.01)
        yield proc
    finally:
        proc.kill()
        proc.wait()


def test_lock_path_is_beside_the_output(tmp_path: Path) -> None:
    assert lock_path(tmp_path / "sub" / "out.tsv") == tmp_path / "sub" / "out.tsv.lock"
    assert lock_path("cw.h5") == Path("cw.h5.lock")


def test_second_process_fails_at_once_naming_the_holder(
    tmp_path: Path, holder: subprocess.Popen[bytes]
) -> None:
    out = tmp_path / "out.tsv"
    start = time.monotonic()
    with pytest.raises(OutputLockedError) as caught, output_lock(out):
        pytest.fail("the lock was taken while another process holds it")
    assert time.monotonic() - start < 1.0  # no waiting
    message = str(caught.value)
    assert str(out) in message
    assert f"process {holder.pid} on host {socket.gethostname()}" in message
    assert "Wait for that run" in message
    assert caught.value.holder is not None
    assert caught.value.holder.pid == holder.pid
    assert caught.value.output == out
    assert caught.value.lock == lock_path(out)
    assert isinstance(caught.value, OutputLockError)
    # The file holds the holder's JSON; the refused attempt changed nothing and made no output.
    record = json.loads(lock_path(out).read_text())
    assert record["pid"] == holder.pid
    assert record["output"] == str(out)
    assert not out.exists()


def test_killed_holder_leaves_no_stale_lock(
    tmp_path: Path, holder: subprocess.Popen[bytes]
) -> None:
    out = tmp_path / "out.tsv"
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    # Its (now stale) record is still in the file, but the kernel released the lock.
    stale = read_holder(lock_path(out))
    assert stale is not None and stale.pid == holder.pid
    start = time.monotonic()
    with output_lock(out) as info:
        assert time.monotonic() - start < 1.0
        assert info.pid == os.getpid()
        assert json.loads(lock_path(out).read_text())["pid"] == os.getpid()


def test_other_process_is_refused_while_this_one_holds_it(tmp_path: Path) -> None:
    out = tmp_path / "out.h5"
    with output_lock(out):
        result = subprocess.run(
            _python(CONTENDER_SCRIPT, out), env=_env(), capture_output=True, text=True, check=True
        )
        pid, message = result.stdout.split("\n", 1)
        assert int(pid) == os.getpid()
        assert str(out) in message
    # Released at the end of the block: the other process now gets it.
    result = subprocess.run(
        _python(CONTENDER_SCRIPT, out), env=_env(), capture_output=True, text=True, check=True
    )
    assert result.stdout == "taken\n"


def test_locks_on_two_outputs_in_one_process(tmp_path: Path) -> None:
    a, b = tmp_path / "a.tsv", tmp_path / "b.h5"
    with output_lock(a) as info_a, output_lock(b) as info_b:
        assert info_a.path == lock_path(a)
        assert info_b.path == lock_path(b)
        assert read_holder(lock_path(a)) == info_a
        assert read_holder(lock_path(b)) == info_b


def test_not_reentrant_on_one_output(tmp_path: Path) -> None:
    out = tmp_path / "out.tsv"
    with output_lock(out), pytest.raises(OutputLockedError), output_lock(out):
        pytest.fail("the same output was locked twice")


def test_lock_file_holds_the_current_holder_json(tmp_path: Path) -> None:
    out = tmp_path / "out.tsv"
    # A longer record of an earlier (dead) holder is replaced, not partly overwritten.
    lock_path(out).write_text(json.dumps({"pid": 1, "host": "x" * 500, "started": "long ago"}))
    before = datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0)
    with output_lock(out) as info:
        record = json.loads(lock_path(out).read_text())
        assert record == {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "started": info.started,
            "output": str(out),
        }
        started = datetime.datetime.fromisoformat(info.started)
        assert started.tzinfo is not None
        assert before <= started <= datetime.datetime.now(datetime.timezone.utc)
        assert info == LockInfo(
            pid=os.getpid(), host=socket.gethostname(), started=info.started, path=lock_path(out)
        )


def test_released_on_error_and_the_lock_file_is_removed(tmp_path: Path) -> None:
    out = tmp_path / "out.tsv"
    with pytest.raises(RuntimeError, match="boom"), output_lock(out):
        assert lock_path(out).is_file()
        raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []  # nothing left beside a run that made nothing
    with output_lock(out) as info:
        assert info.pid == os.getpid()
    assert not lock_path(out).exists()


def test_a_locker_whose_file_was_removed_meanwhile_locks_the_path_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The race that removing lock files opens: B opens the lock file while A holds it, A
    removes it and unlocks, C creates a new one and locks it. B's flock then succeeds on the
    removed file; B must see that the path names another file and lock that one, so that B
    and C never both hold the output."""
    out = tmp_path / "out.tsv"
    lock = lock_path(out)
    with output_lock(out):  # A
        stale = os.open(lock, os.O_RDWR)  # B opens it before A's release
    opened = [stale]
    real_open = weights.lock._open_lock_file

    def open_as_b(*, output: Path, lock: Path) -> int:
        return opened.pop() if opened else real_open(output=output, lock=lock)

    with output_lock(out) as c_info:  # C: a new file at the path
        monkeypatch.setattr(weights.lock, "_open_lock_file", open_as_b)
        with pytest.raises(OutputLockedError) as caught, output_lock(out):  # B
            pass
        assert caught.value.holder == c_info
        assert not opened  # B did lock its stale file first, then looked again
    assert not lock.exists()


@pytest.mark.parametrize("content", [b"", b'{"pid": 12', b"not json", b'["pid", 1]'])
def test_holder_unknown_when_the_record_is_empty_or_half_written(
    tmp_path: Path, content: bytes
) -> None:
    out = tmp_path / "out.tsv"
    lock = lock_path(out)
    lock.write_bytes(content)
    # A holder that has taken the lock but not yet written its record (another open file
    # description conflicts with flock even inside one process).
    fd = os.open(lock, os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        with pytest.raises(OutputLockedError, match="holder unknown") as caught, output_lock(out):
            pytest.fail("the lock was taken twice")
        assert caught.value.holder is None
        assert str(out) in str(caught.value)
        assert lock.read_bytes() == content
    finally:
        os.close(fd)


@pytest.mark.parametrize("code", [errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS])
def test_filesystem_without_flock(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, code: int
) -> None:
    def no_flock(fd: int, operation: int) -> None:
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(fcntl, "flock", no_flock)
    with pytest.raises(LockUnsupportedError) as caught, output_lock(tmp_path / "out.tsv"):
        pytest.fail("locked without flock")
    assert caught.value.folder == tmp_path
    assert caught.value.errno == code
    message = str(caught.value)
    assert str(tmp_path) in message
    assert "flock" in message and "util-linux" in message
    assert isinstance(caught.value, OutputLockError)


def test_missing_folder(tmp_path: Path) -> None:
    out = tmp_path / "missing" / "out.tsv"
    with pytest.raises(LockFileError) as caught, output_lock(out):
        pytest.fail("locked in a missing folder")
    assert caught.value.errno == errno.ENOENT
    assert caught.value.output == out
    assert f"the folder {out.parent} does not exist" in str(caught.value)
    assert not out.parent.exists()


def test_folder_that_is_a_file(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    with (
        pytest.raises(LockFileError, match="is not a folder"),
        output_lock(tmp_path / "file" / "out.tsv"),
    ):
        pytest.fail("locked under a file")


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_read_only_folder(tmp_path: Path) -> None:
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o500)
    try:
        with (
            pytest.raises(LockFileError, match="read-only or not writable"),
            output_lock(folder / "out.tsv"),
        ):
            pytest.fail("locked in a read-only folder")
    finally:
        folder.chmod(0o700)
    assert list(folder.iterdir()) == []


def test_a_link_or_folder_named_like_the_lock_is_refused_untouched(tmp_path: Path) -> None:
    target = tmp_path / "notes.txt"
    target.write_text("my notes")
    lock_path(tmp_path / "a.tsv").symlink_to(target)
    with pytest.raises(LockFileError, match="symbolic link"), output_lock(tmp_path / "a.tsv"):
        pytest.fail("locked through a link")
    assert target.read_text() == "my notes"
    lock_path(tmp_path / "b.tsv").mkdir()
    with pytest.raises(LockFileError, match="directory"), output_lock(tmp_path / "b.tsv"):
        pytest.fail("locked a directory")


def test_a_foreign_file_with_the_lock_name_is_never_emptied(tmp_path: Path) -> None:
    output = tmp_path / "x.tsv"
    foreign = lock_path(output)
    foreign.write_bytes(b"\x89PNG\r\n\x1a\nsomeone's picture")
    with pytest.raises(LockFileError, match="not written by this tool"), output_lock(output):
        pass
    assert foreign.read_bytes() == b"\x89PNG\r\n\x1a\nsomeone's picture"
    half = tmp_path / "y.tsv"
    lock_path(half).write_bytes(b'{"pid": 12')  # a holder killed while writing its record
    with output_lock(half) as info:
        assert info.pid == os.getpid()


def test_two_names_of_one_output_share_one_lock(tmp_path: Path) -> None:
    real = tmp_path / "out.tsv"
    real.write_bytes(b"")
    alias = tmp_path / "alias.tsv"
    alias.symlink_to(real)
    assert lock_path(alias) == lock_path(real)
    with output_lock(real), pytest.raises(OutputLockedError), output_lock(alias):
        pass
