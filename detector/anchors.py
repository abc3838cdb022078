"""Caffe's ``generate_anchors.py`` cell anchors in numpy, without torch.

:class:`~detector.config.DetectorConfig` checks that a preset can run Caffe proposals with
these when it is built, and the presets are built when ``detector.config`` is imported, which
the commands do to check their flags before torch is loaded (issue 29).
:func:`detector.proposals.caffe_cell_anchors` is the same anchors as a tensor.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def caffe_cell_anchor_rows(
    *, base_size: int, sizes: Sequence[float], ratios: Sequence[float]
) -> np.ndarray:
    """float64 ``[len(sizes) * len(ratios), 4]`` xyxy cell anchors, size-major; see
    :func:`detector.proposals.caffe_cell_anchors` for the layout and the errors."""
    if isinstance(base_size, bool) or not isinstance(base_size, int) or base_size < 1:
        raise ValueError(f"the Caffe anchor base size must be an integer >= 1, got {base_size!r}")
    if not sizes or not ratios or min(sizes) <= 0 or min(ratios) <= 0:
        raise ValueError(f"need positive anchor sizes and ratios, got {sizes} x {ratios}")
    ctr = 0.5 * (base_size - 1)
    ratio_boxes = []
    for ratio in ratios:
        width = float(np.round(np.sqrt(base_size * base_size / float(ratio))))
        height = float(np.round(width * float(ratio)))
        if width < 1 or height < 1:
            raise ValueError(
                f"generate_anchors rounds the {base_size}-px reference box at ratio {ratio} to "
                f"{width:g} x {height:g} px, an empty anchor"
            )
        ratio_boxes.append(_centred(ctr, ctr, width, height))
    rows = []
    for size in sizes:
        scale = float(size) / base_size
        for x1, y1, x2, y2 in ratio_boxes:
            # _whctrs of the ratio box, then _mkanchors with the scaled sides (float64, as
            # the reference; every value is a multiple of 0.5 for integer scales).
            width, height = x2 - x1 + 1, y2 - y1 + 1
            x_ctr, y_ctr = x1 + 0.5 * (width - 1), y1 + 0.5 * (height - 1)
            rows.append(_centred(x_ctr, y_ctr, width * scale, height * scale))
    return np.array(rows, dtype=np.float64)


def _centred(x_ctr: float, y_ctr: float, width: float, height: float) -> list[float]:
    return [
        x_ctr - 0.5 * (width - 1),
        y_ctr - 0.5 * (height - 1),
        x_ctr + 0.5 * (width - 1),
        y_ctr + 0.5 * (height - 1),
    ]
