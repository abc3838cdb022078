"""``extract_features merge FILE... --out X``: join feature files (the shards of one run).

The command (flags and wiring) is :mod:`pipeline.commands.merge`; also runnable as
``python -m pipeline.commands.merge FILE... --out X``.

The merge rules, all checked before anything is created (no output, temporary file, manifest
or lock file is left by a refusal, which exits 2):

- an input with a manifest must say ``finished``, ``merged`` or ``converted``; ``running``,
  ``interrupted`` and ``error`` are refused (finish the run first with ``--resume``), and so
  is an HDF5 input with a journal (records not yet folded in);
- inputs that carry a shard ``K/N`` cover 1..N exactly once, unless ``--allow-partial`` (the
  merged manifest then lists the ``missing_shards``);
- every :data:`~pipeline.features.manifest.RECORD_SETTINGS` value is equal across the inputs that
have
  a manifest (the settings of a manifest from before they were recorded are derived from its
  detector section, as ``--resume`` does: :func:`pipeline.features.manifest.recorded_settings`);
- an input without a manifest (a plain obj36 TSV) is accepted when its feature dimension
  equals the others' and its box counts lie within their ``min_boxes..max_boxes``;
- no image id is in two inputs.

The merged manifest lists every input (path, status, sha256, shard, settings) and keeps the
common settings, so a merged file can be merged again or resumed against.
"""

from __future__ import annotations

import contextlib
import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.errors import EXIT_OK, UsageError
from pipeline.features.manifest import (
    check_name_length,
    command_line,
    manifest_path,
    now_utc,
    read_manifest,
    recorded_settings,
    settings_differences,
    write_manifest,
)
from pipeline.features.output import (
    FeatureFileFacts,
    feature_file_facts,
    journal_path,
    merge_outputs,
    output_format,
)
from weights.lock import hold_output_lock
from weights.resolve import sha256_file

#: Manifest statuses of an input that ``merge`` accepts: a run that ended, a merge, or a
#: conversion (``extract_features convert``: its inputs were finished when it read them).
MERGEABLE_STATUSES = ("finished", "merged", "converted")

#: Why each other status is refused, in words.
_UNFINISHED = {
    "running": "a run is still writing it, or was killed",
    "interrupted": "its run was interrupted",
    "error": "its run ended with an error",
}


@dataclass(frozen=True)
class MergeSettings:
    """What ``extract_features merge`` was asked to do."""

    inputs: tuple[Path, ...]
    out: Path
    overwrite: bool
    allow_partial: bool
    quiet: bool


@dataclass(frozen=True)
class MergeInput:
    """One input file as ``merge`` found it.

    Attributes:
        path: the file as given.
        manifest: its manifest (``FILE.manifest.json``), None when it has none.
        facts: its ids, feature dimensions and box counts.
        sha256: hex digest of the file.
    """

    path: Path
    manifest: dict[str, Any] | None
    facts: FeatureFileFacts
    sha256: str

    @property
    def settings(self) -> dict[str, Any] | None:
        """The settings its manifest records; None for no manifest, ``"settings": null`` (a
        merge of files without settings); for an older manifest, those derived from its
        detector section (:func:`pipeline.features.manifest.recorded_settings`)."""
        if self.manifest is None or (
            "settings" in self.manifest and self.manifest["settings"] is None
        ):
            return None
        return recorded_settings(self.manifest)

    def shards(self) -> tuple[int, tuple[int, ...]] | None:
        """``(N, shard indices it holds)``: ``(N, (K,))`` for a shard run, the shards a merge
        covered, or None when it is no shard."""
        manifest = self.manifest or {}
        try:
            if isinstance(manifest.get("shard"), dict):
                return int(manifest["shard"]["count"]), (int(manifest["shard"]["index"]),)
            if isinstance(manifest.get("shards"), dict):
                merged = manifest["shards"]
                return int(merged["count"]), tuple(int(k) for k in merged["present"])
        except (KeyError, TypeError, ValueError) as error:
            raise UsageError(f"{manifest_path(self.path)}: unreadable shard record") from error
        return None


@dataclass(frozen=True)
class ShardCoverage:
    """Which shards of ``count`` the inputs hold (``present``) and lack (``missing``)."""

    count: int
    present: tuple[int, ...]
    missing: tuple[int, ...]


@dataclass(frozen=True)
class MergePlan:
    """A merge whose every rule was checked: inputs, common settings, shard coverage."""

    settings: MergeSettings
    inputs: tuple[MergeInput, ...]
    common: dict[str, Any] | None
    reference: MergeInput | None
    shards: ShardCoverage | None


