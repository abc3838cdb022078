"""``answer --questions FILE``: JSON Lines or CSV in, one JSON line per question out, in the
file's order, on the shipped shapes-world models; every bad file is exit 2 naming the line."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from pipeline.api import Pipeline, default_pipeline
from pipeline.commands.answer import main

ROOT = Path(__file__).resolve().parents[2]
SHAPES = ["--detector", "shapes-detector", "--encoder", "shapes-lxmert", "--device", "cpu"]
QUESTIONS = ["what color is the circle?", "how many objects are there?", "is there a square?"]


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Three example scenes under images/, beside the question files."""
    root = tmp_path_factory.mktemp("questions")
    (root / "images").mkdir()
    for index in range(3):
        name = f"scene_00{index}.png"
        shutil.copyfile(ROOT / "examples" / name, root / "images" / name)
    return root


def _records(capsys: pytest.CaptureFixture[str]) -> list[dict[str, object]]:
    return [json.loads(line) for line in capsys.readouterr().out.splitlines()]


def test_json_lines_in_file_order_with_the_answers_of_single_questions(
    folder: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Interleaved images: the output keeps the file's order, the detector runs once an image.
    rows = [
        {"image": "images/scene_001.png", "question": QUESTIONS[0], "question_id": "a"},
        {"image": "images/scene_000.png", "question": QUESTIONS[1]},
        {"image": str(folder / "images" / "scene_001.png"), "question": QUESTIONS[2]},
        {"image": "images/scene_002.png", "question": QUESTIONS[0], "question_id": 7},
        {"image": "images/scene_000.png", "question": QUESTIONS[2]},
    ]
    file = folder / "questions.jsonl"
    file.write_text("\n".join(json.dumps(row) for row in rows) + "\n\n")
    calls: list[int] = []
    regions = Pipeline.regions

    def counted(self: Pipeline, images: object, **kwargs: object) -> object:
        calls.append(1)
        return regions(self, images, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(Pipeline, "regions", counted)
    assert main(["--questions", str(file), "-k", "2", *SHAPES]) == 0
    got = _records(capsys)
    assert len(calls) == 3  # scene_001 is named twice, once by absolute path
    assert [r["question_id"] for r in got] == ["a", 2, 3, 7, 5]
    assert [r["image"] for r in got] == [row["image"] for row in rows]
    assert [r["question"] for r in got] == [row["question"] for row in rows]
    pipeline = default_pipeline("shapes-detector", "shapes-lxmert", "cpu")
    for record, row in zip(got, rows, strict=True):
        path = Path(row["image"]) if Path(row["image"]).is_absolute() else folder / row["image"]
        [alone] = pipeline.answer([path], [row["question"]], top_k=2)
        answers = record["answers"]
        assert isinstance(answers, list) and len(answers) == 2
        assert [a["answer"] for a in answers] == [name for name, _ in alone]
        # LXMERT batches the file's questions of one image together: last bits may differ.
        assert [a["probability"] for a in answers] == pytest.approx([p for _, p in alone], rel=1e-4)


def test_csv_with_a_header_in_any_order_and_out_file(
    folder: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    file = folder / "questions.csv"
    file.write_text(
        'note,question,image\nx,"what color is the circle?",images/scene_000.png\n'
        'y,"is there a square?",images/scene_001.png\n'
    )
    out = folder / "answers.jsonl"
    assert main(["--questions", str(file), "--out", str(out), *SHAPES]) == 0
    assert capsys.readouterr().out == ""
    got = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["question_id"] for r in got] == [2, 3]  # the lines of the records
    assert [r["image"] for r in got] == ["images/scene_000.png", "images/scene_001.png"]
    assert all(len(r["answers"]) == 1 for r in got)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ('{"image": "images/scene_000.png", "question": "q?"}\nnot json\n', ":2: not JSON"),
        ('{"image": "images/nope.png", "question": "q?"}\n', ":1: image 'images/nope.png'"),
        ('{"image": "images/scene_000.png", "question": ""}\n', ":1: no question"),
        (
            '{"image": "images/scene_000.png", "question": "q?", "question_id": [1]}\n',
            ":1: question_id",
        ),
        ("picture,text\na.png,q?\n", "names no image or question column"),
        ("", "no questions"),
        ('{"image": "images/scene_000.png", "question": "what \\udcff?"}\n', ":1: not valid UTF-8"),
    ],
)
def test_a_bad_file_is_exit_2_naming_file_and_line(
    folder: Path, capsys: pytest.CaptureFixture[str], content: str, message: str
) -> None:
    file = folder / "bad.jsonl"
    file.write_text(content)
    assert main(["--questions", str(file), *SHAPES]) == 2
    err = capsys.readouterr().err
    assert f"--questions {file}" in err and message in err, err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--questions", "q.jsonl", "img.png"], "takes no IMAGE or QUESTION"),
        (["img.png", "q?", "--out", "x.jsonl"], "--out goes with --questions"),
        (["img.png"], "give IMAGE and at least one QUESTION"),
        (["--questions", "no-such-file.jsonl"], "no-such-file.jsonl: no such file"),
    ],
)
def test_usage_errors(argv: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main([*argv, *SHAPES]) == 2
    assert message in capsys.readouterr().err


def test_a_damaged_model_file_is_exit_2_not_an_unexpected_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Models not loadable are a usage error (exit 2), whatever is wrong with their files."""
    model = tmp_path / "shapes-lxmert"
    shutil.copytree(ROOT / "weights" / "shipped" / "shapes-lxmert", model)
    (model / "model.safetensors").write_bytes(b"\xff" * 64)  # a header length past the file
    image = str(ROOT / "examples" / "scene_000.png")
    flags = ["--detector", "shapes-detector", "--encoder", str(model), "--device", "cpu"]
    assert main([image, "what color is the circle?", *flags]) == 2
    err = capsys.readouterr().err
    assert err.startswith("answer: error: ") and "unexpected" not in err
