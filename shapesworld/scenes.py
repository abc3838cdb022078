"""Seeded synthetic scenes: coloured shapes on gray backgrounds, with their boxes.

A scene is data: pixels and ground truth, a pure function of its seed. Questions are made from
scenes (``questions.scene_questions``), and ``records.scene_record`` writes both as JSON; this
module imports neither. All random draws are integers from
``numpy.random.Generator(PCG64)`` and all pixel arithmetic is integer (polygon vertices in cv2's
1/16-pixel fixed point, alpha blending in int32, uint8 resizes), so the same seed gives the same
bytes on any machine.

Coordinates: boxes are xyxy floats in raw-image pixels with pixel ``i`` covering ``[i, i + 1)``
(the Detectron2 convention, ``x2 - x1`` = width). Every box is the exact geometric extent of its
shape, so it is tight: anti-aliased edge pixels reach at most one pixel beyond it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import cv2
import numpy as np

from shapesworld.vocab import (
    BACKGROUND_MAX,
    BACKGROUND_MIN,
    COLOR_JITTER,
    COLOR_RGB,
    COLORS,
    MAX_OBJECTS,
    MIN_OBJECTS,
    SHAPES,
    SIZE_PERCENT,
    SIZES,
    SPLIT_SEED_BASE,
    SPLIT_SIZE,
)
from weights.files import atomic_write_bytes

__all__ = [
    "Scene",
    "SceneObject",
    "Split",
    "make_scene",
    "make_split",
    "object_alpha",
    "split_seeds",
]

Split = Literal["train", "val", "test", "heldout"]

# Image aspect ratios (long, short); each is used in both orientations except 1:1.
_ASPECTS: tuple[tuple[int, int], ...] = ((1, 1), (4, 3), (3, 2), (16, 9))
_MIN_SIDE = 96
_MAX_SIDE = 320
# Layout works in quarter pixels so that every box coordinate is exact in binary floating point.
_Q = 4
# Objects keep 2 px from the image border so that their anti-aliased edges stay inside.
_EDGE_Q = 2 * _Q
# Two objects may share at most this fraction (num / den) of the smaller one's box area, which
# also bounds their IoU and keeps the object drawn first mostly visible.
_OVERLAP_NUM, _OVERLAP_DEN = 1, 4
_PLACEMENT_TRIES = 100
# Unit polygons are stored in 1/4096 of the box side; cv2 gets vertices in 1/16 of a sample.
_UNIT = 4096
_SHIFT = 4
_SS = _Q  # coverage samples per pixel along each axis: one per quarter pixel
_NOISE_MAX = 6  # noise is the sum of two uniform integers in [-a, a], a <= _NOISE_MAX
_TINT_MAX = 8
_TEXTURE_MAX = 18
_GRADIENT_MAX = 50


@dataclass(frozen=True)
class SceneObject:
    """One object of a scene.

    Attributes:
        shape: object class, one of ``vocab.SHAPES``.
        color: attribute, one of ``vocab.COLORS``.
        size: ``"small"`` or ``"large"`` (scene data only, not a detector label).
        box: (x1, y1, x2, y2) floats, raw-image pixels, tight around the shape.
    """

    shape: str
    color: str
    size: str
    box: tuple[float, float, float, float]

    @property
    def class_id(self) -> int:
        """Index of ``shape`` in ``vocab.SHAPES``."""
        return SHAPES.index(self.shape)

    @property
    def attribute_id(self) -> int:
        """Index of ``color`` in ``vocab.COLORS``."""
        return COLORS.index(self.color)

    @property
    def center(self) -> tuple[float, float]:
        """Box centre (cx, cy) in raw-image pixels."""
        x1, y1, x2, y2 = self.box
        return (x1 + x2) / 2, (y1 + y2) / 2


@dataclass(frozen=True, eq=False)
class Scene:
    """One rendered scene with its ground truth.

    Attributes:
        seed: the seed that generated it (``make_scene(seed)`` reproduces it exactly).
        image_rgb: uint8 [H, W, 3], RGB order (convert to BGR for the detector), read-only.
        objects: in drawing order; a later object is painted over an earlier one.
    """

    seed: int
    image_rgb: np.ndarray = field(repr=False)
    objects: tuple[SceneObject, ...]

    @property
    def height(self) -> int:
        """Image height H in pixels."""
        return int(self.image_rgb.shape[0])

    @property
    def width(self) -> int:
        """Image width W in pixels."""
        return int(self.image_rgb.shape[1])

    def image_bgr(self) -> np.ndarray:
        """The pixels as the detector and ``cv2.imencode`` read them: uint8 [H, W, 3], BGR."""
        return cv2.cvtColor(self.image_rgb, cv2.COLOR_RGB2BGR)

    def write_png(self, path: Path) -> Path:
        """Write the image to ``path`` as a PNG, atomically; returns ``path``."""
        ok, data = cv2.imencode(".png", self.image_bgr())
        if not ok:
            raise RuntimeError(f"PNG encoding failed for seed {self.seed}")
        return atomic_write_bytes(path, data.tobytes())

    def class_ids(self) -> np.ndarray:
        """Object class ids, int64 [N], indices into ``vocab.SHAPES``."""
        return np.array([o.class_id for o in self.objects], dtype=np.int64)

    def attribute_ids(self) -> np.ndarray:
        """Attribute (colour) ids, int64 [N], indices into ``vocab.COLORS``."""
        return np.array([o.attribute_id for o in self.objects], dtype=np.int64)

    def boxes_array(self) -> np.ndarray:
        """Boxes, float32 [N, 4] xyxy, raw-image pixels."""
        return np.array([o.box for o in self.objects], dtype=np.float32).reshape(-1, 4)


def split_seeds(split: Split, count: int, *, offset: int = 0) -> range:
    """Seeds of scenes ``offset .. offset + count - 1`` of a split.

    The splits use disjoint seed ranges (``vocab.SPLIT_SEED_BASE``, each ``vocab.SPLIT_SIZE``
    long); "heldout" is reserved for quality tests and never used in training.
    """
    if split not in SPLIT_SEED_BASE:
        raise ValueError(f"split must be one of {sorted(SPLIT_SEED_BASE)}, got {split!r}")
    if not isinstance(count, int) or not isinstance(offset, int):
        raise TypeError(f"count and offset must be int, got {count!r} and {offset!r}")
    if count < 0 or offset < 0 or offset + count > SPLIT_SIZE:
        raise ValueError(
            f"need 0 <= offset and 0 <= count with offset + count <= {SPLIT_SIZE}, "
            f"got offset={offset}, count={count}"
        )
    base = SPLIT_SEED_BASE[split]
    return range(base + offset, base + offset + count)


def make_split(split: Split, count: int, *, offset: int = 0) -> list[Scene]:
    """Scenes ``offset .. offset + count - 1`` of a split (see ``split_seeds``)."""
    return [make_scene(seed) for seed in split_seeds(split, count, offset=offset)]


def make_scene(seed: int) -> Scene:
    """Render the scene of ``seed`` (a non-negative int): image and objects."""
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise TypeError(f"seed must be an int, got {type(seed).__name__}")
    seed = int(seed)
    if seed < 0:
        raise ValueError(f"seed must be >= 0, got {seed}")
    rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence([seed, 0])))
    width, height = _draw_image_size(rng)
    image = _draw_background(rng, width=width, height=height)
    objects, colors = _draw_layout(rng, width=width, height=height)
    for obj, rgb in zip(objects, colors, strict=True):
        _paint(image, obj, rgb)
    amplitude = int(rng.integers(0, _NOISE_MAX + 1))
    if amplitude:
        # Triangular noise in [-2a, 2a]: the sum of two uniform integers (uint8 draws are fast).
        shape = image.shape
        noise = rng.integers(0, 2 * amplitude + 1, size=shape, dtype=np.uint8).astype(np.int16)
        noise += rng.integers(0, 2 * amplitude + 1, size=shape, dtype=np.uint8)
        image += noise - 2 * amplitude
    pixels = np.clip(image, 0, 255).astype(np.uint8)
    pixels.setflags(write=False)
    return Scene(seed=seed, image_rgb=pixels, objects=tuple(objects))


def object_alpha(obj: SceneObject, *, height: int, width: int) -> np.ndarray:
    """Coverage of ``obj`` as drawn in a scene of size H x W: uint8 [H, W], 0..255.

    This is the exact mask the renderer blends the object's colour with (before later objects
    and noise), so tests and mask-based tools can see where each object was painted.
    """
    out = np.zeros((height, width), dtype=np.uint8)
    x0, y0, patch = _patch_alpha(obj)
    h, w = patch.shape
    # The patch can reach past the image only for objects not made by make_scene.
    xs0, ys0 = max(x0, 0), max(y0, 0)
    xs1, ys1 = min(x0 + w, width), min(y0 + h, height)
    if xs1 > xs0 and ys1 > ys0:
        out[ys0:ys1, xs0:xs1] = patch[ys0 - y0 : ys1 - y0, xs0 - x0 : xs1 - x0]
    return out


def _draw_image_size(rng: np.random.Generator) -> tuple[int, int]:
    """(width, height) in [96, 320] with one of the aspect ratios, either orientation."""
    long_r, short_r = _ASPECTS[int(rng.integers(len(_ASPECTS)))]
    short_max = _MAX_SIDE * short_r // long_r
    short = int(rng.integers(_MIN_SIDE, short_max + 1))
    long = short * long_r // short_r
    if int(rng.integers(2)):
        return long, short
    return short, long


def _draw_background(rng: np.random.Generator, *, width: int, height: int) -> np.ndarray:
    """Gray background, optionally with a linear gradient and a smooth texture: int16 [H,W,3]."""
    level = int(rng.integers(BACKGROUND_MIN, BACKGROUND_MAX + 1))
    gray = np.full((height, width), level, dtype=np.int32)
    if int(rng.integers(2)):
        # Gradient towards a second level along a random integer direction.
        other = int(rng.integers(level - _GRADIENT_MAX, level + _GRADIENT_MAX + 1))
        other = min(max(other, BACKGROUND_MIN), BACKGROUND_MAX)
        dx, dy = (int(v) for v in rng.integers(-8, 9, size=2))
        if dx == 0 and dy == 0:
            dx = 1
        proj = np.arange(width, dtype=np.int64)[None, :] * dx
        proj = proj + np.arange(height, dtype=np.int64)[:, None] * dy
        proj -= proj.min()
        gray += ((other - level) * proj // max(int(proj.max()), 1)).astype(np.int32)
    if int(rng.integers(2)):
        # Low-contrast blobs: a coarse random grid upsampled with uint8 (fixed-point) bilinear.
        cell = int(rng.integers(8, 33))
        grid = rng.integers(
            0, 2 * _TEXTURE_MAX + 1, size=(height // cell + 2, width // cell + 2), dtype=np.uint8
        )
        texture = cv2.resize(grid, (width, height), interpolation=cv2.INTER_LINEAR)
        gray += texture.astype(np.int32) - _TEXTURE_MAX
    tint = rng.integers(-_TINT_MAX, _TINT_MAX + 1, size=3, dtype=np.int16)
    return gray.astype(np.int16)[:, :, None] + tint[None, None, :]


def _draw_layout(
    rng: np.random.Generator, *, width: int, height: int
) -> tuple[list[SceneObject], list[tuple[int, int, int]]]:
    """Objects (2..6, bounded overlap) and the RGB each is painted with."""
    count = int(rng.integers(MIN_OBJECTS, MAX_OBJECTS + 1))
    short = min(width, height)
    placed: list[tuple[int, int, int]] = []  # (x1, y1, side) in quarter pixels
    objects: list[SceneObject] = []
    colors: list[tuple[int, int, int]] = []
    for _ in range(count):
        shape = SHAPES[int(rng.integers(len(SHAPES)))]
        color_id = int(rng.integers(len(COLORS)))
        size = SIZES[int(rng.integers(len(SIZES)))]
        jitter = rng.integers(-COLOR_JITTER, COLOR_JITTER + 1, size=3)
        spot = _place(rng, placed, size=size, short=short, width=width, height=height)
        if spot is None and len(objects) < MIN_OBJECTS:
            # Never happens in practice (two boxes always fit); small boxes make it certain.
            size = "small"
            spot = _place(rng, placed, size=size, short=short, width=width, height=height)
        if spot is None:
            continue
        placed.append(spot)
        x, y, side = spot
        box = (x / _Q, y / _Q, (x + side) / _Q, (y + side) / _Q)
        objects.append(SceneObject(shape=shape, color=COLORS[color_id], size=size, box=box))
        r, g, b = (
            min(max(c + int(j), 0), 255) for c, j in zip(COLOR_RGB[color_id], jitter, strict=True)
        )
        colors.append((r, g, b))
    if len(objects) < MIN_OBJECTS:
        raise RuntimeError(f"could not place {MIN_OBJECTS} objects in {width}x{height}")
    return objects, colors


def _place(
    rng: np.random.Generator,
    placed: list[tuple[int, int, int]],
    *,
    size: str,
    short: int,
    width: int,
    height: int,
) -> tuple[int, int, int] | None:
    """A square box (x1, y1, side) in quarter pixels that overlaps every placed box little."""
    low_pct, high_pct = SIZE_PERCENT[size]
    low, high = short * _Q * low_pct // 100, short * _Q * high_pct // 100
    for _ in range(_PLACEMENT_TRIES):
        side = int(rng.integers(low, high + 1))
        x = int(rng.integers(_EDGE_Q, width * _Q - _EDGE_Q - side + 1))
        y = int(rng.integers(_EDGE_Q, height * _Q - _EDGE_Q - side + 1))
        if all(_overlap_ok((x, y, side), other) for other in placed):
            return x, y, side
    return None


def _overlap_ok(a: tuple[int, int, int], b: tuple[int, int, int]) -> bool:
    """Intersection <= OVERLAP_NUM / OVERLAP_DEN of the smaller box's area (integers)."""
    iw = min(a[0] + a[2], b[0] + b[2]) - max(a[0], b[0])
    ih = min(a[1] + a[2], b[1] + b[2]) - max(a[1], b[1])
    if iw <= 0 or ih <= 0:
        return True
    return iw * ih * _OVERLAP_DEN <= _OVERLAP_NUM * min(a[2], b[2]) ** 2


