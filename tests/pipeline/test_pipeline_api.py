"""answer() and Pipeline with a tiny detector and a tiny random LXMERT."""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from PIL import Image
from transformers import LxmertConfig

from detector import Detector, build_detector, get_preset
from detector.image import DEFAULT_MAX_BYTES, ImageError
from encoder.answers import AnswerTable
from encoder.build import Encoder, load_encoder
from encoder.config import EncoderConfig
from encoder.model import build_model
from encoder.nlvr2 import LxmertForNLVR2
from encoder.tokenizer import load_tokenizer
from pipeline import Pipeline, answer
from pipeline.api import default_pipeline
from pipeline.commands.answer import main as answer_main
from pipeline.extract.inputs import DuplicateIdError, list_inputs

ANSWERS = ("red", "blue", "green", "yes", "no", "2", "3")
QUESTIONS = ["what color is the cat?", "is there a cup?", "how many objects are there?"]


def tiny_lxmert_config() -> LxmertConfig:
    torch.manual_seed(0)
    return LxmertConfig(
        hidden_size=32,
        num_attention_heads=2,
        intermediate_size=64,
        l_layers=1,
        x_layers=1,
        r_layers=1,
        visual_feat_dim=get_preset("tiny").feature_dim,
        num_qa_labels=len(ANSWERS),
    )


@pytest.fixture(scope="module")
def tiny_encoder() -> Encoder:
    return Encoder(
        config=EncoderConfig(checkpoint="tiny-random"),
        model=build_model(tiny_lxmert_config(), head="qa"),
        tokenizer=load_tokenizer(),
        answers=AnswerTable(name="tiny", answers=ANSWERS),
    )


@pytest.fixture(scope="module")
def tiny_detector() -> Detector:
    return build_detector(get_preset("tiny"), seed=0).optimize_for_inference().eval()


@pytest.fixture
def counted(tiny_detector: Detector, tiny_encoder: Encoder, monkeypatch: pytest.MonkeyPatch):
    """A pipeline whose detector counts its detect() calls and the images it saw."""
    calls: list[int] = []
    original = tiny_detector.detect

    def detect(images, **kwargs):
        calls.append(len(images))
        return original(images, **kwargs)

    monkeypatch.setattr(tiny_detector, "detect", detect)
    return Pipeline(detector=tiny_detector, encoder=tiny_encoder), calls


def photo_path(photos: Path) -> Path:
    return photos / "cats" / "chelsea.png"


def test_three_questions_run_the_detector_once(counted, photos: Path) -> None:
    pipe, calls = counted
    got = answer(photo_path(photos), QUESTIONS, pipeline=pipe)
    assert calls == [1]
    assert isinstance(got, list) and len(got) == 3
    assert all(a in ANSWERS for a in got)
    # The same as LXMERT on the detector's regions, question by question.
    regions = pipe.regions([str(photo_path(photos))])[0]
    for question, given in zip(QUESTIONS, got, strict=True):
        best = pipe.encoder.answer([regions], [question], k=1)[0][0]
        assert best.answer == given


def test_top_k_gives_answers_with_probabilities(counted, photos: Path) -> None:
    pipe, _ = counted
    ranked = answer(photo_path(photos), QUESTIONS[0], top_k=3, pipeline=pipe)
    assert [type(a) for a, _ in ranked] == [str, str, str]
    probs = [p for _, p in ranked]
    assert probs == sorted(probs, reverse=True) and 0 < sum(probs) <= 1 + 1e-6
    assert ranked[0][0] == answer(photo_path(photos), QUESTIONS[0], pipeline=pipe)


def test_every_image_source_gives_the_same_regions(counted, photos: Path) -> None:
    pipe, calls = counted
    path = photo_path(photos)
    rgb = cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB)
    sources = [str(path), path.read_bytes(), Image.open(path), rgb]
    regions = pipe.regions(sources, ["path", "bytes", "pil", "array"])
    assert calls == [4]
    for region in regions[1:]:
        np.testing.assert_array_equal(region.features, regions[0].features)
        np.testing.assert_array_equal(region.boxes, regions[0].boxes)
    bgr = pipe.regions([rgb[:, :, ::-1].copy()], channel_order="bgr")[0]
    np.testing.assert_array_equal(bgr.features, regions[0].features)