def check_output(settings: MergeSettings) -> None:
    """Refuse an output the merge may not write, before anything is created.

    Raises:
        UsageError: unknown suffix, a directory, a missing folder, an existing output (or
            journal) without ``--overwrite``, or an output that is also an input.
    """
    out = settings.out
    if out.is_dir():
        raise UsageError(f"merge output {out} is a directory; give a file name *.tsv or *.h5")
    try:
        output_format(out)
    except ValueError as error:
        raise UsageError(str(error)) from error
    if not out.parent.is_dir():
        raise UsageError(f"merge output folder {out.parent} does not exist; create it first")
    try:
        check_name_length(out)
    except ValueError as error:
        raise UsageError(str(error)) from error
    if not settings.overwrite:
        for existing in (out, journal_path(out)):
            if existing.exists():
                raise UsageError(
                    f"merge output {existing} already exists; pass --overwrite to replace it"
                )
    resolved = out.resolve()
    for path in settings.inputs:
        if path.resolve() == resolved:
            raise UsageError(f"merge: the output {out} is also an input")


def check_input_path(path: Path) -> None:
    """Refuse an input that is not a feature file, saying what it is.

    Raises:
        UsageError: missing, a directory, a manifest, a journal, not a regular file, or a name
            that is neither ``*.tsv`` nor ``*.h5``/``*.hdf5``.
    """
    name = path.name
    if name.endswith(".manifest.json"):
        feature_file = path.with_name(name[: -len(".manifest.json")])
        raise UsageError(f"merge input {path} is a manifest; give the feature file {feature_file}")
    if name.endswith((".h5.journal.tsv", ".hdf5.journal.tsv")):
        owner = path.with_name(name[: -len(".journal.tsv")])
        raise UsageError(
            f"merge input {path} is the journal of {owner}; finish that run with --resume and "
            f"give {owner}"
        )
    if path.is_dir():
        raise UsageError(
            f"merge input {path} is a directory; give the feature files (*.tsv, *.h5) in it"
        )
    if not path.exists():
        raise UsageError(f"merge input {path} does not exist")
    if not path.is_file():
        raise UsageError(f"merge input {path} is not a regular file (a FIFO, socket or device)")
    try:
        output_format(path)
    except ValueError:
        raise UsageError(
            f"merge input {path}: unknown format; feature files are *.tsv (LXMERT obj36) or *.h5"
        ) from None


def _input_manifest(path: Path) -> dict[str, Any] | None:
    """The manifest beside ``path``, None when there is none.

    Raises:
        UsageError: it exists but is not a JSON object with a status.
    """
    location = manifest_path(path)
    if not location.exists():
        return None
    try:
        manifest = read_manifest(location)
    except (OSError, ValueError) as error:
        raise UsageError(
            f"merge input {path}: its manifest {location} is unreadable: {error}"
        ) from error
    if not isinstance(manifest, dict) or not isinstance(manifest.get("status"), str):
        raise UsageError(f"merge input {path}: its manifest {location} has no status")
    return manifest


def _check_finished(path: Path, manifest: dict[str, Any] | None) -> None:
    """Refuse an input whose run did not finish, or that holds records not yet folded in."""
    problems = []
    status = None if manifest is None else manifest["status"]
    if status is not None and status not in MERGEABLE_STATUSES:
        why = _UNFINISHED.get(status, "not a status merge knows")
        problems.append(f"its manifest says {json.dumps(status)} ({why})")
    journal = journal_path(path)
    if output_format(path) == "hdf5" and journal.exists():
        with open(journal, "rb") as stream:
            records = sum(line.endswith(b"\n") for line in stream)
        problems.append(
            f"it has a journal {journal} holding {records} record(s) not yet folded into it "
            "(its run is still going, or was killed)"
        )
    if problems:
        raise UsageError(
            f"merge input {path} is not finished: {'; '.join(problems)}. Finish it first with "
            "--resume (its extract_features command plus --resume), then merge."
        )


def read_input(path: Path) -> MergeInput:
    """Check one input file (:func:`check_input_path`, its manifest's status, a journal) and
    read its facts and digest.

    Raises:
        UsageError: any refusal, naming the file.
    """
    check_input_path(path)
    manifest = _input_manifest(path)
    _check_finished(path, manifest)
    try:
        facts = feature_file_facts(path)
        digest = sha256_file(path)
    except (OSError, ValueError) as error:
        raise UsageError(f"merge input {path}: {error}") from error
    if len(facts.feature_dims) > 1:
        raise UsageError(
            f"merge input {path} holds records of several feature dimensions "
            f"{sorted(facts.feature_dims)}; it cannot be merged"
        )
    return MergeInput(path=path, manifest=manifest, facts=facts, sha256=digest)