def _unit_polygon(shape: str) -> np.ndarray:
    """Vertices of ``shape`` in its box, int64 [K, 2] (x, y) in 1/4096 of the side, y down.

    Every polygon touches all four sides of the box (extents exactly 0 and 4096).
    """
    if shape == "square":
        pts = [(0.0, 0.0), (1.0, 0.0), (1.0, 1.0), (0.0, 1.0)]
    elif shape == "diamond":
        pts = [(0.5, 0.0), (1.0, 0.5), (0.5, 1.0), (0.0, 0.5)]
    elif shape == "triangle":
        pts = [(0.5, 0.0), (1.0, 1.0), (0.0, 1.0)]
    elif shape == "cross":
        a, b = 0.32, 0.68  # arm thickness 0.36 of the side
        pts = [(a, 0), (b, 0), (b, a), (1, a), (1, b), (b, b), (b, 1), (a, 1), (a, b), (0, b)]
        pts += [(0, a), (a, a)]
    elif shape == "circle":
        t = np.arange(64) * (2 * np.pi / 64)
        pts = list(zip(0.5 + 0.5 * np.cos(t), 0.5 + 0.5 * np.sin(t), strict=True))
    elif shape == "star":
        # Five points up; inner radius 0.5 of the outer keeps the points visible when small.
        k = np.arange(10)
        radius = np.where(k % 2 == 0, 1.0, 0.5)
        t = -np.pi / 2 + k * (np.pi / 5)
        pts = list(zip(radius * np.cos(t), radius * np.sin(t), strict=True))
    else:
        raise ValueError(f"unknown shape {shape!r}; expected one of {SHAPES}")
    arr = np.asarray(pts, dtype=np.float64)
    arr = (arr - arr.min(axis=0)) / (arr.max(axis=0) - arr.min(axis=0))
    # Rounding to 1/4096 hides any last-bit difference in cos/sin between platforms.
    return np.rint(arr * _UNIT).astype(np.int64)


