"""Moved to :mod:`pipeline.commands.demo` (console scripts are in pipeline/commands/). This alias
keeps the old import path for one release; import from ``pipeline.commands.demo``."""

import sys

from pipeline.commands import demo as _moved

if __name__ == "__main__":  # python -m pipeline.web.cli
    sys.exit(_moved.main())

sys.modules[__name__] = _moved
