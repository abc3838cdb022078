"""Moved to :mod:`pipeline.commands.extract` (console scripts are in pipeline/commands/). This alias
keeps the old import path for one release; import from ``pipeline.commands.extract``."""

import sys

from pipeline.commands import extract as _moved

if __name__ == "__main__":  # python -m pipeline.cli
    sys.exit(_moved.main())

sys.modules[__name__] = _moved
