"""``extract_features`` whose record sink stops after a given number of records until the
test opens a gate: a run that is certain to be midway, whatever the machine's speed.

    python gated_driver.py GATE COUNT EXTRACT_FEATURES_ARGS...

After ``COUNT`` records are written (each is on disk: the writers fsync every record), the
sink blocks opening the named pipe ``GATE`` (:func:`gated_command` creates it). The test
then stops the run (a signal, a kill) or lets it go on with :func:`open_gate`. The engines
(local, or the Ray cluster) run as usual; only the process's writing waits.
"""

from __future__ import annotations

import errno
import os
import subprocess
import sys
import time
from pathlib import Path


def gated_command(gate: Path, count: int, *args: object) -> list[str]:
    """The command of an ``extract_features`` run held after ``count`` records; makes the
    named pipe ``gate`` (which must not exist)."""
    os.mkfifo(gate)
    return [sys.executable, str(Path(__file__)), str(gate), str(count), *map(str, args)]


def open_gate(gate: Path, run: subprocess.Popen[str]) -> None:
    """Let ``run`` go on past its gate, once it waits there (or has ended)."""
    while run.poll() is None:
        try:
            fd = os.open(gate, os.O_WRONLY | os.O_NONBLOCK)
        except OSError as error:
            if error.errno != errno.ENXIO:  # ENXIO: nobody is reading the pipe yet
                raise
            time.sleep(0.02)  # polls a condition: the run reaching its gate
            continue
        os.write(fd, b"x")
        os.close(fd)
        return


def _hold_after(gate: Path, count: int) -> None:
    from pipeline.extract.engines.local import RecordSink

    put = RecordSink.put
    written = 0

    def put_then_wait(self: RecordSink, region: object) -> None:
        nonlocal written
        put(self, region)  # type: ignore[arg-type]
        written += 1
        if written == count:
            with open(gate, "rb") as pipe:  # blocks until the test opens the gate
                pipe.read(1)

    RecordSink.put = put_then_wait  # type: ignore[method-assign]


if __name__ == "__main__":
    _hold_after(Path(sys.argv[1]), int(sys.argv[2]))
    from pipeline.commands.extract import main

    sys.exit(main(sys.argv[3:]))
