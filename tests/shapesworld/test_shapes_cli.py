"""The render command line: PNG and JSON round trips, bad input, and the shipped examples."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from shapesworld.__main__ import main
from shapesworld.records import scene_record
from shapesworld.scenes import make_scene
from shapesworld.vocab import ANSWERS, COLORS, SHAPES

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"

# sha256 of json.dumps(scene_record(make_scene(seed)), indent=1): the ground truth and questions
# as scenes.json holds them. A change means the same seed no longer gives the same record.
GOLDEN_RECORDS = {
    0: "5cd20505ead28f5fd9b30a28c4e4f1ac334047404acb4bb38a002e84d6d1106d",
    10_000_004: "0e1b643737826eaf189aff5f4801bc4b2d698e67bfac5892a8a78506b4032a32",
    30_000_000: "eb224b4b9e701462c1df80e01ce0ea682f97072d1b9f329de7a37b2bdacde779",
}


def _read_rgb(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


def test_render_round_trip(tmp_path):
    out = tmp_path / "nested" / "out"
    assert (
        main(["render", "--split", "val", "--count", "3", "--offset", "4", "--out", str(out)]) == 0
    )
    meta = json.loads((out / "scenes.json").read_text())
    assert meta["classes"] == list(SHAPES) and meta["attributes"] == list(COLORS)
    assert meta["answers"] == list(ANSWERS)
    assert [s["file"] for s in meta["scenes"]] == [
        "scene_000.png",
        "scene_001.png",
        "scene_002.png",
    ]
    assert sorted(p.name for p in out.iterdir()) == [
        "scene_000.png",
        "scene_001.png",
        "scene_002.png",
        "scenes.json",
    ]
    for i, record in enumerate(meta["scenes"]):
        assert record["seed"] == 10_000_004 + i
        scene = make_scene(record["seed"])
        np.testing.assert_array_equal(_read_rgb(out / record["file"]), scene.image_rgb)
        expected = json.loads(json.dumps(scene_record(scene)))
        assert {k: v for k, v in record.items() if k != "file"} == expected


@pytest.mark.parametrize("seed", sorted(GOLDEN_RECORDS))
def test_golden_records(seed):
    text = json.dumps(scene_record(make_scene(seed)), indent=1)
    assert hashlib.sha256(text.encode()).hexdigest() == GOLDEN_RECORDS[seed]


def test_render_rejects_bad_arguments(tmp_path, capsys):
    not_a_dir = tmp_path / "file.txt"
    not_a_dir.write_text("x")
    with pytest.raises(SystemExit) as err:
        main(["render", "--count", "1", "--out", str(not_a_dir)])
    assert err.value.code == 2
    assert "not a directory" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["render", "--split", "dev", "--out", str(tmp_path)])
    with pytest.raises(SystemExit):
        main(["render", "--count", "-2", "--out", str(tmp_path / "x")])
    assert not (tmp_path / "x").exists()


def test_module_entry_point(tmp_path):
    cmd = [sys.executable, "-m", "shapesworld", "render", "--count", "1", "--out", str(tmp_path)]
    done = subprocess.run(cmd, capture_output=True, text=True, check=False, timeout=120)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "scene_000.png").is_file() and (tmp_path / "scenes.json").is_file()


def test_shipped_examples_are_reproducible():
    meta = json.loads((EXAMPLES / "scenes.json").read_text())
    assert len(meta["scenes"]) == 8
    for record in meta["scenes"]:
        scene = make_scene(record["seed"])
        np.testing.assert_array_equal(_read_rgb(EXAMPLES / record["file"]), scene.image_rgb)
    # The README demo asks "what color is the circle?" about scene_000.png.
    first = meta["scenes"][0]
    assert first["file"] == "scene_000.png"
    circles = [o for o in first["objects"] if o["shape"] == "circle"]
    assert len(circles) == 1
    asked = {q["text"]: q["answer"] for q in first["questions"]}
    assert asked["what color is the circle?"] == circles[0]["color"]
