"""The web page's functions (pipeline.web) with the shipped shapes models, without a server."""

from __future__ import annotations

import dataclasses
import json
import struct
import zlib
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
from PIL import Image

from detector.structures import RegionFeatures
from pipeline.extract.visualize import draw_regions, enlarged
from pipeline.web.models import (
    ModelCache,
    ModelSettings,
    check_model,
    model_choices,
    start_models,
)
from pipeline.web.service import (
    REGION_COLUMNS,
    TOP_K,
    DemoError,
    DemoService,
    Limits,
    boxes_picture,
    parse_questions,
    region_rows,
)

ROOT = Path(__file__).resolve().parents[2]
SCENE = ROOT / "examples" / "scene_000.png"
SHIPPED = ROOT / "weights" / "shipped" / "shapes-detector"
SHAPES = ModelSettings(detector="shapes-detector", encoder="shapes-lxmert")


@pytest.fixture(scope="module")
def service() -> DemoService:
    import torch

    return DemoService(models=ModelCache(device=torch.device("cpu")))


def scene_truth(name: str) -> list[dict[str, Any]]:
    """The objects examples/scenes.json records for ``name`` (drawn by shapesworld)."""
    scenes = json.loads((ROOT / "examples" / "scenes.json").read_text())["scenes"]
    return next(scene["objects"] for scene in scenes if scene["file"] == name)


