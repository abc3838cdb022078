"""Turn command-line input specs into a sorted list of (image id, file) pairs.

A spec is a file, a directory (walked recursively), a glob pattern, or ``@list.txt`` (one spec
per line, blank lines and ``#`` comments skipped, relative paths taken from the current
directory, exactly as if they were typed on the command line).

Image ids are the path relative to the spec's *input root*, without the extension, with ``/``
separators on every platform:

- a file ``photos/cat.jpg``: the root is its folder, the id is ``cat``;
- a directory ``photos/``: ``photos/2019/cat.jpg`` has the id ``2019/cat``;
- a glob ``photos/**/*.jpg``: the root is the part before the first wildcard (``photos``).

Explicitly named files are always taken (a non-image is then reported as a failed input);
directories and globs keep only files with an image extension (:data:`IMAGE_EXTENSIONS`).
"""

from __future__ import annotations

import glob
import os
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

#: Extensions (lower case) that directory walks and globs pick up.
IMAGE_EXTENSIONS: frozenset[str] = frozenset(
    {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pbm"}
)

_GLOB_CHARS = frozenset("*?[")
#: Characters that would break a TSV line (and so resuming); rejected in ids.
_FORBIDDEN_ID_CHARS = frozenset("\t\n\r")


@dataclass(frozen=True)
class InputItem:
    """One image to process.

    Attributes:
        image_id: path relative to its input root, without extension, ``/``-separated.
        path: the file to read.
    """

    image_id: str
    path: Path


class DuplicateIdError(ValueError):
    """Two different files map to the same image id."""


def _has_glob(spec: str) -> bool:
    return any(char in _GLOB_CHARS for char in spec)


def _id_for(path: Path, root: Path) -> str:
    relative = path.relative_to(root) if root != Path("") else path
    return relative.with_suffix("").as_posix()


def _is_image_name(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_EXTENSIONS


def _walk(directory: Path, root: Path) -> list[InputItem]:
    items = []
    for dirpath, dirnames, filenames in os.walk(directory):
        dirnames.sort()
        for name in sorted(filenames):
            path = Path(dirpath) / name
            if _is_image_name(path):
                items.append(InputItem(image_id=_id_for(path, root), path=path))
    return items


def _glob_root(pattern: str) -> Path:
    """The leading directories of ``pattern`` that hold no wildcard."""
    parts = Path(pattern).parts
    fixed: list[str] = []
    for part in parts[:-1]:
        if _has_glob(part):
            break
        fixed.append(part)
    return Path(*fixed) if fixed else Path("")


def _read_list(list_file: Path) -> list[str]:
    if not list_file.is_file():
        raise FileNotFoundError(f"input list {list_file} does not exist (given as @{list_file})")
    specs = []
    for line in list_file.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            specs.append(line)
    return specs


def _expand(spec: str, *, depth: int = 0) -> list[InputItem]:
    if spec.startswith("@"):
        if depth > 0:
            raise ValueError(f"input list {spec[1:]}: lists cannot name other lists (@...)")
        items: list[InputItem] = []
        for inner in _read_list(Path(spec[1:])):
            items.extend(_expand(inner, depth=depth + 1))
        return items
    path = Path(spec)
    if path.is_dir():
        found = _walk(path, root=path)
        if not found:
            raise FileNotFoundError(
                f"input directory {spec} holds no images (looked for "
                f"{', '.join(sorted(IMAGE_EXTENSIONS))}, recursively)"
            )
        return found
    if path.is_file():
        return [InputItem(image_id=path.stem, path=path)]
    if path.exists():
        raise ValueError(f"input {spec} is neither a file nor a directory")
    if not _has_glob(spec):
        raise FileNotFoundError(f"input {spec} does not exist")
    root = _glob_root(spec)
    items = []
    for match in sorted(glob.glob(spec, recursive=True)):
        match_path = Path(match)
        if match_path.is_dir():
            items.extend(_walk(match_path, root=root))
        elif match_path.is_file() and _is_image_name(match_path):
            items.append(InputItem(image_id=_id_for(match_path, root), path=match_path))
    if not items:
        raise FileNotFoundError(f"input pattern {spec} matched no image files")
    return items


def check_unique_ids(items: Iterable[InputItem]) -> None:
    """Raise :class:`DuplicateIdError` listing every id that two different files share."""
    paths_by_id: dict[str, list[Path]] = defaultdict(list)
    for item in items:
        paths_by_id[item.image_id].append(item.path)
    clashes = {key: paths for key, paths in paths_by_id.items() if len(paths) > 1}
    if clashes:
        shown = [
            f"  {key!r}: {', '.join(str(p) for p in paths)}"
            for key, paths in sorted(clashes.items())[:20]
        ]
        more = f"\n  ... and {len(clashes) - 20} more" if len(clashes) > 20 else ""
        raise DuplicateIdError(
            f"{len(clashes)} image id(s) are used by more than one file:\n"
            + "\n".join(shown)
            + more
            + "\nimage ids are paths relative to each input root without the extension; "
            "pass the common parent directory instead of several folders, or rename the files"
        )


def gather_inputs(specs: Sequence[str]) -> list[InputItem]:
    """Expand ``specs`` (files, directories, globs, ``@list.txt``) into items sorted by id.

    The same file reached twice under the same id (``photos/ photos/cat.jpg`` both yield
    ``cat`` only if the folder is flat) is kept once; two *different* files with one id raise
    :class:`DuplicateIdError` before any work starts.

    Raises:
        FileNotFoundError: a spec names nothing, or a directory or pattern holds no images.
        DuplicateIdError: two different files share an id.
        ValueError: an id contains a tab or newline (LXMERT's TSV cannot hold it).
    """
    if not specs:
        raise ValueError("no inputs given: pass image files, directories, globs or @list.txt")
    unique: dict[tuple[str, str], InputItem] = {}
    for spec in specs:
        for item in _expand(spec):
            key = (item.image_id, os.path.realpath(item.path))
            unique.setdefault(key, item)
    items = list(unique.values())
    for item in items:
        if _FORBIDDEN_ID_CHARS & set(item.image_id):
            raise ValueError(
                f"{item.path}: its image id {item.image_id!r} holds a tab or newline, which "
                "the TSV format cannot store; rename the file"
            )
    check_unique_ids(items)
    return sorted(items, key=lambda item: item.image_id)


def parse_shard(text: str) -> tuple[int, int]:
    """Parse ``K/N`` (1 <= K <= N) from ``--shard``; ``ValueError`` explains the format."""
    try:
        k_text, n_text = text.split("/")
        k, n = int(k_text), int(n_text)
    except ValueError:
        raise ValueError(f"--shard must look like K/N (for example 1/4), got {text!r}") from None
    if not 1 <= k <= n:
        raise ValueError(f"--shard K/N needs 1 <= K <= N (shards count from 1), got {text!r}")
    return k, n


def select_shard(items: Sequence[InputItem], *, index: int, count: int) -> list[InputItem]:
    """Items of shard ``index`` of ``count`` (1-based): every ``count``-th item of the id-sorted
    list, starting at position ``index - 1``.

    Deterministic for a given input set, and the shards partition it exactly.
    """
    if not 1 <= index <= count:
        raise ValueError(f"shard index must be in 1..{count}, got {index}")
    ordered = sorted(items, key=lambda item: item.image_id)
    return ordered[index - 1 :: count]


def shard_output_path(output: Path, *, index: int, count: int) -> Path:
    """``out.tsv`` -> ``out.shard-K-of-N.tsv`` (the suffix is kept, so the format is too)."""
    return output.with_name(f"{output.stem}.shard-{index}-of-{count}{output.suffix}")
