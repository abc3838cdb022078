"""``python -m pipeline.compare``: the same as ``extract_features compare`` (an entry point:
it runs the command of :mod:`pipeline.commands.compare`)."""

import sys

from pipeline.commands.compare import main

sys.exit(main())
