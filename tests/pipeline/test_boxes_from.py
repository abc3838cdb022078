"""extract_features --boxes-from and Pipeline(boxes=...) on real photos with the tiny preset."""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from transformers import LxmertConfig

from detector import RegionFeatures, build_detector, get_preset, load_detector
from encoder.answers import AnswerTable
from encoder.build import Encoder
from encoder.config import EncoderConfig
from encoder.model import build_model
from encoder.tokenizer import load_tokenizer
from pipeline import Pipeline
from pipeline.commands.extract import main
from pipeline.extract.boxes_file import coco_image_id, read_boxes_file
from pipeline.features.manifest import manifest_path, read_manifest
from pipeline.features.output import read_features

IDS = ["astronaut", "cats/chelsea", "coffee", "gray/camera"]


def extract(*args: object) -> int:
    return main([str(arg) for arg in args])


def records(path: Path) -> dict[str, RegionFeatures]:
    return {region.image_id: region for region in read_features(path)}


def photo_size(photos: Path, image_id: str) -> tuple[int, int]:
    """(h, w) of a photo, read here with OpenCV (none of them has an EXIF orientation)."""
    image = cv2.imread(str(next(photos.glob(f"{image_id}.*"))), cv2.IMREAD_UNCHANGED)
    return int(image.shape[0]), int(image.shape[1])


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory, photos: Path, tiny_checkpoint: Path):
    """Bottom-up runs over the photos, to TSV and to HDF5: {"tsv": path, "h5": path}."""
    folder = tmp_path_factory.mktemp("bottom-up")
    outputs = {"tsv": folder / "ref.tsv", "h5": folder / "ref.h5"}
    for out in outputs.values():
        assert extract(photos, "--out", out, "--detector", tiny_checkpoint, "-q") == 0
    return outputs


