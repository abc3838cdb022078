"""``lxmert-demo``: serve the Gradio page (:mod:`pipeline.web.app`) on one device.

The server keeps its uploads in a folder of its own (made inside ``GRADIO_TEMP_DIR`` or the
system's temporary folder) and removes it when it stops: on Ctrl-C (exit 130) or SIGTERM
(exit 0).
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import os
import shutil
import signal
import sys
import tempfile
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from pipeline.errors import EXIT_OK, EXIT_USAGE, UsageError
from pipeline.flags import check_models, device_from_args
from pipeline.web import DEFAULT_MAX_UPLOAD_BYTES
from weights.command import Command, positive_int, run_command
from weights.defaults import (
    DEFAULT_DETECTOR,
    DEFAULT_DEVICE,
    DEFAULT_ENCODER,
    extra_install_hint,
)

if TYPE_CHECKING:
    from pipeline.web.models import ModelChoice

#: Where the page listens unless told otherwise: this machine only.
DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 7860
#: The example scenes shipped in the package (shapes-world), the gallery's default.
PACKAGED_EXAMPLES = Path(__file__).resolve().parents[1] / "web" / "examples"


def build_parser() -> argparse.ArgumentParser:
    """The ``lxmert-demo`` argument parser."""
    parser = argparse.ArgumentParser(
        prog="lxmert-demo",
        description="A web page to look at a detector's boxes and ask LXMERT questions "
        "(Gradio: the [web] extra). Without --detector/--encoder the real "
        "models are used when they are on this machine; otherwise the page says why and offers "
        "the shipped shapes-world pair.",
        epilog=f"exit codes: {EXIT_OK} stopped; {EXIT_USAGE} bad flags, models named by a flag "
        "that do not resolve, an --examples folder that is not there, gradio missing; "
        "4 unexpected error; 130 interrupted (Ctrl-C).",
    )
    parser.add_argument(
        "--host",
        default=DEFAULT_HOST,
        help="address (default: %(default)s; 0.0.0.0 in a container)",
    )
    parser.add_argument(
        "--port", type=positive_int, default=DEFAULT_PORT, help="port (default: %(default)s)"
    )
    parser.add_argument(
        "--detector",
        metavar="NAME|PATH",
        help=f"detector selected first (default: {DEFAULT_DETECTOR})",
    )
    parser.add_argument(
        "--encoder", metavar="NAME|DIR", help=f"LXMERT selected first (default: {DEFAULT_ENCODER})"
    )
    parser.add_argument(
        "--nlvr2-encoder",
        metavar="NAME|DIR",
        help="an NLVR2 model for the NLVR2 tab, besides the presets (shapes-nlvr2)",
    )
    parser.add_argument(
        "--device", default=DEFAULT_DEVICE, help="cpu, cuda, cuda:N or auto (default: %(default)s)"
    )
    parser.add_argument(
        "--max-upload-bytes",
        type=positive_int,
        default=DEFAULT_MAX_UPLOAD_BYTES,
        help="largest image upload (default: %(default)s)",
    )
    parser.add_argument(
        "--max-pixels",
        type=positive_int,
        default=None,
        help="largest image, width x height (default: the library's cap)",
    )
    parser.add_argument(
        "--examples",
        type=Path,
        default=None,
        help="folder whose *.png files are the page's examples; only those files are served "
        "(default: the shapes-world scenes shipped in the package)",
    )
    return parser


def _choices(args: argparse.Namespace) -> tuple[list[ModelChoice], ...]:
    """Detectors, encoders and NLVR2 models the page lists; a model named by a flag that does
    not resolve is a usage error (only the defaults may be missing)."""
    from pipeline.web.models import model_choices, nlvr2_choices

    detectors = model_choices("detector", [args.detector] if args.detector else [])
    encoders = model_choices("encoder", [args.encoder] if args.encoder else [])
    nlvr2 = nlvr2_choices([args.nlvr2_encoder] if args.nlvr2_encoder else [])
    for flag, value, choices in (
        ("--detector", args.detector, detectors),
        ("--encoder", args.encoder, encoders),
        ("--nlvr2-encoder", args.nlvr2_encoder, nlvr2),
    ):
        named = next((c for c in choices if c.name == value), None)
        if named is not None and not named.available:
            raise UsageError(f"{flag} {value}: {named.reason}")
    return detectors, encoders, nlvr2


def example_images(folder: Path | None) -> list[str]:
    """The example images of ``folder`` (default: :data:`PACKAGED_EXAMPLES`): its ``*.png``
    regular files, not hidden, not in subfolders, sorted.

    Raises:
        UsageError: ``--examples`` names a folder that is not there.
    """
    chosen = PACKAGED_EXAMPLES if folder is None else folder
    if not chosen.is_dir():
        raise UsageError(
            f"--examples {folder}: not a folder; name a folder of .png images, or leave the "
            "flag out for the shipped scenes"
        )
    found = (path for path in chosen.glob("*.png") if path.is_file())
    return sorted(str(path) for path in found if not path.name.startswith("."))


def _check_before_imports(args: argparse.Namespace) -> None:
    """The usage errors found without gradio or torch: the models named by a flag (all that
    do not resolve without a download, in one message) and gradio's presence (the [web]
    extra; a broken install is still found by the import in :func:`_serve`)."""
    named = (
        ("--detector", args.detector),
        ("--encoder", args.encoder),
        ("--nlvr2-encoder", args.nlvr2_encoder),
    )
    check_models([(flag, value) for flag, value in named if value], download=False)
    if importlib.util.find_spec("gradio") is None:
        raise UsageError(f"gradio is not installed; {extra_install_hint('web')}")


def _run(args: argparse.Namespace) -> int:
    examples = example_images(args.examples)
    _check_before_imports(args)
    # Uploads go to a folder of this server only, removed when it stops: the files it may
    # read are those it stored, and none are left behind.
    uploads = tempfile.mkdtemp(prefix="lxmert-demo-", dir=os.environ.get("GRADIO_TEMP_DIR"))
    before = os.environ.get("GRADIO_TEMP_DIR")
    os.environ["GRADIO_TEMP_DIR"] = uploads
    try:
        return _serve(args, examples)
    finally:
        shutil.rmtree(uploads, ignore_errors=True)
        if before is None:
            os.environ.pop("GRADIO_TEMP_DIR", None)
        else:
            os.environ["GRADIO_TEMP_DIR"] = before


def _serve(args: argparse.Namespace, examples: list[str]) -> int:
    # --device needs torch, not gradio (seconds more): checked first.
    device = device_from_args(args, prog="lxmert-demo")
    try:
        import gradio  # noqa: F401  # the [web] extra: say so before any model loads
    except ImportError as error:
        raise UsageError(
            f"gradio is not installed ({error}); {extra_install_hint('web')}"
        ) from error
    from pipeline.web.app import SESSIONS, build_app
    from pipeline.web.models import ModelCache, start_models
    from pipeline.web.service import DemoService, Limits

    detectors, encoders, nlvr2 = _choices(args)
    start = start_models(
        args.detector or DEFAULT_DETECTOR, args.encoder or DEFAULT_ENCODER, detectors, encoders
    )
    if start.notice:
        print(f"lxmert-demo: {start.notice}", file=sys.stderr)
    limits = Limits(
        max_bytes=args.max_upload_bytes,
        **({"max_pixels": args.max_pixels} if args.max_pixels else {}),
    )
    service = DemoService(models=ModelCache(device=device), limits=limits)
    failed = service.preload(start)
    if failed:
        start = dataclasses.replace(start, notice=f"{start.notice} {failed}".strip())
        print(f"lxmert-demo: {failed}", file=sys.stderr)
    app = build_app(
        service,
        start=start,
        detectors=detectors,
        encoders=encoders,
        nlvr2_encoders=nlvr2,
        examples=examples,
    )
    # One request at a time on the CPU (torch uses every core already); a queue shows each
    # waiting request its position.
    app.queue(default_concurrency_limit=1 if device.type == "cpu" else 2, max_size=64)
    try:
        app.launch(
            server_name=args.host,
            server_port=args.port,
            max_file_size=args.max_upload_bytes,
            show_error=False,
            quiet=False,
            # The listed files by exact path: never the folder they are in.
            allowed_paths=examples or None,
            state_session_capacity=SESSIONS,
            prevent_thread_lock=True,
        )
    except OSError as error:  # gradio's "Cannot find empty port", an address not here
        raise UsageError(
            f"cannot serve on {args.host}:{args.port}: {error}; choose another --port/--host"
        ) from error
    try:
        _wait_for_stop()
    finally:  # Ctrl-C included (exit 130 from run_command): stop serving, then clean up
        app.close()
    return EXIT_OK


def _wait_for_stop() -> None:
    """Block until SIGTERM (returns) or Ctrl-C (raises KeyboardInterrupt). Gradio's own wait
    swallows Ctrl-C, which would make an interrupted server exit 0."""
    stopped = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stopped.set())
    while not stopped.wait(0.2):
        pass


COMMAND = Command(
    name="",
    summary="serve the web page",
    build_parser=build_parser,
    run=_run,
)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``lxmert-demo``."""
    return run_command(COMMAND, sys.argv[1:] if argv is None else argv)


if __name__ == "__main__":
    sys.exit(main())
