"""Turn a checkpoint name (or path) into local files, and check that they are the right files.

Resolution order for ``resolve_checkpoint(x)``:

1. ``x`` is an explicit path (a ``PathLike``, or a string that is not a registry name, or one
   containing a path separator) to an existing file or directory: returned as it is.
2. ``x`` is a registry name (see ``python -m weights list``):
   a. models shipped inside the package: ``weights/shipped/<record.shipped_dir>/``;
   b. ``$LXMERT_PIPELINE_WEIGHTS/<name>/<file>``: a directory you fill by hand, e.g. on a
      machine without internet (detectors also accept the alternative files of ``urls``,
      e.g. ``$LXMERT_PIPELINE_WEIGHTS/vg-r101-c4-attr/faster_rcnn_from_caffe_attr.pkl``);
   c. the Hugging Face hub cache: ``$HF_HUB_CACHE``, else ``$HF_HOME/hub``, else
      ``~/.cache/huggingface/hub`` (read when called, not when imported);
   d. a download with ``huggingface_hub.hf_hub_download`` into that cache, unless
      ``download=False`` or ``HF_HUB_OFFLINE`` is set, at the record's ``revision`` (its
      default branch while the revision is ``"unknown"``). One HEAD request first, with a
      :data:`PROBE_TIMEOUT_S` timeout and no retries, so that a machine without network is
      told at once rather than after huggingface_hub's back-off.
   e. names registered for a local file (``python -m weights register``): that file;
   f. names registered for a URL with its sha256: ``<hub cache>/lxmert-pipeline-downloads/
      <sha256>/<file>``, downloaded there when missing (not with ``download=False`` or
      ``HF_HUB_OFFLINE``) and kept only when the digest matches (:mod:`weights.download`).
   Nothing found: :class:`CheckpointNotFoundError` naming every place looked, what to do, and
   how to try the shapes-world models shipped with the package.

Detectors and original LXMERT ``.pth`` files resolve to the *file*, other encoders to the
*directory* holding ``config.json`` and the weights (a hub snapshot directory). Registry names
are the built-in ones and those registered in :func:`weights.registered.registry_file`.

Checksums: every file of a registry checkpoint is hashed. Files whose sha256 the registry
knows must match it. The others are pinned the first time they are seen, in
``<hub cache>/lxmert-pipeline-checksums.json``, and must match that pin afterwards. That file
is replaced atomically and updated under a file lock (``<lock file>.lock``), so processes
pinning at the same time keep all their pins. Shipped models without a registry sha256 are not
pinned: they travel with the code. Each file is hashed once per resolution; the digests travel
in :attr:`ResolvedCheckpoint.digests` for callers that record them.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from weights.defaults import user_cache_root
from weights.download import DownloadMismatchError, download_path, download_verified
from weights.pins import ChecksumError, compare_and_pin
from weights.registered import all_records
from weights.registry import CheckpointRecord, get_record

ENV_VAR = "LXMERT_PIPELINE_WEIGHTS"
LOCK_FILE_NAME = "lxmert-pipeline-checksums.json"
_TRUE = frozenset({"1", "ON", "YES", "TRUE"})
#: Seconds the hub gets to answer one HEAD request before a download is given up. A machine
#: without network then hears "not found" at once instead of after huggingface_hub's retries
#: (~31 s); a slow but working connection still answers a HEAD well within it.
PROBE_TIMEOUT_S = 5.0

Source = Literal["path", "shipped", "env", "hf-cache", "download", "registered", "cache"]


class CheckpointNotFoundError(FileNotFoundError):
    """A checkpoint is not on this machine (and could not be downloaded).

    The message names the checkpoint, every place looked, the command that fetches it on a
    machine with internet, and the flag that points at a local copy instead.
    """

    def __str__(self) -> str:  # FileNotFoundError would print "[Errno None] None: ..."
        return str(self.args[0]) if self.args else ""


@dataclass(frozen=True)
class ResolvedCheckpoint:
    """Where a checkpoint was found.

    Attributes:
        path: what :func:`resolve_checkpoint` returns (weights file for detectors, directory
            for encoders, the given path for explicit paths).
        files: file name -> local path of every file of the checkpoint (empty for paths).
        source: which step found it: ``path``, ``shipped``, ``env``, ``hf-cache``, ``download``,
            ``registered`` (a registered local file), ``cache`` (a URL's earlier download).
        record: the registry record, None for explicit paths.
        digests: local path -> sha256 of every file hashed while resolving (so a caller never
            reads a multi-GB checkpoint twice; see :meth:`sha256`).
    """

    path: Path
    files: Mapping[str, Path]
    source: Source
    record: CheckpointRecord | None
    digests: Mapping[Path, str] = field(default_factory=dict)

    def sha256(self, path: str | os.PathLike[str] | None = None) -> str:
        """sha256 of ``path`` (default :attr:`path`, a file): the digest computed while
        resolving when there is one, else hashed now."""
        target = Path(self.path if path is None else path)
        known = self.digests.get(target)
        return known if known is not None else sha256_file(target)


def hub_cache_dir() -> Path:
    """The Hugging Face hub cache directory, from the environment as it is now.

    ``$HF_HUB_CACHE``, else ``$HUGGINGFACE_HUB_CACHE``, else ``$HF_HOME/hub``, else
    ``$XDG_CACHE_HOME/huggingface/hub``, else ``~/.cache/huggingface/hub`` (the same rules as
    huggingface_hub, which reads them once at import).
    """
    for var in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
        if os.environ.get(var):
            return _expand(os.environ[var])
    if os.environ.get("HF_HOME"):
        return _expand(os.environ["HF_HOME"]) / "hub"
    return user_cache_root() / "huggingface" / "hub"


def hub_offline() -> bool:
    """True when ``HF_HUB_OFFLINE`` (or ``TRANSFORMERS_OFFLINE``) is set to 1/true/yes/on."""
    value = os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE") or ""
    return value.strip().upper() in _TRUE


def default_shipped_root() -> Path:
    """``weights/shipped/``: the directory of models that ship inside the package."""
    return Path(__file__).resolve().parent / "shipped"


def lock_file_path() -> Path:
    """The checksum lock file: ``<hub cache>/lxmert-pipeline-checksums.json``."""
    return hub_cache_dir() / LOCK_FILE_NAME


def sha256_file(path: str | os.PathLike[str]) -> str:
    """Lowercase hex sha256 of a file's bytes, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def resolve_checkpoint(
    name_or_path: str | os.PathLike[str],
    *,
    download: bool = True,
    verify_checksums: bool = True,
    registry: Mapping[str, CheckpointRecord] | None = None,
    shipped_root: str | os.PathLike[str] | None = None,
) -> Path:
    """Local path of a checkpoint; see the module docstring for the order and the checks.

    Args:
        name_or_path: registry name (``"vg-r101-c4-attr"``, ``"lxmert-vqa"``...) or a path.
        download: allow step (d), a download from the Hugging Face hub.
        verify_checksums: hash the files and compare with the registry or the lock file.
        registry: records to use instead of :data:`weights.registry.REGISTRY`.
        shipped_root: directory holding shipped models instead of ``weights/shipped/``.

    Returns:
        Detectors: the weights file. Encoders: the directory with ``config.json`` + weights.
        Explicit paths: the path itself.

    Raises:
        CheckpointNotFoundError: not found anywhere (the message says where it looked and how
            to get the checkpoint), or a path that does not exist and is no registry name.
        ChecksumError: a file's sha256 differs from the registry's or the pinned one.
    """
    return locate_checkpoint(
        name_or_path,
        download=download,
        verify_checksums=verify_checksums,
        registry=registry,
        shipped_root=shipped_root,
    ).path