def test_batched_answer_keeps_pairs_in_order(counted, photos: Path) -> None:
    pipe, calls = counted
    images = [str(photo_path(photos)), str(photos / "astronaut.jpg")]
    batched = pipe.answer(images, [QUESTIONS, QUESTIONS[1]])
    assert calls == [2]
    assert batched[0] == [pipe.answer([images[0]], [q])[0] for q in QUESTIONS]
    assert batched[1] == pipe.answer([images[1]], [QUESTIONS[1]])[0]
    with pytest.raises(TypeError, match="list of images"):
        pipe.answer(images[0], QUESTIONS)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="question"):
        pipe.answer(images, QUESTIONS)


@pytest.mark.parametrize(
    ("question", "message"),
    [
        (None, "question is None; pass the question as a string"),
        (b"is there a cup?", r"question is bytes; pass a string, e\.g\. question\.decode"),
        ("", "question is empty$"),
        (" \t\n", r"question is empty \(only whitespace\)$"),
        (["is there a cup?", ""], "question 2 is empty$"),
        (["is there a cup?", None], "question 2 is None"),
        ([b"what?"], "question 1 is bytes"),
    ],
)
def test_bad_questions_are_value_errors_before_any_detection(
    counted, photos: Path, question: object, message: str
) -> None:
    # Issue 15: an empty question was answered "no"; None and bytes gave unclear errors.
    pipe, calls = counted
    with pytest.raises(ValueError, match=message):
        answer(photo_path(photos), question, pipeline=pipe)  # type: ignore[arg-type]
    assert calls == []
    regions = pipe.regions([str(photo_path(photos))])
    with pytest.raises(ValueError, match=message):
        pipe.answer_regions(regions, [question])  # type: ignore[list-item]
    # Checked before any model is loaded: the unknown detector is never looked up.
    with pytest.raises(ValueError, match=message):
        answer(photo_path(photos), question, detector="no-such-model")  # type: ignore[arg-type]


def test_bad_question_names_its_image_when_there_are_several(counted, photos: Path) -> None:
    pipe, calls = counted
    images = [str(photo_path(photos))] * 2
    with pytest.raises(ValueError, match=r"^question 2 for image 2 is empty \(only whitespace\)$"):
        pipe.answer(images, [QUESTIONS[0], [QUESTIONS[1], "  "]])
    with pytest.raises(ValueError, match=r"^question for image 1 is None"):
        pipe.answer(images, [None, QUESTIONS[0]])  # type: ignore[list-item]
    with pytest.raises(TypeError, match="question 1 for image 2 must be a string, got int"):
        pipe.answer(images, [QUESTIONS[0], [7]])  # type: ignore[list-item]
    assert calls == []


def test_in_memory_images_are_named_by_position_and_kind(
    counted, photos: Path, tmp_path: Path
) -> None:
    # Issue 15: errors for bytes and arrays said "0: ...", naming nothing the caller passed.
    pipe, calls = counted
    path = str(photo_path(photos))
    with pytest.raises(ImageError, match=r"^image 1 \(bytes\): not a recognised image format"):
        answer(b"not an image", QUESTIONS[0], pipeline=pipe)
    with pytest.raises(ImageError, match=r"^image 1 \(numpy array\): unsupported array shape"):
        answer(np.zeros((4, 4, 5), np.uint8), QUESTIONS[0], pipeline=pipe)
    with pytest.raises(ImageError, match=r"^image 2 \(bytes\): empty input"):
        pipe.regions([path, b""])
    with pytest.raises(ImageError, match=r"^image 1 \(bytes, id 'photo-7'\): not a recognised"):
        pipe.regions([b"junk"], ["photo-7"])
    # Preprocessing errors too (tiny preset: 1x5000 resizes to 0 rows).
    with pytest.raises(ImageError, match=r"^image 2 \(numpy array\): aspect ratio too extreme"):
        pipe.regions([path, np.zeros((1, 5000, 3), np.uint8)])
    with pytest.raises(ImageError, match=r"^image 1 \(PIL image\): aspect ratio too extreme"):
        pipe.regions([Image.new("RGB", (5000, 1))])
    # A file is named by its path, whatever its position.
    bad = tmp_path / "bad.jpg"
    bad.write_text("not an image")
    with pytest.raises(ImageError, match=rf"^{bad}: not a recognised image format"):
        pipe.regions([path, bad])
    assert calls == []


