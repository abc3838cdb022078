"""Imports point one way (docs/architecture.md): the console scripts and the web page on top,
then the pipeline's library (API, merge and convert, the extraction run, feature files, shared
flags), then encoder and detector, with weights at the base; and no module imports itself
back through others at import time. Read from the source with ``ast``: nothing is imported."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("weights", "detector", "encoder", "pipeline", "shapesworld")

#: Module prefix -> layer; a module may import its own layer and those below, never above.
#: The longest matching prefix decides.
LAYERS: dict[str, int] = {
    "weights": 0,
    "detector": 1,
    "encoder": 2,
    "pipeline.errors": 3,
    "pipeline.flags": 3,
    "pipeline.features": 4,
    "pipeline.extract": 5,
    "pipeline": 6,  # api, merge, convert, compare, and the package's lazy exports
    "pipeline.commands": 7,
    "pipeline.web": 7,
    "shapesworld": 8,
}


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def is_shim(source: str) -> bool:
    """An old module path kept for one release: it only aliases the moved module."""
    return "sys.modules[__name__] = _moved" in source


def modules() -> dict[str, ast.Module]:
    found = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            source = path.read_text(encoding="utf-8")
            if not is_shim(source):
                found[module_name(path)] = ast.parse(source, filename=str(path))
    return found


def layer(module: str) -> int | None:
    if module.endswith(".__main__"):  # an entry point (python -m PACKAGE): the top
        return max(LAYERS.values())
    best = max(
        (p for p in LAYERS if module == p or module.startswith(p + ".")), key=len, default=None
    )
    return None if best is None else LAYERS[best]


def imported(node: ast.Import | ast.ImportFrom, known: set[str]) -> Iterator[str]:
    """The project modules an import statement names (``from a import b`` is ``a.b`` when
    ``a.b`` is a module, else ``a``)."""
    if isinstance(node, ast.Import):
        yield from (alias.name for alias in node.names if alias.name.split(".")[0] in PACKAGES)
        return
    if node.level or node.module is None or node.module.split(".")[0] not in PACKAGES:
        return
    for alias in node.names:
        child = f"{node.module}.{alias.name}"
        yield child if child in known else node.module


def runtime_imports(tree: ast.Module) -> Iterator[ast.Import | ast.ImportFrom]:
    """Imports run when the module is imported: top level, outside ``if TYPE_CHECKING:``."""
    for node in tree.body:
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node
        elif isinstance(node, (ast.If, ast.Try)) and "TYPE_CHECKING" not in ast.unparse(node)[:40]:
            for inner in ast.walk(node):
                if isinstance(inner, (ast.Import, ast.ImportFrom)):
                    yield inner


def test_every_module_has_a_layer() -> None:
    assert [name for name in modules() if layer(name) is None] == []


def test_no_module_imports_a_layer_above_its_own() -> None:
    """Lazy imports in functions and ``TYPE_CHECKING`` imports count too: a dependency is a
    dependency, whenever it is imported."""
    trees = modules()
    known = set(trees)
    upward = []
    for name, tree in trees.items():
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                for target in imported(node, known):
                    if (layer(target) or 0) > (layer(name) or 0):
                        upward.append(f"{name}:{node.lineno} imports {target}")
    assert upward == []


def test_no_import_circles() -> None:
    """At import time (top-level imports), no module reaches itself again."""
    trees = modules()
    known = set(trees)
    graph = {
        name: {t for node in runtime_imports(tree) for t in imported(node, known) if t != name}
        for name, tree in trees.items()
    }
    state: dict[str, int] = {}  # 1 on the current path, 2 done
    circles: list[list[str]] = []

    def visit(name: str, path: list[str]) -> None:
        state[name] = 1
        for target in sorted(graph.get(name, ())):
            if state.get(target) == 1:
                circles.append([*path[path.index(target) :], target])
            elif target not in state:
                visit(target, [*path, target])
        state[name] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])
    assert circles == []


def test_the_layers_see_real_modules() -> None:
    """The checks above read what they should: every prefix names a package or module."""
    names = set(modules())
    assert all(any(n == p or n.startswith(p + ".") for n in names) for p in LAYERS)
