"""setup.py ships every package of the project, and its console scripts resolve."""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TOP_LEVEL = ("detector", "encoder", "pipeline", "weights", "shapesworld")


def setup_keyword(name: str) -> object:
    tree = ast.parse((ROOT / "setup.py").read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "setup":
            for keyword in node.keywords:
                if keyword.arg == name:
                    return ast.literal_eval(keyword.value)
    raise AssertionError(f"setup.py has no {name}=")


def test_every_package_folder_is_listed() -> None:
    on_disk = {
        ".".join(init.parent.relative_to(ROOT).parts)
        for top in TOP_LEVEL
        for init in (ROOT / top).rglob("__init__.py")
    }
    assert set(setup_keyword("packages")) == on_disk  # type: ignore[arg-type]


def test_console_scripts_name_real_functions() -> None:
    entry_points = setup_keyword("entry_points")
    assert isinstance(entry_points, dict)
    scripts = entry_points["console_scripts"]
    names = {line.split("=")[0] for line in scripts}
    assert {"extract_features", "answer", "judge", "lxmert-finetune"} <= names
    for line in scripts:
        module, function = line.split("=")[1].split(":")
        assert callable(getattr(importlib.import_module(module), function)), line
