"""Fixtures shared by the tests of several packages."""

from __future__ import annotations

import logging
import os
import signal
import struct
import sys
import threading
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

#: Variables that point the code at a user's caches, models, registry or a hub: each test
#: starts without them (:func:`_private_caches`).
_USER_LOCATIONS = (
    "LXMERT_PIPELINE_WEIGHTS",
    "HF_HUB_CACHE",
    "HUGGINGFACE_HUB_CACHE",
    "TRANSFORMERS_OFFLINE",
    "HF_ENDPOINT",
)


def pytest_configure(config: pytest.Config) -> None:
    """Ctrl-C is Ctrl-C in this run and in every process it starts. A runner started in the
    background of a non-interactive shell (``cmd &``) ignores SIGINT, and an ignored signal
    stays ignored across ``exec``: every command a test starts could then not be interrupted,
    and the Ctrl-C tests would test the launcher. A handler, unlike "ignored", is reset to the
    default in a child."""
    signal.signal(signal.SIGINT, signal.default_int_handler)
    _share_the_cores(config)


#: The test files that take 10 s or more on 2 cores (`--durations`, December 2026), slowest
#: first. They run first, so that only short files are left for the end and the workers
#: finish together; a worker left alone with a long one would idle the other cores. (xdist
#: orders files by their number of tests unless told not to: tasks.py passes
#: --no-loadscope-reorder.)
SLOW_FILES = (
    "tests/pipeline/test_ray_engine.py",
    "tests/test_docs.py",
    "tests/pipeline/test_web_server.py",
    "tests/pipeline/test_finetune_torchrun.py",
    "tests/pipeline/test_ray_logs.py",
    "tests/shapesworld/test_quality.py",
    "tests/pipeline/test_hostile.py",
    "tests/pipeline/test_store.py",
    "tests/encoder/test_finetune_distributed.py",
    "tests/detector/test_simd_independence.py",
    "tests/encoder/test_finetune_train.py",
    "tests/pipeline/test_formats_memory.py",
    "tests/detector/test_checkpoint.py",
    "tests/pipeline/test_startup_imports.py",
    "tests/pipeline/test_extract_formats.py",
    "tests/shapesworld/test_shapes_imports.py",
    "tests/test_usage_errors_fast.py",
    "tests/pipeline/test_pipeline_cli.py",
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """:data:`SLOW_FILES` first, in that order; every other test keeps its place.

    Raises:
        pytest.UsageError: a file named there does not exist (renamed: say so there).
    """
    root = Path(__file__).resolve().parents[1]
    missing = [path for path in SLOW_FILES if not (root / path).is_file()]
    if missing:
        raise pytest.UsageError(f"tests/conftest.py SLOW_FILES: no such file: {missing}")
    rank = {path: index for index, path in enumerate(SLOW_FILES)}
    items.sort(key=lambda item: rank.get(item.nodeid.partition("::")[0], len(rank)))


def _share_the_cores(config: pytest.Config) -> None:
    """Each test runner (a pytest-xdist worker, or pytest alone) and every process it starts
    use their share of the cores: OpenMP threads beyond it spin-wait for the cores of the
    others, and on 2 cores with 2 workers that doubled the suite's CPU time (205 s against
    107 s for the same eight test files). Set in xdist's controller, before it starts the
    workers, which inherit it; a value the user set is kept."""
    workers = getattr(config.option, "numprocesses", None) or int(
        os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")
    )
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    threads = max(1, (cores or 1) // workers)
    os.environ.setdefault("OMP_NUM_THREADS", str(threads))
    torch = sys.modules.get("torch")
    if torch is not None:  # imported before this hook (a plugin): it read the variable before
        torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))


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


@pytest.fixture(autouse=True)
def _process_state_restored() -> Iterator[None]:
    """What a command's ``main(argv)`` called in this process changes for the whole process,
    put back after each test: the ``pipeline`` and ``encoder`` loggers (``configure_logging``
    gives them a handler bound to the ``sys.stderr`` of that moment, which is a test's capture,
    closed after it) and
    torch's thread count (``--threads``, which would slow every later test). Torch is only
    looked at when a test has imported it, so that tests without it stay light."""
    loggers = [logging.getLogger(name) for name in ("pipeline", "encoder")]
    saved = [(log.level, log.propagate, list(log.handlers)) for log in loggers]
    torch = sys.modules.get("torch")
    threads = torch.get_num_threads() if torch is not None else None
    yield
    for logger, (level, propagate, handlers) in zip(loggers, saved, strict=True):
        logger.setLevel(level)
        logger.propagate = propagate
        for handler in [h for h in logger.handlers if h not in handlers]:
            logger.removeHandler(handler)
    torch = sys.modules.get("torch")
    if torch is not None and threads is not None and torch.get_num_threads() != threads:
        torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def _ctrl_c_is_ctrl_c() -> None:
    """Before every test, as at the start (:func:`pytest_configure`): a library an earlier
    test ran in this process (a server, a cluster client) may have left SIGINT ignored, and
    every process a later test starts would inherit that. Worker threads cannot set it."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, signal.default_int_handler)


@pytest.fixture(autouse=True)
def _private_caches(
    tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> Path:
    """Every test (and every process it starts) gets its own empty Hugging Face home, cache
    folder and config folder (where names are registered), offline: nothing reads or writes
    the user's caches or the network, and no test sees another's cached index or download.
    Returns the folder that holds the three."""
    root = tmp_path_factory.mktemp("user")
    for variable in _USER_LOCATIONS:
        monkeypatch.delenv(variable, raising=False)
    monkeypatch.setenv("HF_HOME", str(root / "hf-home"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(root / "xdg-cache"))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(root / "xdg-config"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return root
