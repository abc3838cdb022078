"""Moved to :mod:`encoder.finetune.log` (the per-epoch lines and ``log.log`` are the training
library's, which Python users call too). This re-export keeps the old import path for one
release; import from ``encoder.finetune.log``."""

from encoder.finetune.log import LOG_FILE, epoch_lines, epoch_reporter, render_log, write_log

__all__ = ["LOG_FILE", "epoch_lines", "epoch_reporter", "render_log", "write_log"]
