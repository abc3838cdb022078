"""Moved to :mod:`pipeline.features.store` (feature files are in pipeline/features/). This alias
keeps the old import path for one release; import from ``pipeline.features.store``."""

import sys

from pipeline.features import store as _moved

sys.modules[__name__] = _moved
