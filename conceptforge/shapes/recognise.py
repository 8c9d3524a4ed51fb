"""A deterministic recogniser of the shapes world (no learning).

`recognise(image)` reads a 64x64 image of the world back into colour and shape
words: every pixel is classified to its nearest palette colour (after a 3x3
median filter; pixels far from every palette colour are unknown), the
background colours are the ones that fill the image border, the other colours
form connected parts, and parts are grouped into objects: pieces of one colour
cut apart by an occluder are joined, and two parts of different colours are
joined into one two-tone object when together they form one shape split by a
straight line through its centre.  Each object's shape is the template
(`world.shape_mask`) that fits its mask best (IoU, with the pixels of other
objects as "don't care", since they may hide part of it).

It is used to score generated images, so it tolerates blur and off-palette
colours; it is exact enough on rendered scenes to be checked against their
ground truth (see tests/test_recognise.py).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Callable, Iterable

import numpy as np
from PIL import Image
from scipy import ndimage

from .world import COLORS, SHAPES, SIZE, shape_mask

COLOR_NAMES: tuple[str, ...] = tuple(COLORS)
PALETTE = np.array([COLORS[name] for name in COLOR_NAMES], dtype=np.float32)
UNKNOWN = -1

MAX_COLOR_DISTANCE = 60.0  # RGB distance beyond which a pixel is unknown (palette gaps are >= 83)
BORDER_SHARE = 0.2  # a background colour covers at least this share of the known border pixels
MIN_PART = 8  # smaller single-colour parts are ignored (treated as unknown)
MIN_OBJECT = 30  # smaller objects are ignored
TWO_TONE_FIT = 0.7  # a two-tone union must fit a template at least this well
SPLIT_AGREEMENT = 0.9  # ... and its colours must be this separable by a line through its centre
SAME_COLOR_SLACK = 0.05  # same-colour pieces join when their union fits nearly as well as the pieces
RADIUS_RANGE = (7.0, 17.0)  # template radii searched (the world draws 8..15)
SPLIT_ANGLES = np.linspace(0.0, math.pi, 72, endpoint=False)
STRUCTURE_4 = ndimage.generate_binary_structure(2, 1)
STRUCTURE_8 = ndimage.generate_binary_structure(2, 2)


@dataclass
class ObjectReading:
    """One recognised object: its colour names (largest area first), shape and mask."""

    colors: list[str]
    shape: str
    mask: np.ndarray
    fit: float = 0.0  # IoU of the best-fitting shape template


@dataclass
class Reading:
    """What the recogniser sees: background colours (ground first, then sky) and objects."""

    background: list[str]
    objects: list[ObjectReading] = field(default_factory=list)


@dataclass(frozen=True)
class Fit:
    """A shape template placed at (cx, cy) with radius r, and its IoU with a mask."""

    shape: str
    iou: float
    cx: float
    cy: float
    r: float


# --------------------------------------------------------------------------- pixels


def to_array(image: Image.Image | np.ndarray) -> np.ndarray:
    """The image as a SIZE x SIZE x 3 float32 RGB array (resized if needed)."""
    if isinstance(image, np.ndarray):
        arr = image
        if arr.dtype != np.uint8:
            arr = np.clip(arr * 255.0 if arr.max() <= 1.0 else arr, 0, 255).astype(np.uint8)
        image = Image.fromarray(arr[..., :3])
    image = image.convert("RGB")
    if image.size != (SIZE, SIZE):
        image = image.resize((SIZE, SIZE), Image.BILINEAR)
    return np.asarray(image, dtype=np.float32)


def classify_pixels(rgb: np.ndarray) -> np.ndarray:
    """Palette index of each pixel (UNKNOWN where no palette colour is near)."""
    smooth = ndimage.median_filter(rgb, size=(3, 3, 1), mode="nearest")
    dist = np.linalg.norm(smooth[:, :, None, :] - PALETTE[None, None], axis=-1)
    labels = dist.argmin(axis=-1)
    labels[dist.min(axis=-1) > MAX_COLOR_DISTANCE] = UNKNOWN
    return labels


def find_background(labels: np.ndarray, rgb: np.ndarray) -> list[int]:
    """Palette indices of the background: ground (bottom) first, then sky (top)."""
    border = np.zeros(labels.shape, dtype=bool)
    border[[0, -1], :] = True
    border[:, [0, -1]] = True
    known = border & (labels != UNKNOWN)
    if not known.any():  # nothing near the palette: take the colour nearest the border's median
        median = np.median(rgb[border], axis=0)
        return [int(np.linalg.norm(PALETTE - median, axis=1).argmin())]
    counts = np.bincount(labels[known], minlength=len(PALETTE))
    chosen = [int(i) for i in np.argsort(-counts)[:2] if counts[i] >= BORDER_SHARE * known.sum()]
    chosen = chosen or [int(counts.argmax())]
    rows = np.arange(labels.shape[0])[:, None].repeat(labels.shape[1], axis=1)
    return sorted(chosen, key=lambda c: -rows[known & (labels == c)].mean())


# --------------------------------------------------------------------------- shape fitting


def _unit_extents(shape: str) -> tuple[float, float, float, float, float]:
    """(x_lo, x_hi, y_lo, y_hi, area) of a shape of radius 1 centred at the origin."""
    big, r = 1000, 400.0
    mask = shape_mask(shape, big / 2, big / 2, r, size=big)
    ys, xs = np.nonzero(mask)
    c = big / 2
    return ((xs.min() - c) / r, (xs.max() + 1 - c) / r, (ys.min() - c) / r, (ys.max() + 1 - c) / r, mask.sum() / r**2)


EXTENTS: dict[str, tuple[float, float, float, float, float]] = {s: _unit_extents(s) for s in SHAPES}


@lru_cache(maxsize=200_000)
def _template(shape: str, qx: int, qy: int, qr: int) -> np.ndarray:
    """Rendered template at quarter-pixel quantised parameters (cached)."""
    mask = shape_mask(shape, qx / 4, qy / 4, qr / 4)
    mask.setflags(write=False)
    return mask


def template(shape: str, cx: float, cy: float, r: float) -> np.ndarray:
    """The shape's mask at (cx, cy, r), quantised to quarter pixels."""
    return _template(shape, round(cx * 4), round(cy * 4), round(r * 4))


