"""Input listing under hostile trees (issue 15): ids that leave their root, names a TSV line
cannot hold, symbolic links (loops, folders, aliases), special and unreadable files.

Everything here is real files, links, FIFOs and sockets in ``tmp_path``; only unreadability is
also simulated (tests run as root, for whom permission bits do not stop a read).
"""

from __future__ import annotations

import glob
import os
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from pipeline.extract.inputs import DuplicateIdError, InputListing, list_inputs

AS_ROOT = os.geteuid() == 0


def touch(path: Path, content: bytes = b"x") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content)
    return path


def ids(listing: InputListing) -> list[str]:
    return [item.image_id for item in listing.items]


def failed(listing: InputListing) -> list[tuple[str, str]]:
    """``(path relative to nothing, reason)`` of every failure."""
    return [(failure.path, failure.reason) for failure in listing.failures]


def ten_images(root: Path) -> list[str]:
    """Ten images in nested folders; returns their ids."""
    names = [f"a/img_{k}" for k in range(4)] + [f"a/b/img_{k}" for k in range(3)]
    names += [f"top_{k}" for k in range(3)]
    for name in names:
        touch(root / f"{name}.png")
    return sorted(names)


# --- ids that would leave their input root ---------------------------------------------------


def test_glob_with_dotdot_after_a_wildcard_is_a_failure_per_file(tmp_path: Path) -> None:
    """The issue's reproduction: ``data/*/../../imgs/*.png`` gave ids ``b/../../imgs/...``."""
    (tmp_path / "data" / "a").mkdir(parents=True)
    (tmp_path / "data" / "b").mkdir()
    scene = touch(tmp_path / "imgs" / "scene_000.png")
    pattern = str(tmp_path / "data" / "*" / ".." / ".." / "imgs" / "*.png")
    listing = list_inputs([pattern, str(tmp_path / "imgs")])
    assert ids(listing) == ["scene_000"]  # the folder spec still lists it, under a safe id
    assert listing.items[0].path == scene
    assert [f.image_id for f in listing.failures] == [
        "a/../../imgs/scene_000",
        "b/../../imgs/scene_000",
    ]
    for failure in listing.failures:
        assert "would leave its input root" in failure.reason
        assert str(tmp_path / "data") in failure.reason
        assert failure.path.endswith("scene_000.png")


def test_glob_matching_a_parent_folder_fails_each_file_it_holds(tmp_path: Path) -> None:
    touch(tmp_path / "imgs" / "sub" / "x.png")
    touch(tmp_path / "imgs" / "y.png")
    listing = list_inputs([str(tmp_path / "imgs" / "*" / "..")])
    assert listing.items == ()
    assert sorted(f.image_id for f in listing.failures) == ["sub/../sub/x", "sub/../y"]


def test_dotdot_before_the_wildcard_is_part_of_the_root(tmp_path: Path) -> None:
    touch(tmp_path / "imgs" / "x.png")
    (tmp_path / "work").mkdir()
    pattern = str(tmp_path / "work" / ".." / "imgs" / "*.png")
    listing = list_inputs([pattern])
    assert (ids(listing), listing.failures) == (["x"], ())


# --- names a record line cannot hold ---------------------------------------------------------


@pytest.mark.parametrize("char", ["\t", "\r", "\n"])
def test_tab_cr_and_newline_names_are_failures_and_the_rest_is_listed(
    tmp_path: Path, char: str
) -> None:
    photos = tmp_path / "photos"
    bad = touch(photos / f"bad{char}name.png")
    touch(photos / "good.png")
    touch(photos / f"sub{char}dir" / "deep.png")
    for specs in ([str(photos)], [str(photos / "*")], [str(bad), str(photos / "good.png")]):
        listing = list_inputs(specs)
        assert ids(listing) == ["good"], specs
        assert bad in [Path(failure.path) for failure in listing.failures]
        for failure in listing.failures:
            assert char in failure.image_id
            assert "tab, carriage return or newline" in failure.reason