def locate_checkpoint(
    name_or_path: str | os.PathLike[str],
    *,
    download: bool = True,
    verify_checksums: bool = True,
    registry: Mapping[str, CheckpointRecord] | None = None,
    shipped_root: str | os.PathLike[str] | None = None,
) -> ResolvedCheckpoint:
    """Like :func:`resolve_checkpoint`, but also says which files were found and where."""
    table = all_records() if registry is None else registry
    path = explicit_path(name_or_path, registry=table)
    if path is not None:
        if path.exists():
            return ResolvedCheckpoint(path=path, files={}, source="path", record=None)
        raise CheckpointNotFoundError(
            f"{str(name_or_path)!r} is neither an existing file or directory nor a registered "
            f"checkpoint name (registered: {', '.join(sorted(table))})"
        )
    record = get_record(str(name_or_path), registry=table)
    looked: list[str] = []
    root = Path(shipped_root) if shipped_root is not None else default_shipped_root()
    found = (
        _from_shipped(record, root, looked)
        or _from_env_dir(record, looked)
        or _from_hub_cache(record, looked)
        or _from_download(record, download, looked)
        or _from_local_file(record, looked)
        or _from_url(record, download, looked)
    )
    if found is None:
        raise CheckpointNotFoundError(_not_found_message(record, looked, table))
    if verify_checksums:
        digests = _check_files(record, found.files, pin=found.source != "shipped")
        hashed = {found.files[name]: digest for name, digest in digests.items()}
        found = dataclasses.replace(found, digests=hashed)
    return found


