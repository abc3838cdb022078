"""Moved to :mod:`pipeline.features.manifest` (feature files are in pipeline/features/). This alias
keeps the old import path for one release; import from ``pipeline.features.manifest``."""

import sys

from pipeline.features import manifest as _moved

sys.modules[__name__] = _moved
