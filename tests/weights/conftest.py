"""Fixtures for the weights tests: an isolated environment, hub-cache layouts, a local fake hub.

Every test here runs with HF_HOME in a temporary directory, HF_HUB_OFFLINE=1 and
LXMERT_PIPELINE_WEIGHTS unset, so nothing reads or writes the real caches or the network.
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

_CLEARED = (
    "LXMERT_PIPELINE_WEIGHTS",
    "HF_HUB_CACHE",
    "HUGGINGFACE_HUB_CACHE",
    "HF_HOME",
    "XDG_CACHE_HOME",
    "HF_HUB_OFFLINE",
    "TRANSFORMERS_OFFLINE",
    "HF_ENDPOINT",
)


@pytest.fixture(autouse=True)
def isolated_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """HF_HOME=<tmp>/hf-home, offline, no weights directory. Returns the hub cache dir."""
    for var in _CLEARED:
        monkeypatch.delenv(var, raising=False)
    home = tmp_path / "hf-home"
    monkeypatch.setenv("HF_HOME", str(home))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return home / "hub"


def _make_hub_cache(
    cache_dir: Path,
    repo_id: str,
    files: Mapping[str, bytes],
    *,
    commit: str = "c0ffee" * 6 + "c0f0",
) -> Path:
    """Lay out ``files`` exactly as huggingface_hub does; returns the snapshot directory.

    ``models--{org}--{name}/refs/main`` holds the commit hash; each file's bytes live in
    ``blobs/<sha256>`` and ``snapshots/<commit>/<file>`` is a relative symlink to the blob.
    """
    assert len(commit) == 40
    repo_dir = cache_dir / ("models--" + repo_id.replace("/", "--"))
    (repo_dir / "refs").mkdir(parents=True, exist_ok=True)
    (repo_dir / "refs" / "main").write_text(commit)
    snapshot = repo_dir / "snapshots" / commit
    snapshot.mkdir(parents=True, exist_ok=True)
    (repo_dir / "blobs").mkdir(exist_ok=True)
    for name, data in files.items():
        blob = repo_dir / "blobs" / hashlib.sha256(data).hexdigest()
        blob.write_bytes(data)
        (snapshot / name).symlink_to(Path("..", "..", "blobs", blob.name))
    return snapshot


@pytest.fixture
def make_hub_cache() -> Callable[..., Path]:
    """``make_hub_cache(cache_dir, repo_id, {file: bytes}, commit=...) -> snapshot dir``."""
    return _make_hub_cache


@dataclass
class FakeHub:
    """A local HTTP server answering like the Hugging Face hub's ``resolve`` endpoint."""

    endpoint: str
    files: dict[tuple[str, str], bytes]
    requests: list[str]


@pytest.fixture
def fake_hub(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeHub]:
    """Serve ``fake_hub.files[(repo_id, filename)]``; everything else is 404 EntryNotFound.

    Sets HF_ENDPOINT to the server and turns offline mode off (also in huggingface_hub's
    import-time constant, in case the outer environment had HF_HUB_OFFLINE set).
    """
    from huggingface_hub import constants

    commit = "1234abcd" * 5
    files: dict[tuple[str, str], bytes] = {}
    requests: list[str] = []

    class Handler(BaseHTTPRequestHandler):
        def _head(self) -> bytes | None:
            requests.append(f"{self.command} {self.path}")
            parts = self.path.lstrip("/").split("/")
            # /{org}/{name}/resolve/{revision}/{filename}
            data = None
            if len(parts) >= 5 and parts[2] == "resolve":
                data = files.get(("/".join(parts[:2]), "/".join(parts[4:])))
            if data is None:
                self.send_response(404)
                self.send_header("X-Error-Code", "EntryNotFound")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return None
            sha = hashlib.sha256(data).hexdigest()
            self.send_response(200)
            self.send_header("X-Repo-Commit", commit)
            self.send_header("ETag", f'"{sha}"')
            self.send_header("X-Linked-Etag", f'"{sha}"')
            self.send_header("X-Linked-Size", str(len(data)))
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            return data

        def do_HEAD(self) -> None:
            self._head()

        def do_GET(self) -> None:
            data = self._head()
            if data is not None:
                self.wfile.write(data)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
    )
    thread.start()
    endpoint = f"http://127.0.0.1:{server.server_port}"
    monkeypatch.setenv("HF_ENDPOINT", endpoint)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    try:
        yield FakeHub(endpoint=endpoint, files=files, requests=requests)
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)