def fetch(
    name: str,
    *,
    registry: Mapping[str, CheckpointRecord] | None = None,
    shipped_root: str | os.PathLike[str] | None = None,
) -> Path:
    """Make a registry checkpoint available locally (downloading it if needed), verified.

    Returns what :func:`resolve_checkpoint` returns. Raises like it.
    """
    return resolve_checkpoint(name, download=True, registry=registry, shipped_root=shipped_root)


def verify(
    name: str,
    *,
    registry: Mapping[str, CheckpointRecord] | None = None,
    shipped_root: str | os.PathLike[str] | None = None,
) -> dict[str, str]:
    """Hash the local files of a registry checkpoint and check them; never downloads.

    Returns:
        file name -> sha256 of every file of the checkpoint. Files without a known or pinned
        sha256 are pinned in the lock file by this call.

    Raises:
        CheckpointNotFoundError: the checkpoint is not on this machine.
        ChecksumError: a file differs from the registry's or the pinned sha256.
    """
    table = all_records() if registry is None else registry
    record = get_record(name, registry=table)
    found = locate_checkpoint(
        name, download=False, verify_checksums=False, registry=table, shipped_root=shipped_root
    )
    return _check_files(record, found.files, pin=found.source != "shipped")


# -- the four places -------------------------------------------------------------------------


def _from_shipped(
    record: CheckpointRecord, root: Path, looked: list[str]
) -> ResolvedCheckpoint | None:
    if record.shipped_dir is None:
        return None
    directory = root / record.shipped_dir
    return _from_directory(
        record, directory, "shipped", f"shipped with the package: {directory}", looked
    )


def _from_env_dir(record: CheckpointRecord, looked: list[str]) -> ResolvedCheckpoint | None:
    base = os.environ.get(ENV_VAR)
    if not base:
        looked.append(f"${ENV_VAR}: not set (a directory holding <name>/<file>)")
        return None
    directory = _expand(base) / record.name
    return _from_directory(record, directory, "env", f"${ENV_VAR}={base}: {directory}", looked)


def _from_directory(
    record: CheckpointRecord, directory: Path, source: Source, where: str, looked: list[str]
) -> ResolvedCheckpoint | None:
    if record.resolves_to_file:
        weights = next((n for n in record.weights_files if (directory / n).is_file()), None)
        needed = record.files[1:]
        missing = [n for n in needed if not (directory / n).is_file()]
        if weights is None:
            looked.append(f"{where} (none of {', '.join(record.weights_files)})")
            return None
        if missing:
            looked.append(f"{where} (missing {', '.join(missing)})")
            return None
        files = {weights: directory / weights, **{n: directory / n for n in needed}}
        return ResolvedCheckpoint(directory / weights, files, source, record)
    missing = [n for n in record.files if not (directory / n).is_file()]
    if missing:
        looked.append(f"{where} (missing {', '.join(missing)})")
        return None
    files = {n: directory / n for n in record.files}
    return ResolvedCheckpoint(directory, files, source, record)


def _from_hub_cache(record: CheckpointRecord, looked: list[str]) -> ResolvedCheckpoint | None:
    if record.hf_repo is None:
        return None
    cache = hub_cache_dir()
    if not (cache / f"models--{record.hf_repo.replace('/', '--')}").is_dir():
        # huggingface_hub's cache layout: no folder, no file of the repository. Said without
        # importing huggingface_hub (a second on a busy CPU), so a missing model is a quick
        # usage error.
        looked.append(
            f"Hugging Face cache {cache} ({_cache_origin()}): {record.hf_repo} without "
            f"{', '.join(record.files)}"
        )
        return None
    from huggingface_hub import try_to_load_from_cache

    files: dict[str, Path] = {}
    missing: list[str] = []
    for name in record.files:
        # cache_dir passed explicitly: huggingface_hub froze its own default at import time.
        hit = try_to_load_from_cache(
            record.hf_repo, name, cache_dir=cache, revision=record.hub_revision
        )
        if isinstance(hit, str) and Path(hit).is_file():
            files[name] = Path(hit)
        else:
            missing.append(name)
    if missing:
        looked.append(
            f"Hugging Face cache {cache} ({_cache_origin()}): {record.hf_repo} without "
            f"{', '.join(missing)}"
        )
        return None
    return _resolved_from_hub(record, files, "hf-cache")