def masked_iou(tmpl: np.ndarray, mask: np.ndarray, dont_care: np.ndarray) -> float:
    """IoU of a template with a mask, ignoring template pixels on `dont_care`."""
    inter = np.count_nonzero(tmpl & mask)
    union = np.count_nonzero(mask | (tmpl & ~dont_care))
    return inter / union if union else 0.0


def _initial_guesses(shape: str, mask: np.ndarray) -> list[tuple[float, float, float]]:
    """Starting (cx, cy, r) from the mask's bounding box and from its area and centroid."""
    x_lo, x_hi, y_lo, y_hi, area = EXTENTS[shape]
    ys, xs = np.nonzero(mask)
    w, h = xs.max() + 1 - xs.min(), ys.max() + 1 - ys.min()
    r_box = max(w / (x_hi - x_lo), h / (y_hi - y_lo))
    box = (xs.min() - x_lo * r_box, ys.min() - y_lo * r_box, r_box)
    r_area = math.sqrt(len(xs) / area)
    # the centroid of the unit shape is not at its centre for triangles and hearts
    unit = template(shape, 32.0, 32.0, 16.0)
    uy, ux = np.nonzero(unit)
    moment = (xs.mean() - (ux.mean() - 32.0) / 16.0 * r_area, ys.mean() - (uy.mean() - 32.0) / 16.0 * r_area, r_area)
    return [(cx, cy, float(np.clip(r, *RADIUS_RANGE))) for cx, cy, r in (box, moment)]


