"""A deterministic recogniser of the shapes world (no learning).

`recognise(image)` reads a 64x64 image of the world back into colour and shape
words, to score generated images and to check itself against rendered scenes:

1. pixels: a 3x3 median filter, then the nearest palette colour (UNKNOWN when
   none is near); edge pixels that are a blend of two nearby region colours
   (blur) go to the nearer of the two instead of to a third colour;
2. background: the colours that fill the image border (two-tone: ground at
   the bottom first, then sky);
3. parts: connected single-colour regions of the other pixels; tiny or thin
   ones (edge blends, colour fringes) join the solid part they touch most;
4. objects: pieces of one colour that non-background pixels connect are one
   object (an occluder cut them apart; the world never repeats a colour);
   two touching parts of different colours become one two-tone object when
   together they fit a shape better than as two objects and a line through
   the shape's centre separates them; the most such pairs are taken;
5. shape: the template (`world.shape_mask`) with the best IoU, searched over
   centre and radius, where template pixels that another object may hide
   cost only a quarter of a visible miss.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from functools import cache

import numpy as np
from PIL import Image
from scipy import ndimage

from .world import COLORS, SHAPES, SIZE, shape_mask

COLOR_NAMES: tuple[str, ...] = tuple(COLORS)
PALETTE = np.array([COLORS[name] for name in COLOR_NAMES], dtype=np.float32)
UNKNOWN = -1

MAX_COLOR_DISTANCE = 60.0  # RGB distance beyond which a pixel is unknown (palette gaps are >= 83)
MAX_BLEND_DISTANCE = 20.0  # RGB distance from the mix of two colours for an edge pixel to be a blend
BLEND_REACH = 7  # window in which the blended colours' regions are looked for
BORDER_SHARE = 0.2  # a background colour covers at least this share of the known border pixels
MIN_PART = 8  # smaller single-colour parts are rims
RIM_CORE_SHARE = 0.2  # parts with less of their area left after a 3x3 erosion are rims
MIN_OBJECT = 30  # smaller objects are ignored
TWO_TONE_FIT = 0.7  # a two-tone union must fit a template at least this well
SPLIT_AGREEMENT = 0.9  # ... and its colours must be this separable by a line through its centre
MAX_EXHAUSTIVE_PAIRS = 12  # two-tone candidate pairs beyond which the matching is greedy
RADIUS_RANGE = (7.0, 17.0)  # template radii searched (the world draws 8..15)
REFINED_STARTS = 2  # of the initial placements of a template, the best few are refined
HIDDEN_WEIGHT = 0.25  # cost of a template pixel that another object may hide, relative to a visible miss
REFINE_STEPS = (1.0, 0.5, 0.25)  # hill-climbing step sizes (pixels)
_PAIRS = [(i, j) for i in range(len(PALETTE)) for j in range(i + 1, len(PALETTE))]
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
        image = Image.fromarray(arr[..., :3] if arr.ndim == 3 else arr)
    image = image.convert("RGB")
    if image.size != (SIZE, SIZE):
        image = image.resize((SIZE, SIZE), Image.BILINEAR)
    return np.asarray(image, dtype=np.float32)


def classify_pixels(rgb: np.ndarray) -> np.ndarray:
    """Palette index of each pixel (UNKNOWN where no palette colour is near).

    The image is median filtered first; pixels on edges that are a blend of two
    nearby region colours go to the nearer of the two (a blur of orange on black
    would otherwise read as a brown outline).
    """
    smooth = ndimage.median_filter(rgb, size=(3, 3, 1), mode="nearest")
    dist = np.linalg.norm(smooth[:, :, None, :] - PALETTE[None, None], axis=-1)
    labels = dist.argmin(axis=-1)
    labels[dist.min(axis=-1) > MAX_COLOR_DISTANCE] = UNKNOWN
    return resolve_blends(smooth, labels)


def _core_presence(labels: np.ndarray) -> np.ndarray:
    """(n_colors, H, W): whether a region core (a uniform 3x3 patch) of each colour lies within reach."""
    uniform = (ndimage.maximum_filter(labels, size=3, mode="nearest") == ndimage.minimum_filter(labels, size=3, mode="nearest")) & (
        labels != UNKNOWN
    )
    return np.stack([ndimage.maximum_filter(uniform & (labels == k), size=BLEND_REACH, mode="constant") for k in range(len(PALETTE))])


def resolve_blends(rgb: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Relabel pixels that are a mix of two nearby core colours (and not a core colour themselves)
    to the nearer of the two."""
    present = _core_presence(labels)
    own_present = np.take_along_axis(present, np.clip(labels, 0, None)[None], axis=0)[0] & (labels != UNKNOWN)
    best = np.full(labels.shape, np.inf, dtype=np.float32)
    out = labels.copy()
    nearby = present.any(axis=(1, 2))
    for i, j in _PAIRS:
        if not (nearby[i] and nearby[j]):
            continue
        a, b = PALETTE[i], PALETTE[j]
        t = np.clip(((rgb - a) @ (b - a)) / float((b - a) @ (b - a)), 0.0, 1.0)
        d = np.linalg.norm(rgb - (a + t[..., None] * (b - a)), axis=-1)
        take = present[i] & present[j] & ~own_present & (d < np.minimum(best, MAX_BLEND_DISTANCE))
        best[take] = d[take]
        out[take] = np.where(t[take] < 0.5, i, j)
    return out


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


