"""Lazy package exports (PEP 562), the one way a package of this project names what it exports
without importing it: each name maps to its submodule, imported on first use. So importing a
package (for a command's parser and usage errors) stays light; ``torch`` and ``transformers``
load only when a name that needs them is used.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Iterable, Mapping


def lazy_exports(
    package: str, exports: Mapping[str, str], names: Iterable[str]
) -> tuple[Callable[[str], object], Callable[[], list[str]]]:
    """The ``__getattr__`` and ``__dir__`` of ``package``: ``exports`` maps each exported name
    to the module that defines it; ``names`` is the package's ``__all__``.

    Use in a package's ``__init__.py`` (with the names imported under ``TYPE_CHECKING`` for
    type checkers)::

        __getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, __all__)
    """
    listed = frozenset(names)

    def __getattr__(name: str) -> object:
        module = exports.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        return getattr(importlib.import_module(module), name)

    def __dir__() -> list[str]:
        return sorted(set(vars(sys.modules[package])) | listed)

    return __getattr__, __dir__
