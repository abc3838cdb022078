"""Fixtures shared by the tests of several packages."""

from __future__ import annotations

import struct
import zlib
from collections.abc import Callable

import pytest


def _png_chunk(kind: bytes, payload: bytes) -> bytes:
    crc = zlib.crc32(kind + payload) & 0xFFFFFFFF
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", crc)


def _png_header_only(width: int, height: int) -> bytes:
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", ihdr)
        + _png_chunk(b"IDAT", zlib.compress(b"\x00" * 16))
        + _png_chunk(b"IEND", b"")
    )


@pytest.fixture
def png_header_only() -> Callable[[int, int], bytes]:
    """``(width, height) -> bytes``: a PNG whose IHDR claims width x height RGB8 but whose IDAT
    holds one tiny row (a decompression bomb's header, cheap to write)."""
    return _png_header_only
