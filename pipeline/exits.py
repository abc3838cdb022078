"""Moved to :mod:`pipeline.errors` (renamed). This alias keeps the old import path for one
release; import from ``pipeline.errors``."""

import sys

from pipeline import errors as _moved

sys.modules[__name__] = _moved
