"""``lxmert-demo`` stopped with Ctrl-C: exit 130, as its help says, and none of its uploads
or outputs left in the temporary folder (issue 26, items 3 and 5). Its own server."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest
from web_helpers import CONTROLS, SCENE, Page

from pipeline.web.browser import serve_demo

#: Seconds for the server to finish once interrupted (it closes gradio, then removes files).
STOP_S = 120


def test_ctrl_c_exits_130_and_leaves_no_files(tmp_path: Path) -> None:
    pytest.importorskip("gradio", reason="pip install 'lxmert-pipeline[web]'")
    with serve_demo(log=tmp_path / "server.log", cwd=tmp_path) as served:
        page = Page(served=served)
        kind, _ = page.call("detect", [page.upload(SCENE), *CONTROLS])
        assert kind == "complete"
        left = [p for p in served.temp_dir.rglob("*") if p.is_file()]
        assert len(left) >= 2  # the upload and the boxes picture, while it serves
        served.process.send_signal(signal.SIGINT)
        assert served.process.wait(timeout=STOP_S) == 130
        assert list(served.temp_dir.rglob("*")) == []