def check_shards(inputs: Sequence[MergeInput], *, allow_partial: bool) -> ShardCoverage | None:
    """The shard coverage of the inputs that carry a shard ``K/N`` (None when none does).

    Raises:
        UsageError: shards of different N, a shard given twice, or (without ``allow_partial``)
            shards missing from 1..N; each named.
    """
    holders: dict[int, Path] = {}
    counts: dict[int, Path] = {}
    for item in inputs:
        shards = item.shards()
        if shards is None:
            continue
        count, indices = shards
        counts.setdefault(count, item.path)
        if len(counts) > 1:
            (n1, p1), (n2, p2) = list(counts.items())[:2]
            raise UsageError(
                f"merge inputs are shards of different runs: {p1} is one of {n1} shards, "
                f"{p2} one of {n2}"
            )
        for index in indices:
            if index in holders:
                raise UsageError(
                    f"shard {index}/{count} is given twice: {holders[index]} and {item.path}"
                )
            holders[index] = item.path
    if not counts:
        return None
    count = next(iter(counts))
    missing = tuple(k for k in range(1, count + 1) if k not in holders)
    if missing and not allow_partial:
        raise UsageError(
            f"shard(s) {', '.join(f'{k}/{count}' for k in missing)} missing: the inputs hold "
            f"shards {', '.join(map(str, sorted(holders)))} of {count}. Give every shard, or "
            "pass --allow-partial to merge these (the manifest then lists the missing ones)."
        )
    return ShardCoverage(count=count, present=tuple(sorted(holders)), missing=missing)


def common_settings(
    inputs: Sequence[MergeInput],
) -> tuple[dict[str, Any] | None, MergeInput | None]:
    """The settings every input with a manifest shares, and the input they are taken from
    (``(None, None)`` when no input records settings).

    Raises:
        UsageError: an input whose settings differ, naming it and each field with both values;
            a manifest without settings (older versions) differs from any other input.
    """
    with_manifest = [item for item in inputs if item.manifest is not None]
    reference = next((item for item in with_manifest if item.settings is not None), None)
    older = [item for item in with_manifest if "settings" not in (item.manifest or {})]
    if reference is None:
        if older and len(inputs) > 1:
            raise UsageError(
                f"merge input {older[0].path}: its manifest records no settings (written by an "
                "older version), so it cannot be checked against the other inputs"
            )
        return None, None
    for item in with_manifest:
        if item is reference or ("settings" in (item.manifest or {}) and item.settings is None):
            continue  # a merge of files without settings: checked by its records
        differences = settings_differences(reference.settings or {}, item.settings or {})
        if differences:
            raise UsageError(
                f"merge input {item.path} was made with other settings than {reference.path} "
                f"({reference.path} vs {item.path}):\n  "
                + "\n  ".join(differences)
                + "\nOnly the outputs of one run configuration merge into one file."
            )
    return dict(reference.settings or {}), reference


def check_records(inputs: Sequence[MergeInput], common: dict[str, Any] | None) -> None:
    """Every input's feature dimension equals the others' (and the common settings'); an
    input without recorded settings has box counts within their ``min_boxes..max_boxes``; no
    image id is in two inputs.

    Raises:
        UsageError: naming the input, what it holds and what the others hold.
    """
    dim: tuple[int, str] | None = None
    if common is not None and isinstance(common.get("feature_dim"), int):
        dim = (common["feature_dim"], "the recorded settings")
    for item in inputs:
        for value in item.facts.feature_dims:
            if dim is None:
                dim = (value, str(item.path))
            elif value != dim[0]:
                raise UsageError(
                    f"merge input {item.path} has {value}-d features, {dim[1]} {dim[0]}-d; "
                    "one feature file holds one feature dimension"
                )
        if item.settings is None and common is not None:
            _check_box_counts(item, common)
    seen: dict[str, Path] = {}
    for item in inputs:
        for image_id in item.facts.ids:
            if image_id in seen:
                raise UsageError(
                    f"image id {image_id!r} is in both {seen[image_id]} and {item.path}; "
                    "merge inputs must not overlap"
                )
            seen[image_id] = item.path


def _check_box_counts(item: MergeInput, common: dict[str, Any]) -> None:
    low, high = common.get("min_boxes"), common.get("max_boxes")
    facts = item.facts
    if not isinstance(low, int) or not isinstance(high, int) or facts.min_boxes is None:
        return
    if facts.min_boxes < low or (facts.max_boxes or 0) > high:
        raise UsageError(
            f"merge input {item.path} (no recorded settings) has {facts.min_boxes}.."
            f"{facts.max_boxes} boxes per image; the other inputs were made with "
            f"{low}..{high}"
        )


