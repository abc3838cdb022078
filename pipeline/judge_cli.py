"""Moved to :mod:`pipeline.commands.judge` (console scripts are in pipeline/commands/). This alias
keeps the old import path for one release; import from ``pipeline.commands.judge``."""

import sys

from pipeline.commands import judge as _moved

if __name__ == "__main__":  # python -m pipeline.judge_cli
    sys.exit(_moved.main())

sys.modules[__name__] = _moved