def _from_download(
    record: CheckpointRecord, download: bool, looked: list[str]
) -> ResolvedCheckpoint | None:
    if record.hf_repo is None:
        return None
    where = f"download of {record.hf_repo} from the Hugging Face hub"
    if not download:
        looked.append(f"{where}: not attempted (download=False)")
        return None
    if hub_offline():
        looked.append(f"{where}: not attempted (HF_HUB_OFFLINE is set)")
        return None
    from huggingface_hub import hf_hub_download

    cache = hub_cache_dir()
    endpoint = os.environ.get("HF_ENDPOINT") or None  # read now, like the cache dir
    unreachable = _probe_hub(record.hf_repo, record.files[0], record.hub_revision, endpoint)
    if unreachable is not None:
        looked.append(f"{where} ({endpoint or 'default endpoint'}): {unreachable}")
        return None
    files: dict[str, Path] = {}
    for name in record.files:
        try:
            files[name] = Path(
                hf_hub_download(
                    record.hf_repo,
                    name,
                    revision=record.hub_revision,
                    cache_dir=cache,
                    endpoint=endpoint,
                )
            )
        except Exception as err:  # any hub/network failure ends in the one actionable error
            looked.append(f"{where}: {name} failed ({_describe(err)})")
            return None
    return _resolved_from_hub(record, files, "download")


def _from_local_file(record: CheckpointRecord, looked: list[str]) -> ResolvedCheckpoint | None:
    if record.local_path is None:
        return None
    path = Path(record.local_path)
    if not path.is_file():
        looked.append(f"the file registered for {record.name}: {path} (missing)")
        return None
    return ResolvedCheckpoint(path, {record.files[0]: path}, "registered", record)


def _from_url(
    record: CheckpointRecord, download: bool, looked: list[str]
) -> ResolvedCheckpoint | None:
    """A record's files that have a URL and a sha256 each, from (or downloaded into) the
    hub cache's download folder (:mod:`weights.download`)."""
    if any(name not in record.urls or name not in record.sha256 for name in record.files):
        return None
    files = {n: download_path(hub_cache_dir(), record.sha256[n], n) for n in record.files}
    missing = [n for n, path in files.items() if not path.is_file()]
    if missing and (not download or hub_offline()):
        why = "download=False" if not download else "HF_HUB_OFFLINE is set"
        looked.append(f"{files[missing[0]]} (missing; download not attempted: {why})")
        return None
    for name in missing:
        try:
            download_verified(record.urls[name], files[name], record.sha256[name])
        except DownloadMismatchError as err:  # not found, as any failed download: exit 2
            looked.append(f"{err}; nothing was kept (register {record.name} again if wrong)")
            return None
        except OSError as err:  # unreachable, refused, not found, disk full: said, then not found
            looked.append(f"download of {record.urls[name]}: failed ({_describe(err)})")
            return None
    first = files[record.files[0]]
    path = first if record.resolves_to_file else first.parent
    return ResolvedCheckpoint(path, files, "download" if missing else "cache", record)


def _probe_hub(repo: str, filename: str, revision: str | None, endpoint: str | None) -> str | None:
    """None when the hub answers one HEAD request for ``filename`` within
    :data:`PROBE_TIMEOUT_S`; else why not.

    hf_hub_download retries a network error with a back-off (24-31 s in all) when no cached copy
    exists; this single try, through huggingface_hub's own client (proxies, token, endpoint),
    makes a machine without network fail fast. A missing repository or file fails here too,
    exactly as the download would.
    """
    from huggingface_hub import get_hf_file_metadata, hf_hub_url

    url = hf_hub_url(repo, filename, revision=revision, endpoint=endpoint)
    try:
        get_hf_file_metadata(url, timeout=PROBE_TIMEOUT_S, endpoint=endpoint)
    except Exception as err:  # what failed is reported, whatever the client raised
        return f"{filename} failed ({_describe(err)}; one try, {PROBE_TIMEOUT_S:g} s timeout)"
    return None


def _describe(err: BaseException) -> str:
    """``Type: first line of the message`` (hub errors carry long multi-line bodies)."""
    text = str(err).strip()
    return f"{type(err).__name__}: {text.splitlines()[0] if text else type(err).__name__}"


def _resolved_from_hub(
    record: CheckpointRecord, files: dict[str, Path], source: Source
) -> ResolvedCheckpoint:
    first = files[record.files[0]]
    path = first if record.resolves_to_file else first.parent
    return ResolvedCheckpoint(path, files, source, record)


# -- messages --------------------------------------------------------------------------------