def test_all_three_characters_follow_one_rule(tmp_path: Path) -> None:
    for name in ("t\tx.png", "r\rx.png", "n\nx.png", "ok.png"):
        touch(tmp_path / name)
    listing = list_inputs([str(tmp_path)])
    assert ids(listing) == ["ok"]
    reasons = {failure.reason.replace(repr(failure.image_id), "ID") for failure in listing.failures}
    assert len(listing.failures) == 3 and len(reasons) == 1


# --- links: loops, linked folders, aliases ---------------------------------------------------


def test_recursive_glob_over_a_symlink_loop_takes_each_file_once(tmp_path: Path) -> None:
    """The issue's reproduction: ``**`` followed a loop and gave 402 records from 10 files."""
    root = tmp_path / "shapes"
    expected = ten_images(root)
    os.symlink("..", root / "a" / "b" / "loop")  # a link to its own grandparent
    os.symlink(".", root / "here")  # and one to its parent
    for spec in (root / "**" / "*.png", root / "**", root):
        listing = list_inputs([str(spec)])
        assert ids(listing) == expected, spec
        assert len({item.path.resolve() for item in listing.items}) == 10
        loops = {Path(f.path).name: f.reason for f in listing.failures}
        assert set(loops) == {"loop", "here"}, spec
        assert all(reason.startswith("symbolic link loop") for reason in loops.values())


def test_walk_follows_a_symlinked_folder_of_images(tmp_path: Path) -> None:
    """The issue's reproduction: a walk silently skipped a linked folder of 8 images."""
    elsewhere = tmp_path / "elsewhere"
    for k in range(8):
        touch(elsewhere / f"img_{k}.jpg")
    photos = tmp_path / "photos"
    touch(photos / "own_0.jpg")
    touch(photos / "own_1.jpg")
    os.symlink(elsewhere, photos / "more")
    for spec in (photos, photos / "**" / "*.jpg"):
        listing = list_inputs([str(spec)])
        assert ids(listing) == ["more/img_" + str(k) for k in range(8)] + ["own_0", "own_1"]
        assert listing.failures == ()
        assert listing.items[0].path == photos / "more" / "img_0.jpg"


def test_a_folder_reached_twice_is_walked_through_its_real_path(tmp_path: Path) -> None:
    photos = tmp_path / "photos"
    touch(photos / "sub" / "c.png")
    os.symlink("sub", photos / "alias")  # sorts before "sub", but follows a link
    listing = list_inputs([str(photos)])
    assert ids(listing) == ["sub/c"]
    assert [(f.image_id, f.path) for f in listing.failures] == [("alias", str(photos / "alias"))]
    assert listing.failures[0].reason.startswith(f"same folder as {photos / 'sub'}")


def test_same_file_under_two_ids_keeps_the_one_with_fewest_links(tmp_path: Path) -> None:
    photos = tmp_path / "photos"
    real = touch(photos / "m.png")
    os.symlink("m.png", photos / "a_link.png")  # sorts first, but is a link
    os.link(real, photos / "z_hard.png")  # a hard link: the same file, no symbolic link
    listing = list_inputs([str(photos)])
    assert ids(listing) == ["m"]
    assert [(f.image_id, f.reason) for f in listing.failures] == [
        ("a_link", f"same file as 'm' ({real}); each file is listed once"),
        ("z_hard", f"same file as 'm' ({real}); each file is listed once"),
    ]


def test_same_file_from_two_specs_keeps_the_first_id_in_sorted_order(tmp_path: Path) -> None:
    photos = tmp_path / "photos"
    image = touch(photos / "sub" / "c.png")
    listing = list_inputs([str(photos), str(photos / "sub")])
    assert ids(listing) == ["c"]
    assert [(f.image_id, f.path) for f in listing.failures] == [("sub/c", str(image))]
    assert "same file as 'c'" in listing.failures[0].reason


def test_same_file_under_the_same_id_is_one_input_without_failure(tmp_path: Path) -> None:
    photos = tmp_path / "photos"
    touch(photos / "c.png")
    os.symlink(photos, tmp_path / "linked")
    listing = list_inputs([str(photos), str(tmp_path / "linked")])
    assert (ids(listing), listing.failures) == (["c"], ())


