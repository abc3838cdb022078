"""Moved to :mod:`pipeline.features.output` (feature files are in pipeline/features/). This alias
keeps the old import path for one release; import from ``pipeline.features.output``."""

import sys

from pipeline.features import output as _moved

sys.modules[__name__] = _moved