def test_answer_refuses_a_huge_file_before_reading_it(
    counted, photos: Path, tmp_path: Path
) -> None:
    # Issue 15, item 6: answer() reads images through the same code as extract_features.
    pipe, calls = counted
    huge = tmp_path / "x.jpg"
    with open(huge, "wb") as handle:
        handle.truncate(3 * 10**9)  # sparse: no disk used
    with pytest.raises(ImageError, match=rf"^{huge}: 3000000000 bytes") as info:
        answer(huge, QUESTIONS[0], pipeline=pipe)
    assert f"max_bytes={DEFAULT_MAX_BYTES}" in info.value.reason
    small = photo_path(photos).stat().st_size
    with pytest.raises(ImageError, match=rf"^image 1 \(bytes\): {small} bytes .*max_bytes=100 "):
        answer(photo_path(photos).read_bytes(), QUESTIONS[0], pipeline=pipe, max_bytes=100)
    assert calls == []
    assert answer(photo_path(photos), QUESTIONS[0], pipeline=pipe, max_bytes=small) in ANSWERS


@pytest.fixture(scope="module")
def saved_models(
    tmp_path_factory: pytest.TempPathFactory, tiny_checkpoint: Path, tiny_encoder: Encoder
) -> dict[str, str]:
    """The tiny detector checkpoint and the tiny LXMERT saved with save_pretrained."""
    encoder_dir = tmp_path_factory.mktemp("lxmert")
    tiny_encoder.model.save_pretrained(encoder_dir)
    (encoder_dir / "label2ans.json").write_text(json.dumps(list(ANSWERS)))
    assert load_encoder(encoder_dir).answers.answers == ANSWERS
    return {"detector": str(tiny_checkpoint), "encoder": str(encoder_dir)}


def test_default_pipeline_is_built_once_from_files(
    saved_models: dict[str, str], photos: Path, capsys
) -> None:
    default_pipeline.cache_clear()
    try:
        models = saved_models
        first = answer(str(photo_path(photos)), QUESTIONS[0], **models)
        image_bytes = io.BytesIO(photo_path(photos).read_bytes()).getvalue()
        second = answer(image_bytes, QUESTIONS[0], **models)
        info = default_pipeline.cache_info()
        assert (info.misses, info.hits) == (1, 1)
        assert first == second and first in ANSWERS
        # The answer command reuses the same models.
        code = answer_main(
            [str(photo_path(photos)), *QUESTIONS[:2], "--top-k", "2", "--json",
             "--detector", models["detector"], "--encoder", models["encoder"]]
        )  # fmt: skip
        assert code == 0
        lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
        assert [line["question"] for line in lines] == QUESTIONS[:2]
        assert lines[0]["answers"][0]["answer"] == first
        assert default_pipeline.cache_info().misses == 1
    finally:
        default_pipeline.cache_clear()


def test_answer_command_reports_a_bad_image(
    saved_models: dict[str, str], tmp_path: Path, capsys
) -> None:
    bad = tmp_path / "bad.jpg"
    bad.write_text("not an image")
    models = ["--detector", saved_models["detector"], "--encoder", saved_models["encoder"]]
    try:
        assert answer_main([str(bad), "what?", *models]) == 2
    finally:
        default_pipeline.cache_clear()
    err = capsys.readouterr().err
    assert "answer: error" in err and "bad.jpg" in err
    assert answer_main([str(bad), "what?", "--detector", "no-such-model"]) == 2


def test_pipeline_moves_a_given_detector_with_its_settings(tiny_encoder: Encoder) -> None:
    from detector.options import InferenceOptions
    from weights.defaults import DeviceError

    detector = build_detector(get_preset("tiny"), seed=0).optimize_for_inference(
        InferenceOptions(res5_chunk=3, channels_last=True)
    )
    pipe = Pipeline(detector=detector, encoder=tiny_encoder, device="cpu")
    assert pipe.device == torch.device("cpu")
    assert pipe.detector.options.res5_chunk == 3 and pipe.detector.options.channels_last
    assert pipe.detector.requested_options.res5_chunk == 3
    if not torch.cuda.is_available():
        with pytest.raises(DeviceError, match="no CUDA device"):
            Pipeline(detector=detector, encoder=tiny_encoder, device="cuda")


