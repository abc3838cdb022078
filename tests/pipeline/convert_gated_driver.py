"""``extract_features convert`` held after a given number of records until the test opens a
gate: a conversion that is certain to be midway, whatever the machine's speed.

    python convert_gated_driver.py GATE COUNT CONVERT_ARGS...

The records stream from the inputs through ``pipeline.convert.stream_inputs``; this driver
wraps it so that when the writer asks for record ``COUNT + 1`` (it has handed the first
``COUNT`` to the format's writer), the process blocks opening the named pipe ``GATE``
(:func:`gated_convert` creates it). The test then stops the run (:func:`wait_at_gate`, then a
signal) or lets it go on by writing a byte into the pipe. Nothing else of the command changes.
"""

from __future__ import annotations

import errno
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def gated_convert(gate: Path, count: int, *args: object) -> list[str]:
    """The command of a conversion held after ``count`` records; makes the named pipe
    ``gate`` (which must not exist)."""
    os.mkfifo(gate)
    return [sys.executable, str(Path(__file__)), str(gate), str(count), *map(str, args)]


def wait_at_gate(gate: Path, run: subprocess.Popen[str]) -> int:
    """Wait until ``run`` blocks at its gate; returns the pipe's write end (the test closes
    it after stopping the run). ``AssertionError`` if the run ended before reaching it."""
    while True:
        try:
            return os.open(gate, os.O_WRONLY | os.O_NONBLOCK)
        except OSError as error:
            if error.errno != errno.ENXIO:  # ENXIO: nobody is reading the pipe yet
                raise
        if run.poll() is not None:
            _, err = run.communicate()
            raise AssertionError(f"the conversion ended (rc {run.returncode}) first: {err}")
        time.sleep(0.02)  # polls a condition: the run reaching its gate


def _hold_after(gate: Path, count: int) -> None:
    import pipeline.convert as convert

    stream = convert.stream_inputs

    def held(inputs: object) -> Iterator[object]:
        for number, record in enumerate(stream(inputs)):  # type: ignore[arg-type]
            if number == count:
                with open(gate, "rb") as pipe:  # blocks until the test opens the gate
                    pipe.read(1)
            yield record

    convert.stream_inputs = held  # type: ignore[assignment]


if __name__ == "__main__":
    _hold_after(Path(sys.argv[1]), int(sys.argv[2]))
    from pipeline.commands.convert import main

    sys.exit(main(sys.argv[3:]))
