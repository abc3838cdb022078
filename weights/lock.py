"""One writer per output: an exclusive OS lock on a lock file beside the output.

``out.tsv`` is guarded by ``out.tsv.lock`` (same folder). :func:`output_lock` takes an exclusive,
non-blocking ``fcntl.flock`` on that file for the whole run and writes the holder's PID, host,
start time and output into it as JSON, so that a second run on the same output fails at once
with :class:`OutputLockedError` naming the holder, instead of waiting or mixing records.

Why ``flock``: the kernel releases the lock when the holder's last file descriptor closes, which
includes the process being killed (``SIGKILL``, OOM killer), so a dead run never leaves a stale
lock. The JSON in the file may then describe a dead holder; it is only read to name the holder
when the lock is taken, so it is harmless. Locks need a filesystem with working ``flock``: local
filesystems have it, and so do most NFS and Lustre mounts; check a folder with
``flock OUT.lock true`` (util-linux), which exits 0 where it works.

Every error raised here derives from :class:`OutputLockError`; a command reports any of them
as a usage error (nothing was done). Standard library only, Unix only (``fcntl``). In the base
layer beside :mod:`weights.ownership`: "is this output ours" and "one writer at a time" are
the two halves of the output-ownership rule that every command follows.
"""

from __future__ import annotations

import contextlib
import datetime
import errno
import fcntl
import json
import os
import socket
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from weights.command import UsageError

#: ``flock`` errnos that mean "this filesystem cannot lock" rather than "someone holds it".
#: (ENOTSUP equals EOPNOTSUPP on Linux, not everywhere.)
_UNSUPPORTED_ERRNOS = frozenset({errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOTSUP, errno.ENOSYS})

#: At most this many bytes of a lock file are read to name its holder (the JSON is ~200 bytes).
_MAX_HOLDER_BYTES = 64 * 1024
#: How every holder record this tool writes begins (``json.dumps`` of a dict keyed pid first).
_HOLDER_PREFIX = b'{"pid": '


@dataclass(frozen=True)
class LockInfo:
    """Who holds (or last held) an output's lock, as written in its lock file.

    Attributes:
        pid: the holder's process id (on ``host``).
        host: ``socket.gethostname()`` of the holder's machine.
        started: when the holder took the lock, ISO 8601 in UTC (``2024-05-01T12:00:00+00:00``).
        path: the lock file.
    """

    pid: int
    host: str
    started: str
    path: Path


class OutputLockError(Exception):
    """Base of every error of this module: the output could not be locked, nothing was done."""


class OutputLockedError(OutputLockError):
    """Another process holds the output's lock (raised at once, never waited for).

    Attributes:
        output: the output that was to be written.
        lock: its lock file.
        holder: the holder as its lock file says, or ``None`` when the file is empty or
            half-written (the holder is between taking the lock and writing its name).
    """

    def __init__(self, output: Path, lock: Path, holder: LockInfo | None) -> None:
        self.output = output
        self.lock = lock
        self.holder = holder
        super().__init__(_locked_message(output=output, lock=lock, holder=holder))


class LockUnsupportedError(OutputLockError):
    """The output's filesystem does not support ``flock`` (ENOLCK, EOPNOTSUPP or ENOSYS).

    Attributes:
        folder: the output's folder.
        errno: the error number ``flock`` gave.
    """

    def __init__(self, folder: Path, error_number: int) -> None:
        self.folder = folder
        self.errno = error_number
        super().__init__(
            f"cannot lock outputs in {folder}: its filesystem does not support flock "
            f"({os.strerror(error_number)}). Outputs need a filesystem with working flock "
            "(local disks, and most NFS and Lustre mounts, have it; check a folder with "
            f"`flock {folder / 'test.lock'} true` from util-linux, which exits 0 where it works). "
            "Write the output to such a folder."
        )


class LockFileError(OutputLockError):
    """The lock file beside the output cannot be created or opened, or is not a regular file
    (missing or read-only folder, no permission, a directory or link with the lock's name).

    Attributes:
        output: the output that was to be written.
        lock: its lock file.
        errno: the error number, when an ``OSError`` caused it (else ``None``).
    """

    def __init__(self, output: Path, lock: Path, reason: str, error_number: int | None) -> None:
        self.output = output
        self.lock = lock
        self.errno = error_number
        super().__init__(f"cannot lock {output}: the lock file {lock} {reason}")


def lock_path(output: str | os.PathLike[str]) -> Path:
    """``out.tsv`` -> ``out.tsv.lock``, in the output's folder. An output reached through a
    symbolic link is locked where the link leads, so two names of one file share one lock."""
    output = Path(output)
    if output.is_symlink():
        output = Path(os.path.realpath(output))
    return output.with_name(output.name + ".lock")


