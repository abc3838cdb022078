"""Command line for the checkpoint registry: ``python -m weights list | fetch | verify | path |
convert | register | unregister``.

Exit codes, as every command of the project uses them (:mod:`weights.command`): 0 success;
2 bad command line, or models not loadable: checkpoint not found, checksum mismatch, unknown
name or unreadable file (message on stderr, no traceback); 4 unexpected error; 130 Ctrl-C.
"""

from __future__ import annotations

import argparse
import json
import sys
import textwrap
from collections.abc import Sequence
from pathlib import Path

from weights.command import Command, UsageError, add_verbose_flag, run_command
from weights.registered import all_records, register, registry_file, unregister
from weights.registry import ORIGINAL_KINDS, CheckpointRecord, OriginalKind, UnknownCheckpointError
from weights.resolve import (
    ENV_VAR,
    CheckpointNotFoundError,
    ChecksumError,
    hub_cache_dir,
    locate_checkpoint,
    lock_file_path,
    resolve_checkpoint,
    verify,
)

_EPILOG = f"""\
where checkpoints are looked for, in order:
  an explicit path; weights/shipped/ (small shipped models); ${ENV_VAR}/<name>/<file>;
  the Hugging Face cache ($HF_HUB_CACHE, else $HF_HOME/hub, else ~/.cache/huggingface/hub);
  a download from the Hugging Face hub (not with HF_HUB_OFFLINE=1), at the record's revision;
  "unknown" means the default branch, trusted by sha256.
names registered with `register` (an original LXMERT .pth: a local file, or a URL with its
sha256, downloaded into <hub cache>/lxmert-pipeline-downloads/ on first use) are kept in
$XDG_CONFIG_HOME/lxmert-pipeline/registry.json (default ~/.config/...).
checksums not known to the registry are pinned on first use in <hub cache>/lxmert-pipeline-
checksums.json and checked on every later use.

exit codes: 0 ok; 2 usage error, or not loadable: not found / checksum mismatch /
unreadable; 4 unexpected error; 130 interrupted (Ctrl-C).
"""


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the exit code."""
    return run_command(WEIGHTS_COMMAND, sys.argv[1:] if argv is None else argv)


def _run(args: argparse.Namespace) -> int:
    """The chosen sub-command; a checkpoint that is missing, unknown, damaged or unreadable
    is a usage error (exit 2: models not loadable)."""
    try:
        return int(args.run(args))
    except (CheckpointNotFoundError, ChecksumError, UnknownCheckpointError) as err:
        raise UsageError(str(err)) from None
    except (FileNotFoundError, ValueError, TypeError) as err:  # unreadable/unsafe files
        raise UsageError(str(err)) from None


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m weights",
        description="List, download, locate and verify the named checkpoints of lxmert-pipeline.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("list", help="print every registered checkpoint")
    p.add_argument("--json", action="store_true", help="print the records as JSON")
    p.set_defaults(run=_cmd_list)

    p = sub.add_parser("fetch", help="make a checkpoint available locally (downloads it if needed)")
    p.add_argument("name", metavar="NAME", help="registry name, see `list`")
    p.set_defaults(run=_cmd_fetch)

    p = sub.add_parser("verify", help="hash the local files of a checkpoint and check them")
    p.add_argument("name", metavar="NAME", help="registry name, see `list`")
    p.set_defaults(run=_cmd_verify)

    p = sub.add_parser("path", help="print the local path of a checkpoint (never downloads)")
    p.add_argument("name", metavar="NAME", help="registry name, see `list`")
    p.set_defaults(run=_cmd_path)

    p = sub.add_parser(
        "convert",
        help="rewrite a checkpoint (.bin/.pth/.pkl) as .safetensors, read safely",
    )
    p.add_argument("source", metavar="SOURCE", help="registry name of a detector, or a file")
    p.add_argument("dest", metavar="DEST", type=Path, help="output .safetensors file")
    p.set_defaults(run=_cmd_convert)
    _add_register_parsers(sub)
    add_verbose_flag(parser)
    return parser


def _add_register_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "register",
        help="name an original LXMERT checkpoint (.pth): a local file, or a URL with its sha256",
    )
    p.add_argument("name", metavar="NAME", help="the name to use with --encoder, --from, encoder=")
    p.add_argument("source", metavar="PATH|URL", help="a local .pth file, or an http(s):// URL")
    p.add_argument("--sha256", metavar="HEX", help="the file's sha256 (required with a URL)")
    p.add_argument(
        "--kind",
        choices=ORIGINAL_KINDS,
        help="what the file holds (required with a URL; default: read from a local file)",
    )
    p.set_defaults(run=_cmd_register)
    p = sub.add_parser("unregister", help="forget a name added by register")
    p.add_argument("name", metavar="NAME")
    p.set_defaults(run=_cmd_unregister)


WEIGHTS_COMMAND = Command(
    name="", summary="the checkpoint registry", build_parser=_parser, run=_run
)


def _cmd_list(args: argparse.Namespace) -> int:
    records = sorted(all_records().values(), key=lambda r: (r.kind, r.name))
    if args.json:
        print(json.dumps([_as_json(r) for r in records], indent=2))
        return 0
    wrap = textwrap.TextWrapper(width=98, initial_indent="    ", subsequent_indent="    ")
    for record in records:
        print(f"{record.name:<18} {record.kind:<9} preset={record.preset:<18} {_source(record)}")
        print(wrap.fill(record.description))
        print(wrap.fill(f"license: {record.license}"))
        if record.hf_repo is not None:
            print(wrap.fill(f"revision: {_revision_note(record)}"))
        for file, url in record.urls.items():
            label = "from" if record.original is not None else "alternative"
            print(wrap.fill(f"{label} {file}: {url}"))
    print(f"\n${ENV_VAR} directory: <dir>/<name>/<file>; Hugging Face cache: {hub_cache_dir()}")
    return 0


def _cmd_fetch(args: argparse.Namespace) -> int:
    found = locate_checkpoint(args.name, download=True)
    print(found.path)
    print(f"(found via {found.source})", file=sys.stderr)
    return 0


def _cmd_verify(args: argparse.Namespace) -> int:
    digests = verify(args.name)
    record = all_records()[args.name]
    for file, digest in digests.items():
        origin = "registry" if file in record.sha256 else f"pinned in {lock_file_path()}"
        print(f"{digest}  {file}  (matches {origin})")
    return 0


def _cmd_path(args: argparse.Namespace) -> int:
    print(resolve_checkpoint(args.name, download=False))
    return 0


def _cmd_convert(args: argparse.Namespace) -> int:
    from weights.io import load_state_dict, save_safetensors

    source = resolve_checkpoint(args.source, download=False)
    if source.is_dir():
        raise ValueError(f"{source} is a directory; convert takes a single weights file")
    state = load_state_dict(source)
    save_safetensors(state, args.dest, metadata={"converted_from": source.name})
    print(f"{args.dest}: {len(state)} tensors from {source}")
    return 0


def _cmd_register(args: argparse.Namespace) -> int:
    kind: OriginalKind | None = args.kind
    entry = register(args.name, args.source, sha256=args.sha256, kind=kind)
    where = entry.path or entry.url
    print(f"{entry.name}: {entry.kind} checkpoint {where} (sha256 {entry.sha256})")
    print(f"(recorded in {registry_file()})", file=sys.stderr)
    return 0


def _cmd_unregister(args: argparse.Namespace) -> int:
    unregister(args.name)
    print(f"{args.name}: no longer registered (in {registry_file()})", file=sys.stderr)
    return 0


def _source(record: CheckpointRecord) -> str:
    if record.shipped_dir is not None:
        return f"shipped:{record.shipped_dir} [{', '.join(record.files)}]"
    if record.hf_repo is not None:
        return f"hf:{record.hf_repo} [{', '.join(record.files)}]"
    if record.local_path is not None:
        return f"file:{record.local_path}"
    return "url only"


def _revision_note(record: CheckpointRecord) -> str:
    if record.hub_revision is None:
        return (
            f"{record.revision} (no commit hash looked up: downloads take the hub's default "
            "branch; the files are checked by sha256, the registry's or the one pinned on "
            "first use)"
        )
    return record.revision


def _as_json(record: CheckpointRecord) -> dict[str, object]:
    return {
        "name": record.name,
        "kind": record.kind,
        "preset": record.preset,
        "license": record.license,
        "description": record.description,
        "hf_repo": record.hf_repo,
        "revision": record.revision,
        "files": list(record.files),
        "sha256": dict(record.sha256),
        "urls": dict(record.urls),
        "shipped_dir": record.shipped_dir,
        "original": record.original,
        "local_path": record.local_path,
    }


if __name__ == "__main__":
    sys.exit(main())
