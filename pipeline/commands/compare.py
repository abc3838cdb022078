"""``extract_features compare`` as a command: validate -> plan -> load -> compare -> report,
and the exit code chosen in one place."""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Sequence
from dataclasses import asdict

from pipeline.compare.files import run_files
from pipeline.compare.report import format_report, report_json, summarize
from pipeline.compare.run import compare_images, load_detectors, plan_compare
from pipeline.compare.settings import (
    CompareSettings,
    FileCompareSettings,
    build_compare_parser,
    validate_compare,
)
from weights.command import Command, configure_logging, run_command

LOG = logging.getLogger("pipeline.compare")


def run_compare(settings: CompareSettings | FileCompareSettings) -> int:
    """validate (done) -> plan -> load -> compare -> report; returns the exit code. Two
    feature files (``--features``) need no model: :func:`~pipeline.compare.files.run_files`."""
    from weights.files import atomic_write_text

    configure_logging(quiet=settings.quiet, verbose=settings.verbose)
    if isinstance(settings, FileCompareSettings):
        return run_files(settings)
    plan = plan_compare(settings)
    detectors = load_detectors(settings)
    for mode, detector in detectors.items():
        LOG.debug("%s proposals: config %s", mode, detector.config.to_dict())
    info = next(iter(detectors.values())).checkpoint
    images, failures = compare_images(plan, detectors)
    result = summarize(plan, images, failures)
    if settings.report is not None:
        text = json.dumps(report_json(plan, result, asdict(info)), indent=2) + "\n"
        atomic_write_text(settings.report, text)
    name = f"{info.name} (sha256 {(info.sha256 or 'none')[:12]}, preset {info.preset})"
    print(result.verdict if settings.quiet else format_report(plan, result, name))
    plan.store.close()
    return result.exit_code


COMPARE_COMMAND = Command(
    name="compare",
    summary="compare with a reference feature file (e.g. LXMERT's val2014_obj36.tsv)",
    build_parser=build_compare_parser,
    run=lambda args: run_compare(validate_compare(args)),
    disk_full_remedy="the report is written whole or not at all; free some space and run the "
    "comparison again",
)


def main(argv: Sequence[str] | None = None) -> int:
    """Compare with a reference; see ``extract_features compare --help``."""
    return run_command(COMPARE_COMMAND, sys.argv[1:] if argv is None else argv)


if __name__ == "__main__":
    sys.exit(main())