@dataclass(frozen=True)
class _Unit:
    """Geometry of a shape of radius 1 centred at the origin: bounding box, area, centroid."""

    x_lo: float
    x_hi: float
    y_lo: float
    y_hi: float
    area: float
    mean_x: float
    mean_y: float


def _unit(shape: str, size: int = 1000, r: float = 400.0) -> _Unit:
    """Measure a shape's unit geometry on a large rendering."""
    c = size / 2
    ys, xs = np.nonzero(shape_mask(shape, c, c, r, size=size))
    xs, ys = (xs - c) / r, (ys - c) / r
    step = 1 / r
    return _Unit(xs.min(), xs.max() + step, ys.min(), ys.max() + step, len(xs) * step**2, xs.mean(), ys.mean())


UNITS: dict[str, _Unit] = {s: _unit(s) for s in SHAPES}


@cache
def _stamp(shape: str, fx: int, fy: int, qr: int) -> np.ndarray:
    """A template on a small square canvas, centred at (half + fx/4, half + fy/4), radius qr/4 (cached)."""
    half = math.ceil(qr / 4) + 2
    mask = shape_mask(shape, half + fx / 4, half + fy / 4, qr / 4, size=2 * half + 1)
    mask.setflags(write=False)
    return mask


def template(shape: str, cx: float, cy: float, r: float, size: int = SIZE) -> tuple[np.ndarray, int, int]:
    """The shape's template at (cx, cy, r) quantised to quarter pixels, clipped to a size x size
    image: (window, top, left) with the window's position in the image."""
    qx, qy, qr = round(cx * 4), round(cy * 4), round(r * 4)
    stamp = _stamp(shape, qx % 4, qy % 4, qr)
    half = stamp.shape[0] // 2
    top, left = qy // 4 - half, qx // 4 - half
    t0, l0 = max(top, 0), max(left, 0)
    t1, l1 = min(top + stamp.shape[0], size), min(left + stamp.shape[1], size)
    return stamp[t0 - top : max(t1 - top, 0), l0 - left : max(l1 - left, 0)], t0, l0


