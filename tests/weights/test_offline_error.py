"""The real-weights error on a machine without network, as a user meets it.

No HF_HUB_OFFLINE, an empty Hugging Face home, and HF_ENDPOINT on a closed port of 127.0.0.1
(what "no network" looks like to huggingface_hub: the connection is refused). The error must
say what is missing, where it was looked for and what to do, and come at once rather than
after huggingface_hub's ~31 s of retries. The time is printed (run with -s), never asserted.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

from weights import ENV_VAR

ROOT = Path(__file__).resolve().parents[2]
NAME = "vg-r101-c4-attr"  # the real detector: not shipped


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])  # closed again when the block ends


def test_not_found_without_network_says_what_to_do(tmp_path: Path) -> None:
    port = _closed_port()
    env = {
        key: value
        for key, value in os.environ.items()
        if key not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_HUB_CACHE", ENV_VAR)
    }
    env.update(
        HF_HOME=str(tmp_path / "empty-hf-home"),
        HF_ENDPOINT=f"http://127.0.0.1:{port}",
        PYTHONPATH=str(ROOT),
    )
    started = time.perf_counter()
    result = subprocess.run(
        [
            sys.executable,
            "-c",
            f"from weights import resolve_checkpoint; resolve_checkpoint({NAME!r})",
        ],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=300,
    )
    elapsed = time.perf_counter() - started
    print(f"\nnot-found error without network (closed port, no HF_HUB_OFFLINE): {elapsed:.2f} s")

    assert result.returncode == 1
    message = result.stderr
    assert "CheckpointNotFoundError" in message
    assert f"checkpoint {NAME!r} (detector) was not found" in message
    # Every place looked.
    assert f"${ENV_VAR}: not set" in message
    assert f"Hugging Face cache {tmp_path / 'empty-hf-home' / 'hub'}" in message
    assert "download of unc-nlp/frcnn-vg-finetuned from the Hugging Face hub" in message
    assert f"127.0.0.1:{port}" in message and "ConnectError" in message
    # How to get it.
    assert f"python -m weights fetch {NAME}" in message
    assert "--detector PATH" in message and "detector=PATH" in message
    # How to try the shipped shapes-world models instead.
    assert "--detector shapes-detector --encoder shapes-lxmert" in message
    assert 'detector="shapes-detector", encoder="shapes-lxmert"' in message
    # A single try: huggingface_hub's "Retrying in 1s [Retry 1/5]" never happened.
    assert "Retry" not in message
