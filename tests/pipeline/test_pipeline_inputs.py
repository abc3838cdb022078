"""Input gathering: ids, directories, globs, lists, duplicates, shards."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.extract.inputs import (
    DuplicateIdError,
    gather_inputs,
    list_inputs,
    parse_shard,
    select_shard,
    shard_output_path,
)


def touch(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"x")
    return path


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    root = tmp_path / "photos"
    for name in ("b.jpg", "a.PNG", "sub/c.jpeg", "sub/deep/d.webp", "notes.txt", "sub/e.tif"):
        touch(root / name)
    return root


def ids(items) -> list[str]:
    return [item.image_id for item in items]


def test_directory_is_walked_recursively_with_relative_ids(tree: Path) -> None:
    items = gather_inputs([str(tree)])
    assert ids(items) == ["a", "b", "sub/c", "sub/deep/d", "sub/e"]
    assert items[2].path == tree / "sub" / "c.jpeg"


def test_file_id_is_its_stem_and_any_extension_is_taken(tree: Path) -> None:
    items = gather_inputs([str(tree / "sub" / "c.jpeg"), str(tree / "notes.txt")])
    assert ids(items) == ["c", "notes"]


def test_glob_root_is_the_part_before_the_wildcard(tree: Path) -> None:
    assert ids(gather_inputs([str(tree / "**" / "*.jp*g")])) == ["b", "sub/c"]
    # A directory matched by a glob is walked; its files keep ids relative to the glob root.
    assert ids(gather_inputs([str(tree / "sub" / "*")])) == ["c", "deep/d", "e"]


def test_list_file_entries_are_specs(tree: Path, tmp_path: Path) -> None:
    listing = tmp_path / "list.txt"
    listing.write_text(f"# photos\n{tree / 'b.jpg'}\n\n{tree / 'sub'}\n")
    assert ids(gather_inputs([f"@{listing}"])) == ["b", "c", "deep/d", "e"]


def test_duplicate_ids_are_an_error_naming_both_files(tree: Path) -> None:
    touch(tree / "other" / "b.jpg")
    with pytest.raises(DuplicateIdError, match="'b'") as info:
        gather_inputs([str(tree / "b.jpg"), str(tree / "other")])
    assert str(tree / "other" / "b.jpg") in str(info.value)


def test_same_file_twice_is_kept_once(tree: Path) -> None:
    assert ids(gather_inputs([str(tree / "b.jpg"), str(tree / "b.jpg")])) == ["b"]


@pytest.mark.parametrize(
    ("spec", "error", "match"),
    [
        ("missing.jpg", FileNotFoundError, "does not exist"),
        ("nomatch/*.jpg", FileNotFoundError, "matched no image"),
        ("@nolist.txt", FileNotFoundError, "input list"),
    ],
)
def test_missing_inputs_are_named(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, spec: str, error: type, match: str
) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(error, match=match):
        gather_inputs([spec])


def test_empty_directory_is_an_error(tmp_path: Path) -> None:
    touch(tmp_path / "empty" / "readme.txt")
    with pytest.raises(FileNotFoundError, match="holds no images"):
        gather_inputs([str(tmp_path / "empty")])


def test_id_with_newline_is_a_failure_and_the_rest_is_listed(tmp_path: Path) -> None:
    bad = touch(tmp_path / "a\nb.jpg")
    good = touch(tmp_path / "good.jpg")
    listing = list_inputs([str(bad), str(good)])
    assert ids(listing.items) == ["good"]
    assert [(f.image_id, f.path) for f in listing.failures] == [("a\nb", str(bad))]
    assert "tab, carriage return or newline" in listing.failures[0].reason


def test_shards_partition_the_sorted_inputs(tree: Path) -> None:
    items = gather_inputs([str(tree)])
    shards = [select_shard(items, index=k, count=3) for k in (1, 2, 3)]
    assert sorted(ids([item for shard in shards for item in shard])) == ids(items)
    assert ids(shards[0]) == ["a", "sub/deep/d"]
    assert select_shard(list(reversed(items)), index=1, count=3) == shards[0]


@pytest.mark.parametrize("text", ["0/3", "4/3", "1", "a/b", "1/2/3"])
def test_bad_shard_specs(text: str) -> None:
    with pytest.raises(ValueError, match="shard"):
        parse_shard(text)


def test_shard_output_path() -> None:
    assert parse_shard("2/4") == (2, 4)
    assert shard_output_path(Path("out/x.tsv"), index=2, count=4) == Path("out/x.shard-2-of-4.tsv")
