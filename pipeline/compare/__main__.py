"""``python -m pipeline.compare``: the same as ``extract_features compare``."""

import sys

from pipeline.compare.command import main

sys.exit(main())