@contextlib.contextmanager
def output_lock(output: str | os.PathLike[str]) -> Iterator[LockInfo]:
    """Hold the exclusive lock of ``output`` for the block; yield this process's :class:`LockInfo`.

    Creates ``lock_path(output)`` if needed (the output itself is not touched), takes
    ``flock(LOCK_EX | LOCK_NB)`` on it and writes this process's holder JSON into it
    (``{"pid", "host", "started", "output"}``, fsynced). The lock file is removed when the
    block ends, after a clean run or a failed one, so none stays beside an output (a killed
    run leaves it; the next run takes it over). Not re-entrant: a second
    ``output_lock`` on the same output, even in the same process, raises
    :class:`OutputLockedError`. Locks on different outputs are independent.

    The descriptor is close-on-exec, so programs this process starts do not hold the lock; a
    child made by a bare ``fork`` does share it until that child exits.

    Raises:
        OutputLockedError: another process holds it (at once, no waiting).
        LockUnsupportedError: the filesystem has no working ``flock``.
        LockFileError: the lock file cannot be created or opened (missing or read-only folder,
            no permission), or it is a directory, a link or another non-regular file.
        OSError: writing the holder's JSON failed (for example ENOSPC); the lock is released.
    """
    output = Path(output)
    lock = lock_path(output)
    fd = _locked_fd(output=output, lock=lock)
    owner_pid = os.getpid()
    try:
        info = _write_holder(fd=fd, output=output, lock=lock)
    except BaseException:
        os.close(fd)  # closing the only descriptor also drops the lock
        raise
    try:
        yield info
    finally:
        if os.getpid() == owner_pid:
            # A forked child leaving the block must not unlock (or remove) the parent's lock:
            # flock locks belong to the open file, shared across fork. It only closes its
            # descriptor. The owner removes the file while it still holds the lock, so no
            # lock file stays beside an output; a process that opened it before the unlink
            # finds, once it has the lock, that the path no longer names its file, and opens
            # the path again (_locked_fd).
            _remove_if_same(fd=fd, lock=lock)
            fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def _locked_fd(*, output: Path, lock: Path) -> int:
    """A descriptor of ``lock`` holding its exclusive ``flock``, where ``lock`` still names
    the file that was locked: a holder removes its lock file before it unlocks, so a file
    locked after that removal is no longer the output's lock, and the path is opened again."""
    while True:
        fd = _open_lock_file(output=output, lock=lock)
        try:
            _acquire(fd=fd, output=output, lock=lock)
            if _same_file(fd=fd, lock=lock):
                return fd
        except BaseException:
            os.close(fd)
            raise
        os.close(fd)  # the holder we waited for removed it: lock what the path names now


def _same_file(*, fd: int, lock: Path) -> bool:
    """Whether the path ``lock`` names the open file ``fd`` (same device and inode)."""
    try:
        named = os.stat(lock, follow_symlinks=False)
    except FileNotFoundError:
        return False
    opened = os.fstat(fd)
    return (named.st_dev, named.st_ino) == (opened.st_dev, opened.st_ino)


def _remove_if_same(*, fd: int, lock: Path) -> None:
    """Unlink ``lock`` if it still names ``fd``'s file (the lock is held: nobody else can
    be between taking it and checking the path). A failure to unlink leaves the file, which
    the next run takes over as before."""
    if _same_file(fd=fd, lock=lock):
        with contextlib.suppress(OSError):
            os.unlink(lock)


def read_holder(lock: str | os.PathLike[str]) -> LockInfo | None:
    """The holder written in lock file ``lock``, or ``None`` when it is missing, empty,
    half-written or not this module's JSON. Takes no lock; for messages only."""
    lock = Path(lock)
    try:
        with open(lock, "rb") as stream:
            data = stream.read(_MAX_HOLDER_BYTES)
    except OSError:
        return None
    return _parse_holder(data=data, lock=lock)


def _open_lock_file(*, output: Path, lock: Path) -> int:
    """Open (creating if needed) ``lock`` for reading and writing; a regular file only."""
    # O_NOFOLLOW: a link named like the lock file must not make us truncate its target.
    flags = os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW
    try:
        fd = os.open(lock, flags, 0o666)
    except OSError as error:
        raise LockFileError(
            output=output, lock=lock, reason=_open_reason(error, lock), error_number=error.errno
        ) from error
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise LockFileError(
            output=output,
            lock=lock,
            reason="exists and is not a regular file; remove or rename it",
            error_number=None,
        )
    return fd


