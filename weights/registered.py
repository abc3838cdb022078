"""Names you register yourself for original LXMERT checkpoint files: a local ``.pth`` or a URL
with its sha256 (``python -m weights register``).

They live in a JSON file, :func:`registry_file` (``$XDG_CONFIG_HOME/lxmert-pipeline/
registry.json``, else ``~/.config/lxmert-pipeline/registry.json``), read when a name is
resolved (never at import), and become :class:`~weights.registry.CheckpointRecord`\\ s beside
the built-in ones: ``--encoder NAME``, ``lxmert-finetune ... --from NAME`` and ``encoder=NAME``
resolve them like any other name. The file is replaced atomically under a file lock
(``registry.json.lock``), so two registrations at once keep both.

Each entry records the file's sha256: given with a URL (the download is checked against it),
computed from a local file when it is registered (a changed file is then refused until it is
registered again). And its kind (:data:`~weights.registry.ORIGINAL_KINDS`): given, or read from
the file's key names and shapes (:func:`original_kind`).
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast
from urllib.parse import urlparse

from weights.files import atomic_write_text
from weights.registry import (
    ORIGINAL_KINDS,
    REGISTRY,
    CheckpointRecord,
    OriginalKind,
    UnknownCheckpointError,
)

REGISTRY_FILE_NAME = "registry.json"
#: Suffixes of ``torch.save`` files a name may be registered for.
TORCH_SUFFIXES = (".pth", ".pt", ".bin", ".ckpt")
#: Answer-head sizes of the released task checkpoints: VQA v2 and GQA.
_ANSWERS_OF_KIND: Mapping[int, OriginalKind] = {3129: "vqa", 1842: "gqa"}
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")
_SHA256 = re.compile(r"[0-9a-f]{64}")
_URL_SCHEMES = ("http", "https", "file")
#: Seconds to wait for another process that is updating the registry file.
_LOCK_WAIT_S = 60.0


@dataclass(frozen=True)
class Registration:
    """One registered name, as the registry file stores it.

    Attributes:
        name: the name (letters, digits, ``.``, ``_``, ``-``; not a built-in one).
        kind: what the file holds (:data:`~weights.registry.ORIGINAL_KINDS`).
        sha256: lowercase hex sha256 of the file.
        file: the file's name (a download is stored under it).
        path: absolute path of a local file, or None.
        url: where to download the file from (``http(s)://`` or ``file://``), or None.
    """

    name: str
    kind: OriginalKind
    sha256: str
    file: str
    path: str | None = None
    url: str | None = None

    def record(self) -> CheckpointRecord:
        """The :class:`CheckpointRecord` the resolver uses."""
        where = self.path if self.path is not None else self.url
        return CheckpointRecord(
            name=self.name,
            kind="encoder",
            preset=f"lxmert-original-{self.kind}",
            license="registered by you (python -m weights register); its terms are yours to know",
            description=f"original LXMERT checkpoint ({self.kind}) registered from {where}",
            hf_repo=None,
            files=(self.file,),
            sha256={self.file: self.sha256},
            urls={} if self.url is None else {self.file: self.url},
            original=self.kind,
            local_path=self.path,
        )

    def to_json(self) -> dict[str, str]:
        entry = {"kind": self.kind, "sha256": self.sha256, "file": self.file}
        return {**entry, **({"path": self.path} if self.path else {"url": self.url or ""})}


def registry_file() -> Path:
    """Where registered names are kept, from the environment as it is now."""
    base = os.environ.get("XDG_CONFIG_HOME") or os.path.join("~", ".config")
    return Path(base).expanduser() / "lxmert-pipeline" / REGISTRY_FILE_NAME


def registrations(path: str | os.PathLike[str] | None = None) -> dict[str, Registration]:
    """The registered names (none when the file does not exist).

    Raises:
        ValueError: the file is unreadable or an entry is malformed; the message names the
            file and says how to repair it.
    """
    file = Path(path) if path is not None else registry_file()
    if not file.is_file():
        return {}
    try:
        entries = json.loads(file.read_text(encoding="utf-8"))["checkpoints"]
        return {name: _entry(name, entry) for name, entry in entries.items()}
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError, AttributeError) as err:
        raise ValueError(
            f"{file}: not a readable registry of checkpoint names ({err}); repair it, or "
            "delete it and register the names again (python -m weights register)"
        ) from None


def all_records(path: str | os.PathLike[str] | None = None) -> Mapping[str, CheckpointRecord]:
    """The built-in records and the registered ones (see :func:`registrations`)."""
    mine = {name: entry.record() for name, entry in registrations(path).items()}
    return {**REGISTRY, **mine} if mine else REGISTRY


def register(
    name: str,
    source: str,
    *,
    sha256: str | None = None,
    kind: OriginalKind | None = None,
    path: str | os.PathLike[str] | None = None,
) -> Registration:
    """Check a registration and add it to the registry file (replacing one of that name).

    Args:
        name: the name to register; not a built-in one.
        source: a local ``.pth``/``.pt``/``.bin``/``.ckpt`` file, or an ``http(s)://`` or
            ``file://`` URL of one.
        sha256: the file's sha256; required with a URL, checked against a local file.
        kind: what the file holds; None: read from the local file. A URL needs it.
        path: the registry file (default :func:`registry_file`).

    Raises:
        ValueError: a bad name, source, sha256 or kind, or a file that is no original LXMERT
            checkpoint (a :class:`FileNotFoundError` for a local file that does not exist).
    """
    entry = check_registration(name, source, sha256=sha256, kind=kind)
    _update(Path(path) if path is not None else registry_file(), name, entry)
    return entry


def unregister(name: str, *, path: str | os.PathLike[str] | None = None) -> None:
    """Remove a registered name.

    Raises:
        UnknownCheckpointError (a KeyError): ``name`` is not registered (built-in names
            cannot be removed).
    """
    file = Path(path) if path is not None else registry_file()
    if name not in registrations(file):
        raise UnknownCheckpointError(f"{name!r} is not a name registered in {file}")
    _update(file, name, None)


def check_registration(
    name: str, source: str, *, sha256: str | None, kind: OriginalKind | None
) -> Registration:
    """The :class:`Registration` of ``source`` under ``name``, checked (see :func:`register`);
    nothing is written."""
    if not _NAME.fullmatch(name):
        raise ValueError(
            f"{name!r} is not a usable name: letters, digits, '.', '_' and '-', starting with "
            "a letter or digit"
        )
    if name in REGISTRY:
        raise ValueError(f"{name!r} is a built-in checkpoint name; choose another")
    if kind is not None and kind not in ORIGINAL_KINDS:
        raise ValueError(f"kind {kind!r}: use one of {', '.join(ORIGINAL_KINDS)}")
    digest = None if sha256 is None else sha256.strip().lower()
    if digest is not None and not _SHA256.fullmatch(digest):
        raise ValueError(f"sha256 {sha256!r}: give the 64 hex digits of the file's sha256")
    scheme = urlparse(source).scheme
    if scheme in _URL_SCHEMES:
        return _url_registration(name, source, digest, kind)
    if "://" in source:
        raise ValueError(f"{source}: use an http://, https:// or file:// URL, or a local path")
    return _local_registration(name, Path(source).expanduser(), digest, kind)


def original_kind(shapes: Mapping[str, tuple[int, ...]]) -> OriginalKind | None:
    """What an original LXMERT state dict holds, from its key names and shapes (with or
    without DataParallel's ``module.``): ``pretraining`` for ``bert.*`` keys; for a task's
    ``lxrt_encoder.model.*`` keys ``nlvr2`` when its head reads two pooled outputs
    (``logit_fc.0.weight`` is ``[2H, 2H]``), else ``vqa`` or ``gqa`` by the answer count
    (3129 or 1842). None: not an original checkpoint, or a QA head of another size."""
    keys = {key.replace("module.", "") for key in shapes}
    if any(key.startswith("bert.") for key in keys):
        return "pretraining"
    if not any(key.startswith("lxrt_encoder.model.bert.") for key in keys):
        return None
    first = shapes.get("logit_fc.0.weight")
    if first is not None and len(first) == 2 and first[0] == first[1]:
        return "nlvr2"
    answers = shapes.get("logit_fc.3.weight")
    return _ANSWERS_OF_KIND.get(answers[0]) if answers else None


# -- helpers ---------------------------------------------------------------------------------


def _local_registration(
    name: str, file: Path, digest: str | None, kind: OriginalKind | None
) -> Registration:
    from weights.resolve import sha256_file

    file = file.absolute()
    if not file.is_file():
        raise FileNotFoundError(f"{file}: no such file to register as {name!r}")
    _check_suffix(file.name)
    actual = sha256_file(file)
    if digest is not None and digest != actual:
        raise ValueError(f"{file}: sha256 {actual} does not match the given {digest}")
    found = _kind_of_file(file)
    if kind is not None and found is not None and kind != found:
        raise ValueError(f"{file} holds a {found} checkpoint, not {kind}; drop --kind")
    chosen = kind or found
    if chosen is None:
        raise ValueError(
            f"{file}: a task checkpoint whose answer head is neither VQA's (3129) nor GQA's "
            f"(1842); say which it is with --kind ({', '.join(ORIGINAL_KINDS)})"
        )
    return Registration(name, chosen, actual, file.name, path=str(file))


def _url_registration(
    name: str, url: str, digest: str | None, kind: OriginalKind | None
) -> Registration:
    if digest is None:
        raise ValueError(f"{url}: a URL is registered with its sha256 (--sha256 HEX)")
    if kind is None:
        raise ValueError(
            f"{url}: say what the file holds with --kind ({', '.join(ORIGINAL_KINDS)}); it is "
            "not downloaded before first use"
        )
    file = Path(urlparse(url).path).name
    _check_suffix(file)
    return Registration(name, kind, digest, file, url=url)


def _check_suffix(file: str) -> None:
    if not file.lower().endswith(TORCH_SUFFIXES):
        raise ValueError(
            f"{file}: an original LXMERT checkpoint is a torch.save file "
            f"({', '.join(TORCH_SUFFIXES)})"
        )


def _kind_of_file(file: Path) -> OriginalKind | None:
    """:func:`original_kind` of a file, read safely (``weights.io``)."""
    from weights.io import load_state_dict

    state = load_state_dict(file)
    shapes = {key: tuple(tensor.shape) for key, tensor in state.items()}
    kind = original_kind(shapes)
    if kind is None and not any("lxrt_encoder.model." in key for key in shapes):
        raise ValueError(
            f"{file}: not an original LXMERT checkpoint (no bert.* or lxrt_encoder.model.* "
            "keys); a save_pretrained folder is named by its path"
        )
    return kind


def _entry(name: str, entry: Mapping[str, Any]) -> Registration:
    kind, digest = entry["kind"], entry["sha256"]
    if kind not in ORIGINAL_KINDS or not _SHA256.fullmatch(str(digest)):
        raise ValueError(f"entry {name!r} has kind {kind!r} and sha256 {digest!r}")
    if ("path" in entry) == ("url" in entry):
        raise ValueError(f"entry {name!r} needs one of path and url")
    return Registration(
        name,
        cast(OriginalKind, kind),
        str(digest),
        str(entry["file"]),
        path=entry.get("path"),
        url=entry.get("url"),
    )


def _update(file: Path, name: str, entry: Registration | None) -> None:
    """Set (or, for None, remove) ``name`` in the registry file, under its lock."""
    from filelock import FileLock

    file.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(f"{file}.lock", timeout=_LOCK_WAIT_S):
        entries = {key: value.to_json() for key, value in registrations(file).items()}
        if entry is None:
            entries.pop(name, None)
        else:
            entries[name] = entry.to_json()
        payload = {
            "comment": "checkpoint names registered with python -m weights register",
            "checkpoints": dict(sorted(entries.items())),
        }
        atomic_write_text(file, json.dumps(payload, indent=2) + "\n")