# --- what a file is: FIFOs, devices, sockets, broken links, loops -------------------------


def test_fifo_is_reported_as_a_fifo_in_a_walk_and_by_name(tmp_path: Path) -> None:
    photos = tmp_path / "photos"
    touch(photos / "ok.png")
    os.mkfifo(photos / "pipe.png")
    os.mkfifo(photos / "pipe.log")  # not an image name: a walk does not take it
    os.mkfifo(tmp_path / "named")
    listing = list_inputs([str(photos), str(tmp_path / "named")])
    assert ids(listing) == ["ok"]
    assert failed(listing) == [
        (str(tmp_path / "named"), "is a FIFO (named pipe), not a file"),
        (str(photos / "pipe.png"), "is a FIFO (named pipe), not a file"),
    ]
    assert [f.image_id for f in listing.failures] == ["named", "pipe"]


def test_devices_and_sockets_say_what_they_are(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # a short relative path for the socket (108-byte limit)
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        server.bind("s.png")
        listing = list_inputs(["/dev/null", "s.png"])
    finally:
        server.close()
    assert listing.items == ()
    assert failed(listing) == [
        ("/dev/null", "is a character device, not a file"),
        ("s.png", "is a socket, not a file"),
    ]


def test_broken_links_are_named_as_such(tmp_path: Path) -> None:
    photos = tmp_path / "photos"
    touch(photos / "ok.png")
    os.symlink("nowhere.png", photos / "gone.png")
    os.symlink("/nonexistent/folder", photos / "gone_folder")  # might have held images
    os.symlink("nowhere.txt", photos / "notes.txt")  # not an image name: not taken
    os.symlink("nowhere.png", tmp_path / "named.png")
    listing = list_inputs([str(photos), str(tmp_path / "named.png")])
    assert ids(listing) == ["ok"]
    assert [(Path(f.path).name, f.image_id) for f in listing.failures] == [
        ("named.png", "named"),
        ("gone.png", "gone"),
        ("gone_folder", "gone_folder"),
    ]
    for failure in listing.failures:
        assert failure.reason.startswith("broken symbolic link"), failure
        assert "does not exist" in failure.reason and "empty" not in failure.reason


def test_link_loops_named_or_walked_say_symbolic_link_loop(tmp_path: Path) -> None:
    photos = tmp_path / "photos"
    touch(photos / "ok.png")
    os.symlink("ping", photos / "pong")
    os.symlink("pong", photos / "ping")
    os.symlink("self.png", tmp_path / "self.png")
    listing = list_inputs([str(photos), str(tmp_path / "self.png")])
    assert ids(listing) == ["ok"]
    assert [Path(f.path).name for f in listing.failures] == ["ping", "pong", "self.png"]
    assert all(f.reason.startswith("symbolic link loop") for f in listing.failures)


# --- unreadable folders and files ------------------------------------------------------------


def refuse_folder(monkeypatch: pytest.MonkeyPatch, locked: Path) -> None:
    """Make ``os.scandir`` fail as on a folder without read permission (works as root)."""
    real_scandir = os.scandir

    def scandir(path: str | Path = ".") -> Iterator[os.DirEntry[str]]:
        if Path(path) == locked:
            raise PermissionError(13, "Permission denied", str(path))
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", scandir)


def test_unreadable_folder_is_a_named_failure(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    photos = tmp_path / "photos"
    touch(photos / "ok.png")
    touch(photos / "locked" / "hidden_from_us.png")
    refuse_folder(monkeypatch, photos / "locked")
    for spec in (photos, photos / "**" / "*.png"):
        listing = list_inputs([str(spec)])
        assert ids(listing) == ["ok"]
        assert [(f.image_id, f.path, f.reason) for f in listing.failures] == [
            ("locked", str(photos / "locked"), "cannot read folder: Permission denied")
        ]


def test_unreadable_input_folder_is_a_failure_not_an_empty_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    photos = tmp_path / "photos"
    touch(photos / "x.png")
    refuse_folder(monkeypatch, photos)
    listing = list_inputs([str(photos)])
    assert listing.items == ()
    assert failed(listing) == [(str(photos), "cannot read folder: Permission denied")]


def test_unreadable_file_is_a_named_failure(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    photos = tmp_path / "photos"
    touch(photos / "ok.png")
    secret = touch(photos / "secret.png")
    real_access = os.access

    def access(path: str | Path, mode: int) -> bool:
        return Path(path) != secret and real_access(path, mode)

    monkeypatch.setattr(os, "access", access)
    for specs in ([str(photos)], [str(secret), str(photos / "ok.png")]):
        listing = list_inputs(specs)
        assert ids(listing) == ["ok"]
        assert failed(listing) == [(str(secret), "cannot read file: permission denied")]


@pytest.mark.skipif(AS_ROOT, reason="root reads files and folders whatever their mode")
def test_real_mode_000_folder_and_file_are_failures(tmp_path: Path) -> None:
    photos = tmp_path / "photos"
    touch(photos / "ok.png")
    secret = touch(photos / "secret.png")
    locked = photos / "locked"
    touch(locked / "x.png")
    secret.chmod(0)
    locked.chmod(0)
    try:
        listing = list_inputs([str(photos)])
    finally:
        locked.chmod(0o755)
        secret.chmod(0o644)
    assert ids(listing) == ["ok"]
    assert failed(listing) == [
        (str(locked), "cannot read folder: Permission denied"),
        (str(secret), "cannot read file: permission denied"),
    ]


# --- usage errors stay errors; glob semantics stay glob's ------------------------------------


def test_usage_errors_still_raise(tmp_path: Path) -> None:
    touch(tmp_path / "a" / "x.png")
    touch(tmp_path / "b" / "x.png")
    with pytest.raises(ValueError, match="no inputs"):
        list_inputs([])
    with pytest.raises(FileNotFoundError, match="does not exist"):
        list_inputs([str(tmp_path / "missing.png")])
    with pytest.raises(FileNotFoundError, match="matched no image"):
        list_inputs([str(tmp_path / "*" / "*.gif")])
    with pytest.raises(DuplicateIdError, match="'x'"):
        list_inputs([str(tmp_path / "a"), str(tmp_path / "b")])


def test_a_list_that_is_a_fifo_is_refused_without_blocking(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "list.txt")
    with pytest.raises(ValueError, match="is a FIFO"):
        list_inputs([f"@{tmp_path / 'list.txt'}"])


def glob_oracle(pattern: str, root: Path) -> list[str]:
    """Today's ids from :func:`glob.glob` (valid without links), walking matched folders."""
    found = set()
    for match in glob.glob(pattern, recursive=True):
        path = Path(match)
        files = [path] if path.is_file() else []
        if path.is_dir():
            files = [Path(d) / name for d, _, names in os.walk(path) for name in names]
        for file in files:
            if file.suffix.lower() in {".png", ".jpg"}:
                found.add(file.relative_to(root).with_suffix("").as_posix())
    return sorted(found)


@pytest.mark.parametrize(
    ("pattern", "root"),
    [
        ("*.png", ""),
        ("*", ""),
        ("**", ""),
        ("**/*.png", ""),
        ("a/*", "a"),
        ("a/**/*.jpg", "a"),
        ("*/b/*.jpg", ""),
        ("**/b", ""),
        ("[ab]*/*", ""),
        ("?", ""),
        ("*/", ""),
        (".h*/*", ""),
        ("a/b/*.jpg", "a/b"),
    ],
)
def test_globs_match_what_glob_matches_on_a_tree_without_links(
    tmp_path: Path, pattern: str, root: str
) -> None:
    for name in ("x.png", "a/y.png", "a/b/z.jpg", "a/.dot.png", ".hidden/h.png", "c/b/w.png"):
        touch(tmp_path / name)
    touch(tmp_path / "a" / "notes.txt")
    spec = str(tmp_path / pattern) + ("/" if pattern.endswith("/") else "")
    listing = list_inputs([spec])
    assert ids(listing) == glob_oracle(spec, tmp_path / root)
    assert listing.failures == ()
