"""The "why" view: an explanation (:mod:`encoder.explain`) as a picture and as text.

No gradio here. The picture is the image enlarged like every picture of the page
(:func:`pipeline.extract.visualize.enlarged`), each region's pixels as bright as its relevance
(relative to the most relevant region, so the top region is at full brightness and a region
with no relevance stays dim), the top regions outlined and numbered, and a legend strip
under it. Boxes are xyxy in raw-image pixels, as in :class:`encoder.explain.RegionScore`.
"""

from __future__ import annotations

import html
from collections.abc import Sequence

import cv2
import numpy as np

from encoder.explain import ImageRelevance, RegionScore, WordScore
from pipeline.extract.visualize import enlarge_image

#: Regions outlined on the picture and listed beside it.
TOP_REGIONS = 3
#: Brightness of a pixel that no relevant region covers (1: unchanged).
_FLOOR = 0.2
#: Outline colour of the top regions (BGR): orange, visible on dimmed pixels.
_OUTLINE = (0, 140, 255)
#: Height of the legend strip under the picture, pixels.
_LEGEND_H = 40


def relevance_weights(
    shape: tuple[int, int], regions: Sequence[RegionScore], *, scale: tuple[float, float]
) -> np.ndarray:
    """float32 ``[H, W]`` in [0, 1]: per pixel, the largest relevance of a region covering
    it, divided by the largest relevance of all (the maximum, not the sum: overlapping
    boxes do not add up to more than their strongest)."""
    weights = np.zeros(shape, dtype=np.float32)
    top = max((r.score for r in regions), default=0.0)
    if not top > 0:
        return weights
    height, width = shape
    for region in sorted(regions, key=lambda r: r.score):
        x1, y1, x2, y2 = region.box
        left, right = max(0, round(x1 * scale[0])), min(width, round(x2 * scale[0]) + 1)
        upper, lower = max(0, round(y1 * scale[1])), min(height, round(y2 * scale[1]) + 1)
        cell = weights[upper:lower, left:right]
        np.maximum(cell, region.score / top, out=cell)
    return weights


def relevance_picture(
    image_bgr: np.ndarray, image: ImageRelevance, *, top: int = TOP_REGIONS
) -> np.ndarray:
    """RGB uint8 ``[H', W', 3]``: ``image_bgr`` (the raw image the boxes refer to) enlarged,
    each pixel as bright as the relevance over it, the ``top`` regions outlined and numbered
    from 1 (best first), and a legend strip (dim = no relevance, bright = the top region's)."""
    canvas, sx, sy = enlarge_image(image_bgr)
    weights = relevance_weights(canvas.shape[:2], image.regions, scale=(sx, sy))
    light = _FLOOR + (1.0 - _FLOOR) * weights[:, :, None]
    canvas = np.ascontiguousarray((canvas.astype(np.float32) * light).astype(np.uint8))
    thickness = max(2, round(max(canvas.shape[:2]) / 300))
    font = max(0.5, max(canvas.shape[:2]) / 1000)
    for rank, region in reversed(list(enumerate(image.top(top), start=1))):
        x1, y1, x2, y2 = (round(v * f) for v, f in zip(region.box, (sx, sy, sx, sy), strict=True))
        cv2.rectangle(canvas, (x1, y1), (x2, y2), _OUTLINE, thickness)
        text = f"{rank}: {region.label} {region.score:.2f}"
        (w, h), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, font, 1)
        left, upper = max(0, min(x1, canvas.shape[1] - w)), max(0, y1 - h - base)
        cv2.rectangle(canvas, (left, upper), (left + w, upper + h + base), _OUTLINE, -1)
        cv2.putText(
            canvas,
            text,
            (left, upper + h),
            cv2.FONT_HERSHEY_SIMPLEX,
            font,
            (0, 0, 0),
            1,
            cv2.LINE_AA,
        )
    best = max((r.score for r in image.regions), default=0.0)
    picture = np.vstack([canvas, _legend(canvas.shape[1], best)])
    return np.ascontiguousarray(picture[:, :, ::-1])


def _legend(width: int, best: float) -> np.ndarray:
    """The legend strip (BGR): a ramp from the dim floor to full brightness, labelled."""
    strip = np.full((_LEGEND_H, width, 3), 255, dtype=np.uint8)
    ramp_left, ramp_right = width // 4, width - width // 4
    levels = np.linspace(_FLOOR, 1.0, max(1, ramp_right - ramp_left), dtype=np.float32)
    strip[6:22, ramp_left:ramp_right] = (levels[None, :, None] * 255).astype(np.uint8)
    cv2.rectangle(strip, (ramp_left, 6), (ramp_right - 1, 21), (0, 0, 0), 1)
    for text, x in (("relevance 0", 4), (f"{best:.2f}", ramp_right + 6)):
        cv2.putText(strip, text, (x, 19), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (0, 0, 0), 1, cv2.LINE_AA)
    cv2.putText(
        strip,
        "brightness = region relevance (max over boxes); orange: top regions",
        (4, 36),
        cv2.FONT_HERSHEY_SIMPLEX,
        0.4,
        (0, 0, 0),
        1,
        cv2.LINE_AA,
    )
    return strip


def regions_html(image: ImageRelevance, *, top: int = TOP_REGIONS, title: str = "") -> str:
    """The ``top`` regions, best first, as an ordered list: label, score and box (raw
    pixels, in ``data-box``), the first marked ``class="top-region"``."""
    items = []
    for rank, region in enumerate(image.top(top)):
        box = ",".join(f"{v:.1f}" for v in region.box)
        mark = ' class="top-region"' if rank == 0 else ""
        items.append(
            f'<li{mark} data-box="{box}" data-index="{region.index}">'
            f"<b>{html.escape(region.label)}</b> {region.score:.3f} "
            f'<span style="color:#888">region {region.index}, box {box}</span></li>'
        )
    heading = f"<p>{html.escape(title)}</p>" if title else ""
    return f'{heading}<ol class="why-regions">{"".join(items)}</ol>'


def words_html(words: Sequence[WordScore]) -> str:
    """The question's words, each shaded orange as strongly as its relevance (relative to
    the most relevant word), its score in the tooltip."""
    best = max((w.score for w in words), default=0.0)
    spans = []
    for word in words:
        alpha = word.score / best if best > 0 else 0.0
        spans.append(
            f'<span class="why-word" title="{word.score:.3f}" data-score="{word.score:.4f}" '
            f'style="background:rgba(255,140,0,{alpha:.2f});padding:1px 3px;margin:1px;'
            f'border-radius:3px">{html.escape(word.word)}</span>'
        )
    return f'<p class="why-words">{" ".join(spans)}</p>'
