"""``extract_features convert IN... --to FORMAT OUT``: feature files from one format to another.

The command (flags and wiring) is :mod:`pipeline.commands.convert`. The steps, in order:

1. validate: the flags, the format and its precision, every input's format (read from its name
   and content), the output's folder and name. An output that exists needs ``--overwrite``,
   and a folder output is only replaced when its manifest says this tool wrote it.
2. plan: inputs with a manifest must be finished (as ``merge`` requires), and their settings
   equal; what the target or a source cannot hold is said before anything is written.
3. run: the output's lock is held; records stream from the inputs in order (one record, or
   one parquet row group, in memory) into the work folder ``OUT.partial`` beside the output
   (:mod:`pipeline.features.formats.partial`: its ``convert.json`` says ``running`` and holds every
   input's sha256 and the settings); an id in two inputs stops the conversion. Only a
   complete output is moved into place (its companion files first), then its manifest is
   written with every input's sha256, and the work folder is removed.

A refusal is exit 2 and leaves nothing behind. An interrupted conversion (Ctrl-C, a kill, a
full disk) leaves the old output (if any) as it was and its work folder, which ``--resume``
continues when the inputs and settings are the same: formats that can be appended to (tsv,
npz-dir) keep their complete records and go on after them; the others are written again.
"""

from __future__ import annotations

import contextlib
import hashlib
import shutil
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from detector.structures import RegionFeatures
from pipeline.errors import EXIT_OK, UsageError
from pipeline.features.formats.common import FeatureDtype, WriteOptions
from pipeline.features.formats.partial import (
    PARTIAL_MARKER,
    Fingerprint,
    partial_differences,
    partial_path,
    partial_record,
    read_partial,
)
from pipeline.features.formats.place import move_into_place, remove_output
from pipeline.features.formats.registry import (
    FORMATS,
    LOSSLESS,
    FormatSpec,
    detect_format,
    get_format,
)
from pipeline.features.manifest import (
    check_name_length,
    command_line,
    manifest_path,
    now_utc,
    own_manifest,
    read_manifest,
    recorded_settings,
    settings_differences,
    write_manifest,
)
from pipeline.features.output import journal_path
from pipeline.merge import MERGEABLE_STATUSES
from weights.files import fsync_directory
from weights.lock import hold_output_lock
from weights.resolve import sha256_file


@dataclass(frozen=True)
class ConvertSettings:
    """What ``extract_features convert`` was asked to do."""

    inputs: tuple[Path, ...]
    out: Path
    to: str
    feature_dtype: FeatureDtype
    ban_ids: Literal["strict", "trailing-digits"]
    overwrite: bool
    resume: bool
    quiet: bool


@dataclass(frozen=True)
class ConvertInput:
    """One input as found: its format and manifest (None when it has none)."""

    path: Path
    format: str
    manifest: dict[str, Any] | None


@dataclass(frozen=True)
class ConvertPlan:
    """A conversion whose every rule was checked."""

    settings: ConvertSettings
    spec: FormatSpec
    inputs: tuple[ConvertInput, ...]
    common: dict[str, Any] | None
    notices: tuple[str, ...]


def check_convert_output(settings: ConvertSettings, spec: FormatSpec) -> None:
    """Refuse an output the conversion may not write, before anything is created."""
    out = settings.out
    if not out.parent.is_dir():
        raise UsageError(f"convert output folder {out.parent} does not exist; create it first")
    try:
        check_name_length(out)
    except ValueError as error:
        raise UsageError(str(error)) from error
    if out.name == PARTIAL_MARKER:  # the output is written beside the marker, by name
        raise UsageError(
            f"convert output {out}: {PARTIAL_MARKER} is the name of the conversion's own "
            "record in its work folder; name the output otherwise"
        )
    known = {suffix for other in FORMATS.values() for suffix in other.suffixes}
    if out.suffix.lower() in known and out.suffix.lower() not in spec.suffixes:
        raise UsageError(
            f"convert output {out}: a *{out.suffix} name would be read as another format; "
            f"name a {spec.name} output "
            + (" or ".join(f"*{x}" for x in spec.suffixes) if spec.suffixes else "without it")
        )
    if not spec.folder and out.is_dir():
        raise UsageError(f"convert output {out} is a folder; --to {spec.name} writes a file")
    if spec.folder and out.exists() and not out.is_dir():
        raise UsageError(f"convert output {out} is a file; --to {spec.name} writes a folder")
    existing = [p for p in (out, *spec.companions(out)) if p.exists()]
    if existing and not settings.overwrite:
        raise UsageError(f"convert output {existing[0]} already exists; pass --overwrite")
    # A folder is ours by its manifest, or by our work folder beside it: a kill between
    # moving a first output into place and writing its manifest leaves just that.
    unclaimed = own_manifest(out) is None and read_partial(partial_path(out)) is None
    if spec.folder and out.exists() and unclaimed:
        raise UsageError(
            f"convert output {out} is a folder this tool did not write (no manifest "
            f"{manifest_path(out)}); it is never replaced: choose another output"
        )
    resolved = out.resolve()
    for path in settings.inputs:
        if path.resolve() == resolved:
            raise UsageError(f"convert: the output {out} is also an input")


