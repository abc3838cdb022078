"""Direct downloads: a checkpoint file at a URL whose sha256 the registry knows.

The file goes to ``<hub cache>/lxmert-pipeline-downloads/<sha256>/<file>``: by digest, so two
names of one file share one copy, and a name registered again for another file never meets the
old one. It is written to a temporary file beside its place, hashed as it arrives, and moved
into place only when the digest matches: a broken or wrong download never sits where a later
run would take it. Standard library only (``urllib``: ``http``, ``https`` and ``file`` URLs).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from weights.files import atomic_path

DOWNLOADS_DIR = "lxmert-pipeline-downloads"
#: Seconds a connection or a read may stall before the download is given up.
URL_TIMEOUT_S = 30.0
_CHUNK = 1 << 20


class DownloadMismatchError(ValueError):
    """A downloaded file's sha256 is not the expected one (nothing was kept)."""

    def __init__(self, url: str, digest: str, expected: str) -> None:
        super().__init__(f"{url}: the download has sha256 {digest}, not the expected {expected}")
        self.url, self.digest, self.expected = url, digest, expected


def download_path(cache: Path, sha256: str, file: str) -> Path:
    """Where the file ``file`` of digest ``sha256`` is kept under the hub cache ``cache``."""
    return cache / DOWNLOADS_DIR / sha256.lower() / file


def download_verified(
    url: str, target: Path, sha256: str, *, timeout: float = URL_TIMEOUT_S
) -> Path:
    """Download ``url`` to ``target`` if its sha256 is ``sha256``; returns ``target``.

    Raises:
        DownloadMismatchError: the bytes have another sha256 (``target`` is left as it was).
        OSError: the URL cannot be read (``urllib.error.URLError`` is one), or the disk is
            full; no partial file is left.
    """
    import urllib.request  # here: resolving a name that needs no download never loads it (ssl)

    target.parent.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha256()
    with atomic_path(target) as tmp:
        with urllib.request.urlopen(url, timeout=timeout) as answer, tmp.open("wb") as out:
            for chunk in iter(lambda: answer.read(_CHUNK), b""):
                digest.update(chunk)
                out.write(chunk)
        if digest.hexdigest() != sha256.lower():
            raise DownloadMismatchError(url, digest.hexdigest(), sha256.lower())
    return target