def _open_reason(error: OSError, lock: Path) -> str:
    """Why opening the lock file failed, in words, with the remedy."""
    folder = lock.parent
    if error.errno == errno.ENOENT:
        return f"cannot be created: the folder {folder} does not exist; create it first"
    if error.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return (
            f"cannot be created or opened: the folder {folder} is read-only or not writable "
            f"by this user ({error.strerror}); choose a writable folder"
        )
    if error.errno == errno.ELOOP:
        return "is a symbolic link; remove it (it is not this tool's lock file)"
    if error.errno == errno.EISDIR:
        return "is a directory; remove or rename it"
    if error.errno == errno.ENOTDIR:
        return f"cannot be created: {folder} is not a folder"
    return f"cannot be opened: {error.strerror}"


def _acquire(*, fd: int, output: Path, lock: Path) -> None:
    """``flock(LOCK_EX | LOCK_NB)`` on ``fd``, mapping failures to this module's errors."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError as error:  # EWOULDBLOCK: someone holds it
        holder = _parse_holder(data=_read_fd(fd), lock=lock)
        raise OutputLockedError(output=output, lock=lock, holder=holder) from error
    except OSError as error:
        if error.errno in _UNSUPPORTED_ERRNOS:
            raise LockUnsupportedError(folder=lock.parent, error_number=error.errno) from error
        raise


def _write_holder(*, fd: int, output: Path, lock: Path) -> LockInfo:
    """Replace the lock file's content with this process's holder JSON, durably.

    Written in place, not with ``weights.files``' atomic replace: the lock belongs to this
    file (inode); renaming a new file over it would leave the lock on an unlinked file.
    """
    info = LockInfo(
        pid=os.getpid(),
        host=socket.gethostname(),
        started=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        path=lock,
    )
    record = {
        "pid": info.pid,
        "host": info.host,
        "started": info.started,
        "output": os.path.abspath(output),
    }
    data = (json.dumps(record) + "\n").encode("utf-8")
    existing = _read_fd(fd)
    # A file of someone else's that happens to have the lock's name is never emptied. Ours
    # start with the same key, even half written by a holder that was killed.
    if existing and not existing.startswith(_HOLDER_PREFIX):
        raise LockFileError(
            output, lock, "exists and was not written by this tool; move it away", None
        )
    os.ftruncate(fd, 0)
    written = 0
    while written < len(data):
        written += os.pwrite(fd, data[written:], written)
    os.fsync(fd)
    return info


def _read_fd(fd: int) -> bytes:
    """The first bytes of the open lock file (the holder's JSON)."""
    try:
        return os.pread(fd, _MAX_HOLDER_BYTES, 0)
    except OSError:
        return b""


def _parse_holder(*, data: bytes, lock: Path) -> LockInfo | None:
    """A :class:`LockInfo` from lock file bytes, or ``None`` if they are not a whole record."""
    try:
        record = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        return None
    if not isinstance(record, dict):
        return None
    pid, host, started = record.get("pid"), record.get("host"), record.get("started")
    if not (isinstance(pid, int) and isinstance(host, str) and isinstance(started, str)):
        return None
    return LockInfo(pid=pid, host=host, started=started, path=lock)


def _locked_message(*, output: Path, lock: Path, holder: LockInfo | None) -> str:
    """The message of :class:`OutputLockedError`: who holds it and what to do."""
    released = (
        "The lock is released by the system as soon as the holding process ends, even if it "
        "is killed, so there is no lock file to delete: run again once it has ended."
    )
    if holder is None:
        return (
            f"{output} is being written by another run (holder unknown: {lock} holds no "
            f"complete holder record yet). Wait for that run to finish. {released}"
        )
    who = f"process {holder.pid} on host {holder.host}, started {holder.started}"
    if holder.host == socket.gethostname():
        check = f"check it with `ps -p {holder.pid}`"
    else:
        check = f"if {holder.host} is not this machine, check there with `ps -p {holder.pid}`"
    return (
        f"{output} is being written by another run: {who}, holds {lock}. "
        f"Wait for that run to finish ({check}). {released}"
    )


def hold_output_lock(
    stack: contextlib.ExitStack[bool | None], output: str | os.PathLike[str]
) -> LockInfo:
    """Take ``output``'s lock for the rest of ``stack``; a refusal (another run holds it, no
    working flock, no folder to put the lock in) is a usage error (exit 2) naming the output."""
    try:
        return stack.enter_context(output_lock(output))
    except OutputLockError as error:
        raise UsageError(str(error)) from error