class FitTarget:
    """A mask to fit templates to, with the pixels where a template may be hidden by another object.

    The score is an IoU in which template pixels outside the mask but on
    `dont_care` count only HIDDEN_WEIGHT (a template may extend under an
    occluder, but the explanation that hides least wins ties).
    """

    def __init__(self, mask: np.ndarray, dont_care: np.ndarray) -> None:
        self.mask = mask
        self.dont_care = dont_care
        self.area = int(np.count_nonzero(mask))
        self._scores: dict[tuple[str, int, int, int], float] = {}

    def score(self, shape: str, cx: float, cy: float, r: float) -> float:
        key = (shape, round(cx * 4), round(cy * 4), round(r * 4))
        if key not in self._scores:
            self._scores[key] = self._masked_iou(*template(shape, cx, cy, r))
        return self._scores[key]

    def _masked_iou(self, window: np.ndarray, top: int, left: int) -> float:
        h, w = window.shape
        mask = self.mask[top : top + h, left : left + w]
        extra = window & ~mask
        hidden = np.count_nonzero(extra & self.dont_care[top : top + h, left : left + w])
        union = self.area + np.count_nonzero(extra) - (1.0 - HIDDEN_WEIGHT) * hidden
        return np.count_nonzero(window & mask) / union if union else 0.0


def _initial_guesses(shape: str, mask: np.ndarray) -> list[tuple[float, float, float]]:
    """Starting (cx, cy, r): the mask's bounding box with the template anchored at each side
    and corner (an occluded mask's box is cut short), and the mask's area and centroid."""
    u = UNITS[shape]
    ys, xs = np.nonzero(mask)
    x0, x1, y0, y1 = xs.min(), xs.max() + 1, ys.min(), ys.max() + 1
    r = max((x1 - x0 - 1) / (u.x_hi - u.x_lo), (y1 - y0 - 1) / (u.y_hi - u.y_lo))  # drawn edges add a pixel
    cxs = (x0 - u.x_lo * r, x1 - u.x_hi * r, (x0 + x1) / 2 - (u.x_lo + u.x_hi) / 2 * r)
    cys = (y0 - u.y_lo * r, y1 - u.y_hi * r, (y0 + y1) / 2 - (u.y_lo + u.y_hi) / 2 * r)
    guesses = [(cx, cy, r) for cx in cxs for cy in cys]
    r_area = math.sqrt(len(xs) / u.area)
    guesses.append((xs.mean() - u.mean_x * r_area, ys.mean() - u.mean_y * r_area, r_area))
    return [(float(cx), float(cy), float(np.clip(r, *RADIUS_RANGE))) for cx, cy, r in guesses]


NEIGHBOURS = [np.array(d, dtype=float) - 1.0 for d in np.ndindex(3, 3, 3) if d != (1, 1, 1)]


def _refine(shape: str, start: tuple[float, float, float], target: FitTarget) -> Fit:
    """Hill climbing of the score over (cx, cy, r) in the 26-neighbourhood, with shrinking steps."""
    params = np.array(start, dtype=float)
    best = target.score(shape, *params)
    for step in REFINE_STEPS:
        improved = True
        while improved:
            improved = False
            for d in NEIGHBOURS:
                trial = params + d * step
                if RADIUS_RANGE[0] <= trial[2] <= RADIUS_RANGE[1]:
                    score = target.score(shape, *trial)
                    if score > best + 1e-9:
                        best, params, improved = score, trial, True
    return Fit(shape, float(best), *(float(p) for p in params))


def fit_shape(shape: str, target: FitTarget) -> Fit:
    """The best placement of one shape's template: the best few initial guesses, refined."""
    guesses = _initial_guesses(shape, target.mask)
    guesses.sort(key=lambda g: -target.score(shape, *g))
    return max((_refine(shape, g, target) for g in guesses[:REFINED_STARTS]), key=lambda f: f.iou)


def best_fit(mask: np.ndarray, dont_care: np.ndarray) -> Fit:
    """The best-fitting shape of all shapes for a mask (template pixels on `dont_care` may be hidden)."""
    target = FitTarget(mask, dont_care)
    return max((fit_shape(s, target) for s in SHAPES), key=lambda f: f.iou)


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

    def joined(self, other: _Region) -> _Region:
        parts = dict(self.parts)
        for color, m in other.parts.items():
            parts[color] = parts[color] | m if color in parts else m
        return _Region(parts)


def _components(labels: np.ndarray, background: list[int]) -> list[_Region]:
    """Connected single-colour components of the non-background, known pixels."""
    regions: list[_Region] = []
    for color in np.unique(labels):
        if color == UNKNOWN or color in background:
            continue
        comps, n = ndimage.label(labels == color, structure=STRUCTURE_4)
        regions += [_Region({int(color): comps == k}) for k in range(1, n + 1)]
    return regions


