"""A gate in the detector actors of the Ray test cluster (on its ``PYTHONPATH`` only).

With ``LXMERT_TEST_RAY_GATE`` set to a folder, every ``DetectRegions`` call of the cluster's
actors, while the file ``hold`` is in that folder, first writes ``held-PID`` there and then
waits until ``hold`` is gone. A test can so have actors certainly busy (mid-batch) when it
kills one, whatever the machine's speed, and release them when it chooses. Without
``hold`` the actors run as usual; outside the cluster the variable is unset.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import importlib.util
import os
import sys
import time
from pathlib import Path
from types import ModuleType
from typing import Any

TARGET = "pipeline.extract.engines.ray_stages"


def _gate(module: ModuleType, folder: Path) -> None:
    call = module.DetectRegions.__call__

    def held_call(self: Any, batch: Any) -> Any:
        hold = folder / "hold"
        if hold.exists():
            (folder / f"held-{os.getpid()}").write_text("")
            while hold.exists():  # a condition the test ends, not a timer
                time.sleep(0.05)
        return call(self, batch)

    module.DetectRegions.__call__ = held_call


class _GateOnImport(importlib.abc.MetaPathFinder):
    """Gates :data:`TARGET` right after it is first executed in this process."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def find_spec(self, name: str, path: Any = None, target: Any = None) -> Any:
        if name != TARGET:
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(name)
        if spec is None or spec.loader is None:
            return spec
        execute = spec.loader.exec_module
        folder = self.folder

        def exec_then_gate(module: ModuleType) -> None:
            execute(module)
            _gate(module, folder)

        spec.loader.exec_module = exec_then_gate  # type: ignore[method-assign]
        return spec


if os.environ.get("LXMERT_TEST_RAY_GATE"):
    sys.meta_path.insert(0, _GateOnImport(Path(os.environ["LXMERT_TEST_RAY_GATE"])))