def read_convert_input(path: Path) -> ConvertInput:
    """One input's format and manifest; ``UsageError`` naming it for any refusal."""
    try:
        fmt = detect_format(path)
    except (FileNotFoundError, ValueError) as error:
        raise UsageError(f"convert input {error}") from None
    if fmt == "h5" and journal_path(path).exists():
        raise UsageError(
            f"convert input {path} has a journal {journal_path(path)} of records not yet "
            "folded in; finish its run first with --resume"
        )
    manifest = None
    if manifest_path(path).exists():
        try:
            manifest = read_manifest(manifest_path(path))
        except (OSError, ValueError) as error:
            raise UsageError(f"convert input {path}: unreadable manifest ({error})") from None
        status = manifest.get("status") if isinstance(manifest, dict) else None
        if status not in MERGEABLE_STATUSES:
            raise UsageError(
                f"convert input {path} is not finished: its manifest says {status!r}. Finish "
                "it first with --resume (its extract_features command plus --resume)"
            )
    return ConvertInput(path=path, format=fmt, manifest=manifest)


def _common_settings(inputs: Sequence[ConvertInput]) -> dict[str, Any] | None:
    """The settings the inputs' manifests share; ``UsageError`` when two differ."""
    reference: ConvertInput | None = None
    for item in inputs:
        settings = recorded_settings(item.manifest) if item.manifest else None
        if settings is None:
            continue
        if reference is None:
            reference = item
            continue
        differences = settings_differences(
            recorded_settings(reference.manifest or {}) or {}, settings
        )
        if differences:
            raise UsageError(
                f"convert inputs {reference.path} and {item.path} were made with other "
                "settings:\n  " + "\n  ".join(differences)
            )
    return None if reference is None else recorded_settings(reference.manifest or {})


def notices(spec: FormatSpec, inputs: Sequence[ConvertInput]) -> tuple[str, ...]:
    """What the conversion cannot keep, said before it starts."""
    lines = []
    for name in sorted({item.format for item in inputs} - set(LOSSLESS)):
        lines.append(f"input format {name} holds no {FORMATS[name].loses}")
    if spec.name not in LOSSLESS:
        lines.append(f"output format {spec.name} loses {spec.loses}")
    return tuple(lines)


def plan_convert(settings: ConvertSettings) -> ConvertPlan:
    """Check every rule (module docstring) without creating anything."""
    spec = get_format(settings.to)
    try:
        spec.check_installed("--to")
    except ValueError as error:
        raise UsageError(str(error)) from None
    check_convert_output(settings, spec)
    seen: set[Path] = set()
    for path in settings.inputs:
        if path.resolve() in seen:
            raise UsageError(f"convert input {path} is given twice")
        seen.add(path.resolve())
    inputs = tuple(read_convert_input(path) for path in settings.inputs)
    return ConvertPlan(
        settings=settings,
        spec=spec,
        inputs=inputs,
        common=_common_settings(inputs),
        notices=notices(spec, inputs),
    )


def path_sha256(path: Path) -> str:
    """sha256 of a file; of a folder, over each file's relative path and sha256, sorted."""
    if path.is_file():
        return sha256_file(path)
    digest = hashlib.sha256()
    for item in sorted(p for p in path.rglob("*") if p.is_file()):
        relative = item.relative_to(path).as_posix()
        digest.update(f"{relative}\t{sha256_file(item)}\n".encode())
    return digest.hexdigest()


def stream_inputs(inputs: Sequence[ConvertInput]) -> Iterator[RegionFeatures]:
    """Every input's records in order; ``ValueError`` at an id already seen."""
    seen: dict[str, Path] = {}
    for item in inputs:
        for record in FORMATS[item.format].iterate(item.path):
            if record.image_id in seen:
                raise ValueError(
                    f"image id {record.image_id!r} is in {seen[record.image_id]} and in "
                    f"{item.path}; the records converted into one output must not share an id"
                )
            seen[record.image_id] = item.path
            yield record


def partial_settings(settings: ConvertSettings) -> dict[str, Any]:
    """The settings a resumed conversion must share with the interrupted one."""
    return {"to": settings.to, "feature_dtype": settings.feature_dtype, "ban_ids": settings.ban_ids}