def _refine(shape: str, start: tuple[float, float, float], mask: np.ndarray, dont_care: np.ndarray) -> Fit:
    """Coordinate ascent of the masked IoU over (cx, cy, r) with shrinking steps."""
    params = list(start)
    best = masked_iou(template(shape, *params), mask, dont_care)
    for step in (2.0, 1.0, 0.5, 0.25):
        improved = True
        while improved:
            improved = False
            for dim in range(3):
                for sign in (1.0, -1.0):
                    trial = list(params)
                    trial[dim] += sign * step
                    if not RADIUS_RANGE[0] <= trial[2] <= RADIUS_RANGE[1]:
                        continue
                    score = masked_iou(template(shape, *trial), mask, dont_care)
                    if score > best + 1e-9:
                        best, params, improved = score, trial, True
    return Fit(shape, best, *params)


def fit_shape(shape: str, mask: np.ndarray, dont_care: np.ndarray) -> Fit:
    """The best placement of one shape's template on a mask."""
    fits = [_refine(shape, g, mask, dont_care) for g in _initial_guesses(shape, mask)]
    return max(fits, key=lambda f: f.iou)


def best_fit(mask: np.ndarray, dont_care: np.ndarray) -> Fit:
    """The best-fitting shape of all shapes."""
    return max((fit_shape(s, mask, dont_care) for s in SHAPES), key=lambda f: f.iou)


def split_agreement(first: np.ndarray, second: np.ndarray, cx: float, cy: float) -> float:
    """Largest share of the pixels of two masks that a line through (cx, cy) separates."""
    ya, xa = np.nonzero(first)
    yb, xb = np.nonzero(second)
    cos, sin = np.cos(SPLIT_ANGLES)[:, None], np.sin(SPLIT_ANGLES)[:, None]
    side_a = ((xa - cx) * cos + (ya - cy) * sin > 0).sum(axis=1)
    side_b = ((xb - cx) * cos + (yb - cy) * sin > 0).sum(axis=1)
    agree = np.maximum(side_a + (len(xb) - side_b), (len(xa) - side_a) + side_b)
    return float(agree.max() / (len(xa) + len(xb)))


# --------------------------------------------------------------------------- grouping


@dataclass
class _Region:
    """A candidate object: its pixels per palette colour."""

    parts: dict[int, np.ndarray]

    @property
    def mask(self) -> np.ndarray:
        return np.logical_or.reduce(list(self.parts.values()))

    @property
    def area(self) -> int:
        return int(sum(m.sum() for m in self.parts.values()))

    def joined(self, other: "_Region") -> "_Region":
        parts = dict(self.parts)
        for color, m in other.parts.items():
            parts[color] = parts[color] | m if color in parts else m
        return _Region(parts)


def find_parts(labels: np.ndarray, background: list[int]) -> list[_Region]:
    """Connected single-colour parts of the non-background pixels, tiny and thin ones dropped."""
    regions: list[_Region] = []
    for color in np.unique(labels):
        if color == UNKNOWN or color in background:
            continue
        comps, n = ndimage.label(labels == color, structure=STRUCTURE_4)
        for k in range(1, n + 1):
            part = comps == k
            if part.sum() >= MIN_PART and ndimage.binary_erosion(part, STRUCTURE_8).any():
                regions.append(_Region({int(color): part}))
    return regions


def _touching(a: np.ndarray, b: np.ndarray) -> bool:
    return bool((ndimage.binary_dilation(a, STRUCTURE_8) & b).any())


