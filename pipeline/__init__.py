"""The glue and the public faces: :func:`answer`, :func:`judge` (NLVR2), :class:`Pipeline`,
``extract_features``.

``from pipeline import answer, judge, Pipeline`` imports the models lazily, so the
command-line tools start without loading transformers; ``from pipeline import FeatureStore``
(random access to feature files, :mod:`pipeline.features.store`) likewise.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pipeline.api import DEFAULT_DETECTOR, DEFAULT_ENCODER, Pipeline, answer, judge
    from pipeline.features.store import FeatureStore

__all__ = ["DEFAULT_DETECTOR", "DEFAULT_ENCODER", "FeatureStore", "Pipeline", "answer", "judge"]


def __getattr__(name: str) -> Any:
    if name == "FeatureStore":
        from pipeline.features import store

        return store.FeatureStore
    if name in __all__:
        from pipeline import api

        return getattr(api, name)
    raise AttributeError(f"module 'pipeline' has no attribute {name!r}")