def _patch_alpha(obj: SceneObject) -> tuple[int, int, np.ndarray]:
    """(x0, y0, alpha uint8 [h, w]): the object's coverage on a patch at pixel (x0, y0).

    Coverage is counted on a 4x4 grid of samples per pixel, all integer (cv2's own
    anti-aliasing spreads shapes by about half a pixel, which would make the boxes loose).
    """
    x1, y1, x2, y2 = obj.box
    side_q = round((x2 - x1) * _Q)
    xq, yq = round(x1 * _Q), round(y1 * _Q)
    x0, y0 = int(np.floor(x1)) - 1, int(np.floor(y1)) - 1
    w, h = int(np.ceil(x2)) + 1 - x0, int(np.ceil(y2)) + 1 - y0
    unit = _unit_polygon(obj.shape) - _UNIT // 2  # relative to the box centre
    # One sample per quarter pixel, so box edges fall on sample edges. cv2 (shift=4: vertices in
    # 1/16 sample, integers at sample centres) fills every sample whose centre rounds into a
    # span, both ends included; insetting the polygon by 1/4 sample on each side makes an
    # axis-aligned edge cover exactly the samples inside the box.
    side16 = 16 * side_q - 8
    cx = 16 * (xq - _Q * x0) + 8 * side_q - 8
    cy = 16 * (yq - _Q * y0) + 8 * side_q - 8
    fx = cx + (unit[:, 0] * side16 + _UNIT // 2) // _UNIT
    fy = cy + (unit[:, 1] * side16 + _UNIT // 2) // _UNIT
    pts = np.stack([fx, fy], axis=1).astype(np.int32)
    samples = np.zeros((h * _SS, w * _SS), dtype=np.uint8)
    cv2.fillPoly(samples, [pts], 1, lineType=cv2.LINE_8, shift=_SHIFT)
    hits = samples.reshape(h, _SS, w, _SS).sum(axis=(1, 3), dtype=np.int32)
    alpha = (hits * 255 + _SS * _SS // 2) // (_SS * _SS)
    return x0, y0, alpha.astype(np.uint8)


def _paint(image: np.ndarray, obj: SceneObject, rgb: tuple[int, int, int]) -> None:
    """Blend ``rgb`` into ``image`` (int16 [H, W, 3], in place) with the object's coverage."""
    x0, y0, alpha = _patch_alpha(obj)
    h, w = alpha.shape
    region = image[y0 : y0 + h, x0 : x0 + w]
    a = alpha.astype(np.int32)[:, :, None]
    color = np.asarray(rgb, dtype=np.int32)[None, None, :]
    region[...] = (region.astype(np.int32) * (255 - a) + color * a + 127) // 255