def png_header_only(path: Path, width: int, height: int) -> Path:
    """A PNG whose header claims ``width`` x ``height`` RGB with almost no data: a
    decompression bomb as far as anything that trusts the header goes."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    body = zlib.compress(b"\0" * 4096)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", body) + chunk(b"IEND", b"")
    )
    return path


# -- questions ----------------------------------------------------------------------------------


def test_questions_one_per_line_blank_lines_skipped() -> None:
    text = "  what color is the circle?\n\n\thow many squares?  \n"
    assert parse_questions(text) == ["what color is the circle?", "how many squares?"]


@pytest.mark.parametrize("text", ["", "   \n\t\n", None])
def test_empty_question_is_an_error(text: str | None) -> None:
    with pytest.raises(DemoError, match="question is empty"):
        parse_questions(text)


def test_too_many_questions_is_an_error() -> None:
    with pytest.raises(DemoError, match="3 questions: ask at most 2"):
        parse_questions("a?\nb?\nc?", limit=2)


# -- answers and regions ------------------------------------------------------------------------


def test_answers_the_scene_as_recorded(service: DemoService) -> None:
    truth = scene_truth("scene_000.png")
    circle = next(o for o in truth if o["shape"] == "circle")
    count = sum(o["shape"] == "square" for o in truth)
    view = service.respond(
        SCENE,
        "what color is the circle?\nhow many squares?",
        SHAPES,
        name="scene_000.png",
        shown=36,
    )
    assert [a.question for a in view.answers] == ["what color is the circle?", "how many squares?"]
    assert view.answers[0].answers[0][0] == circle["color"]
    assert view.answers[1].answers[0][0] == str(count)
    for entry in view.answers:
        probabilities = [p for _, p in entry.answers]
        assert len(probabilities) == TOP_K
        assert probabilities == sorted(probabilities, reverse=True)
        assert 0.0 < sum(probabilities) <= 1.0 + 1e-6
    assert view.answers[0].as_json()["answers"][0] == {
        "answer": circle["color"],
        "probability": view.answers[0].answers[0][1],
    }


def test_same_as_the_library_answer(service: DemoService) -> None:
    from pipeline.api import Pipeline

    reference = Pipeline(detector="shapes-detector", encoder="shapes-lxmert", device="cpu")
    expected = reference.answer([str(SCENE)], [["what shape is yellow?"]], top_k=TOP_K)[0][0]
    view = service.respond(SCENE, "what shape is yellow?", SHAPES, name="s.png", shown=5)
    assert isinstance(expected, list)
    assert [a for a, _ in view.answers[0].answers] == [a for a, _ in expected]
    np.testing.assert_allclose(
        [p for _, p in view.answers[0].answers], [p for _, p in expected], rtol=1e-5
    )


def test_detector_runs_once_per_image_and_settings(service: DemoService, tmp_path: Path) -> None:
    first = service.respond(SCENE, "what color is the circle?", SHAPES, name="a.png", shown=3)
    again = service.respond(
        SCENE, "how many circles?\nis there a star?", SHAPES, name="b.png", shown=9
    )
    copy = tmp_path / "copy.png"
    copy.write_bytes(SCENE.read_bytes())  # same bytes elsewhere: the same image
    boxes_only = service.respond(copy, None, SHAPES, name="copy.png", shown=36)
    assert again.detection is first.detection
    assert boxes_only.detection is first.detection
    assert boxes_only.answers == []
    fewer = service.respond(
        SCENE, None, ModelSettings("shapes-detector", "shapes-lxmert", boxes=4), name="c", shown=36
    )
    assert fewer.detection is not first.detection
    assert fewer.detection.regions.num_boxes == 4


def test_region_table_against_the_vocabularies(service: DemoService) -> None:
    detection = service.detect(SCENE, SHAPES, name="scene_000.png")
    objects = (SHIPPED / "objects_vocab.txt").read_text().split("\n")
    attributes = (SHIPPED / "attributes_vocab.txt").read_text().split("\n")
    regions = detection.regions
    rows = region_rows(detection)
    assert len(rows) == regions.num_boxes and len(rows[0]) == len(REGION_COLUMNS)
    for i, row in enumerate(rows):
        assert row[0] == i
        assert row[1] == objects[int(regions.objects_id[i])].split(",")[0]
        assert row[3] == attributes[int(regions.attrs_id[i])].split(",")[0]
        assert row[2] == pytest.approx(float(regions.objects_conf[i]), abs=5e-5)
        assert row[4] == pytest.approx(float(regions.attrs_conf[i]), abs=5e-5)
        assert row[5:] == pytest.approx([float(v) for v in regions.boxes[i]], abs=0.05)
    # The detector finds the scene's yellow circle where the scene put it.
    circle = next(o for o in scene_truth("scene_000.png") if o["shape"] == "circle")
    found = [row for row in rows if row[1] == "circle" and row[3] == "yellow"]
    assert found
    x1, y1, x2, y2 = found[0][5:]
    tx1, ty1, tx2, ty2 = circle["box"]
    assert max(x1, tx1) < min(x2, tx2) and max(y1, ty1) < min(y2, ty2)


# -- the picture ----------------------------------------------------------------------------


def _subset(regions: RegionFeatures, rows: list[int]) -> RegionFeatures:
    return RegionFeatures(
        image_id=regions.image_id,
        image_h=regions.image_h,
        image_w=regions.image_w,
        boxes=regions.boxes[rows],
        features=regions.features[rows],
        objects_id=regions.objects_id[rows],
        objects_conf=regions.objects_conf[rows],
        attrs_id=regions.attrs_id[rows],
        attrs_conf=regions.attrs_conf[rows],
    )


@pytest.mark.parametrize("shown", [0, 2, 100])
def test_picture_draws_the_most_confident_boxes(service: DemoService, shown: int) -> None:
    detection = service.detect(SCENE, SHAPES, name="scene_000.png")
    regions = detection.regions
    confidences = [float(c) for c in regions.objects_conf]
    strongest = sorted(range(len(confidences)), key=lambda i: -confidences[i])[:shown]
    # 271x271: drawn on a copy enlarged to 512x512 (bilinear), boxes scaled alike.
    bigger = cv2.resize(detection.image_bgr, (512, 512), interpolation=cv2.INTER_LINEAR)
    scaled = dataclasses.replace(
        _subset(regions, strongest),
        boxes=(regions.boxes[strongest] * np.float32(512 / 271)).astype(np.float32),
        image_h=512,
        image_w=512,
    )
    expected_bgr = draw_regions(
        bigger,
        scaled,
        object_names=detection.object_names,
        attribute_names=detection.attribute_names,
    )
    picture = boxes_picture(detection, shown=shown)
    assert picture.shape == (512, 512, 3)
    np.testing.assert_array_equal(picture, expected_bgr[:, :, ::-1])
    if shown == 0:  # no box: the image itself enlarged, in RGB
        np.testing.assert_array_equal(picture, bigger[:, :, ::-1])


def test_a_large_image_is_drawn_at_its_own_size() -> None:
    image = np.zeros((600, 800, 3), np.uint8)
    region = _subset(
        RegionFeatures(
            image_id="big",
            image_h=600,
            image_w=800,
            boxes=np.array([[10, 20, 300, 400]], np.float32),
            features=np.zeros((1, 4), np.float32),
            objects_id=np.zeros(1, np.int64),
            objects_conf=np.ones(1, np.float32),
            attrs_id=np.zeros(1, np.int64),
            attrs_conf=np.ones(1, np.float32),
        ),
        [0],
    )
    assert enlarged(image, region) == (image, region)


def test_picked_box_is_highlighted(service: DemoService) -> None:
    detection = service.detect(SCENE, SHAPES, name="scene_000.png")
    regions = detection.regions
    picked = int(np.argmax(regions.objects_conf))
    plain = boxes_picture(detection, shown=0)
    lit = boxes_picture(detection, shown=0, picked=picked)
    x1, y1, x2, y2 = (round(float(v) * 512 / 271) for v in regions.boxes[picked])  # enlarged
    outside = np.ones(plain.shape[:2], dtype=bool)
    outside[max(0, y1 - 40) : y2 + 6, max(0, x1 - 6) : x2 + 6] = False  # box, line, label
    dimmed = plain[outside].astype(np.float64) * 0.35  # float rounding: within 1 level
    np.testing.assert_allclose(lit[outside], dimmed, atol=1.0)
    inside = (slice(y1 + 8, y2 - 8), slice(x1 + 8, x2 - 8))  # clear of line and label
    np.testing.assert_array_equal(lit[inside], plain[inside])
    assert not np.array_equal(lit, plain)


# -- bad input ------------------------------------------------------------------------------


def test_bad_inputs_are_errors_and_the_service_goes_on(
    service: DemoService, tmp_path: Path
) -> None:
    text = tmp_path / "notes.png"
    text.write_text("not an image at all\n")
    thin = tmp_path / "thin.png"
    Image.new("RGB", (20000, 20), (200, 30, 30)).save(thin)
    bomb = png_header_only(tmp_path / "bomb.png", 60000, 60000)
    cases = [
        (text, "what color is the circle?", "notes.png: not a recognised image format"),
        (thin, "what color is the circle?", "thin.png: aspect ratio too extreme"),
        (bomb, "what color is the circle?", "bomb.png: .*pixels"),
        (SCENE, " \n ", "question is empty"),
        (None, "what color is the circle?", "No image"),
    ]
    for path, questions, message in cases:
        name = path.name if path is not None else "image"
        with pytest.raises(DemoError, match=message):
            service.respond(path, questions, SHAPES, name=name, shown=36)
    view = service.respond(SCENE, "what color is the circle?", SHAPES, name="ok.png", shown=36)
    assert view.answers[0].answers[0][0] == "yellow"


def test_limits_of_bytes_and_pixels(tmp_path: Path) -> None:
    import torch

    size = SCENE.stat().st_size
    small = DemoService(
        models=ModelCache(device=torch.device("cpu")), limits=Limits(max_bytes=size - 1)
    )
    with pytest.raises(DemoError, match="bytes"):
        small.detect(SCENE, SHAPES, name="scene_000.png")
    few = DemoService(
        models=ModelCache(device=torch.device("cpu")), limits=Limits(max_pixels=271 * 271 - 1)
    )
    with pytest.raises(DemoError, match="pixels"):
        few.detect(SCENE, SHAPES, name="scene_000.png")


def test_unloadable_models_are_errors(service: DemoService, tmp_path: Path) -> None:
    missing = ModelSettings(detector=str(tmp_path / "nothing.safetensors"), encoder="shapes-lxmert")
    with pytest.raises(DemoError, match="Cannot load"):
        service.detect(SCENE, missing, name="scene_000.png")
    with pytest.raises(DemoError, match="No models"):
        service.detect(SCENE, ModelSettings(detector="", encoder=""), name="scene_000.png")


# -- models ---------------------------------------------------------------------------------


@pytest.fixture
def no_downloaded_weights(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An empty weights folder and hub cache, offline: only shipped models resolve."""
    monkeypatch.setenv("LXMERT_PIPELINE_WEIGHTS", str(tmp_path / "weights"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


@pytest.mark.usefixtures("no_downloaded_weights")
def test_choices_say_which_resolve_and_why_not() -> None:
    from weights.registry import REGISTRY

    detectors = model_choices("detector", ["/no/such/detector.pth"])
    names = [c.name for c in detectors]
    registered = [r.name for r in REGISTRY.values() if r.kind == "detector"]
    assert names == [*registered, "/no/such/detector.pth"]
    usable = {c.name for c in detectors if c.available}
    shipped = {r.name for r in REGISTRY.values() if r.kind == "detector" and r.shipped_dir}
    assert usable == shipped
    real = next(c for c in detectors if c.name == "vg-r101-c4-attr")
    assert "vg-r101-c4-attr" in real.summary and "\n" not in real.summary
    assert "python -m weights fetch vg-r101-c4-attr" in real.reason  # the resolver's remedy
    assert check_model("shapes-lxmert", "detector").reason == (
        "shapes-lxmert is a encoder, not a detector"
    )


@pytest.mark.usefixtures("no_downloaded_weights")
def test_defaults_missing_offer_the_shapes_pair() -> None:
    detectors, encoders = model_choices("detector"), model_choices("encoder")
    start = start_models("vg-r101-c4-attr", "lxmert-vqa", detectors, encoders)
    assert (start.detector, start.encoder) == ("shapes-detector", "shapes-lxmert")
    assert "vg-r101-c4-attr" in start.notice and "lxmert-vqa" in start.notice
    assert "python -m weights fetch vg-r101-c4-attr" in start.notice
    same = start_models("shapes-detector", "shapes-lxmert", detectors, encoders)
    assert (same.detector, same.encoder, same.notice) == ("shapes-detector", "shapes-lxmert", "")


def test_models_load_once_and_variants_are_kept_apart() -> None:
    import torch

    cache = ModelCache(device=torch.device("cpu"), max_detectors=2)
    first = cache.pipeline(SHAPES)
    assert cache.pipeline(SHAPES) is first
    five = cache.pipeline(ModelSettings("shapes-detector", "shapes-lxmert", boxes=5))
    assert five.detector is not first.detector and five.encoder is first.encoder
    assert (five.detector.config.min_boxes, five.detector.config.max_boxes) == (5, 5)
    maxclass = cache.pipeline(ModelSettings("shapes-detector", "shapes-lxmert", "max-class"))
    assert maxclass.detector.config.selection == "max-class"
    assert len([line for line in cache.loaded() if line.startswith("detector")]) == 2
    assert cache.pipeline(SHAPES) is not first  # the oldest variant was dropped, loaded again


def test_command_refuses_a_named_model_that_does_not_resolve(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pytest.importorskip("gradio")
    from pipeline.commands.demo import main

    code = main(["--detector", str(tmp_path / "none.pth"), "--encoder", "shapes-lxmert"])
    assert code == 2
    assert "--detector" in capsys.readouterr().err


def test_page_lists_unusable_models_greyed(no_downloaded_weights: None) -> None:
    pytest.importorskip("gradio")
    from pipeline.web.app import build_app, models_html

    detectors, encoders = model_choices("detector"), model_choices("encoder")
    listing = models_html([*detectors, *encoders])
    real = listing.split("<li")[1]
    assert "vg-r101-c4-attr" in real and "color:#999" in real and "not usable here" in real
    import torch

    start = start_models("vg-r101-c4-attr", "lxmert-vqa", detectors, encoders)
    app = build_app(
        DemoService(models=ModelCache(device=torch.device("cpu"))),
        start=start,
        detectors=detectors,
        encoders=encoders,
    )
    public = {fn.api_name for fn in app.fns.values() if fn.api_visibility == "public"}
    assert public == {"detect", "ask", "explain", "judge"}


@pytest.mark.usefixtures("no_downloaded_weights")
def test_notice_names_what_is_missing_and_settings_list_each_model_once() -> None:
    """Issue 32: the note read "was not found. Looked in:;" and shapes-nlvr2 was listed
    twice (an encoder, and an NLVR2 model)."""
    pytest.importorskip("gradio")
    import torch

    from pipeline.web.app import build_app
    from pipeline.web.models import nlvr2_choices

    detectors, encoders = model_choices("detector"), model_choices("encoder")
    start = start_models("vg-r101-c4-attr", "lxmert-vqa", detectors, encoders)
    assert "Looked in" not in start.notice
    assert "checkpoint 'vg-r101-c4-attr' (detector) was not found;" in start.notice
    app = build_app(
        DemoService(models=ModelCache(device=torch.device("cpu"))),
        start=start,
        detectors=detectors,
        encoders=encoders,
        nlvr2_encoders=nlvr2_choices(),
    )
    (listing,) = [
        c["props"]["value"]
        for c in app.config["components"]
        if c["type"] == "html" and "<ul>" in str(c["props"].get("value"))
    ]
    assert listing.count("<b>shapes-nlvr2</b>") == 1
    assert listing.count("<b>shapes-lxmert</b>") == 1


# -- NLVR2 ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def nlvr2_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An NLVR2 model on the shapes LXMERT (its encoder, a seeded new head), saved."""
    import torch

    from encoder.model import build_model

    torch.manual_seed(0)
    model = build_model(ROOT / "weights" / "shipped" / "shapes-lxmert", head="nlvr2")
    folder = tmp_path_factory.mktemp("nlvr2")
    model.save_pretrained(folder, safe_serialization=True)
    return folder


def test_judge_matches_the_library_and_detects_each_image_once(
    service: DemoService, nlvr2_folder: Path
) -> None:
    from pipeline.api import Pipeline

    other = ROOT / "examples" / "scene_001.png"
    statements = ["there is a yellow circle", "both images have a star"]
    reference = Pipeline(detector="shapes-detector", encoder=nlvr2_folder, device="cpu")
    expected = reference.judge([str(SCENE)], [str(other)], [statements], top_k=2)[0]
    settings = ModelSettings(detector="shapes-detector", encoder=str(nlvr2_folder))
    left, right, verdicts, timing = service.judge(
        (SCENE, "scene_000.png"), (other, "scene_001.png"), "\n".join(statements), settings
    )
    assert [v.statement for v in verdicts] == statements
    for verdict, pairs in zip(verdicts, expected, strict=True):
        assert isinstance(pairs, list)
        assert verdict.true_probability == pytest.approx(dict(pairs)[True], rel=1e-5)
        assert verdict.as_json()["true"] == (verdict.true_probability > 0.5)
    assert left is service.detect(SCENE, settings, name="again.png")
    assert right.regions.image_w == Image.open(other).size[0]
    assert timing.encoder_s is not None and timing.encoder_s > 0
    # The why view of a verdict: the library's explanation of the same pair.
    found, seconds = service.explain_pair((left, right), statements[0], None, settings)
    library = reference.explain_judgement(str(SCENE), str(other), statements[0])
    assert found.verdict == library.verdict == (verdicts[0].true_probability > 0.5)
    for side, same in ((found.left, library.left), (found.right, library.right)):
        assert sum(r.score for r in side.regions) == pytest.approx(1.0)
        assert [r.score for r in side.regions] == pytest.approx(
            [r.score for r in same.regions], abs=1e-6
        )
        assert [r.label for r in side.regions] == [r.label for r in same.regions]
    assert seconds > 0
    flipped, _ = service.explain_pair((left, right), statements[0], not found.verdict, settings)
    assert flipped.verdict is not found.verdict


def test_judge_refuses_a_qa_model_and_an_empty_statement(service: DemoService) -> None:
    other = ROOT / "examples" / "scene_001.png"
    with pytest.raises(DemoError, match="not an NLVR2 model"):
        service.judge((SCENE, "a.png"), (other, "b.png"), "there is a circle", SHAPES)
    with pytest.raises(DemoError, match="statement is empty"):
        service.judge((SCENE, "a.png"), (other, "b.png"), "\n \n", SHAPES)


# -- what a request may name (issue 26) -----------------------------------------------------


def test_gate_reads_only_stored_files_and_listed_examples(tmp_path: Path) -> None:
    from pipeline.web.gate import NOT_UPLOADED, Uploads, upload_of

    folder = tmp_path / "uploads"
    (folder / "h").mkdir(parents=True)
    stored = folder / "h" / "scene.png"
    stored.write_bytes(SCENE.read_bytes())
    outside = tmp_path / "private.png"
    outside.write_bytes(SCENE.read_bytes())
    (folder / "h" / "link.png").symlink_to(outside)
    (tmp_path / "linked").symlink_to(folder)
    uploads = Uploads.of(folder=tmp_path / "linked", examples=[str(SCENE)])
    marker = {"_type": "gradio.FileData"}
    assert upload_of({"path": str(stored), "meta": marker}, uploads) == (stored, "scene.png")
    assert upload_of({"path": str(SCENE), "meta": marker, "orig_name": "x.png"}, uploads) == (
        SCENE,
        "x.png",
    )
    assert upload_of(None, uploads) == (None, "image")
    refused: list[object] = [
        str(stored),  # a plain string, even of a stored file
        {"path": str(stored)},  # no FileData marker
        {"path": str(outside), "meta": marker},
        {"path": str(folder / "h" / "link.png"), "meta": marker},  # a link out
        {"path": str(folder / "h" / "none.png"), "meta": marker},
        {"path": str(folder / "h"), "meta": marker},
        {"path": str(folder), "meta": marker},
        {"path": str(SCENE.parent / "scene_001.png"), "meta": marker},  # beside an example
        {"path": 7, "meta": marker},
        {"path": f"{stored}\0", "meta": marker},
    ]
    for payload in refused:
        with pytest.raises(DemoError) as caught:
            upload_of(payload, uploads)
        assert str(caught.value) == NOT_UPLOADED, payload


def test_choices_and_numbers_are_those_of_the_page() -> None:
    from pipeline.web.gate import bounded, offered

    assert offered("b", ("a", "b"), what="Encoder") == "b"
    for value in ("c", "b/", None, 3):
        with pytest.raises(DemoError, match=r"^Encoder must be one of the page's choices: a, b\.$"):
            offered(value, ("a", "b"), what="Encoder")
    assert bounded(0, low=0, high=100, what="Box count") == 0
    assert bounded(100.0, low=0, high=100, what="Box count") == 100
    for number in (101, -1, 2.5, float("nan"), float("inf"), "7", True, None):
        with pytest.raises(DemoError, match=r"^Box count must be a whole number from 0 to 100\.$"):
            bounded(number, low=0, high=100, what="Box count")


def test_models_are_cached_by_identity_and_bounded() -> None:
    import torch

    cache = ModelCache(device=torch.device("cpu"), max_encoders=1)
    first = cache.pipeline(SHAPES)
    lxmert = ROOT / "weights" / "shipped" / "shapes-lxmert"
    spelt = [f"{lxmert}/", f"{lxmert}//", str(lxmert / ".." / "shapes-lxmert")]
    for encoder in spelt:
        again = cache.pipeline(ModelSettings(detector="shapes-detector", encoder=encoder))
        assert again.encoder is first.encoder, encoder
    by_path = next(SHIPPED.glob("*.safetensors"))
    assert cache.pipeline(ModelSettings(str(by_path), "shapes-lxmert")).detector is first.detector
    assert cache.loaded() == [  # one of each, however spelt
        "detector shapes-detector (bottom-up, 4..16 boxes)",
        "encoder shapes-lxmert",
    ]
    nlvr2 = cache.pipeline(ModelSettings("shapes-detector", "shapes-nlvr2"))
    assert [line for line in cache.loaded() if line.startswith("encoder")] == [
        "encoder shapes-nlvr2"
    ]  # the least recently used encoder was dropped
    assert cache.pipeline(SHAPES).encoder is not first.encoder  # loaded again
    assert nlvr2.detector is first.detector


def test_page_session_keeps_no_image(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("gradio")
    import torch

    from pipeline.web.app import DELETE_CACHE, build_app

    monkeypatch.setenv("GRADIO_TEMP_DIR", str(tmp_path))
    (tmp_path / "h").mkdir()
    stored = tmp_path / "h" / "scene.png"
    stored.write_bytes(SCENE.read_bytes())
    service = DemoService(models=ModelCache(device=torch.device("cpu")))
    detectors, encoders = model_choices("detector"), model_choices("encoder")
    start = start_models("shapes-detector", "shapes-lxmert", detectors, encoders)
    app = build_app(service, start=start, detectors=detectors, encoders=encoders)
    assert app.delete_cache == DELETE_CACHE == (600, 3600)
    detect = next(fn for fn in app.fns.values() if fn.api_name == "detect").fn
    assert detect is not None
    payload = {"path": str(stored), "meta": {"_type": "gradio.FileData"}}
    picture, _, status, kept = detect(
        payload, "shapes-detector", "shapes-lxmert", "checkpoint's own", 0, 36
    )
    assert status.startswith("scene.png: 271x271")
    assert picture.shape == (512, 512, 3)  # drawn enlarged

    def arrays(value: object) -> list[np.ndarray]:
        if isinstance(value, np.ndarray):
            return [value]
        if isinstance(value, (tuple, list)):
            return [a for item in value for a in arrays(item)]
        return [] if isinstance(value, (str, int, float, type(None))) else [np.zeros(1)]

    assert arrays(kept) == []  # the session state: a key of plain values, no image
    known = service.known(kept)
    assert known is not None and known.image_bgr.shape == (271, 271, 3)


# -- examples -------------------------------------------------------------------------------


def test_packaged_examples_from_any_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from pipeline.commands.demo import PACKAGED_EXAMPLES, example_images, main

    monkeypatch.chdir(tmp_path)
    listed = example_images(None)
    assert [Path(p).name for p in listed] == [f"scene_00{i}.png" for i in range(4)]
    for path in listed:  # the repository's scenes, whose answers examples/scenes.json records
        assert Path(path).read_bytes() == (ROOT / "examples" / Path(path).name).read_bytes()
        assert Path(path).parent == PACKAGED_EXAMPLES
    (tmp_path / "mine" / "sub").mkdir(parents=True)
    (tmp_path / "mine" / "one.png").write_bytes(SCENE.read_bytes())
    (tmp_path / "mine" / ".hidden.png").write_bytes(SCENE.read_bytes())
    (tmp_path / "mine" / "sub" / "two.png").write_bytes(SCENE.read_bytes())
    assert example_images(Path("mine")) == ["mine/one.png"]
    assert main(["--examples", "none-here", "--detector", "shapes-detector"]) == 2
    assert "--examples none-here: not a folder" in capsys.readouterr().err


def test_region_cache_is_bounded_in_bytes() -> None:
    import torch

    scene_bytes = 271 * 271 * 3
    small = DemoService(models=ModelCache(device=torch.device("cpu")), cache_bytes=scene_bytes)
    other = ROOT / "examples" / "scene_001.png"
    first = small.detect(SCENE, SHAPES, name="a.png")
    assert small.known(first.key) is first
    second = small.detect(other, SHAPES, name="b.png")
    assert small.known(second.key) is second
    assert small.known(first.key) is None  # two images would pass the byte bound
    roomy = DemoService(models=small.models, cache_bytes=2 * scene_bytes)
    kept = [roomy.detect(path, SHAPES, name=path.name) for path in (SCENE, other)]
    assert [roomy.known(d.key) for d in kept] == kept


# -- issue 32: why this answer, and the time it took ----------------------------------------


def test_explain_is_the_librarys_and_refuses_answers_the_model_lacks(
    service: DemoService,
) -> None:
    from pipeline.api import Pipeline

    detection = service.detect(SCENE, SHAPES, name="scene_000.png")
    found, seconds = service.explain(detection, "what color is the circle?", None, SHAPES)
    library = Pipeline(
        detector="shapes-detector", encoder="shapes-lxmert", device="cpu"
    ).explain_regions(detection.regions, "what color is the circle?")
    assert found.answer == library.answer == "yellow" and seconds > 0
    assert [r.score for r in found.image.regions] == pytest.approx(
        [r.score for r in library.image.regions], abs=1e-6
    )
    red, _ = service.explain(detection, "what color is the circle?", "red", SHAPES)
    assert red.answer == "red"
    with pytest.raises(DemoError, match="Answer must be one of shapes-lxmert's 22 answers"):
        service.explain(detection, "what color is the circle?", "pizza", SHAPES)
    with pytest.raises(DemoError, match="ask at most 1"):
        service.explain(detection, "a?\nb?", None, SHAPES)


def test_timing_says_cached_when_the_detector_did_not_run(service: DemoService) -> None:
    from pipeline.web.service import Timing

    first = service.respond(SCENE, "how many squares?", SHAPES, name="s.png", shown=36)
    again = service.respond(SCENE, "how many squares?", SHAPES, name="s.png", shown=36)
    assert again.timing.detector_s is None and again.timing.encoder_s is not None
    assert "time: detector cached, encoder " in again.status
    assert first.timing.encoder_s is not None
    assert Timing(0.5, 0.25, 0.125).describe() == (
        "time: detector 0.50 s, encoder 0.25 s, explanation 0.12 s"
    )


def test_relevance_picture_lights_the_top_region_and_dims_the_rest(
    service: DemoService,
) -> None:
    from pipeline.web.why import regions_html, relevance_picture, words_html

    detection = service.detect(SCENE, SHAPES, name="scene_000.png")
    found, _ = service.explain(detection, "what color is the circle?", None, SHAPES)
    picture = relevance_picture(detection.image_bgr, found.image)
    scale = 512 / 271
    assert picture.shape[1] == 512 and picture.shape[0] > 512  # enlarged, legend below
    original = cv2.resize(detection.image_bgr, (512, 512))[:, :, ::-1].astype(np.float64)
    best = found.image.top(1)[0]
    x1, y1, x2, y2 = (round(v * scale) for v in best.box)
    inside = (slice(y1 + 12, y2 - 12), slice(x1 + 12, x2 - 12))
    np.testing.assert_allclose(picture[inside], original[inside], atol=1.0)  # full brightness
    assert picture[:8, :8].mean() <= 0.2 * original[:8, :8].mean() + 1  # no region: dim
    listed = regions_html(found.image)
    assert listed.index(best.label) < listed.index(found.image.top(2)[1].label)
    assert 'class="top-region"' in listed and f'data-index="{best.index}"' in listed
    assert "rgba(255,140,0,1.00)" in words_html(found.words)  # the top word fully shaded


def test_nlvr2_verdicts_are_charts_and_explained_on_both_images(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("gradio")
    import gradio as gr
    import torch

    from pipeline.web.app import build_app
    from pipeline.web.models import nlvr2_choices
    from pipeline.web.why_view import verdict_charts

    monkeypatch.setenv("GRADIO_TEMP_DIR", str(tmp_path))
    (tmp_path / "h").mkdir()
    payloads = []
    for name in ("scene_000.png", "scene_001.png"):
        (tmp_path / "h" / name).write_bytes((ROOT / "examples" / name).read_bytes())
        payloads.append({"path": str(tmp_path / "h" / name), "meta": {"_type": "gradio.FileData"}})
    service = DemoService(models=ModelCache(device=torch.device("cpu")))
    detectors, encoders = model_choices("detector"), model_choices("encoder")
    start = start_models("shapes-detector", "shapes-lxmert", detectors, encoders)
    app = build_app(
        service,
        start=start,
        detectors=detectors,
        encoders=encoders,
        nlvr2_encoders=nlvr2_choices(),
    )
    explain = next(
        fn.fn for fn in app.fns.values() if getattr(fn.fn, "__name__", "") == "explain_verdict"
    )
    controls = ("shapes-detector", "shapes-nlvr2", "checkpoint's own", 0)
    left, right, text, status = explain(*payloads, "there is a yellow circle", "", *controls)
    assert left.shape[1] == 512 and right.shape[1] == 512  # both enlarged (271, 168 wide)
    assert "left image" in text and "right image" in text and text.count("top-region") == 2
    assert "time: detector " in status and "explanation " in status
    _, _, flipped, _ = explain(*payloads, "there is a yellow circle", "false", *controls)
    assert "\u201cfalse\u201d" in flipped
    with pytest.raises(gr.Error):
        explain(*payloads, "there is a yellow circle", "maybe", *controls)
    with pytest.raises(gr.Error):  # an encoder the NLVR2 tab does not offer
        explain(*payloads, "there is a yellow circle", "", "shapes-detector", "/etc", *controls[2:])
    charts = verdict_charts([{"statement": "s", "true": True, "probability_true": 0.75}], 3)
    assert charts[0]["value"] == {"true": 0.75, "false": 0.25} and charts[0]["label"] == "s"
    assert [c["visible"] for c in charts] == [True, False, False]


@pytest.mark.usefixtures("no_downloaded_weights")
def test_names_registered_by_the_user_are_offered(tmp_path: Path) -> None:
    """``python -m weights register`` names (original LXMERT .pth files) are in the encoder
    list after the built-in ones: a local file as usable, a URL not yet downloaded with the
    resolver's reason; a damaged registry file is a usage error naming it."""
    import torch

    from encoder.build import load_encoder
    from encoder.original import save_original, write_sidecars
    from weights.command import UsageError
    from weights.registered import register, registry_file
    from weights.registry import REGISTRY

    ours = load_encoder("shapes-lxmert", device="cpu")
    assert ours.answers is not None
    path = save_original(ours.model, tmp_path / "BEST.pth", head="qa")
    write_sidecars(ours.model, path, answers=ours.answers.answers)
    register("my-shapes-vqa", str(path), kind="vqa")
    register("my-remote", "http://127.0.0.1:9/BEST.pth", sha256="0" * 64, kind="gqa")
    choices = model_choices("encoder")
    built_in = [r.name for r in REGISTRY.values() if r.kind == "encoder"]
    assert [c.name for c in choices] == [*built_in, "my-remote", "my-shapes-vqa"]  # name order
    mine = {c.name: c for c in choices[len(built_in) :]}
    assert mine["my-shapes-vqa"].available and "registered" in mine["my-shapes-vqa"].description
    assert not mine["my-remote"].available and "my-remote" in mine["my-remote"].reason
    assert "my-shapes-vqa" not in [c.name for c in model_choices("detector")]
    service = DemoService(models=ModelCache(device=torch.device("cpu")))
    asked = dataclasses.replace(SHAPES, encoder="my-shapes-vqa")
    view = service.respond(SCENE, "what color is the circle?", asked, name="scene_000.png", shown=5)
    expected = service.respond(
        SCENE, "what color is the circle?", SHAPES, name="scene_000.png", shown=5
    )
    got, want = view.answers[0].answers, expected.answers[0].answers  # one model, converted
    assert [a for a, _ in got] == [a for a, _ in want]
    assert [p for _, p in got] == pytest.approx([p for _, p in want], rel=1e-4, abs=1e-9)
    registry_file().write_text("{not json", encoding="utf-8")
    with pytest.raises(UsageError, match=str(registry_file())):
        model_choices("encoder")