def _not_found_message(
    record: CheckpointRecord, looked: list[str], table: Mapping[str, CheckpointRecord]
) -> str:
    lines = [f"checkpoint {record.name!r} ({record.kind}) was not found. Looked in:"]
    lines += [f"  {i}. {place}" for i, place in enumerate(looked, start=1)]
    lines.append("To get it:")
    if record.hf_repo is not None:
        lines.append(
            f"  - on a machine with internet run `python -m weights fetch {record.name}`, then "
            f"copy {', '.join(record.files)} into ${ENV_VAR}/{record.name}/ on this machine "
            "(or copy the whole Hugging Face cache directory);"
        )
    if record.local_path is not None:
        lines.append(
            f"  - put {record.local_path} back, or register {record.name} again for the file "
            f"where it is now: `python -m weights register {record.name} PATH`;"
        )
    elif record.original is not None:
        lines.append(
            f"  - run `python -m weights fetch {record.name}` where the URL can be reached (it "
            "downloads the file into the cache and checks its sha256);"
        )
    for file, url in record.urls.items():
        lines.append(f"  - or download {url} to ${ENV_VAR}/{record.name}/{file};")
    if record.kind == "detector":
        lines.append(
            "  - or point at a local weights file (.bin/.pth/.pkl/.safetensors): "
            "--detector PATH (Python: detector=PATH)."
        )
    elif record.resolves_to_file:
        lines.append(
            f"  - or point at a copy of {record.files[0]} itself: --encoder PATH "
            "(lxmert-finetune: --from PATH; Python: encoder=PATH)."
        )
    else:
        lines.append(
            f"  - or point at a local directory holding {', '.join(record.files)}: "
            "--encoder PATH (lxmert-finetune: --from PATH to train, --model PATH to evaluate; "
            "Python: encoder=PATH)."
        )
    return "\n".join(lines + _shipped_hint(table))


def _shipped_hint(table: Mapping[str, CheckpointRecord]) -> list[str]:
    """How to run the models shipped with the package instead (names from the registry)."""
    shipped: dict[str, str] = {}
    for record in table.values():
        if record.shipped_dir is not None:
            shipped.setdefault(record.kind, record.name)
    if set(shipped) != {"detector", "encoder"}:
        return []
    detector, encoder = shipped["detector"], shipped["encoder"]
    return [
        "Or try the small shapes-world models shipped with the package (offline; a toy world "
        "of coloured shapes, not real photos):",
        f"  --detector {detector} --encoder {encoder}  "
        f'(Python: detector="{detector}", encoder="{encoder}")',
    ]


# -- checksums -------------------------------------------------------------------------------


def _check_files(
    record: CheckpointRecord, files: Mapping[str, Path], *, pin: bool
) -> dict[str, str]:
    """Hash ``files`` (each once) and compare with the registry, else with the lock file,
    pinning the ones seen for the first time (when ``pin``). Returns file name -> sha256."""
    digests = {name: sha256_file(path) for name, path in files.items()}
    unknown: dict[str, str] = {}
    for name, digest in digests.items():
        expected = record.sha256.get(name)
        if expected is None:
            unknown[name] = digest
        elif digest != expected.lower():
            remedy = (
                f"it changed since it was registered: if you trust it, run `python -m weights "
                f"register {record.name} {files[name]}` again"
                if record.local_path is not None
                else "the file is corrupt or not the published one: delete it and run "
                f"`python -m weights fetch {record.name}`"
            )
            raise ChecksumError(
                f"{files[name]}: sha256 {digest} does not match the registry's "
                f"{expected.lower()} for {record.name}/{name}; {remedy}."
            )
    if pin and unknown:
        compare_and_pin(record, files, unknown, lock_file_path())
    return digests


# -- helpers ---------------------------------------------------------------------------------


def _expand(value: str) -> Path:
    return Path(os.path.expandvars(os.path.expanduser(value)))


def _cache_origin() -> str:
    for var in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "HF_HOME"):
        if os.environ.get(var):
            return f"from ${var}"
    return "default location"


def explicit_path(
    name_or_path: str | os.PathLike[str], *, registry: Mapping[str, CheckpointRecord] | None = None
) -> Path | None:
    """The path ``name_or_path`` stands for (``~`` expanded), or None for a registry name.

    A registry name wins over a same-named file in the working directory unless the caller
    passed a PathLike or wrote a separator (``./lxmert-vqa``)."""
    table = all_records() if registry is None else registry
    if isinstance(name_or_path, str):
        separators = [os.sep] + ([os.altsep] if os.altsep else [])
        if name_or_path in table and not any(s in name_or_path for s in separators):
            return None
    return Path(name_or_path).expanduser()