@pytest.fixture
def named(tiny_detector: Detector, tiny_encoder: Encoder, monkeypatch: pytest.MonkeyPatch):
    """A pipeline whose detector records the image ids of each detect() call."""
    calls: list[list[str]] = []
    original = tiny_detector.detect

    def detect(images, **kwargs):
        calls.append([image.image_id for image in images])
        return original(images, **kwargs)

    monkeypatch.setattr(tiny_detector, "detect", detect)
    return Pipeline(detector=tiny_detector, encoder=tiny_encoder), calls


def test_records_are_named_as_extract_features_names_the_same_files(named, photos: Path) -> None:
    # Issue 29 item 6: records were "0", "1", whatever the files.
    pipe, calls = named
    paths = [photo_path(photos), photos / "astronaut.jpg"]
    # extract_features names a file given by itself by its name without the extension.
    listed = [item.image_id for path in paths for item in list_inputs([str(path)]).items]
    assert listed == ["chelsea", "astronaut"]
    regions = pipe.regions([str(paths[0]), paths[1]])
    assert [region.image_id for region in regions] == listed
    # Bytes, arrays and PIL images have no name: their 0-based position in the list.
    rgb = np.asarray(Image.open(paths[0]).convert("RGB"))
    mixed = pipe.regions([paths[1], paths[0].read_bytes(), rgb, Image.open(paths[0])])
    assert [region.image_id for region in mixed] == ["astronaut", "1", "2", "3"]
    # answer and judge name their records the same way (ids reach detect()).
    calls.clear()
    answer(paths[0], QUESTIONS[0], pipeline=pipe)
    pipe.answer([paths[1], rgb], [QUESTIONS[0], QUESTIONS[1]])
    assert calls == [["chelsea"], ["astronaut", "1"]]
    # Ids the caller gives are kept as they are.
    assert pipe.regions([paths[0]], ["mine"])[0].image_id == "mine"


def test_two_files_of_one_name_are_refused_as_extract_features_refuses_them(
    named, photos: Path, tmp_path: Path
) -> None:
    pipe, calls = named
    first, second = tmp_path / "a" / "x.png", tmp_path / "b" / "x.png"
    for path in (first, second):
        path.parent.mkdir()
        shutil.copyfile(photo_path(photos), path)
    with pytest.raises(DuplicateIdError, match=r"'x'"):  # extract_features a/x.png b/x.png
        list_inputs([str(first), str(second)])
    with pytest.raises(DuplicateIdError, match=r"image_ids=") as caught:
        pipe.regions([first, second])
    assert isinstance(caught.value, ValueError)
    assert f"'x': {first}, {second}" in str(caught.value)
    assert calls == []  # refused before any image is read
    # The same file twice is one image under one name, as extract_features lists it once.
    assert [r.image_id for r in pipe.regions([first, str(first)])] == ["x", "x"]
    # Named by the caller, the two files are fine.
    assert [r.image_id for r in pipe.regions([first, second], ["a/x", "b/x"])] == ["a/x", "b/x"]
    # answer() returns answers by position, never the records: no clash to refuse there.
    calls.clear()
    got = pipe.answer([first, second], [QUESTIONS[0], QUESTIONS[0]])
    assert calls == [["x", "x"]] and got[0] == got[1]


def test_judge_names_its_records_as_regions_does(
    tiny_detector: Detector, photos: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    nlvr2 = Encoder(
        config=EncoderConfig(checkpoint="tiny-nlvr2", head="nlvr2"),
        model=LxmertForNLVR2(tiny_lxmert_config()).eval(),
        tokenizer=load_tokenizer(),
        answers=None,
    )
    calls: list[list[str]] = []
    original = tiny_detector.detect

    def detect(images, **kwargs):
        calls.append([image.image_id for image in images])
        return original(images, **kwargs)

    monkeypatch.setattr(tiny_detector, "detect", detect)
    pipe = Pipeline(detector=tiny_detector, encoder=nlvr2)
    first, second = tmp_path / "a" / "x.png", tmp_path / "b" / "x.png"
    for path in (first, second):
        path.parent.mkdir()
        shutil.copyfile(photo_path(photos), path)
    pipe.judge([photo_path(photos)], [photo_path(photos).read_bytes()], ["a cat"])
    # Two files of one name: both records are "x" (the verdicts come back by position).
    pipe.judge([first], [second], ["a cat"])
    assert calls == [["chelsea", "1"], ["x", "x"]]
