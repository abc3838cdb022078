"""Turn command-line input specs into a sorted list of (image id, file) pairs.

A spec is a file, a directory (walked recursively), a glob pattern, or ``@list.txt`` (one spec
per line, blank lines and ``#`` comments skipped, relative paths taken from the current
directory, exactly as if they were typed on the command line).

Image ids are the path relative to the spec's *input root*, without the extension, with ``/``
separators on every platform:

- a file ``photos/cat.jpg``: the root is its folder, the id is ``cat``;
- a directory ``photos/``: ``photos/2019/cat.jpg`` has the id ``2019/cat``;
- a glob ``photos/**/*.jpg``: the root is the part before the first wildcard (``photos``).
  The syntax is :func:`glob.glob`'s with ``recursive=True``: ``*``, ``?`` and ``[...]`` match
  within one name, and not a leading ``.`` unless the pattern's name starts with one; a name
  that is exactly ``**`` matches zero or more folders (hidden ones excluded); a trailing ``/``
  matches folders only. A folder the pattern matches is walked like a directory spec, its
  files keeping ids relative to the glob root.

Explicitly named files are always taken (a non-image is then reported as a failed input);
directories and globs keep only files with an image extension (:data:`IMAGE_EXTENSIONS`).

Failures. What cannot be listed becomes a per-file :class:`~pipeline.features.manifest.Failure`,
named, with the reason, and the rest is still listed; nothing is dropped or renamed silently:

- an id that would leave its input root (``..`` after a wildcard, as in ``imgs/*/../x.png``)
  or that is absolute;
- an id holding a tab, ``\\r`` or ``\\n`` (one rule for the three: a record is one TSV line);
- a FIFO, socket or device, a broken symbolic link, a symbolic link loop, a file without read
  permission, or a folder that cannot be listed. Walks and globs report entries whose name has an
  image extension; broken links and link loops also when the name has no extension at all (it
  may have been a folder).

Links (one rule for walks and globs). Symbolic links to files and folders are followed. Within
one walk (and one ``**``) each real folder, known by ``(st_dev, st_ino)``, is entered once:
through the path that follows the fewest links, then the first in path order. A link to a
folder already entered is one failure named by the link: "symbolic link loop" when it leads
back to a folder that holds it, "same folder as ..." otherwise.

Same real file under several ids. Each real file ``(st_dev, st_ino)`` is listed once, under the
id reached through the fewest symbolic links, then the first in sorted order; every other id is
a failure "same file as <id> (<path>)". The same file under the same id (named twice) is simply
kept once.

Usage errors stay exceptions: no specs at all; a spec that names nothing (a missing path, a
directory or pattern that yields neither an image nor a failure); a list naming lists, or a list
that cannot be read; two different files with one id (:class:`DuplicateIdError`).
"""

from __future__ import annotations

import errno
import fnmatch
import heapq
import os
import stat
from collections import defaultdict
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from detector.image import not_a_file
from pipeline.features.manifest import Failure