def _is_rim(region: _Region) -> bool:
    """A part too small or too thin to be an object's own: an edge blend or colour fringe."""
    mask = region.mask
    area = np.count_nonzero(mask)
    return area < MIN_PART or np.count_nonzero(ndimage.binary_erosion(mask, STRUCTURE_8)) < RIM_CORE_SHARE * area


def find_parts(labels: np.ndarray, background: list[int]) -> list[_Region]:
    """Single-colour parts of the non-background pixels; rims (see `_is_rim`) are absorbed into
    the solid part they share most boundary with, in that part's colour, or dropped."""
    components = _components(labels, background)
    solid = [r for r in components if not _is_rim(r)]
    for rim in sorted((r for r in components if _is_rim(r)), key=lambda r: r.area):
        ring = ndimage.binary_dilation(rim.mask, STRUCTURE_8)
        contact = [np.count_nonzero(ring & s.mask) for s in solid]
        if contact and max(contact) > 0:
            k = int(np.argmax(contact))
            color = next(iter(solid[k].parts))
            solid[k] = solid[k].joined(_Region({color: rim.mask}))
    return solid


def best_matching(gains: dict[tuple[int, int], float]) -> list[tuple[int, int]]:
    """Disjoint pairs: the most pairs, then the highest total gain (exhaustive search over a few
    candidates; greedy by gain beyond MAX_EXHAUSTIVE_PAIRS)."""
    if not gains:
        return []
    (i, j), _ = max(gains.items(), key=lambda kv: kv[1])
    rest = best_matching({k: g for k, g in gains.items() if i not in k and j not in k})
    if len(gains) > MAX_EXHAUSTIVE_PAIRS:
        return [(i, j)] + rest
    without = best_matching({k: g for k, g in gains.items() if k != (i, j)})

    def value(pairs: list[tuple[int, int]]) -> tuple[int, float]:
        return len(pairs), sum(gains[p] for p in pairs)

    return max([(i, j)] + rest, without, key=value)


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

    def merge_same_color(self, regions: list[_Region]) -> list[_Region]:
        """Join pieces of one colour that occupied pixels connect (an occluder cut them apart)."""
        blobs, _ = ndimage.label(self.occupied, structure=STRUCTURE_8)
        groups: dict[tuple[int, int], _Region] = {}
        for region in regions:
            key = (next(iter(region.parts)), int(blobs[region.mask][0]))
            groups[key] = groups[key].joined(region) if key in groups else region
        return list(groups.values())

    def merge_two_tone(self, regions: list[_Region]) -> list[_Region]:
        """Join two-tone pairs: the most pairs (fewest objects), then the best total fit."""
        gains = {(i, j): self.two_tone_gain(a, b) for i, a in enumerate(regions) for j, b in enumerate(regions) if i < j}
        pairs = best_matching({k: g for k, g in gains.items() if g is not None})
        paired = {i for pair in pairs for i in pair}
        return [r for k, r in enumerate(regions) if k not in paired] + [regions[i].joined(regions[j]) for i, j in pairs]

    def group(self, parts: list[_Region]) -> list[_Region]:
        """Objects from single-colour parts: same-colour pieces first, then two-tone pairs; tiny ones dropped."""
        regions = self.merge_two_tone(self.merge_same_color(parts))
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


def same_colors(found: Iterable[str], wanted: Iterable[str]) -> bool:
    return sorted(found) == sorted(wanted)


def contains(reading: Reading, colors: list[str], shape: str | None = None) -> bool:
    """Whether an object with exactly these colours (any order) and this shape (any when None) is present."""
    return any(same_colors(o.colors, colors) and (shape is None or o.shape == shape) for o in reading.objects)


def background_is(reading: Reading, colors: list[str]) -> bool:
    """Whether the background has exactly these colours (two-tone: ground first, then sky)."""
    return reading.background == list(colors)
