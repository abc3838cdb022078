"""The model checks commands make before torch: a damaged registry of names is a usage error."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.commands.answer import main as answer_main

ROOT = Path(__file__).resolve().parents[2]


def test_a_damaged_name_registry_is_exit_2_naming_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    registry = tmp_path / "config" / "lxmert-pipeline" / "registry.json"
    registry.parent.mkdir(parents=True)
    registry.write_text("{not json")
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    image = str(ROOT / "examples" / "scene_000.png")
    argv = [image, "what color is the circle?", "--detector", "shapes-detector"]
    assert answer_main([*argv, "--encoder", "my-lxmert"]) == 2
    err = capsys.readouterr().err
    assert str(registry) in err and "not a readable registry" in err, err