class _Grouper:
    """Joins parts into objects by comparing how well the alternatives fit shape templates.

    `occupied` is every pixel that is not background (objects and unknown
    pixels): a region's template may extend unseen over the occupied pixels
    outside the region, as another object may hide them.
    """

    def __init__(self, occupied: np.ndarray) -> None:
        self.occupied = occupied
        self._fits: dict[tuple[bytes, bytes], Fit] = {}

    def fit(self, region: _Region, on_top_of: _Region | None = None) -> Fit:
        """Best shape of a region; with `on_top_of`, that region cannot hide any of it."""
        mask = region.mask
        dont_care = self.occupied & ~mask
        if on_top_of is not None:
            dont_care &= ~on_top_of.mask
        key = (np.packbits(mask).tobytes(), np.packbits(dont_care).tobytes())
        if key not in self._fits:
            self._fits[key] = best_fit(mask, dont_care)
        return self._fits[key]

    def apart(self, a: _Region, b: _Region) -> float:
        """How well two regions read as two objects, one on top of the other (mean IoU)."""
        return max((self.fit(top, on_top_of=below).iou + self.fit(below).iou) / 2 for top, below in ((a, b), (b, a)))

    def same_color_gain(self, a: _Region, b: _Region) -> float | None:
        """Score for joining two pieces of one colour cut apart by an occluder (None: keep apart)."""
        if len(a.parts) != 1 or set(a.parts) != set(b.parts):
            return None
        joint = self.fit(a.joined(b)).iou
        return joint if joint >= min(self.fit(a).iou, self.fit(b).iou) - SAME_COLOR_SLACK else None

    def two_tone_gain(self, a: _Region, b: _Region) -> float | None:
        """Score for joining two touching parts of different colours into one two-tone object."""
        if len(a.parts) != 1 or len(b.parts) != 1 or set(a.parts) == set(b.parts) or not _touching(a.mask, b.mask):
            return None
        fit = self.fit(a.joined(b))
        if fit.iou < TWO_TONE_FIT or fit.iou <= self.apart(a, b):
            return None
        if split_agreement(a.mask, b.mask, fit.cx, fit.cy) < SPLIT_AGREEMENT:
            return None
        return fit.iou

    def merge(self, regions: list[_Region], gain: Callable[[_Region, _Region], float | None]) -> list[_Region]:
        """Greedily join the pair with the highest gain until no pair qualifies."""
        regions = list(regions)
        while True:
            scored = [(gain(a, b), i, j) for i, a in enumerate(regions) for j, b in enumerate(regions) if i < j]
            scored = [s for s in scored if s[0] is not None]
            if not scored:
                return regions
            _, i, j = max(scored)
            regions = [r for k, r in enumerate(regions) if k not in (i, j)] + [regions[i].joined(regions[j])]

    def group(self, parts: list[_Region]) -> list[_Region]:
        """Objects from parts: same-colour pieces first, then two-tone pairs; tiny ones dropped."""
        regions = self.merge(self.merge(parts, self.same_color_gain), self.two_tone_gain)
        return sorted((r for r in regions if r.area >= MIN_OBJECT), key=lambda r: -r.area)

    def read(self, region: _Region) -> ObjectReading:
        """The reading of one object: colours by area, best shape."""
        fit = self.fit(region)
        order = sorted(region.parts, key=lambda c: -int(region.parts[c].sum()))
        return ObjectReading(colors=[COLOR_NAMES[c] for c in order], shape=fit.shape, mask=region.mask, fit=fit.iou)


# --------------------------------------------------------------------------- API


def recognise(image: Image.Image | np.ndarray) -> Reading:
    """Read the background colours and the objects (colours, shape, mask) of a world image."""
    rgb = to_array(image)
    labels = classify_pixels(rgb)
    background = find_background(labels, rgb)
    grouper = _Grouper(occupied=~np.isin(labels, background))
    objects = [grouper.read(r) for r in grouper.group(find_parts(labels, background))]
    return Reading(background=[COLOR_NAMES[c] for c in background], objects=objects)


def _same_colors(found: Iterable[str], wanted: Iterable[str]) -> bool:
    return sorted(found) == sorted(wanted)


def contains(reading: Reading, colors: list[str], shape: str | None = None) -> bool:
    """Whether an object with exactly these colours (any order) and this shape (any when None) is present."""
    return any(_same_colors(o.colors, colors) and (shape is None or o.shape == shape) for o in reading.objects)


def background_is(reading: Reading, colors: list[str]) -> bool:
    """Whether the background has exactly these colours (two-tone: ground first, then sky)."""
    return reading.background == list(colors)
