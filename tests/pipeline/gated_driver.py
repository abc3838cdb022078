"""``extract_features`` whose record sink stops after a given number of records until the
test opens a gate: a run that is certain to be midway, whatever the machine's speed.

    python gated_driver.py GATE COUNT EXTRACT_FEATURES_ARGS...

After ``COUNT`` records are written (each is on disk: the writers fsync every record), the
sink blocks reading the named pipe ``GATE``, which the test creates beforehand. The test
then stops the run (a signal, a kill) or releases it by writing one byte to the pipe. The
engines and the Ray cluster run as usual; only the driver's writing waits.
"""

from __future__ import annotations

import sys
from pathlib import Path

from pipeline.cli import main
from pipeline.engines.local import RecordSink


def _gated(gate: Path, count: int) -> None:
    put = RecordSink.put
    written = 0

    def put_then_wait(self: RecordSink, region: object) -> None:
        nonlocal written
        put(self, region)  # type: ignore[arg-type]
        written += 1
        if written == count:
            with open(gate, "rb") as pipe:  # blocks until the test writes or is gone
                pipe.read(1)

    RecordSink.put = put_then_wait  # type: ignore[method-assign]


if __name__ == "__main__":
    _gated(Path(sys.argv[1]), int(sys.argv[2]))
    sys.exit(main(sys.argv[3:]))
