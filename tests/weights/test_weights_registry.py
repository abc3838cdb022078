"""weights.registry: the records are complete and consistent; lookups fail helpfully."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from weights import REGISTRY, CheckpointRecord, UnknownCheckpointError, get_record
from weights.registry import REVISION_UNKNOWN

EXPECTED = {
    "vg-r101-c4-attr": ("detector", "unc-nlp/frcnn-vg-finetuned"),
    "lxmert-vqa": ("encoder", "unc-nlp/lxmert-vqa-uncased"),
    "lxmert-gqa": ("encoder", "unc-nlp/lxmert-gqa-uncased"),
    "lxmert-base": ("encoder", "unc-nlp/lxmert-base-uncased"),
}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_required_entries(name: str) -> None:
    record = get_record(name)
    assert (record.kind, record.hf_repo) == EXPECTED[name]
    if record.kind == "encoder":
        assert set(record.files) == {"config.json", "pytorch_model.bin"}
    else:
        assert record.files[0] == "pytorch_model.bin"


@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_every_record_is_complete(name: str) -> None:
    record = REGISTRY[name]
    assert record.name == name
    assert record.license and record.description and record.preset
    for digest in record.sha256.values():
        assert len(digest) == 64 and int(digest, 16) >= 0
    for url in record.urls.values():
        assert url.startswith(("https://", "http://"))


def test_detector_alternative_pickle() -> None:
    record = get_record("vg-r101-c4-attr")
    assert record.weights_files == ("pytorch_model.bin", "faster_rcnn_from_caffe_attr.pkl")
    assert record.urls["faster_rcnn_from_caffe_attr.pkl"].endswith(
        "/faster_rcnn_from_caffe_attr.pkl"
    )
    assert "MIT" in record.license and "CC BY 4.0" in record.license


def test_unknown_name_lists_the_valid_ones() -> None:
    with pytest.raises(UnknownCheckpointError) as info:
        get_record("lxmert-vq")
    assert isinstance(info.value, KeyError)
    message = str(info.value)
    assert message.startswith("unknown checkpoint 'lxmert-vq'")
    assert all(name in message for name in REGISTRY)


def test_records_and_registry_are_immutable() -> None:
    record = get_record("lxmert-vqa")
    with pytest.raises(dataclasses.FrozenInstanceError):
        record.name = "x"  # type: ignore[misc]
    with pytest.raises(TypeError):
        REGISTRY["x"] = record  # type: ignore[index]


@pytest.mark.parametrize(
    ("changes", "match"),
    [
        ({"kind": "tokenizer"}, "kind"),
        ({"files": ()}, "at least one file"),
        ({"hf_repo": None}, "needs a source"),
        ({"sha256": {"other.bin": "0" * 64}}, "unknown files"),
        ({"revision": ""}, "revision"),
        ({"revision": " main"}, "revision"),
    ],
)
def test_invalid_records_are_rejected(changes: dict[str, Any], match: str) -> None:
    valid = CheckpointRecord(
        name="t",
        kind="detector",
        preset="p",
        license="l",
        description="d",
        hf_repo="org/t",
        files=("pytorch_model.bin",),
    )
    with pytest.raises(ValueError, match=match):
        dataclasses.replace(valid, **changes)


@pytest.mark.parametrize("name", sorted(n for n, r in REGISTRY.items() if r.hf_repo is not None))
def test_hub_records_say_their_revision_is_unknown(name: str) -> None:
    # No commit hash can be looked up from the machines this registry is written on: the
    # records say so instead of carrying a guessed hash, and download the default branch.
    record = REGISTRY[name]
    assert record.revision == REVISION_UNKNOWN == "unknown"
    assert record.hub_revision is None


def test_a_known_revision_is_passed_on_as_it_is() -> None:
    commit = "0123456789abcdef0123456789abcdef01234567"
    record = dataclasses.replace(get_record("lxmert-vqa"), revision=commit)
    assert record.hub_revision == commit
