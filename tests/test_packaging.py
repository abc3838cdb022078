"""setup.py ships every package of the project, and its console scripts resolve."""

from __future__ import annotations

import importlib
import runpy
from pathlib import Path
from unittest import mock

ROOT = Path(__file__).resolve().parents[1]
TOP_LEVEL = ("detector", "encoder", "pipeline", "weights", "shapesworld")


def setup_keyword(name: str) -> object:
    """The value setup.py passes to ``setup(name=...)``, from running setup.py with a
    ``setup`` that only records its arguments."""
    arguments: dict[str, object] = {}
    with mock.patch("setuptools.setup", lambda **kwargs: arguments.update(kwargs)):
        runpy.run_path(str(ROOT / "setup.py"))
    assert name in arguments, f"setup.py has no {name}="
    return arguments[name]


def test_every_package_folder_is_listed() -> None:
    """Every folder of Python files under the top-level packages is a package that setup.py
    ships (a folder without ``__init__.py`` would be left out of the wheel)."""
    folders = {
        path.parent.relative_to(ROOT)
        for top in TOP_LEVEL
        for path in (ROOT / top).rglob("*.py")
        if "__pycache__" not in path.parts
    }
    missing = sorted(
        str(folder) for folder in folders if not (ROOT / folder / "__init__.py").exists()
    )
    assert not missing, f"folders of Python files without __init__.py: {missing}"
    assert set(setup_keyword("packages")) == {".".join(folder.parts) for folder in folders}  # type: ignore[arg-type]


def test_console_scripts_name_real_functions() -> None:
    entry_points = setup_keyword("entry_points")
    assert isinstance(entry_points, dict)
    scripts = entry_points["console_scripts"]
    names = {line.split("=")[0] for line in scripts}
    assert {"extract_features", "answer", "judge", "lxmert-finetune"} <= names
    for line in scripts:
        module, function = line.split("=")[1].split(":")
        assert callable(getattr(importlib.import_module(module), function)), line


def test_the_page_examples_are_package_data() -> None:
    """The page's gallery ships in the package (lxmert-demo works from any folder)."""
    from fnmatch import fnmatch

    package_data = setup_keyword("package_data")
    assert isinstance(package_data, dict)
    patterns = package_data["pipeline.web"]
    folder = ROOT / "pipeline" / "web"
    shipped = sorted((folder / "examples").glob("*.png"))
    assert shipped
    for image in shipped:
        relative = image.relative_to(folder).as_posix()
        assert any(fnmatch(relative, pattern) for pattern in patterns), relative


def test_install_requires_are_ranges_that_hold_the_pinned_lock() -> None:
    """Installing the package into an existing environment asks for ranges, never the exact
    pins; and every pin of the requirement files (the tested lock) lies in its range."""
    from packaging.requirements import Requirement

    ranges = {
        Requirement(line).name: Requirement(line)
        for line in [
            *setup_keyword("install_requires"),  # type: ignore[misc]
            *(line for extra in setup_keyword("extras_require").values() for line in extra),  # type: ignore[attr-defined]
        ]
    }
    for file in sorted(ROOT.glob("requirements*.txt")):
        for raw in file.read_text().splitlines():
            line = raw.split("#")[0].strip()
            if not line:
                continue
            pin = Requirement(line)
            wanted = ranges[pin.name]
            assert "==" not in str(wanted.specifier), wanted
            exact = [spec.version for spec in pin.specifier if spec.operator == "=="]
            for version in exact:
                assert wanted.specifier.contains(version, prereleases=True), (
                    file.name,
                    pin,
                    wanted,
                )
    assert str(ranges["numpy"].specifier) in (">=2.4,<3", "<3,>=2.4")
