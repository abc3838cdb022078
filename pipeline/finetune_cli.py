"""Moved to :mod:`pipeline.commands.finetune.command` (console scripts are in pipeline/commands/).
This alias keeps the old import path for one release; import from
``pipeline.commands.finetune.command``."""

import sys

from pipeline.commands.finetune import command as _moved

if __name__ == "__main__":  # python -m pipeline.finetune_cli
    sys.exit(_moved.main())

sys.modules[__name__] = _moved