def assert_reproduces(got: RegionFeatures, ref: RegionFeatures) -> None:
    """Same boxes and ids; features within 1e-5 relative; confidences as close."""
    assert (got.image_h, got.image_w, got.num_boxes) == (ref.image_h, ref.image_w, ref.num_boxes)
    np.testing.assert_array_equal(got.boxes, ref.boxes)
    np.testing.assert_array_equal(got.objects_id, ref.objects_id)
    np.testing.assert_array_equal(got.attrs_id, ref.attrs_id)
    scale = float(np.abs(ref.features).max())
    np.testing.assert_allclose(got.features, ref.features, rtol=1e-5, atol=1e-5 * scale)
    np.testing.assert_allclose(got.objects_conf, ref.objects_conf, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(got.attrs_conf, ref.attrs_conf, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize(("source", "output"), [("tsv", "given.tsv"), ("h5", "given.h5")])
def test_a_runs_own_output_as_boxes_reproduces_it(
    runs, photos: Path, tiny_checkpoint: Path, tmp_path: Path, source: str, output: str
) -> None:
    out = tmp_path / output
    code = extract(
        photos, "--out", out, "--detector", tiny_checkpoint, "--boxes-from", runs[source], "-q"
    )
    assert code == 0
    reference, got = records(runs[source]), records(out)
    assert list(got) == IDS == list(reference)
    for image_id in IDS:
        assert_reproduces(got[image_id], reference[image_id])

    manifest = read_manifest(manifest_path(out))
    digest = hashlib.sha256(runs[source].read_bytes()).hexdigest()
    assert manifest["given_boxes"]["path"] == str(runs[source])
    assert manifest["given_boxes"]["sha256"] == digest
    assert manifest["given_boxes"]["kind"] == {"tsv": "obj36-tsv", "h5": "hdf5"}[source]
    assert manifest["settings"]["boxes_sha256"] == digest
    detected = read_manifest(manifest_path(runs[source]))
    assert detected["given_boxes"] is None
    assert detected["settings"]["boxes_sha256"] is None


def test_json_boxes_in_order_clipped_with_failures_named(
    photos: Path, tiny_checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    h, w = photo_size(photos, "astronaut")
    given = {
        "astronaut": [[w - 40, 10, w + 30, 80], [0, 0, 50, 60], [-9, h / 2, 30, h + 5]],
        "cats/chelsea": [[0, 0, 40, 40], [20, 30, 20, 90]],  # box 1: x2 == x1
        "coffee": [[1, 2, 30, float("nan")]],
        "unused-1": [[0, 0, 1, 1]],
        "unused-2": [],
    }
    boxes_file = tmp_path / "boxes.json"
    boxes_file.write_text(json.dumps(given))  # NaN is written as JSON's NaN literal
    out = tmp_path / "out.h5"
    code = extract(photos, "--out", out, "--detector", tiny_checkpoint, "--boxes-from", boxes_file)
    err = capsys.readouterr().err
    assert code == 1
    got = records(out)
    assert list(got) == ["astronaut"]
    expected = np.clip(
        np.array(given["astronaut"], np.float32), 0, np.array([w, h, w, h], np.float32)
    )
    np.testing.assert_array_equal(got["astronaut"].boxes, expected)
    direct = load_detector(str(tiny_checkpoint)).regions(
        [str(photos / "astronaut.jpg")], ["astronaut"], boxes=[expected]
    )[0]
    np.testing.assert_array_equal(got["astronaut"].features, direct.features)

    failures = {f["image_id"]: f["reason"] for f in read_manifest(manifest_path(out))["failures"]}
    assert set(failures) == {"cats/chelsea", "coffee", "gray/camera"}
    assert (
        f"boxes file {boxes_file}, entry 'cats/chelsea': box 1 [20, 30, 20, 90] is degenerate"
        in (failures["cats/chelsea"])
    )
    assert f"boxes file {boxes_file}, entry 'coffee': box 0" in failures["coffee"]
    assert "NaN or infinite" in failures["coffee"]
    assert f"boxes file {boxes_file} has no entry for 'gray/camera'" in failures["gray/camera"]
    assert f"2 ids in the boxes file {boxes_file} are not among the inputs" in err
    assert "'unused-1', 'unused-2'" in err


def coco_file(path: Path, photos: Path) -> dict:
    """COCO annotations for two photos (one without annotations) and two images not among
    the inputs, with file names in folders."""
    h, w = photo_size(photos, "coffee")
    data = {
        "info": {"description": "test"},
        "images": [
            {"id": 7, "file_name": "val/coffee.jpg", "height": h, "width": w},
            {"id": 8, "file_name": "val/astronaut.jpg"},
            {"id": 9, "file_name": "val/COCO_val2014_000000000042.jpg"},
            {"id": "x", "file_name": "other.png"},
        ],
        "annotations": [
            {"id": 1, "image_id": 7, "bbox": [10.5, 20, 100, 50], "category_id": 3},
            {"id": 2, "image_id": 9, "bbox": [0, 0, 5, 5], "category_id": 1},
            {"id": 3, "image_id": 7, "bbox": [w - 20, 0, 60, h], "category_id": 2},
            {"id": 4, "image_id": 7, "bbox": [0, 0, 30, 30], "category_id": 2},
        ],
    }
    path.write_text(json.dumps(data))
    return data


def test_coco_annotations_give_xyxy_boxes_per_image_extra_images_counted(
    photos: Path, tiny_checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = coco_file(tmp_path / "instances.json", photos)
    h, w = photo_size(photos, "coffee")
    expected = []
    for annotation in data["annotations"]:  # file order, image 7 only, xywh -> xyxy, clipped
        if annotation["image_id"] == 7:
            x, y, bw, bh = annotation["bbox"]
            expected.append([max(x, 0), max(y, 0), min(x + bw, w), min(y + bh, h)])
    out = tmp_path / "coco.tsv"
    code = extract(
        photos / "coffee.jpg",
        photos / "astronaut.jpg",
        "--out",
        out,
        "--detector",
        tiny_checkpoint,
        "--boxes-from",
        tmp_path / "instances.json",
    )
    err = capsys.readouterr().err
    assert code == 1  # astronaut has no annotations
    got = records(out)
    assert list(got) == ["coffee"]
    np.testing.assert_array_equal(got["coffee"].boxes, np.array(expected, np.float32))
    assert got["coffee"].num_boxes == 3
    failures = read_manifest(manifest_path(out))["failures"]
    assert [f["image_id"] for f in failures] == ["astronaut"]
    assert "entry 'astronaut': no boxes given" in failures[0]["reason"]
    assert "2 ids in the boxes file" in err and "not among the inputs" in err
    assert "'COCO_val2014_000000000042', 'other'" in err


def test_coco_image_ids_are_file_name_stems() -> None:
    assert coco_image_id("COCO_val2014_000000000042.jpg") == "COCO_val2014_000000000042"
    assert coco_image_id("val2014/a.b.png") == "a.b"
    assert coco_image_id("C:\\data\\img.jpg") == "img"


def test_a_recorded_image_size_that_differs_fails_that_image(
    photos: Path, tiny_checkpoint: Path, tmp_path: Path
) -> None:
    data = coco_file(tmp_path / "instances.json", photos)
    h, w = photo_size(photos, "coffee")
    data["images"][0].update(height=w, width=h)  # rotated
    (tmp_path / "instances.json").write_text(json.dumps(data))
    out = tmp_path / "out.tsv"
    args = (
        "--out",
        out,
        "--detector",
        tiny_checkpoint,
        "--boxes-from",
        tmp_path / "instances.json",
    )
    assert extract(photos / "coffee.jpg", *args, "-q") == 3  # every input failed
    reason = read_manifest(manifest_path(out))["failures"][0]["reason"]
    assert f"entry 'coffee': the file records a {h}x{w} image, but this image is {w}x{h}" in reason


def corrupt_tsv(source: Path, target: Path) -> None:
    """A copy of ``source`` whose second line has a truncated boxes field."""
    lines = source.read_bytes().split(b"\r\n")
    fields = lines[1].split(b"\t")
    fields[8] = fields[8][:-8]
    lines[1] = b"\t".join(fields)
    target.write_bytes(b"\r\n".join(lines))


BAD_JSON = {
    "malformed.json": ('{"astronaut": [[1, 2, 3, 4]],}', "not valid JSON", "line 1, column 30"),
    "short-box.json": ('{"astronaut": [[1, 2, 3]]}', "entry 'astronaut', box 0 is [1, 2, 3]", ""),
    "not-number.json": ('{"coffee": [[1, 2, "3", 4]]}', "entry 'coffee', box 0", "expected"),
    "not-list.json": ('{"coffee": {"x": 1}}', "entry 'coffee' is", "a list of boxes"),
    "top-list.json": ("[[1, 2, 3, 4]]", "the top level is a JSON list", ""),
    "twice.json": ('{"coffee": [], "coffee": [[1, 2, 3, 4]]}', "'coffee' appears twice", ""),
    "negative.json": (
        '{"images": [{"id": 1, "file_name": "coffee.jpg"}], '
        '"annotations": [{"id": 5, "image_id": 1, "bbox": [1, 2, -3, 4]}]}',
        "annotations[0] (id 5), bbox [1, 2, -3, 4] has a negative size",
        "",
    ),
    "unknown-image.json": (
        '{"images": [{"id": 1, "file_name": "coffee.jpg"}], '
        '"annotations": [{"id": 5, "image_id": 2, "bbox": [1, 2, 3, 4]}]}',
        "annotations[0] (id 5) refers to image_id 2, which no entry of 'images' has",
        "",
    ),
    "same-stem.json": (
        '{"images": [{"id": 1, "file_name": "a/coffee.jpg"}, {"id": 2, "file_name": '
        '"b/coffee.png"}], "annotations": []}',
        "images[1] ('b/coffee.png') and images[0] have the same image id 'coffee'",
        "",
    ),
}


@pytest.mark.parametrize("name", sorted([*BAD_JSON, "bad-line.tsv", "boxes.txt", "absent.json"]))
def test_a_malformed_boxes_file_is_refused_before_any_model_loads(
    name: str,
    runs,
    photos: Path,
    tiny_checkpoint: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    path = tmp_path / name
    if name in BAD_JSON:
        path.write_text(BAD_JSON[name][0])
        expected = BAD_JSON[name][1:]
    elif name == "bad-line.tsv":
        corrupt_tsv(runs["tsv"], path)
        expected = ("line 2: not a complete obj36 TSV record", "")
    elif name == "boxes.txt":
        path.write_text("{}")
        expected = ("unknown boxes file format", "")
    else:
        expected = ("cannot read the boxes file", "No such file")
    out = tmp_path / "out.tsv"
    code = extract(photos, "--out", out, "--detector", tiny_checkpoint, "--boxes-from", path)
    err = capsys.readouterr().err
    assert code == 2
    assert f"--boxes-from: {path}: " in err
    assert all(part in err for part in expected), err
    assert not out.exists() and not manifest_path(out).exists()


def test_given_boxes_exclude_box_counts(photos: Path, tmp_path: Path, capsys) -> None:
    (tmp_path / "b.json").write_text("{}")
    for flags in (["--boxes", "400"], ["--min-boxes", "2"], ["--max-boxes", "3"]):
        code = extract(
            photos, "--out", tmp_path / "o.tsv", "--boxes-from", tmp_path / "b.json", *flags
        )
        assert code == 2
        assert f"{flags[0]} (the detected box count) does not apply" in capsys.readouterr().err


def test_resume_of_given_boxes_skips_the_box_count_rule(
    photos: Path, tiny_checkpoint: Path, tmp_path: Path
) -> None:
    boxes = tmp_path / "b.json"
    boxes.write_text(json.dumps({image_id: [[0, 0, 20, 20]] for image_id in IDS}))
    out = tmp_path / "out.tsv"
    args = ("--out", out, "--detector", tiny_checkpoint, "--boxes-from", boxes, "-q")
    assert extract(photos, *args, "--limit", "2") == 0
    manifest_path(out).unlink()  # a plain TSV: resume checks each record against the run
    # One box per record, below the preset's min_boxes (5): fine with given boxes.
    assert extract(photos, *args, "--resume") == 0
    got = records(out)
    assert list(got) == IDS and all(region.num_boxes == 1 for region in got.values())
    # Its manifest now records the boxes file: resuming without it is refused.
    assert extract(photos, "--out", out, "--detector", tiny_checkpoint, "--resume", "-q") == 2


def test_read_boxes_file_hashes_and_freezes(tmp_path: Path) -> None:
    text = '{"a": [[1, 2, 3, 4], [0.5, 0, 9, 9]], "b": []}'
    (tmp_path / "b.json").write_text(text)
    boxes = read_boxes_file(tmp_path / "b.json")
    assert boxes.sha256 == hashlib.sha256(text.encode()).hexdigest()
    assert boxes.kind == "json"
    assert boxes.boxes["a"].dtype == np.float32
    assert boxes.boxes["a"].tolist() == [[1, 2, 3, 4], [0.5, 0, 9, 9]]
    assert boxes.boxes["b"].shape == (0, 4)
    with pytest.raises(TypeError):
        boxes.boxes["c"] = np.zeros((1, 4), np.float32)
    with pytest.raises(ValueError):
        boxes.boxes["a"][0, 0] = 7


# --- Python API ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def pipeline() -> Pipeline:
    torch.manual_seed(0)
    config = LxmertConfig(
        hidden_size=32,
        num_attention_heads=2,
        intermediate_size=64,
        l_layers=1,
        x_layers=1,
        r_layers=1,
        visual_feat_dim=get_preset("tiny").feature_dim,
        num_qa_labels=3,
    )
    encoder = Encoder(
        config=EncoderConfig(checkpoint="tiny-random"),
        model=build_model(config, head="qa"),
        tokenizer=load_tokenizer(),
        answers=AnswerTable(name="tiny", answers=("yes", "no", "red")),
    )
    detector = build_detector(get_preset("tiny"), seed=0).optimize_for_inference()
    return Pipeline(detector=detector, encoder=encoder, device="cpu")


def test_pipeline_regions_and_answer_with_boxes(pipeline: Pipeline, photos: Path) -> None:
    images = [str(photos / "coffee.jpg"), str(photos / "astronaut.jpg")]
    boxes = [
        np.array([[0, 0, 60, 40], [10, 10, 90, 90]], np.float32),
        torch.tensor([[5.0, 5, 50, 50]]),
    ]
    regions = pipeline.regions(images, ["c", "a"], boxes=boxes)
    direct = pipeline.detector.regions(images, ["c", "a"], boxes=boxes)
    for region, expected in zip(regions, direct, strict=True):
        assert region.num_boxes == expected.num_boxes
        np.testing.assert_array_equal(region.features, expected.features)
    np.testing.assert_array_equal(regions[1].boxes, [[5, 5, 50, 50]])
    questions = ["is there a cup?", ["what color?", "is it red?"]]
    answers = pipeline.answer(images, questions, top_k=3, boxes=boxes)
    assert answers == pipeline.answer_regions(regions, questions, top_k=3)
    with pytest.raises(ValueError, match=r"image 'a': box 0 .* is degenerate"):
        pipeline.regions(images, ["c", "a"], boxes=[boxes[0], np.array([[9, 9, 9, 20]])])


def test_tsv_source_copies_keep_the_same_sha(runs, tmp_path: Path) -> None:
    copy = tmp_path / "copy.tsv"
    shutil.copyfile(runs["tsv"], copy)
    first, second = read_boxes_file(runs["tsv"]), read_boxes_file(copy)
    assert first.sha256 == second.sha256 == hashlib.sha256(copy.read_bytes()).hexdigest()
    assert first.kind == "obj36-tsv"
    assert list(first.boxes) == IDS
    for image_id, region in records(runs["tsv"]).items():
        np.testing.assert_array_equal(first.boxes[image_id], region.boxes)
        assert first.image_sizes[image_id] == (region.image_h, region.image_w)


# --- COCO box conventions (--coco-boxes) ----------------------------------------------------


def test_coco_boxes_inclusive_subtracts_one_and_other_kinds_record_none(
    photos: Path, tmp_path: Path
) -> None:
    coco_file(tmp_path / "instances.json", photos)
    exclusive = read_boxes_file(tmp_path / "instances.json")
    inclusive = read_boxes_file(tmp_path / "instances.json", coco_boxes="inclusive")
    # annotation 1: bbox [10.5, 20, 100, 50]
    assert exclusive.boxes["coffee"][0].tolist() == [10.5, 20, 110.5, 70]
    assert inclusive.boxes["coffee"][0].tolist() == [10.5, 20, 109.5, 69]
    np.testing.assert_array_equal(
        inclusive.boxes["coffee"][:, 2:], exclusive.boxes["coffee"][:, 2:] - 1
    )
    assert (exclusive.coco_boxes, inclusive.coco_boxes) == ("exclusive", "inclusive")
    assert inclusive.to_manifest()["coco_boxes"] == "inclusive"
    (tmp_path / "b.json").write_text('{"coffee": [[1, 2, 3, 4]]}')
    plain = read_boxes_file(tmp_path / "b.json", coco_boxes="inclusive")
    assert plain.coco_boxes is None and plain.boxes["coffee"].tolist() == [[1, 2, 3, 4]]


def test_coco_boxes_is_recorded_and_resume_refuses_the_other_convention(
    photos: Path, tiny_checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    coco_file(tmp_path / "instances.json", photos)
    out = tmp_path / "inclusive.tsv"
    args = ("--out", out, "--detector", tiny_checkpoint, "--boxes-from",
            tmp_path / "instances.json", "-q")  # fmt: skip
    assert extract(photos / "coffee.jpg", *args, "--coco-boxes", "inclusive") == 0
    manifest = read_manifest(manifest_path(out))
    assert manifest["settings"]["coco_boxes"] == "inclusive"
    assert manifest["given_boxes"]["coco_boxes"] == "inclusive"
    assert records(out)["coffee"].boxes[0].tolist() == [10.5, 20, 109.5, 69]
    capsys.readouterr()
    assert extract(photos / "coffee.jpg", *args, "--resume") == 2  # default: exclusive
    assert "coco_boxes" in capsys.readouterr().err


def test_a_manifest_from_before_coco_boxes_reads_as_exclusive() -> None:
    from pipeline.features.manifest import recorded_settings

    old = {"settings": {"boxes_sha256": "ab"}, "given_boxes": {"kind": "coco"}}
    assert recorded_settings(old)["coco_boxes"] == "exclusive"
    assert recorded_settings({"settings": {}, "given_boxes": None})["coco_boxes"] is None


# --- boxes reaching outside the image: clipped and counted (default), or --no-clip ----------


@pytest.fixture
def run_log(caplog: pytest.LogCaptureFixture) -> Iterator[pytest.LogCaptureFixture]:
    """The run's log: the ``pipeline`` logger does not propagate, so listen to it directly."""
    logger = logging.getLogger("pipeline")
    logger.addHandler(caplog.handler)
    try:
        yield caplog
    finally:
        logger.removeHandler(caplog.handler)


def outside_boxes(photos: Path, path: Path) -> dict[str, list[list[float]]]:
    """Five boxes over the four photos, two of them reaching outside their image: one in
    astronaut (the first image), one in coffee (the third), written to ``path`` as JSON."""
    h, w = photo_size(photos, "astronaut")
    given = {
        "astronaut": [[10, 20, 120, 140], [w - 50, h - 40, w + 25, h + 10]],
        "cats/chelsea": [[5, 5, 60, 70]],
        "coffee": [[-12.5, 30, 80, 90]],
        "gray/camera": [[0, 0, 40, 50]],
    }
    path.write_text(json.dumps(given))
    return given


@pytest.mark.parametrize("output", ["clip.tsv", "clip.h5"])
def test_clipped_boxes_are_counted_in_the_manifest_also_after_a_resume(
    photos: Path,
    tiny_checkpoint: Path,
    tmp_path: Path,
    run_log: pytest.LogCaptureFixture,
    output: str,
) -> None:
    outside_boxes(photos, tmp_path / "boxes.json")
    out = tmp_path / output
    args = ("--out", out, "--detector", tiny_checkpoint, "--boxes-from", tmp_path / "boxes.json")
    assert extract(photos, *args, "--limit", "2", "-q") == 0
    manifest = read_manifest(manifest_path(out))
    assert manifest["given_boxes"]["clipped_boxes"] == 1  # astronaut's second box
    assert manifest["given_boxes"]["clip"] is True and manifest["settings"]["clip"] is True
    assert "1 given box(es) reached outside their image and were clipped" in run_log.text
    run_log.clear()

    # As a killed run leaves it: the manifest still says running, with no count yet. The
    # resume recounts the records already there rather than trusting the manifest.
    manifest.update(status="running", given_boxes={**manifest["given_boxes"], "clipped_boxes": 0})
    manifest_path(out).write_text(json.dumps(manifest))
    assert extract(photos, *args, "--resume", "-q") == 0
    assert read_manifest(manifest_path(out))["given_boxes"]["clipped_boxes"] == 2
    assert "2 given box(es) reached outside" in run_log.text
    assert list(records(out)) == IDS
    assert extract(photos, *args, "--resume", "-q") == 0  # nothing left to do
    assert read_manifest(manifest_path(out))["given_boxes"]["clipped_boxes"] == 2


def test_the_count_reads_the_journal_a_killed_hdf5_run_leaves(
    photos: Path, tiny_checkpoint: Path, tmp_path: Path
) -> None:
    outside_boxes(photos, tmp_path / "boxes.json")
    boxes = ("--detector", tiny_checkpoint, "--boxes-from", tmp_path / "boxes.json", "-q")
    assert extract(photos, "--out", tmp_path / "first.tsv", *boxes, "--limit", "2") == 0
    out = tmp_path / "out.h5"
    # A run killed before its first fold leaves only the journal (an obj36 TSV) beside out.h5.
    shutil.copyfile(tmp_path / "first.tsv", tmp_path / "out.h5.journal.tsv")
    assert extract(photos, "--out", out, *boxes, "--resume") == 0
    assert list(records(out)) == IDS
    manifest = read_manifest(manifest_path(out))
    assert manifest["counts"]["already_done"] == 2
    assert manifest["given_boxes"]["clipped_boxes"] == 2


def test_no_clip_pools_the_given_boxes_and_writes_them_unclipped(
    photos: Path,
    tiny_checkpoint: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    run_log: pytest.LogCaptureFixture,
) -> None:
    given = outside_boxes(photos, tmp_path / "boxes.json")
    out = tmp_path / "no-clip.tsv"
    args = ("--out", out, "--detector", tiny_checkpoint, "--boxes-from", tmp_path / "boxes.json")
    inputs = (photos / "astronaut.jpg", photos / "coffee.jpg")
    assert extract(*inputs, *args, "--no-clip", "-q") == 0
    assert "clipped" not in run_log.text
    got = records(out)
    detector = load_detector(str(tiny_checkpoint))
    for image_id in ("astronaut", "coffee"):
        boxes = np.array(given[image_id], np.float32)
        np.testing.assert_array_equal(got[image_id].boxes, boxes)  # not clipped
        direct = detector.regions([str(next(photos.glob(f"{image_id}.*")))], boxes=[boxes])[0]
        unclipped = detector.regions(
            [str(next(photos.glob(f"{image_id}.*")))], boxes=[boxes], clip=False
        )[0]
        np.testing.assert_array_equal(got[image_id].features, unclipped.features)
        assert not np.array_equal(got[image_id].features, direct.features)
    manifest = read_manifest(manifest_path(out))
    assert manifest["settings"]["clip"] is False
    assert manifest["given_boxes"]["clip"] is False
    assert manifest["given_boxes"]["clipped_boxes"] == 0

    assert extract(*inputs, *args, "--resume", "-q") == 2  # clipped records would mix in
    err = capsys.readouterr().err
    assert "clip (given boxes clipped to the image" in err and "true vs false" in err


def test_merge_refuses_clipped_and_unclipped_records(
    photos: Path, tiny_checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    outside_boxes(photos, tmp_path / "boxes.json")
    args = ("--detector", tiny_checkpoint, "--boxes-from", tmp_path / "boxes.json", "-q")
    first, second = tmp_path / "a.tsv", tmp_path / "b.tsv"
    assert extract(photos / "astronaut.jpg", "--out", first, *args) == 0
    assert extract(photos / "coffee.jpg", "--out", second, *args, "--no-clip") == 0
    capsys.readouterr()
    assert main(["merge", str(first), str(second), "--out", str(tmp_path / "all.tsv")]) == 2
    assert "clip (given boxes clipped" in capsys.readouterr().err


def test_no_clip_needs_boxes_from(photos: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "o.tsv"
    assert extract(photos, "--out", out, "--no-clip") == 2
    err = capsys.readouterr().err
    assert "--no-clip" in err and "--boxes-from" in err
    assert not out.exists() and not manifest_path(out).exists()


def test_the_ray_engine_counts_the_records_it_writes(photos: Path, tmp_path: Path) -> None:
    """The driver of ``--engine ray`` writes what the actors send back: it counts as the local
    engine does (the end-to-end Ray runs are in test_ray_engine.py)."""
    pytest.importorskip("ray.data")
    from pipeline.extract.engines.ray import _put
    from pipeline.extract.plan import RunStats

    outside_boxes(photos, tmp_path / "boxes.json")
    h, w = photo_size(photos, "astronaut")
    written: list[str] = []

    class Sink:
        def put(self, region: RegionFeatures) -> None:
            written.append(region.image_id)

    region = RegionFeatures(
        image_id="astronaut",
        image_h=h,
        image_w=w,
        boxes=np.zeros((2, 4), np.float32),
        features=np.zeros((2, 8), np.float32),
        objects_id=np.zeros(2, np.int64),
        objects_conf=np.zeros(2, np.float32),
        attrs_id=np.zeros(2, np.int64),
        attrs_conf=np.zeros(2, np.float32),
    )
    stats = RunStats()
    clipping = read_boxes_file(tmp_path / "boxes.json")
    _put(region, sink=Sink(), stats=stats, boxes=clipping)  # type: ignore[arg-type]
    assert (stats.written, stats.clipped_boxes) == (1, 1)
    unclipped = read_boxes_file(tmp_path / "boxes.json", clip=False)
    _put(region, sink=Sink(), stats=stats, boxes=unclipped)  # type: ignore[arg-type]
    assert (stats.written, stats.clipped_boxes) == (2, 1)
    assert written == ["astronaut", "astronaut"]