def open_work_folder(settings: ConvertSettings, inputs: Sequence[Fingerprint]) -> tuple[Path, bool]:
    """The work folder ``OUT.partial`` and whether it is resumed: a new one, or with
    ``--resume`` the one an interrupted conversion of the same inputs and settings left;
    ``UsageError`` otherwise (module docstring)."""
    out, work = settings.out, partial_path(settings.out)
    if work.exists() or work.is_symlink():
        recorded = read_partial(work) if work.is_dir() and not work.is_symlink() else None
        if recorded is None:
            raise UsageError(
                f"convert: {work} is in the way and is not the work folder of a conversion "
                f"(no {PARTIAL_MARKER} of this tool in it); move it away"
            )
        if not settings.resume and not settings.overwrite:
            raise UsageError(
                f"convert: an interrupted conversion to {out} left {work}; pass --resume to "
                "finish it or --overwrite to start again"
            )
        if not settings.resume:
            shutil.rmtree(work)
        else:
            changes = partial_differences(recorded, partial_settings(settings), inputs)
            if changes:
                raise UsageError(
                    f"convert --resume: {work} was started with other inputs or settings; "
                    "give the same ones, or pass --overwrite instead of --resume to start "
                    "again:\n  " + "\n  ".join(changes)
                )
            return work, True
    work.mkdir()
    record = partial_record(
        output=out, settings=partial_settings(settings), inputs=inputs, started=now_utc()
    )
    write_manifest(work / PARTIAL_MARKER, record)
    return work, False


def kept_ids(spec: FormatSpec, target: Path) -> frozenset[str]:
    """Ids a partial output at ``target`` keeps (formats with ``resume``); the partial output
    of any other format is removed, to be written again from the start."""
    if spec.resume is not None:
        try:
            return spec.resume(target)
        except (ValueError, UnicodeDecodeError) as error:
            raise UsageError(
                f"convert --resume: the partial output {target} is damaged ({error}); pass "
                "--overwrite instead of --resume to start again"
            ) from None
    remove_output(target, spec)
    return frozenset()


def _write(plan: ConvertPlan, target: Path, kept: frozenset[str]) -> int:
    """Stream the inputs into ``target``, past the ``kept`` ids, with a progress bar unless
    quiet; returns the records written now."""
    from tqdm import tqdm

    settings = plan.settings
    options = WriteOptions(feature_dtype=settings.feature_dtype, ban_ids=settings.ban_ids)
    # The kept records are the stream's first ones (inputs checked equal by sha256): they
    # are read again, not written.
    records = (r for r in stream_inputs(plan.inputs) if r.image_id not in kept)
    with tqdm(
        records,
        disable=settings.quiet,
        unit="rec",
        desc="convert",
        initial=len(kept),
        file=sys.stderr,
        dynamic_ncols=True,
    ) as bar:
        try:
            return plan.spec.write(target, bar, options)
        except (ValueError, KeyError) as error:
            raise UsageError(f"convert: {error}; nothing was written") from None


def converted_manifest(plan: ConvertPlan, count: int, digests: Sequence[str]) -> dict[str, Any]:
    """The output's manifest (``"status": "converted"``)."""
    settings = plan.settings
    return {
        "status": "converted",
        "output": str(settings.out),
        "format": plan.spec.name,
        "feature_dtype": settings.feature_dtype,
        "loses": plan.spec.loses,
        "updated": now_utc(),
        "command": command_line(),
        "settings": plan.common,
        "counts": {"records_in_output": count},
        "sources": [
            {
                "path": str(item.path),
                "format": item.format,
                "sha256": digest,
                "status": None if item.manifest is None else item.manifest.get("status"),
                "manifest": item.manifest,
            }
            for item, digest in zip(plan.inputs, digests, strict=True)
        ],
    }


def _say(settings: ConvertSettings, line: str) -> None:
    if not settings.quiet:
        print(f"extract_features convert: {line}", file=sys.stderr)


def run_convert(settings: ConvertSettings) -> int:
    """Check, then convert; returns the exit code (module docstring)."""
    plan = plan_convert(settings)
    out = settings.out
    for line in plan.notices:
        _say(settings, f"note: {line}")
    with contextlib.ExitStack() as stack:
        hold_output_lock(stack, out)
        fingerprints = [
            Fingerprint(path=str(item.path), format=item.format, sha256=path_sha256(item.path))
            for item in plan.inputs
        ]
        work, resumed = open_work_folder(settings, fingerprints)
        target = work / out.name
        kept = kept_ids(plan.spec, target)
        if resumed:
            how = "appends to them" if plan.spec.resume else "writes it again from the start"
            _say(settings, f"resuming {work}: {len(kept)} records kept; {plan.spec.name} {how}")
        elif settings.resume:
            _say(settings, f"nothing to resume (no {work}): converting from the start")
        try:
            count = len(kept) + _write(plan, target, kept)
        except UsageError:
            shutil.rmtree(work, ignore_errors=True)  # a refusal leaves nothing behind
            raise
        move_into_place(target, out, plan.spec)  # the old manifest stays until replaced
        digests = [item.sha256 for item in fingerprints]
        write_manifest(manifest_path(out), converted_manifest(plan, count, digests))
        shutil.rmtree(work)
        fsync_directory(out.parent)
    _say(
        settings,
        f"{count} records from {len(plan.inputs)} input(s) -> {out} ({plan.spec.name}, "
        f"features {settings.feature_dtype})",
    )
    return EXIT_OK
