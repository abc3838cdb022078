"""Talking HTTP to a real ``lxmert-demo`` process, as the page's own client (and a hostile
one) does: uploads, ``/gradio_api/call/<name>`` and its event stream, files by URL."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.web.browser import Served

ROOT = Path(__file__).resolve().parents[2]
SCENE = ROOT / "examples" / "scene_000.png"
#: What every refused file gets (pipeline.web.gate.NOT_UPLOADED, copied: the test pins it).
REFUSED = "Not an uploaded file: upload the image (or pick an example) and try again."
#: The controls after the image: detector, encoder, selection, box count, boxes shown.
CONTROLS = ["shapes-detector", "shapes-lxmert", "checkpoint's own", 0, 36]


@dataclass(frozen=True)
class Page:
    """A running server, spoken to over HTTP."""

    served: Served

    @property
    def uploads(self) -> Path:
        """gradio's upload folder of the server: where an upload lands (in a folder named
        by its hash)."""
        return Path(self.upload(SCENE)["path"]).parent.parent

    def call(self, name: str, data: list[Any]) -> tuple[str, Any]:
        """("complete", outputs) or ("error", message) of one API call."""
        request = urllib.request.Request(
            f"{self.served.url}gradio_api/call/{name}",
            data=json.dumps({"data": data}).encode(),
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=60) as answer:
            event = json.load(answer)["event_id"]
        url = f"{self.served.url}gradio_api/call/{name}/{event}"
        with urllib.request.urlopen(url, timeout=300) as answer:
            lines = answer.read().decode().splitlines()
        kind = next(line[len("event: ") :] for line in lines if line.startswith("event: "))
        payload = json.loads(
            next(line[len("data: ") :] for line in lines if line.startswith("data: "))
        )
        if kind == "error":
            return kind, payload["error"]
        return kind, payload

    def upload(self, path: Path, name: str = "upload.png") -> dict[str, Any]:
        """Upload ``path`` as the browser does; the file dict the page then sends."""
        boundary = uuid.uuid4().hex
        body = (
            (
                f"--{boundary}\r\nContent-Disposition: form-data; "
                f'name="files"; filename="{name}"\r\n'
                "Content-Type: image/png\r\n\r\n"
            ).encode()
            + path.read_bytes()
            + f"\r\n--{boundary}--\r\n".encode()
        )
        request = urllib.request.Request(
            f"{self.served.url}gradio_api/upload",
            data=body,
            headers={"Content-Type": f"multipart/form-data; boundary={boundary}"},
        )
        with urllib.request.urlopen(request, timeout=60) as answer:
            (stored,) = json.load(answer)
        return file_data(stored, orig_name=name)

    def status_of(self, url_path: str) -> int:
        try:
            with urllib.request.urlopen(self.served.url + url_path, timeout=60) as answer:
                return int(answer.status)
        except urllib.error.HTTPError as error:
            return int(error.code)


def file_data(path: str, **extra: Any) -> dict[str, Any]:
    """A file payload with gradio's FileData marker, as the page's own client sends."""
    return {"path": path, "meta": {"_type": "gradio.FileData"}, **extra}