def plan_merge(settings: MergeSettings) -> MergePlan:
    """Check every merge rule (module docstring) without creating anything.

    Raises:
        UsageError: the first rule broken, naming the file(s) and the remedy.
    """
    check_output(settings)
    seen: set[Path] = set()
    for path in settings.inputs:
        if path.resolve() in seen:
            raise UsageError(f"merge input {path} is given twice")
        seen.add(path.resolve())
    inputs = tuple(read_input(path) for path in settings.inputs)
    shards = check_shards(inputs, allow_partial=settings.allow_partial)
    common, reference = common_settings(inputs)
    check_records(inputs, common)
    return MergePlan(
        settings=settings, inputs=inputs, common=common, reference=reference, shards=shards
    )


def _source_entry(item: MergeInput) -> dict[str, Any]:
    """One input as the merged manifest lists it."""
    manifest = item.manifest
    shards = item.shards()
    entry: dict[str, Any] = {
        "path": str(item.path),
        "sha256": item.sha256,
        "status": None if manifest is None else manifest["status"],
        "records": len(item.facts.ids),
        "shard": None if shards is None else {"count": shards[0], "indices": list(shards[1])},
        "settings": item.settings,
    }
    if item.settings is None:
        entry["note"] = "no recorded settings"
    if manifest is not None:
        entry["manifest"] = manifest
    return entry


def merged_manifest(plan: MergePlan, count: int) -> dict[str, Any]:
    """The manifest of the merged output (``"status": "merged"``)."""
    failures: list[Any] = []
    known: set[str] = set()
    for item in plan.inputs:
        for failure in (item.manifest or {}).get("failures", []):
            key = json.dumps(failure, sort_keys=True, default=str)
            if key not in known:  # each failure once, however many inputs list it
                known.add(key)
                failures.append(failure)
    shards = plan.shards
    reference = plan.reference.manifest if plan.reference is not None else None
    return {
        "status": "merged",
        "output": str(plan.settings.out),
        "format": output_format(plan.settings.out),
        "updated": now_utc(),
        "command": command_line(),
        "settings": plan.common,
        "detector": None if reference is None else reference.get("detector"),
        "shards": None
        if shards is None
        else {"count": shards.count, "present": list(shards.present)},
        "missing_shards": [] if shards is None else list(shards.missing),
        "counts": {"records_in_output": count, "failed": len(failures)},
        "failures": failures,
        "sources": [_source_entry(item) for item in plan.inputs],
    }


def _feature_dim(plan: MergePlan) -> int:
    """``D`` of the merged records, for laying out an HDF5 output that holds none (0 unknown)."""
    dims = {dim for item in plan.inputs for dim in item.facts.feature_dims}
    recorded = (plan.common or {}).get("feature_dim")
    return dims.pop() if dims else recorded if isinstance(recorded, int) else 0


def run_merge(settings: MergeSettings) -> int:
    """Check every rule, then join the inputs into the output and write its manifest; returns
    the exit code.

    Raises:
        UsageError: a refusal (see :func:`plan_merge`), found before anything is created.
    """
    plan = plan_merge(settings)
    out = settings.out
    with contextlib.ExitStack() as stack:
        hold_output_lock(stack, out)

        def forget_old_output() -> None:
            # Only once the merged file is complete: a journal or manifest of what the output
            # was would describe the merged records wrongly if the merge stopped between
            # writing the output and its manifest; a failed merge keeps them with the old file.
            journal_path(out).unlink(missing_ok=True)
            manifest_path(out).unlink(missing_ok=True)

        try:
            count = merge_outputs(
                settings.inputs,
                out,
                overwrite=settings.overwrite,
                feature_dim=_feature_dim(plan),
                before_replace=forget_old_output if settings.overwrite else None,
            )
        except (FileExistsError, ValueError) as error:
            raise UsageError(str(error)) from error
        write_manifest(manifest_path(out), merged_manifest(plan, count))
    if not settings.quiet:
        if plan.shards is not None and plan.shards.missing:
            missing = ", ".join(map(str, plan.shards.missing))
            print(
                f"extract_features merge: warning: shard(s) {missing} of {plan.shards.count} "
                "are missing (--allow-partial)",
                file=sys.stderr,
            )
        print(
            f"extract_features merge: {count} records from {len(settings.inputs)} files -> {out}",
            file=sys.stderr,
        )
    return EXIT_OK
