"""``python -m pipeline.merge SHARD... --out X``: the same as ``extract_features merge``."""

from __future__ import annotations

import sys
from collections.abc import Sequence

from pipeline.cli import main as _cli_main


def main(argv: Sequence[str] | None = None) -> int:
    """Merge feature files; see ``extract_features merge --help``."""
    return _cli_main(["merge", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())