#: Extensions (lower case) that directory walks and globs pick up.
IMAGE_EXTENSIONS: frozenset[str] = frozenset(
    {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pbm"}
)

_GLOB_CHARS = frozenset("*?[")
#: Characters that would break a TSV line (and so resuming); a file whose id holds one fails.
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


@dataclass(frozen=True)
class InputListing:
    """What the specs name: the images to process and the inputs that cannot be.

    Attributes:
        items: one per real file, sorted by ``image_id``; ids are unique.
        failures: sorted by ``path`` (then id, reason); each names the file or folder, the id
            it would have had (``""`` for a spec's own folder) and why it is not listed.
    """

    items: tuple[InputItem, ...]
    failures: tuple[Failure, ...]


class DuplicateIdError(ValueError):
    """Two different files map to the same image id."""


@dataclass(frozen=True)
class _Candidate:
    """A listable file before duplicates are settled.

    Attributes:
        image_id: its id.
        path: the path it was reached by.
        file_key: ``(st_dev, st_ino)`` of the real file.
        links: symbolic links followed below the input root to reach it.
    """

    image_id: str
    path: Path
    file_key: tuple[int, int]
    links: int


@dataclass(frozen=True)
class _Found:
    """Accumulates what the specs yield (lists are appended to; the record itself is fixed)."""

    candidates: list[_Candidate] = field(default_factory=list)
    failures: list[Failure] = field(default_factory=list)

    def fail(self, path: Path, image_id: str, reason: str) -> None:
        self.failures.append(Failure(image_id=image_id, path=str(path), reason=reason))

    def size(self) -> int:
        return len(self.candidates) + len(self.failures)


@dataclass(frozen=True)
class _Scope:
    """One spec being expanded: its input root and where results go."""

    root: Path
    found: _Found


def _has_glob(spec: str) -> bool:
    return any(char in _GLOB_CHARS for char in spec)


def _id_for(path: Path, root: Path) -> str:
    relative = path.relative_to(root) if root != Path("") else path
    return relative.with_suffix("").as_posix()


def _folder_id(path: Path, root: Path) -> str:
    """A folder's id prefix (its path below the root), ``""`` for the root itself."""
    relative = path.relative_to(root) if root != Path("") else path
    return "" if relative == Path("") else relative.as_posix()


def _is_image_name(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_EXTENSIONS


def _id_problem(image_id: str, root: Path) -> str | None:
    """Why ``image_id`` cannot be an id, or ``None``."""
    if _FORBIDDEN_ID_CHARS & set(image_id):
        return (
            f"its image id {image_id!r} holds a tab, carriage return or newline, which an id "
            "cannot hold (a record is one TSV line); rename the file"
        )
    if ".." in PurePosixPath(image_id).parts or image_id.startswith("/"):
        return (
            f"its image id {image_id!r} would leave its input root {str(root)!r} "
            "('..' after a wildcard); match the files without '..', or pass their folder"
        )
    return None


def _stat(path: Path) -> os.stat_result | str:
    """``os.stat`` (following links) or why it failed, in words."""
    try:
        return os.stat(path)
    except FileNotFoundError:
        if not os.path.islink(path):
            return "does not exist (it went away while listing)"
        try:
            target = os.readlink(path)
        except OSError:
            target = "?"
        return f"broken symbolic link (its target {target} does not exist)"
    except OSError as error:
        if error.errno == errno.ELOOP:
            return "symbolic link loop (following the link never reaches a file)"
        return f"cannot be read: {error.strerror or error}"


def _file_problem(path: Path, info: os.stat_result) -> str | None:
    """Why the file at ``path`` cannot be read as an image, or ``None``."""
    if not stat.S_ISREG(info.st_mode):
        return not_a_file(info.st_mode)
    # As root ``os.access`` is true regardless of the bits, just as the read would succeed.
    if not os.access(path, os.R_OK):
        return "cannot read file: permission denied"
    return None


def _take_file(path: Path, links: int, scope: _Scope, *, explicit: bool) -> None:
    """Add ``path`` (not a folder) as a candidate or a failure; skip non-image names in walks."""
    image_id = path.stem if explicit else _id_for(path, scope.root)
    wanted = explicit or _is_image_name(path)
    # An unresolvable link with no extension might have been a folder of images: report it.
    if not wanted and not (path.suffix == "" and os.path.islink(path)):
        return
    info = _stat(path)
    if isinstance(info, str):
        scope.found.fail(path, image_id, info)
        return
    if not wanted or stat.S_ISDIR(info.st_mode):
        return
    problem = _id_problem(image_id, scope.root) or _file_problem(path, info)
    if problem is not None:
        scope.found.fail(path, image_id, problem)
        return
    key = (info.st_dev, info.st_ino)
    scope.found.candidates.append(
        _Candidate(image_id=image_id, path=path, file_key=key, links=links)
    )


def _scan(directory: Path, scope: _Scope) -> list[os.DirEntry[str]]:
    """The entries of ``directory`` sorted by name; a folder that cannot be read is a failure."""
    try:
        with os.scandir(directory) as entries:
            return sorted(entries, key=lambda entry: entry.name)
    except (FileNotFoundError, NotADirectoryError):
        return []  # a pattern's root that does not exist matches nothing
    except OSError as error:
        reason = f"cannot read folder: {error.strerror or error}"
        scope.found.fail(directory, _folder_id(directory, scope.root), reason)
        return []


def _is_folder(entry: os.DirEntry[str]) -> bool:
    """A folder, or a link to one; a link loop is not (it is reported as a file would be)."""
    try:
        return entry.is_dir()
    except OSError:
        return False


def _revisit_reason(path: Path, first: Path) -> str:
    if path.is_relative_to(first):
        return (
            f"symbolic link loop: leads back to {first}, which holds it "
            "(each real folder is walked once)"
        )
    return f"same folder as {first}, already listed (each real folder is walked once)"


def _folders(
    top: Path, links: int, scope: _Scope, *, hidden: bool
) -> Iterator[tuple[Path, int, list[os.DirEntry[str]]]]:
    """Each real folder under ``top`` (itself included) once: ``(path, links, non-folders)``.

    Folders come from a heap ordered by (links followed, path), so a real folder is entered
    through its link-free path when it has one, and a link to it is what gets reported.
    """
    entered: dict[tuple[int, int], Path] = {}
    heap: list[tuple[int, str, Path]] = [(links, str(top), top)]
    while heap:
        depth, _, folder = heapq.heappop(heap)
        info = _stat(folder)
        if isinstance(info, str):
            scope.found.fail(folder, _folder_id(folder, scope.root), info)
            continue
        key = (info.st_dev, info.st_ino)
        if key in entered:
            reason = _revisit_reason(folder, entered[key])
            scope.found.fail(folder, _folder_id(folder, scope.root), reason)
            continue
        entered[key] = folder
        others = []
        for entry in _scan(folder, scope):
            if not hidden and entry.name.startswith("."):
                continue
            if _is_folder(entry):
                path = Path(entry.path)
                heapq.heappush(heap, (depth + entry.is_symlink(), str(path), path))
            else:
                others.append(entry)
        yield folder, depth, others


def _walk(top: Path, links: int, scope: _Scope) -> None:
    """Take every image-named file under ``top`` (hidden ones too, as ``os.walk`` did)."""
    for _, depth, entries in _folders(top, links, scope, hidden=True):
        for entry in entries:
            _take_file(Path(entry.path), depth + entry.is_symlink(), scope, explicit=False)


def _take_match(path: Path, links: int, scope: _Scope, *, folders_only: bool) -> None:
    """A path the whole pattern matched: a folder is walked, a file taken."""
    if os.path.isdir(path):
        _walk(path, links, scope)
    elif not folders_only:
        _take_file(path, links, scope, explicit=False)


def _name_matches(name: str, pattern: str) -> bool:
    # glob's rule: wildcards do not match a leading dot unless the pattern starts with one.
    if name.startswith(".") and not pattern.startswith("."):
        return False
    return fnmatch.fnmatchcase(name, pattern)


def _match(
    folder: Path, parts: tuple[str, ...], links: int, scope: _Scope, *, folders_only: bool
) -> None:
    """Match ``parts`` (names of a pattern, at least one) below ``folder``."""
    head, rest = parts[0], parts[1:]
    if head == "**" and not rest:
        # Matches ``folder`` itself, and walking it takes everything below.
        _walk(folder, links, scope)
    elif head == "**":
        for found, depth, _ in _folders(folder, links, scope, hidden=False):
            _match(found, rest, depth, scope, folders_only=folders_only)
    elif not _has_glob(head):
        path = folder / head
        if not rest:
            if os.path.lexists(path):
                _take_match(path, links + os.path.islink(path), scope, folders_only=folders_only)
        elif os.path.isdir(path):
            _match(path, rest, links + os.path.islink(path), scope, folders_only=folders_only)
    else:
        for entry in _scan(folder, scope):
            if not _name_matches(entry.name, head):
                continue
            path, depth = Path(entry.path), links + entry.is_symlink()
            if not rest:
                _take_match(path, depth, scope, folders_only=folders_only)
            elif _is_folder(entry):
                _match(path, rest, depth, scope, folders_only=folders_only)


def _split_pattern(pattern: str) -> tuple[Path, tuple[str, ...]]:
    """The glob root (leading names without a wildcard) and the names after it."""
    parts = Path(pattern).parts
    count = 0
    while count < len(parts) - 1 and not _has_glob(parts[count]):
        count += 1
    return Path(*parts[:count]) if count else Path(""), parts[count:]


def _read_list(list_file: Path) -> list[str]:
    if not os.path.lexists(list_file):
        raise FileNotFoundError(f"input list {list_file} does not exist (given as @{list_file})")
    info = _stat(list_file)
    problem = info if isinstance(info, str) else _file_problem(list_file, info)
    if problem is not None:
        raise ValueError(f"input list {list_file} (given as @{list_file}) {problem}")
    specs = []
    for line in list_file.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            specs.append(line)
    return specs


def _expand_path(spec: str, found: _Found) -> None:
    """A spec that exists as a path (perhaps a broken link): a folder is walked, else taken."""
    path = Path(spec)
    info = _stat(path)
    if isinstance(info, str) or not stat.S_ISDIR(info.st_mode):
        _take_file(
            path, int(os.path.islink(path)), _Scope(root=path.parent, found=found), explicit=True
        )
        return
    before = found.size()
    _walk(path, 0, _Scope(root=path, found=found))
    if found.size() == before:
        raise FileNotFoundError(
            f"input directory {spec} holds no images (looked for "
            f"{', '.join(sorted(IMAGE_EXTENSIONS))}, recursively)"
        )


def _expand(spec: str, found: _Found, *, depth: int = 0) -> None:
    if spec.startswith("@"):
        if depth > 0:
            raise ValueError(f"input list {spec[1:]}: lists cannot name other lists (@...)")
        for inner in _read_list(Path(spec[1:])):
            _expand(inner, found, depth=depth + 1)
        return
    if os.path.lexists(spec):
        _expand_path(spec, found)
        return
    if not _has_glob(spec):
        raise FileNotFoundError(_missing(spec))
    root, parts = _split_pattern(spec)
    before = found.size()
    folders_only = spec.endswith(("/", os.sep))
    _match(root, parts, 0, _Scope(root=root, found=found), folders_only=folders_only)
    if found.size() == before:
        raise FileNotFoundError(f"input pattern {spec} matched no image files")


#: What an empty list of inputs is told.
NO_INPUTS = "no inputs given: pass image files, directories, globs or @list.txt"


def _missing(spec: str) -> str:
    return f"input {spec} does not exist"


def check_inputs_named(specs: Sequence[str]) -> None:
    """Refuse at once what :func:`list_inputs` would refuse without walking anything: no
    specs, an ``@list`` that is missing, unreadable or names lists, and a path that names
    nothing and is no pattern. One ``stat`` per spec (a list is read), so a command can say it
    before it loads any model; folders without images and patterns that match nothing are
    found by the listing itself.

    Raises:
        ValueError, FileNotFoundError: as :func:`list_inputs`, with its messages.
    """
    if not specs:
        raise ValueError(NO_INPUTS)
    for spec in specs:
        inner = _read_list(Path(spec[1:])) if spec.startswith("@") else [spec]
        for one in inner:
            if one.startswith("@") and spec.startswith("@"):
                raise ValueError(f"input list {one[1:]}: lists cannot name other lists (@...)")
            if not os.path.lexists(one) and not _has_glob(one):
                raise FileNotFoundError(_missing(one))


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


def _settle(found: _Found) -> InputListing:
    """One item per id and per real file; see the module docstring for the choice."""
    preference = sorted(found.candidates, key=lambda c: (c.links, c.image_id, str(c.path)))
    # The same file under the same id (named twice, or by two paths) is one input.
    by_id_and_file: dict[tuple[str, tuple[int, int]], _Candidate] = {}
    for candidate in preference:
        by_id_and_file.setdefault((candidate.image_id, candidate.file_key), candidate)
    distinct = list(by_id_and_file.values())
    check_unique_ids(InputItem(image_id=c.image_id, path=c.path) for c in distinct)
    # One real file, one record: two ids would compute and store the same image twice, and
    # the failure names the kept id so that the choice is never silent.
    kept: dict[tuple[int, int], _Candidate] = {}
    failures = list(found.failures)
    for candidate in distinct:
        first = kept.setdefault(candidate.file_key, candidate)
        if first is not candidate:
            reason = f"same file as {first.image_id!r} ({first.path}); each file is listed once"
            failures.append(
                Failure(image_id=candidate.image_id, path=str(candidate.path), reason=reason)
            )
    items = sorted(
        (InputItem(image_id=c.image_id, path=c.path) for c in kept.values()),
        key=lambda item: item.image_id,
    )
    ordered = sorted(set(failures), key=lambda f: (f.path, f.image_id, f.reason))
    return InputListing(items=tuple(items), failures=tuple(ordered))


def list_inputs(specs: Sequence[str]) -> InputListing:
    """Expand ``specs`` (files, directories, globs, ``@list.txt``) into items and failures.

    See the module docstring for ids, links, and which inputs are failures (the rest of the
    listing goes on) rather than errors.

    Raises:
        ValueError: no specs, a list naming lists, an unreadable list.
        FileNotFoundError: a spec names nothing, or a directory or pattern yields nothing.
        DuplicateIdError: two different files share an id.
    """
    if not specs:
        raise ValueError(NO_INPUTS)
    found = _Found()
    for spec in specs:
        _expand(spec, found)
    return _settle(found)


def gather_inputs(specs: Sequence[str]) -> list[InputItem]:
    """The items of :func:`list_inputs`, sorted by id, **without its failures**.

    For callers that only need the images; a run must use :func:`list_inputs` and report the
    failures. Raises as :func:`list_inputs` does.
    """
    return list(list_inputs(specs).items)


def _spec_roots(spec: str) -> tuple[Path, ...]:
    """The input root of one spec that is not a list, decided as :func:`_expand` decides it.

    A file reached through a symbolic link also gives the folder of the real file, which the
    run reads too. A spec that names nothing gives its folder (:func:`list_inputs` refuses it).
    """
    path = Path(spec)
    if os.path.lexists(spec):
        info = _stat(path)
        if not isinstance(info, str) and stat.S_ISDIR(info.st_mode):
            return (path,)
        return (path.parent, Path(os.path.realpath(path)).parent)
    if _has_glob(spec):
        return (_split_pattern(spec)[0],)
    return (path.parent,)


def input_roots(specs: Sequence[str]) -> tuple[Path, ...]:
    """The input root of every spec, resolved (``os.path.realpath``), each once, in spec order.

    The root is the folder that ids are relative to (see the module docstring): a file's folder,
    a directory itself, a glob's part before the first wildcard (the current directory when
    there is none), and for ``@list.txt`` the roots of its lines. A file reached through a
    symbolic link adds the real file's folder. Folders entered through links *below* a root are
    not listed. Nothing is walked, so this costs one ``stat`` per spec.

    Raises:
        ValueError: a list naming lists, or a list that cannot be read (as :func:`list_inputs`).
        FileNotFoundError: a list that does not exist.
    """
    roots: dict[Path, None] = {}
    for spec in specs:
        inner = _read_list(Path(spec[1:])) if spec.startswith("@") else [spec]
        for one in inner:
            if one.startswith("@"):
                raise ValueError(f"input list {one[1:]}: lists cannot name other lists (@...)")
            for root in _spec_roots(one):
                roots.setdefault(Path(os.path.realpath(root)), None)
    return tuple(roots)


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
