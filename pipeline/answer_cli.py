"""Moved to :mod:`pipeline.commands.answer` (console scripts are in pipeline/commands/). This alias
keeps the old import path for one release; import from ``pipeline.commands.answer``."""

import sys

from pipeline.commands import answer as _moved

if __name__ == "__main__":  # python -m pipeline.answer_cli
    sys.exit(_moved.main())

sys.modules[__name__] = _moved
